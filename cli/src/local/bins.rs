//! The binaries the local mesh runs: the controller, ztunnel and node agent (required), and those pods may name
//! as their command (`ambit` itself; `waypoint`, needed only by waypoint pods).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use super::kubelet::{self, PodBinaries};

/// Names the ztunnel binary the local mesh runs instead of the one next to `ambit` (an upstream build, for
/// interop: the mesh gives it only upstream's configuration, WDS and ZDS).
pub const ZTUNNEL_ENV: &str = "AMBIT_LOCAL_ZTUNNEL";

/// The binaries the mesh runs, found next to `ambit` or on `PATH`.
pub struct Bins {
    pub pods: PodBinaries,
    pub controller: PathBuf,
    pub ztunnel: PathBuf,
    pub node_agent: PathBuf,
}

impl Bins {
    pub fn find() -> Result<Bins> {
        let ambit = std::env::current_exe()?;
        let find = |name: &str| -> Result<PathBuf> {
            let sibling = ambit.with_file_name(name);
            if sibling.is_file() {
                return Ok(sibling);
            }
            std::env::var_os("PATH")
                .into_iter()
                .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .with_context(|| {
                    format!(
                        "`{name}` is neither next to {} nor on PATH: build everything with `cargo build --release --workspace`",
                        ambit.display()
                    )
                })
        };
        // Any upstream-compatible ztunnel (upstream's own binary, to check interop) may stand in for ours.
        let ztunnel = match std::env::var_os(ZTUNNEL_ENV) {
            Some(p) => {
                let p = PathBuf::from(p);
                anyhow::ensure!(p.is_file(), "{ZTUNNEL_ENV}={}: no such file", p.display());
                p
            }
            None => find("ztunnel")?,
        };
        Ok(Bins {
            controller: find("controller")?,
            ztunnel,
            node_agent: find("ambit-node-agent")?,
            pods: PodBinaries {
                // Only waypoint pods need it; they say so if it is missing.
                waypoint: find(kubelet::WAYPOINT_COMMAND).ok(),
                ambit,
            },
        })
    }

    /// Whether this controller writes waypoint Deployments (`--deploy-dir`), which older builds do not.
    pub fn controller_deploys_waypoints(&self) -> bool {
        Command::new(&self.controller)
            .arg("--help")
            .output()
            .is_ok_and(|o| {
                let help = String::from_utf8_lossy(&o.stdout);
                help.contains("--deploy-dir") && help.contains("--waypoint-xds-address")
            })
    }
}
