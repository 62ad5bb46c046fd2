//! The certificate manager: one certificate per workload identity, fetched through a [`CsrSigner`], shared by
//! concurrent callers, rotated at half-life, retried with backoff while the old certificate keeps being served.
//!
//! Each held identity has one worker task (the only writer of its entry) that requests, publishes and sleeps until
//! the next refresh. Callers read the published state from a watch channel.

mod dump;
mod gate;
mod metrics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::identity::Identity;
use crate::signer::{CsrSigner, SignError};
use crate::tls::{self, WorkloadCert};

pub use dump::{CertDump, CertInfo};
pub use gate::Priority;

use gate::{Gate, SharedPriority};

/// At most this many CSRs are in flight at once.
pub const MAX_CONCURRENT_CSRS: usize = 8;
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(150);
/// The longest wait between attempts (±20 %) while nothing valid is held: the identity's connections are refused
/// until a certificate comes, so the CA's return must not wait out a long backoff.
const BACKOFF_CAP_UNSERVED: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, thiserror::Error)]
pub enum CertError {
    #[error("signing failed for {identity}: {reason}")]
    Sign {
        identity: String,
        reason: String,
        retryable: bool,
    },
    #[error("bad certificate for {identity}: {reason}")]
    BadResponse { identity: String, reason: String },
    #[error("certificate manager stopped tracking {0}")]
    Forgotten(String),
    #[error("the certificate of {identity} expired and was not renewed: {reason}")]
    Expired { identity: String, reason: String },
}

impl CertError {
    pub fn retryable(&self) -> bool {
        match self {
            CertError::Sign { retryable, .. } => *retryable,
            CertError::BadResponse { .. } => true,
            CertError::Forgotten(_) => false,
            CertError::Expired { .. } => true,
        }
    }
}

/// What an identity's worker last published.
#[derive(Clone, Debug, Default)]
struct Published {
    cert: Option<Arc<WorkloadCert>>,
    /// The last attempt's error, cleared by a success.
    error: Option<CertError>,
    /// Attempts finished so far.
    attempts: u64,
}

struct Entry {
    state: watch::Receiver<Published>,
    /// A clone of the worker's sender, to hand out receivers and to publish `None` on forget.
    certs: watch::Sender<Option<Arc<WorkloadCert>>>,
    priority: Arc<SharedPriority>,
    task: JoinHandle<()>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.task.abort();
        self.certs.send_replace(None);
    }
}

/// Holds the certificates of the workload identities this proxy serves. Use as `Arc<CertManager>`.
pub struct CertManager {
    signer: Arc<dyn CsrSigner>,
    ttl: Duration,
    gate: Arc<Gate>,
    entries: Mutex<HashMap<Identity, Entry>>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// `ttl` is the validity asked of the CA for each certificate.
    pub fn new(signer: Arc<dyn CsrSigner>, ttl: Duration) -> Arc<Self> {
        Arc::new(CertManager {
            signer,
            ttl,
            gate: Gate::new(MAX_CONCURRENT_CSRS),
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The certificate of `id`: the cached one if still valid, otherwise the result of the (shared) request.
    /// Starts tracking `id` (and refreshing it) if it was not yet.
    pub async fn fetch(
        &self,
        id: &Identity,
        priority: Priority,
    ) -> Result<Arc<WorkloadCert>, CertError> {
        let (mut state, wanted) = self.track(id, priority);
        let seen_attempts = {
            let current = state.borrow_and_update();
            if let Some(cert) = current.cert.as_ref().filter(|c| !c.is_expired()) {
                return Ok(cert.clone());
            }
            // The last attempt failed and nothing valid is held: say so now rather than wait for the backoff.
            if let Some(err) = &current.error {
                return Err(err.clone());
            }
            current.attempts
        };
        // Only a caller that has to wait makes the pending request more urgent.
        wanted.raise(priority);
        loop {
            if state.changed().await.is_err() {
                return Err(CertError::Forgotten(id.to_string()));
            }
            let current = state.borrow_and_update();
            if current.attempts == seen_attempts {
                continue;
            }
            return match (&current.cert, &current.error) {
                (Some(cert), _) if !cert.is_expired() => Ok(cert.clone()),
                (_, Some(err)) => Err(err.clone()),
                _ => continue,
            };
        }
    }

    /// Fails when `id` holds a certificate that has expired (none valid replaced it): the data path's fail-closed
    /// check for connections and streams that reuse a connection set up while it was valid. Synchronous and
    /// allocation-free, so it adds nothing to a connection's future; an identity not tracked yet, or still waiting
    /// for its first certificate, passes (the handshake that needs one waits for it).
    pub fn check_unexpired(&self, id: &Identity) -> Result<(), CertError> {
        let entries = self.lock();
        let Some(entry) = entries.get(id) else {
            return Ok(());
        };
        let state = entry.state.borrow();
        match &state.cert {
            Some(cert) if cert.is_expired() => Err(CertError::Expired {
                identity: id.to_string(),
                reason: state
                    .error
                    .as_ref()
                    .map_or_else(|| "renewal pending".to_owned(), ToString::to_string),
            }),
            _ => Ok(()),
        }
    }

    /// Starts fetching `id` in the background at warm-up priority (no-op if already tracked).
    pub fn prefetch(&self, id: &Identity) {
        let (state, wanted) = self.track(id, Priority::Warmup);
        if state.borrow().cert.is_none() {
            wanted.raise(Priority::Warmup);
        }
    }

    /// Registers `workload_certificates{state}` (valid, expired, pending) in `registry`.
    pub fn register_metrics(
        self: &Arc<Self>,
        registry: &mut prometheus_client::registry::Registry,
    ) {
        registry.register_collector(Box::new(metrics::CertCollector(Arc::downgrade(self))));
    }

    /// Every tracked identity's published state.
    fn states(&self) -> Vec<Published> {
        self.lock()
            .values()
            .map(|e| e.state.borrow().clone())
            .collect()
    }

    /// Stops tracking `id`: its refresh stops and subscribers see `None`.
    pub fn forget(&self, id: &Identity) {
        let removed = self.lock().remove(id);
        drop(removed);
    }

    /// The certificate of `id` now and after every rotation (`None` until the first one, and after `forget`).
    /// Starts tracking `id` at warm-up priority if it was not yet.
    pub fn subscribe(&self, id: &Identity) -> watch::Receiver<Option<Arc<WorkloadCert>>> {
        let _ = self.track(id, Priority::Warmup);
        let entries = self.lock();
        match entries.get(id) {
            Some(e) => e.certs.subscribe(),
            None => watch::channel(None).1,
        }
    }

    /// The identities currently tracked, sorted.
    pub fn identities(&self) -> Vec<Identity> {
        let mut ids: Vec<Identity> = self.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The `certificates` section of the admin config dump (spec 6.2), sorted by identity.
    pub fn dump(&self) -> Vec<CertDump> {
        let snapshot: Vec<(Identity, Published)> = self
            .lock()
            .iter()
            .map(|(id, e)| (id.clone(), e.state.borrow().clone()))
            .collect();
        let mut out: Vec<CertDump> = snapshot
            .into_iter()
            .map(|(id, p)| {
                dump::dump_one(
                    &id,
                    p.cert.as_deref(),
                    p.error.as_ref().map(ToString::to_string),
                )
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    /// The entry's state receiver and request priority, creating the entry and its worker (whose first request
    /// has `priority`) when `id` is new.
    fn track(
        &self,
        id: &Identity,
        priority: Priority,
    ) -> (watch::Receiver<Published>, Arc<SharedPriority>) {
        let mut entries = self.lock();
        if let Some(e) = entries.get(id) {
            return (e.state.clone(), e.priority.clone());
        }
        let (state_tx, state_rx) = watch::channel(Published::default());
        let (cert_tx, _) = watch::channel(None);
        let prio = Arc::new(SharedPriority::new(priority));
        let worker = Worker {
            id: id.clone(),
            signer: self.signer.clone(),
            ttl: self.ttl,
            gate: self.gate.clone(),
            priority: prio.clone(),
            state: state_tx,
            certs: cert_tx.clone(),
        };
        let task = tokio::spawn(worker.run());
        entries.insert(
            id.clone(),
            Entry {
                state: state_rx.clone(),
                certs: cert_tx,
                priority: prio.clone(),
                task,
            },
        );
        (state_rx, prio)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Entry>> {
        // Only synchronous map operations happen under this lock; a poisoned map is still consistent.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The single writer of one identity's state.
struct Worker {
    id: Identity,
    signer: Arc<dyn CsrSigner>,
    ttl: Duration,
    gate: Arc<Gate>,
    priority: Arc<SharedPriority>,
    state: watch::Sender<Published>,
    certs: watch::Sender<Option<Arc<WorkloadCert>>>,
}

impl Worker {
    async fn run(self) {
        let mut backoff = Backoff::new();
        // Whether the expiry of the certificate held was logged (once per expiry).
        let mut expiry_reported = false;
        loop {
            let result = {
                let _permit = self.gate.acquire(self.priority.clone()).await;
                self.request().await
            };
            let wait = match result {
                Ok(cert) => {
                    backoff.reset();
                    expiry_reported = false;
                    self.priority.set(Priority::Background);
                    let wait = refresh_wait(&cert);
                    tracing::info!(
                        identity = %self.id,
                        cert.serial = %cert.serial_hex(),
                        refresh.in_secs = wait.as_secs(),
                        "workload certificate issued"
                    );
                    self.state.send_modify(|p| {
                        p.cert = Some(cert.clone());
                        p.error = None;
                        p.attempts += 1;
                    });
                    self.certs.send_replace(Some(cert));
                    wait
                }
                Err(err) => {
                    let old = self.state.borrow().cert.clone();
                    let serving = old.as_ref().is_some_and(|c| !c.is_expired());
                    let mut wait = backoff.next(if serving {
                        BACKOFF_CAP
                    } else {
                        BACKOFF_CAP_UNSERVED
                    });
                    match &old {
                        Some(old) if serving => {
                            // Retry no later than the old certificate's expiry.
                            wait = wait.min(until(old.not_after()));
                        }
                        _ => {
                            if let Some(old) = &old
                                && !expiry_reported
                            {
                                expiry_reported = true;
                                tracing::error!(
                                    identity = %self.id,
                                    cert.serial = %old.serial_hex(),
                                    error = %err,
                                    "workload certificate expired and the CA has not renewed it: connections of \
                                     this identity are refused until it does"
                                );
                            }
                        }
                    }
                    tracing::warn!(identity = %self.id, error = %err, retry.in_ms = wait.as_millis() as u64, "certificate request failed");
                    self.state.send_modify(|p| {
                        p.error = Some(err);
                        p.attempts += 1;
                    });
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn request(&self) -> Result<Arc<WorkloadCert>, CertError> {
        let bad = |reason: String| CertError::BadResponse {
            identity: self.id.to_string(),
            reason,
        };
        let (key_pem, csr_pem) = tls::generate_csr(&self.id).map_err(|e| bad(e.to_string()))?;
        let chain = self
            .signer
            .sign(&csr_pem, &self.id, self.ttl)
            .await
            .map_err(|e| CertError::Sign {
                identity: self.id.to_string(),
                retryable: e.retryable(),
                reason: sign_reason(&e),
            })?;
        let cert =
            WorkloadCert::from_istio_chain(&chain, &key_pem).map_err(|e| bad(e.to_string()))?;
        if cert.identity() != &self.id {
            return Err(bad(format!("the CA issued {} instead", cert.identity())));
        }
        Ok(Arc::new(cert))
    }
}

fn sign_reason(e: &SignError) -> String {
    e.to_string()
}

/// How long a newly issued `cert` is served before the next is asked for: half the validity it has left. Not
/// half of `not_after - not_before`: a CA back-dates `not_before` against clock skew (ours by 60 s), which would put
/// a short certificate's half-life in the past — a 20 s `SECRET_TTL` would then be renewed at once, forever.
fn refresh_wait(cert: &WorkloadCert) -> Duration {
    until(cert.not_after()) / 2
}

/// Time from now until `at` (zero if past).
fn until(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// Exponential backoff: 1 s, ×2, capped at the caller's cap (150 s, or 15 s while nothing valid is held), each
/// wait ±20 % jitter.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }

    fn next(&mut self, cap: Duration) -> Duration {
        let base = self.next.min(cap);
        self.next = (self.next * 2).min(BACKOFF_CAP);
        let jitter: f64 = rand::random_range(0.8..=1.2);
        base.mul_f64(jitter)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
