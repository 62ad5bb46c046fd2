//! ServiceEntry end to end in `ambit local` (upstream's `TestServiceEntrySelectsUncapturedPod` and
//! `TestServiceEntryDNSWithAutoAssign`): an entry for `echo.external.test` without addresses selects an
//! uncaptured pod by labels; a captured client's DNS query for the host is answered by its ztunnel with the VIP
//! the controller allocated (240.240/16), and `curl` to the host reaches the pod through that VIP. A captured pod
//! with the same labels is never an endpoint. Then the entry is bound to a waypoint (`istio.io/use-waypoint`, the
//! egress-waypoint case, upstream's `TestWaypointAsEgressGateway`) with an AuthorizationPolicy targeting the
//! ServiceEntry that allows only GET: GET passes through the waypoint (its `x-request-id` reaches the pod), POST
//! gets 403.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_e2e::e2e_test;
use ambit_e2e::local::{Echo, LocalMesh, WAIT, run_on_mesh};
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

/// Applied live: the waypoint, the entry bound to it, and GET-only authorization on the entry.
const EGRESS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: egress, namespace: se}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-echo, namespace: se, labels: {istio.io/use-waypoint: egress}}
spec:
  hosts: [echo.external.test]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  workloadSelector: {labels: {role: external-echo}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: egress-get-only, namespace: se}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: external-echo}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
"#;

fn manifests(dir: &Path) -> Result<PathBuf> {
    let m = dir.join("manifests");
    std::fs::create_dir_all(&m)?;
    std::fs::write(m.join("se.yaml"), MANIFESTS)?;
    Ok(m)
}

fn scenario(mesh: &LocalMesh) -> Result<()> {
    let client = mesh.one_pod(NS, "client", POD_UP)?;
    let legacy = mesh.one_pod(NS, "legacy", POD_UP)?;
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
    ensure!(
        !Echo::parse_all(&mesh.curl(NS, "deploy/client", &format!("http://{HOST}/"))?)
            .iter()
            .any(|e| e.headers.contains_key("x-request-id")),
        "without a waypoint the request has no x-request-id"
    );

    // The egress waypoint: the entry in the single manifest file is replaced by the bound one.
    let base = MANIFESTS
        .split("---\n# In the mesh")
        .next()
        .unwrap_or_default()
        .to_owned();
    let meshed = MANIFESTS
        .split("---\n# In the mesh")
        .nth(1)
        .and_then(|rest| rest.split("---\napiVersion: networking.istio.io/v1").next())
        .unwrap_or_default();
    std::fs::write(
        mesh.manifests.join("se.yaml"),
        format!("{base}---\n# In the mesh{meshed}---\n{EGRESS}"),
    )?;
    let status = |method: &str| -> Result<(String, String)> {
        let out = mesh.exec(
            NS,
            "deploy/client",
            &[
                "curl",
                "-sS",
                "--max-time",
                "10",
                "-X",
                method,
                "-w",
                "\n%{http_code}",
                &format!("http://{HOST}/"),
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        Ok((code.trim().to_owned(), body.to_owned()))
    };
    let body = poll("GET through the egress waypoint", POD_UP, || {
        let (code, body) = status("GET")?;
        Ok((code == "200"
            && Echo::parse_all(&body)
                .iter()
                .any(|e| e.headers.contains_key("x-request-id")))
        .then_some(body))
    })?;
    ensure!(
        Echo::parse_all(&body).iter().all(|e| e.pod == legacy.name),
        "through the waypoint, answered by: {body}"
    );
    let (code, body) = status("POST")?;
    ensure!(
        code == "403" && body.trim() == "RBAC: access denied",
        "POST to the ServiceEntry: {code} {body}"
    );
    proxy_status(mesh)
}

/// `ambit proxy-status`: both nodes' ztunnels (WDS and WADS) and the egress waypoint, each in sync.
fn proxy_status(mesh: &LocalMesh) -> Result<()> {
    let text = poll("every proxy SYNCED in proxy-status", WAIT, || {
        let out = mesh.ambit_cli(&["proxy-status"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows: Vec<&str> = text.lines().skip(1).collect();
        let ok =
            out.status.success() && rows.len() >= 3 && rows.iter().all(|r| r.ends_with("SYNCED"));
        Ok(ok.then_some(text))
    })?;
    let ztunnels = text
        .lines()
        .filter(|l| l.starts_with("ztunnel-") && l.contains("2 (WADS,WDS)"))
        .count();
    ensure!(ztunnels == 2, "two ztunnels with WADS and WDS:\n{text}");
    ensure!(
        text.lines()
            .any(|l| l.starts_with("egress-") && l.contains(".se ")),
        "the egress waypoint is not listed:\n{text}"
    );
    Ok(())
}

#[test]
fn service_entry_selects_an_uncaptured_pod_with_an_allocated_vip() {
    e2e_test("local-service-entry", |dir| {
        let manifests = manifests(dir.path())?;
        run_on_mesh(dir.path(), &manifests, 2, scenario, |_| String::new())
    });
}
