//! `ambit dashboard proxy` and `ambit local up --addons prometheus` on one local mesh with a namespace waypoint:
//! `up --addons prometheus` prints the add-on's URL and returns with Prometheus running and scraping every ztunnel,
//! the waypoint and the controller; `dashboard proxy` forwards a ztunnel's and the waypoint's admin port
//! (`/config_dump` through the forward names the proxy), `--print-url` says where without forwarding, an
//! application pod means its node's ztunnel, an unknown pod is a one-line error naming the proxies; `local down`
//! stops the add-on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ambit_e2e::e2e_test;
use ambit_e2e::local::{ambit_bin, leftovers};
use ambit_e2e::process::Process;
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;
use serde_json::Value;

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
metadata: {name: client, namespace: demo}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers: [{name: sleep, command: [sleep, infinity]}]
"#;

/// `ambit local --dir <state> down` when dropped, so a failed test leaves nothing running.
struct Mesh {
    state: PathBuf,
    up: bool,
}

impl Mesh {
    fn ambit(&self, args: &[&str]) -> Result<Output> {
        Command::new(ambit_bin()?)
            .args(args)
            .env("AMBIT_LOCAL_DIR", &self.state)
            .output()
            .with_context(|| format!("run ambit {args:?}"))
    }

    fn down(&mut self) -> Result<()> {
        self.up = false;
        let out = self.ambit(&["local", "down"])?;
        ensure!(
            out.status.success(),
            "ambit local down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// `(name, node)` of the first pod of Deployment `owner` in `ns`.
    fn pod(&self, ns: &str, owner: &str) -> Result<Option<(String, String)>> {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(self.state.join("state.json"))?)?;
        Ok(v["pods"]
            .as_object()
            .into_iter()
            .flatten()
            .find_map(|(_, p)| {
                (p["namespace"] == ns && p["owner"] == owner).then(|| {
                    (
                        p["name"].as_str().unwrap_or_default().to_owned(),
                        p["node"].as_str().unwrap_or_default().to_owned(),
                    )
                })
            }))
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if self.up {
            let _ = self.down();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `GET path` on `addr` (HTTP/1.0): status and body.
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

/// `ambit dashboard proxy <pod>` forwarding a free port; `/config_dump` through it must be JSON containing `names`.
fn proxy_config_dump(mesh: &Mesh, logs: &Path, pod: &str, names: &str) -> Result<()> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(ambit_bin()?);
    cmd.args([
        "dashboard",
        "proxy",
        pod,
        "--no-browser",
        "--address",
        "127.0.0.1",
    ])
    .args(["-p", &port.to_string()])
    .env("AMBIT_LOCAL_DIR", &mesh.state);
    let mut proc = Process::spawn(&format!("dashboard-proxy-{port}"), cmd, logs)?;
    let body = poll(
        &format!("/config_dump of {pod} through the forward"),
        Duration::from_secs(10),
        || {
            if let Some(status) = proc.exited() {
                bail!(
                    "ambit dashboard proxy {pod} exited ({status}): {}",
                    proc.output()
                );
            }
            Ok(get(addr, "/config_dump")
                .ok()
                .filter(|(code, _)| *code == 200)
                .map(|(_, b)| b))
        },
    )?;
    let v: Value =
        serde_json::from_str(&body).with_context(|| format!("{pod} /config_dump: {body}"))?;
    ensure!(
        v.to_string().contains(names),
        "{pod} /config_dump does not name {names:?}"
    );
    ensure!(
        proc.output()
            .contains(&format!("http://127.0.0.1:{port} -> ")),
        "no URL printed: {}",
        proc.output()
    );
    let status = proc.stop_with(Signal::SIGTERM, Duration::from_secs(5));
    ensure!(
        status.is_some_and(|s| s.success()),
        "dashboard proxy on SIGTERM: {status:?}"
    );
    Ok(())
}

#[test]
fn dashboard_proxy_and_the_prometheus_addon() {
    e2e_test("cli-dashboard", |dir| {
        let m = dir.path().join("manifests");
        std::fs::create_dir_all(&m)?;
        std::fs::write(m.join("demo.yaml"), MANIFESTS)?;
        let mut mesh = Mesh {
            state: dir.path().join("local-state"),
            up: true,
        };
        let result = scenario(&mut mesh, &m, dir.path());
        if result.is_err() {
            let log = std::fs::read_to_string(mesh.state.join("prometheus/addon.log"))
                .unwrap_or_default();
            eprintln!("==== prometheus/addon.log ====\n{log}");
        }
        result?;
        // What other tests on this machine run from their own directories is theirs.
        let ours = dir.path().to_string_lossy().into_owned();
        let left: Vec<String> = leftovers()?
            .into_iter()
            .filter(|l| !l.contains("/tmp/ambit-e2e-") || l.contains(&ours))
            .collect();
        ensure!(left.is_empty(), "ambit local down left: {left:?}");
        Ok(())
    });
}

fn scenario(mesh: &mut Mesh, manifests: &Path, logs: &Path) -> Result<()> {
    // An unknown add-on: one line listing the known ones, before anything starts.
    let out = mesh.ambit(&[
        "local",
        "up",
        "--addons",
        "prometheus,grafan",
        "-f",
        "/nonexistent",
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("known add-ons are prometheus"),
        "--addons grafan: {err}"
    );

    let prom_port = free_port()?;
    let m = manifests.to_string_lossy();
    let out = mesh.ambit(&[
        "local",
        "up",
        "--timeout",
        "90",
        "--nodes",
        "2",
        "--addons",
        "prometheus",
        "--prometheus-port",
        &prom_port.to_string(),
        "-f",
        &m,
    ])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && stdout.contains(&format!(
                "Prometheus (add-on): http://localhost:{prom_port}"
            )),
        "local up --addons prometheus: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prom = SocketAddr::from(([127, 0, 0, 1], prom_port));

    let (wp, _) = poll("the waypoint pod", Duration::from_secs(20), || {
        mesh.pod("demo", "waypoint")
    })?;
    let (client, client_node) = poll("the client pod", Duration::from_secs(20), || {
        mesh.pod("demo", "client")
    })?;

    // Where it would forward, without root or a forward.
    let out = mesh.ambit(&["dashboard", "proxy", "ztunnel-node-2", "--print-url"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && text.trim()
                == "http://localhost:15000 -> ztunnel ztunnel-node-2.istio-system admin (127.0.0.1:15000 in \
                    network namespace ambit-l-node-2)",
        "--print-url: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `envoy` is istioctl's old name; an application pod means its node's ztunnel.
    let out = mesh.ambit(&[
        "dashboard",
        "envoy",
        &format!("{client}.demo"),
        "--print-url",
        "-p",
        "15999",
    ])?;
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(
        out.status.success()
            && text.starts_with(&format!(
                "http://localhost:15999 -> ztunnel ztunnel-{client_node}.istio-system"
            ))
            && err.contains("has no proxy of its own"),
        "dashboard envoy {client}: {text}{err}"
    );
    let out = mesh.ambit(&[
        "dashboard",
        "proxy",
        "deploy/waypoint",
        "-n",
        "demo",
        "--print-url",
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains(&format!("-> waypoint {wp}.demo admin")),
        "deploy/waypoint: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An unknown pod: one line naming the proxies there are.
    let out = mesh.ambit(&["dashboard", "proxy", "nope.demo"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && err.trim().lines().count() == 1
            && err.contains("no proxy nope.demo")
            && err.contains("ztunnel-node-1.istio-system")
            && err.contains(&format!("{wp}.demo")),
        "unknown pod: {err}"
    );

    // The admin ports through the forward.
    proxy_config_dump(mesh, logs, "ztunnel-node-1.istio-system", "node-1")?;
    proxy_config_dump(mesh, logs, &format!("{wp}.demo"), &wp)?;

    // The add-on scrapes every ztunnel, the waypoint and the controller.
    poll("the add-on's targets up", Duration::from_secs(20), || {
        let (_, body) = get(prom, "/api/v1/targets?state=active")?;
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
    })?;
    let pid: i32 = std::fs::read_to_string(mesh.state.join("addons/prometheus.pid"))?
        .trim()
        .parse()?;

    // `down` stops it.
    mesh.down()?;
    ensure!(
        get(prom, "/-/ready").is_err(),
        "Prometheus still answers after local down"
    );
    ensure!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z")),
        "the add-on (pid {pid}) still runs after local down"
    );
    Ok(())
}
