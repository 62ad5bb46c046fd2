//! `ambit waypoint generate|apply|list|status|delete`: istioctl's `waypoint` commands, with their flags, output
//! and errors, plus `--service-account <sa>` (a waypoint only that service account's pods use: the Gateway is
//! annotated `istio.io/for-service-account`).
//!
//! `generate` needs no mesh. The others work on a [`WaypointMesh`]: today the running local mesh
//! ([`local::LocalMesh`], its manifest directory and its controller's status); a Kubernetes API server (kube-rs,
//! server-side apply with field manager `istioctl`) is the second implementation to come.

pub mod local;
pub mod view;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::Value;

use view::{Binding, FOR_SERVICE_ACCOUNT, REVISION, WAYPOINT_FOR, Waypoint};

const USE_WAYPOINT: &str = "istio.io/use-waypoint";
const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
const TRAFFIC_TYPES: [&str; 4] = ["all", "none", "service", "workload"];

#[derive(Args, Debug, Clone)]
pub struct WaypointArgs {
    /// Name of the waypoint (default `waypoint`; `<sa>-waypoint` with `--service-account`).
    #[arg(long, global = true)]
    pub name: Option<String>,
    /// The namespace (default `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// The local mesh's state directory.
    #[arg(long, env = "AMBIT_LOCAL_DIR", default_value = crate::local::DEFAULT_DIR, global = true)]
    pub local_dir: PathBuf,
    #[command(subcommand)]
    pub command: WaypointCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum WaypointCommand {
    /// Print a waypoint Gateway as YAML.
    #[command(
        after_help = "Examples:\n  ambit waypoint generate -n default\n  ambit waypoint generate -n bookinfo --service-account bookinfo-reviews"
    )]
    Generate(GatewayFlags),
    /// Apply a waypoint to the mesh (the local mesh: into its manifest directory).
    #[command(
        after_help = "Examples:\n  ambit waypoint apply -n demo --enroll-namespace --wait\n  ambit waypoint apply -n bookinfo --service-account bookinfo-reviews"
    )]
    Apply(ApplyArgs),
    /// List the waypoints.
    List(ListArgs),
    /// Show whether each waypoint is programmed, and why the objects that ask for it do or do not use it.
    Status(StatusArgs),
    /// Delete waypoints by name, all of them (`--all`) or one revision's (`--revision`).
    Delete(DeleteArgs),
}

#[derive(Args, Debug, Clone, Default)]
pub struct GatewayFlags {
    /// The traffic the waypoint takes: all, none, service or workload (label `istio.io/waypoint-for`; unset, the
    /// class default, service).
    #[arg(long = "for")]
    pub for_: Option<String>,
    /// The revision to label the waypoint with (`istio.io/rev`).
    #[arg(short = 'r', long)]
    pub revision: Option<String>,
    /// Only this service account's pods (of the namespace) use the waypoint.
    #[arg(long)]
    pub service_account: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub gateway: GatewayFlags,
    /// Label the namespace `istio.io/use-waypoint=<name>`.
    #[arg(long)]
    pub enroll_namespace: bool,
    /// With `--enroll-namespace`: replace the namespace's waypoint if it has one.
    #[arg(long)]
    pub overwrite: bool,
    /// Wait until the waypoint is programmed.
    #[arg(short = 'w', long)]
    pub wait: bool,
    /// How long `--wait` waits (`90s`, `2m`).
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub waypoint_timeout: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// List the waypoints of every namespace.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Wait until every waypoint shown is programmed.
    #[arg(short = 'w', long)]
    pub wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub waypoint_timeout: Duration,
    /// Every namespace.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
}

#[derive(Args, Debug, Clone)]
pub struct DeleteArgs {
    /// The waypoints to delete.
    pub names: Vec<String>,
    /// Delete every waypoint of the namespace.
    #[arg(long)]
    pub all: bool,
    /// Delete the waypoints of this revision.
    #[arg(short = 'r', long)]
    pub revision: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WaypointError {
    /// Bad flags or arguments.
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The mesh refused or could not answer.
    #[error("{0}")]
    Mesh(String),
}

/// Where waypoints are applied and read. Objects are Kubernetes-shaped JSON.
pub trait WaypointMesh {
    /// The Gateways of `namespace` (all when `None`), with the controller's status merged in; and, when the status
    /// could not be read, why.
    fn gateways(
        &self,
        namespace: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), WaypointError>;
    /// A namespace's labels, `None` when it does not exist.
    fn namespace_labels(&self, ns: &str)
    -> Result<Option<BTreeMap<String, String>>, WaypointError>;
    /// Creates or updates the Gateway; returns where it went.
    fn apply_gateway(&self, gw: &Gateway) -> Result<String, WaypointError>;
    /// Sets one label of a namespace; returns where.
    fn label_namespace(&self, ns: &str, key: &str, value: &str) -> Result<String, WaypointError>;
    /// Deletes a Gateway; false when there was none.
    fn delete_gateway(&self, ns: &str, name: &str) -> Result<bool, WaypointError>;
    /// The `istio.io/WaypointBound` verdicts of the objects that ask for a waypoint, or why they are unknown.
    fn bindings(&self, namespace: Option<&str>) -> Result<Vec<Binding>, String>;
}

/// The waypoint Gateway `generate` prints and `apply` applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub name: String,
    /// Empty: no namespace field (what `generate` prints without `-n`).
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// A Go duration as istioctl takes it (`90s`, `1m30s`, `500ms`, `2h`); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let bad = || format!("invalid duration {s:?}: use e.g. 90s, 2m, 1m30s");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let n: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::from_secs_f64(secs);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// A label value as YAML (Go's `sigs.k8s.io/yaml` quotes what would read as another type).
pub fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.parse::<f64>().is_err()
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "~" | "y" | "n"
        )
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if plain {
        s.to_owned()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

/// A DNS-1123 name (what Kubernetes takes for names, namespaces and service accounts).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl Gateway {
    /// The Gateway istioctl's `makeGateway` builds from the flags, plus the service-account annotation.
    pub fn from_flags(
        name: Option<&str>,
        namespace: &str,
        f: &GatewayFlags,
    ) -> Result<Gateway, WaypointError> {
        let name = match (name, &f.service_account) {
            (Some(n), _) if !n.is_empty() => n.to_owned(),
            (_, Some(sa)) => format!("{sa}-waypoint"),
            _ => "waypoint".to_owned(),
        };
        if name == "none" {
            return Err(WaypointError::Usage(
                "failed to create gateway: invalid name provided for waypoint, 'none' is a reserved value (it means \
                 \"no waypoint\" in istio.io/use-waypoint): choose another --name"
                    .into(),
            ));
        }
        for (what, v) in [
            ("--name", Some(&name)),
            ("--service-account", f.service_account.as_ref()),
        ] {
            if let Some(v) = v
                && !valid_name(v)
            {
                return Err(WaypointError::Usage(format!(
                    "failed to create gateway: {what} {v:?} is not a valid Kubernetes name (lower-case letters, digits, '-' and '.')"
                )));
            }
        }
        let mut labels = BTreeMap::new();
        if let Some(t) = &f.for_ {
            if !TRAFFIC_TYPES.contains(&t.as_str()) {
                return Err(WaypointError::Usage(format!(
                    "failed to create gateway: invalid traffic type: {t}. Valid options are: [{}]",
                    TRAFFIC_TYPES.join(" ")
                )));
            }
            labels.insert(WAYPOINT_FOR.to_owned(), t.clone());
        }
        if let Some(r) = f.revision.as_ref().filter(|r| !r.is_empty()) {
            labels.insert(REVISION.to_owned(), r.clone());
        }
        let mut annotations = BTreeMap::new();
        if let Some(sa) = &f.service_account {
            annotations.insert(FOR_SERVICE_ACCOUNT.to_owned(), sa.clone());
        }
        Ok(Gateway {
            name,
            namespace: namespace.to_owned(),
            labels,
            annotations,
        })
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The YAML istioctl prints: `sigs.k8s.io/yaml`'s rendering (keys sorted, lists not indented), one listener
    /// `mesh` on 15008 with protocol HBONE.
    pub fn to_yaml(&self) -> String {
        let mut out =
            String::from("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n");
        for (field, map) in [("annotations", &self.annotations), ("labels", &self.labels)] {
            if !map.is_empty() {
                out.push_str(&format!("  {field}:\n"));
                for (k, v) in map {
                    out.push_str(&format!("    {k}: {}\n", yaml_scalar(v)));
                }
            }
        }
        out.push_str(&format!("  name: {}\n", self.name));
        if !self.namespace.is_empty() {
            out.push_str(&format!("  namespace: {}\n", self.namespace));
        }
        out.push_str(
            "spec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n",
        );
        out
    }

    /// Sets what `apply` manages on an existing Gateway object, keeping the rest: the class, the listener, and
    /// the labels and annotation given.
    pub fn merge_into(&self, obj: &mut Value) {
        let Some(o) = obj.as_object_mut() else {
            return;
        };
        let meta = o
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        for (field, map) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            if map.is_empty() {
                continue;
            }
            if !meta[field].is_object() {
                meta[field] = Value::Object(Default::default());
            }
            for (k, v) in map {
                meta[field][k.as_str()] = Value::String(v.clone());
            }
        }
        let spec = o
            .entry("spec")
            .or_insert_with(|| Value::Object(Default::default()));
        spec["gatewayClassName"] = "istio-waypoint".into();
        spec["listeners"] =
            serde_json::json!([{"name": "mesh", "port": 15008, "protocol": "HBONE"}]);
    }
}

/// The command's output and exit code, or an error.
pub struct Outcome {
    pub stdout: String,
    pub code: i32,
}

pub fn run(args: WaypointArgs) -> i32 {
    let result = match &args.command {
        WaypointCommand::Generate(f) => Gateway::from_flags(
            args.name.as_deref(),
            args.namespace.as_deref().unwrap_or(""),
            f,
        )
        .map(|gw| Outcome {
            stdout: gw.to_yaml(),
            code: 0,
        }),
        _ => local::LocalMesh::open(&args.local_dir).and_then(|mesh| execute(&mesh, &args)),
    };
    match result {
        Ok(o) => {
            print!("{}", o.stdout);
            o.code
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `apply`, `list`, `status` and `delete` on `mesh`. Progress and warnings go to stderr as they happen.
pub fn execute(mesh: &dyn WaypointMesh, args: &WaypointArgs) -> Result<Outcome, WaypointError> {
    let ns = args.namespace.as_deref().unwrap_or("default");
    match &args.command {
        WaypointCommand::Generate(f) => Gateway::from_flags(
            args.name.as_deref(),
            args.namespace.as_deref().unwrap_or(""),
            f,
        )
        .map(|gw| Outcome {
            stdout: gw.to_yaml(),
            code: 0,
        }),
        WaypointCommand::Apply(a) => apply(mesh, args.name.as_deref(), ns, a),
        WaypointCommand::List(l) => {
            let scope = (!l.all_namespaces).then_some(ns);
            let (objects, why) = mesh.gateways(scope)?;
            if let Some(why) = &why {
                eprintln!("warning: PROGRAMMED is unknown: {why}");
            }
            Ok(Outcome {
                stdout: view::render_list(
                    &view::waypoints(&objects),
                    l.all_namespaces,
                    why.is_none(),
                ),
                code: 0,
            })
        }
        WaypointCommand::Status(s) => status(mesh, args.namespace.as_deref(), s),
        WaypointCommand::Delete(d) => delete(mesh, ns, d),
    }
}

fn apply(
    mesh: &dyn WaypointMesh,
    name: Option<&str>,
    ns: &str,
    a: &ApplyArgs,
) -> Result<Outcome, WaypointError> {
    let gw = Gateway::from_flags(name, ns, &a.gateway)?;
    if a.enroll_namespace && a.gateway.service_account.is_some() {
        return Err(WaypointError::Usage(
            "--enroll-namespace and --service-account exclude each other: a service account's waypoint is used by \
             that account's pods without any label; drop one of them"
                .into(),
        ));
    }
    let labels = mesh.namespace_labels(ns)?.ok_or_else(|| {
        WaypointError::Mesh(format!(
            "namespace: {ns} not found: create it (a Namespace manifest) or choose another with -n"
        ))
    })?;
    let mut out = String::new();
    if a.enroll_namespace {
        if !a.overwrite && labels.get(USE_WAYPOINT).is_some_and(|v| !v.is_empty()) {
            out.push_str(&format!(
                "⚠️ Warning: namespace ({ns}) already has an enrolled Waypoint. Consider adding the `--overwrite` flag to your apply command.\n"
            ));
            return Ok(Outcome {
                stdout: out,
                code: 0,
            });
        }
        if labels.get(DATAPLANE_MODE).map(String::as_str) != Some("ambient") {
            out.push_str(&format!(
                "⚠️ Warning: namespace is not enrolled in ambient. Consider labeling namespace {ns} istio.io/dataplane-mode=ambient\n"
            ));
        }
    }
    let wrote = mesh.apply_gateway(&gw)?;
    eprintln!("wrote {wrote}");
    out.push_str(&format!("✅ waypoint {} applied\n", gw.key()));
    if a.wait {
        print!("{out}");
        out.clear();
        wait_programmed(
            mesh,
            ns,
            std::slice::from_ref(&gw.name),
            a.waypoint_timeout,
            "waiting for waypoint",
        )?;
        out.push_str(&format!("✅ waypoint {} is ready!\n", gw.key()));
    }
    if a.enroll_namespace {
        let wrote = mesh.label_namespace(ns, USE_WAYPOINT, &gw.name)?;
        eprintln!("wrote {wrote}");
        out.push_str(&format!(
            "✅ namespace {ns} labeled with \"{USE_WAYPOINT}: {}\"\n",
            gw.name
        ));
    }
    Ok(Outcome {
        stdout: out,
        code: 0,
    })
}

/// Polls once a second until every one of `names` in `ns` is programmed, with a progress line on stderr every
/// 5 s; the error names the first one that is not, with its condition.
fn wait_programmed(
    mesh: &dyn WaypointMesh,
    ns: &str,
    names: &[String],
    timeout: Duration,
    what: &str,
) -> Result<Vec<Waypoint>, WaypointError> {
    let start = Instant::now();
    let mut said = Duration::ZERO;
    loop {
        let (objects, why) = mesh.gateways(Some(ns))?;
        if let Some(why) = why {
            return Err(WaypointError::Mesh(format!(
                "cannot wait for the waypoint: {why}"
            )));
        }
        let wps = view::waypoints(&objects);
        let pending = names
            .iter()
            .find(|n| !wps.iter().any(|w| &w.name == *n && w.programmed()));
        let Some(pending) = pending else {
            return Ok(wps);
        };
        let condition = wps
            .iter()
            .find(|w| &w.name == pending)
            .and_then(|w| w.condition("Programmed"))
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_else(|| "no status yet".to_owned());
        let elapsed = start.elapsed();
        if elapsed > timeout {
            return Err(WaypointError::Mesh(format!(
                "timed out while {what} {ns}/{pending} after {}s: not programmed ({condition}); see `ambit waypoint status -n {ns}`",
                timeout.as_secs()
            )));
        }
        if elapsed >= said + Duration::from_secs(5) {
            said = elapsed;
            eprintln!(
                "… {ns}/{pending} not programmed yet ({condition}), {}s",
                elapsed.as_secs()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn status(
    mesh: &dyn WaypointMesh,
    namespace: Option<&str>,
    s: &StatusArgs,
) -> Result<Outcome, WaypointError> {
    let scope = if s.all_namespaces {
        None
    } else {
        Some(namespace.unwrap_or("default"))
    };
    let (objects, why) = mesh.gateways(scope)?;
    let mut wps = view::waypoints(&objects);
    if s.wait && !wps.is_empty() {
        let mut by_ns: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for w in &wps {
            by_ns.entry(&w.namespace).or_default().push(w.name.clone());
        }
        let mut all = Vec::new();
        for (ns, names) in by_ns {
            all.extend(
                wait_programmed(
                    mesh,
                    ns,
                    &names,
                    s.waypoint_timeout,
                    "retrieving status for waypoint",
                )
                .map_err(|e| {
                    WaypointError::Mesh(format!("failed to print waypoint status: {e}"))
                })?,
            );
        }
        wps = all;
    }
    let status_known = why.is_none() || s.wait;
    if let Some(why) = why.as_ref().filter(|_| !s.wait) {
        eprintln!("warning: no computed status: {why}");
    }
    // Every namespace's objects: a waypoint may be asked for (and refuse) objects of other namespaces.
    let bindings = match mesh.bindings(None) {
        Ok(mut b) => {
            b.retain(|b| scope.is_none_or(|ns| b.waypoint.split('/').next() == Some(ns)));
            b
        }
        Err(why) => {
            if status_known {
                eprintln!("warning: which objects use the waypoints is unknown: {why}");
            }
            Vec::new()
        }
    };
    Ok(Outcome {
        stdout: view::render_status(&wps, &bindings, namespace.is_none(), status_known),
        code: 0,
    })
}

fn delete(mesh: &dyn WaypointMesh, ns: &str, d: &DeleteArgs) -> Result<Outcome, WaypointError> {
    let by_selector = d.all || d.revision.is_some();
    if by_selector && !d.names.is_empty() {
        return Err(WaypointError::Usage(
            "cannot specify waypoint names when deleting all waypoints (drop the names, or --all/--revision)".into(),
        ));
    }
    if !by_selector && d.names.is_empty() {
        return Err(WaypointError::Usage(
            "must specify a waypoint name or delete all using --all or delete specific revision using --revision"
                .into(),
        ));
    }
    let (objects, _) = mesh.gateways(Some(ns))?;
    let wps = view::waypoints(&objects);
    let mut out = String::new();
    let names: Vec<String> = if by_selector {
        wps.iter()
            .filter(|w| {
                d.revision
                    .as_ref()
                    .is_none_or(|r| w.labels.get(REVISION) == Some(r))
            })
            .map(|w| w.name.clone())
            .collect()
    } else {
        let mut found = Vec::new();
        for n in &d.names {
            if wps.iter().any(|w| &w.name == n) {
                found.push(n.clone());
            } else {
                out.push_str(&format!("waypoint {ns}/{n} not found\n"));
            }
        }
        found
    };
    let mut failures = Vec::new();
    for n in names {
        match mesh.delete_gateway(ns, &n) {
            Ok(true) => out.push_str(&format!("waypoint {ns}/{n} deleted\n")),
            Ok(false) => out.push_str(&format!("waypoint {ns}/{n} not found\n")),
            Err(e) => failures.push(e.to_string()),
        }
    }
    if failures.is_empty() {
        Ok(Outcome {
            stdout: out,
            code: 0,
        })
    } else {
        print!("{out}");
        Err(WaypointError::Mesh(failures.join("; ")))
    }
}
