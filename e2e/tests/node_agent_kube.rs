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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ambit_e2e::TestDir;
use ambit_e2e::kube::{ApiServer, apply, binary, kubectl, label, set_pod_phase as set_phase};
use ambit_e2e::netns::Netns;
use ambit_e2e::process::Process;
use ambit_e2e::redirection::{Redirection, wait_absent, wait_installed};
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, bail, ensure};

/// Generous: two shared cores, several builds at once.
const WAIT: Duration = Duration::from_secs(60);

const NODE: &str = "node-a";
/// The ambient label and its opposites, as `kubectl label` takes them.
const AMBIENT: &str = "istio.io/dataplane-mode=ambient";
const OPT_OUT: &str = "istio.io/dataplane-mode=none";
const UNLABELLED: &str = "istio.io/dataplane-mode-";
const PROC_NODE: &str = "node-c";

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

/// Neither the pod of another node nor the pod labelled `none` has rules.
fn others_untouched(other: &Netns, optout: &Netns) -> Result<()> {
    ensure!(
        Redirection::read(other.name())?.absent(),
        "a pod of another node was touched"
    );
    ensure!(
        Redirection::read(optout.name())?.absent(),
        "a pod labelled none was captured"
    );
    Ok(())
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
    apiserver: ApiServer,
}

impl Cluster {
    fn start(dir: &TestDir) -> Result<Cluster> {
        Ok(Cluster {
            apiserver: ApiServer::start(dir.path())?,
        })
    }

    /// An agent in Kubernetes mode for `node`, its log in `<name>.stdout`/`.stderr`.
    fn agent(&self, dir: &TestDir, name: &str, node: &str, extra: &[&str]) -> Result<Process> {
        let mut cmd = Command::new(binary(
            "AMBIT_NODE_AGENT_BIN",
            "ambit-node-agent",
            "ambit-cni",
        )?);
        cmd.arg("--kube")
            .arg("--kubeconfig")
            .arg(self.apiserver.kubeconfig())
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
    let kc = cluster.apiserver.kubeconfig();
    let web = Netns::create("nak-web")?;
    let other = Netns::create("nak-other")?;
    let optout = Netns::create("nak-optout")?;
    // Before the agent: an ambient namespace with a running pod of this node, a running pod of another node, and
    // a pod that opts out.
    kubectl(kc, &["create", "namespace", "demo"], None)?;
    label(kc, &["namespace", "demo"], AMBIENT)?;
    let pods = [
        pod_yaml("demo", "web", NODE, Some(&netns_path(&web))),
        pod_yaml("demo", "other", "node-b", Some(&netns_path(&other))),
        pod_yaml("demo", "optout", NODE, Some(&netns_path(&optout))),
    ]
    .join("---\n");
    apply(kc, &pods)?;
    label(kc, &["pod", "optout", "-n", "demo"], OPT_OUT)?;
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
    others_untouched(&other, &optout)?;

    // Unlabelling the namespace releases the running pod; labelling it again captures it, without a restart.
    label(kc, &["namespace", "demo"], UNLABELLED)?;
    wait_absent("the pod released after unlabelling its namespace", &web)?;
    wait_logged(&agent, "pod released", 1)?;
    label(kc, &["namespace", "demo"], AMBIENT)?;
    wait_installed("the pod captured again after relabelling", &web)?;

    // The pod's own label opts out and back in.
    label(kc, &["pod", "web", "-n", "demo"], OPT_OUT)?;
    wait_absent("the pod released by its own none label", &web)?;
    label(kc, &["pod", "web", "-n", "demo"], UNLABELLED)?;
    wait_installed("the pod captured after dropping its label", &web)?;

    // A pod whose namespace does not exist yet: logged once, retried, captured once it exists.
    let late_path = format!("/var/run/netns/{}nak-late", ambit_e2e::netns::PREFIX);
    apply(kc, &pod_yaml("demo", "late", NODE, Some(&late_path)))?;
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
    others_untouched(&other, &optout)?;
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
    let kc = cluster.apiserver.kubeconfig();
    let sandbox = Netns::create("nak-proc")?;
    kubectl(kc, &["create", "namespace", "cluster"], None)?;
    label(kc, &["namespace", "cluster"], AMBIENT)?;
    // No annotation: the agent must find the namespace through /proc.
    apply(kc, &pod_yaml("cluster", "app", PROC_NODE, None))?;
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
