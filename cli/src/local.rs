//! `ambit local`: the whole mesh on one Linux host, without Kubernetes.
//!
//! `up` starts a supervisor in the background (or attached with `--foreground`) that plays the parts Kubernetes
//! would: API server and scheduler (it reads the manifests, expands Deployments, assigns pod IPs and nodes and
//! writes the pods' status where the controller reads them), kubelet (it runs every pod's command in the pod's
//! network namespace and restarts it when it exits), kube-proxy (Service VIP rules) and cluster DNS. The mesh
//! itself is the real thing: the controller, and per virtual node a ztunnel in shared mode and a node agent.
//!
//! Everything the supervisor knows is in `<dir>/state.json` (default dir `/run/ambit/local`), which the other
//! commands read.

pub mod bins;
pub mod dns;
pub mod get;
pub mod http;
pub mod kubelet;
pub mod manifests;
pub mod net;
pub mod process;
pub mod supervisor;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use net::NET_NS;

/// Where the local mesh keeps its state unless `AMBIT_LOCAL_DIR` says otherwise.
pub const DEFAULT_DIR: &str = "/run/ambit/local";

#[derive(clap::Args, Debug, Clone)]
pub struct LocalArgs {
    /// The local mesh's state directory.
    #[arg(long, env = "AMBIT_LOCAL_DIR", default_value = DEFAULT_DIR, global = true)]
    pub dir: PathBuf,
    #[command(subcommand)]
    pub command: LocalCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum LocalCommand {
    /// Start the mesh on this host from a directory of manifests (needs root).
    Up(UpArgs),
    /// Nodes, pods and services of the running mesh.
    Status,
    /// Run a command inside a pod's network namespace.
    Exec(ExecArgs),
    /// Print a pod's output.
    Logs(LogsArgs),
    /// Gateways, routes, Services or pods as the mesh's API server holds them, with the status the controller
    /// computed.
    Get(get::GetArgs),
    /// Restart a mesh component without dropping connections: `ztunnel` starts a new process beside the old one
    /// on each node (or `--node`), hands it the pods, then lets the old one drain.
    Restart(RestartArgs),
    /// Stop everything and remove every namespace, link, rule and process of the mesh.
    Down,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RestartArgs {
    /// What to restart.
    #[arg(value_enum)]
    pub component: RestartComponent,
    /// Only this node's (default: every node's, one after the other).
    #[arg(long)]
    pub node: Option<String>,
    /// How long to wait for each node's restart to finish.
    #[arg(long, default_value = "120", value_parser = parse_secs)]
    pub timeout: Duration,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartComponent {
    Ztunnel,
}

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// The manifest directory (its YAML files, not subfolders, as `kubectl apply -f`).
    #[arg(short = 'f', long = "filename")]
    pub manifests: PathBuf,
    /// Number of virtual nodes.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Stay attached (logs to stderr) instead of returning once the mesh is ready.
    #[arg(long)]
    pub foreground: bool,
    /// How long to wait for the mesh to become ready.
    #[arg(long, default_value = "120", value_parser = parse_secs)]
    pub timeout: Duration,
    /// Add-ons to run with the mesh, comma-separated: `prometheus` (scraping every ztunnel, waypoint and the
    /// controller, as `ambit dashboard prometheus`); `ambit local down` stops them.
    #[arg(long, value_delimiter = ',', value_parser = crate::dashboard::addons::parse)]
    pub addons: Vec<crate::dashboard::addons::Addon>,
    /// The port on this host of the Prometheus add-on.
    #[arg(long, default_value_t = 9090)]
    pub prometheus_port: u16,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExecArgs {
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// `<pod>` or `deploy/<deployment>` (its first pod).
    pub target: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct LogsArgs {
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// `<pod>` or `deploy/<deployment>`.
    pub target: String,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("seconds: {e}"))
}

/// What the supervisor publishes in `state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub manifests: PathBuf,
    pub supervisor_pid: u32,
    /// Set once the controller, every ztunnel and every pod are up.
    pub ready: bool,
    pub nodes: Vec<NodeState>,
    pub pods: BTreeMap<String, PodState>,
    pub services: BTreeMap<String, ServiceState>,
    /// Problems with the manifests (the rest applies).
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: Ipv4Addr,
    pub node: String,
    pub netns: String,
    pub veth: String,
    pub owner: Option<String>,
    pub captured: bool,
    /// Started and, when it has a readiness probe, passing it.
    #[serde(default)]
    pub ready: bool,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub log: PathBuf,
    /// Hash of what the pod runs; a change restarts it.
    pub spec_hash: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceState {
    pub namespace: String,
    pub name: String,
    /// `None` for headless services.
    pub vip: Option<Ipv4Addr>,
    pub ports: Vec<u16>,
    pub endpoints: Vec<Ipv4Addr>,
}

impl State {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    pub fn load(dir: &Path) -> Result<State> {
        let p = State::path(dir);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "no local mesh state at {} (is `ambit local up` running?)",
                p.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", p.display()))
    }

    /// Written to a temporary file and renamed, so readers never see half a file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(".state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, State::path(dir))?;
        Ok(())
    }

    /// The pod `target` names in `namespace`: a pod name, or `deploy/<name>` for the first running replica.
    pub fn find_pod(&self, namespace: &str, target: &str) -> Result<&PodState> {
        let found = match target
            .strip_prefix("deploy/")
            .or_else(|| target.strip_prefix("deployment/"))
        {
            Some(d) => self
                .pods
                .values()
                .find(|p| p.namespace == namespace && p.owner.as_deref() == Some(d)),
            None => self.pods.get(&format!("{namespace}/{target}")),
        };
        found.with_context(|| format!("no pod {target} in namespace {namespace}"))
    }
}

/// True when `pid` runs (a zombie, killed but not yet reaped by its parent, does not count).
pub fn pid_alive(pid: u32) -> bool {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(_) => return false,
    };
    // The state is the field after the parenthesised command name.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

fn require_root() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the local mesh creates network namespaces and firewall rules: run it as root");
    }
    Ok(())
}

pub fn run(args: LocalArgs) -> Result<i32> {
    match args.command {
        LocalCommand::Up(up) => {
            require_root()?;
            if up.foreground {
                if !up.addons.is_empty() {
                    let (dir, up) = (args.dir.clone(), up.clone());
                    std::thread::spawn(move || start_addons_when_ready(&dir, &up));
                }
                supervisor::run(&args.dir, &up)?;
                Ok(0)
            } else {
                up_background(&args.dir, &up)?;
                Ok(0)
            }
        }
        LocalCommand::Status => {
            print!("{}", status(&State::load(&args.dir)?));
            Ok(0)
        }
        LocalCommand::Exec(e) => {
            require_root()?;
            let state = State::load(&args.dir)?;
            let pod = state.find_pod(&e.namespace, &e.target)?;
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &pod.netns])
                .args(&e.command)
                .env("POD_NAME", &pod.name)
                .env("POD_NAMESPACE", &pod.namespace)
                .status()
                .context("run ip netns exec")?;
            Ok(status.code().unwrap_or(1))
        }
        LocalCommand::Logs(l) => {
            let state = State::load(&args.dir)?;
            let pod = state.find_pod(&l.namespace, &l.target)?;
            let text =
                std::fs::read(&pod.log).with_context(|| format!("read {}", pod.log.display()))?;
            use std::io::Write;
            std::io::stdout().write_all(&text)?;
            Ok(0)
        }
        LocalCommand::Get(g) => get::run(&args.dir, &g),
        LocalCommand::Restart(r) => {
            let state = State::load(&args.dir)?;
            let nodes: Vec<String> = match &r.node {
                Some(n) if state.nodes.iter().any(|x| &x.name == n) => vec![n.clone()],
                Some(n) => bail!(
                    "no node {n:?} in the local mesh (nodes: {})",
                    state
                        .nodes
                        .iter()
                        .map(|x| x.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => state.nodes.iter().map(|x| x.name.clone()).collect(),
            };
            let RestartComponent::Ztunnel = r.component;
            for node in nodes {
                supervisor::request_ztunnel_restart(
                    &args.dir,
                    std::slice::from_ref(&node),
                    r.timeout,
                )?;
                println!("ztunnel on {node} restarted (the old process drained)");
            }
            Ok(0)
        }
        LocalCommand::Down => {
            require_root()?;
            down(&args.dir)?;
            Ok(0)
        }
    }
}

/// Starts the supervisor detached and waits until it reports the mesh ready.
fn up_background(dir: &Path, up: &UpArgs) -> Result<()> {
    if let Ok(s) = State::load(dir)
        && pid_alive(s.supervisor_pid)
    {
        bail!(
            "a local mesh is already running (supervisor pid {}); `ambit local down` stops it",
            s.supervisor_pid
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let log_path = dir.join("supervisor.log");
    let log = std::fs::File::create(&log_path)?;
    let exe = std::env::current_exe()?;
    let manifests = std::fs::canonicalize(&up.manifests)
        .with_context(|| format!("manifest directory {}", up.manifests.display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["local", "--dir"])
        .arg(dir)
        .args(["up", "--foreground", "--nodes", &up.nodes.to_string(), "-f"])
        .arg(&manifests)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().context("start the supervisor")?;
    let started = Instant::now();
    eprintln!("starting the local mesh (log: {})", log_path.display());
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "the supervisor exited ({status}):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        // Only this supervisor's word counts: a killed one's state file may still say ready.
        if let Ok(s) = State::load(dir)
            && s.ready
            && s.supervisor_pid == child.id()
        {
            // The status ends with the problems found in the manifests, if any.
            print!("{}", status(&s));
            return crate::dashboard::addons::start(dir, &up.addons, up.prometheus_port);
        }
        if started.elapsed() > up.timeout {
            bail!(
                "the mesh did not become ready within {:?}; see {} (it keeps trying; `ambit local down` stops it)",
                up.timeout,
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// In `--foreground`: the add-ons, once this process's mesh is ready.
fn start_addons_when_ready(dir: &Path, up: &UpArgs) {
    let started = Instant::now();
    while started.elapsed() < up.timeout {
        if let Ok(s) = State::load(dir)
            && s.ready
            && s.supervisor_pid == std::process::id()
        {
            if let Err(e) = crate::dashboard::addons::start(dir, &up.addons, up.prometheus_port) {
                eprintln!("error: {e:#}");
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops the add-ons and the supervisor (which tears everything down), then removes whatever a crashed one left
/// behind.
pub fn down(dir: &Path) -> Result<()> {
    crate::dashboard::addons::stop_all(dir);
    if let Ok(s) = State::load(dir)
        && pid_alive(s.supervisor_pid)
    {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(s.supervisor_pid)?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while pid_alive(s.supervisor_pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if pid_alive(s.supervisor_pid) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let removed = sweep(dir);
    if removed > 0 {
        eprintln!("local mesh down (removed {removed} namespaces a crashed run left behind)");
    } else {
        eprintln!("local mesh down");
    }
    Ok(())
}

/// Removes every namespace of the local mesh (killing what runs in them) and the state directory's runtime files.
/// Returns how many namespaces it removed.
pub fn sweep(dir: &Path) -> usize {
    let namespaces = net::namespaces().unwrap_or_default();
    // Pods and nodes first, the pod network last.
    let mut n = 0;
    for ns in namespaces.iter().filter(|n| *n != NET_NS) {
        net::delete_ns(ns);
        n += 1;
    }
    if namespaces.iter().any(|n| n == NET_NS) {
        net::delete_ns(NET_NS);
        n += 1;
    }
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(net::PREFIX) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    for f in [
        "state.json",
        "cluster",
        "nodes",
        "controller",
        "deployed",
        "secrets",
    ] {
        let p = dir.join(f);
        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
    }
    n
}

/// The `status` table.
pub fn status(s: &State) -> String {
    let mut out = String::new();
    out.push_str("NODE      IP\n");
    for n in &s.nodes {
        out.push_str(&format!("{:<9} {}\n", n.name, n.ip));
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    out.push_str("\nNAMESPACE  POD                            IP             NODE     CAPTURED  RUNNING  READY  RESTARTS\n");
    for p in s.pods.values() {
        let running = p.pid.is_some_and(pid_alive);
        out.push_str(&format!(
            "{:<10} {:<30} {:<14} {:<8} {:<9} {:<8} {:<6} {}\n",
            p.namespace,
            p.name,
            p.ip,
            p.node,
            yes(p.captured),
            yes(running),
            yes(running && p.ready),
            p.restarts
        ));
    }
    out.push_str("\nNAMESPACE  SERVICE              VIP            PORTS        ENDPOINTS\n");
    for svc in s.services.values() {
        out.push_str(&format!(
            "{:<10} {:<20} {:<14} {:<12} {}\n",
            svc.namespace,
            svc.name,
            svc.vip.map_or("None".to_owned(), |v| v.to_string()),
            svc.ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
            svc.endpoints
                .iter()
                .map(Ipv4Addr::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if !s.errors.is_empty() {
        out.push_str("\nPROBLEMS\n");
        for e in &s.errors {
            out.push_str(&format!("{e}\n"));
        }
    }
    out
}
