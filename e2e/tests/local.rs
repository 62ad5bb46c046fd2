//! The local mesh end to end: `ambit local up` on a manifest directory, then real clients (`curl`, `getent`) inside
//! the pods, a packet capture on the pod network, policy and label edits applied live, and `down` leaving nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use ambit_e2e::capture::Capture;
use ambit_e2e::e2e_test;
use ambit_e2e::local::{LocalMesh, NET_NS, STRICT_DEMO, WAIT, leftovers, run_on_mesh};
use ambit_e2e::pcap;
use ambit_e2e::prom;
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, ensure};

const NAMESPACES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
"#;

const APPS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: server, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server}}
    spec:
      serviceAccountName: server
      containers:
      - name: echo
        command: [ambit, echo, --http-port, "8080", --tcp-port, "9090"]
        ports: [{name: http, containerPort: 8080}, {name: tcp, containerPort: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: slow, namespace: demo}
spec:
  selector: {matchLabels: {app: slow}}
  template:
    metadata: {labels: {app: slow}}
    spec:
      containers:
      - name: echo
        command: [ambit, echo, --http-port, "8080", --start-delay, "4"]
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: slow, namespace: demo}
spec:
  selector: {app: slow}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: server-headless, namespace: demo}
spec:
  clusterIP: None
  selector: {app: server}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: demo}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      serviceAccountName: client
      containers: [{name: sleep, command: [sleep, infinity]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: legacy-client, namespace: legacy}
spec:
  selector: {matchLabels: {app: legacy-client}}
  template:
    metadata: {labels: {app: legacy-client}}
    spec:
      containers: [{name: sleep, command: [sleep, infinity]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: legacy-server, namespace: legacy}
spec:
  selector: {matchLabels: {app: legacy-server}}
  template:
    metadata: {labels: {app: legacy-server}}
    spec:
      containers: [{name: echo, command: [ambit, echo, --http-port, "8080"]}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy-server, namespace: legacy}
spec:
  selector: {app: legacy-server}
  ports: [{port: 80, targetPort: 8080}]
"#;

const DENY_CLIENT: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]}]
"#;

const ALLOW_DEMO_DENY_9090: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-demo, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules: [{from: [{source: {namespaces: ["demo"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-9090, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{to: [{operation: {ports: ["9090"]}}]}]
"#;

fn write_manifests(dir: &Path) -> Result<std::path::PathBuf> {
    let m = dir.join("manifests");
    std::fs::create_dir_all(&m)?;
    std::fs::write(m.join("namespaces.yaml"), NAMESPACES)?;
    std::fs::write(m.join("apps.yaml"), APPS)?;
    Ok(m)
}

/// Names of the addresses `getent ahostsv4 <name>` prints inside a pod.
fn resolve(mesh: &LocalMesh, ns: &str, target: &str, name: &str) -> Result<BTreeSet<String>> {
    let out = mesh.exec(ns, target, &["getent", "ahostsv4", name])?;
    ensure!(
        out.status.success(),
        "getent {name} in {ns}/{target} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// A plain TCP exchange with `ambit echo --tcp-port`: the pod name it answers to `whoami`, or an error.
fn tcp_whoami(mesh: &LocalMesh, ns: &str, target: &str, ip: &str, port: u16) -> Result<String> {
    let script =
        format!("exec 3<>/dev/tcp/{ip}/{port} && echo whoami >&3 && timeout 3 head -n1 <&3");
    let out = mesh.exec(ns, target, &["bash", "-c", &script])?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        out.status.success() && !text.is_empty(),
        "tcp {ip}:{port} from {ns}/{target} failed"
    );
    Ok(text)
}

fn body_names_pod(body: &str, pod: &str) -> bool {
    body.contains(pod)
}

#[test]
fn local_mesh_end_to_end() {
    e2e_test("local-mesh", |dir| {
        let manifests = write_manifests(dir.path())?;
        run_on_mesh(
            dir.path(),
            &manifests,
            2,
            |mesh| scenario(mesh, dir.path()),
            |_| String::new(),
        )
    });
}

fn scenario(mesh: &LocalMesh, dir: &Path) -> Result<()> {
    let servers = mesh.pods("demo", "server")?;
    let client = mesh.pods("demo", "client")?.pop().context("client pod")?;
    let legacy_client = mesh
        .pods("legacy", "legacy-client")?
        .pop()
        .context("legacy client")?;
    ensure!(servers.len() == 2, "two server replicas: {servers:?}");
    ensure!(
        servers[0].node != servers[1].node,
        "replicas spread over both nodes: {servers:?}"
    );
    ensure!(
        client.captured && servers.iter().all(|s| s.captured),
        "demo is captured"
    );
    ensure!(!legacy_client.captured, "legacy is not captured");
    let vip = mesh.vip("demo", "server")?;
    let c = "deploy/client";

    // Ready means serving: right after `up`, with no retry, every request reaches the pod that binds its port
    // seconds after it starts (a readiness of "started" let such requests fail). Only `slow`: the capture below
    // must see the client's first HBONE connections to the servers.
    for i in 0..20 {
        mesh.curl("demo", c, "http://slow/")
            .with_context(|| format!("request {i} to http://slow/ right after up"))?;
    }

    // Captured -> captured, by short name, FQDN, VIP and pod IP (one replica shares the client's node, one not),
    // with a capture on the pod network: only mTLS to 15008 between the pods.
    let capture = Capture::start_in(NET_NS, "br0", dir, "pod-network")?;
    for url in [
        "http://server/".to_owned(),
        "http://server.demo.svc.cluster.local/".to_owned(),
        format!("http://{vip}/"),
    ] {
        poll(&format!("client -> {url}"), WAIT, || {
            Ok(mesh.curl("demo", c, &url).ok())
        })?;
    }
    for s in &servers {
        let body = mesh.curl("demo", c, &format!("http://{}:8080/secret-path", s.ip))?;
        ensure!(body_names_pod(&body, &s.name), "{} answered: {body}", s.ip);
    }
    let segments = capture.stop()?;
    for s in &servers {
        let ip = |a: &str| a.parse().unwrap();
        pcap::summarise(&segments, ip(&client.ip), ip(&s.ip), &[b"secret-path"])
            .check_only_hbone()
            .with_context(|| format!("wire between client and {}", s.name))?;
    }

    // Load balancing: new connections to the service reach both replicas.
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let body = mesh.curl("demo", c, "http://server/")?;
        for s in &servers {
            if body_names_pod(&body, &s.name) {
                seen.insert(s.name.clone());
            }
        }
    }
    ensure!(seen.len() == 2, "30 requests reached only {seen:?}");

    // Captured <-> uncaptured, both directions.
    mesh.curl(
        "legacy",
        "deploy/legacy-client",
        &format!("http://{}:8080/", servers[0].ip),
    )?;
    mesh.curl("legacy", "deploy/legacy-client", &format!("http://{vip}/"))?;
    mesh.curl("demo", c, "http://legacy-server.legacy/")?;

    // DNS from captured (ztunnel's proxy) and uncaptured (cluster DNS) pods.
    let server_ips: BTreeSet<String> = servers.iter().map(|s| s.ip.clone()).collect();
    for (ns, pod) in [("demo", c), ("legacy", "deploy/legacy-client")] {
        ensure!(resolve(mesh, ns, pod, "server.demo")? == BTreeSet::from([vip.clone()]));
        ensure!(
            resolve(mesh, ns, pod, "server.demo.svc.cluster.local")?
                == BTreeSet::from([vip.clone()])
        );
        ensure!(resolve(mesh, ns, pod, "server-headless.demo")? == server_ips);
    }
    ensure!(resolve(mesh, "demo", c, "server")? == BTreeSet::from([vip.clone()]));
    // Captured pods ask their ztunnel's DNS proxy, which undoes a search domain the resolver appended (CNAME);
    // the cluster DNS that uncaptured pods use does not.
    let doubled = "server.demo.svc.cluster.local.demo.svc.cluster.local";
    ensure!(resolve(mesh, "demo", c, doubled)? == BTreeSet::from([vip.clone()]));
    ensure!(
        resolve(mesh, "legacy", "deploy/legacy-client", doubled).is_err(),
        "the uncaptured pod's query went to ztunnel"
    );
    let legacy_vip = mesh.vip("legacy", "legacy-server")?;
    ensure!(
        resolve(mesh, "legacy", "deploy/legacy-client", "legacy-server")?
            == BTreeSet::from([legacy_vip])
    );

    // Metrics on the server side name both ends.
    let state = mesh.state()?;
    let node_ip = |node: &str| -> String {
        state["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"] == node)
            .and_then(|n| n["ip"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let metrics = mesh.get_in(
        NET_NS,
        &format!("http://{}:15020/metrics", node_ip(&servers[0].node)),
    )?;
    let samples = prom::parse(&metrics);
    let want = [
        ("reporter", "destination"),
        ("source_workload", "client"),
        ("source_workload_namespace", "demo"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/demo/sa/client",
        ),
        ("destination_workload", "server"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/demo/sa/server",
        ),
    ];
    ensure!(
        prom::sum(&samples, "istio_tcp_connections_opened_total", &want) >= 1.0,
        "no server-side connection metric with {want:?}"
    );
    let client_metrics = prom::parse(&mesh.get_in(
        NET_NS,
        &format!("http://{}:15020/metrics", node_ip(&client.node)),
    )?);
    let want_source = [
        ("reporter", "source"),
        ("source_workload", "client"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/demo/sa/client",
        ),
        ("destination_workload", "server"),
        ("destination_workload_namespace", "demo"),
        ("destination_service", "server.demo.svc.cluster.local"),
    ];
    ensure!(
        prom::sum(
            &client_metrics,
            "istio_tcp_connections_opened_total",
            &want_source
        ) >= 1.0,
        "no client-side connection metric with {want_source:?}"
    );

    // The client's ztunnel lists the pods the node agent handed over (upstream's `workloadState`).
    let node_ns = state["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == client.node.as_str())
        .and_then(|n| n["netns"].as_str())
        .context("client's node")?
        .to_owned();
    let dump: serde_json::Value =
        serde_json::from_str(&mesh.get_in(&node_ns, "http://127.0.0.1:15000/config_dump")?)?;
    let pods = dump["workloadState"]
        .as_object()
        .context("no workloadState")?;
    ensure!(
        pods.values().any(|p| p["state"] == "Up"
            && p["info"]["name"] == client.name.as_str()
            && p["info"]["serviceAccount"] == "client"),
        "client not Up in its ztunnel's workloadState: {pods:?}"
    );
    ensure!(
        pods.values().all(|p| p["info"]["namespace"] == "demo"),
        "uncaptured pods handed to ztunnel: {pods:?}"
    );
    // The same count in upstream's shared-mode gauges.
    let active = prom::sum(&client_metrics, "workload_manager_active_proxy_count", &[]);
    ensure!(
        active == pods.len() as f64 && active >= 1.0,
        "workload_manager_active_proxy_count {active}, workloadState {pods:?}"
    );

    // L4 authorization, changed live: deny the client's identity, then allow again.
    let policy = mesh.manifests.join("deny-client.yaml");
    std::fs::write(&policy, DENY_CLIENT)?;
    poll("client denied", WAIT, || {
        Ok(mesh
            .curl("demo", c, "http://server/")
            .is_err()
            .then_some(()))
    })?;
    mesh.curl("legacy", "deploy/legacy-client", &format!("http://{vip}/"))
        .context("the policy denies only the client's identity")?;
    std::fs::remove_file(&policy)?;
    poll("client allowed again", WAIT, || {
        Ok(mesh.curl("demo", c, "http://server/").ok())
    })?;

    // ALLOW by namespace and DENY by port, changed live: the uncaptured pod has no namespace identity, and port
    // 9090 is closed to everyone while 8080 stays open to the mesh.
    let s0 = &servers[0];
    ensure!(tcp_whoami(mesh, "demo", c, &s0.ip, 9090)? == s0.name);
    let policies = mesh.manifests.join("allow-demo.yaml");
    std::fs::write(&policies, ALLOW_DEMO_DENY_9090)?;
    let plain_url = format!("http://{}:8080/", s0.ip);
    poll("uncaptured refused by the namespace ALLOW", WAIT, || {
        Ok(mesh
            .curl("legacy", "deploy/legacy-client", &plain_url)
            .is_err()
            .then_some(()))
    })?;
    poll("port 9090 denied", WAIT, || {
        Ok(tcp_whoami(mesh, "demo", c, &s0.ip, 9090)
            .is_err()
            .then_some(()))
    })?;
    mesh.curl("demo", c, &plain_url)
        .context("demo's client is allowed on 8080")?;
    std::fs::remove_file(&policies)?;
    poll("policies removed", WAIT, || {
        Ok((mesh
            .curl("legacy", "deploy/legacy-client", &plain_url)
            .is_ok()
            && tcp_whoami(mesh, "demo", c, &s0.ip, 9090).is_ok())
        .then_some(()))
    })?;

    // STRICT mTLS: plaintext from the uncaptured pod is refused, the mesh keeps working.
    std::fs::write(mesh.manifests.join("strict.yaml"), STRICT_DEMO)?;
    let legacy_url = format!("http://{}:8080/", servers[0].ip);
    poll("uncaptured -> captured refused under STRICT", WAIT, || {
        Ok(mesh
            .curl("legacy", "deploy/legacy-client", &legacy_url)
            .is_err()
            .then_some(()))
    })?;
    mesh.curl("demo", c, "http://server/")?;

    // Labelling the legacy namespace enrolls its running pods (no restart): STRICT now lets them in.
    let pid_before = mesh.state()?["pods"]
        .as_object()
        .and_then(|p| {
            p.values()
                .find(|p| p["namespace"] == "legacy" && p["owner"] == "legacy-client")
        })
        .map(|p| p["pid"].clone());
    std::fs::write(
        mesh.manifests.join("namespaces.yaml"),
        NAMESPACES.replace(
            "metadata: {name: legacy}",
            "metadata: {name: legacy, labels: {istio.io/dataplane-mode: ambient}}",
        ),
    )?;
    poll("labelled legacy pod gets through STRICT", WAIT, || {
        Ok(mesh
            .curl("legacy", "deploy/legacy-client", &legacy_url)
            .ok())
    })?;
    let pid_after = mesh.state()?["pods"]
        .as_object()
        .and_then(|p| {
            p.values()
                .find(|p| p["namespace"] == "legacy" && p["owner"] == "legacy-client")
        })
        .map(|p| p["pid"].clone());
    ensure!(pid_before == pid_after, "enrolling restarted the pod");
    // And `none` on the pod releases it again.
    std::fs::write(
        mesh.manifests.join("apps.yaml"),
        APPS.replace(
            "metadata: {labels: {app: legacy-client}}",
            "metadata: {labels: {app: legacy-client, istio.io/dataplane-mode: none}}",
        ),
    )?;
    poll("released pod is refused again", WAIT, || {
        Ok(mesh
            .curl("legacy", "deploy/legacy-client", &legacy_url)
            .is_err()
            .then_some(()))
    })?;
    Ok(())
}

/// The host's own firewall rules and links, to compare before `up` and after `down`.
fn host_network() -> Result<String> {
    let rules = std::process::Command::new("iptables-save").output()?;
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()?;
    let rules: Vec<String> = String::from_utf8_lossy(&rules.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        // Counters change with traffic; the rules themselves must not.
        .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
        .collect();
    let links: Vec<String> = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_owned()))
        .collect();
    Ok(format!("{}\n--\n{}", rules.join("\n"), links.join("\n")))
}

#[test]
fn up_after_a_killed_up_recovers_and_down_leaves_nothing() {
    e2e_test("local-recover", |dir| {
        let manifests = write_manifests(dir.path())?;
        let host_before = host_network()?;
        let mut mesh = LocalMesh::up(dir.path(), &manifests, 1)?;
        let pid = mesh.supervisor_pid()?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        std::thread::sleep(std::time::Duration::from_millis(200));
        // Everything the killed supervisor started is still around; `up` cleans it and starts over.
        mesh.start(1)?;
        let body = poll("client -> server after recovery", WAIT, || {
            Ok(mesh.curl("demo", "deploy/client", "http://server/").ok())
        });
        if body.is_err() {
            eprintln!("{}", mesh.logs());
        }
        body?;
        mesh.down()?;
        let left = leftovers()?;
        ensure!(left.is_empty(), "ambit local down left: {left:?}");
        let host_after = host_network()?;
        ensure!(
            host_before == host_after,
            "the host's rules or links changed:\nbefore:\n{host_before}\nafter:\n{host_after}"
        );
        Ok(())
    });
}
