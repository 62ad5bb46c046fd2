//! `ambit precheck`: will Ambit run here? istioctl's `x precheck` for a cluster, plus the checks of this host for
//! the one-box local mesh.
//!
//! Without `--local` it checks the cluster of the kubeconfig (`--kubeconfig`, else `KUBECONFIG`, else
//! `~/.kube/config`, as kubectl; `--context`): the API server answers, its Kubernetes version, the Gateway API
//! CRDs and their bundle version, the Istio CRDs, an Istio control or data plane already installed, sidecar
//! injection, and the permissions the install needs ([`cluster`]). With `--local` it checks this host for
//! `ambit local up` instead: root, `ip netns`, iptables and the kernel features the redirection uses (tried for
//! real in a throwaway network namespace), the mesh's binaries and a mesh already running ([`host`]).
//!
//! Every check is reported, passed or not, with a stable code (`AMB10xx` cluster, `AMB11xx` host), a severity,
//! the object, a message and what to do. Exit code 1 when a check fails at `Error` (istioctl's precheck also
//! exits 1), 0 otherwise; 1 with a one-line error when the checks cannot run at all.

pub mod cluster;
pub mod host;

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

pub use crate::analyze::Level;
use crate::zc::table::Table;

#[derive(Args, Debug, Clone)]
pub struct PrecheckArgs {
    /// Check this host for the local mesh (`ambit local up`) instead of a cluster.
    #[arg(long, conflicts_with_all = ["kubeconfig", "context", "skip_controlplane"])]
    pub local: bool,
    /// The kubeconfig (default: `KUBECONFIG`, then `~/.kube/config`, as kubectl).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// The namespace Ambit is to be installed in (the permissions are checked there).
    #[arg(short = 'i', long = "istio-namespace", default_value = "istio-system")]
    pub istio_namespace: String,
    /// Skip the checks for an Istio control or data plane already installed (istiod, ztunnel, istio-cni).
    #[arg(long = "skip-controlplane")]
    pub skip_controlplane: bool,
    /// The lowest severity printed (passed checks are Info).
    #[arg(long = "output-threshold", value_enum, default_value_t = Level::Info, ignore_case = true)]
    pub output_threshold: Level,
    /// `table`, `json` or `yaml`.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Seconds to wait for each API request.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// The local mesh's state directory (`--local`: is a mesh already running?).
    #[arg(long, env = "AMBIT_LOCAL_DIR", default_value = crate::local::DEFAULT_DIR)]
    pub local_dir: PathBuf,
    /// The ztunnel the local mesh would run instead of the one next to `ambit` (`--local`).
    #[arg(long, env = crate::local::bins::ZTUNNEL_ENV, hide = true)]
    pub ztunnel_bin: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The requirement is met.
    Pass,
    /// It is not; `severity` says how much that matters.
    Fail,
    /// It could not be checked (no permission to look, an API the server does not serve).
    Unknown,
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Stable: `AMB10xx` for the cluster, `AMB11xx` for the host.
    pub code: String,
    /// A short name (`kubernetes-version`).
    pub name: String,
    pub status: Status,
    /// Info for a passed check; otherwise how much the failure matters.
    pub severity: Level,
    /// `Cluster`, `Host`, or the object, `Kind [ns/]name`.
    pub object: String,
    pub message: String,
    /// What to do to meet the requirement (also on passed checks, for scripts that read JSON).
    pub fix: String,
}

impl Check {
    pub fn pass(code: &str, name: &str, object: &str, message: String, fix: &str) -> Check {
        Check {
            code: code.into(),
            name: name.into(),
            status: Status::Pass,
            severity: Level::Info,
            object: object.into(),
            message,
            fix: fix.into(),
        }
    }

    pub fn fail(
        code: &str,
        name: &str,
        severity: Level,
        object: &str,
        message: String,
        fix: String,
    ) -> Check {
        Check {
            code: code.into(),
            name: name.into(),
            status: Status::Fail,
            severity,
            object: object.into(),
            message,
            fix,
        }
    }

    pub fn unknown(code: &str, name: &str, object: &str, message: String, fix: &str) -> Check {
        Check {
            code: code.into(),
            name: name.into(),
            status: Status::Unknown,
            severity: Level::Info,
            object: object.into(),
            message,
            fix: fix.into(),
        }
    }

    fn is_error(&self) -> bool {
        self.status == Status::Fail && self.severity == Level::Error
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrecheckError {
    #[error("{0}")]
    Kubeconfig(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot render the checks: {0}")]
    Render(String),
}

pub fn run(args: PrecheckArgs) -> i32 {
    let checks = if args.local {
        Ok(host::checks(&args))
    } else {
        cluster_checks(&args)
    };
    match checks.and_then(|c| report(&c, &args)) {
        Ok((stdout, stderr, code)) => {
            print!("{stdout}");
            eprint!("{stderr}");
            code
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn cluster_checks(args: &PrecheckArgs) -> Result<Vec<Check>, PrecheckError> {
    // kube-rs builds its TLS config with rustls' process default; pick the provider (see build notes).
    ambit_core::tls::install_default_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PrecheckError::Runtime)?;
    rt.block_on(cluster::checks(args))
}

/// What to print on stdout and stderr, and the exit code.
pub fn report(
    checks: &[Check],
    args: &PrecheckArgs,
) -> Result<(String, String, i32), PrecheckError> {
    let shown: Vec<&Check> = checks
        .iter()
        .filter(|c| c.severity >= args.output_threshold)
        .collect();
    let errors = checks.iter().filter(|c| c.is_error()).count();
    let warnings = checks
        .iter()
        .filter(|c| c.status == Status::Fail && c.severity == Level::Warning)
        .count();
    let render = |e: String| PrecheckError::Render(e);
    let stdout = match args.output {
        Format::Json => {
            serde_json::to_string_pretty(&shown).map_err(|e| render(e.to_string()))? + "\n"
        }
        Format::Yaml => serde_yaml::to_string(&shown).map_err(|e| render(e.to_string()))?,
        Format::Table => render_table(&shown),
    };
    let (what, ok) = if args.local {
        ("this host", "the local mesh can run here")
    } else {
        ("the cluster", "Ambit is safe to install")
    };
    let stderr = match (errors, warnings) {
        (0, 0) => format!("\u{2714} No issues found when checking {what}. {ok}!\n"),
        (0, w) => format!(
            "\u{26a0} {w} warning(s) when checking {what}; no errors: read the fixes above.\n"
        ),
        (e, _) => format!(
            "Error: {e} check(s) failed at Error when checking {what}: fix them (see the fixes above).\n"
        ),
    };
    Ok((stdout, stderr, if errors > 0 { 1 } else { 0 }))
}

/// `STATUS SEVERITY CODE OBJECT MESSAGE`, then each check that did not pass with its fix.
pub fn render_table(checks: &[&Check]) -> String {
    let mut t = Table::new(&["STATUS", "SEVERITY", "CODE", "OBJECT", "MESSAGE"]);
    for c in checks {
        let status = match c.status {
            Status::Pass => "\u{2714} pass",
            Status::Fail => "\u{2718} fail",
            Status::Unknown => "? unknown",
        };
        t.row(vec![
            status.into(),
            format!("{:?}", c.severity),
            c.code.clone(),
            c.object.clone(),
            c.message.clone(),
        ]);
    }
    let mut out = t.render();
    let todo: Vec<&&Check> = checks.iter().filter(|c| c.status != Status::Pass).collect();
    if !todo.is_empty() {
        out.push_str("\nTo do:\n");
        for c in todo {
            let _ = writeln!(out, "  {} {}: {}", c.code, c.name, c.fix);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: PrecheckArgs,
    }

    fn args(argv: &[&str]) -> PrecheckArgs {
        Cli::try_parse_from(std::iter::once("precheck").chain(argv.iter().copied()))
            .unwrap()
            .a
    }

    fn sample() -> Vec<Check> {
        vec![
            Check::pass(
                "AMB1002",
                "kubernetes-version",
                "Cluster",
                "Kubernetes v1.33.0".into(),
                "upgrade",
            ),
            Check::fail(
                "AMB1003",
                "gateway-api-crds",
                Level::Warning,
                "Cluster",
                "no Gateway API CRDs".into(),
                "kubectl apply".into(),
            ),
        ]
    }

    #[test]
    fn table_lists_every_check_and_the_fixes_of_failures() {
        let (out, err, code) = report(&sample(), &args(&[])).unwrap();
        assert_eq!(code, 0);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["STATUS", "SEVERITY", "CODE", "OBJECT", "MESSAGE"]
        );
        assert!(
            lines[1].contains("pass") && lines[1].contains("AMB1002"),
            "{out}"
        );
        assert!(
            lines[2].contains("fail") && lines[2].contains("Warning"),
            "{out}"
        );
        assert!(
            out.contains("To do:\n  AMB1003 gateway-api-crds: kubectl apply\n"),
            "{out}"
        );
        assert!(!out.contains("AMB1002 kubernetes-version:"), "{out}");
        assert!(
            err.contains("1 warning(s) when checking the cluster"),
            "{err}"
        );
    }

    #[test]
    fn json_and_yaml_carry_every_field_and_errors_exit_1() {
        let mut checks = sample();
        checks.push(Check::fail(
            "AMB1004",
            "gateway-api-version",
            Level::Error,
            "CustomResourceDefinition gateways.gateway.networking.k8s.io",
            "v0.8.0".into(),
            "upgrade".into(),
        ));
        let (out, err, code) = report(&checks, &args(&["-o", "json"])).unwrap();
        assert_eq!(code, 1);
        assert!(
            err.starts_with("Error: 1 check(s) failed at Error"),
            "{err}"
        );
        let v: Vec<Check> = serde_json::from_str(&out).unwrap();
        assert_eq!(v, checks);
        let raw: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(raw[2]["status"], "fail");
        assert_eq!(raw[2]["severity"], "Error");
        let (out, _, _) = report(&checks, &args(&["-o", "yaml"])).unwrap();
        let v: Vec<Check> = serde_yaml::from_str(&out).unwrap();
        assert_eq!(v, checks);
    }

    #[test]
    fn output_threshold_hides_but_exit_code_follows_all() {
        let mut checks = sample();
        checks[1].severity = Level::Error;
        let (out, _, code) = report(
            &checks,
            &args(&["-o", "json", "--output-threshold", "error"]),
        )
        .unwrap();
        assert_eq!(code, 1);
        let v: Vec<Check> = serde_json::from_str(&out).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].code, "AMB1003");
        let (_, err, code) = report(&checks[..1], &args(&["--local"])).unwrap();
        assert_eq!(code, 0);
        assert!(
            err.contains("No issues found when checking this host"),
            "{err}"
        );
    }
}
