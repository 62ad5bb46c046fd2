//! In-process: how the waypoint spreads requests over a service's endpoints under its `BackendPolicy` (an Istio
//! DestinationRule) — outlier detection ejecting and readmitting an endpoint, round robin, consistent hashing and
//! subsets. Each test has its own waypoint; addresses are 127.0.78.x and 127.0.79.x (distinct hosts per test).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::faulty::{self, Mesh};

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint_and_readmits_it() {
    const EJECTION: Duration = Duration::from_millis(1000);
    let mut m = Mesh::new(78);
    let good = m.service("od").endpoint("good", 10, "od");
    let bad = m.endpoint("bad", 11, "od");
    m.route("od", "retry: {attempts: 0}").policy(
        "od",
        &format!(
            "policy: {{outlierDetection: {{consecutive5xxErrors: 2, intervalMs: 100, baseEjectionTimeMs: {}, maxEjectionPercent: 100}}}}",
            EJECTION.as_millis()
        ),
    );
    let good = faulty::ok(good, "good").await;
    let bad = faulty::always(bad, "bad", 500).await;
    let w = m.start().await;

    // Until the bad endpoint has failed twice in a row (it only ever fails).
    let mut sent = 0;
    while bad.attempts() < 2 {
        let a = w.get("od", "/", &[]).await;
        assert!(
            matches!((a.status, a.served_by()), (200, "good") | (500, "bad")),
            "{a:?}"
        );
        sent += 1;
        assert!(sent < 100, "the bad endpoint was never picked twice");
    }
    let ejected = Instant::now();

    // Ejected: for (well within) its ejection time every request goes to the healthy endpoint.
    let mut while_ejected = 0;
    while ejected.elapsed() < EJECTION / 2 {
        let a = w.get("od", "/", &[]).await;
        assert_eq!((a.status, a.served_by()), (200, "good"), "{a:?}");
        while_ejected += 1;
    }
    assert!(
        while_ejected >= 3,
        "only {while_ejected} requests in {:?}",
        EJECTION / 2
    );
    assert_eq!(bad.attempts(), 2, "an ejected endpoint got traffic");

    // After its ejection time it is tried again.
    let deadline = ejected + EJECTION * 5;
    while bad.attempts() == 2 && Instant::now() < deadline {
        let _ = w.get("od", "/", &[]).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back_after = ejected.elapsed();
    assert!(
        bad.attempts() > 2,
        "not readmitted within {:?}",
        EJECTION * 5
    );
    assert!(
        back_after >= EJECTION - Duration::from_millis(100),
        "readmitted after {back_after:?}, before its {EJECTION:?} ejection"
    );
    assert!(good.attempts() >= while_ejected);
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let mut m = Mesh::new(79);
    m.service("rr");
    let addrs: Vec<_> = ["rr-a", "rr-b", "rr-c"]
        .iter()
        .enumerate()
        .map(|(i, uid)| (*uid, m.endpoint(uid, 10 + i as u8, "rr")))
        .collect();
    m.policy("rr", "policy: {loadBalancer: {kind: ROUND_ROBIN}}");
    let mut backends = Vec::new();
    for (uid, addr) in addrs {
        backends.push(faulty::ok(addr, uid).await);
    }
    let w = m.start().await;

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..30 {
        let a = w.get("rr", "/", &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
        *counts.entry(a.served_by().to_owned()).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = ["rr-a", "rr-b", "rr-c"]
        .iter()
        .map(|n| (n.to_string(), 10))
        .collect();
    assert_eq!(counts, want);
    for b in &backends {
        assert_eq!(b.attempts(), 10, "{}", b.name);
    }
}

#[tokio::test]
async fn consistent_hash_keeps_a_user_on_one_endpoint() {
    let mut m = Mesh::new(79);
    m.service("ch");
    let addrs: Vec<_> = ["ch-a", "ch-b", "ch-c"]
        .iter()
        .enumerate()
        .map(|(i, uid)| (*uid, m.endpoint(uid, 20 + i as u8, "ch")))
        .collect();
    m.policy(
        "ch",
        "policy: {loadBalancer: {kind: CONSISTENT_HASH, consistentHash: {headerName: x-user}}}",
    );
    for (uid, addr) in addrs {
        faulty::ok(addr, uid).await;
    }
    let w = m.start().await;

    let mut chosen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for round in 0..4 {
        for user in 0..12 {
            let user = format!("user-{user}");
            let a = w.get("ch", "/", &[("x-user", &user)]).await;
            assert_eq!(a.status, 200, "round {round}: {a:?}");
            chosen
                .entry(user)
                .or_default()
                .insert(a.served_by().to_owned());
        }
    }
    for (user, endpoints) in &chosen {
        assert_eq!(endpoints.len(), 1, "{user} went to {endpoints:?}");
    }
    // 12 users on 3 endpoints all landing on one: (1/3)^11 by chance.
    let used: BTreeSet<_> = chosen.values().flatten().collect();
    assert!(
        used.len() >= 2,
        "every user on {used:?}: the key is not hashed"
    );
}

#[tokio::test]
async fn a_route_to_a_subset_reaches_only_its_endpoints() {
    let mut m = Mesh::new(78);
    let v1 = m.service("reviews").endpoint("reviews-v1", 20, "reviews");
    let v2 = m.endpoint("reviews-v2", 21, "reviews");
    m.service("nosubset");
    let stray = m.endpoint("nosubset-0", 22, "nosubset");
    let to = |subset: &str| {
        format!(
            "backends: [{{hostname: reviews.demo.svc.cluster.local, port: 80, weight: 1, subset: {subset}}}]"
        )
    };
    // bookinfo's reviews: jason to v2, everyone else to v1.
    m.route(
        "reviews",
        &format!(
            "origin: VIRTUAL_SERVICE, matches: [{{headers: [{{type: Exact, name: end-user, value: jason}}]}}], {}",
            to("v2")
        ),
    )
    .route("reviews", &format!("origin: VIRTUAL_SERVICE, {}", to("v1")))
    .route(
        "nosubset",
        "backends: [{hostname: nosubset.demo.svc.cluster.local, port: 80, weight: 1, subset: v9}]",
    )
    .policy(
        "reviews",
        "subsets: [{name: v1, labels: {version: v1}, workloads: {uids: [reviews-v1]}}, {name: v2, labels: {version: v2}, workloads: {uids: [reviews-v2]}}]",
    )
    .policy(
        "nosubset",
        "subsets: [{name: v1, labels: {version: v1}, workloads: {uids: [nosubset-0]}}]",
    );
    let v1 = faulty::ok(v1, "reviews-v1").await;
    let v2 = faulty::ok(v2, "reviews-v2").await;
    let stray = faulty::ok(stray, "nosubset-0").await;
    let w = m.start().await;

    for _ in 0..20 {
        let a = w.get("reviews", "/", &[]).await;
        assert_eq!((a.status, a.served_by()), (200, "reviews-v1"), "{a:?}");
    }
    for _ in 0..10 {
        let a = w.get("reviews", "/", &[("end-user", "jason")]).await;
        assert_eq!((a.status, a.served_by()), (200, "reviews-v2"), "{a:?}");
    }
    assert_eq!((v1.attempts(), v2.attempts()), (20, 10));

    // A subset the policy does not define has no endpoints: 503, and the service's endpoints get nothing.
    let a = w.get("nosubset", "/", &[]).await;
    assert_eq!((a.status, a.served_by()), (503, ""), "{a:?}");
    assert_eq!(stray.attempts(), 0);
}
