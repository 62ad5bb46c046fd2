//! In-process: a real waypoint (its own certificate from a local CA directory, config from a watched YAML file)
//! between a source that speaks HBONE as a ztunnel does and backends that are plain TCP workloads or sit behind a
//! fake destination ztunnel. Addresses are 127.0.72.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::hbone::{H2Config, HboneClient};
use ambit_waypoint::app::{self, Running};
use ambit_waypoint::config::Config;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{ClientConnector, Source};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Each test has its own `127.0.<net>.x` block (tests run in parallel); hosts within a block:
const CLIENT: u8 = 2;
const V1: u8 = 21;
const V2: u8 = 22;
const H2: u8 = 23;
const TCP: u8 = 24;
const DEAD: u8 = 25;

fn ip(net: u8, host: u8) -> String {
    format!("127.0.{net}.{host}")
}
const REVIEWS: &str = "reviews.demo.svc.cluster.local:9080";

/// The world, with the `reviews` routes given.
fn config(net: u8, reviews_rules: &str) -> String {
    let (client, v1, v2, h2, tcp, dead) = (
        ip(net, CLIENT),
        ip(net, V1),
        ip(net, V2),
        ip(net, H2),
        ip(net, TCP),
        ip(net, DEAD),
    );
    format!(
        r#"
services:
- {{name: reviews, namespace: demo, hostname: reviews.demo.svc.cluster.local, vips: [10.96.72.20],
   ports: [{{port: 9080, targetPort: 9080, protocol: http1}}],
   waypoint: {{namespace: demo, hostname: waypoint.demo.svc.cluster.local}}}}
- {{name: reviews-v1, namespace: demo, hostname: reviews-v1.demo.svc.cluster.local, ports: [{{port: 9080, targetPort: 18081}}]}}
- {{name: reviews-v2, namespace: demo, hostname: reviews-v2.demo.svc.cluster.local, ports: [{{port: 9080, targetPort: 18082}}]}}
- {{name: grpc, namespace: demo, hostname: grpc.demo.svc.cluster.local, ports: [{{port: 80, targetPort: 18083, protocol: grpc}}]}}
- {{name: raw, namespace: demo, hostname: raw.demo.svc.cluster.local, ports: [{{port: 7000, targetPort: 17000, protocol: tcp}}]}}
- {{name: sniffed, namespace: demo, hostname: sniffed.demo.svc.cluster.local, ports: [{{port: 7001, targetPort: 17000}}]}}
- {{name: empty, namespace: demo, hostname: empty.demo.svc.cluster.local, ports: [{{port: 80, targetPort: 80}}]}}
- {{name: dead, namespace: demo, hostname: dead.demo.svc.cluster.local, ports: [{{port: 80, targetPort: 1}}]}}
workloads:
- {{uid: client, name: client-0, namespace: demo, serviceAccount: client, ips: [{client}], workloadName: client}}
- {{uid: v1, name: reviews-v1-0, namespace: demo, serviceAccount: reviews, ips: [{v1}], tunnel: NONE, workloadName: reviews-v1,
   services: {{demo/reviews.demo.svc.cluster.local: {{9080: 18081}}, demo/reviews-v1.demo.svc.cluster.local: {{9080: 18081}}}}}}
- {{uid: v2, name: reviews-v2-0, namespace: demo, serviceAccount: reviews, ips: [{v2}], tunnel: HBONE, workloadName: reviews-v2,
   services: {{demo/reviews.demo.svc.cluster.local: {{9080: 18082}}, demo/reviews-v2.demo.svc.cluster.local: {{9080: 18082}}}}}}
- {{uid: h2, name: grpc-0, namespace: demo, ips: [{h2}], tunnel: NONE, services: {{demo/grpc.demo.svc.cluster.local: {{80: 18083}}}}}}
- {{uid: tcp, name: raw-0, namespace: demo, ips: [{tcp}], tunnel: NONE,
   services: {{demo/raw.demo.svc.cluster.local: {{7000: 17000}}, demo/sniffed.demo.svc.cluster.local: {{7001: 17000}}}}}}
- {{uid: dead, name: dead-0, namespace: demo, ips: [{dead}], tunnel: NONE, services: {{demo/dead.demo.svc.cluster.local: {{80: 1}}}}}}
routes:
{reviews_rules}
- name: demo/httproute/strict/0
  parents: [{{kind: SERVICE, name: empty.demo.svc.cluster.local}}]
  matches: [{{path: {{type: Exact, value: /only}}}}]
  backends: [{{hostname: gone.demo.svc.cluster.local, port: 80, weight: 1}}]
"#
    )
}

const CANARY: &str = r#"
- name: demo/httproute/reviews/0
  namespace: demo
  routeName: reviews
  parents: [{kind: SERVICE, name: reviews.demo.svc.cluster.local, port: 9080}]
  matches: [{headers: [{type: Exact, name: end-user, value: jason}]}]
  filters: [{requestHeaderModifier: {set: [{name: x-added, value: by-route}]}}]
  backends: [{hostname: reviews-v2.demo.svc.cluster.local, port: 9080, weight: 1}]
- name: demo/httproute/reviews/1
  namespace: demo
  routeName: reviews
  ruleIndex: 1
  parents: [{kind: SERVICE, name: reviews.demo.svc.cluster.local, port: 9080}]
  filters: [{responseHeaderModifier: {add: [{name: x-canary, value: "yes"}]}}]
  backends:
  - {hostname: reviews-v1.demo.svc.cluster.local, port: 9080, weight: 80}
  - {hostname: reviews-v2.demo.svc.cluster.local, port: 9080, weight: 20}
- name: demo/httproute/reviews-redirect/0
  namespace: demo
  routeName: reviews-redirect
  parents: [{kind: SERVICE, name: reviews.demo.svc.cluster.local}]
  matches: [{path: {type: PathPrefix, value: /old}}]
  filters: [{requestRedirect: {path: {kind: REPLACE_PREFIX_MATCH, value: /new}, statusCode: 301}}]
"#;

const ALL_V1: &str = r#"
- name: demo/httproute/reviews/0
  namespace: demo
  routeName: reviews
  parents: [{kind: SERVICE, name: reviews.demo.svc.cluster.local}]
  backends: [{hostname: reviews-v1.demo.svc.cluster.local, port: 9080, weight: 1}]
"#;

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

struct World {
    net: u8,
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
    waypoint: Running,
    source: Source,
    v2_seen: support::Seen,
}

async fn world(net: u8) -> World {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let file = dir.path().join("waypoint.yaml");
    write(&file, &config(net, CANARY));
    let (waypoint, source) = support::start_waypoint(
        &ca,
        &file,
        format!("{}:40000", ip(net, CLIENT)).parse().unwrap(),
        &[("PROTOCOL_DETECT_TIMEOUT", "200ms")],
    )
    .await;

    support::http_backend(
        format!("{}:18081", ip(net, V1)).parse().unwrap(),
        "reviews-v1",
    )
    .await;
    support::http_backend(format!("{}:18083", ip(net, H2)).parse().unwrap(), "grpc").await;
    support::tcp_echo(format!("{}:17000", ip(net, TCP)).parse().unwrap()).await;
    let certs = support::certs(&ca);
    let reviews = Identity::new("cluster.local", "demo", "reviews");
    let v2_seen = support::fake_ztunnel(&ip(net, V2), &reviews, certs.clone(), "reviews-v2").await;
    World {
        net,
        _dir: dir,
        file,
        waypoint,
        source,
        v2_seen,
    }
}

fn first_line(body: &str) -> &str {
    body.lines().next().unwrap_or("")
}

#[tokio::test]
async fn routes_splits_and_filters() {
    let w = world(72).await;
    let s = &w.source;

    // Header match → v2 behind its ztunnel: the waypoint's own HBONE, authority podIP:targetPort, its identity.
    for _ in 0..5 {
        let (code, h, body) = s.get(REVIEWS, "/", &[("end-user", "jason")]).await;
        assert_eq!((code, first_line(&body)), (200, "reviews-v2"), "{h:?}");
        assert_eq!(h["x-echo-added"], "by-route");
        assert!(h.get("x-canary").is_none(), "rule 0 has no response filter");
    }
    let seen = w.v2_seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for (authority, peer) in &seen {
        assert_eq!(authority, &format!("{}:18082", ip(w.net, V2)));
        assert_eq!(
            peer.as_deref(),
            Some("spiffe://cluster.local/ns/demo/sa/waypoint")
        );
    }

    // 80/20 split over 200 requests: binomial sd of v2's count is sqrt(200*.2*.8) = 5.7, so 40 ± 20 is ±3.5 sd.
    let mut v2 = 0;
    for _ in 0..200 {
        let (code, h, body) = s.get(REVIEWS, "/", &[]).await;
        assert_eq!(code, 200);
        assert_eq!(h["x-canary"], "yes");
        match first_line(&body) {
            "reviews-v2" => v2 += 1,
            "reviews-v1" => {}
            other => panic!("unexpected backend {other}"),
        }
    }
    assert!((20..=60).contains(&v2), "v2 got {v2} of 200 (expected 40)");

    // Request id generated, trace propagated with a new span, Host kept.
    let (_, h, _) = s
        .get(
            REVIEWS,
            "/",
            &[(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )],
        )
        .await;
    assert_eq!(h["x-echo-request-id"].len(), 36);
    let tp = h["x-echo-traceparent"].to_str().unwrap();
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && !tp.contains("b7ad6b7169203331"),
        "{tp}"
    );
    assert_eq!(h["x-echo-host"], REVIEWS);
    let (_, h, _) = s.get(REVIEWS, "/", &[("x-request-id", "mine")]).await;
    assert_eq!(h["x-echo-request-id"], "mine");

    // Redirect with a prefix rewrite.
    let (code, h, _) = s.get(REVIEWS, "/old/page?x=1", &[]).await;
    assert_eq!(code, 301);
    assert_eq!(
        h["location"],
        "http://reviews.demo.svc.cluster.local:9080/new/page?x=1"
    );

    // A config change applies to the next requests; a broken file changes nothing.
    write(&w.file, &config(w.net, ALL_V1));
    let mut switched = false;
    for _ in 0..50 {
        let (_, _, body) = s.get(REVIEWS, "/", &[("end-user", "jason")]).await;
        if first_line(&body) == "reviews-v1" {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched, "the new routes never applied");
    write(&w.file, "routes: [{{{ not yaml");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (code, _, body) = s.get(REVIEWS, "/", &[("end-user", "jason")]).await;
    assert_eq!(
        (code, first_line(&body)),
        (200, "reviews-v1"),
        "the last good config is kept"
    );
    drop(w.waypoint);
}

#[tokio::test]
async fn synthetic_errors_and_metrics() {
    let w = world(73).await;
    let s = &w.source;
    // A route exists for `empty` and matches nothing → 404 NR; its only rule points at a missing backend → 500.
    assert_eq!(
        s.get("empty.demo.svc.cluster.local:80", "/other", &[])
            .await
            .0,
        404
    );
    assert_eq!(
        s.get("empty.demo.svc.cluster.local:80", "/only", &[])
            .await
            .0,
        500
    );
    // No route and no endpoints → 503 UH; the endpoint refuses → 503 UF.
    assert_eq!(
        s.get("reviews-v1.demo.svc.cluster.local:9080", "/", &[])
            .await
            .0,
        200
    );
    let (code, _, body) = s.get("dead.demo.svc.cluster.local:80", "/", &[]).await;
    assert_eq!(code, 503, "{body}");
    // gRPC callers get their status in a trailers-only answer.
    let (code, h, _) = s
        .get(
            "empty.demo.svc.cluster.local:80",
            "/pkg.Svc/Method",
            &[("content-type", "application/grpc")],
        )
        .await;
    assert_eq!((code, h["grpc-status"].to_str().unwrap()), (200, "12"));
    // An unknown destination is refused at CONNECT.
    assert!(s.connect("10.1.2.3:80").await.is_err());

    // Bad input: a smuggling attempt and oversized headers get an answer; the waypoint keeps serving.
    let smuggle = s
        .raw(
            REVIEWS,
            b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: r\r\n\r\n",
        )
        .await;
    // RFC 9112 §6.3: Transfer-Encoding wins, Content-Length is dropped before forwarding (the backend sees an
    // empty chunked POST), and the connection is closed after the response, so the smuggled GET is never served.
    assert_eq!(smuggle.matches("HTTP/1.1 ").count(), 1, "{smuggle}");
    assert!(smuggle.contains("x-echo-body: 0"), "{smuggle}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: r\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let answer = s.raw(REVIEWS, big.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    let garbage = s
        .raw(REVIEWS, b"\x00\x01\x02 not http at all\r\n\r\n")
        .await;
    assert!(
        garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
        "{garbage}"
    );
    // HTTP/2 protocol error (a HEADERS frame on stream 0 after the preface): the connection gets GOAWAY
    // (frame type 7) with PROTOCOL_ERROR (1) and is closed.
    let mut h2_bad = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_bad.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    h2_bad.extend_from_slice(&[0, 0, 3, 1, 4, 0, 0, 0, 0, 0x82, 0x84, 0x86]); // HEADERS on stream 0
    let answer = s
        .raw_bytes("reviews-v1.demo.svc.cluster.local:9080", &h2_bad)
        .await;
    let goaway = answer
        .windows(9)
        .any(|f| f[3] == 7 && f[5..9] == [0, 0, 0, 0]);
    assert!(goaway, "no GOAWAY in {answer:?}");
    assert_eq!(s.get(REVIEWS, "/", &[("end-user", "jason")]).await.0, 200);

    let metrics = reqwest_metrics(w.waypoint.addresses.stats).await;
    let line = |code: &str, flags: &str| {
        metrics.lines().find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"waypoint\"")
                && l.contains(&format!("response_code=\"{code}\""))
                && l.contains(&format!("response_flags=\"{flags}\""))
        })
    };
    let ok = line("200", "-").expect("a 200 series");
    for want in [
        "source_workload=\"client\"",
        "source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"",
        "destination_service=\"reviews.demo.svc.cluster.local\"",
        "destination_workload=\"reviews-v2\"",
        "destination_principal=\"spiffe://cluster.local/ns/demo/sa/reviews\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("istio_requests_total{") && l.contains(want)),
            "no {want} in\n{ok}"
        );
    }
    assert!(line("404", "NR").is_some(), "{metrics}");
    // The dead backend's connect failures were retried by the default policy, then given up on.
    assert!(line("503", "UF,URX").is_some(), "{metrics}");
    assert!(
        metrics.contains("istio_request_duration_milliseconds_bucket{"),
        "{metrics}"
    );
}

#[tokio::test]
async fn http2_grpc_websocket_and_tcp() {
    let w = world(74).await;
    let s = &w.source;

    // HTTP/2 from the client, gRPC port → HTTP/2 to the backend.
    let stream = s.connect("grpc.demo.svc.cluster.local:80").await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = http::Request::builder()
            .uri("http://grpc.demo.svc.cluster.local/pkg.Echo/Ping")
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-echo-body"], "5");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"grpc\n");
    }

    // WebSocket: the upgrade passes through and bytes flow both ways.
    let up = s
        .raw(
            "reviews-v1.demo.svc.cluster.local:9080",
            b"GET /ws HTTP/1.1\r\nHost: r\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await;
    assert!(up.starts_with("HTTP/1.1 101"), "{up}");
    let mut ws = s
        .connect("reviews-v1.demo.svc.cluster.local:9080")
        .await
        .unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: r\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = ws.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("101"));
    ws.write_all(b"hello over websocket").await.unwrap();
    let mut got = vec![0u8; 20];
    tokio::time::timeout(Duration::from_secs(5), ws.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"hello over websocket");

    // TCP by the port's protocol, and by sniffing (a server-first protocol: nothing sent first).
    for svc in [
        "raw.demo.svc.cluster.local:7000",
        "sniffed.demo.svc.cluster.local:7001",
    ] {
        let mut t = s.connect(svc).await.unwrap();
        let msg = b"\x16\x03\x01 binary bytes";
        t.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), t.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, msg, "{svc}");
    }
    let metrics = reqwest_metrics(w.waypoint.addresses.stats).await;
    assert!(
        metrics.contains("istio_tcp_connections_opened_total{"),
        "{metrics}"
    );
}

#[tokio::test]
async fn drain_lets_in_flight_requests_finish() {
    let w = world(75).await;
    let source = Arc::new(w.source);
    // Warm the HBONE connection, then start a slow request and drain while it is in flight.
    assert_eq!(
        source
            .get("reviews-v1.demo.svc.cluster.local:9080", "/", &[])
            .await
            .0,
        200
    );
    let s2 = source.clone();
    let slow = tokio::spawn(async move {
        s2.get("reviews-v1.demo.svc.cluster.local:9080", "/slow", &[])
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let drained = tokio::spawn(w.waypoint.drain());
    let (code, _, body) = slow.await.unwrap();
    assert_eq!(
        (code, first_line(&body)),
        (200, "reviews-v1"),
        "the in-flight request finished"
    );
    tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("drain finished")
        .unwrap();
    // Graceful: done when the last request was, well before the 5 s deadline.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // Nothing is accepted any more.
    let fresh = Source {
        hbone: HboneClient::new(
            Arc::new(H2Config::default()),
            ClientConnector {
                certs: support::certs(&w._dir.path().join("ca")),
            },
        ),
        me: source.me.clone(),
        waypoint: source.waypoint.clone(),
        waypoint_addr: source.waypoint_addr,
        client_addr: source.client_addr,
    };
    assert!(
        fresh.connect(REVIEWS).await.is_err(),
        "a new connection after the drain"
    );
}

/// GET /metrics from the waypoint's stats port.
async fn reqwest_metrics(addr: std::net::SocketAddr) -> String {
    support::get_text(addr, "/metrics").await
}

#[tokio::test]
async fn not_ready_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("waypoint.yaml");
    write(&file, "");
    let env: HashMap<String, String> = [
        ("CA_ADDRESS", "https://127.0.0.1:1".to_owned()),
        ("CA_ROOT_CA", "SYSTEM".to_owned()),
        ("LOCAL_XDS_PATH", file.to_str().unwrap().to_owned()),
        ("WAYPOINT_HBONE_ADDR", "127.0.0.1:0".to_owned()),
        ("WAYPOINT_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("WAYPOINT_STATS_ADDR", "127.0.0.1:0".to_owned()),
        ("WAYPOINT_READINESS_ADDR", "127.0.0.1:0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let running = app::start(
        Config::from_env(&env).unwrap(),
        ambit_core::logging::LogHandle::noop(),
    )
    .await
    .unwrap();
    // The CA refuses every attempt: the waypoint keeps retrying and never says it is ready.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!running.readiness.is_ready());
    assert_eq!(running.readiness.pending(), ["certificate"]);
}

#[tokio::test]
async fn metrics_on_one_keep_alive_connection() {
    let w = world(77).await;
    // Five requests on one connection, two outcomes: each counted in its own series (the connection caches them).
    let stream = w
        .source
        .connect("empty.demo.svc.cluster.local:80")
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for path in ["/other", "/only", "/other", "/other", "/only"] {
        let req = http::Request::builder()
            .uri(path)
            .header("host", "empty")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let _ = resp.into_body().collect().await.unwrap();
    }
    let metrics = reqwest_metrics(w.waypoint.addresses.stats).await;
    let count = |code: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains("destination_service=\"empty.demo.svc.cluster.local\"")
                    && l.contains(&format!("response_code=\"{code}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!((count("404"), count("500")), (3.0, 2.0), "{metrics}");
}
