use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::ca::LocalCa;

/// Signs with a LocalCa; fails while `fail_next > 0` (counting down); counts calls; may block until released.
struct FakeSigner {
    ca: LocalCa,
    calls: AtomicUsize,
    fail_next: AtomicUsize,
    gate: tokio::sync::Semaphore,
}

impl FakeSigner {
    fn new(open: bool) -> Arc<Self> {
        Arc::new(FakeSigner {
            ca: LocalCa::generate("cluster.local").unwrap(),
            calls: AtomicUsize::new(0),
            fail_next: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(if open {
                tokio::sync::Semaphore::MAX_PERMITS
            } else {
                0
            }),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl CsrSigner for FakeSigner {
    async fn sign(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<String>, SignError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let permit = self
            .gate
            .acquire()
            .await
            .map_err(|e| SignError::Unavailable(e.to_string()))?;
        permit.forget();
        if self.fail_next.load(Ordering::SeqCst) > 0 {
            self.fail_next.fetch_sub(1, Ordering::SeqCst);
            return Err(SignError::Unavailable("CA down".into()));
        }
        self.ca
            .sign_csr(csr_pem, identity, ttl)
            .map_err(|e| SignError::Invalid(e.to_string()))
    }
}

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa)
}

/// Lets spawned tasks run until they block (time is paused, so nothing advances the clock).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn caches_and_shares_concurrent_requests() {
    let signer = FakeSigner::new(false);
    let mgr = CertManager::new(signer.clone(), Duration::from_secs(3600));
    let a = tokio::spawn({
        let mgr = mgr.clone();
        async move { mgr.fetch(&id("a"), Priority::RealTime).await }
    });
    let b = tokio::spawn({
        let mgr = mgr.clone();
        async move { mgr.fetch(&id("a"), Priority::Warmup).await }
    });
    settle().await;
    assert_eq!(signer.calls(), 1, "concurrent callers share one request");
    assert_eq!(mgr.dump()[0].state, "Initializing");
    signer.gate.add_permits(100);
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.identity(), &id("a"));
    let c = mgr.fetch(&id("a"), Priority::RealTime).await.unwrap();
    assert!(Arc::ptr_eq(&a, &c), "served from cache");
    assert_eq!(signer.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn at_most_eight_in_flight() {
    let signer = FakeSigner::new(false);
    let mgr = CertManager::new(signer.clone(), Duration::from_secs(3600));
    for i in 0..12 {
        mgr.prefetch(&id(&format!("sa{i}")));
    }
    settle().await;
    assert_eq!(signer.calls(), MAX_CONCURRENT_CSRS);
    signer.gate.add_permits(100);
    settle().await;
    assert_eq!(signer.calls(), 12);
    assert_eq!(mgr.identities().len(), 12);
}

/// Serves `cert` and expects the next request half its remaining validity later (within a second).
async fn expect_refresh_after(signer: &FakeSigner, calls: usize, after: Duration) {
    tokio::time::sleep(after - Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(signer.calls(), calls, "not yet at {after:?} - 1 s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(signer.calls(), calls + 1, "refreshed by {after:?} + 1 s");
}

#[tokio::test(start_paused = true)]
async fn refreshes_at_half_the_remaining_validity() {
    let signer = FakeSigner::new(true);
    let mgr = CertManager::new(signer.clone(), Duration::from_secs(200));
    let mut rx = mgr.subscribe(&id("a"));
    let first = mgr.fetch(&id("a"), Priority::RealTime).await.unwrap();
    assert_eq!(signer.calls(), 1);
    rx.borrow_and_update();
    expect_refresh_after(&signer, 1, Duration::from_secs(100)).await;
    assert!(rx.has_changed().unwrap(), "subscribers see the rotation");
    let second = rx.borrow_and_update().clone().unwrap();
    assert_ne!(second.serial_hex(), first.serial_hex());
    let fetched = mgr.fetch(&id("a"), Priority::RealTime).await.unwrap();
    assert!(Arc::ptr_eq(&fetched, &second));
}

#[tokio::test(start_paused = true)]
async fn a_short_ttl_is_not_renewed_at_once() {
    // 20 s of validity, back-dated 60 s by the CA: its half-life (not_before + 40 s) is already past when it
    // arrives. It must still be served for about 10 s, not replaced in a loop. (The certificate's clock is the real
    // one: the time signing takes moves each renewal a little earlier, never later.)
    let signer = FakeSigner::new(true);
    let mgr = CertManager::new(signer.clone(), Duration::from_secs(20));
    mgr.fetch(&id("a"), Priority::RealTime).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(signer.calls(), 1, "not renewed at once");
    tokio::time::sleep(Duration::from_secs(7)).await;
    settle().await;
    assert_eq!(signer.calls(), 2, "renewed at about half its validity");
    // Renewals near 10, 20 and 30 s: four certificates by 35 s.
    tokio::time::sleep(Duration::from_secs(23)).await;
    settle().await;
    assert_eq!(signer.calls(), 4, "one renewal per half-lifetime");
}

#[tokio::test(start_paused = true)]
async fn backs_off_and_keeps_serving_old_cert() {
    let signer = FakeSigner::new(true);
    let mgr = CertManager::new(signer.clone(), Duration::from_secs(200));
    let first = mgr.fetch(&id("a"), Priority::RealTime).await.unwrap();
    signer.fail_next.store(3, Ordering::SeqCst);
    // Half the validity left (the clock the certificate is read with is the real one, not the paused one).
    let wait = first.not_after().duration_since(SystemTime::now()).unwrap() / 2;
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    settle().await;
    assert_eq!(signer.calls(), 2, "refresh attempted and failed");
    let served = mgr.fetch(&id("a"), Priority::RealTime).await.unwrap();
    assert!(Arc::ptr_eq(&served, &first), "old cert still served");
    assert_eq!(mgr.dump()[0].state, "Available");
    // Retries at 1 s (±20 %), then 2 s, then 4 s after the previous one. Now = T+0.1 s.
    tokio::time::sleep(Duration::from_millis(600)).await;
    settle().await;
    assert_eq!(signer.calls(), 2, "first retry not before 0.8 s");
    tokio::time::sleep(Duration::from_millis(600)).await;
    settle().await;
    assert_eq!(signer.calls(), 3, "first retry by 1.2 s");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    settle().await;
    assert_eq!(signer.calls(), 3, "second retry not before 0.8 + 1.6 s");
    tokio::time::sleep(Duration::from_millis(1400)).await;
    settle().await;
    assert_eq!(signer.calls(), 4, "second retry by 1.2 + 2.4 s");
    assert!(Arc::ptr_eq(
        &mgr.fetch(&id("a"), Priority::RealTime).await.unwrap(),
        &first
    ));
    tokio::time::sleep(Duration::from_millis(4900)).await;
    settle().await;
    assert_eq!(signer.calls(), 5, "third retry (by 3.6 + 4.8 s) succeeds");
    let renewed = mgr.fetch(&id("a"), Priority::RealTime).await.unwrap();
    assert!(!Arc::ptr_eq(&renewed, &first));
}

/// With nothing valid held (here: no certificate ever came) the identity's traffic is refused, so the retries
/// keep coming at most ~15 s apart however long the CA stays down, not every 150 s: a CA that returns after a long
/// outage is asked again within seconds.
#[tokio::test(start_paused = true)]
async fn retries_stay_frequent_while_nothing_valid_is_held() {
    let signer = FakeSigner::new(true);
    signer.fail_next.store(usize::MAX, Ordering::SeqCst);
    let mgr = CertManager::new(signer.clone(), Duration::from_secs(200));
    assert!(mgr.fetch(&id("a"), Priority::RealTime).await.is_err());
    let mut last_call = tokio::time::Instant::now();
    let mut calls = signer.calls();
    let mut longest = Duration::ZERO;
    // Ten minutes of outage, in one-second steps.
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        settle().await;
        if signer.calls() > calls {
            calls = signer.calls();
            longest = longest.max(last_call.elapsed());
            last_call = tokio::time::Instant::now();
        }
    }
    longest = longest.max(last_call.elapsed());
    assert!(
        longest <= Duration::from_secs(19),
        "{longest:?} between attempts while unserved"
    );
    assert!(calls >= 35, "{calls} attempts in ten minutes");
    // The CA back: the next attempt succeeds.
    signer.fail_next.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(19)).await;
    settle().await;
    assert!(mgr.fetch(&id("a"), Priority::RealTime).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn first_failure_is_reported_to_callers() {
    let signer = FakeSigner::new(true);
    signer.fail_next.store(1, Ordering::SeqCst);
    let mgr = CertManager::new(signer.clone(), Duration::from_secs(200));
    let err = mgr.fetch(&id("a"), Priority::RealTime).await.unwrap_err();
    assert!(err.retryable());
    assert!(err.to_string().contains("CA down"), "{err}");
    assert_eq!(mgr.dump()[0].state, format!("Unavailable: {err}"));
    // The worker retries by itself; a later fetch gets the certificate.
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert!(mgr.fetch(&id("a"), Priority::RealTime).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn forget_stops_refreshing() {
    let signer = FakeSigner::new(true);
    let mgr = CertManager::new(signer.clone(), Duration::from_secs(200));
    let rx = mgr.subscribe(&id("a"));
    mgr.fetch(&id("a"), Priority::RealTime).await.unwrap();
    mgr.forget(&id("a"));
    assert!(rx.borrow().is_none());
    assert!(mgr.dump().is_empty());
    tokio::time::sleep(Duration::from_secs(600)).await;
    settle().await;
    assert_eq!(signer.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn dump_format() {
    let signer = FakeSigner::new(true);
    let mgr = CertManager::new(signer.clone(), Duration::from_secs(3600));
    let cert = mgr.fetch(&id("a"), Priority::RealTime).await.unwrap();
    let json = serde_json::to_value(mgr.dump()).unwrap();
    let entry = &json[0];
    assert_eq!(entry["identity"], "spiffe://cluster.local/ns/default/sa/a");
    assert_eq!(entry["state"], "Available");
    let chain = entry["certChain"].as_array().unwrap();
    assert_eq!(chain.len(), 1);
    let roots = entry["rootCerts"].as_array().unwrap();
    assert_eq!(roots.len(), 1);
    use base64::Engine as _;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(chain[0]["pem"].as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(pem).unwrap(), cert.chain_pem()[0]);
    // Decimal, as upstream writes it: the certificate's own serial read as a big-endian unsigned integer.
    let serial = chain[0]["serialNumber"].as_str().unwrap();
    assert!(serial.bytes().all(|b| b.is_ascii_digit()), "{serial}");
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert.chain_pem()[0].as_bytes()).unwrap();
    assert_eq!(serial, pem.parse_x509().unwrap().serial.to_string());
    assert_eq!(
        dump::decimal_serial(&cert.serial_hex()),
        serial,
        "the dump's serial is the logged (hex) serial in decimal"
    );
    assert_eq!(chain[0]["validFrom"], dump::rfc3339(cert.not_before()));
    assert_eq!(chain[0]["expirationTime"], dump::rfc3339(cert.not_after()));
    let from = chain[0]["validFrom"].as_str().unwrap();
    let parsed =
        time::OffsetDateTime::parse(from, &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(SystemTime::from(parsed), cert.not_before());
    assert_eq!(from.len(), "2026-01-01T00:00:00Z".len());
    let keys: Vec<&String> = entry.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
}

#[test]
fn serial_numbers_in_decimal() {
    // istioctl's testdata pairs (decimal in the dump, hex in its table).
    assert_eq!(
        dump::decimal_serial("e5dfb59150b2ba7f108d93dcec5aa613"),
        "305554775863395697262503895661564044819"
    );
    assert_eq!(
        dump::decimal_serial("8a516645c40ce76c2c0d27ab4e2461c1"),
        "183856113797057159350158029893417591233"
    );
    assert_eq!(dump::decimal_serial("ff"), "255");
    // An odd number of hex digits is still a number.
    assert_eq!(dump::decimal_serial("100000000"), "4294967296");
    assert_eq!(dump::decimal_serial("00"), "0");
    assert_eq!(dump::decimal_serial("not hex"), "not hex");
}

fn scrape(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out
}

/// Real time: the certificate's clock is the system's. A 6 s certificate, the CA down from its first renewal on
/// (due about 3 s after it arrived, half its remaining validity).
#[tokio::test]
async fn an_expired_certificate_fails_closed_and_is_counted() {
    let signer = FakeSigner::new(true);
    let mgr = CertManager::new(signer.clone(), Duration::from_secs(6));
    let mut registry = prometheus_client::registry::Registry::default();
    mgr.register_metrics(&mut registry);
    let first = mgr.fetch(&id("a"), Priority::RealTime).await.unwrap();
    mgr.prefetch(&id("b"));
    signer.fail_next.store(1000, Ordering::SeqCst);
    let text = scrape(&registry);
    assert!(
        text.contains("workload_certificates{state=\"valid\"} 1"),
        "{text}"
    );
    // Still served while valid, though its renewal failed.
    while signer.calls() < 3 && SystemTime::now() < first.not_after() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        signer.calls() >= 3,
        "the renewal (and b's first request) were attempted"
    );
    let served = mgr.fetch(&id("a"), Priority::RealTime).await.unwrap();
    assert!(
        SystemTime::now() < first.not_after(),
        "the certificate expired before its failed renewal could be checked (a very slow machine)"
    );
    assert!(Arc::ptr_eq(&served, &first));
    assert!(mgr.check_unexpired(&id("a")).is_ok());
    assert!(
        mgr.check_unexpired(&id("b")).is_ok(),
        "still waiting for its first one"
    );
    assert!(mgr.check_unexpired(&id("untracked")).is_ok());
    // Expired: refused, and counted as such.
    let wait = first
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(200)).await;
    let err = mgr.fetch(&id("a"), Priority::RealTime).await.unwrap_err();
    assert!(err.to_string().contains("CA down"), "{err}");
    let err = mgr.check_unexpired(&id("a")).unwrap_err();
    assert!(matches!(err, CertError::Expired { .. }), "{err}");
    let text = scrape(&registry);
    assert!(
        text.contains("workload_certificates{state=\"expired\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("workload_certificates{state=\"valid\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("workload_certificates{state=\"pending\"} 1"),
        "b never got one: {text}"
    );
}

#[test]
fn backoff_doubles_up_to_the_callers_cap_with_jitter() {
    let mut b = super::Backoff::new();
    let within = |d: Duration, base: u64| {
        let s = d.as_secs_f64();
        s >= base as f64 * 0.8 - 1e-9 && s <= base as f64 * 1.2 + 1e-9
    };
    for base in [1, 2, 4, 8, 16, 32, 64, 128, 150, 150] {
        let d = b.next(super::BACKOFF_CAP);
        assert!(within(d, base), "{d:?} for {base} s");
    }
    // While nothing valid is held the cap is 15 s, whatever the doubling had reached; once served again, 150.
    for _ in 0..5 {
        let d = b.next(super::BACKOFF_CAP_UNSERVED);
        assert!(within(d, 15), "{d:?}");
    }
    assert!(within(b.next(super::BACKOFF_CAP), 150));
    b.reset();
    assert!(within(b.next(super::BACKOFF_CAP_UNSERVED), 1));
    assert!(within(b.next(super::BACKOFF_CAP_UNSERVED), 2));
}
