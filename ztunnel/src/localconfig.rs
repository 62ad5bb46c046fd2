//! Upstream ztunnel's local static config (spec 2.7): YAML with `workloads`, `services` and `policies` in the
//! internal model's serde shape, from the `LOCAL_XDS_PATH` file (watched) or inline `LOCAL_XDS`.
//!
//! Ambit difference: unset `trustDomain`, `serviceAccount` and `clusterId` default to `cluster.local`, `default`
//! and `Kubernetes` (upstream leaves them empty, which yields unusable `spiffe:///…` identities), and a missing
//! workload `uid` becomes `<clusterId>//v1/Pod/<namespace>/<name>`.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_core::drain::DrainWatcher;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::rbac::Authorization;
use crate::state::{ProxyState, Service, Workload};

/// How often the watched file is checked. A change is applied once the file read the same on two checks in a row.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LocalConfig {
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub policies: Vec<Authorization>,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// serde_yaml's message carries the line and column.
    #[error("{origin}: {source}")]
    Parse {
        origin: String,
        source: serde_yaml::Error,
    },
    #[error("{origin}: {reason}")]
    Invalid { origin: String, reason: String },
}

/// Parses local config YAML (an empty document is an empty config).
pub fn parse(yaml: &str) -> Result<LocalConfig, LocalConfigError> {
    parse_from(yaml, "inline config")
}

/// Reads and parses the file at `path`.
pub fn load(path: &Path) -> Result<LocalConfig, LocalConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| LocalConfigError::Read {
        path: path.into(),
        source,
    })?;
    parse_from(&text, &path.display().to_string())
}

fn parse_from(yaml: &str, origin: &str) -> Result<LocalConfig, LocalConfigError> {
    let is_blank = yaml.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---"
    });
    if is_blank {
        return Ok(LocalConfig::default());
    }
    let mut cfg: LocalConfig =
        serde_yaml::from_str(yaml).map_err(|source| LocalConfigError::Parse {
            origin: origin.to_owned(),
            source,
        })?;
    for w in &mut cfg.workloads {
        if w.uid.is_empty() {
            w.uid = format!("{}//v1/Pod/{}/{}", w.cluster_id, w.namespace, w.name);
        }
    }
    validate(&cfg).map_err(|reason| LocalConfigError::Invalid {
        origin: origin.to_owned(),
        reason,
    })?;
    Ok(cfg)
}

fn validate(cfg: &LocalConfig) -> Result<(), String> {
    let mut uids = std::collections::HashSet::new();
    for w in &cfg.workloads {
        if w.name.is_empty() || w.namespace.is_empty() {
            return Err(format!(
                "workload {:?}: name and namespace are required",
                w.uid
            ));
        }
        if !uids.insert(&w.uid) {
            return Err(format!("workload uid {:?} appears twice", w.uid));
        }
    }
    for s in &cfg.services {
        if s.namespace.is_empty() || s.hostname.is_empty() {
            return Err(format!(
                "service {:?}: namespace and hostname are required",
                s.name
            ));
        }
    }
    for p in &cfg.policies {
        if p.name.is_empty() || p.namespace.is_empty() {
            return Err(format!(
                "policy {:?}: name and namespace are required",
                p.name
            ));
        }
    }
    Ok(())
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn read_hash(path: &Path) -> Option<(u64, String)> {
    match std::fs::read(path) {
        Ok(bytes) => Some((
            content_hash(&bytes),
            String::from_utf8_lossy(&bytes).into_owned(),
        )),
        Err(e) => {
            debug!(path = %path.display(), error = %e, "local config not readable");
            None
        }
    }
}

/// Watches `path` until drained: re-reads it every [`POLL_INTERVAL`], and once a changed content has been stable
/// for one interval applies it with [`ProxyState::replace_all`]. A malformed file keeps the previous state (logged
/// at warn, once per content). The content present when the watch starts is taken as already applied.
pub async fn watch(path: PathBuf, state: ProxyState, mut drain: DrainWatcher) {
    let mut current = read_hash(&path).map(|(h, _)| h);
    let mut pending: Option<u64> = None;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = drain.signaled() => {
                debug!(path = %path.display(), "local config watch stopped");
                return;
            }
            _ = ticker.tick() => {}
        }
        let Some((hash, text)) = read_hash(&path) else {
            continue;
        };
        if Some(hash) == current {
            pending = None;
            continue;
        }
        if pending != Some(hash) {
            // Changed: wait one more interval for writers to finish.
            pending = Some(hash);
            continue;
        }
        pending = None;
        current = Some(hash);
        match parse_from(&text, &path.display().to_string()) {
            Ok(cfg) => {
                info!(path = %path.display(), workloads = cfg.workloads.len(), services = cfg.services.len(),
                    policies = cfg.policies.len(), "local config reloaded");
                state.replace_all(cfg);
            }
            Err(e) => warn!(error = %e, "local config is invalid; keeping the previous state"),
        }
    }
}
