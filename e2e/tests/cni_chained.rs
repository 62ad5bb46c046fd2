//! The chained CNI plugin end to end, as a node runs it: the `ambit-node-agent` binary in Kubernetes mode against
//! the `ambit-apiserver` binary with `INSTALL_CNI=true` installs `ambit-cni` into a CNI configuration directory
//! whose primary is Debian's real `bridge` + `host-local`; this test then plays the container runtime, executing
//! the configured chain (`ADD`, then `DEL` in reverse) for pods that exist in the API but are still `Pending`.
//!
//! What it shows: the plugin's ADD returns only once the pod's redirection is in place (read right after the ADD,
//! before any process could run in the sandbox — and no reconcile could have done it, the pod never runs); a pod
//! that is not enrolled starts with no rules; the primary rewriting its file gets our entry back; DEL releases the
//! sandbox; and the agent's stop restores the primary's file byte-for-byte and removes the binary.
//!
//! Needs root and `/usr/lib/cni` (Debian `containernetworking-plugins`); skipped loudly otherwise (a failure
//! with `AMBIT_E2E_REQUIRED=1`).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ambit_e2e::TestDir;
use ambit_e2e::capture::Capture;
use ambit_e2e::kube::{ApiServer, binary, kubectl, label, set_pod_phase};
use ambit_e2e::netns::Netns;
use ambit_e2e::process::Process;
use ambit_e2e::redirection::{Redirection, wait_absent};
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const NODE: &str = "node-cni";
const DEBIAN_CNI: &str = "/usr/lib/cni";

/// The primary's file as a primary CNI writes it: its own layout, which uninstall must give back exactly.
const PRIMARY: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    { "type": "bridge", "bridge": "ambitcni1", "isGateway": true, "ipMasq": false,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.214.0.0/24" }]],
                "dataDir": "@DATA@" } }
  ]
}
"#;

/// A container runtime's part: executes `conflist`'s plugins for one sandbox, ADD in order (each getting the
/// previous one's result), DEL in reverse. Returns the last result, or the failing plugin's output.
struct Runtime {
    path: String,
    /// The node's network namespace, where the plugins run (the bridge lives there).
    node: String,
}

impl Runtime {
    fn run(&self, conflist: &Path, command: &str, pod: &SandboxPod) -> Result<Value> {
        let conf: Value = serde_json::from_slice(&std::fs::read(conflist)?)?;
        let mut plugins: Vec<Value> = conf["plugins"]
            .as_array()
            .context("the configuration has no plugins")?
            .clone();
        if command == "DEL" {
            plugins.reverse();
        }
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
            pod.namespace, pod.name, pod.uid
        );
        let mut prev: Option<Value> = None;
        for mut plugin in plugins {
            plugin["cniVersion"] = conf["cniVersion"].clone();
            plugin["name"] = conf["name"].clone();
            if let Some(p) = &prev {
                plugin["prevResult"] = p.clone();
            }
            let kind = plugin["type"].as_str().unwrap_or_default().to_owned();
            let bin = self
                .path
                .split(':')
                .map(|d| Path::new(d).join(&kind))
                .find(|p| p.exists())
                .with_context(|| format!("no {kind} in {}", self.path))?;
            let mut child = Command::new("/usr/sbin/ip")
                .args(["netns", "exec", &self.node])
                .arg(&bin)
                .env_clear()
                .envs([
                    ("CNI_COMMAND", command),
                    ("CNI_CONTAINERID", pod.container_id.as_str()),
                    ("CNI_NETNS", pod.netns.as_str()),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_ARGS", args.as_str()),
                    ("CNI_PATH", self.path.as_str()),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("exec {}", bin.display()))?;
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(plugin.to_string().as_bytes())?;
            let out = child.wait_with_output()?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                bail!(
                    "{kind} {command} failed ({}): {stdout} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if command == "ADD" {
                prev = Some(
                    serde_json::from_str(&stdout)
                        .with_context(|| format!("{kind} printed no result: {stdout:?}"))?,
                );
            }
        }
        Ok(prev.unwrap_or(Value::Null))
    }
}

struct SandboxPod {
    namespace: String,
    name: String,
    uid: String,
    container_id: String,
    netns: String,
}

/// A `Pending` pod of this node in the API (no status: the kubelet has not started it).
fn pending_pod(kc: &Path, ns: &str, name: &str, sandbox: &Netns) -> Result<SandboxPod> {
    let netns = sandbox.name();
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}, \
         annotations: {{ambit.dev/netns: /var/run/netns/{netns}}}}}\n\
         spec: {{nodeName: {NODE}, serviceAccountName: {name}, containers: [{{name: app, image: app:1}}]}}\n"
    );
    kubectl(kc, &["apply", "-f", "-"], Some(&yaml))?;
    let uid = kubectl(
        kc,
        &[
            "get",
            "pod",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    )?;
    Ok(SandboxPod {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        uid: uid.trim().to_owned(),
        container_id: format!("sandbox-{name}"),
        netns: format!("/var/run/netns/{}", sandbox.name()),
    })
}

fn phase(kc: &Path, pod: &SandboxPod) -> Result<String> {
    let p = kubectl(
        kc,
        &[
            "get",
            "pod",
            &pod.name,
            "-n",
            &pod.namespace,
            "-o",
            "jsonpath={.status.phase}",
        ],
        None,
    )?;
    Ok(p.trim().to_owned())
}

fn plugin_entries(conflist: &Path) -> Result<Vec<Value>> {
    let conf: Value = serde_json::from_slice(&std::fs::read(conflist)?)?;
    Ok(conf["plugins"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["type"] == "ambit-cni")
        .collect())
}

fn scenario(dir: &TestDir) -> Result<()> {
    if !Path::new(DEBIAN_CNI).join("bridge").exists() {
        bail!("{DEBIAN_CNI}/bridge missing: apt-get install containernetworking-plugins");
    }
    let apiserver = ApiServer::start(dir.path())?;
    let kc = apiserver.kubeconfig();
    let (bin_dir, conf_dir) = (dir.join("bin"), dir.join("net.d"));
    std::fs::create_dir_all(&bin_dir)?;
    std::fs::create_dir_all(&conf_dir)?;
    let primary = PRIMARY.replace("@DATA@", &dir.join("ipam").to_string_lossy());
    let conflist = conf_dir.join("10-bridge.conflist");
    std::fs::write(&conflist, &primary)?;
    let socket = dir.join("run/cni.sock");

    let node = Paths {
        bin_dir: bin_dir.clone(),
        conf_dir: conf_dir.clone(),
        socket: socket.clone(),
    };
    let mut agent = start_agent(dir, kc, &node, "agent", "open")?;
    let installed = bin_dir.join("ambit-cni");
    ensure!(installed.exists(), "{} not installed", installed.display());
    let entries = plugin_entries(&conflist)?;
    ensure!(
        entries.len() == 1 && entries[0]["socket"] == json!(socket),
        "our entry in {}: {entries:?}",
        conflist.display()
    );
    let node_ns = Netns::create("cni-node")?;
    let runtime = Runtime {
        path: format!("{}:{DEBIAN_CNI}", bin_dir.display()),
        node: node_ns.name().to_owned(),
    };

    // An enrolled pod: captured by its ADD, before anything runs in it.
    kubectl(kc, &["create", "namespace", "demo"], None)?;
    label(
        kc,
        &["namespace", "demo"],
        "istio.io/dataplane-mode=ambient",
    )?;
    let web_ns = Netns::create("cni-web")?;
    let web = pending_pod(kc, "demo", "web", &web_ns)?;
    let started = std::time::Instant::now();
    let result = runtime.run(&conflist, "ADD", &web)?;
    // Reported, not asserted (timing belongs in benchmarks): the whole chain, bridge + host-local + ambit-cni.
    eprintln!("CNI ADD of an enrolled pod (whole chain): {:?}", started.elapsed());
    let redirection = Redirection::read(web_ns.name())?;
    ensure!(
        redirection.installed(),
        "the ADD returned before the redirection was in place: {redirection:?}"
    );
    ensure!(
        result["ips"][0]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.214.0.")),
        "the bridge's result did not come through the chain: {result}"
    );
    ensure!(
        phase(kc, &web)? != "Running",
        "the pod ran: the capture could have come from a reconcile"
    );
    ensure!(
        agent
            .output()
            .contains("captured before the pod's containers start"),
        "{}",
        agent.output()
    );

    // A pod that is not enrolled starts with no rules.
    kubectl(kc, &["create", "namespace", "plain"], None)?;
    let plain_ns = Netns::create("cni-plain")?;
    let plain = pending_pod(kc, "plain", "app", &plain_ns)?;
    let started = std::time::Instant::now();
    let plain_result = runtime.run(&conflist, "ADD", &plain)?;
    eprintln!("CNI ADD of an unenrolled pod (whole chain): {:?}", started.elapsed());
    ensure!(
        Redirection::read(plain_ns.name())?.absent(),
        "an unenrolled pod was captured"
    );
    no_packet_leaves(
        dir,
        &node_ns,
        (&web_ns, &result),
        (&plain_ns, &plain_result),
    )?;

    // The primary rewrites its file: our entry comes back.
    std::fs::write(&conflist, &primary)?;
    poll(
        "our entry restored after the primary's rewrite",
        WAIT,
        || Ok((plugin_entries(&conflist)?.len() == 1).then_some(())),
    )?;

    // DEL: the sandbox is released.
    runtime.run(&conflist, "DEL", &web)?;
    wait_absent("the deleted sandbox released", &web_ns)?;
    runtime.run(&conflist, "DEL", &plain)?;

    // The agent killed (no uninstall): the entry stays, and the plugin's failure mode decides. `open`: the pod
    // starts, uncaptured.
    agent.stop_with(Signal::SIGKILL, Duration::from_secs(5));
    ensure!(
        plugin_entries(&conflist)?.len() == 1,
        "a killed agent's entry vanished"
    );
    let late_ns = Netns::create("cni-late")?;
    let late = pending_pod(kc, "demo", "late", &late_ns)?;
    runtime
        .run(&conflist, "ADD", &late)
        .context("failure_mode open with the agent down")?;
    ensure!(
        Redirection::read(late_ns.name())?.absent(),
        "captured with the agent down?"
    );
    // The pod runs (uncaptured); the next agent captures it and says so with a Warning Event on the pod.
    set_pod_phase(kc, "demo", "late", "Running", "10.214.0.99")?;
    // `closed` (an agent configured so, then killed): the pod does not start, with the plugin's own error code.
    let mut strict_agent = start_agent(dir, kc, &node, "agent-closed", "closed")?;
    poll("the late pod captured after it started", WAIT, || {
        Ok(Redirection::read(late_ns.name())?.installed().then_some(()))
    })?;
    poll("the StartedUncaptured Event on the late pod", WAIT, || {
        let events = kubectl(
            kc,
            &[
                "get",
                "events.events.k8s.io",
                "-n",
                "demo",
                "-o",
                "jsonpath={range .items[*]}{.reason} {.regarding.name}{\"\\n\"}{end}",
            ],
            None,
        )?;
        Ok(events
            .lines()
            .any(|l| l.trim() == "StartedUncaptured late")
            .then_some(()))
    })?;
    ensure!(
        !kubectl(
            kc,
            &["get", "events.events.k8s.io", "-n", "demo", "-o", "name"],
            None
        )?
        .lines()
        .any(|l| l.contains("web")),
        "an Event for a pod captured at its ADD"
    );
    ensure!(
        plugin_entries(&conflist)?
            .first()
            .map(|e| e["failure_mode"].clone())
            == Some(json!("closed")),
        "the restarted agent did not update the entry: {:?}",
        plugin_entries(&conflist)?
    );
    strict_agent.stop_with(Signal::SIGKILL, Duration::from_secs(5));
    let strict_ns = Netns::create("cni-strict")?;
    let strict = pending_pod(kc, "demo", "strict", &strict_ns)?;
    let refused = runtime
        .run(&conflist, "ADD", &strict)
        .err()
        .context("failure_mode closed let a pod start with the agent down")?;
    ensure!(
        format!("{refused:#}").contains("\"code\":100"),
        "not the plugin's agent error: {refused:#}"
    );
    runtime.run(&conflist, "DEL", &late)?;
    runtime.run(&conflist, "DEL", &strict)?;

    // A third agent, then a clean stop: after two kills the backup still gives the primary's file back exactly.
    let mut agent = start_agent(dir, kc, &node, "agent-last", "open")?;
    let status = agent.stop_with(Signal::SIGTERM, Duration::from_secs(20));
    ensure!(
        status.is_some_and(|s| s.success()),
        "the agent did not stop cleanly: {status:?}\n{}",
        agent.output()
    );
    let restored = std::fs::read_to_string(&conflist)?;
    ensure!(
        restored == primary,
        "not restored byte-for-byte:\n{restored}\nwanted:\n{primary}"
    );
    ensure!(!installed.exists(), "the plugin binary was left behind");
    for a in [&agent, &strict_agent] {
        ensure!(
            !a.output().contains("panicked"),
            "{} panicked: {}",
            a.name(),
            a.output()
        );
    }
    Ok(())
}

/// Where the node agent installs and listens.
struct Paths {
    bin_dir: PathBuf,
    conf_dir: PathBuf,
    socket: PathBuf,
}

/// The node agent as the cni chart runs it, in Kubernetes mode; returns once it installed the plugin and listed
/// the node's pods.
fn start_agent(
    dir: &TestDir,
    kc: &Path,
    node: &Paths,
    name: &str,
    failure_mode: &str,
) -> Result<Process> {
    let mut cmd = Command::new(binary(
        "AMBIT_NODE_AGENT_BIN",
        "ambit-node-agent",
        "ambit-cni",
    )?);
    // Running pods' namespaces from the netns annotation (there are no pod processes in cgroups here).
    cmd.arg("--kube")
        .arg("--netns-from-annotation")
        .arg("--kubeconfig")
        .arg(kc)
        .arg("--zds-socket")
        .arg(dir.join("zds.sock"))
        .envs([
            ("INSTALL_CNI", "true".into()),
            ("CNI_BIN_DIR", node.bin_dir.to_string_lossy().into_owned()),
            ("CNI_CONF_DIR", node.conf_dir.to_string_lossy().into_owned()),
            (
                "CNI_PLUGIN_SOCKET",
                node.socket.to_string_lossy().into_owned(),
            ),
            ("CNI_FAILURE_MODE", failure_mode.to_owned()),
            (
                "CNI_PLUGIN_BINARY",
                binary("AMBIT_CNI_BIN", "ambit-cni", "ambit-cni")?
                    .to_string_lossy()
                    .into_owned(),
            ),
            ("NODE_NAME", NODE.into()),
            ("NO_COLOR", "1".into()),
            ("RUST_LOG", "info,kube=warn".into()),
        ]);
    let agent = Process::spawn(name, cmd, dir.path())?;
    poll(
        &format!("{name}: the plugin installed and the first listing"),
        WAIT,
        || {
            let log = agent.output();
            Ok((log.contains("CNI plugin installed")
                && log.contains("initial listing of this node's pods done"))
            .then_some(()))
        },
    )?;
    Ok(agent)
}

/// From each sandbox a connection to the node's bridge address: the captured pod's is redirected inside the pod
/// (to ztunnel's outbound port, nothing listening here), so none of its packets reaches the bridge; the other
/// pod's SYN does.
fn no_packet_leaves(
    dir: &TestDir,
    node: &Netns,
    captured: (&Netns, &Value),
    plain: (&Netns, &Value),
) -> Result<()> {
    let ip = |r: &Value| -> Result<Ipv4Addr> {
        let cidr = r["ips"][0]["address"].as_str().context("no address")?;
        Ok(cidr.split('/').next().unwrap_or_default().parse()?)
    };
    let (web_ip, plain_ip) = (ip(captured.1)?, ip(plain.1)?);
    let gateway = r#"http://10.214.0.1:9/"#;
    let capture = Capture::start(node, "ambitcni1", dir.path(), "bridge")?;
    for ns in [captured.0, plain.0] {
        // Both fail (nothing listens): what matters is where the SYN went.
        let _ = ns.output(&["curl", "-s", "--max-time", "2", gateway]);
    }
    let segments = capture.stop()?;
    let from = |a: Ipv4Addr| segments.iter().filter(|s| *s.src.ip() == a).count();
    ensure!(
        from(plain_ip) > 0,
        "the uncaptured pod's SYN is not in the bridge capture: the check sees nothing ({} segments)",
        segments.len()
    );
    ensure!(
        from(web_ip) == 0,
        "{} packets of the captured pod reached the bridge",
        from(web_ip)
    );
    Ok(())
}

#[test]
fn chained_plugin_captures_pods_before_they_start() {
    ambit_e2e::e2e_test("cni_chained", scenario);
}
