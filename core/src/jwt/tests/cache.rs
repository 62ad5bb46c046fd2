//! `JwksCache`: refresh, last-good on failure, retry timing (paused time), `file://` sources.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::runtime::Handle;
use tokio::time::Instant;

use super::*;

const URI: &str = "https://issuer.example/jwks";

struct FakeFetcher {
    response: Mutex<Result<String, FetchError>>,
    calls: AtomicU64,
}

impl FakeFetcher {
    fn new(response: Result<String, FetchError>) -> Arc<Self> {
        Arc::new(FakeFetcher {
            response: Mutex::new(response),
            calls: AtomicU64::new(0),
        })
    }

    fn set(&self, response: Result<String, FetchError>) {
        *self.response.lock().unwrap() = response;
    }
}

#[async_trait]
impl JwksFetcher for FakeFetcher {
    async fn fetch(&self, uri: &str) -> Result<String, FetchError> {
        assert_eq!(uri, URI);
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.response.lock().unwrap().clone()
    }
}

fn uri_rule(uri: &str, refresh_ms: u64) -> JwtRule {
    rule(pb::JwtRule {
        issuer: ISSUER.to_string(),
        jwks_uri: uri.to_string(),
        jwks_refresh_ms: refresh_ms,
        ..Default::default()
    })
}

async fn attempts(rx: &mut tokio::sync::watch::Receiver<JwksState>, n: u64) -> JwksState {
    rx.wait_for(|s| s.attempts >= n).await.unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn refresh_keeps_last_good_keys_on_failure() {
    let fetcher = FakeFetcher::new(Ok(jwks(&[rsa().jwk(Some("k1"))])));
    let cache = JwksCache::new(fetcher.clone());
    let r = uri_rule(URI, 60_000);
    let auth = Authenticator::new(cache.clone());
    let start = Instant::now();
    cache.sync([&r], &Handle::current());
    assert_eq!(cache.uris(), vec![URI.to_string()]);
    let mut rx = cache.subscribe(URI).unwrap();
    let state = attempts(&mut rx, 1).await;
    assert!(state.keys.is_some() && state.last_error.is_none());
    let k1 = token("RS256", Some("k1"), claims(), rsa());
    accepted(auth.authenticate(&[&r], &bearer(&k1), None, now()));

    // The refresh fails: the last good set stays in use.
    fetcher.set(Err(FetchError("connection refused".to_string())));
    let state = attempts(&mut rx, 2).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(60),
        "refreshed after jwks_refresh_ms"
    );
    assert_eq!(state.last_error.as_deref(), Some("connection refused"));
    assert!(state.keys.is_some());
    accepted(auth.authenticate(&[&r], &bearer(&k1), None, now()));

    // Failures are retried sooner: 1 s, then 2 s.
    attempts(&mut rx, 3).await;
    assert_eq!(start.elapsed(), Duration::from_secs(61));
    // A document that does not parse is a failure too.
    fetcher.set(Ok("{\"keys\": 5}".to_string()));
    let state = attempts(&mut rx, 4).await;
    assert_eq!(start.elapsed(), Duration::from_secs(63));
    assert_eq!(
        state.last_error.as_deref(),
        Some("invalid JWKS: [keys] is not an array")
    );
    accepted(auth.authenticate(&[&r], &bearer(&k1), None, now()));

    // Rotation: the new set replaces the old one, and the retry delay resets.
    fetcher.set(Ok(jwks(&[other_rsa().jwk(Some("k2"))])));
    let state = attempts(&mut rx, 5).await;
    assert_eq!(start.elapsed(), Duration::from_secs(67));
    assert!(state.last_error.is_none());
    assert_eq!(
        rejected(auth.authenticate(&[&r], &bearer(&k1), None, now())),
        JwtError::KidAlgMismatch
    );
    let k2 = token("RS256", Some("k2"), claims(), other_rsa());
    accepted(auth.authenticate(&[&r], &bearer(&k2), None, now()));
    attempts(&mut rx, 6).await;
    assert_eq!(start.elapsed(), Duration::from_secs(127));
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 6);

    // No rule names the URI any more: the entry and its task go.
    cache.sync([], &Handle::current());
    assert!(cache.uris().is_empty());
    assert!(cache.current(URI).is_none());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 6);
}

#[tokio::test(start_paused = true)]
async fn first_load_failure_then_success() {
    let fetcher = FakeFetcher::new(Err(FetchError("503".to_string())));
    let cache = JwksCache::new(fetcher.clone());
    // Two rules share the URI: one entry, refreshed at the shorter interval.
    let (a, b) = (uri_rule(URI, 0), uri_rule(URI, 10_000));
    cache.sync([&a, &b], &Handle::current());
    let mut rx = cache.subscribe(URI).unwrap();
    let state = attempts(&mut rx, 1).await;
    assert!(state.keys.is_none());
    let auth = Authenticator::new(cache.clone());
    let t = token("RS256", Some("k1"), claims(), rsa());
    assert_eq!(
        rejected(auth.authenticate(&[&a], &bearer(&t), None, now())),
        JwtError::JwksFetchFail
    );
    fetcher.set(Ok(jwks(&[rsa().jwk(Some("k1"))])));
    let start = Instant::now();
    attempts(&mut rx, 2).await;
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    accepted(auth.authenticate(&[&a, &b], &bearer(&t), None, now()));
    attempts(&mut rx, 3).await;
    assert_eq!(start.elapsed(), Duration::from_secs(11));
}

#[tokio::test(start_paused = true)]
async fn http_uri_without_fetcher_fails_to_load() {
    let cache = JwksCache::files_only();
    cache.sync([&uri_rule(URI, 0)], &Handle::current());
    let state = attempts(&mut cache.subscribe(URI).unwrap(), 1).await;
    assert_eq!(
        state.last_error.as_deref(),
        Some("no HTTP fetcher configured")
    );
}

#[tokio::test]
async fn file_source_is_reread_and_keeps_last_good() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[rsa().jwk(Some("k1"))])).unwrap();
    let uri = format!("file://{}", path.display());
    let r = uri_rule(&uri, 20);
    let cache = JwksCache::files_only();
    cache.sync([&r], &Handle::current());
    let auth = Authenticator::new(cache.clone());
    let mut rx = cache.subscribe(&uri).unwrap();
    let wait = Duration::from_secs(10);
    tokio::time::timeout(wait, rx.wait_for(|s| s.keys.is_some()))
        .await
        .unwrap()
        .unwrap();
    let k1 = token("RS256", Some("k1"), claims(), rsa());
    accepted(auth.authenticate(&[&r], &bearer(&k1), None, now()));

    std::fs::write(&path, jwks(&[other_rsa().jwk(Some("k2"))])).unwrap();
    let k2 = token("RS256", Some("k2"), claims(), other_rsa());
    let has_k2 = |s: &JwksState| {
        s.keys
            .as_ref()
            .is_some_and(|k| k.keys[0].kid.as_deref() == Some("k2"))
    };
    tokio::time::timeout(wait, rx.wait_for(has_k2))
        .await
        .unwrap()
        .unwrap();
    accepted(auth.authenticate(&[&r], &bearer(&k2), None, now()));

    std::fs::write(&path, "not json").unwrap();
    let state = tokio::time::timeout(wait, rx.wait_for(|s| s.last_error.is_some()))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert!(has_k2(&state), "the last good set is kept");
    accepted(auth.authenticate(&[&r], &bearer(&k2), None, now()));

    std::fs::remove_file(&path).unwrap();
    let attempts_now = rx.borrow().attempts;
    let state = tokio::time::timeout(wait, rx.wait_for(|s| s.attempts > attempts_now + 1))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert!(
        state
            .last_error
            .as_ref()
            .is_some_and(|e| e.contains("jwks.json"))
    );
    assert!(has_k2(&state));
}
