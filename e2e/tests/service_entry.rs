//! ServiceEntry end to end in `ambit local` (upstream's `TestServiceEntrySelectsUncapturedPod` and
//! `TestServiceEntryDNSWithAutoAssign`): an entry for `echo.external.test` without addresses selects an
//! uncaptured pod by labels; a captured client's DNS query for the host is answered by its ztunnel with the VIP
//! the controller allocated (240.240/16), and `curl` to the host reaches the pod through that VIP. A captured pod
//! with the same labels is never an endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_e2e::e2e_test;
use ambit_e2e::local::{Echo, LocalMesh, PodInfo, WAIT, leftovers};
use ambit_e2e::topology::poll;
use anyhow::{Result, ensure};

const NS: &str = "se";
const HOST: &str = "echo.external.test";
const POD_UP: Duration = Duration::from_secs(60);

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: se, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: se}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec: {containers: [{name: sleep, command: [sleep, infinity]}]}
---
# Outside the mesh: the entry's endpoint.
apiVersion: apps/v1
kind: Deployment
metadata: {name: legacy, namespace: se}
spec:
  selector: {matchLabels: {app: legacy}}
  template:
    metadata: {labels: {app: legacy, role: external-echo, istio.io/dataplane-mode: none}}
    spec:
      containers:
      - name: echo
        command: [ambit, echo, --http-port, "8080"]
        ports: [{name: http, containerPort: 8080}]
---
# In the mesh, same labels: never selected by a ServiceEntry.
apiVersion: apps/v1
kind: Deployment
metadata: {name: meshed, namespace: se}
spec:
  selector: {matchLabels: {app: meshed}}
  template:
    metadata: {labels: {app: meshed, role: external-echo}}
    spec:
      containers:
      - name: echo
        command: [ambit, echo, --http-port, "8080"]
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-echo, namespace: se}
spec:
  hosts: [echo.external.test]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  workloadSelector: {labels: {role: external-echo}}
"#;

fn manifests(dir: &Path) -> Result<PathBuf> {
    let m = dir.join("manifests");
    std::fs::create_dir_all(&m)?;
    std::fs::write(m.join("se.yaml"), MANIFESTS)?;
    Ok(m)
}

fn one_pod(mesh: &LocalMesh, owner: &str) -> Result<PodInfo> {
    poll(&format!("pod {NS}/{owner}"), POD_UP, || {
        Ok(mesh.pods(NS, owner)?.pop())
    })
}

fn scenario(mesh: &LocalMesh) -> Result<()> {
    let client = one_pod(mesh, "client")?;
    let legacy = one_pod(mesh, "legacy")?;
    ensure!(client.captured, "the client is not captured");
    ensure!(!legacy.captured, "the legacy pod is captured");
    // The client's ztunnel answers the query with the allocated VIP.
    let vip = poll("ztunnel answers for the ServiceEntry host", WAIT, || {
        let out = mesh.exec(NS, "deploy/client", &["getent", "hosts", HOST])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(text
            .split_whitespace()
            .next()
            .filter(|ip| ip.starts_with("240.240."))
            .map(str::to_owned))
    })?;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let body = mesh.curl(NS, "deploy/client", &format!("http://{HOST}/"))?;
        let echo = Echo::parse_all(&body)
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no echo body: {body}"))?;
        seen.push(echo.pod.clone());
    }
    ensure!(
        seen.iter().all(|p| *p == legacy.name),
        "requests to {HOST} ({vip}) answered by {seen:?}, want only {}",
        legacy.name
    );
    Ok(())
}

#[test]
fn service_entry_selects_an_uncaptured_pod_with_an_allocated_vip() {
    e2e_test("local-service-entry", |dir| {
        let manifests = manifests(dir.path())?;
        let mut mesh = LocalMesh::up(dir.path(), &manifests, 2)?;
        let result = scenario(&mesh);
        if result.is_err() {
            eprintln!("{}", mesh.logs());
        }
        result?;
        mesh.down()?;
        let left = leftovers()?;
        ensure!(left.is_empty(), "ambit local down left: {left:?}");
        Ok(())
    });
}
