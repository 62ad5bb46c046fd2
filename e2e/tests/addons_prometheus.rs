//! The Prometheus addon and the Grafana dashboards against the real Prometheus (Debian package `prometheus`):
//! `ambit local up` with a namespace waypoint, HTTP traffic from a client through it, then `ambit dashboard
//! prometheus` (its generated configuration passes `promtool check config`, as does the cluster configuration of
//! `addons/prometheus/`), every ztunnel, waypoint and controller target up through the command's port forward, and EVERY PromQL
//! expression of `addons/grafana/dashboards/*.json` evaluated through `/api/v1/query` without error, the key ones
//! with the series and labels the dashboards group by (`reporter="waypoint"` requests by `destination_service` and
//! `response_code="200"`, the ztunnels' TCP bytes by workload and node). Then the cluster configuration's relabeling
//! on a second Prometheus, fed the mesh's pods as Kubernetes discovery would describe them ([`cluster`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ambit_e2e::e2e_test;
use ambit_e2e::local::{Echo, LocalMesh, NET_NS, ambit_bin, run_on_mesh};
use ambit_e2e::process::Process;
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;
use serde_json::Value;

#[path = "addons_prometheus/cluster.rs"]
mod cluster;

const NS: &str = "demo";
const SERVICE: &str = "server.demo.svc.cluster.local";

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: server, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server, version: v1}}
    spec:
      serviceAccountName: server
      containers:
      - name: echo
        command: [ambit, echo, --http-port, "8080"]
        ports: [{name: http, containerPort: 8080}]
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
metadata: {name: client, namespace: demo}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      serviceAccountName: client
      containers: [{name: sleep, command: [sleep, infinity]}]
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tool on `PATH`, or a loud failure: CI installs Prometheus (scripts/test.sh), so a missing one is a broken
/// setup, never a reason to pass.
fn required_tool(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "`{name}` is not installed: `apt-get install -y --no-install-recommends prometheus` \
                 (scripts/test.sh installs it); this test does not skip without it"
            )
        })
}

#[test]
fn dashboards_evaluate_on_a_real_prometheus() {
    e2e_test("addons-prometheus", |dir| {
        required_tool("prometheus")?;
        required_tool("promtool")?;
        let m = dir.path().join("manifests");
        std::fs::create_dir_all(&m)?;
        std::fs::write(m.join("demo.yaml"), MANIFESTS)?;
        let logs = dir.path().to_owned();
        run_on_mesh(
            dir.path(),
            &m,
            2,
            |mesh| scenario(mesh, &logs),
            |_| String::new(),
        )
    });
}

fn promtool_check(config: &Path) -> Result<()> {
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(config)
        .output()?;
    ensure!(
        out.status.success(),
        "promtool check config {}: {}{}",
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `count` requests from the client to the server Service in one `curl`; each must answer 200 through the
/// waypoint.
fn traffic(mesh: &LocalMesh, count: usize) -> Result<()> {
    let url = format!("http://server.{NS}/");
    let mut argv = vec![
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-w",
        "code=%{http_code}\n",
    ];
    argv.extend(std::iter::repeat_n(url.as_str(), count));
    let out = mesh.exec(NS, "deploy/client", &argv)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ok = text.lines().filter(|l| *l == "code=200").count();
    ensure!(
        ok == count,
        "{ok} of {count} requests answered 200: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echoes = Echo::parse_all(&text);
    ensure!(
        echoes
            .iter()
            .all(|e| e.headers.contains_key("x-request-id")),
        "requests did not pass the waypoint"
    );
    Ok(())
}

/// `count` requests from the client to the server pod's address, which skip the Service's waypoint: plain L4
/// through both ztunnels, whose connections close (ztunnel counts a connection's bytes when it closes; the
/// waypoint keeps its upstream connections open).
fn direct_traffic(mesh: &LocalMesh, count: usize) -> Result<()> {
    let server = mesh.one_pod(NS, "server", Duration::from_secs(5))?;
    let url = format!("http://{}:8080/", server.ip);
    for _ in 0..count {
        mesh.curl(NS, "deploy/client", &url)?;
    }
    Ok(())
}

/// A free TCP port on this host's loopback.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Percent-encoding of a query parameter value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET path` on `addr` (HTTP/1.0: no chunking): status and body.
fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("not HTTP")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status")?;
    Ok((code, body.to_owned()))
}

/// An instant query: the result vector, or the error Prometheus gives.
fn query(addr: SocketAddr, promql: &str) -> Result<Vec<Value>> {
    let (code, body) = get(addr, &format!("/api/v1/query?query={}", encode(promql)))?;
    let v: Value = serde_json::from_str(&body).with_context(|| format!("HTTP {code}: {body}"))?;
    if v["status"] != "success" {
        bail!("{}: {}", v["errorType"], v["error"]);
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// One PromQL expression of a dashboard: where it is and the text with Grafana's variables.
struct Expr {
    at: String,
    /// Title of the panel (or `var <name>`).
    panel: String,
    text: String,
}

/// Every expression of a dashboard: panel targets (rows included) and query variables (`label_values(selector,
/// label)` becomes `count by (label) (selector)`).
fn expressions(file: &str, dash: &Value) -> Vec<Expr> {
    fn panels(file: &str, list: &Value, out: &mut Vec<Expr>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or_default();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(Expr {
                        at: format!("{file} panel {title:?} {}", t["refId"]),
                        panel: title.to_owned(),
                        text: e.to_owned(),
                    });
                }
            }
            panels(file, &p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(file, &dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or_default();
        let text = match q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
        {
            Some((selector, label)) => format!("count by ({}) ({selector})", label.trim()),
            None => q.to_owned(),
        };
        out.push(Expr {
            at: format!("{file} variable {}", v["name"]),
            panel: format!("var {}", v["name"].as_str().unwrap_or_default()),
            text,
        });
    }
    out
}

/// Grafana's variables as the dashboards use them: built-in intervals, and every template variable at "All"
/// (`.*`; they are only used in `=~` matchers).
fn substitute(expr: &str) -> String {
    let mut s = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "5s")
        .replace("$__range", "5m");
    while let Some(i) = s.find('$') {
        let rest = &s[i + 1..];
        let len = match rest.strip_prefix('{') {
            Some(inner) => inner.find('}').map_or(rest.len(), |e| e + 2),
            None => rest
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .unwrap_or(rest.len()),
        };
        s.replace_range(i..i + 1 + len, ".*");
    }
    s
}

/// The labels of a result series.
fn label<'a>(series: &'a Value, name: &str) -> &'a str {
    series["metric"][name].as_str().unwrap_or_default()
}

fn value(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn scenario(mesh: &LocalMesh, logs: &Path) -> Result<()> {
    // The client's ztunnel learns of the Service's waypoint shortly after `up`.
    poll(
        "traffic through the waypoint",
        Duration::from_secs(20),
        || Ok(traffic(mesh, 1).ok()),
    )?;
    traffic(mesh, 10)?;

    // Missing Prometheus: a clear error naming the package.
    let out = mesh.ambit_cli(&[
        "dashboard",
        "prometheus",
        "--prometheus-bin",
        "/nonexistent/prometheus",
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("install the package `prometheus`"),
        "without prometheus: {:?} {err}",
        out.status
    );
    let out = mesh.ambit_cli(&[
        "dashboard",
        "prometheus",
        "--print-config",
        "--scrape-interval",
        "1s",
    ])?;
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success()
            && printed.contains("- job_name: waypoint")
            && printed.contains("scrape_interval: 1s"),
        "--print-config: {printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(ambit_bin()?);
    cmd.args([
        "dashboard",
        "prometheus",
        "--no-browser",
        "--scrape-interval",
        "1s",
    ])
    .args([
        "--address",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--storage-dir",
    ])
    .arg(logs.join("prometheus-data"))
    .env("AMBIT_LOCAL_DIR", mesh.state_dir());
    let mut dash = Process::spawn("ambit-dashboard", cmd, logs)?;
    poll(
        "ambit dashboard prometheus to serve",
        Duration::from_secs(20),
        || {
            if let Some(status) = dash.exited() {
                bail!(
                    "ambit dashboard prometheus exited ({status}): {}",
                    dash.output()
                );
            }
            Ok(dash
                .output()
                .contains("Prometheus for the local mesh")
                .then_some(()))
        },
    )?;
    let config = mesh.state_dir().join("prometheus/prometheus.yml");
    promtool_check(&config)?;
    ensure!(
        std::fs::read_to_string(&config)? == printed,
        "--print-config differs from the config it runs"
    );

    // Every ztunnel (one per node), the waypoint and the controller, up, reached through the command's port
    // forward.
    poll(
        "the ztunnel, waypoint and controller targets up",
        Duration::from_secs(15),
        || {
            let (_, body) = get(addr, "/api/v1/targets?state=active")?;
            let v: Value = serde_json::from_str(&body)?;
            let targets = v["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up = |job: &str| {
                targets
                    .iter()
                    .filter(|t| t["labels"]["job"] == job && t["health"] == "up")
                    .count()
            };
            Ok((up("ztunnel") == 2 && up("waypoint") == 1 && up("controller") == 1).then_some(()))
        },
    )?;
    // Traffic while Prometheus scrapes, so rates are not zero.
    traffic(mesh, 20)?;
    direct_traffic(mesh, 2)?;
    std::thread::sleep(Duration::from_secs(2));
    traffic(mesh, 20)?;
    direct_traffic(mesh, 2)?;
    poll(
        "the waypoint's requests in Prometheus",
        Duration::from_secs(10),
        || {
            let r = query(
                addr,
                r#"sum(rate(istio_requests_total{reporter="waypoint"}[1m]))"#,
            )?;
            Ok(r.first().is_some_and(|s| value(s) > 0.0).then_some(()))
        },
    )?;

    // Every expression of every dashboard parses and evaluates.
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let dir = repo().join("addons/grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    ensure!(
        files.len() >= 4,
        "dashboards in {}: {files:?}",
        dir.display()
    );
    for f in &files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(f)?)
            .with_context(|| format!("{name} is not JSON"))?;
        let exprs = expressions(&name, &dash);
        ensure!(!exprs.is_empty(), "{name} has no expressions");
        for e in exprs {
            let promql = substitute(&e.text);
            match query(addr, &promql) {
                Ok(r) => results.push((name.clone(), e.panel, r)),
                Err(err) => errors.push(format!("{}: {err:#}\n  {promql}", e.at)),
            }
        }
    }
    ensure!(
        errors.is_empty(),
        "{} expressions failed:\n{}",
        errors.len(),
        errors.join("\n")
    );
    // For whoever reads the log: the expressions that are empty in this scenario (features it does not use).
    let empty: Vec<String> = results
        .iter()
        .filter(|(_, _, r)| r.is_empty())
        .map(|(f, p, _)| format!("{f}: {p}"))
        .collect();
    eprintln!(
        "{} expressions evaluated; empty here: {empty:?}",
        results.len()
    );
    let found = |file: &str, panel: &str| -> Vec<Value> {
        results
            .iter()
            .filter(|(f, p, _)| f == file && p == panel)
            .flat_map(|(_, _, r)| r.iter().cloned())
            .collect()
    };

    // The key panels show the traffic, with Istio's labels.
    let requests = found("ambit-mesh.json", "Requests/s");
    ensure!(
        requests
            .iter()
            .any(|s| label(s, "destination_service") == SERVICE
                && label(s, "response_code") == "200"
                && value(s) > 0.0),
        "mesh Requests/s has no {SERVICE} 200: {requests:?}"
    );
    let latency = found("ambit-mesh.json", "Latency P99");
    ensure!(
        latency
            .iter()
            .any(|s| label(s, "destination_service") == SERVICE && value(s).is_finite()),
        "mesh Latency P99 has no {SERVICE}: {latency:?}"
    );
    let services = found("ambit-mesh.json", "Services");
    ensure!(
        services
            .iter()
            .any(|s| label(s, "destination_service") == SERVICE),
        "mesh Services table has no {SERVICE}: {services:?}"
    );
    let bytes = found("ambit-mesh.json", "Bytes received/s");
    ensure!(
        bytes
            .iter()
            .any(|s| label(s, "destination_workload") == "server"
                && label(s, "destination_workload_namespace") == NS),
        "mesh Bytes received/s has no demo/server: {bytes:?}"
    );
    let zt = found("ambit-ztunnel.json", "Bytes sent/s");
    ensure!(
        zt.iter().any(|s| label(s, "node").starts_with("node-") && label(s, "reporter") == "destination"),
        "ztunnel Bytes sent/s has no node: {zt:?}"
    );
    let nodes = found("ambit-ztunnel.json", "var node");
    ensure!(nodes.len() == 2, "ztunnel node variable: {nodes:?}");
    let by_code = found("ambit-waypoint.json", "By response code");
    ensure!(
        by_code
            .iter()
            .any(|s| label(s, "response_code") == "200"
                && label(s, "destination_service") == SERVICE),
        "waypoint By response code: {by_code:?}"
    );
    let xds = found("ambit-ztunnel.json", "xDS messages/s");
    ensure!(
        xds.iter()
            .any(|s| label(s, "url").ends_with("istio.workload.Address")),
        "ztunnel xDS messages/s: {xds:?}"
    );
    let waypoints = found("ambit-waypoint.json", "var waypoint");
    ensure!(
        waypoints
            .iter()
            .any(|s| label(s, "gateway_networking_k8s_io_gateway_name") == "waypoint"),
        "waypoint variable: {waypoints:?}"
    );
    // The controller's panels: both ztunnels and the waypoint connected, and address (wds) pushes.
    let connected = found("ambit-controller.json", "Connected proxies");
    ensure!(
        connected.iter().any(|s| value(s) >= 3.0),
        "controller Connected proxies: {connected:?}"
    );
    let pushes = found("ambit-controller.json", "Pushes/s by type");
    ensure!(
        pushes.iter().any(|s| label(s, "type") == "wds"),
        "controller Pushes/s by type: {pushes:?}"
    );
    let pods = found("ambit-controller.json", "var pod");
    ensure!(pods.len() == 1, "controller pod variable: {pods:?}");

    // The raw series: Istio's label set and the target labels of Kubernetes discovery.
    let raw = query(
        addr,
        &format!(
            r#"istio_requests_total{{reporter="waypoint", destination_service="{SERVICE}", response_code="200"}}"#
        ),
    )?;
    let s = raw
        .first()
        .context("no waypoint istio_requests_total series")?;
    for (k, v) in [
        ("job", "waypoint"),
        ("namespace", NS),
        ("source_workload", "client"),
        ("destination_workload", "server"),
        ("destination_service_name", "server"),
        ("request_protocol", "http"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ] {
        ensure!(label(s, k) == v, "{k}={:?}, want {v:?} in {s}", label(s, k));
    }
    let tcp = query(
        addr,
        r#"istio_tcp_sent_bytes_total{job="ztunnel", reporter="destination", destination_workload="server"}"#,
    )?;
    ensure!(
        tcp.iter()
            .any(|s| label(s, "app") == "ztunnel" && label(s, "pod").starts_with("ztunnel-")),
        "ztunnel TCP bytes: {tcp:?}"
    );

    cluster::cluster_relabeling(mesh, logs, addr)?;

    // Ctrl-C (SIGTERM) stops the command and its Prometheus.
    let status = dash.stop_with(Signal::SIGTERM, Duration::from_secs(10));
    ensure!(
        status.is_some_and(|s| s.success()),
        "ambit dashboard prometheus on SIGTERM: {status:?}"
    );
    let left = Command::new("ip")
        .args(["netns", "pids", NET_NS])
        .output()?;
    for pid in String::from_utf8_lossy(&left.stdout).split_whitespace() {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        ensure!(
            !exe.ends_with("prometheus"),
            "prometheus (pid {pid}) still runs"
        );
    }
    Ok(())
}
