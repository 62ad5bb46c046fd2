//! Key sets named by `jwksUri`: fetched (`http(s)://` through a [`JwksFetcher`]) or read (`file://`), refreshed
//! every rule's `jwks_refresh_ms`, and shared by URI. A failed refresh keeps the last good set (Istio's JWKS
//! resolver does the same); failures are retried sooner, 1 s doubling to 1 minute (Istio's
//! `JwtPubKeyRetryInterval` and `JwtPubKeyRefreshIntervalOnFailure`), never later than the refresh interval.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::jwks::Jwks;
use super::rule::{JwtRule, KeySource};

/// A fetch gives up after this long (Istio's `jwksHTTPTimeOutInSec`).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Documents larger than this are refused.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchError(pub String);

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FetchError {}

/// Gets a JWKS document over HTTP(S). The waypoint's implementation sends it through the mesh; tests use a fake.
#[async_trait]
pub trait JwksFetcher: Send + Sync + 'static {
    async fn fetch(&self, uri: &str) -> Result<String, FetchError>;
}

/// What the cache knows about one URI.
#[derive(Clone, Debug, Default)]
pub struct JwksState {
    /// The last key set that parsed; None until one did.
    pub keys: Option<Arc<Jwks>>,
    /// Why the latest attempt failed; None after a success.
    pub last_error: Option<String>,
    /// Attempts made so far.
    pub attempts: u64,
}

/// Shared key sets by URI. Cheap to clone; tasks stop when the last clone is dropped or [`JwksCache::sync`] no
/// longer names their URI.
#[derive(Clone)]
pub struct JwksCache {
    inner: Arc<Inner>,
}

struct Inner {
    fetcher: Option<Arc<dyn JwksFetcher>>,
    entries: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    tx: Arc<watch::Sender<JwksState>>,
    refresh: Duration,
    task: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let entries = self
            .entries
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for entry in entries.values() {
            entry.task.abort();
        }
    }
}

impl fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksCache")
            .field("uris", &self.uris())
            .finish()
    }
}

impl JwksCache {
    /// A cache fetching `http(s)://` URIs with `fetcher`.
    pub fn new(fetcher: Arc<dyn JwksFetcher>) -> Self {
        Self::with_fetcher(Some(fetcher))
    }

    /// A cache for `file://` URIs only (local mode, the CLI); `http(s)://` URIs fail to load.
    pub fn files_only() -> Self {
        Self::with_fetcher(None)
    }

    fn with_fetcher(fetcher: Option<Arc<dyn JwksFetcher>>) -> Self {
        JwksCache {
            inner: Arc::new(Inner {
                fetcher,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Makes the cache hold exactly the URIs `rules` name: starts loading new ones on `runtime`, stops the ones
    /// no rule names any more. A URI several rules name refreshes at the shortest of their intervals. Called by
    /// the one writer of the policy state whenever the RequestAuthentications change.
    pub fn sync<'a>(
        &self,
        rules: impl IntoIterator<Item = &'a JwtRule>,
        runtime: &tokio::runtime::Handle,
    ) {
        let mut wanted: HashMap<&str, Duration> = HashMap::new();
        for rule in rules {
            if let KeySource::Uri { uri, refresh } = &rule.keys {
                let at = wanted.entry(uri.as_str()).or_insert(*refresh);
                *at = (*at).min(*refresh);
            }
        }
        let mut entries = self
            .inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        entries.retain(|uri, entry| {
            let keep = wanted.contains_key(uri.as_str());
            if !keep {
                entry.task.abort();
            }
            keep
        });
        for (uri, refresh) in wanted {
            match entries.get_mut(uri) {
                Some(entry) if entry.refresh == refresh => {}
                Some(entry) => {
                    // Same state (last good keys kept), new timer.
                    entry.task.abort();
                    entry.task = self.spawn(runtime, uri, refresh, entry.tx.clone());
                    entry.refresh = refresh;
                }
                None => {
                    let tx = Arc::new(watch::Sender::new(JwksState::default()));
                    let task = self.spawn(runtime, uri, refresh, tx.clone());
                    entries.insert(uri.to_string(), Entry { tx, refresh, task });
                }
            }
        }
    }

    fn spawn(
        &self,
        runtime: &tokio::runtime::Handle,
        uri: &str,
        refresh: Duration,
        tx: Arc<watch::Sender<JwksState>>,
    ) -> tokio::task::AbortHandle {
        let fetcher = self.inner.fetcher.clone();
        let uri = uri.to_string();
        runtime
            .spawn(refresh_loop(fetcher, uri, refresh, tx))
            .abort_handle()
    }

    /// The last good key set for `uri`, if it has loaded.
    pub fn current(&self, uri: &str) -> Option<Arc<Jwks>> {
        let entries = self
            .inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        entries.get(uri)?.tx.borrow().keys.clone()
    }

    /// Watches `uri`'s state (each attempt notifies), e.g. to wait for the first load before serving.
    pub fn subscribe(&self, uri: &str) -> Option<watch::Receiver<JwksState>> {
        let entries = self
            .inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some(entries.get(uri)?.tx.subscribe())
    }

    /// The URIs held, sorted.
    pub fn uris(&self) -> Vec<String> {
        let entries = self
            .inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut uris: Vec<String> = entries.keys().cloned().collect();
        uris.sort();
        uris
    }
}

async fn refresh_loop(
    fetcher: Option<Arc<dyn JwksFetcher>>,
    uri: String,
    refresh: Duration,
    tx: Arc<watch::Sender<JwksState>>,
) {
    let mut retry = FIRST_RETRY;
    loop {
        let result = match tokio::time::timeout(FETCH_TIMEOUT, load(fetcher.as_deref(), &uri)).await
        {
            Ok(Ok(doc)) => Jwks::parse(&doc).map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.0),
            Err(_) => Err(format!("timed out after {}s", FETCH_TIMEOUT.as_secs())),
        };
        let ok = result.is_ok();
        tx.send_modify(|state| {
            state.attempts += 1;
            match result {
                Ok(jwks) => {
                    if state.keys.as_deref() != Some(&jwks) {
                        state.keys = Some(Arc::new(jwks));
                    }
                    state.last_error = None;
                }
                Err(e) => {
                    tracing::warn!(jwks.uri = %uri, error = %e, "JWKS refresh failed; keeping the last good key set");
                    state.last_error = Some(e);
                }
            }
        });
        let wait = if ok {
            retry = FIRST_RETRY;
            refresh
        } else {
            let wait = retry.min(refresh);
            retry = (retry * 2).min(MAX_RETRY);
            wait
        };
        tokio::time::sleep(wait).await;
    }
}

async fn load(fetcher: Option<&dyn JwksFetcher>, uri: &str) -> Result<String, FetchError> {
    let doc = if let Some(path) = uri.strip_prefix("file://") {
        tokio::fs::read_to_string(path)
            .await
            .map_err(|e| FetchError(format!("{path}: {e}")))?
    } else {
        let fetcher =
            fetcher.ok_or_else(|| FetchError("no HTTP fetcher configured".to_string()))?;
        fetcher.fetch(uri).await?
    };
    if doc.len() > MAX_JWKS_BYTES {
        return Err(FetchError(format!(
            "document of {} bytes; the limit is {MAX_JWKS_BYTES}",
            doc.len()
        )));
    }
    Ok(doc)
}
