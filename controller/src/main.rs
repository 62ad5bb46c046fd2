//! `controller`: Kubernetes-style manifests in, Istio-compatible delta xDS and certificates out.
//!
//! `controller --state-dir <dir>` runs the control plane on the Kubernetes API (`--kubeconfig`, `KUBECONFIG`,
//! `~/.kube/config` or in-cluster), `controller --manifests <dir> --state-dir <dir>` on a manifest directory;
//! `controller token --node <name>` / `--pod <ns>/<name>` prints a bearer token for a ztunnel (no line break
//! unless stdout is a terminal, so `> file` makes a token file; or `--output <file>`);
//! `controller compute --manifests <dir>` prints the computed resources once (as `/debug/resources`) and exits.

mod compute_cli;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ambit_controller::app::{self, Config};
use ambit_controller::ca::{Subject, TokenAuthority};
use ambit_controller::compute::ComputeConfig;
use ambit_controller::compute::deployer::DeployerConfig;
use ambit_controller::leader::{LeaderConfig, LeaderElector};
use ambit_controller::sources::kube::KubeSource;
use ambit_controller::status_writer::StatusWriter;
use ambit_core::ca::LocalCa;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "controller",
    version,
    about = "Ambit control plane: Kubernetes objects (or manifests) in, xDS and certificates out"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a bearer token for a node's ztunnel (`--node`) or a dedicated ztunnel serving one pod (`--pod`).
    /// Without a trailing line break unless standard output is a terminal: `controller token ... > FILE` (or
    /// `--output FILE`) makes a token file both ztunnels can send as it is (`AUTH_TOKEN=FILE`).
    Token(TokenArgs),
    /// Read the manifests once, compute what the proxies would get, print it as JSON (`/debug/resources`'s
    /// rendering) and exit. Deployments become placeholder pods (see `placeholders` in the output).
    Compute(ComputeArgs),
    /// Read the manifests once, compute, and print what will not work as meant (`ambit analyze`'s findings) as
    /// JSON.
    Analyze(ComputeArgs),
}

#[derive(Args, Debug)]
struct ComputeArgs {
    /// Directory of manifests (`*.yaml`/`*.yml`); repeatable.
    #[arg(long = "manifests", value_delimiter = ',', required = true)]
    manifests: Vec<PathBuf>,
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    #[arg(long, env = "NETWORK", default_value = "")]
    network: String,
    /// Include `istio.io/dry-run` AuthorizationPolicies as dry-run.
    #[arg(long)]
    enable_dry_run: bool,
    /// As `controller --auto-allow-waypoint-policy`.
    #[arg(long, env = "PILOT_AUTO_ALLOW_WAYPOINT_POLICY")]
    auto_allow_waypoint_policy: bool,
}

fn analyze_once(a: ComputeArgs) -> anyhow::Result<()> {
    let dirs = a.manifests.clone();
    let cfg = compute_config(a);
    let c = compute_cli::compute_dirs(&dirs, &cfg)?;
    let findings = ambit_controller::analyze::analyze(&c.index, &c.resources, &cfg, &c.errors);
    println!(
        "{}",
        serde_json::to_string_pretty(&ambit_controller::analyze::to_json(&findings))?
    );
    Ok(())
}

fn compute_once(a: ComputeArgs) -> anyhow::Result<()> {
    let dirs = a.manifests.clone();
    let cfg = compute_config(a);
    let out = compute_cli::run(&dirs, &cfg)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn compute_config(a: ComputeArgs) -> ComputeConfig {
    ComputeConfig {
        cluster_id: a.cluster_id,
        trust_domain: a.trust_domain,
        root_namespace: a.root_namespace,
        network: a.network,
        enable_dry_run: a.enable_dry_run,
        auto_allow_waypoint_policy: a.auto_allow_waypoint_policy,
        ..ComputeConfig::default()
    }
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// Node name: the token may get certificates for the pods scheduled on this node.
    #[arg(long, conflicts_with = "pod", required_unless_present = "pod")]
    node: Option<String>,
    /// `<namespace>/<name>`: the token may get this pod's identity only.
    #[arg(long)]
    pod: Option<String>,
    /// Lifetime in hours.
    #[arg(long, default_value_t = 24 * 30)]
    ttl_hours: u64,
    #[arg(long, env = "AMBIT_STATE_DIR", default_value = "./controller-state")]
    state_dir: PathBuf,
    /// Write the token to this file (mode 0600, replaced if present) instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Directory of manifests (`*.yaml`/`*.yml`, watched); repeatable. Given, the controller reads these files
    /// instead of the Kubernetes API (as istiod's file-based config source); without it, it watches Kubernetes.
    #[arg(long = "manifests", env = "AMBIT_MANIFESTS", value_delimiter = ',')]
    manifests: Vec<PathBuf>,
    /// Kubeconfig of the cluster to watch (its current context), as istiod's `--kubeconfig`. Without it, as
    /// kubectl: the `KUBECONFIG` files, `~/.kube/config`, then the in-cluster service account. Not with
    /// `--manifests`.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Write the computed status conditions (Gateways, routes, policies, Services' `istio.io/WaypointBound`) to
    /// the Kubernetes API by server-side apply, field manager `ambit-controller` (istiod's
    /// `AMBIENT_ENABLE_STATUS`; `true`/`false`, `1`/`0`). Kubernetes mode only.
    #[arg(long, env = "AMBIENT_ENABLE_STATUS", default_value_t = true, action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(), value_name = "BOOL")]
    write_status: bool,
    /// Elect a leader on a `coordination.k8s.io/v1` Lease (`<leader-namespace>/ambit-controller`): every replica
    /// serves xDS and certificates, only the leader writes status. `false`: this replica always leads (one replica
    /// only). Kubernetes mode with status writes only.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(), value_name = "BOOL")]
    leader_elect: bool,
    /// The namespace of the leader Lease (the controller's own, as istiod's `POD_NAMESPACE`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    leader_namespace: String,
    /// This replica's name in the Lease's `holderIdentity` (with a random suffix); default the host name.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// The Lease's duration; the renew deadline and retry period scale with it (15 s: 10 s and 2 s, client-go's
    /// defaults). Shorter in tests.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    leader_lease_seconds: u64,
    /// Seconds between listings of a kind whose CRD is not installed (it is picked up when installed later).
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    crd_retry_seconds: u64,
    /// Where the root certificate, CA key and token key live.
    #[arg(long, env = "AMBIT_STATE_DIR", default_value = "./controller-state")]
    state_dir: PathBuf,
    /// A plug-in CA directory (Istio layout: root-cert.pem, ca-cert.pem, ca-key.pem, cert-chain.pem); default
    /// `<state-dir>/ca`, generated on first start.
    #[arg(long, env = "AMBIT_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// Names/addresses of the 15012 certificate; repeatable. Default: localhost, this host's name and
    /// addresses, istiod.istio-system.svc.
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    #[arg(long, default_value = "0.0.0.0")]
    listen: IpAddr,
    #[arg(long, default_value_t = 15010)]
    xds_port: u16,
    #[arg(long, default_value_t = 15012)]
    secure_port: u16,
    #[arg(long, default_value_t = 15014)]
    monitoring_port: u16,
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    #[arg(long, env = "NETWORK", default_value = "")]
    network: String,
    /// Quiet time before a change is computed and pushed.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// Serve xDS on the secure port without a token.
    #[arg(long)]
    xds_no_auth: bool,
    /// Send `istio.io/dry-run` AuthorizationPolicies as dry-run.
    #[arg(long)]
    enable_dry_run: bool,
    /// Attach to each pod bound to a waypoint an ALLOW policy for the waypoint's identity (istiod's
    /// `PILOT_AUTO_ALLOW_WAYPOINT_POLICY`; off by default, as in Istio).
    #[arg(long, env = "PILOT_AUTO_ALLOW_WAYPOINT_POLICY")]
    auto_allow_waypoint_policy: bool,
    #[arg(long, default_value_t = 5)]
    drain_seconds: u64,
    /// Write the auto-deployed waypoint manifests (ServiceAccount, Service, Deployment per waypoint Gateway) to
    /// this directory as `waypoint-<ns>.<gw>.yaml`, for a kubelet-like runner.
    #[arg(long, env = "AMBIT_DEPLOY_DIR")]
    deploy_dir: Option<PathBuf>,
    /// `XDS_ADDRESS` given to deployed waypoints.
    #[arg(long, default_value = "istiod.istio-system.svc:15012")]
    waypoint_xds_address: String,
    /// `CA_ADDRESS` given to deployed waypoints.
    #[arg(long, default_value = "istiod.istio-system.svc:15012")]
    waypoint_ca_address: String,
    /// The deployed waypoint container's command (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "waypoint")]
    waypoint_command: Vec<String>,
}

/// `localhost`, the host name, the host's addresses and istiod's in-cluster name.
fn default_sans() -> Vec<String> {
    let mut out = vec!["localhost".to_owned(), "istiod.istio-system.svc".to_owned()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname")
        && !h.trim().is_empty()
    {
        out.push(h.trim().to_owned());
    }
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let ip = a.address.as_ref().and_then(|s| {
                s.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            });
            if let Some(ip) = ip {
                out.push(ip.to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The Lease's `holderIdentity`: the pod (or host) name and a random suffix, unique per process.
fn leader_identity(pod_name: Option<&str>) -> String {
    let base = pod_name
        .map(str::to_owned)
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "controller".to_owned());
    format!("{base}_{:08x}", rand::random::<u32>())
}

/// The elector's settings; `None` when this replica always leads (`--leader-elect=false`).
fn leader_config(a: &RunArgs) -> Option<LeaderConfig> {
    a.leader_elect.then(|| {
        LeaderConfig::new(
            a.leader_namespace.clone(),
            leader_identity(a.pod_name.as_deref()),
            Duration::from_secs(a.leader_lease_seconds),
        )
    })
}

/// Resolves the effective configuration from the flags.
fn config(a: RunArgs) -> anyhow::Result<Config> {
    anyhow::ensure!(
        a.manifests.is_empty() || a.kubeconfig.is_none(),
        "--manifests and --kubeconfig choose different sources; give one"
    );
    Ok(Config {
        manifests: a.manifests,
        state_dir: a.state_dir,
        tls_sans: if a.tls_san.is_empty() {
            default_sans()
        } else {
            a.tls_san
        },
        listen: a.listen,
        xds_port: a.xds_port,
        secure_port: a.secure_port,
        monitoring_port: a.monitoring_port,
        compute: ComputeConfig {
            cluster_id: a.cluster_id,
            trust_domain: a.trust_domain,
            root_namespace: a.root_namespace,
            network: a.network,
            enable_dry_run: a.enable_dry_run,
            auto_allow_waypoint_policy: a.auto_allow_waypoint_policy,
            deployer: DeployerConfig {
                xds_address: a.waypoint_xds_address,
                ca_address: a.waypoint_ca_address,
                command: a.waypoint_command,
                ..DeployerConfig::default()
            },
            ..ComputeConfig::default()
        },
        debounce: Duration::from_millis(a.debounce_ms),
        require_xds_token: !a.xds_no_auth,
        drain_deadline: Duration::from_secs(a.drain_seconds),
        deploy_dir: a.deploy_dir,
    })
}

fn token(a: TokenArgs) -> anyhow::Result<()> {
    let subject = match (a.node, a.pod) {
        (Some(node), None) => Subject::Node(node),
        (None, Some(pod)) => {
            let (namespace, name) = pod
                .split_once('/')
                .context("--pod takes <namespace>/<name>")?;
            anyhow::ensure!(
                !namespace.is_empty() && !name.is_empty(),
                "--pod takes <namespace>/<name>"
            );
            Subject::Pod {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }
        }
        _ => anyhow::bail!("give exactly one of --node or --pod"),
    };
    let authority = TokenAuthority::load_or_create(&a.state_dir)?;
    let token = authority.issue(
        subject,
        Duration::from_secs(a.ttl_hours.saturating_mul(3600)),
        SystemTime::now(),
    );
    // A token file holds the token and nothing else, as Kubernetes writes one: upstream ztunnel sends the file's
    // bytes verbatim after `Bearer `, so a trailing line break would make the header invalid. Only a terminal
    // gets the line break.
    match a.output {
        Some(path) => write_token_file(&path, &token)
            .with_context(|| format!("writing the token to {}", path.display()))?,
        None => {
            use std::io::{IsTerminal, Write};
            let mut out = std::io::stdout().lock();
            if out.is_terminal() {
                writeln!(out, "{token}")?;
            } else {
                write!(out, "{token}")?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

/// Writes `token` (no line break) to `path` with mode 0600, replacing an existing file through a temporary file
/// next to it, so a reader never sees half a token.
fn write_token_file(path: &std::path::Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    let r = write();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(t)) => return token(t),
        Some(Command::Compute(c)) => return compute_once(c),
        Some(Command::Analyze(c)) => return analyze_once(c),
        None => {}
    }
    let _log = ambit_core::logging::init("info", ambit_core::logging::json_from_env());
    // Several rustls providers may be compiled in; pick one explicitly (see build notes).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca_dir = cli
        .run
        .ca_dir
        .clone()
        .unwrap_or_else(|| cli.run.state_dir.join("ca"));
    let kubeconfig = cli.run.kubeconfig.clone();
    let write_status = cli.run.write_status;
    let crd_retry = Duration::from_secs(cli.run.crd_retry_seconds.max(1));
    let leader = leader_config(&cli.run);
    let cfg = config(cli.run)?;
    tracing::info!(config = %serde_json::to_string(&cfg).unwrap_or_default(), "starting controller");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let ca = Arc::new(
            LocalCa::load_or_create(&ca_dir, &cfg.compute.trust_domain)
                .with_context(|| format!("CA directory {}", ca_dir.display()))?,
        );
        let deadline = cfg.drain_deadline;
        let (status_trigger, status_drain) = ambit_core::drain::new();
        let (leader_trigger, leader_drain) = ambit_core::drain::new();
        let mut status_task = None;
        let mut leader_task = None;
        let running = if cfg.manifests.is_empty() {
            let (client, url) = ambit_core::kube::client(kubeconfig.as_deref()).await?;
            tracing::info!(api_server = %url, write_status, "watching the Kubernetes API");
            let source = Box::new(KubeSource::new(client.clone()).with_crd_retry(crd_retry));
            let leader = leader.filter(|_| write_status);
            let election = match &leader {
                Some(l) => serde_json::json!({"identity": l.identity,
                    "lease": format!("{}/{}", l.namespace, l.lease_name),
                    "leaseDurationSeconds": l.lease_duration.as_secs()}),
                None => serde_json::Value::Null,
            };
            let info = serde_json::json!({"kubernetes": url, "kubeconfig": kubeconfig,
                "writeStatus": write_status, "leaderElection": election});
            let running = app::start_with_source(cfg, ca, source, info).await?;
            if write_status {
                let mut writer = StatusWriter::new(
                    client.clone(),
                    running.outputs.resources.clone(),
                    running.outputs.generations.clone(),
                );
                match leader {
                    // Only the Lease holder writes; xDS and certificates are served by every replica.
                    Some(l) => {
                        let elector = LeaderElector::new(client, l);
                        writer = writer.with_pause(elector.paused());
                        leader_task = Some(tokio::spawn(elector.run(leader_drain)));
                    }
                    None => {
                        tracing::info!("leader election off: this replica always writes status")
                    }
                }
                status_task = Some(tokio::spawn(writer.run(status_drain)));
            }
            running
        } else {
            app::start(cfg, ca).await?
        };
        ambit_core::signal::shutdown().await;
        tracing::info!("shutting down");
        // Status writes stop first: nothing is written from a half-drained controller. Then the leader releases
        // its Lease, so a standby takes over at its next try.
        status_trigger.drain(deadline).await;
        if let Some(t) = status_task {
            t.abort();
        }
        leader_trigger.drain(deadline).await;
        if let Some(t) = leader_task {
            t.abort();
        }
        running.shutdown(deadline).await;
        Ok(())
    })
}
