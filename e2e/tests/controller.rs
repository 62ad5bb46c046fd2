//! Ambit's ztunnels configured by Ambit's controller: no local config file and no local CA; everything (workloads,
//! policies, certificates) comes over xDS and the CA API on 15012, over TLS, with per-pod tokens.
//! The controller runs in pod b's namespace (a's ztunnel reaches it across the veth).

use std::path::Path;
use std::time::{Duration, Instant};

use ambit_e2e::topology::{B_IP, poll, sibling_binary};
use ambit_e2e::{Mode, TwoPods, TwoPodsOptions, e2e_test};
use anyhow::{Context, Result, ensure};

const HTTP_BIN: &str = env!("CARGO_BIN_EXE_e2e-http");
const WAIT: Duration = Duration::from_secs(15);

const MANIFESTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default, labels: {app: a}}
spec: {nodeName: node1, serviceAccountName: a}
status: {podIP: 10.77.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default, labels: {app: b}}
spec: {nodeName: node1, serviceAccountName: b}
status: {podIP: 10.77.0.3}
";

const DENY_A: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-a, namespace: default}
spec:
  selector: {matchLabels: {app: b}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/a]}}]
";

fn controller_bin() -> Result<std::path::PathBuf> {
    sibling_binary("AMBIT_CONTROLLER_BIN", "controller")
        .context("controller binary not found: cargo build -p ambit-controller (or set AMBIT_CONTROLLER_BIN)")
}

/// `controller token --pod default/<pod>`, written where the ztunnel's AUTH_TOKEN points.
fn pod_token(bin: &Path, state: &Path, pod: &str, out: &Path) -> Result<()> {
    let o = std::process::Command::new(bin)
        .args(["token", "--pod", &format!("default/{pod}"), "--state-dir"])
        .arg(state)
        .output()
        .context("run controller token")?;
    ensure!(
        o.status.success(),
        "controller token: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::write(out, String::from_utf8_lossy(&o.stdout).trim()).context("write token")?;
    Ok(())
}

#[test]
fn ztunnels_configured_by_the_controller() {
    e2e_test("controller", |dir| {
        let bin = controller_bin()?;
        let manifests = dir.join("manifests");
        let state = dir.join("state");
        std::fs::create_dir_all(&manifests)?;
        std::fs::write(manifests.join("pods.yaml"), MANIFESTS)?;
        for pod in ["a", "b"] {
            pod_token(&bin, &state, pod, &dir.join(&format!("token-{pod}")))?;
        }
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let mut opts = TwoPodsOptions::new(Mode::Ztunnel).with_http(HTTP_BIN);
        opts.control_plane = Some((
            vec![
                s(&bin),
                "--manifests".into(),
                s(&manifests),
                "--state-dir".into(),
                s(&state),
                "--tls-san".into(),
                B_IP.to_string(),
                "--listen".into(),
                B_IP.to_string(),
            ],
            15012,
        ));
        let address = format!("https://{B_IP}:15012");
        let root = s(&state.join("root-cert.pem"));
        opts.ztunnel_env = [
            ("LOCAL_XDS_PATH", String::new()),
            ("LOCAL_CA_DIR", String::new()),
            ("XDS_ADDRESS", address.clone()),
            ("CA_ADDRESS", address),
            ("XDS_ROOT_CA", root.clone()),
            ("CA_ROOT_CA", root),
            ("AUTH_TOKEN", s(&dir.join("token-{pod}"))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let pods = TwoPods::start(dir, &opts)?;
        let url = pods.b_url();

        // Workloads and certificates came from the controller: the request is tunnelled.
        let first = pods.a().curl(&url)?;
        ensure!(
            first.ok(),
            "curl a -> b with controller-provided config failed: {first:?}"
        );
        let dump = pods.b().config_dump()?;
        let certs = dump["certificates"].to_string();
        ensure!(
            certs.contains("spiffe://cluster.local/ns/default/sa/b"),
            "b's certificate: {certs}"
        );

        // A policy file added to the manifests reaches b's ztunnel and denies the next connection.
        std::fs::write(manifests.join("deny-a.yaml"), DENY_A)?;
        let edited = Instant::now();
        poll("curl denied after the policy edit", WAIT, || {
            let r = pods.a().curl(&url)?;
            Ok((!r.ok()).then_some(()))
        })?;
        eprintln!(
            "policy edit -> first denied connection: {:?}",
            edited.elapsed()
        );

        // A manifest with a syntax error changes nothing: the policy stays in force.
        std::fs::write(manifests.join("broken.yaml"), "kind: [unclosed\n")?;
        std::thread::sleep(Duration::from_secs(2));
        let still = pods.a().curl(&url)?;
        ensure!(
            !still.ok(),
            "a broken manifest must not drop the policy: {still:?}"
        );

        // Removing the policy restores access.
        std::fs::remove_file(manifests.join("deny-a.yaml"))?;
        poll("curl allowed again after removing the policy", WAIT, || {
            let r = pods.a().curl(&url)?;
            Ok(r.ok().then_some(()))
        })?;
        Ok(())
    });
}
