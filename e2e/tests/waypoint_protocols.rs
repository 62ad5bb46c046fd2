//! gRPC and WebSocket through a waypoint, end to end in `ambit local`, with real clients and servers: Python's
//! `grpcio` (Debian's python3-grpcio) and `websockets` (python3-websockets), the scripts in
//! `waypoint_protocols/`. A namespace waypoint the controller deploys, a GRPCRoute that sends `x-version: v2` to the
//! v2 pods and everything else of `ambit.test.Echo` to v1, and a WebSocket echo Service.
//!
//! * gRPC unary over one HTTP/2 connection: OK with the answer and trailers from the routed version, the waypoint's
//!   `x-request-id` seen by the server; an error status (NOT_FOUND) and its message come back unchanged; a
//!   server-streaming call delivers every message then the trailers; the waypoint counts them under
//!   `request_protocol="grpc"` with their `grpc_response_status`;
//! * WebSocket by Service: the upgrade passes the waypoint (the server sees its `x-request-id`; the waypoint counts
//!   a 101) and messages flow both ways; by pod IP it goes direct (no `x-request-id`), as service waypoints do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_e2e::e2e_test;
use ambit_e2e::local::{LocalMesh, PodInfo, WAIT, run_on_mesh};
use ambit_e2e::prom;
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

const NS: &str = "proto";
const CLIENT: &str = "deploy/client";
/// Debian's interpreter, where python3-grpcio and python3-websockets are installed (`scripts/test.sh`).
const PYTHON: &str = "/usr/bin/python3";
/// The waypoint starts after the controller deploys it, then needs its certificate and config.
const WAYPOINT_UP: Duration = Duration::from_secs(60);

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/waypoint_protocols")
        .join(name)
        .display()
        .to_string()
}

fn deployment(name: &str, labels: &str, command: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}{labels}}}}}
    spec:
      containers: [{{name: main, command: {command}}}]
"#
    )
}

fn manifests(dir: &Path) -> Result<PathBuf> {
    let m = dir.join("manifests");
    std::fs::create_dir_all(&m)?;
    let grpc = |v: &str| {
        deployment(
            &format!("grpc-{v}"),
            &format!(", svc: grpc, version: {v}"),
            &format!(r#"["{PYTHON}", "{}", "9000"]"#, script("grpc_echo.py")),
        )
    };
    let services = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}, labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: {NS}}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Service
metadata: {{name: grpc, namespace: {NS}}}
spec:
  selector: {{svc: grpc}}
  ports: [{{name: grpc, port: 9000, appProtocol: grpc}}]
---
apiVersion: v1
kind: Service
metadata: {{name: grpc-v1, namespace: {NS}}}
spec:
  selector: {{svc: grpc, version: v1}}
  ports: [{{name: grpc, port: 9000, appProtocol: grpc}}]
---
apiVersion: v1
kind: Service
metadata: {{name: grpc-v2, namespace: {NS}}}
spec:
  selector: {{svc: grpc, version: v2}}
  ports: [{{name: grpc, port: 9000, appProtocol: grpc}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: grpc, namespace: {NS}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: grpc, port: 9000}}]
  rules:
  # GRPCRoute precedence: the longer service match first, then more header matches, so the header rule names
  # the service too.
  - matches: [{{method: {{service: ambit.test.Echo}}, headers: [{{name: x-version, value: v2}}]}}]
    backendRefs: [{{name: grpc-v2, port: 9000}}]
  - matches: [{{method: {{service: ambit.test.Echo}}}}]
    backendRefs: [{{name: grpc-v1, port: 9000}}]
---
apiVersion: v1
kind: Service
metadata: {{name: ws, namespace: {NS}}}
spec:
  selector: {{app: ws}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"#
    );
    let apps = [
        deployment("client", "", r#"["sleep", "infinity"]"#),
        grpc("v1"),
        grpc("v2"),
        deployment(
            "ws",
            "",
            &format!(r#"["{PYTHON}", "{}", "8080"]"#, script("ws_echo.py")),
        ),
    ]
    .join("---\n");
    std::fs::write(m.join("services.yaml"), services)?;
    std::fs::write(m.join("apps.yaml"), apps)?;
    Ok(m)
}

/// Runs a client script in the client pod; one JSON object per output line.
fn run_client(mesh: &LocalMesh, script_name: &str, args: &[&str]) -> Result<Vec<Value>> {
    let path = script(script_name);
    let argv = [&[PYTHON, path.as_str()][..], args].concat();
    let out = mesh.exec(NS, CLIENT, &argv)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{script_name} {args:?}: exit {:?}\n{stdout}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("{script_name}: {l}")))
        .collect()
}

fn waypoint_requests(mesh: &LocalMesh, wp: &PodInfo, labels: &[(&str, &str)]) -> Result<f64> {
    let text = mesh.get_in(&wp.netns, "http://127.0.0.1:15020/metrics")?;
    let want = [&[("reporter", "waypoint")], labels].concat();
    Ok(prom::sum(
        &prom::parse(&text),
        "istio_requests_total",
        &want,
    ))
}

fn field<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_default()
}

fn scenario(mesh: &LocalMesh) -> Result<()> {
    let wp = mesh.one_pod(NS, "waypoint", WAYPOINT_UP)?;
    for app in ["client", "grpc-v1", "grpc-v2", "ws"] {
        let p = mesh.one_pod(NS, app, WAYPOINT_UP)?;
        ensure!(p.captured, "{} is not captured", p.name);
    }
    // The first call that comes back through the waypoint (its x-request-id seen by the server) says the
    // client's ztunnel knows the binding and the waypoint has the route.
    poll("a gRPC call through the waypoint", WAYPOINT_UP, || {
        let calls = run_client(mesh, "grpc_client.py", &["grpc.proto:9000", "echo:ping"]).ok();
        Ok(calls.and_then(|c| c.into_iter().next()).filter(|c| {
            c["code"] == "OK" && !field(c, &["trailers", "x-seen-request-id"]).is_empty()
        }))
    })?;

    let calls = run_client(
        mesh,
        "grpc_client.py",
        &[
            "grpc.proto:9000",
            "echo:one",
            "echo:two:x-version=v2",
            "fail:thing",
            "count:5",
            "echo:three",
        ],
    )?;
    ensure!(calls.len() == 5, "{calls:?}");
    for (i, want_version) in [(0, "grpc-v1"), (1, "grpc-v2"), (4, "grpc-v1")] {
        let c = &calls[i];
        ensure!(c["code"] == "OK", "call {i}: {c}");
        let pod = field(c, &["trailers", "x-pod"]);
        ensure!(
            pod.starts_with(want_version),
            "call {i} answered by {pod}, want {want_version}: {c}"
        );
        let msg = c["messages"][0].as_str().unwrap_or_default();
        ensure!(
            msg.starts_with(&format!("{pod}:")),
            "call {i}: message {msg:?}"
        );
        ensure!(
            !field(c, &["trailers", "x-seen-request-id"]).is_empty(),
            "call {i} did not pass the waypoint: {c}"
        );
    }
    let fail = &calls[2];
    ensure!(
        fail["code"] == "NOT_FOUND" && field(fail, &["details"]) == "no such thing: thing",
        "the error status did not come back unchanged: {fail}"
    );
    let count = &calls[3];
    let msgs: Vec<&str> = count["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        count["code"] == "OK" && msgs == ["0", "1", "2", "3", "4"],
        "server streaming: {count}"
    );
    ensure!(
        field(count, &["trailers", "x-pod"]).starts_with("grpc-v1"),
        "streaming trailers lost: {count}"
    );
    let grpc = [("request_protocol", "grpc")];
    let ok = waypoint_requests(
        mesh,
        &wp,
        &[&grpc[..], &[("grpc_response_status", "0")]].concat(),
    )?;
    let not_found = waypoint_requests(
        mesh,
        &wp,
        &[&grpc[..], &[("grpc_response_status", "5")]].concat(),
    )?;
    ensure!(ok >= 4.0, "waypoint counted {ok} gRPC OK calls, want >= 4");
    ensure!(
        not_found >= 1.0,
        "waypoint counted {not_found} NOT_FOUND calls, want >= 1"
    );

    // WebSocket by Service: through the waypoint.
    let got = poll("a WebSocket session through the waypoint", WAIT, || {
        let r = run_client(
            mesh,
            "ws_client.py",
            &["ws://ws.proto/chat", "hello", "again"],
        )
        .ok();
        Ok(r.and_then(|r| r.into_iter().next()))
    })?;
    let received: Vec<&str> = got["received"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let [greeting, first, second] = received[..] else {
        bail!("WebSocket: {got}");
    };
    ensure!(
        greeting.len() > "request-id:".len(),
        "the upgrade did not pass the waypoint: {greeting:?}"
    );
    let ws_pod = mesh.one_pod(NS, "ws", WAYPOINT_UP)?;
    ensure!(
        first == format!("{}:hello", ws_pod.name) && second == format!("{}:again", ws_pod.name),
        "WebSocket echoes: {received:?}"
    );
    let upgrades = waypoint_requests(mesh, &wp, &[("response_code", "101")])?;
    ensure!(
        upgrades >= 1.0,
        "the waypoint counted {upgrades} 101 responses"
    );
    // By pod IP: a service waypoint does not see pod-addressed traffic.
    let direct = run_client(
        mesh,
        "ws_client.py",
        &[&format!("ws://{}:8080/chat", ws_pod.ip), "direct"],
    )?;
    ensure!(
        direct.first().map(|d| d["received"][0] == "request-id:") == Some(true),
        "pod-addressed WebSocket passed a waypoint: {direct:?}"
    );
    Ok(())
}

#[test]
fn waypoint_grpc_and_websocket_with_real_clients() {
    e2e_test("local-waypoint-protocols", |dir| {
        for m in ["grpc", "websockets"] {
            let ok = std::process::Command::new(PYTHON)
                .args(["-c", &format!("import {m}")])
                .status()
                .is_ok_and(|s| s.success());
            ensure!(
                ok,
                "{PYTHON} lacks the {m} module (scripts/test.sh installs python3-grpcio python3-websockets)"
            );
        }
        let manifests = manifests(dir.path())?;
        run_on_mesh(dir.path(), &manifests, 2, scenario, |_| String::new())
    });
}
