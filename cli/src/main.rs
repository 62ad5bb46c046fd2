//! `ambit`: run a local mesh, inspect its ztunnels (`ambit zc`), manage waypoints (`ambit waypoint`), analyze the
//! configuration (`ambit analyze`), explain policy decisions, run Prometheus and Grafana on the local mesh
//! (`ambit dashboard`), and a built-in echo server for demos and tests.

use ambit::{analyze, authz, dashboard, echo, local, precheck, proxy_status, waypoint, zc};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ambit",
    version,
    about = "Ambit: an ambient-style service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole mesh on this host, without Kubernetes.
    Local(local::LocalArgs),
    /// A small test server: HTTP/1.1 and h2c echo (and plain TCP), answering with who it is and what it got.
    Echo(echo::EchoArgs),
    /// Authorization: `ambit authz check` explains which tier allows or denies a request, and why.
    Authz(authz::AuthzArgs),
    /// A ztunnel's workloads, services, policies, certificates and connections, and its log level (istioctl's
    /// `ztunnel-config`).
    #[command(name = "ztunnel-config", visible_alias = "zc")]
    ZtunnelConfig(zc::ZcArgs),
    /// Generate, apply, list, explain and delete waypoints (istioctl's `waypoint`).
    Waypoint(waypoint::WaypointArgs),
    /// What in the mesh's configuration will not work as meant, each finding with a code and a fix (istioctl's
    /// `analyze`). Exit code 79 when a finding reaches `--failure-threshold`.
    #[command(
        after_help = "Examples:\n  ambit analyze -f examples/bookinfo          # offline, all namespaces\n  sudo ambit analyze -A                       # the running local mesh\n  ambit analyze -f manifests -o json --failure-threshold Warning"
    )]
    Analyze(analyze::AnalyzeArgs),
    /// Will Ambit run here? The cluster's version, Gateway API and Istio CRDs, permissions and an Istio already
    /// installed, or with `--local` this host for the local mesh; each check with a code and a fix (istioctl's
    /// `x precheck`). Exit code 1 when a check fails at Error.
    #[command(
        after_help = "Examples:\n  ambit precheck                              # the kubeconfig's cluster\n  ambit precheck --kubeconfig k.yaml -o json --output-threshold Warning\n  sudo ambit precheck --local                 # this host, for `ambit local up`"
    )]
    Precheck(precheck::PrecheckArgs),
    /// Every ztunnel and waypoint connected to the controller: subscribed types and whether each ACKed the
    /// controller's current state (istioctl's `proxy-status`).
    #[command(name = "proxy-status", visible_alias = "ps")]
    ProxyStatus(proxy_status::ProxyStatusArgs),
    /// Prometheus scraping the local mesh, the Grafana dashboards and a proxy's admin page (istioctl's `dashboard
    /// prometheus|grafana|proxy`).
    #[command(name = "dashboard", visible_aliases = ["dash", "d"])]
    Dashboard(dashboard::DashboardArgs),
    /// Print a shell completion script: `source <(ambit completion bash)`, or save it where your shell loads
    /// completions from.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| usage_error(e));
    let code = match cli.command {
        Command::Local(args) => local::run(args),
        Command::Echo(args) => run_echo(args),
        Command::Authz(args) => Ok(authz::run(args)),
        Command::ZtunnelConfig(args) => zc::run(args).map_err(anyhow::Error::from),
        Command::Waypoint(args) => Ok(waypoint::run(args)),
        Command::Analyze(args) => Ok(analyze::run(args)),
        Command::Precheck(args) => Ok(precheck::run(args)),
        Command::ProxyStatus(args) => proxy_status::run(&args),
        Command::Dashboard(args) => dashboard::run(args),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ambit", &mut script);
            // A closed pipe (`| head`) is not an error worth a message.
            match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(0),
            }
        }
    };
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Help and version as clap prints them; a usage error (unknown subcommand or flag, bad value) as one line: clap's
/// message and tip, and the help of the (sub)command it is about.
fn usage_error(e: clap::Error) -> ! {
    use clap::CommandFactory;
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    // The subcommands named on the command line, up to the first word that is not one.
    let mut cmd = Cli::command();
    let mut path = vec!["ambit".to_owned()];
    for arg in std::env::args_os().skip(1) {
        let Some(sub) = arg.to_str().and_then(|a| cmd.find_subcommand(a)).cloned() else {
            break;
        };
        path.push(sub.get_name().to_owned());
        cmd = sub;
    }
    let text = e.render().to_string();
    let mut message = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("Usage: ") || line.starts_with("For more information") {
            continue;
        }
        let line = line.strip_prefix("error: ").unwrap_or(line);
        if !message.is_empty() {
            message.push_str(if line.starts_with('[') { " " } else { "; " });
        }
        message.push_str(line);
    }
    eprintln!("error: {message} (see `{} --help`)", path.join(" "));
    std::process::exit(2);
}

fn run_echo(args: echo::EchoArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let shutdown = ambit_core::signal::shutdown();
        echo::run(args, shutdown).await
    })?;
    Ok(0)
}
