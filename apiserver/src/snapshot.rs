//! The on-disk snapshot: every object and the `resourceVersion` counter in one JSON file, written atomically
//! (temporary file, fsync, rename) at most once per debounce interval after a change, and on shutdown. A crash
//! loses at most the changes of the last interval.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::resources::TypeKey;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("{path}: not a snapshot: {err}")]
    Format {
        path: String,
        err: serde_json::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct Resource<T> {
    group: String,
    resource: String,
    items: Vec<T>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot<T> {
    format: u32,
    #[serde(rename = "resourceVersion")]
    resource_version: u64,
    resources: Vec<Resource<T>>,
}

pub type Loaded = (u64, Vec<(TypeKey, Vec<Value>)>);

/// Reads a snapshot; `None` if there is none yet.
pub fn load(path: &Path) -> Result<Option<Loaded>, SnapshotError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(SnapshotError::Io {
                path: path.display().to_string(),
                err,
            });
        }
    };
    let snap: Snapshot<Value> =
        serde_json::from_slice(&text).map_err(|err| SnapshotError::Format {
            path: path.display().to_string(),
            err,
        })?;
    let objects = snap
        .resources
        .into_iter()
        .map(|r| (TypeKey::new(&r.group, &r.resource), r.items))
        .collect();
    Ok(Some((snap.resource_version, objects)))
}

/// Writes the store's current state to `path`.
pub fn save(store: &Store, path: &Path) -> Result<(), SnapshotError> {
    let (rv, objects) = store.lock().dump();
    let snap = Snapshot {
        format: 1,
        resource_version: rv,
        resources: objects
            .iter()
            .filter(|(_, items)| !items.is_empty())
            .map(|(k, items)| Resource {
                group: k.group.clone(),
                resource: k.plural.clone(),
                items: items.iter().map(|o| &**o).collect(),
            })
            .collect::<Vec<Resource<&Value>>>(),
    };
    let io = |err| SnapshotError::Io {
        path: path.display().to_string(),
        err,
    };
    let bytes = serde_json::to_vec(&snap).map_err(|err| SnapshotError::Format {
        path: path.display().to_string(),
        err,
    })?;
    let tmp: PathBuf = path.with_extension("json.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Writes the snapshot after changes, no more often than `debounce`, and once more at shutdown.
pub async fn run_writer(
    store: Arc<Store>,
    path: PathBuf,
    debounce: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let dirty = store.dirty();
    let write = |store: Arc<Store>, path: PathBuf| async move {
        match tokio::task::spawn_blocking(move || save(&store, &path)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "writing the API server snapshot failed"),
            Err(e) => tracing::warn!(error = %e, "the snapshot writer task failed"),
        }
    };
    loop {
        tokio::select! {
            _ = dirty.notified() => {}
            _ = shutdown.changed() => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(debounce) => {}
            _ = shutdown.changed() => break,
        }
        write(store.clone(), path.clone()).await;
    }
    write(store, path).await;
}
