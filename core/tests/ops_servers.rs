//! The metrics, readiness and admin servers over real TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ambit_core::admin::{AdminServer, ConfigDump};
use ambit_core::drain;
use ambit_core::logging;
use ambit_core::metrics::{register_build_info, serve_metrics, serve_readiness};
use ambit_core::readiness::Readiness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sends one HTTP/1.1 request and returns (status line, headers + body).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    accept: Option<&str>,
) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{accept}Content-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (status, rest) = out.split_once("\r\n").unwrap();
    (status.to_owned(), rest.to_owned())
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

#[tokio::test]
async fn metrics_negotiates_content_type_and_404s() {
    let mut registry = prometheus_client::registry::Registry::default();
    register_build_info(&mut registry, "ztunnel");
    let (l, addr) = listener().await;
    let (_trigger, w) = drain::new();
    tokio::spawn(serve_metrics(l, Arc::new(registry), w));

    let (status, body) = request(addr, "GET", "/metrics", None).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.to_ascii_lowercase()
            .contains("content-type: text/plain; charset=utf-8"),
        "{body}"
    );
    assert!(body.contains("istio_build{component=\"ztunnel\""), "{body}");

    let (_, body) = request(
        addr,
        "GET",
        "/stats/prometheus",
        Some("application/openmetrics-text; version=1.0.0"),
    )
    .await;
    assert!(
        body.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{body}"
    );
    assert!(body.contains("# EOF"));

    let (status, _) = request(addr, "GET", "/nope", None).await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[tokio::test]
async fn readiness_lists_pending_tasks_until_ready() {
    let ready = Readiness::new();
    let guard = ready.register_task("state manager");
    let (l, addr) = listener().await;
    let (_trigger, w) = drain::new();
    tokio::spawn(serve_readiness(l, ready.clone(), w));

    let (status, body) = request(addr, "GET", "/healthz/ready", None).await;
    assert_eq!(status, "HTTP/1.1 500 Internal Server Error");
    assert!(
        body.ends_with("not ready, pending: state manager\n"),
        "{body}"
    );
    drop(guard);
    let (status, body) = request(addr, "GET", "/healthz/ready", None).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.ends_with("ready\n"));
}

struct Dump;

impl ConfigDump for Dump {
    fn config_dump(&self) -> serde_json::Value {
        serde_json::json!({"workloads": [{"name": "w"}]})
    }
}

#[tokio::test]
async fn admin_routes() {
    // The one process-wide subscriber of this test binary.
    let log = logging::init("info", false);
    let quits = Arc::new(AtomicUsize::new(0));
    let q = quits.clone();
    let (l, addr) = listener().await;
    let (_trigger, w) = drain::new();
    let admin = AdminServer::new(
        l,
        log,
        Box::new(move || {
            q.fetch_add(1, Ordering::SeqCst);
        }),
        Arc::new(Dump),
    );
    tokio::spawn(admin.run(w));

    let (status, body) = request(addr, "GET", "/config_dump", None).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let json: serde_json::Value =
        serde_json::from_str(body.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(json["workloads"][0]["name"], "w");

    let (_, body) = request(addr, "POST", "/logging?level=debug", None).await;
    assert!(body.ends_with("current log level is debug\n"), "{body}");
    let (status, _) = request(addr, "POST", "/logging?level=not%20a%20level%5B", None).await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    let (_, body) = request(addr, "POST", "/logging?reset", None).await;
    assert!(body.ends_with("current log level is info\n"), "{body}");

    let (status, _) = request(addr, "GET", "/quitquitquit", None).await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(quits.load(Ordering::SeqCst), 0);
    let (status, body) = request(addr, "POST", "/quitquitquit", None).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.ends_with("shutdown now\n"));
    assert_eq!(quits.load(Ordering::SeqCst), 1);

    let (status, _) = request(addr, "GET", "/unknown", None).await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}
