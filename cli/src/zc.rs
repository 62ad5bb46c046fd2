//! `ambit ztunnel-config` (`zc`): a ztunnel's view of the mesh — workloads, services, policies, certificates,
//! connections — and its log level, with istioctl's subcommands, aliases, flags, columns and messages
//! (`istioctl ztunnel-config`).
//!
//! The config dump comes from a file (`-f`, upstream ztunnel's or Ambit's `/config_dump`) or from a live ztunnel's
//! admin port: the one on `--node`, the one the pod argument names (a ztunnel, or an application pod: its node's
//! ztunnel, showing that pod's entries), or by default the first. The pieces: [`model`] reads either ztunnel's
//! dump into one model, [`summary`] selects and tabulates each section, [`waypoint`] resolves the WAYPOINT
//! column, [`source`] finds ztunnels in a mesh and reaches their admin ports, [`log`] is `zc log`.

pub mod certs;
pub mod log;
pub mod model;
pub mod source;
pub mod summary;
pub mod table;
pub mod target;
pub mod waypoint;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;
use time::OffsetDateTime;

use model::Dump;
use source::{LocalMesh, Mesh, Pick, SourceError};
use summary::{ConnectionsFilter, Direction, NamespaceFilter, Summary, WorkloadFilter};
use target::Target;

#[derive(clap::Args, Debug, Clone)]
#[command(
    about = "Update or retrieve current Ztunnel configuration.",
    long_about = "A group of commands used to update or retrieve Ztunnel configuration from a Ztunnel instance: \
                  its workloads, services, policies, certificates and connections, and its log level.",
    after_help = "Examples:\n  \
        # Retrieve summary about workload configuration\n  \
        ambit ztunnel-config workload\n\n  \
        # The workloads of a saved dump (upstream ztunnel's or Ambit's)\n  \
        ambit zc workloads -f ztunnel-config.json\n\n  \
        # What the ztunnel of bookinfo's productpage pod knows about it\n  \
        ambit zc workload productpage-v1-6d8f9c7b5-x2k4p.bookinfo -o yaml\n\n  \
        # Retrieve summary about certificates of node-2's ztunnel\n  \
        ambit zc certificates --node node-2"
)]
pub struct ZcArgs {
    #[command(subcommand)]
    pub command: ZcCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ZcCommand {
    /// Retrieves workload configuration for the specified Ztunnel pod.
    #[command(
        visible_aliases = ["w", "workloads"],
        after_help = "Examples:\n  \
            # Workloads of one namespace, as the first node's ztunnel sees them\n  \
            ambit zc workload --workload-namespace bookinfo\n\n  \
            # One application pod, from its node's ztunnel, in full\n  \
            ambit zc workload productpage-v1-6d8f9c7b5-x2k4p.bookinfo -o json\n\n  \
            # From a saved dump: kubectl exec $ZTUNNEL -- curl -s localhost:15000/config_dump > dump.json\n  \
            ambit zc workloads -f dump.json --address 10.244.1.5"
    )]
    Workload {
        #[command(flatten)]
        common: Common,
        /// Filter workloads by address field
        #[arg(long)]
        address: Option<String>,
        /// Filter workloads by namespace field
        #[arg(long)]
        workload_namespace: Option<String>,
        /// Filter workloads by node
        #[arg(long)]
        workload_node: Option<String>,
    },
    /// Retrieves services for the specified Ztunnel pod.
    #[command(
        visible_aliases = ["services", "s", "svc"],
        after_help = "Examples:\n  ambit zc services --service-namespace bookinfo\n  ambit zc svc -f dump.json -o yaml"
    )]
    Service {
        #[command(flatten)]
        common: Common,
        /// Filter services by namespace field
        #[arg(long)]
        service_namespace: Option<String>,
    },
    /// Retrieves policies for the specified Ztunnel pod.
    #[command(
        visible_aliases = ["policies", "p", "pol"],
        after_help = "Examples:\n  ambit zc policies --policy-namespace bookinfo\n  ambit zc pol -f dump.json -o json"
    )]
    Policy {
        #[command(flatten)]
        common: Common,
        /// Filter policies by namespace field
        #[arg(long)]
        policy_namespace: Option<String>,
    },
    /// Retrieves certificate for the specified Ztunnel pod.
    #[command(
        visible_aliases = ["certificates", "certs", "cert", "secret"],
        after_help = "Examples:\n  ambit zc certificates --node node-1\n  ambit zc certs ztunnel-node-2.istio-system -o json"
    )]
    Certificate {
        #[command(flatten)]
        common: Common,
    },
    /// Retrieves connections for the specified Ztunnel pod.
    #[command(
        visible_aliases = ["cons"],
        after_help = "Examples:\n  ambit zc connections --node node-1 --direction inbound\n  \
            ambit zc cons productpage-v1-6d8f9c7b5-x2k4p.bookinfo --raw"
    )]
    Connections {
        #[command(flatten)]
        common: Common,
        /// Filter workloads by direction (inbound or outbound)
        #[arg(long, value_enum)]
        direction: Option<Direction>,
        /// If set, show IP addresses instead of names
        #[arg(long)]
        raw: bool,
        /// Filter workloads by namespace field
        #[arg(long)]
        workload_namespace: Option<String>,
    },
    /// Retrieves all configuration for the specified Ztunnel pod.
    #[command(
        after_help = "Examples:\n  ambit zc all --node node-1 --with-headers\n  ambit zc all -f dump.json -o json"
    )]
    All {
        #[command(flatten)]
        common: Common,
        /// Print summary with headers
        #[arg(long)]
        with_headers: bool,
    },
    /// Retrieves logging levels of the Ztunnel instance in the specified pod (every ztunnel by default).
    #[command(
        visible_aliases = ["o"],
        after_help = "Examples:\n  \
            # Every ztunnel's level\n  \
            ambit zc log\n\n  \
            # One ztunnel: access logs at debug, the rest at info\n  \
            ambit zc log ztunnel-node-1 --level access:debug,info\n\n  \
            # Back to the ztunnel's default\n  \
            ambit zc log --node node-1 -r"
    )]
    // `--level`'s help is istioctl's text as it is, `<logger>` and all: not rustdoc markup.
    #[allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]
    Log {
        #[command(flatten)]
        common: Common,
        /// Comma-separated minimum per-logger level of messages to output, in the form of
        /// [<logger>:]<level>,[<logger>:]<level>,... or <level> to change all active loggers, where level can be one
        /// of [trace, debug, info, warning, error, critical, off]
        #[arg(long)]
        level: Option<String>,
        /// Reset levels to default value.
        #[arg(short = 'r', long)]
        reset: bool,
    },
}

/// The flags every subcommand has.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// `[<type>/]<name>[.<namespace>]`: a ztunnel pod, or an application pod (its node's ztunnel is used, and only
    /// its own entries are shown). Types: pod (default), deployment, daemonset/ztunnel.
    #[arg(value_name = "[<type>/]<name>[.<namespace>]")]
    pub target: Option<String>,
    /// Output format: one of json|yaml|short
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Short)]
    pub output: Output,
    /// Use the ztunnel on this node
    #[arg(long)]
    pub node: Option<String>,
    /// Ztunnel config dump JSON file (`-` reads standard input)
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Ztunnel proxy admin port
    #[arg(long, default_value_t = 15000, value_parser = clap::value_parser!(u16).range(1..))]
    pub proxy_admin_port: u16,
    /// Namespace of the pod argument when it has none (default: istio-system for ztunnels, else any namespace)
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The local mesh's state directory
    #[arg(long, env = "AMBIT_LOCAL_DIR", default_value = crate::local::DEFAULT_DIR)]
    pub local_dir: PathBuf,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Json,
    Yaml,
    /// The summary table
    Short,
}

#[derive(Debug, thiserror::Error)]
pub enum ZcError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {path}: {why}")]
    Read { path: String, why: std::io::Error },
    #[error("{origin} is not a ztunnel config_dump: {why}")]
    Malformed { origin: String, why: String },
    #[error("{ztunnel} answered {status} to GET /config_dump at {addr}: {body}")]
    AdminStatus {
        ztunnel: String,
        addr: std::net::SocketAddr,
        status: u16,
        body: String,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot write the output: {0}")]
    Output(String),
}

impl ZcCommand {
    pub fn common(&self) -> &Common {
        match self {
            ZcCommand::Workload { common, .. }
            | ZcCommand::Service { common, .. }
            | ZcCommand::Policy { common, .. }
            | ZcCommand::Certificate { common }
            | ZcCommand::Connections { common, .. }
            | ZcCommand::All { common, .. }
            | ZcCommand::Log { common, .. } => common,
        }
    }

    /// Certificates and connections are one ztunnel's own state (istioctl makes you name the ztunnel when there
    /// are several); workloads, services and policies are the mesh's, the same on every ztunnel.
    fn per_ztunnel(&self) -> bool {
        matches!(
            self,
            ZcCommand::Certificate { .. } | ZcCommand::Connections { .. }
        )
    }
}

/// Runs a `ztunnel-config` subcommand; the exit code.
pub fn run(args: ZcArgs) -> Result<i32, ZcError> {
    if let ZcCommand::Log {
        common,
        level,
        reset,
    } = &args.command
    {
        return run_log(common, level.as_deref(), *reset);
    }
    let (dump, workload) = load(args.command.common(), args.command.per_ztunnel())?;
    let text = render(
        &args.command,
        &dump,
        workload.as_ref(),
        OffsetDateTime::now_utc(),
    )?;
    write_stdout(&text.text)?;
    // After the table, where they are read.
    for w in &text.warnings {
        eprintln!("warning: {w}");
    }
    Ok(0)
}

/// What a subcommand prints for `dump` (`workload`: the application pod the argument named), at time `now`.
pub fn render(
    cmd: &ZcCommand,
    dump: &Dump,
    workload: Option<&source::PodRef>,
    now: OffsetDateTime,
) -> Result<Summary, ZcError> {
    let target_name = workload.map(|p| p.name.clone());
    let target_ns = workload.map(|p| p.namespace.clone());
    match cmd {
        ZcCommand::Workload {
            common,
            address,
            workload_namespace,
            workload_node,
        } => {
            let f = WorkloadFilter {
                address: address.clone(),
                node: workload_node.clone(),
                namespace: target_ns.or_else(|| workload_namespace.clone()),
                name: target_name,
            };
            let json = || values(summary::workloads(dump, &f).iter().map(|w| &w.raw));
            pick(common.output, json, || summary::workload_table(dump, &f))
        }
        ZcCommand::Service {
            common,
            service_namespace,
        } => {
            let f = NamespaceFilter {
                namespace: service_namespace.clone(),
            };
            let json = || values(summary::services(dump, &f).iter().map(|s| &s.raw));
            pick(common.output, json, || summary::service_table(dump, &f))
        }
        ZcCommand::Policy {
            common,
            policy_namespace,
        } => {
            let f = NamespaceFilter {
                namespace: policy_namespace.clone(),
            };
            let json = || values(summary::policies(dump, &f).iter().map(|p| &p.raw));
            pick(common.output, json, || summary::policy_table(dump, &f))
        }
        ZcCommand::Certificate { common } => {
            let json = || values(dump.certificates.iter().map(|c| &c.raw));
            pick(common.output, json, || {
                summary::certificate_table(dump, now)
            })
        }
        ZcCommand::Connections {
            common,
            direction,
            raw,
            workload_namespace,
        } => {
            let f = ConnectionsFilter {
                namespace: target_ns.or_else(|| workload_namespace.clone()),
                workload: target_name,
                direction: *direction,
                raw: *raw,
            };
            let json = || values(summary::workload_states(dump, &f).iter().map(|s| &s.raw));
            pick(common.output, json, || summary::connections_table(dump, &f))
        }
        ZcCommand::All {
            common,
            with_headers,
        } => pick(
            common.output,
            || dump.full(),
            || summary::all_tables(dump, *with_headers, now),
        ),
        ZcCommand::Log { .. } => Err(ZcError::Usage("log has no config dump to show".into())),
    }
}

/// The table for `short`, else the entries (as the ztunnel wrote them) as JSON or YAML.
fn pick(
    output: Output,
    entries: impl FnOnce() -> Value,
    table: impl FnOnce() -> Summary,
) -> Result<Summary, ZcError> {
    let text = match output {
        Output::Short => return Ok(table()),
        Output::Json => json_text(&entries())?,
        Output::Yaml => {
            serde_yaml::to_string(&entries()).map_err(|e| ZcError::Output(e.to_string()))?
        }
    };
    Ok(Summary {
        text,
        warnings: Vec::new(),
    })
}

fn values<'a>(items: impl Iterator<Item = &'a Value>) -> Value {
    Value::Array(items.cloned().collect())
}

/// JSON indented by four spaces, as istioctl prints it.
fn json_text(v: &Value) -> Result<String, ZcError> {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(v, &mut ser).map_err(|e| ZcError::Output(e.to_string()))?;
    buf.push(b'\n');
    String::from_utf8(buf).map_err(|e| ZcError::Output(e.to_string()))
}

/// istioctl: at most one of `--file`, `--node` and the pod argument.
fn check_common(c: &Common) -> Result<(), ZcError> {
    let set = [c.file.is_some(), c.node.is_some(), c.target.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set > 1 {
        return Err(ZcError::Usage(
            "at most one of --file, --node, or pod name must be passed".into(),
        ));
    }
    Ok(())
}

/// The dump the flags name, and the application pod the argument named.
fn load(c: &Common, single: bool) -> Result<(Dump, Option<source::PodRef>), ZcError> {
    check_common(c)?;
    if let Some(path) = &c.file {
        return Ok((read_file(path)?, None));
    }
    let mesh = LocalMesh::open(&c.local_dir, c.proxy_admin_port)?;
    let target = target(c)?;
    let selected = source::select(&mesh, pick_of(c, target.as_ref()), single)?;
    Ok((fetch_dump(&mesh, &selected.ztunnel)?, selected.workload))
}

/// The pod argument, read.
fn target(c: &Common) -> Result<Option<Target>, ZcError> {
    c.target
        .as_deref()
        .map(|t| Target::parse(t, c.namespace.as_deref()))
        .transpose()
        .map_err(ZcError::Usage)
}

/// `--node`, else the pod argument, else the default ztunnel.
fn pick_of<'a>(c: &'a Common, target: Option<&'a Target>) -> Pick<'a> {
    match (&c.node, target) {
        (Some(node), _) => Pick::Node(node),
        (None, Some(t)) => Pick::Target(t),
        (None, None) => Pick::Default,
    }
}

/// A ztunnel's `/config_dump`.
pub fn fetch_dump(mesh: &dyn Mesh, z: &source::Ztunnel) -> Result<Dump, ZcError> {
    let r = mesh.admin(z, "GET", "/config_dump")?;
    if r.status != 200 {
        return Err(ZcError::AdminStatus {
            ztunnel: z.id(),
            addr: r.addr,
            status: r.status,
            body: r.first_line(),
        });
    }
    Dump::parse(&r.body).map_err(|e| ZcError::Malformed {
        origin: format!("{}'s /config_dump at {}", z.id(), r.addr),
        why: e.0,
    })
}

/// A dump file (`-` is standard input).
pub fn read_file(path: &Path) -> Result<Dump, ZcError> {
    let shown = path.display().to_string();
    let bytes = if shown == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .map_err(|why| ZcError::Read {
                path: "standard input".into(),
                why,
            })?;
        b
    } else {
        std::fs::read(path).map_err(|why| ZcError::Read {
            path: shown.clone(),
            why,
        })?
    };
    Dump::parse(&bytes).map_err(|e| ZcError::Malformed {
        origin: shown,
        why: e.0,
    })
}

fn run_log(c: &Common, level: Option<&str>, reset: bool) -> Result<i32, ZcError> {
    check_common(c)?;
    if c.output != Output::Short {
        return Err(ZcError::Usage(
            "--output is not applicable for this command".into(),
        ));
    }
    if c.file.is_some() {
        return Err(ZcError::Usage(
            "--file is not applicable for this command: log levels live in a running ztunnel"
                .into(),
        ));
    }
    let req = log::LogRequest::new(level, reset).map_err(ZcError::Usage)?;
    if req == log::LogRequest::Reset {
        eprintln!("log level reset; using the ztunnel's default");
    }
    let mesh = LocalMesh::open(&c.local_dir, c.proxy_admin_port)?;
    let target = target(c)?;
    let targets = source::select_all(&mesh, pick_of(c, target.as_ref()))?;
    let (out, result) = log::run(&mesh, &targets, &req);
    write_stdout(&out)?;
    result?;
    Ok(0)
}

/// Writes to standard output; a closed pipe (`| head`) is not an error.
fn write_stdout(text: &str) -> Result<(), ZcError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(ZcError::Output(e.to_string())),
        _ => Ok(()),
    }
}
