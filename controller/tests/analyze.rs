//! `controller analyze` (what `ambit analyze -f` runs) on a directory of broken manifests, one per finding: each
//! file gives exactly its own code (the file name starts with it), and the examples give none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn analyze(dirs: &[&Path]) -> Vec<serde_json::Value> {
    let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_controller"))
        .args(["analyze", "--manifests", &list.join(",")])
        .output()
        .expect("run controller analyze");
    assert!(
        out.status.success(),
        "controller analyze {list:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("a JSON array of findings")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn each_broken_manifest_gives_its_finding() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/analyze");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "fixtures missing: {files:?}");
    for f in files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let want = &name[..7];
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(&f, dir.path().join(&name)).expect("copy");
        let findings = analyze(&[dir.path()]);
        let codes: BTreeSet<&str> = findings.iter().filter_map(|f| f["code"].as_str()).collect();
        assert_eq!(codes, BTreeSet::from([want]), "{name}: {findings:#?}");
        for f in &findings {
            for key in ["severity", "object", "message", "fix"] {
                assert!(
                    f[key].as_str().is_some_and(|s| !s.is_empty()),
                    "{name}: finding without {key}: {f}"
                );
            }
        }
    }
}

#[test]
fn the_examples_are_clean() {
    let r = repo();
    for dirs in [
        vec![r.join("examples/quickstart")],
        vec![r.join("examples/bookinfo")],
        vec![
            r.join("examples/bookinfo"),
            r.join("examples/bookinfo/security"),
        ],
        vec![r.join("examples/two-pods")],
    ] {
        let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        let findings = analyze(&refs);
        assert!(findings.is_empty(), "{dirs:?}: {findings:#?}");
    }
}

#[test]
fn a_granted_cross_namespace_backend_is_no_finding() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/analyze/AMB0007-backend-without-reference-grant.yaml");
    let text = std::fs::read_to_string(fixture).expect("fixture");
    let findings = analyze_text(&text);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0]["code"], "AMB0007");
    assert!(
        findings[0]["fix"]
            .as_str()
            .is_some_and(|f| f.contains("ReferenceGrant")),
        "{findings:#?}"
    );
    let grant = "---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-demo, namespace: backends}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: demo}]
  to: [{group: \"\", kind: Service, name: echo-v2}]
";
    let findings = analyze_text(&format!("{text}{grant}"));
    assert!(findings.is_empty(), "{findings:#?}");
}

/// `controller analyze` on one manifest file holding `text`.
fn analyze_text(text: &str) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("manifest.yaml"), text).expect("write");
    analyze(&[dir.path()])
}
