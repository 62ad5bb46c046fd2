//! `ambit precheck` against the real `ambit-apiserver` with objects applied by the real `kubectl`: an empty
//! cluster, then an old Gateway API CRD, then an `istiod` Deployment; and `ambit precheck --local` on this host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const KUBECTL: &str = "/usr/bin/kubectl";

/// The `ambit-apiserver` binary of the same target directory, built if missing.
fn apiserver_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_ambit")).with_file_name("ambit-apiserver");
    if !bin.is_file() {
        let ok = Command::new(env!("CARGO"))
            .args([
                "build",
                "-q",
                "-p",
                "ambit-apiserver",
                "--bin",
                "ambit-apiserver",
            ])
            .current_dir(common::repo())
            .status()
            .unwrap()
            .success();
        assert!(ok, "building ambit-apiserver");
    }
    bin
}

/// A running API server (in memory) and its admin kubeconfig; killed on drop.
struct ApiServer {
    child: Child,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl ApiServer {
    fn start() -> ApiServer {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let child = Command::new(apiserver_bin())
            .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
            .arg(&kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = ApiServer {
            child,
            kubeconfig,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !server.kubeconfig.is_file() {
            assert!(
                Instant::now() < deadline,
                "the API server wrote no kubeconfig"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn apply(&self, yaml: &str) {
        let mut child = Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn precheck(&self, extra: &[&str]) -> (Vec<Value>, Output) {
        let out = Command::new(env!("CARGO_BIN_EXE_ambit"))
            .arg("precheck")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["-o", "json"])
            .args(extra)
            .output()
            .unwrap();
        let checks: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (checks, out)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find<'a>(checks: &'a [Value], code: &str) -> Vec<&'a Value> {
    checks.iter().filter(|c| c["code"] == code).collect()
}

fn one<'a>(checks: &'a [Value], code: &str) -> &'a Value {
    let found = find(checks, code);
    assert_eq!(found.len(), 1, "{code} in {checks:#?}");
    found[0]
}

const OLD_GATEWAY_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gateways.gateway.networking.k8s.io
  annotations:
    gateway.networking.k8s.io/bundle-version: v0.8.0
spec:
  group: gateway.networking.k8s.io
  scope: Namespaced
  names: {plural: gateways, singular: gateway, kind: Gateway, listKind: GatewayList}
  versions:
  - name: v1beta1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

const ISTIOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: istiod, namespace: istio-system, labels: {app: istiod}}
spec:
  selector: {matchLabels: {app: istiod}}
  template:
    metadata: {labels: {app: istiod}}
    spec:
      containers: [{name: discovery, image: docker.io/istio/pilot:1.28.0}]
"#;

#[test]
fn cluster_checks_follow_what_is_installed() {
    let server = ApiServer::start();

    // An empty cluster: reachable, a supported version, no Gateway API (a warning), no error.
    let (checks, out) = server.precheck(&[]);
    assert_eq!(out.status.code(), Some(0), "{checks:#?}");
    for c in &checks {
        for field in [
            "code", "name", "status", "severity", "object", "message", "fix",
        ] {
            assert!(
                c[field].as_str().is_some_and(|s| !s.is_empty()),
                "{field} in {c}"
            );
        }
        assert_ne!(c["severity"], "Error", "{c}");
    }
    assert_eq!(one(&checks, "AMB1001")["status"], "pass");
    let version = one(&checks, "AMB1002");
    assert_eq!(
        (&version["status"], &version["severity"]),
        (&"pass".into(), &"Info".into())
    );
    let gateway = one(&checks, "AMB1003");
    assert_eq!(gateway["status"], "fail");
    assert_eq!(gateway["severity"], "Warning");
    assert!(
        gateway["fix"].as_str().unwrap().contains("kubectl apply"),
        "{gateway}"
    );
    assert!(find(&checks, "AMB1004").is_empty(), "{checks:#?}");
    // This API server serves no SelfSubjectAccessReview: said, not failed.
    let perms = one(&checks, "AMB1006");
    assert_eq!(
        (&perms["status"], &perms["severity"]),
        (&"unknown".into(), &"Info".into())
    );
    assert!(
        perms["message"]
            .as_str()
            .unwrap()
            .contains("could not check"),
        "{perms}"
    );
    assert_eq!(one(&checks, "AMB1007")["status"], "pass");

    // A Gateway API CRD from an old bundle: an Error on that CRD, exit status 1.
    server.apply(OLD_GATEWAY_CRD);
    let (checks, out) = server.precheck(&[]);
    assert_eq!(out.status.code(), Some(1), "{checks:#?}");
    let old = one(&checks, "AMB1004");
    assert_eq!(old["status"], "fail");
    assert_eq!(old["severity"], "Error");
    assert_eq!(
        old["object"],
        "CustomResourceDefinition gateways.gateway.networking.k8s.io"
    );
    assert!(old["message"].as_str().unwrap().contains("v0.8.0"), "{old}");
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("Error: "));

    // istiod: a Warning on the Deployment; none with --skip-controlplane.
    server.apply(ISTIOD);
    let (checks, _) = server.precheck(&["--output-threshold", "Warning"]);
    let istiod = one(&checks, "AMB1007");
    assert_eq!(istiod["object"], "Deployment istio-system/istiod");
    assert_eq!(istiod["severity"], "Warning");
    assert!(
        istiod["fix"].as_str().unwrap().contains("uninstall"),
        "{istiod}"
    );
    assert!(
        checks.iter().all(|c| c["severity"] != "Info"),
        "{checks:#?}"
    );
    let (checks, out) = server.precheck(&["--skip-controlplane"]);
    assert!(find(&checks, "AMB1007").is_empty(), "{checks:#?}");
    assert!(find(&checks, "AMB1008").is_empty(), "{checks:#?}");
    assert_eq!(out.status.code(), Some(1), "the old CRD is still there");
}

#[test]
fn unreachable_cluster_is_one_error_naming_the_url() {
    let server = ApiServer::start();
    let text = std::fs::read_to_string(&server.kubeconfig).unwrap();
    let start = text.find("https://127.0.0.1:").unwrap();
    let end = start + text[start..].find(['\n', '"', ' ']).unwrap();
    let bad = text.replace(&text[start..end], "https://127.0.0.1:1");
    let path = server.kubeconfig.with_file_name("unreachable");
    std::fs::write(&path, bad).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(["precheck", "-o", "json", "--kubeconfig"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let checks: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(checks.len(), 1, "{checks:#?}");
    assert_eq!(checks[0]["code"], "AMB1001");
    assert_eq!(checks[0]["severity"], "Error");
    assert!(
        checks[0]["message"]
            .as_str()
            .unwrap()
            .contains("https://127.0.0.1:1"),
        "{}",
        checks[0]
    );

    // No kubeconfig at all: one line saying what to do.
    let out = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(["precheck", "--kubeconfig", "/nonexistent/kubeconfig"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot read the kubeconfig /nonexistent/kubeconfig"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn host_checks_have_codes_and_fixes() {
    let out = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(["precheck", "--local", "-o", "json", "--local-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let checks: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for c in &checks {
        assert!(
            c["code"].as_str().is_some_and(|s| s.starts_with("AMB11")),
            "{c}"
        );
        assert!(c["fix"].as_str().is_some_and(|s| !s.is_empty()), "{c}");
    }
    let uid = Command::new("id").arg("-u").output().unwrap();
    let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    let check = one(&checks, "AMB1101");
    assert_eq!(
        check["status"],
        if root { "pass" } else { "fail" },
        "{check}"
    );
    let errors = checks
        .iter()
        .any(|c| c["status"] == "fail" && c["severity"] == "Error");
    assert_eq!(out.status.code(), Some(i32::from(errors)), "{checks:#?}");
    // Whatever it tried, it left no scratch namespace behind.
    if let Ok(netns) = Command::new("ip").args(["netns", "list"]).output() {
        assert!(!String::from_utf8_lossy(&netns.stdout).contains("ambit-precheck-"));
    }
}
