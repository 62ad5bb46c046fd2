//! `TwoPods`: two network-namespace "pods" joined by one veth pair, each optionally with its own ztunnel in
//! dedicated mode behind upstream's dedicated-mode redirect rule.
//!
//! ```text
//!  ambit-e2e-a  10.77.0.2/24  veth-a  <──────>  veth-b  10.77.0.3/24  ambit-e2e-b
//!  [ztunnel a]  curl, wrk, iperf3 -c                   e2e-http :8080, iperf3 -s :5201  [ztunnel b]
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::localconfig::{self, Policy, Workload};
use crate::netns::{self, Netns};
use crate::process::Process;
use crate::prom::{self, Sample};
use crate::testdir::{TestDir, tail};

pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
pub const HTTP_PORT: u16 = 8080;
pub const IPERF_PORT: u16 = 5201;
pub const ADMIN_PORT: u16 = 15000;
pub const METRICS_PORT: u16 = 15020;
pub const READY_PORT: u16 = 15021;
/// ztunnel's `PACKET_MARK` (upstream's 0x539).
pub const PACKET_MARK: u32 = 1337;

/// Environment variable naming the ztunnel binary.
pub const ZTUNNEL_BIN_ENV: &str = "AMBIT_ZTUNNEL_BIN";
/// Environment variable naming the `e2e-http` binary (the benchmark looks next to itself otherwise).
pub const HTTP_BIN_ENV: &str = "AMBIT_HTTP_BIN";

/// With or without ztunnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No ztunnel, no redirect: the baseline.
    Direct,
    /// A dedicated-mode ztunnel in each pod and upstream's redirect rule.
    Ztunnel,
    /// A reference, not the mesh: a plain TCP relay (HAProxy, `mode tcp`, 2 threads) in each pod where the ztunnel
    /// would be, with the same kind of redirect (a's outgoing TCP, b's incoming), no TLS and no HTTP/2. What two
    /// extra hops cost on this machine.
    Relay,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Ztunnel => "ztunnel",
            Mode::Relay => "relay",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TwoPodsOptions {
    pub mode: Mode,
    pub ztunnel_bin: PathBuf,
    /// Start `e2e-http` on b:8080.
    pub http_bin: Option<PathBuf>,
    /// Start `iperf3 -s` on b:5201.
    pub iperf_server: bool,
    /// Policies in b's local config from the start.
    pub b_policies: Vec<Policy>,
    /// Extra environment for both ztunnels (e.g. `RUST_LOG`); `{pod}` in a value becomes the pod's name.
    pub ztunnel_env: Vec<(String, String)>,
    /// A control plane (command line, port to wait for) started in b's namespace before the ztunnels.
    pub control_plane: Option<(Vec<String>, u16)>,
    /// Bound on each ztunnel's readiness.
    pub ready_timeout: Duration,
}

impl TwoPodsOptions {
    pub fn new(mode: Mode) -> TwoPodsOptions {
        TwoPodsOptions {
            mode,
            ztunnel_bin: default_ztunnel_bin(),
            http_bin: None,
            iperf_server: false,
            b_policies: Vec::new(),
            ztunnel_env: Vec::new(),
            control_plane: None,
            ready_timeout: Duration::from_secs(30),
        }
    }

    pub fn with_http(mut self, bin: impl Into<PathBuf>) -> Self {
        self.http_bin = Some(bin.into());
        self
    }

    pub fn with_iperf(mut self) -> Self {
        self.iperf_server = true;
        self
    }
}

/// `$AMBIT_ZTUNNEL_BIN`, else `ztunnel` in the cargo profile directory of the running executable (so the tests
/// find the binary of the same `cargo build`, whatever `CARGO_TARGET_DIR` is), else `<workspace>/target/debug/ztunnel`.
pub fn default_ztunnel_bin() -> PathBuf {
    sibling_binary(ZTUNNEL_BIN_ENV, "ztunnel")
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ztunnel"))
}

/// `$env`, else `name` next to the running executable (or one level up from `deps/`), if it exists.
pub fn sibling_binary(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    if dir.ends_with("deps") {
        dir = dir.parent()?;
    }
    let candidate = dir.join(name);
    candidate.is_file().then_some(candidate)
}

/// One pod: its namespace, address, local config and ztunnel.
#[derive(Debug)]
pub struct Pod {
    // Field order is drop order: the ztunnel dies before its namespace goes.
    ztunnel: Option<Process>,
    ns: Netns,
    name: &'static str,
    ip: Ipv4Addr,
    interface: String,
    config: PathBuf,
    workloads: Vec<Workload>,
}

/// What `curl` got.
#[derive(Debug, Clone)]
pub struct CurlResult {
    /// curl's exit code (0 = transfer succeeded).
    pub exit: i32,
    /// HTTP status (0 when there was no response).
    pub status: u16,
    pub body: String,
    pub stderr: String,
}

impl CurlResult {
    pub fn ok(&self) -> bool {
        self.exit == 0 && self.status == 200
    }
}

/// Polls `f` every 100 ms until it yields a value or `timeout` passes.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => String::new(),
            Err(e) => format!(": {e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}{last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Pod {
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    pub fn name(&self) -> &str {
        self.name
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The pod's end of the veth pair.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The ztunnel's process id (`None` in direct mode).
    pub fn ztunnel_pid(&self) -> Option<u32> {
        self.ztunnel.as_ref().map(Process::pid)
    }

    /// The ztunnel's log so far ("" in direct mode).
    pub fn ztunnel_log(&self) -> String {
        self.ztunnel
            .as_ref()
            .map(Process::output)
            .unwrap_or_default()
    }

    /// `curl` inside this pod (5 s limit).
    pub fn curl(&self, url: &str) -> Result<CurlResult> {
        const MARK: &str = "\n--ambit-status:";
        let fmt = format!("{MARK}%{{http_code}}");
        let out = self
            .ns
            .output(&["curl", "-sS", "--max-time", "5", "-w", &fmt, url])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (body, status) = stdout.rsplit_once(MARK).unwrap_or((&stdout, "0"));
        Ok(CurlResult {
            exit: out.status.code().unwrap_or(-1),
            status: status.trim().parse().unwrap_or(0),
            body: body.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// GET on one of the ztunnel's local ports, failing on non-2xx.
    fn local_get(&self, port: u16, path: &str) -> Result<String> {
        self.ns.run(&[
            "curl",
            "-sSf",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
    }

    /// The ztunnel's metrics (15020 `/metrics`).
    pub fn metrics(&self) -> Result<Vec<Sample>> {
        Ok(prom::parse(&self.local_get(METRICS_PORT, "/metrics")?))
    }

    /// The ztunnel's admin `/config_dump`.
    pub fn config_dump(&self) -> Result<serde_json::Value> {
        let text = self.local_get(ADMIN_PORT, "/config_dump")?;
        serde_json::from_str(&text).context("config_dump is not JSON")
    }

    /// Waits until `/config_dump` satisfies `pred` (e.g. a reloaded policy shows).
    pub fn wait_config(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<()> {
        poll(what, timeout, || {
            Ok(pred(&self.config_dump()?).then_some(()))
        })
    }

    /// Rewrites this pod's local config with `policies` (the ztunnel reloads it).
    pub fn set_policies(&self, policies: &[Policy]) -> Result<()> {
        write_config(&self.config, &self.workloads, policies)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let url = format!("http://127.0.0.1:{READY_PORT}/healthz/ready");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(z) = self.ztunnel.as_mut()
                && let Some(status) = z.exited()
            {
                let log = z.output();
                bail!(
                    "ztunnel in pod {} exited ({status}) before it was ready; its log ends:\n{}",
                    self.name,
                    tail(&log, 20)
                );
            }
            if self
                .ns
                .run(&["curl", "-sf", "--max-time", "1", &url])
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "ztunnel in pod {} not ready on :{READY_PORT} within {timeout:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Waits until something listens on TCP `port` in `ns`.
/// Upstream's dedicated-mode capture (scripts/ztunnel-redirect.sh): the namespace's own outgoing TCP, except
/// loopback and ztunnel's marked sockets, goes to ztunnel's outbound listener (15001).
pub fn redirect_outbound(ns: &Netns) -> Result<()> {
    let mark = format!("{PACKET_MARK:#x}/0xfff");
    ns.run(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "!",
        "-o",
        "lo",
        "-m",
        "mark",
        "!",
        "--mark",
        &mark,
        "-j",
        "REDIRECT",
        "--to-ports",
        "15001",
    ])?;
    Ok(())
}

pub fn wait_listening(ns: &Netns, port: u16, timeout: Duration) -> Result<()> {
    let filter = format!("sport = :{port}");
    poll(
        &format!("a listener on :{port} in {}", ns.name()),
        timeout,
        || Ok((!ns.run(&["ss", "-Hltn", &filter])?.trim().is_empty()).then_some(())),
    )
}

fn write_config(path: &Path, workloads: &[Workload], policies: &[Policy]) -> Result<()> {
    // One in-place write (not a rename), so a watcher on the file itself sees it too.
    std::fs::write(path, localconfig::render(workloads, policies)?)
        .with_context(|| format!("write {}", path.display()))
}

/// The topology. Dropping it kills every process and removes both namespaces.
#[derive(Debug)]
pub struct TwoPods {
    // Field order is drop order: applications first, then the pods (ztunnel, namespace).
    apps: Vec<Process>,
    a: Pod,
    b: Pod,
    mode: Mode,
}

impl TwoPods {
    /// Builds the namespaces and the veth, then (ztunnel mode) starts ztunnel a, waits for it, starts ztunnel b
    /// (after a, so only one of them creates the shared CA), waits for it, and installs the redirect in both; then
    /// starts the servers in b.
    pub fn start(dir: &TestDir, opts: &TwoPodsOptions) -> Result<TwoPods> {
        let ns_a = Netns::create("a")?;
        let ns_b = Netns::create("b")?;
        netns::veth_pair(&ns_a, "veth-a", &ns_b, "veth-b")?;
        ns_a.run(&["ip", "addr", "add", &format!("{A_IP}/24"), "dev", "veth-a"])?;
        ns_b.run(&["ip", "addr", "add", &format!("{B_IP}/24"), "dev", "veth-b"])?;

        let protocol = if opts.mode == Mode::Ztunnel {
            "HBONE"
        } else {
            "TCP"
        };
        let workloads = vec![
            Workload {
                protocol,
                ..Workload::hbone("a", A_IP)
            },
            Workload {
                protocol,
                ..Workload::hbone("b", B_IP)
            },
        ];
        let pod = |ns, name, ip, interface: &str| Pod {
            ztunnel: None,
            ns,
            name,
            ip,
            interface: interface.to_owned(),
            config: dir.join(&format!("config-{name}.yaml")),
            workloads: workloads.clone(),
        };
        let mut pods = TwoPods {
            apps: Vec::new(),
            a: pod(ns_a, "a", A_IP, "veth-a"),
            b: pod(ns_b, "b", B_IP, "veth-b"),
            mode: opts.mode,
        };
        write_config(&pods.a.config, &workloads, &[])?;
        write_config(&pods.b.config, &workloads, &opts.b_policies)?;

        if let Some((cmd, port)) = &opts.control_plane {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            pods.apps
                .push(pods.b.ns.spawn(dir.path(), "control-plane", &args, &[])?);
            wait_listening(&pods.b.ns, *port, Duration::from_secs(30))?;
        }

        if opts.mode == Mode::Ztunnel {
            anyhow::ensure!(
                opts.ztunnel_bin.is_file(),
                "ztunnel binary not found at {} (build it: cargo build -p ambit-ztunnel, or set {ZTUNNEL_BIN_ENV})",
                opts.ztunnel_bin.display()
            );
            let ca_dir = dir.join("ca");
            std::fs::create_dir_all(&ca_dir).context("create the CA directory")?;
            for pod in [&mut pods.a, &mut pods.b] {
                start_ztunnel(dir, opts, pod, &ca_dir)?;
            }
            for pod in [&pods.a, &pods.b] {
                // Upstream's dedicated-mode capture (scripts/ztunnel-redirect.sh): the pod's own outgoing TCP,
                // except loopback and ztunnel's marked sockets, goes to ztunnel's outbound listener.
                redirect_outbound(&pod.ns)?;
            }
        }

        if opts.mode == Mode::Relay {
            start_relays(dir, &mut pods)?;
        }

        if let Some(bin) = &opts.http_bin {
            let listen = format!("0.0.0.0:{HTTP_PORT}");
            let bin = bin.to_string_lossy();
            pods.apps.push(
                pods.b
                    .ns
                    .spawn(dir.path(), "http-b", &[&bin, &listen], &[])?,
            );
            wait_listening(&pods.b.ns, HTTP_PORT, Duration::from_secs(10))?;
        }
        if opts.iperf_server {
            let port = IPERF_PORT.to_string();
            pods.apps.push(pods.b.ns.spawn(
                dir.path(),
                "iperf3-b",
                &["iperf3", "-s", "-p", &port],
                &[],
            )?);
            wait_listening(&pods.b.ns, IPERF_PORT, Duration::from_secs(10))?;
        }
        Ok(pods)
    }

    pub fn a(&self) -> &Pod {
        &self.a
    }

    pub fn b(&self) -> &Pod {
        &self.b
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `http://10.77.0.3:8080/`.
    pub fn b_url(&self) -> String {
        format!("http://{B_IP}:{HTTP_PORT}/")
    }
}

/// [`Mode::Relay`]: HAProxy in a on 15001 (a's outgoing TCP redirected to it, except its own, which runs as
/// `nobody`) and in b on 15006 (b's incoming TCP on the veth redirected to it); both forward to the connection's
/// original destination.
fn start_relays(dir: &TestDir, pods: &mut TwoPods) -> Result<()> {
    crate::runner::check_tools(&["haproxy"])
        .context("relay mode needs haproxy (apt-get install haproxy)")?;
    for (pod, port) in [(&pods.a, 15001u16), (&pods.b, 15006u16)] {
        let cfg = dir.join(&format!("haproxy-{}.cfg", pod.name));
        std::fs::write(
            &cfg,
            format!(
                "global\n  nbthread 2\n  user nobody\n  group nogroup\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\
                 frontend relay\n  bind 0.0.0.0:{port}\n  default_backend original_destination\n\
                 backend original_destination\n  server dst 0.0.0.0:0\n"
            ),
        )
        .context("write the haproxy configuration")?;
        let cfg = cfg.to_string_lossy().into_owned();
        let name = format!("relay-{}", pod.name);
        let relay = pod
            .ns
            .spawn(dir.path(), &name, &["haproxy", "-db", "-f", &cfg], &[])?;
        pods.apps.push(relay);
        wait_listening(&pod.ns, port, Duration::from_secs(10))?;
    }
    let words = |cmd: &'static str| cmd.split(' ').collect::<Vec<_>>();
    pods.a.ns.run(&words(
        "iptables -t nat -A OUTPUT -p tcp ! -o lo -m owner ! --uid-owner nobody -j REDIRECT --to-ports 15001",
    ))?;
    pods.b.ns.run(&words(
        "iptables -t nat -A PREROUTING -i veth-b -p tcp -j REDIRECT --to-ports 15006",
    ))?;
    Ok(())
}

fn start_ztunnel(dir: &TestDir, opts: &TwoPodsOptions, pod: &mut Pod, ca_dir: &Path) -> Result<()> {
    let mut env: Vec<(String, String)> = [
        ("PROXY_MODE", "dedicated".to_owned()),
        ("PROXY_WORKLOAD_INFO", format!("default/{0}/{0}", pod.name)),
        ("XDS_ADDRESS", String::new()),
        ("CA_ADDRESS", String::new()),
        ("LOCAL_XDS_PATH", pod.config.to_string_lossy().into_owned()),
        ("LOCAL_CA_DIR", ca_dir.to_string_lossy().into_owned()),
        ("PACKET_MARK", PACKET_MARK.to_string()),
        (
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(
        opts.ztunnel_env
            .iter()
            .map(|(k, v)| (k.clone(), v.replace("{pod}", pod.name))),
    );
    let bin = opts.ztunnel_bin.to_string_lossy();
    let name = format!("ztunnel-{}", pod.name);
    pod.ztunnel = Some(pod.ns.spawn(dir.path(), &name, &[&bin], &env)?);
    pod.wait_ready(opts.ready_timeout)
}
