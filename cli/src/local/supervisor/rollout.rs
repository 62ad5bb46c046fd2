//! Rolling ztunnel restart (`ambit local restart ztunnel`), as a DaemonSet rollout with a surge of one does it on a
//! cluster: the new process starts beside the old one in the node's namespace; the node agent hands it the pods
//! (their listeners bound beside the old ones with `SO_REUSEPORT`, the old process's connection kept open and
//! silent); once the new process has applied the ZDS snapshot the old one is sent SIGTERM and drains — it stops
//! accepting (what is queued on its listeners moves to the new ones: `tcp_migrate_req`) and finishes its
//! connections until its drain deadline. No new connection fails.
//!
//! The CLI asks by writing `requests/restart-ztunnel-<node>` in the state directory; the supervisor removes the
//! file when the old process is gone, which is what the CLI waits for.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tracing::{info, warn};

use super::Supervisor;
use crate::local::process::Proc;

/// The request files' directory in the state directory.
pub const REQUESTS: &str = "requests";
const PREFIX: &str = "restart-ztunnel-";
/// The log lines of a ztunnel that applied its first ZDS snapshot (`ztunnel/src/inpod.rs`) and got its first
/// full configuration (`core/src/xds`): it then serves the pods as the old one does.
const TAKEN_OVER: [&str; 2] = [
    "ZDS snapshot applied",
    "every type acknowledged once; ready",
];
/// How long the new process may take to get the pods; past it the old one is stopped anyway (with a warning).
const TAKE_OVER: Duration = Duration::from_secs(30);
/// How long the old process may drain after SIGTERM before it is killed: over ztunnel's own drain deadline.
const DRAIN: Duration = Duration::from_secs(40);

/// One node's restart in progress.
pub struct Rollout {
    node: String,
    request: PathBuf,
    old: Proc,
    /// Where the log stood when the new process started: the snapshot line is looked for after it.
    offset: u64,
    started: Instant,
    /// When the old process was sent SIGTERM.
    terminated: Option<Instant>,
}

impl Rollout {
    pub fn into_old(self) -> Proc {
        self.old
    }
}

/// The CLI's side: asks for a rolling restart of the ztunnel of `nodes` and waits until every old process is gone.
pub fn request(dir: &Path, nodes: &[String], timeout: Duration) -> Result<()> {
    let requests = dir.join(REQUESTS);
    std::fs::create_dir_all(&requests)?;
    let files: Vec<PathBuf> = nodes
        .iter()
        .map(|n| requests.join(format!("{PREFIX}{n}")))
        .collect();
    for f in &files {
        std::fs::write(f, b"").with_context(|| format!("write {}", f.display()))?;
    }
    let deadline = Instant::now() + timeout;
    while files.iter().any(|f| f.exists()) {
        if Instant::now() >= deadline {
            bail!(
                "the ztunnel restart did not finish within {timeout:?} (is the mesh running? `ambit local status`)"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

impl Supervisor {
    /// Starts the restarts asked for since the last tick.
    pub(super) fn take_rollout_requests(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.dir.join(REQUESTS)) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(node) = name.strip_prefix(PREFIX) else {
                continue;
            };
            if self.rollouts.iter().any(|r| r.node == node) {
                continue;
            }
            let proc_name = format!("ztunnel/{node}");
            let Some(i) = self.system.iter().position(|p| p.name == proc_name) else {
                warn!(node, "restart requested for a node without a ztunnel");
                let _ = std::fs::remove_file(entry.path());
                continue;
            };
            let mut new = self.system[i].respawn();
            let offset = std::fs::metadata(new.log_path()).map_or(0, |m| m.len());
            if let Err(e) = new.start() {
                warn!(node, error = %format!("{e:#}"), "the new ztunnel did not start; the old one keeps serving");
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let old = std::mem::replace(&mut self.system[i], new);
            info!(node, old.pid = ?old.pid(), new.pid = ?self.system[i].pid(), "ztunnel rolling restart");
            self.rollouts.push(Rollout {
                node: node.to_owned(),
                request: entry.path(),
                old,
                offset,
                started: Instant::now(),
                terminated: None,
            });
        }
    }

    /// Moves each restart on: the old process is stopped once the new one holds the pods, and the request is
    /// done once the old one is gone.
    pub(super) fn advance_rollouts(&mut self) {
        let mut done = Vec::new();
        for (k, r) in self.rollouts.iter_mut().enumerate() {
            match r.terminated {
                None => {
                    let Some(new) = self
                        .system
                        .iter_mut()
                        .find(|p| p.name == format!("ztunnel/{}", r.node))
                    else {
                        done.push(k);
                        continue;
                    };
                    if new.child.is_none() {
                        // It exited before taking over: the old one goes back to being supervised, still serving.
                        warn!(node = %r.node, "the new ztunnel exited before taking the pods over; the old one keeps serving (see its log)");
                        std::mem::swap(new, &mut r.old);
                        done.push(k);
                        continue;
                    }
                    let applied = TAKEN_OVER
                        .iter()
                        .all(|line| log_has_since(new.log_path(), r.offset, line));
                    let late = r.started.elapsed() > TAKE_OVER;
                    if applied || late {
                        if late && !applied {
                            warn!(node = %r.node, "the new ztunnel did not report its ZDS snapshot; stopping the old one anyway");
                        }
                        info!(node = %r.node, pid = ?r.old.pid(), "the new ztunnel holds the pods; the old one drains");
                        r.old.terminate();
                        r.terminated = Some(Instant::now());
                    }
                }
                Some(at) => {
                    if r.old.exited() {
                        info!(node = %r.node, after_ms = at.elapsed().as_millis() as u64, "the old ztunnel drained and exited");
                        done.push(k);
                    } else if at.elapsed() > DRAIN {
                        warn!(node = %r.node, "the old ztunnel did not stop in time; killing it");
                        r.old.kill();
                        done.push(k);
                    }
                }
            }
        }
        for k in done.into_iter().rev() {
            let r = self.rollouts.remove(k);
            let _ = std::fs::remove_file(&r.request);
        }
    }
}

/// Whether `path` holds `needle` after byte `offset`.
fn log_has_since(path: &Path, offset: u64, needle: &str) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return false;
    }
    let mut bytes = Vec::new();
    let _ = f.take(16 << 20).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).contains(needle)
}
