//! Writes the waypoint deployer's manifests (`compute::deployer`) into a directory, one multi-document YAML file
//! per waypoint Gateway (`waypoint-<ns>.<gw>.yaml`), so that a kubelet-like runner (the local mesh) can run
//! them. Files are written atomically (a hidden temporary file, then rename) and only when their content changes;
//! files of Gateways that are gone are removed. Files without the `waypoint-` prefix are never touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ambit_core::drain::DrainWatcher;
use serde_json::Value;
use tokio::sync::watch;

use crate::compute::Resources;

pub const FILE_PREFIX: &str = "waypoint-";

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding {key}: {source}")]
    Encode {
        key: String,
        source: serde_yaml::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DeployError + '_ {
    move |source| DeployError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What one [`sync`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub written: Vec<String>,
    pub removed: Vec<String>,
}

/// The multi-document YAML text of one waypoint's manifests.
pub fn render(key: &str, docs: &[Value]) -> Result<String, DeployError> {
    let mut text = String::new();
    for d in docs {
        text.push_str("---\n");
        text.push_str(
            &serde_yaml::to_string(d).map_err(|source| DeployError::Encode {
                key: key.to_owned(),
                source,
            })?,
        );
    }
    Ok(text)
}

/// Brings `dir` in line with `deployments` (`<ns>.<gw>` → manifests).
pub fn sync(
    dir: &Path,
    deployments: &BTreeMap<String, Vec<Value>>,
) -> Result<SyncReport, DeployError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut report = SyncReport::default();
    let mut wanted = Vec::new();
    for (key, docs) in deployments {
        let name = format!("{FILE_PREFIX}{key}.yaml");
        let path = dir.join(&name);
        let text = render(key, docs)?;
        wanted.push(name.clone());
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            continue;
        }
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, &text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        report.written.push(name);
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with(FILE_PREFIX) && name.ends_with(".yaml") && !wanted.contains(&name) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io(&path))?;
            report.removed.push(name);
        }
    }
    report.removed.sort();
    Ok(report)
}

/// Keeps `dir` in sync with every newly computed state until drained.
pub async fn run(
    dir: PathBuf,
    mut resources: watch::Receiver<Arc<Resources>>,
    mut drain: DrainWatcher,
) {
    let mut last: Option<BTreeMap<String, Vec<Value>>> = None;
    loop {
        let current = resources.borrow_and_update().deployments.clone();
        if last.as_ref() != Some(&current) {
            let d = dir.clone();
            let wanted = current.clone();
            match tokio::task::spawn_blocking(move || sync(&d, &wanted)).await {
                Ok(Ok(r)) => {
                    if !r.written.is_empty() || !r.removed.is_empty() {
                        tracing::info!(dir = %dir.display(), written = ?r.written, removed = ?r.removed,
                            "waypoint deployments updated");
                    }
                    last = Some(current);
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "writing waypoint deployments failed; retrying on the next change")
                }
                Err(e) => tracing::error!(error = %e, "waypoint deployment writer panicked"),
            }
        }
        tokio::select! {
            _ = drain.signaled() => return,
            changed = resources.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_changed_files_removes_gone_ones_and_leaves_others_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mine.yaml"), "x: 1\n").unwrap();
        let mut want = BTreeMap::from([
            ("a.wp".to_owned(), vec![json!({"kind": "ServiceAccount"})]),
            (
                "b.wp".to_owned(),
                vec![json!({"kind": "Service"}), json!({"kind": "Deployment"})],
            ),
        ]);
        let r = sync(dir.path(), &want).unwrap();
        assert_eq!(r.written, vec!["waypoint-a.wp.yaml", "waypoint-b.wp.yaml"]);
        let text = std::fs::read_to_string(dir.path().join("waypoint-b.wp.yaml")).unwrap();
        assert_eq!(text, "---\nkind: Service\n---\nkind: Deployment\n");
        // Unchanged: nothing written.
        assert_eq!(sync(dir.path(), &want).unwrap(), SyncReport::default());
        want.remove("a.wp");
        let r = sync(dir.path(), &want).unwrap();
        assert_eq!(r.removed, vec!["waypoint-a.wp.yaml"]);
        assert!(r.written.is_empty());
        assert!(dir.path().join("mine.yaml").exists(), "foreign files stay");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }
}
