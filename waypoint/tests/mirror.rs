//! In-process: `RequestMirror` through a real waypoint. The mirror backend records what it receives; the real
//! backend answers with the size of the body it read. Addresses are 127.0.91.x and 127.0.92.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use ambit_waypoint::app::Running;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::Source;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const ORDERS: &str = "orders.demo.svc.cluster.local:80";
const ORDERS_STUCK: &str = "orders-stuck.demo.svc.cluster.local:80";

fn config(net: u8) -> String {
    r#"
services:
- {name: orders, namespace: demo, hostname: orders.demo.svc.cluster.local, ports: [{port: 80, targetPort: 18080, protocol: http1}]}
- {name: orders-stuck, namespace: demo, hostname: orders-stuck.demo.svc.cluster.local, ports: [{port: 80, targetPort: 18080, protocol: http1}]}
- {name: shadow, namespace: demo, hostname: shadow.demo.svc.cluster.local, ports: [{port: 80, targetPort: 18090, protocol: http1}]}
- {name: stuck, namespace: demo, hostname: stuck.demo.svc.cluster.local, ports: [{port: 80, targetPort: 18091, protocol: http1}]}
workloads:
- {uid: client, name: client-0, namespace: demo, serviceAccount: client, ips: [127.0.91.2], workloadName: client}
- {uid: v1, name: orders-0, namespace: demo, ips: [127.0.91.21], tunnel: NONE,
   services: {demo/orders.demo.svc.cluster.local: {80: 18080}, demo/orders-stuck.demo.svc.cluster.local: {80: 18080}}}
- {uid: shadow, name: shadow-0, namespace: demo, ips: [127.0.91.22], tunnel: NONE,
   services: {demo/shadow.demo.svc.cluster.local: {80: 18090}, demo/stuck.demo.svc.cluster.local: {80: 18091}}}
routes:
- name: demo/httproute/orders/0
  parents: [{kind: SERVICE, name: orders.demo.svc.cluster.local}]
  filters: [{requestMirror: {backend: {hostname: shadow.demo.svc.cluster.local, port: 80}}}]
  backends: [{hostname: orders.demo.svc.cluster.local, port: 80, weight: 1}]
- name: demo/httproute/orders-stuck/0
  parents: [{kind: SERVICE, name: orders-stuck.demo.svc.cluster.local}]
  filters: [{requestMirror: {backend: {hostname: stuck.demo.svc.cluster.local, port: 80}}}]
  backends: [{hostname: orders.demo.svc.cluster.local, port: 80, weight: 1}]
"#
    .replace("127.0.91.", &format!("127.0.{net}."))
}

/// What the mirror backend saw: method, path, `x-tag` header and body.
type Seen = (String, String, String, Vec<u8>);

/// An HTTP/1.1 backend that reads each body to its end and reports it; `read: false` never reads bodies.
async fn recorder(addr: SocketAddr, read: bool) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let (p, body) = req.into_parts();
                        if !read {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        let body = match body.collect().await {
                            Ok(b) => b.to_bytes().to_vec(),
                            Err(_) => b"<aborted>".to_vec(),
                        };
                        let tag = p
                            .headers
                            .get("x-tag")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let _ = tx.send((p.method.to_string(), p.uri.to_string(), tag, body));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"shadow"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    rx
}

struct World {
    _dir: tempfile::TempDir,
    _waypoint: Running,
    source: Source,
}

async fn world(net: u8) -> World {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let file = dir.path().join("waypoint.yaml");
    std::fs::write(&file, config(net)).unwrap();
    let (waypoint, source) = support::start_waypoint(
        &ca,
        &file,
        format!("127.0.{net}.2:40000").parse().unwrap(),
        &[],
    )
    .await;
    support::http_backend(format!("127.0.{net}.21:18080").parse().unwrap(), "orders").await;
    World {
        _dir: dir,
        _waypoint: waypoint,
        source,
    }
}

/// One HTTP/1.1 request with a body over a fresh CONNECT stream: status and the `x-echo-body` the real
/// backend answered (how many body bytes it read).
async fn send(
    s: &Source,
    authority: &str,
    method: &str,
    tag: &str,
    body: Vec<u8>,
) -> (u16, String) {
    let stream = s.connect(authority).await.expect("CONNECT");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri("/orders?id=7")
        .header("host", authority)
        .header("x-tag", tag)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let read = resp
        .headers()
        .get("x-echo-body")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let _ = resp.into_body().collect().await;
    (status, read)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the mirror saw nothing within 5 s")
        .unwrap()
}

#[tokio::test]
async fn mirrors_carry_the_request_and_its_body() {
    let w = world(91).await;
    let mut shadow = recorder("127.0.91.22:18090".parse().unwrap(), true).await;

    // Without a body.
    assert_eq!(
        send(&w.source, ORDERS, "GET", "get", vec![]).await,
        (200, "0".into())
    );
    let (method, path, tag, body) = next(&mut shadow).await;
    assert_eq!(
        (method.as_str(), path.as_str(), tag.as_str()),
        ("GET", "/orders?id=7", "get")
    );
    assert!(body.is_empty());

    // With a body larger than one frame: both backends get all of it.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        send(&w.source, ORDERS, "POST", "post", payload.clone()).await,
        (200, payload.len().to_string())
    );
    let (method, _, tag, body) = next(&mut shadow).await;
    assert_eq!((method.as_str(), tag.as_str()), ("POST", "post"));
    assert_eq!(body.len(), payload.len());
    assert!(body == payload, "the mirrored body differs");
}

#[tokio::test]
async fn a_stuck_mirror_does_not_hold_up_the_request() {
    let w = world(92).await;
    // The `stuck` mirror backend accepts requests and never reads their bodies.
    let _stuck = recorder("127.0.92.22:18091".parse().unwrap(), false).await;
    let payload = vec![b'x'; 2 * 1024 * 1024];
    let answered = tokio::time::timeout(
        Duration::from_secs(10),
        send(&w.source, ORDERS_STUCK, "PUT", "big", payload.clone()),
    )
    .await
    .expect("the real request waited on the mirror");
    assert_eq!(answered, (200, payload.len().to_string()));
    // And the next one too (the stuck mirror holds nothing of the waypoint's).
    assert_eq!(
        send(&w.source, ORDERS_STUCK, "GET", "again", vec![]).await,
        (200, "0".into())
    );
}
