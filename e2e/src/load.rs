//! A bounded load through the local mesh for the fault tests: sequential `curl`s from a pod, each on a new
//! connection, counting successes and failures until stopped.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context, Result};

use crate::local::{LocalMesh, WAIT};
use crate::topology::poll;

#[derive(Default)]
pub struct RequestLoop {
    stop: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
    /// The first failures (at most [`KEPT_ERRORS`]).
    errors: Mutex<Vec<String>>,
}

const KEPT_ERRORS: usize = 10;

impl RequestLoop {
    /// Requests `url` from `namespace`/`target` until [`RequestLoop::stop`].
    pub fn run(&self, mesh: &LocalMesh, namespace: &str, target: &str, url: &str) {
        while !self.stop.load(Ordering::Relaxed) {
            match mesh.curl(namespace, target, url) {
                Ok(_) => {
                    self.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut errors) = self.errors.lock()
                        && errors.len() < KEPT_ERRORS
                    {
                        errors.push(format!("{e:#}"));
                    }
                }
            }
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// (succeeded, failed, the first failures, one per line).
    pub fn totals(&self) -> (u64, u64, String) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.errors.lock().map(|e| e.join("\n")).unwrap_or_default(),
        )
    }

    /// Waits for `n` more successful requests.
    pub fn more(&self, n: u64, what: &str) -> Result<()> {
        let target = self.ok.load(Ordering::Relaxed) + n;
        poll(&format!("{n} requests {what}"), WAIT, || {
            Ok((self.ok.load(Ordering::Relaxed) >= target).then_some(()))
        })
        .with_context(|| {
            let (ok, failed, last) = self.totals();
            format!("{ok} ok, {failed} failed; first errors:\n{last}")
        })
    }
}
