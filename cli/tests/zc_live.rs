//! `ambit ztunnel-config` against a running ztunnel: Ambit's ztunnel in dedicated mode on
//! `tests/fixtures/zc/ambit-local.yaml` (`LOCAL_XDS_PATH`, `FAKE_CA`) inside a network namespace of its own,
//! posing as node-1 of a local mesh (a `state.json` naming that namespace). The tables must be the golden ones of
//! the saved dumps of the same config; certificates, connections and `log` talk to the live admin port.
//!
//! Needs root (a network namespace) and the `ztunnel` binary of the same build (`cargo build -p ambit-ztunnel`, or
//! `AMBIT_ZTUNNEL_BIN`); skipped without them unless `AMBIT_E2E_REQUIRED=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AMBIT: &str = env!("CARGO_BIN_EXE_ambit");

/// The namespace and the ztunnel in it; dropping it kills the ztunnel and deletes the namespace.
struct LiveZtunnel {
    child: Child,
    netns: String,
    log: PathBuf,
}

impl Drop for LiveZtunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
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
    let netns = format!("ambit-zc-{}", std::process::id());
    let _ = Command::new("ip")
        .args(["netns", "del", &netns])
        .stderr(Stdio::null())
        .status();
    for args in [
        vec!["netns", "add", &netns],
        vec!["-n", &netns, "link", "set", "lo", "up"],
    ] {
        assert!(
            Command::new("ip").args(&args).status().unwrap().success(),
            "ip {args:?}"
        );
    }
    let log = dir.join("ztunnel.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &netns])
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
    state(dir.path(), &zt.netns);
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
