//! Shared by the CLI's integration tests that run `controller compute|analyze`: the repository root and the
//! controller binary of the same target directory.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod netns;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The controller binary of the same target directory, built if missing.
pub fn controller() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_ambit")).with_file_name("controller");
    if !bin.is_file() {
        let ok = Command::new(env!("CARGO"))
            .args([
                "build",
                "-q",
                "-p",
                "ambit-controller",
                "--bin",
                "controller",
            ])
            .current_dir(repo())
            .status()
            .unwrap()
            .success();
        assert!(ok, "building the controller");
    }
    bin
}
