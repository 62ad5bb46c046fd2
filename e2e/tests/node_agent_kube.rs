//! The node agent in Kubernetes mode against the real parts: the `ambit-apiserver` binary, Debian's `kubectl`
//! creating pods, patching their status and labelling their namespace, the `ambit-node-agent` binary watching
//! through kube-rs, and real network namespaces whose `iptables-save` / `ip rule` show the redirection.
//!
//! Two agents, one per way of finding a pod's network namespace:
//! - [`annotation_mode`]: `--netns-from-annotation` (the local mesh). Pods that exist before the agent starts are
//!   captured (repaired) at start; namespace and pod label changes capture and release running pods; a pod whose
//!   namespace does not exist yet is retried until it does; a finished or deleted pod is released; a pod of
//!   another node is never touched.
//! - [`proc_mode`]: the cluster lookup. A process inside the pod's namespace is put into a cgroup named as kubelet
//!   names it (`.../kubepods/besteffort/pod<uid>`), and the agent finds the namespace through `/proc`.
//!
//! No ztunnel runs: the agent keeps the pods for a ZDS client that never connects and redirects anyway. Needs
//! root; skipped loudly otherwise (a failure with `AMBIT_E2E_REQUIRED=1`). Needs the binaries (`cargo build -p
//! ambit-cni -p ambit-apiserver`, or `AMBIT_NODE_AGENT_BIN` / `AMBIT_APISERVER_BIN`) and `kubectl` (`KUBECTL`,
//! else on `PATH`; Debian: `apt-get install kubernetes-client`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ambit_e2e::TestDir;
use ambit_e2e::netns::Netns;
use ambit_e2e::process::Process;
use ambit_e2e::topology::{poll, sibling_binary};
use anyhow::{Context, Result, bail, ensure};

/// Generous: two shared cores, several builds at once.
const WAIT: Duration = Duration::from_secs(60);

const NODE: &str = "node-a";
const PROC_NODE: &str = "node-c";

fn binary(env: &str, name: &str) -> Result<PathBuf> {
    sibling_binary(env, name).with_context(|| {
        format!(
            "{name} binary not found: cargo build -p ambit-cni -p ambit-apiserver (or set {env})"
        )
    })
}

/// `kubectl --kubeconfig <kc> <args>`, with `input` on stdin; fails unless it succeeds.
fn kubectl(kc: &Path, args: &[&str], input: Option<&str>) -> Result<String> {
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

/// A pod on `node` in namespace `ns`, its netns annotation set when given.
fn pod_yaml(ns: &str, name: &str, node: &str, netns: Option<&str>) -> String {
    let annotations = netns
        .map(|p| format!("annotations: {{ambit.dev/netns: \"{p}\"}}, "))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, {annotations}labels: {{app: {name}}}}}\n\
         spec: {{nodeName: {node}, serviceAccountName: {name}, containers: [{{name: app, image: app:1}}]}}\n"
    )
}

/// Patches the pod's status subresource to `phase` (with a pod IP).
fn set_phase(kc: &Path, ns: &str, name: &str, phase: &str, ip: &str) -> Result<()> {
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

/// What the agent installs (`cni/src/rules.rs`), as seen inside a namespace.
#[derive(Debug, PartialEq, Eq)]
struct Redirection {
    /// The nat table's inbound REDIRECT to 15006 and outbound to 15001.
    nat: bool,
    /// Any ISTIO_* chain in any table.
    chains: bool,
    /// The policy-routing rule `fwmark 0x111/0xfff lookup 100`.
    rule: bool,
}

impl Redirection {
    fn read(netns: &str) -> Result<Redirection> {
        let run = |args: &[&str]| -> Result<String> {
            let out = Command::new("ip")
                .args(["netns", "exec", netns])
                .args(args)
                .output()
                .with_context(|| format!("ip netns exec {netns} {args:?}"))?;
            ensure!(
                out.status.success(),
                "ip netns exec {netns} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let save = run(&["iptables-save"])?;
        let rules = run(&["ip", "rule"])?;
        Ok(Redirection {
            nat: save.contains("-A ISTIO_PRERT")
                && save.contains("--to-ports 15006")
                && save.contains("--to-ports 15001"),
            chains: save.contains("ISTIO_"),
            rule: rules
                .lines()
                .any(|l| l.contains("fwmark 0x111/0xfff") && l.contains("lookup 100")),
        })
    }

    fn installed(&self) -> bool {
        self.nat && self.chains && self.rule
    }

    fn absent(&self) -> bool {
        !self.nat && !self.chains && !self.rule
    }
}

fn wait_installed(what: &str, netns: &Netns) -> Result<()> {
    let mut last = None;
    poll(what, WAIT, || {
        let r = Redirection::read(netns.name())?;
        let done = r.installed();
        last = Some(r);
        Ok(done.then_some(()))
    })
    .with_context(|| format!("last seen in {}: {last:?}", netns.name()))
}

fn wait_absent(what: &str, netns: &Netns) -> Result<()> {
    let mut last = None;
    poll(what, WAIT, || {
        let r = Redirection::read(netns.name())?;
        let done = r.absent();
        last = Some(r);
        Ok(done.then_some(()))
    })
    .with_context(|| format!("last seen in {}: {last:?}", netns.name()))
}

/// Waits until the agent's log has `needle` at least `times` times.
fn wait_logged(agent: &Process, needle: &str, times: usize) -> Result<()> {
    poll(
        &format!("{times}x {needle:?} in the agent's log"),
        WAIT,
        || Ok((agent.output().matches(needle).count() >= times).then_some(())),
    )
}

fn netns_path(ns: &Netns) -> String {
    format!("/var/run/netns/{}", ns.name())
}

struct Cluster {
    kubeconfig: PathBuf,
    _apiserver: Process,
}

impl Cluster {
    fn start(dir: &TestDir) -> Result<Cluster> {
        let kubeconfig = dir.join("kubeconfig");
        let mut cmd = Command::new(binary("AMBIT_APISERVER_BIN", "ambit-apiserver")?);
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--bookmark-seconds",
            "1",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .env("NO_COLOR", "1");
        let apiserver = Process::spawn("apiserver", cmd, dir.path())?;
        poll("the API server's kubeconfig", WAIT, || {
            Ok(apiserver.output().contains("listening on").then_some(()))
        })?;
        Ok(Cluster {
            kubeconfig,
            _apiserver: apiserver,
        })
    }

    /// An agent in Kubernetes mode for `node`, its log in `<name>.stdout`/`.stderr`.
    fn agent(&self, dir: &TestDir, name: &str, node: &str, extra: &[&str]) -> Result<Process> {
        let mut cmd = Command::new(binary("AMBIT_NODE_AGENT_BIN", "ambit-node-agent")?);
        cmd.arg("--kube")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--zds-socket")
            .arg(dir.join(&format!("{name}.sock")))
            .args(extra)
            .env("NODE_NAME", node)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info,kube=warn");
        let agent = Process::spawn(name, cmd, dir.path())?;
        poll("the agent's first listing", WAIT, || {
            Ok(agent
                .output()
                .contains("initial listing of this node's pods done")
                .then_some(()))
        })?;
        Ok(agent)
    }
}

fn no_panic(agent: &Process) -> Result<()> {
    let log = agent.output();
    if log.contains("panicked") {
        bail!("{} panicked: {log}", agent.name());
    }
    Ok(())
}

fn annotation_mode(dir: &TestDir, cluster: &Cluster) -> Result<()> {
    let kc = cluster.kubeconfig.as_path();
    let web = Netns::create("nak-web")?;
    let other = Netns::create("nak-other")?;
    let optout = Netns::create("nak-optout")?;
    // Before the agent: an ambient namespace with a running pod of this node, a running pod of another node, and
    // a pod that opts out.
    kubectl(kc, &["create", "namespace", "demo"], None)?;
    kubectl(
        kc,
        &[
            "label",
            "namespace",
            "demo",
            "istio.io/dataplane-mode=ambient",
        ],
        None,
    )?;
    let pods = [
        pod_yaml("demo", "web", NODE, Some(&netns_path(&web))),
        pod_yaml("demo", "other", "node-b", Some(&netns_path(&other))),
        pod_yaml("demo", "optout", NODE, Some(&netns_path(&optout))),
    ]
    .join("---\n");
    kubectl(kc, &["apply", "-f", "-"], Some(&pods))?;
    kubectl(
        kc,
        &[
            "label",
            "pod",
            "optout",
            "-n",
            "demo",
            "istio.io/dataplane-mode=none",
        ],
        None,
    )?;
    set_phase(kc, "demo", "web", "Running", "10.9.0.5")?;
    set_phase(kc, "demo", "other", "Running", "10.9.0.6")?;
    set_phase(kc, "demo", "optout", "Running", "10.9.0.7")?;
    ensure!(
        Redirection::read(web.name())?.absent(),
        "a fresh namespace has no rules"
    );

    let agent = cluster.agent(dir, "agent-annotation", NODE, &["--netns-from-annotation"])?;
    // The pod that started before the agent is captured at its start.
    wait_installed("the running pod captured at start", &web)?;
    wait_logged(&agent, "pod captured", 1)?;
    ensure!(
        Redirection::read(other.name())?.absent(),
        "a pod of another node was touched"
    );
    ensure!(
        Redirection::read(optout.name())?.absent(),
        "a pod labelled none was captured"
    );

    // Unlabelling the namespace releases the running pod; labelling it again captures it, without a restart.
    kubectl(
        kc,
        &["label", "namespace", "demo", "istio.io/dataplane-mode-"],
        None,
    )?;
    wait_absent("the pod released after unlabelling its namespace", &web)?;
    wait_logged(&agent, "pod released", 1)?;
    kubectl(
        kc,
        &[
            "label",
            "namespace",
            "demo",
            "istio.io/dataplane-mode=ambient",
        ],
        None,
    )?;
    wait_installed("the pod captured again after relabelling", &web)?;

    // The pod's own label opts out and back in.
    kubectl(
        kc,
        &[
            "label",
            "pod",
            "web",
            "-n",
            "demo",
            "istio.io/dataplane-mode=none",
        ],
        None,
    )?;
    wait_absent("the pod released by its own none label", &web)?;
    kubectl(
        kc,
        &[
            "label",
            "pod",
            "web",
            "-n",
            "demo",
            "istio.io/dataplane-mode-",
        ],
        None,
    )?;
    wait_installed("the pod captured after dropping its label", &web)?;

    // A pod whose namespace does not exist yet: logged once, retried, captured once it exists.
    let late_path = format!("/var/run/netns/{}nak-late", ambit_e2e::netns::PREFIX);
    kubectl(
        kc,
        &["apply", "-f", "-"],
        Some(&pod_yaml("demo", "late", NODE, Some(&late_path))),
    )?;
    set_phase(kc, "demo", "late", "Running", "10.9.0.8")?;
    wait_logged(&agent, "network namespace is not found yet", 1)?;
    let late = Netns::create("nak-late")?;
    wait_installed("the late pod captured once its namespace exists", &late)?;
    let waits = agent
        .output()
        .matches("network namespace is not found yet")
        .count();
    ensure!(
        waits == 1,
        "the missing namespace was logged {waits} times, not once"
    );

    // A finished pod is released; so is a deleted one.
    set_phase(kc, "demo", "web", "Succeeded", "10.9.0.5")?;
    wait_absent("the finished pod released", &web)?;
    kubectl(
        kc,
        &["delete", "pod", "late", "-n", "demo", "--wait=false"],
        None,
    )?;
    wait_absent("the deleted pod released", &late)?;
    ensure!(
        Redirection::read(other.name())?.absent(),
        "a pod of another node was touched"
    );
    ensure!(
        Redirection::read(optout.name())?.absent(),
        "a pod labelled none was captured"
    );
    no_panic(&agent)
}

/// A cgroup directory named as kubelet's cgroupfs driver names a pod's, in the first hierarchy that accepts one
/// (cgroup v2 mounted at the root or at `unified`, else v1's `pids`); removed on drop.
struct PodCgroup {
    dir: PathBuf,
    base: PathBuf,
}

impl PodCgroup {
    fn create(uid: &str) -> Result<PodCgroup> {
        let roots = [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup/pids",
        ];
        let mut tried = Vec::new();
        for root in roots {
            let root = Path::new(root);
            if !root.join("cgroup.procs").exists() {
                continue;
            }
            let base = root.join("ambit-e2e-kubepods");
            let dir = base.join("besteffort").join(format!("pod{uid}"));
            match std::fs::create_dir_all(&dir) {
                Ok(()) if dir.join("cgroup.procs").exists() => return Ok(PodCgroup { dir, base }),
                Ok(()) => tried.push(format!("{}: not a cgroup", dir.display())),
                Err(e) => tried.push(format!("{}: {e}", dir.display())),
            }
        }
        bail!("no writable cgroup hierarchy for a pod cgroup: {tried:?}")
    }

    fn add(&self, pid: u32) -> Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("move {pid} into {}", self.dir.display()))
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // Leaf first; a cgroup can only be removed once its processes are gone.
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        let _ = std::fs::remove_dir(&self.base);
    }
}

fn proc_mode(dir: &TestDir, cluster: &Cluster) -> Result<()> {
    let kc = cluster.kubeconfig.as_path();
    let sandbox = Netns::create("nak-proc")?;
    kubectl(kc, &["create", "namespace", "cluster"], None)?;
    kubectl(
        kc,
        &[
            "label",
            "namespace",
            "cluster",
            "istio.io/dataplane-mode=ambient",
        ],
        None,
    )?;
    // No annotation: the agent must find the namespace through /proc.
    kubectl(
        kc,
        &["apply", "-f", "-"],
        Some(&pod_yaml("cluster", "app", PROC_NODE, None)),
    )?;
    set_phase(kc, "cluster", "app", "Running", "10.9.1.5")?;
    let uid = kubectl(
        kc,
        &[
            "get",
            "pod",
            "app",
            "-n",
            "cluster",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    )?;
    let uid = uid.trim();
    ensure!(!uid.is_empty(), "the API server gave the pod no uid");

    let agent = cluster.agent(dir, "agent-proc", PROC_NODE, &[])?;
    // No process of the pod yet: waited for, not dropped.
    wait_logged(&agent, "network namespace is not found yet", 1)?;
    ensure!(
        Redirection::read(sandbox.name())?.absent(),
        "captured before its process existed"
    );

    // The pod's "sandbox": a process in the pod's namespace, in the pod's cgroup.
    let cgroup = PodCgroup::create(uid)?;
    let sleeper = sandbox.spawn(dir.path(), "sandbox", &["sleep", "600"], &[])?;
    // `ip netns exec` execs sleep in the same process, so its pid is the sleeper's.
    cgroup.add(sleeper.pid())?;
    wait_installed("the pod captured through its cgroup", &sandbox)?;
    wait_logged(&agent, "found the pod's network namespace", 1)?;
    ensure!(
        agent
            .output()
            .contains(&format!("/{}/ns/net", sleeper.pid())),
        "the namespace is the process's: {}",
        agent.output()
    );

    kubectl(
        kc,
        &["delete", "pod", "app", "-n", "cluster", "--wait=false"],
        None,
    )?;
    wait_absent("the deleted pod released", &sandbox)?;
    no_panic(&agent)?;
    drop(agent);
    drop(sleeper);
    drop(cgroup);
    Ok(())
}

#[test]
fn node_agent_captures_pods_from_the_kubernetes_api() {
    ambit_e2e::e2e_test("node_agent_kube", |dir| {
        let cluster = Cluster::start(dir)?;
        annotation_mode(dir, &cluster).context("annotation mode")?;
        proc_mode(dir, &cluster).context("proc mode")?;
        Ok(())
    });
}
