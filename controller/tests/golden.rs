//! Golden tests: every `tests/golden/<case>/in/*.yaml` manifest directory is computed and compared with
//! `tests/golden/<case>/expected.yaml`. `UPDATE_GOLDEN=1 cargo test -p ambit-controller --test golden` rewrites
//! the expected files (review the diff!). The waypoint deployer's manifests are part of the output only for cases
//! with a `with-deployments` file (they are long and the same for every waypoint).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use ambit_controller::compute::{self, ComputeConfig, render};
use ambit_controller::index::Index;
use ambit_controller::sources::manifest::ManifestState;

fn run_case(dir: &Path) -> Result<(), String> {
    let mut state = ManifestState::default();
    let mut index = Index::default();
    for ev in state.rescan(&[dir.join("in")]) {
        index.apply(ev);
    }
    if !state.errors().is_empty() {
        return Err(format!(
            "{}: manifest errors {:?}",
            dir.display(),
            state.errors()
        ));
    }
    let mut got = render::resources(&compute::compute(&index, &ComputeConfig::default()));
    if !dir.join("with-deployments").exists()
        && let Some(o) = got.as_object_mut()
    {
        o.remove("deployments");
    }
    let expected_path = dir.join("expected.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let text = serde_yaml::to_string(&got).map_err(|e| e.to_string())?;
        std::fs::write(&expected_path, text).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let text = std::fs::read_to_string(&expected_path).map_err(|e| {
        format!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            expected_path.display()
        )
    })?;
    let want: serde_json::Value = serde_yaml::from_str(&text).map_err(|e| e.to_string())?;
    if want != got {
        let got_text = serde_yaml::to_string(&got).unwrap_or_default();
        return Err(format!(
            "{} differs from the computed output:\n{got_text}\n(UPDATE_GOLDEN=1 rewrites it)",
            expected_path.display()
        ));
    }
    Ok(())
}

#[test]
fn golden_cases() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("golden dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("in").is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 4,
        "expected the golden cases to exist, found {cases:?}"
    );
    let failures: Vec<String> = cases.iter().filter_map(|c| run_case(c).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
