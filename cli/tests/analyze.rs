//! `ambit analyze -f` through `controller analyze`: each broken manifest of `controller/tests/analyze/` alone gives
//! exactly its code (the file name starts with it) in istioctl's line format and exit code (79 on errors), the
//! examples give none, `-o json|yaml`, namespaces, thresholds, and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;
use common::{controller, repo};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn analyze(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .arg("analyze")
        .args(args)
        .env("AMBIT_CONTROLLER_BIN", controller())
        .env("AMBIT_LOCAL_DIR", "/nonexistent/ambit-local")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn fixtures() -> Vec<PathBuf> {
    let dir = repo().join("controller/tests/analyze");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "fixtures missing: {files:?}");
    files
}

/// A temporary directory holding only `file`.
fn alone(file: &Path) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(file, d.path().join(file.file_name().unwrap())).unwrap();
    d
}

#[test]
fn each_broken_manifest_reports_exactly_its_code() {
    for f in fixtures() {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let want = &name[..7];
        let dir = alone(&f);
        let dir_arg = dir.path().to_str().unwrap();

        let json = analyze(&["-f", dir_arg, "-o", "json"]);
        let findings: Vec<Value> = serde_json::from_str(&json.stdout)
            .unwrap_or_else(|e| panic!("{name}: -o json: {e}: {}", json.stdout));
        let codes: BTreeSet<&str> = findings.iter().filter_map(|f| f["code"].as_str()).collect();
        assert_eq!(codes, BTreeSet::from([want]), "{name}: {findings:#?}");
        let error = findings.iter().any(|f| f["severity"] == "Error");
        assert_eq!(
            json.code,
            if error { 79 } else { 0 },
            "{name}: -o json exit code"
        );

        // istioctl's lines: `<Level> [<code>] (<object>) <message>`, the fix indented under each.
        let text = analyze(&["-f", dir_arg]);
        assert_eq!(text.code, json.code, "{name}: text exit code");
        let lines: Vec<&str> = text.stdout.lines().collect();
        assert_eq!(lines.len(), 2 * findings.len(), "{name}: {}", text.stdout);
        for (pair, f) in lines.chunks(2).zip(&findings) {
            let head = format!(
                "{} [{}] ({}) {}",
                f["severity"].as_str().unwrap(),
                want,
                f["object"].as_str().unwrap(),
                f["message"].as_str().unwrap()
            );
            assert_eq!(pair[0], head, "{name}");
            assert_eq!(
                pair[1],
                format!("    fix: {}", f["fix"].as_str().unwrap()),
                "{name}"
            );
        }
        let closing = if error {
            "Error: Analyzers found issues when analyzing all namespaces.\n"
        } else {
            ""
        };
        assert_eq!(text.stderr, closing, "{name}");
    }
}

#[test]
fn the_examples_have_no_issues() {
    for ex in ["examples/quickstart", "examples/bookinfo"] {
        let dir = repo().join(ex);
        let r = analyze(&["-f", dir.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{ex}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.stdout, "", "{ex}");
        assert_eq!(
            r.stderr, "\u{2714} No validation issues found when analyzing all namespaces.\n",
            "{ex}"
        );
        let json = analyze(&["-f", dir.to_str().unwrap(), "-o", "json"]);
        assert_eq!(json.code, 0);
        assert_eq!(
            serde_json::from_str::<Value>(&json.stdout).unwrap(),
            serde_json::json!([])
        );
    }
}

#[test]
fn several_directories_and_yaml_output() {
    let fs = fixtures();
    let pick = |code: &str| {
        fs.iter()
            .find(|f| f.file_name().unwrap().to_string_lossy().starts_with(code))
            .unwrap()
    };
    // Two namespaces, so neither directory overrides the other's objects.
    let (a, b) = (alone(pick("AMB0001")), alone(pick("AMB0002")));
    let both = format!("{},{}", a.path().display(), b.path().display());
    let r = analyze(&["-f", &both, "-o", "yaml"]);
    assert_eq!(r.code, 79, "{}", r.stderr);
    let v: Vec<serde_yaml::Value> = serde_yaml::from_str(&r.stdout).unwrap();
    let codes: BTreeSet<String> = v
        .iter()
        .map(|f| f["code"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        codes,
        BTreeSet::from(["AMB0001".to_owned(), "AMB0002".to_owned()])
    );
    // Repeating -f is the same as a comma list.
    let r2 = analyze(&[
        "-f",
        a.path().to_str().unwrap(),
        "-f",
        b.path().to_str().unwrap(),
        "-o",
        "yaml",
    ]);
    assert_eq!(r2.stdout, r.stdout);
}

#[test]
fn namespace_and_thresholds() {
    let fs = fixtures();
    let f = fs
        .iter()
        .find(|f| {
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("AMB0002")
        })
        .unwrap();
    let d = alone(f);
    let dir = d.path().to_str().unwrap();
    let json = analyze(&["-f", dir, "-o", "json"]);
    let findings: Vec<Value> = serde_json::from_str(&json.stdout).unwrap();
    let ns = findings[0]["namespace"].as_str().unwrap().to_owned();
    assert!(!ns.is_empty());

    let mine = analyze(&["-f", dir, "-n", &ns]);
    assert_eq!(mine.code, 79);
    assert_eq!(
        mine.stderr,
        format!("Error: Analyzers found issues when analyzing namespace: {ns}.\n")
    );
    let other = analyze(&["-f", dir, "-n", "elsewhere"]);
    assert_eq!(other.code, 0, "{}", other.stdout);
    assert_eq!(other.stdout, "");
    assert_eq!(
        other.stderr,
        "\u{2714} No validation issues found when analyzing namespace: elsewhere.\n"
    );
    // Hiding errors from the output does not hide them from the exit code, as in istioctl.
    let hidden = analyze(&["-f", dir, "--output-threshold", "Error"]);
    assert_eq!(hidden.code, 79);

    // A warning fails only with --failure-threshold Warning.
    let w = fs
        .iter()
        .find(|f| {
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("AMB0001")
        })
        .unwrap();
    let d = alone(w);
    let dir = d.path().to_str().unwrap();
    let lax = analyze(&["-f", dir]);
    assert_eq!(lax.code, 0, "{}", lax.stdout);
    assert!(
        lax.stdout.starts_with("Warning [AMB0001] "),
        "{}",
        lax.stdout
    );
    assert_eq!(lax.stderr, "");
    let strict = analyze(&["-f", dir, "--failure-threshold", "Warning"]);
    assert_eq!(strict.code, 79);
}

#[test]
fn bad_input_is_one_line_and_non_zero() {
    let missing = analyze(&["-f", "/nonexistent/manifests"]);
    assert_ne!(missing.code, 0);
    assert_ne!(missing.code, 79);
    assert_eq!(missing.stdout, "");
    assert_eq!(missing.stderr.lines().count(), 1, "{}", missing.stderr);
    assert!(
        missing
            .stderr
            .starts_with("error: -f /nonexistent/manifests: not a directory"),
        "{}",
        missing.stderr
    );

    // Live (the default without -f) with no local mesh says how to start one or go offline.
    let live = analyze(&[]);
    assert_eq!(live.code, 1);
    assert_eq!(live.stderr.lines().count(), 1, "{}", live.stderr);
    assert!(live.stderr.contains("ambit local up"), "{}", live.stderr);
    assert!(
        live.stderr.contains("ambit analyze -f DIR"),
        "{}",
        live.stderr
    );

    let no_controller = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(["analyze", "-f"])
        .arg(repo().join("examples/quickstart"))
        .env("AMBIT_CONTROLLER_BIN", "/nonexistent/controller")
        .output()
        .unwrap();
    assert_eq!(no_controller.status.code(), Some(1));
    let err = String::from_utf8_lossy(&no_controller.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("AMBIT_CONTROLLER_BIN"), "{err}");

    let bad_flag = analyze(&["-f", "x", "--failure-threshold", "Fatal"]);
    assert_eq!(bad_flag.code, 2);
    assert_eq!(bad_flag.stderr.lines().count(), 1, "{}", bad_flag.stderr);
}

/// `--local` (the default without `-f`) analyzes `<local dir>/cluster` of a running mesh, in istioctl's default
/// namespace unless told otherwise. A stand-in state whose "supervisor" is this test process.
#[test]
fn live_analyzes_the_local_meshs_cluster_directory() {
    let local = tempfile::tempdir().unwrap();
    let state = serde_json::json!({
        "manifests": local.path().join("manifests"), "supervisor_pid": std::process::id(), "ready": true,
        "nodes": [], "pods": {}, "services": {}, "errors": [],
    });
    std::fs::write(local.path().join("state.json"), state.to_string()).unwrap();
    std::fs::create_dir(local.path().join("cluster")).unwrap();
    let f = fixtures()
        .into_iter()
        .find(|f| {
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("AMB0002")
        })
        .unwrap();
    std::fs::copy(&f, local.path().join("cluster/cluster.yaml")).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ambit"))
            .arg("analyze")
            .args(args)
            .env("AMBIT_CONTROLLER_BIN", controller())
            .env("AMBIT_LOCAL_DIR", local.path())
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(
        run(&[]),
        (
            0,
            "\u{2714} No validation issues found when analyzing namespace: default.\n".to_owned()
        )
    );
    assert_eq!(
        run(&["--local", "-n", "demo"]),
        (
            79,
            "Error: Analyzers found issues when analyzing namespace: demo.\n".to_owned()
        )
    );
    assert_eq!(run(&["-A"]).0, 79);
    // A mesh whose supervisor is gone is not analyzed as if it ran.
    let dead = serde_json::json!({
        "manifests": "/x", "supervisor_pid": u32::MAX - 1, "ready": true,
        "nodes": [], "pods": {}, "services": {}, "errors": [],
    });
    std::fs::write(local.path().join("state.json"), dead.to_string()).unwrap();
    let (code, err) = run(&[]);
    assert_eq!(code, 1);
    assert!(err.contains("is not running"), "{err}");
}
