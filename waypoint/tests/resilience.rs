//! In-process: the waypoint's resilience policies against misbehaving backends — retries (the route's, Istio's
//! default, the body-size limit, the retry budget), timeouts, fault injection, circuit breaking, CORS and direct
//! responses. Each test has its own waypoint and its own `127.0.<net>.x` block (60–71; `balancing.rs` uses 78–79).
//!
//! Counts are exact where the policy makes them exact (attempts a backend saw, requests the metrics counted);
//! durations are only bounded generously (a delay is at least its length, a timeout well under 5× its length).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::faulty::{self, Mesh, authority};

/// Fast backoff so retried tests do not wait on it.
const FAST: &str = "backoffBaseMs: 1, backoffMaxMs: 2";

#[tokio::test]
async fn retries_reach_the_healthy_attempt() {
    let mut m = Mesh::new(60);
    let flaky = m.service("flaky").endpoint("flaky", 10, "flaky");
    let down = m.service("down").endpoint("down", 11, "down");
    let resets = m.service("resets").endpoint("resets", 12, "resets");
    m.route(
        "flaky",
        &format!("retry: {{attempts: 3, retryOn: [5xx], {FAST}}}"),
    )
    .route(
        "down",
        &format!("retry: {{attempts: 2, retryOn: [5xx], {FAST}}}"),
    )
    .route(
        "resets",
        &format!("retry: {{attempts: 3, retryOn: [reset], {FAST}}}"),
    );
    let flaky = faulty::fail_then_ok(flaky, "flaky", 2, 503).await;
    let down = faulty::always(down, "down", 503).await;
    let resets = faulty::reset_then_ok(resets, "resets", 2).await;
    let w = m.start().await;

    // Two 503s, then the third attempt answers.
    let a = w.get("flaky", "/", &[]).await;
    assert_eq!((a.status, a.served_by()), (200, "flaky"), "{a:?}");
    assert_eq!(a.header("x-attempt"), Some("3"));
    assert_eq!(flaky.attempts(), 3);

    // Retries exhausted: the client gets the last attempt's answer (the backend's own 503), flag URX.
    let a = w.get("down", "/", &[]).await;
    assert_eq!((a.status, a.served_by()), (503, "down"), "{a:?}");
    assert_eq!(down.attempts(), 3, "1 attempt + 2 retries");

    // A connection closed without an answer, twice: `reset` retries it.
    let a = w.get("resets", "/", &[]).await;
    assert_eq!((a.status, a.served_by()), (200, "resets"), "{a:?}");
    assert_eq!(resets.attempts(), 3);

    // Each client request is counted once, whatever its attempts.
    let metrics = w.metrics().await;
    let count = |svc, code, flag| faulty::count_requests(&metrics, svc, code, flag);
    assert_eq!(count("flaky", None, None), 1.0, "{metrics}");
    assert_eq!(count("flaky", Some(200), None), 1.0, "{metrics}");
    assert_eq!(count("down", Some(503), Some("URX")), 1.0, "{metrics}");
    assert_eq!(count("resets", Some(200), None), 1.0, "{metrics}");
}

#[tokio::test]
async fn istio_retries_on_gateway_errors_only() {
    // VirtualService `retries {attempts: 3, perTryTimeout: 2s,
    // retryOn: gateway-error,connect-failure,refused-stream,reset-before-request}`.
    const ISTIO: &str = "retry: {attempts: 3, retryOn: [gateway-error, connect-failure, refused-stream, reset-before-request]}, timeouts: {backendRequestMs: 2000}";
    let mut m = Mesh::new(61);
    let gw = m.service("gw").endpoint("gw", 10, "gw");
    let err = m.service("err").endpoint("err", 11, "err");
    m.route("gw", ISTIO).route("err", ISTIO);
    let gw = faulty::fail_then_ok(gw, "gw", 2, 502).await;
    let err = faulty::always(err, "err", 500).await;
    let w = m.start().await;

    let a = w.get("gw", "/", &[]).await;
    assert_eq!((a.status, a.served_by()), (200, "gw"), "{a:?}");
    assert_eq!(gw.attempts(), 3, "two 502s retried");

    // 500 is not a gateway error (502, 503, 504): not retried.
    let a = w.get("err", "/", &[]).await;
    assert_eq!((a.status, a.served_by()), (500, "err"), "{a:?}");
    assert_eq!(err.attempts(), 1);
}

#[tokio::test]
async fn a_large_body_is_not_retried_a_small_one_is() {
    let mut m = Mesh::new(62);
    let big = m.service("big").endpoint("big", 10, "big");
    let small = m.service("small").endpoint("small", 11, "small");
    let retry = format!("retry: {{attempts: 2, retryOn: [5xx], {FAST}}}");
    m.route("big", &retry).route("small", &retry);
    let big = faulty::fail_then_ok(big, "big", 1, 503).await;
    let small = faulty::fail_then_ok(small, "small", 1, 503).await;
    let w = m.start().await;

    // 1 MiB is over the 64 KiB replay buffer: the first answer stands.
    let mib = Bytes::from(vec![b'x'; 1 << 20]);
    let a = w.send("big", "POST", "/upload", &[], mib).await;
    assert_eq!((a.status, a.served_by()), (503, "big"), "{a:?}");
    assert_eq!(big.attempts(), 1, "a 1 MiB POST must not be retried");
    assert_eq!(
        big.bodies(),
        [1 << 20],
        "the body reached the backend whole"
    );

    // 1 KiB is replayed: the retry carries the same body.
    let kib = Bytes::from(vec![b'y'; 1024]);
    let a = w.send("small", "POST", "/upload", &[], kib).await;
    assert_eq!((a.status, a.served_by()), (200, "small"), "{a:?}");
    assert_eq!(small.attempts(), 2);
    assert_eq!(small.bodies(), [1024, 1024], "the retry replays the body");
}

#[tokio::test]
async fn the_default_policy_retries_503_twice_with_or_without_a_route() {
    let mut m = Mesh::new(63);
    let mut backends = Vec::new();
    for (i, (name, status)) in [
        ("routed503", 503),
        ("routed500", 500),
        ("bare503", 503),
        ("bare500", 500),
        ("off503", 503),
    ]
    .into_iter()
    .enumerate()
    {
        let addr = m.service(name).endpoint(name, 10 + i as u8, name);
        backends.push((name, status, addr));
    }
    // Routes without a `retry` (Istio's default applies), no route at all for `bare*`, and retries turned off.
    m.route("routed503", "").route("routed500", "");
    m.route("off503", "retry: {attempts: 0}");
    let mut running = Vec::new();
    for (name, status, addr) in backends {
        running.push((name, status, faulty::always(addr, name, status).await));
    }
    let w = m.start().await;

    for (name, status, backend) in &running {
        let a = w.get(name, "/", &[]).await;
        assert_eq!((a.status, a.served_by()), (*status, *name), "{a:?}");
        let want = match (*name, *status) {
            ("off503", _) => 1,
            (_, 503) => 3, // retriable-status-codes 503: 2 retries
            _ => 1,        // 500 is not in the default policy
        };
        assert_eq!(backend.attempts(), want, "{name}");
    }
}

#[tokio::test]
async fn the_retry_budget_stops_a_retry_storm() {
    let mut m = Mesh::new(64);
    let storm = m.service("storm").endpoint("storm", 10, "storm");
    m.route(
        "storm",
        &format!("retry: {{attempts: 5, retryOn: [5xx], {FAST}}}"),
    );
    let storm = faulty::always(storm, "storm", 503).await;
    let w = m.start().await;

    const REQUESTS: usize = 200;
    let start = Instant::now();
    for _ in 0..REQUESTS {
        let a = w.get("storm", "/", &[]).await;
        assert_eq!((a.status, a.served_by()), (503, "storm"), "{a:?}");
    }
    let secs = start.elapsed().as_secs_f64();
    // Budget defaults: retries ≤ 20 % of requests, but at least 10 retries/s (over a 10 s window). Allow the ratio,
    // a full window's floor, and the floor again for every second the test ran. Unbudgeted: 200 × 6 = 1200.
    let bound = REQUESTS as f64 * 1.2 + 10.0 * 10.0 + 10.0 * secs.ceil();
    let attempts = storm.attempts();
    assert!(
        (attempts as f64) < bound,
        "{attempts} attempts for {REQUESTS} requests in {secs:.1} s (bound {bound})"
    );
    assert!(
        attempts >= REQUESTS + 10,
        "the budget's floor allows some retries: {attempts}"
    );
    assert_eq!(w.requests("storm", Some(503), None).await, REQUESTS as f64);
}

#[tokio::test]
async fn a_hung_backend_gives_504_ut_within_the_timeout() {
    let mut m = Mesh::new(65);
    let per_try = m.service("pertry").endpoint("pertry", 10, "pertry");
    let whole = m.service("whole").endpoint("whole", 11, "whole");
    m.route(
        "pertry",
        "timeouts: {backendRequestMs: 200}, retry: {attempts: 0}",
    )
    .route("whole", "timeouts: {requestMs: 300}, retry: {attempts: 0}");
    let per_try = faulty::hang(per_try, "pertry").await;
    let whole = faulty::hang(whole, "whole").await;
    let w = m.start().await;

    for (name, backend, timeout) in [("pertry", &per_try, 200), ("whole", &whole, 300)] {
        let a = w.get(name, "/", &[]).await;
        let t = Duration::from_millis(timeout);
        assert_eq!((a.status, a.served_by()), (504, ""), "{name}: {a:?}");
        assert!(
            a.elapsed >= t && a.elapsed < 5 * t,
            "{name}: {:?} for a {t:?} timeout",
            a.elapsed
        );
        assert_eq!(backend.attempts(), 1, "{name}");
        assert_eq!(w.requests(name, Some(504), Some("UT")).await, 1.0, "{name}");
    }
}

#[tokio::test]
async fn the_request_timeout_bounds_all_retries() {
    let mut m = Mesh::new(66);
    let hung = m.service("hung").endpoint("hung", 10, "hung");
    m.route(
        "hung",
        &format!(
            "timeouts: {{requestMs: 500, backendRequestMs: 200}}, retry: {{attempts: 5, retryOn: [5xx], {FAST}}}"
        ),
    );
    let hung = faulty::hang(hung, "hung").await;
    let w = m.start().await;

    let a = w.get("hung", "/", &[]).await;
    assert_eq!((a.status, a.served_by()), (504, ""), "{a:?}");
    // Per-try timeouts at ~200 and ~400 ms are retried (`5xx` covers them); the request's 500 ms ends the third.
    assert!(
        (2..=3).contains(&hung.attempts()),
        "{} attempts in 500 ms of 200 ms tries",
        hung.attempts()
    );
    assert!(
        a.elapsed >= Duration::from_millis(500) && a.elapsed < Duration::from_millis(2500),
        "{:?}",
        a.elapsed
    );
    assert_eq!(w.requests("hung", Some(504), Some("UT")).await, 1.0);
}

#[tokio::test]
async fn fault_abort_answers_without_the_backend() {
    let mut m = Mesh::new(67);
    let teapot = m.service("teapot").endpoint("teapot", 10, "teapot");
    let half = m.service("half").endpoint("half", 11, "half");
    m.route("teapot", "fault: {abort: {httpStatus: 418, percent: 100}}")
        .route("half", "fault: {abort: {httpStatus: 418, percent: 50}}");
    let teapot = faulty::ok(teapot, "teapot").await;
    let half = faulty::ok(half, "half").await;
    let w = m.start().await;

    for _ in 0..5 {
        let a = w.get("teapot", "/", &[]).await;
        assert_eq!((a.status, a.served_by()), (418, ""), "{a:?}");
    }
    assert_eq!(teapot.attempts(), 0, "an abort sends nothing upstream");
    assert_eq!(w.requests("teapot", Some(418), Some("FI")).await, 5.0);

    // 50 % of 200: binomial sd 7.1, so 100 ± 30 is ± 4.2 sd.
    let mut aborted = 0;
    for _ in 0..200 {
        let a = w.get("half", "/", &[]).await;
        match (a.status, a.served_by()) {
            (418, "") => aborted += 1,
            (200, "half") => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!((70..=130).contains(&aborted), "{aborted} of 200 aborted");
    assert_eq!(half.attempts(), 200 - aborted);
}

#[tokio::test]
async fn fault_delay_applies_only_to_its_rule() {
    let mut m = Mesh::new(68);
    let ratings = m.service("ratings").endpoint("ratings", 10, "ratings");
    // As in Istio's bookinfo: jason's requests are delayed, everyone else's are not.
    m.route(
        "ratings",
        "origin: VIRTUAL_SERVICE, matches: [{headers: [{type: Exact, name: end-user, value: jason}]}], fault: {delay: {fixedDelayMs: 300}}",
    )
    .route("ratings", "origin: VIRTUAL_SERVICE");
    let ratings = faulty::ok(ratings, "ratings").await;
    let w = m.start().await;

    let a = w.get("ratings", "/", &[("end-user", "jason")]).await;
    assert_eq!((a.status, a.served_by()), (200, "ratings"), "{a:?}");
    assert!(
        a.elapsed >= Duration::from_millis(300),
        "delayed by {:?}",
        a.elapsed
    );
    let mut fastest = Duration::MAX;
    for user in ["", "mike", "jasonx"] {
        let a = w.get("ratings", "/", &[("end-user", user)]).await;
        assert_eq!((a.status, a.served_by()), (200, "ratings"), "{a:?}");
        fastest = fastest.min(a.elapsed);
    }
    assert!(
        fastest < Duration::from_millis(300),
        "other users were delayed too: {fastest:?}"
    );
    assert_eq!(ratings.attempts(), 4, "a delay still sends the request");
    assert_eq!(w.requests("ratings", Some(200), Some("DI")).await, 1.0);
}

#[tokio::test]
async fn grpc_fault_abort_is_a_trailers_only_answer() {
    let mut m = Mesh::new(69);
    let grpc = m.service_with("grpc", "grpc").endpoint("grpc", 10, "grpc");
    m.route(
        "grpc",
        "fault: {abort: {httpStatus: 503, grpcStatus: 14, percent: 100}}",
    );
    // A backend that would answer 200 without a grpc-status: only the abort can produce one.
    let grpc = faulty::ok(grpc, "grpc").await;
    let w = m.start().await;

    let stream = w.source.connect(&authority("grpc")).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri("http://grpc.demo.svc.cluster.local/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "gRPC errors travel in grpc-status");
    assert_eq!(resp.headers()["grpc-status"], "14", "{:?}", resp.headers());
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/grpc")
    );
    let body = resp.into_body().collect().await.unwrap();
    assert!(
        body.trailers().is_none(),
        "trailers-only: no separate trailers"
    );
    assert!(body.to_bytes().is_empty());
    assert_eq!(grpc.attempts(), 0);
    assert_eq!(w.requests("grpc", None, Some("FI")).await, 1.0);
}

#[tokio::test]
async fn circuit_breaking_overflows_at_once_with_uo() {
    const DELAY: Duration = Duration::from_millis(1500);
    let mut m = Mesh::new(70);
    let slow = m.service("slow").endpoint("slow", 10, "slow");
    m.route("slow", "retry: {attempts: 0}").policy(
        "slow",
        "policy: {connectionPool: {maxConnections: 1, http1MaxPendingRequests: 1}}",
    );
    let slow = faulty::slow(slow, "slow", DELAY).await;
    let w = m.start().await;
    // The client's HBONE connection and the upstream connection exist before the burst.
    assert_eq!(w.get("slow", "/", &[]).await.status, 200);

    let (a, b, c, d, e) = tokio::join!(
        w.get("slow", "/1", &[]),
        w.get("slow", "/2", &[]),
        w.get("slow", "/3", &[]),
        w.get("slow", "/4", &[]),
        w.get("slow", "/5", &[]),
    );
    let answers = [a, b, c, d, e];
    let served = answers.iter().filter(|a| a.status == 200).count();
    let overflowed: Vec<_> = answers
        .iter()
        .filter(|a| a.status == 503 && a.served_by().is_empty())
        .collect();
    assert_eq!(
        served + overflowed.len(),
        5,
        "only 200s and overflows: {answers:?}"
    );
    // One connection, one pending request: the other three overflow (allow one of them to have slipped in).
    assert!(
        overflowed.len() >= 2 && served >= 1,
        "{served} served, {} overflowed",
        overflowed.len()
    );
    for o in &overflowed {
        assert!(o.elapsed < DELAY / 3, "an overflow waited {:?}", o.elapsed);
    }
    assert_eq!(
        slow.max_in_flight(),
        1,
        "one connection: one request at once"
    );
    assert_eq!(
        w.requests("slow", Some(503), Some("UO")).await,
        overflowed.len() as f64
    );
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_endpoint() {
    let mut m = Mesh::new(71);
    let dead = m.service("halfdead").endpoint("dead", 10, "halfdead");
    let alive = m.endpoint("alive", 11, "halfdead");
    let dead = faulty::refuse(dead, "dead");
    let alive = faulty::ok(alive, "alive").await;
    let w = m.start().await;
    // No route: the default policy retries connect failures, and a retry picks the other endpoint.
    for _ in 0..20 {
        let a = w.get("halfdead", "/", &[]).await;
        assert_eq!((a.status, a.served_by()), (200, "alive"), "{a:?}");
    }
    assert_eq!(alive.attempts(), 20);
    assert_eq!(dead.attempts(), 0);
    assert_eq!(w.requests("halfdead", Some(200), None).await, 20.0);
}

#[tokio::test]
async fn cors_preflight_and_direct_response() {
    const ALLOWED: &str = "https://allowed.example";
    let mut m = Mesh::new(71);
    let web = m.service("web").endpoint("web", 20, "web");
    m.service("static");
    m.route(
        "web",
        &format!(
            "cors: {{allowOrigins: [{{type: EXACT, value: \"{ALLOWED}\"}}], allowMethods: [GET, POST], allowHeaders: [x-custom], exposeHeaders: [x-served-by], maxAgeS: 600}}"
        ),
    )
    .route(
        "static",
        "backends: [], directResponse: {status: 403, body: denied by policy}",
    );
    let web = faulty::ok(web, "web").await;
    let w = m.start().await;

    // A preflight from an allowed origin is answered by the waypoint.
    let preflight = |origin| {
        [
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-custom"),
        ]
    };
    let a = w
        .send("web", "OPTIONS", "/api", &preflight(ALLOWED), Bytes::new())
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some(ALLOWED),
        "{a:?}"
    );
    let methods = a.header("access-control-allow-methods").unwrap_or("");
    assert!(methods.contains("POST"), "{a:?}");
    assert!(
        a.header("access-control-allow-headers")
            .unwrap_or("")
            .contains("x-custom"),
        "{a:?}"
    );
    assert_eq!(a.header("access-control-max-age"), Some("600"), "{a:?}");
    assert_eq!(
        web.attempts(),
        0,
        "the preflight was answered by the waypoint"
    );

    // Another origin gets no CORS headers (its preflight goes on to the backend, as Istio's FORWARD default).
    let a = w
        .send(
            "web",
            "OPTIONS",
            "/api",
            &preflight("https://evil.example"),
            Bytes::new(),
        )
        .await;
    assert!(
        a.headers
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-")),
        "{a:?}"
    );

    // The actual request from the allowed origin carries the CORS response headers.
    let a = w.get("web", "/api", &[("origin", ALLOWED)]).await;
    assert_eq!((a.status, a.served_by()), (200, "web"), "{a:?}");
    assert_eq!(a.header("access-control-allow-origin"), Some(ALLOWED));
    assert!(
        a.header("access-control-expose-headers")
            .unwrap_or("")
            .contains("x-served-by"),
        "{a:?}"
    );

    // A direct response: its status and body, no backend.
    let a = w.get("static", "/anything", &[]).await;
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(a.body.trim(), "denied by policy");
}
