//! `ambit echo` over real sockets: HTTP/1.1, h2c, JSON, status codes, TCP echo and whoami.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use ambit::echo::{self, Identity};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn identity() -> Arc<Identity> {
    Arc::new(Identity {
        hostname: "host-1".into(),
        pod: "server-abc".into(),
        namespace: "demo".into(),
    })
}

async fn http_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(echo::serve_http(l, identity()));
    addr
}

async fn raw_http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn http1_echoes_who_and_what() {
    let addr = http_server().await;
    let out = raw_http(
        addr,
        "GET /hello HTTP/1.1\r\nHost: svc\r\nX-Test: yes\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    for want in [
        "pod=server-abc",
        "namespace=demo",
        "hostname=host-1",
        "method=GET",
        "path=/hello",
        "version=HTTP/1.1",
        "header x-test=yes",
        "peer=127.0.0.1:",
    ] {
        assert!(out.contains(want), "{want} missing in {out}");
    }
}

#[tokio::test]
async fn json_and_status_codes() {
    let addr = http_server().await;
    let out = raw_http(
        addr,
        "GET /x?format=json HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
    )
    .await;
    let body = out.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["pod"], "server-abc");
    assert_eq!(v["headers"]["host"], "svc");
    let out = raw_http(
        addr,
        "GET /status/503 HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    let addr = http_server().await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{addr}/h2"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("version=HTTP/2.0"), "{text}");
    assert!(text.contains("path=/h2"), "{text}");
}

#[tokio::test]
async fn tcp_echo_and_whoami() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(echo::serve_tcp(Some(l), identity()));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"whoami\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"server-abc\n");
    s.write_all(b"ping").await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"ping");
}

#[tokio::test]
async fn whoami_in_pieces_and_plain_echo() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(echo::serve_tcp(Some(l), identity()));

    // `whoami\n` split over two writes is still recognised.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"who").await.unwrap();
    tokio::task::yield_now().await;
    s.write_all(b"ami\n").await.unwrap();
    let want = b"server-abc\n".to_vec();
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, want);

    // Anything else, including a line that only starts like it, comes back unchanged.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"whoever\n").await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"whoever\n");
}
