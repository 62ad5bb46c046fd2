//! The real Kubernetes parts of the `*_kube` tests: the `ambit-apiserver` binary on a free loopback port, and
//! Debian's `kubectl` against it (creating, labelling and patching objects as a user or kubelet would).
//!
//! Needs the binary (`cargo build -p ambit-apiserver`, or `AMBIT_APISERVER_BIN`) and `kubectl` (`KUBECTL`, else
//! on `PATH`; Debian: `apt-get install kubernetes-client`). No root.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::process::Process;
use crate::topology::{poll, sibling_binary};

/// How long the API server may take to listen: generous, the machine is small and shared.
const START_WAIT: Duration = Duration::from_secs(60);

/// The binary `name` next to the test executable (or at `$env`), built by `cargo build -p <package>`.
pub fn binary(env: &str, name: &str, package: &str) -> Result<PathBuf> {
    sibling_binary(env, name).with_context(|| {
        format!("{name} binary not found: cargo build -p {package} (or set {env})")
    })
}

/// A running `ambit-apiserver` (stopped on drop) and the kubeconfig it wrote.
pub struct ApiServer {
    kubeconfig: PathBuf,
    _process: Process,
}

impl ApiServer {
    /// Starts the API server on a free loopback port with one-second watch bookmarks; its kubeconfig is
    /// `<dir>/kubeconfig`, its logs `<dir>/apiserver.stdout`/`.stderr`. Returns once it listens.
    pub fn start(dir: &Path) -> Result<ApiServer> {
        let kubeconfig = dir.join("kubeconfig");
        let mut cmd = Command::new(binary(
            "AMBIT_APISERVER_BIN",
            "ambit-apiserver",
            "ambit-apiserver",
        )?);
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--bookmark-seconds",
            "1",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .env("NO_COLOR", "1");
        let process = Process::spawn("apiserver", cmd, dir)?;
        poll("the API server's kubeconfig", START_WAIT, || {
            Ok(process.output().contains("listening on").then_some(()))
        })?;
        Ok(ApiServer {
            kubeconfig,
            _process: process,
        })
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }
}

/// `kubectl --kubeconfig <kc> <args>`, with `input` on stdin when given (discovery cached next to the
/// kubeconfig, not in the user's `~/.kube`); its standard output, or an error unless it succeeds.
pub fn kubectl(kc: &Path, args: &[&str], input: Option<&str>) -> Result<String> {
    let program = std::env::var_os("KUBECTL")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubectl"));
    let mut child = Command::new(program)
        .arg("--kubeconfig")
        .arg(kc)
        .arg("--cache-dir")
        .arg(kc.with_file_name("kubectl-cache"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run kubectl (apt-get install kubernetes-client, or set KUBECTL)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.unwrap_or_default().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl apply -f -` of `yaml`.
pub fn apply(kc: &Path, yaml: &str) -> Result<String> {
    kubectl(kc, &["apply", "-f", "-"], Some(yaml))
}

/// `kubectl label <object> <label>`: `object` as kubectl takes it (`["namespace", "demo"]`, `["pod", "web", "-n",
/// "demo"]`), `label` as `key=value` to set or `key-` to remove.
pub fn label(kc: &Path, object: &[&str], label: &str) -> Result<()> {
    let mut args = vec!["label"];
    args.extend_from_slice(object);
    args.push(label);
    kubectl(kc, &args, None)?;
    Ok(())
}

/// Sets the pod's status as kubelet reports it: `phase` and `ip` as its only pod IP (a merge patch of the status
/// subresource).
pub fn set_pod_phase(kc: &Path, ns: &str, name: &str, phase: &str, ip: &str) -> Result<()> {
    let patch =
        format!(r#"{{"status":{{"phase":"{phase}","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}]}}}}"#);
    kubectl(
        kc,
        &[
            "patch",
            "pod",
            name,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ],
        None,
    )?;
    Ok(())
}
