//! `ambit ztunnel-config` against a running ztunnel: Ambit's ztunnel in dedicated mode on
//! `tests/fixtures/zc/ambit-local.yaml` (`LOCAL_XDS_PATH`, `FAKE_CA`) inside a network namespace of its own,
//! posing as node-1 of a local mesh (a `state.json` naming that namespace). The tables must be the golden ones of
//! the saved dumps of the same config; certificates, connections and `log` talk to the live admin port.
//!
//! A second ztunnel runs in shared mode in a namespace of its own, with this test as its node agent (ZDS) handing
//! over one pod's namespace: a connection the pod makes is in `zc connections` while it is open, and gone after.
//!
//! Needs root (a network namespace) and the `ztunnel` binary of the same build (`cargo build -p ambit-ztunnel`, or
//! `AMBIT_ZTUNNEL_BIN`); skipped without them unless `AMBIT_E2E_REQUIRED=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::netns::Netns;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const AMBIT: &str = env!("CARGO_BIN_EXE_ambit");

/// The namespace and the ztunnel in it; dropping it kills the ztunnel and deletes the namespace.
struct LiveZtunnel {
    child: Child,
    /// Dropped (deleted) after the ztunnel is killed.
    netns: Netns,
    log: PathBuf,
}

impl Drop for LiveZtunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn skip_or_fail(why: &str) {
    let required = std::env::var("AMBIT_E2E_REQUIRED")
        .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    assert!(
        !required,
        "zc_live: {why} (AMBIT_E2E_REQUIRED=1, so not skipping)"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED zc_live: {why}");
}

fn ztunnel_bin() -> PathBuf {
    match std::env::var_os("AMBIT_ZTUNNEL_BIN").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => Path::new(AMBIT).with_file_name("ztunnel"),
    }
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn start(dir: &Path) -> LiveZtunnel {
    let netns = Netns::new(format!("ambit-zc-{}", std::process::id()));
    let log = dir.join("ztunnel.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &netns.0])
        .arg(ztunnel_bin())
        .current_dir(dir)
        .env("PROXY_MODE", "dedicated")
        .env(
            "PROXY_WORKLOAD_INFO",
            "default/sleep-7656cf8794-lxcmx/sleep",
        )
        .env("XDS_ADDRESS", "")
        .env("CA_ADDRESS", "")
        .env("FAKE_CA", "true")
        .env(
            "LOCAL_XDS_PATH",
            manifest_dir().join("tests/fixtures/zc/ambit-local.yaml"),
        )
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    LiveZtunnel { child, netns, log }
}

/// A local mesh of one node whose namespace is the ztunnel's, run by this process (so it counts as running).
fn state(dir: &Path, netns: &str) {
    let state = serde_json::json!({
        "manifests": "/nowhere", "supervisor_pid": std::process::id(), "ready": true,
        "services": {}, "errors": [],
        "nodes": [{"name": "node-1", "ip": "10.244.0.11", "netns": netns}],
        "pods": {"bookinfo/reviews-v1-5b5d6494f4-qwjv4": {
            "namespace": "bookinfo", "name": "reviews-v1-5b5d6494f4-qwjv4", "uid": "u", "ip": "10.244.1.6",
            "node": "node-1", "netns": "unused", "veth": "v", "owner": "reviews-v1", "captured": true,
            "ready": true, "pid": null, "restarts": 0, "log": "/dev/null", "spec_hash": 0}}
    });
    std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn zc(dir: &Path, args: &[&str]) -> Out {
    let out = Command::new(AMBIT)
        .arg("zc")
        .args(args)
        .arg("--local-dir")
        .arg(dir)
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(dir: &Path, args: &[&str]) -> Out {
    let out = zc(dir, args);
    assert_eq!(out.code, 0, "zc {args:?}: {}{}", out.stdout, out.stderr);
    out
}

fn golden(name: &str) -> String {
    std::fs::read_to_string(manifest_dir().join("tests/golden/zc").join(name)).unwrap()
}

#[test]
fn zc_against_a_running_ztunnel() {
    if !nix::unistd::Uid::effective().is_root() {
        return skip_or_fail("needs root (a network namespace for the ztunnel)");
    }
    if !ztunnel_bin().is_file() {
        return skip_or_fail(&format!(
            "no ztunnel binary at {} (cargo build -p ambit-ztunnel, or set AMBIT_ZTUNNEL_BIN)",
            ztunnel_bin().display()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let zt = start(dir.path());
    state(dir.path(), &zt.netns.0);
    let d = dir.path();

    // Until the ztunnel answers with its config loaded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = zc(d, &["workload"]);
        if out.code == 0 && out.stdout.lines().count() == 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ztunnel did not serve its config within 30 s: {}{}\nztunnel log:\n{}",
            out.stdout,
            out.stderr,
            std::fs::read_to_string(&zt.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The live tables are the saved dumps' tables.
    assert_eq!(ok(d, &["workload"]).stdout, golden("workload.txt"));
    assert_eq!(ok(d, &["services"]).stdout, golden("service.txt"));
    assert_eq!(ok(d, &["pol"]).stdout, golden("policy.txt"));
    assert_eq!(
        ok(d, &["w", "--node", "node-1"]).stdout,
        golden("workload.txt")
    );
    assert_eq!(
        ok(d, &["w", "ztunnel-node-1"]).stdout,
        golden("workload.txt")
    );

    // An application pod: its node's ztunnel, its own row.
    let one = ok(d, &["w", "reviews-v1-5b5d6494f4-qwjv4.bookinfo"]).stdout;
    assert_eq!(one.lines().count(), 2, "{one}");
    assert!(one.contains(
        "bookinfo  reviews-v1-5b5d6494f4-qwjv4 10.244.1.6 node-1 bookinfo/waypoint HBONE"
    ));

    // The certificate the ztunnel logged it was issued, with the same serial.
    let log = std::fs::read_to_string(&zt.log).unwrap();
    let serial = log
        .split("cert.serial=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no cert.serial in the ztunnel log:\n{log}"));
    let certs = ok(d, &["certificates"]).stdout;
    let leaf: Vec<&str> = certs
        .lines()
        .find(|l| l.contains(" Leaf "))
        .unwrap_or_else(|| panic!("no leaf in\n{certs}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        leaf[..5],
        [
            "spiffe://cluster.local/ns/default/sa/sleep",
            "Leaf",
            "Available",
            "true",
            serial
        ],
        "{certs}"
    );

    // Every section in JSON; a dedicated-mode ztunnel proxies no pods, and tracks no connections.
    let full: serde_json::Value =
        serde_json::from_str(&ok(d, &["all", "-o", "json"]).stdout).unwrap();
    for s in [
        "workloads",
        "services",
        "policies",
        "certificates",
        "workloadState",
    ] {
        assert!(full.get(s).is_some_and(|v| !v.is_null()), "{s}");
    }
    assert_eq!(full["workloads"].as_array().unwrap().len(), 9);
    let cons = ok(d, &["connections"]);
    assert_eq!(cons.stdout.lines().count(), 1, "{}", cons.stdout);

    // The log level: shown, set, refused, reset.
    assert_eq!(
        ok(d, &["log"]).stdout,
        "ztunnel-node-1.istio-system:\ncurrent log level is info\n\n"
    );
    let set = ok(
        d,
        &[
            "log",
            "ztunnel-node-1",
            "--level",
            "ambit_ztunnel::proxy:debug,warning",
        ],
    )
    .stdout;
    assert!(
        set.contains("current log level is ambit_ztunnel::proxy=debug,warn"),
        "{set}"
    );
    assert!(
        ok(d, &["log"])
            .stdout
            .contains("ambit_ztunnel::proxy=debug")
    );
    let refused = zc(d, &["log", "--level", "not a module:debug"]);
    assert_eq!(refused.code, 1);
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("ztunnel-node-1.istio-system: the ztunnel answered 400"),
        "{}",
        refused.stderr
    );
    let reset = ok(d, &["log", "-r"]).stdout;
    assert!(reset.contains("current log level is info"), "{reset}");

    // A wrong admin port: which ztunnel, where, and what to check.
    let wrong = zc(d, &["w", "--proxy-admin-port", "15999"]);
    assert_eq!(wrong.code, 1);
    assert!(
        wrong.stderr.contains(
            "ztunnel-node-1.istio-system on node node-1 did not answer at 127.0.0.1:15999"
        ),
        "{}",
        wrong.stderr
    );
    drop(zt);
}

/// The pod's port 9555 is an echo server, and what the pod sends there is captured to ztunnel's 15001 (except
/// ztunnel's own, marked, connections), as the in-pod rules capture outbound traffic.
const POD_PORT: u16 = 9555;

/// Plays the node agent on `uds`: hands over `pod`'s namespace as httpbin's pod, then the snapshot, and keeps the
/// ZDS connection open until the returned sender drops.
fn node_agent(uds: PathBuf, pod: PathBuf) -> std::sync::mpsc::Sender<()> {
    use ambit_core::zds::ZdsListener;
    use ambit_proto::zds::{
        AddWorkload, SnapshotSent, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello,
        workload_request::Payload, workload_response,
    };
    use std::os::fd::AsFd;

    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let agent = ZdsListener::bind(&uds).unwrap();
            started_tx.send(()).unwrap();
            let conn = agent.accept().await.unwrap();
            let _hello = conn.recv_msg::<ZdsHello>().await.unwrap();
            let ack = |r: WorkloadResponse| match r.payload {
                Some(workload_response::Payload::Ack(a)) => a.error,
                other => panic!("not an ack: {other:?}"),
            };
            let netns = std::fs::File::open(&pod).unwrap();
            let add = WorkloadRequest {
                payload: Some(Payload::Add(AddWorkload {
                    uid: "httpbin-uid".into(),
                    workload_info: Some(WorkloadInfo {
                        name: "httpbin-7447985f87-t8hv7".into(),
                        namespace: "default".into(),
                        service_account: "httpbin".into(),
                    }),
                })),
            };
            conn.send_msg(&add, Some(netns.as_fd())).await.unwrap();
            let (r, _) = conn.recv_msg::<WorkloadResponse>().await.unwrap();
            assert_eq!(ack(r), "", "the pod's proxy did not start");
            let snap = WorkloadRequest {
                payload: Some(Payload::SnapshotSent(SnapshotSent {})),
            };
            conn.send_msg(&snap, None).await.unwrap();
            let (r, _) = conn.recv_msg::<WorkloadResponse>().await.unwrap();
            assert_eq!(ack(r), "");
            // Hold the connection (and so the pod) until the test is done.
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            drop(conn);
        });
    });
    started_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("node agent socket bound");
    stop_tx
}

#[test]
fn zc_connections_of_a_shared_mode_ztunnel() {
    if !nix::unistd::Uid::effective().is_root() {
        return skip_or_fail("needs root (network namespaces for the ztunnel and its pod)");
    }
    if !ztunnel_bin().is_file() {
        return skip_or_fail(&format!(
            "no ztunnel binary at {} (cargo build -p ambit-ztunnel, or set AMBIT_ZTUNNEL_BIN)",
            ztunnel_bin().display()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pid = std::process::id();
    let node = Netns::new(format!("ambit-zcn-{pid}"));
    let node_name = node.0.clone();
    let pod = Netns::new(format!("ambit-zcp-{pid}"));
    let rule = format!(
        "-t nat -A OUTPUT -p tcp --dport {POD_PORT} -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"
    );
    let mut iptables = Command::new("ip");
    iptables.args(["netns", "exec", &pod.0, "iptables"]);
    iptables.args(rule.split(' '));
    if !iptables.status().is_ok_and(|s| s.success()) {
        return skip_or_fail("iptables (nat table) does not work in a network namespace here");
    }
    let echo = pod.run(|| std::net::TcpListener::bind(("127.0.0.1", POD_PORT)).unwrap());
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = s;
                let mut w = r.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });

    let uds = d.join("ztunnel.sock");
    let agent = node_agent(uds.clone(), pod.path());
    let log = d.join("ztunnel.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &node_name])
        .arg(ztunnel_bin())
        .current_dir(d)
        .env("PROXY_MODE", "shared")
        .env_remove("PROXY_WORKLOAD_INFO")
        .env("INPOD_UDS", &uds)
        .env("XDS_ADDRESS", "")
        .env("CA_ADDRESS", "")
        .env("FAKE_CA", "true")
        .env(
            "LOCAL_XDS_PATH",
            manifest_dir().join("tests/fixtures/zc/ambit-local.yaml"),
        )
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let zt = LiveZtunnel {
        child,
        netns: node,
        log,
    };
    state(d, &node_name);
    let ztunnel_log = || std::fs::read_to_string(&zt.log).unwrap_or_default();

    // Until the ztunnel lists the pod as up, with no connections yet.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = zc(d, &["connections", "-o", "json"]);
        if out.code == 0 && out.stdout.contains("\"Up\"") {
            let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
            assert_eq!(
                v[0]["connections"],
                serde_json::json!({"inbound": [], "outbound": []}),
                "{v}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pod's proxy did not come up within 30 s: {}{}\nztunnel log:\n{}",
            out.stdout,
            out.stderr,
            ztunnel_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let empty = ok(d, &["connections"]);
    assert_eq!(empty.stdout.lines().count(), 1, "{}", empty.stdout);
    assert!(
        !empty.stderr.contains("does not report connections"),
        "{}",
        empty.stderr
    );

    // The pod dials its port 9555: captured, passed through by the pod's proxy, and echoed.
    let mut conn = pod.run(|| std::net::TcpStream::connect(("127.0.0.1", POD_PORT)).unwrap());
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    std::io::Read::read_exact(&mut conn, &mut back)
        .unwrap_or_else(|e| panic!("no echo through the ztunnel: {e}\n{}", ztunnel_log()));
    assert_eq!(&back, b"ping");
    let local = conn.local_addr().unwrap().to_string();

    let table = ok(d, &["connections"]).stdout;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let target = format!("127.0.0.1:{POD_PORT}");
    assert_eq!(
        rows,
        [vec![
            "httpbin-7447985f87-t8hv7.default",
            "Outbound",
            local.as_str(),
            target.as_str(),
            target.as_str(),
            "TCP"
        ]],
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(d, &["connections", "-o", "json"]).stdout).unwrap();
    assert_eq!(
        json[0]["connections"]["outbound"],
        serde_json::json!([{"src": local, "originalDst": target, "actualDst": target, "protocol": "TCP"}]),
        "{json}"
    );
    assert_eq!(
        ok(d, &["connections", "--direction", "inbound"])
            .stdout
            .lines()
            .count(),
        1
    );

    // Closed: gone from the table.
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = ok(d, &["connections"]).stdout;
        if now.lines().count() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection is still listed:\n{now}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(zt);
    drop(agent);
    drop(pod);
}
