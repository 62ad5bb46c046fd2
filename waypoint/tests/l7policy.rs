//! In-process: the waypoint's L7 policies — local rate limits (and, as they land, authorization and JWT
//! authentication) — over real HBONE from a source ztunnel's point of view. Nets 80–89.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::faulty::{self, Mesh};

#[tokio::test]
async fn rate_limits_answer_429_past_the_bucket_and_count_it() {
    let mut m = Mesh::new(80);
    let api = m.service("api").endpoint("api", 10, "api");
    let other = m.service("other").endpoint("other", 11, "other");
    m.route("api", "").route("other", "");
    // 3 requests per minute per client identity on `api` (the service), and 2 per minute for /login on the
    // route's rule only.
    m.item(
        "rateLimits",
        "{name: demo/api, targets: [{kind: SERVICE, name: api.demo.svc.cluster.local}], \
         limits: [{key: CLIENT_IDENTITY, requests: 3, intervalMs: 60000}]}",
    );
    m.item(
        "rateLimits",
        "{name: demo/login, targets: [{kind: ROUTE, name: demo/httproute/other}], \
         limits: [{requests: 2, intervalMs: 60000, matches: [{path: {type: PathPrefix, value: /login}}]}]}",
    );
    let api = faulty::ok(api, "api").await;
    let _other = faulty::ok(other, "other").await;
    let w = m.start().await;

    for left in [2, 1, 0] {
        let a = w.get("api", "/", &[]).await;
        assert_eq!((a.status, a.served_by()), (200, "api"), "{a:?}");
        assert_eq!(a.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(
            a.header("x-ratelimit-remaining"),
            Some(left.to_string().as_str())
        );
    }
    let a = w.get("api", "/", &[]).await;
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(a.header("x-ratelimit-remaining"), Some("0"));
    let retry_after: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=20).contains(&retry_after),
        "one token per 20 s: {retry_after}"
    );
    assert_eq!(
        api.attempts(),
        3,
        "the limited request never reached the backend"
    );

    // The route-rule limit applies to its matches only.
    for _ in 0..5 {
        assert_eq!(w.get("other", "/home", &[]).await.status, 200);
    }
    assert_eq!(w.get("other", "/login", &[]).await.status, 200);
    assert_eq!(w.get("other", "/login", &[]).await.status, 200);
    assert_eq!(w.get("other", "/login", &[]).await.status, 429);

    assert_eq!(w.requests("api", Some(429), Some("RL")).await, 1.0);
    let metrics = w.metrics().await;
    assert!(
        metrics.contains("ambit_waypoint_rate_limited_total 2"),
        "{metrics}"
    );
}
