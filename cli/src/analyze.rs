//! `ambit analyze`: istioctl's `analyze` front end over `controller analyze`, which computes the findings (stable
//! `AMBxxxx` codes, a severity, the object, a message and a fix) from the same compute the controller runs.
//!
//! Offline (`-f DIR`, repeatable) it analyzes manifest directories; live (`--local`, the default when no `-f` is
//! given, as istioctl analyzes the live cluster by default) it analyzes what the running local mesh's controller
//! reads: `<local dir>/cluster`, the manifests with the pods' real status and the waypoints the controller
//! deployed. Namespaces: `-A` all, `-n NS` one; neither means all namespaces offline and `default` live
//! (istioctl's default namespace). Output: istioctl's log lines, or the findings as `-o json|yaml`. Exit codes as
//! istioctl's: 79 when a finding is at least `--failure-threshold` (default `Error`), 1 when the analysis could not
//! run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

/// istioctl's exit code when the analyzers found issues (`ExitAnalyzerFoundIssues`, for CI).
pub const EXIT_FOUND_ISSUES: i32 = 79;

#[derive(Args, Debug, Clone)]
pub struct AnalyzeArgs {
    /// A directory of manifests to analyze offline (its `*.yaml`/`*.yml` files, as `kubectl apply -f DIR`);
    /// repeatable, or comma-separated.
    #[arg(
        short = 'f',
        long = "filename",
        value_delimiter = ',',
        conflicts_with = "local"
    )]
    pub filename: Vec<PathBuf>,
    /// Analyze the running local mesh (`ambit local up`): what its controller reads. The default without `-f`.
    #[arg(long)]
    pub local: bool,
    /// Only this namespace's findings (default: all namespaces offline, `default` on the local mesh).
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Every namespace's findings.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    /// `log` (istioctl's lines), `json` or `yaml`.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Log)]
    pub output: Format,
    /// The severity at which the exit code becomes non-zero (79).
    #[arg(long = "failure-threshold", value_enum, default_value_t = Level::Error, ignore_case = true)]
    pub failure_threshold: Level,
    /// The lowest severity printed.
    #[arg(long = "output-threshold", value_enum, default_value_t = Level::Info, ignore_case = true)]
    pub output_threshold: Level,
    /// The local mesh's state directory.
    #[arg(long, env = "AMBIT_LOCAL_DIR", default_value = crate::local::DEFAULT_DIR)]
    pub local_dir: PathBuf,
    /// The `controller` binary that computes the findings (default: next to `ambit`, then on PATH).
    #[arg(long, env = "AMBIT_CONTROLLER_BIN")]
    pub controller_bin: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Log,
    Json,
    Yaml,
}

/// A finding's severity, least severe first (so `>=` is "at least as bad").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
pub enum Level {
    Info,
    Warning,
    Error,
}

/// One finding, as `controller analyze` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub code: String,
    pub severity: Level,
    /// `Kind ns/name`, `Kind name` (cluster-scoped), or `File <path>` (AMB0000).
    pub object: String,
    /// Empty for cluster-scoped objects and files.
    #[serde(default)]
    pub namespace: String,
    pub message: String,
    #[serde(default)]
    pub fix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(
        "-f {0}: not a directory (ambit analyze reads directories of manifests, as `kubectl apply -f DIR`)"
    )]
    NotADirectory(PathBuf),
    #[error("{0}")]
    NoLocalMesh(String),
    #[error(
        "cannot run {bin} ({source}): build it with `cargo build -p ambit-controller`, or set AMBIT_CONTROLLER_BIN or --controller-bin"
    )]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("`{bin} analyze` failed: {stderr}")]
    Controller { bin: PathBuf, stderr: String },
    #[error(
        "`{bin} analyze` printed no JSON array of findings ({why}): is it an older controller without `analyze`?"
    )]
    Output { bin: PathBuf, why: String },
    #[error("cannot render the findings: {0}")]
    Render(String),
}

/// Which namespaces the findings are shown for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespace(String),
}

impl Scope {
    /// `-A`, `-n`, else all namespaces offline and `default` live.
    pub fn from_args(args: &AnalyzeArgs) -> Scope {
        match (&args.namespace, args.all_namespaces) {
            (_, true) => Scope::All,
            (Some(ns), false) => Scope::Namespace(ns.clone()),
            (None, false) if args.filename.is_empty() => Scope::Namespace("default".into()),
            (None, false) => Scope::All,
        }
    }

    /// istioctl's wording: `namespace: demo` or `all namespaces`.
    pub fn describe(&self) -> String {
        match self {
            Scope::All => "all namespaces".into(),
            Scope::Namespace(ns) => format!("namespace: {ns}"),
        }
    }

    /// Whether `f` is about this scope: its namespace, the Namespace object itself, or a file (always shown).
    pub fn includes(&self, f: &Finding) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespace(ns) => {
                f.namespace == *ns
                    || f.object.starts_with("File ")
                    || (f.namespace.is_empty() && f.object == format!("Namespace {ns}"))
            }
        }
    }
}

pub fn run(args: AnalyzeArgs) -> i32 {
    match analyze_command(&args) {
        Ok((findings, scope)) => match report(&findings, &scope, &args) {
            Ok((stdout, stderr, code)) => {
                print!("{stdout}");
                eprint!("{stderr}");
                code
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn analyze_command(args: &AnalyzeArgs) -> Result<(Vec<Finding>, Scope), AnalyzeError> {
    let dirs = if args.filename.is_empty() {
        vec![local_cluster_dir(&args.local_dir)?]
    } else {
        for d in &args.filename {
            if !d.is_dir() {
                return Err(AnalyzeError::NotADirectory(d.clone()));
            }
        }
        args.filename.clone()
    };
    let bin = crate::authz::controller_bin(args.controller_bin.as_deref());
    let findings = controller_analyze(&bin, &dirs)?;
    Ok((findings, Scope::from_args(args)))
}

/// The directory the running local mesh's controller reads.
fn local_cluster_dir(local_dir: &Path) -> Result<PathBuf, AnalyzeError> {
    let state = crate::local::State::load(local_dir).map_err(|e| {
        AnalyzeError::NoLocalMesh(format!(
            "{e:#}: start one with `sudo ambit local up -f DIR`, or analyze manifests offline with `ambit analyze -f DIR`"
        ))
    })?;
    if !crate::local::pid_alive(state.supervisor_pid) {
        return Err(AnalyzeError::NoLocalMesh(format!(
            "the local mesh in {} is not running (its supervisor, pid {}, is gone): start it with `sudo ambit local up -f DIR`, or use `ambit analyze -f DIR`",
            local_dir.display(),
            state.supervisor_pid
        )));
    }
    Ok(local_dir.join("cluster"))
}

/// `controller analyze --manifests DIR,...`'s findings.
pub fn controller_analyze(bin: &Path, dirs: &[PathBuf]) -> Result<Vec<Finding>, AnalyzeError> {
    let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let out = Command::new(bin)
        .args(["analyze", "--manifests", &list.join(",")])
        .output()
        .map_err(|source| AnalyzeError::Spawn {
            bin: bin.to_owned(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(AnalyzeError::Controller {
            bin: bin.to_owned(),
            stderr: last.unwrap_or("no message").trim().to_owned(),
        });
    }
    serde_json::from_slice(&out.stdout).map_err(|e| AnalyzeError::Output {
        bin: bin.to_owned(),
        why: e.to_string(),
    })
}

/// What to print on stdout and stderr, and the exit code.
pub fn report(
    findings: &[Finding],
    scope: &Scope,
    args: &AnalyzeArgs,
) -> Result<(String, String, i32), AnalyzeError> {
    let in_scope: Vec<&Finding> = findings.iter().filter(|f| scope.includes(f)).collect();
    let shown: Vec<&Finding> = in_scope
        .iter()
        .copied()
        .filter(|f| f.severity >= args.output_threshold)
        .collect();
    // As istioctl, the exit code follows every finding in scope, not only those shown.
    let failed = in_scope
        .iter()
        .any(|f| f.severity >= args.failure_threshold);
    let code = if failed { EXIT_FOUND_ISSUES } else { 0 };
    let render = |e: String| AnalyzeError::Render(e);
    let (stdout, stderr) = match args.output {
        Format::Json => (
            serde_json::to_string_pretty(&shown).map_err(|e| render(e.to_string()))? + "\n",
            String::new(),
        ),
        Format::Yaml => (
            serde_yaml::to_string(&shown).map_err(|e| render(e.to_string()))?,
            String::new(),
        ),
        Format::Log => (render_log(&shown), summary(shown.is_empty(), failed, scope)),
    };
    Ok((stdout, stderr, code))
}

/// istioctl's log lines, `Error [AMB0002] (Service demo/echo) message`, each with its fix indented under it.
pub fn render_log(findings: &[&Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let _ = writeln!(
            out,
            "{:?} [{}] ({}) {}",
            f.severity, f.code, f.object, f.message
        );
        if !f.fix.is_empty() {
            let _ = writeln!(out, "    fix: {}", f.fix);
        }
    }
    out
}

/// The closing line on stderr, as istioctl's.
pub fn summary(none_shown: bool, failed: bool, scope: &Scope) -> String {
    if failed {
        format!(
            "Error: Analyzers found issues when analyzing {}.\n",
            scope.describe()
        )
    } else if none_shown {
        format!(
            "\u{2714} No validation issues found when analyzing {}.\n",
            scope.describe()
        )
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: AnalyzeArgs,
    }

    fn args(argv: &[&str]) -> AnalyzeArgs {
        Cli::try_parse_from(std::iter::once("analyze").chain(argv.iter().copied()))
            .unwrap()
            .a
    }

    fn finding(code: &str, severity: Level, object: &str, ns: &str) -> Finding {
        Finding {
            code: code.into(),
            severity,
            object: object.into(),
            namespace: ns.into(),
            message: "m".into(),
            fix: "f".into(),
        }
    }

    #[test]
    fn scope_defaults_differ_offline_and_live() {
        assert_eq!(Scope::from_args(&args(&["-f", "x"])), Scope::All);
        assert_eq!(
            Scope::from_args(&args(&[])),
            Scope::Namespace("default".into())
        );
        assert_eq!(Scope::from_args(&args(&["-A"])), Scope::All);
        assert_eq!(
            Scope::from_args(&args(&["-f", "x", "-n", "demo"])),
            Scope::Namespace("demo".into())
        );
        let demo = Scope::Namespace("demo".into());
        assert!(demo.includes(&finding("AMB0010", Level::Error, "Namespace demo", "")));
        assert!(demo.includes(&finding("AMB0000", Level::Error, "File a.yaml", "")));
        assert!(!demo.includes(&finding("AMB0010", Level::Error, "Namespace other", "")));
        assert!(!demo.includes(&finding("AMB0002", Level::Error, "Service x/y", "x")));
    }

    #[test]
    fn thresholds_decide_output_and_exit_code() {
        let fs = vec![finding("AMB0001", Level::Warning, "Namespace demo", "")];
        let (out, err, code) = report(&fs, &Scope::All, &args(&["-f", "x"])).unwrap();
        assert_eq!(code, 0);
        assert_eq!(out, "Warning [AMB0001] (Namespace demo) m\n    fix: f\n");
        assert_eq!(err, "");
        let strict = args(&["-f", "x", "--failure-threshold", "warning"]);
        let (_, err, code) = report(&fs, &Scope::All, &strict).unwrap();
        assert_eq!(code, EXIT_FOUND_ISSUES);
        assert_eq!(
            err,
            "Error: Analyzers found issues when analyzing all namespaces.\n"
        );
        let quiet = args(&["-f", "x", "--output-threshold", "Error"]);
        let (out, err, code) = report(&fs, &Scope::All, &quiet).unwrap();
        assert_eq!((out.as_str(), code), ("", 0));
        assert!(err.starts_with("\u{2714} No validation issues"), "{err}");
    }
}
