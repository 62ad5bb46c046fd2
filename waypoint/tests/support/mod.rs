//! Test parts: a client that speaks HBONE to the waypoint as a source ztunnel would (the client workload's own
//! identity), backends that answer who they are and what they saw, and a fake destination ztunnel.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::cert::{CertManager, Priority};
use ambit_core::hbone::{self, Connect, H2Config, H2Stream, HboneClient, HboneError, PoolKey};
use ambit_core::tls::{ClientTlsStream, TlsAcceptor, TlsBackend, TlsConnector};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub mod ads;
pub mod faulty;
pub mod tls_peers;

pub fn certs(ca_dir: &Path) -> Arc<CertManager> {
    let ca = LocalCa::load_or_create(ca_dir, "cluster.local").unwrap();
    CertManager::new(Arc::new(ca), std::time::Duration::from_secs(3600))
}

pub struct ClientConnector {
    pub certs: Arc<CertManager>,
}

#[async_trait::async_trait]
impl Connect for ClientConnector {
    type Io = ClientTlsStream<TcpStream>;

    async fn connect(&self, key: &PoolKey) -> Result<Self::Io, HboneError> {
        let cert = self
            .certs
            .fetch(&key.src_identity, Priority::RealTime)
            .await
            .map_err(|e| HboneError::Transport(e.to_string()))?;
        let tcp = TcpStream::connect(key.dst)
            .await
            .map_err(|e| HboneError::Transport(e.to_string()))?;
        TlsConnector::new(cert, TlsBackend::Rustls)
            .unwrap()
            .connect(tcp, &key.dst_identities)
            .await
            .map_err(|e| HboneError::Tls(e.to_string()))
    }
}

/// The `reviews` service of the L4-policy tests: a VIP `10.96.<net>.20:9080` bound to the waypoint, the client
/// workload `demo/client` at `127.0.<net>.2` and one plain-TCP backend at `127.0.<net>.21:18081`.
pub const REVIEWS: &str = "reviews.demo.svc.cluster.local:9080";

/// [`reviews_world`] on `net` with `ratings` and `details`, each one HBONE workload (`127.0.<dest_net>.31`, `.32`)
/// of its own service account: destinations behind ztunnels of their own ([`fake_ztunnel`]).
pub fn reviews_world_with_destinations(net: u8, dest_net: u8) -> String {
    let mut services = String::new();
    let mut workloads = String::new();
    for (name, host) in [("ratings", 31), ("details", 32)] {
        services.push_str(&format!(
            "- {{name: {name}, namespace: demo, hostname: {name}.demo.svc.cluster.local,\n   \
             ports: [{{port: 9080, targetPort: 9080, protocol: http1}}]}}\n"
        ));
        workloads.push_str(&format!(
            "- {{uid: {name}, name: {name}-0, namespace: demo, serviceAccount: {name}, ips: [127.0.{dest_net}.{host}],\n   \
             tunnel: HBONE, services: {{demo/{name}.demo.svc.cluster.local: {{9080: 9080}}}}}}\n"
        ));
    }
    let world = reviews_world(net).replace("workloads:\n", &format!("{services}workloads:\n"));
    format!("{world}{workloads}")
}

/// The waypoint's local config for [`REVIEWS`] on loopback net `net`.
pub fn reviews_world(net: u8) -> String {
    format!(
        r#"
services:
- {{name: reviews, namespace: demo, hostname: reviews.demo.svc.cluster.local, vips: [10.96.{net}.20],
   ports: [{{port: 9080, targetPort: 18081, protocol: http1}}],
   waypoint: {{namespace: demo, hostname: waypoint.demo.svc.cluster.local}}}}
workloads:
- {{uid: client, name: client-0, namespace: demo, serviceAccount: client, ips: [127.0.{net}.2], workloadName: client}}
- {{uid: v1, name: backend-0, namespace: demo, ips: [127.0.{net}.21], tunnel: NONE,
   services: {{demo/reviews.demo.svc.cluster.local: {{9080: 18081}}}}}}
"#
    )
}

/// Dials with one fixed certificate, whatever it is, through ambit's own connector (under the process policy).
pub struct Fixed(pub Arc<ambit_core::tls::WorkloadCert>);

#[async_trait::async_trait]
impl Connect for Fixed {
    type Io = ClientTlsStream<TcpStream>;

    async fn connect(&self, key: &PoolKey) -> Result<Self::Io, HboneError> {
        let tcp = TcpStream::connect(key.dst)
            .await
            .map_err(|e| HboneError::Transport(e.to_string()))?;
        TlsConnector::new(self.0.clone(), TlsBackend::Rustls)
            .unwrap()
            .connect(tcp, &key.dst_identities)
            .await
            .map_err(|e| HboneError::Tls(e.to_string()))
    }
}

/// A ready waypoint `demo/waypoint` with its certificate from the local CA in `ca` and its config from the YAML
/// file `config` (watched), listening on loopback ports of its choosing; `extra` adds to its environment. With it,
/// a [`Source`] that reaches it as the `demo/client` workload at `client_addr`.
pub async fn start_waypoint(
    ca: &Path,
    config: &Path,
    client_addr: SocketAddr,
    extra: &[(&str, &str)],
) -> (ambit_waypoint::app::Running, Source) {
    let mut env: std::collections::HashMap<String, String> = [
        ("LOCAL_CA_DIR", ca.to_str().unwrap()),
        ("LOCAL_XDS_PATH", config.to_str().unwrap()),
        ("POD_NAMESPACE", "demo"),
        ("GATEWAY_NAME", "waypoint"),
        ("INSTANCE_IP", "127.0.0.1"),
        ("WAYPOINT_HBONE_ADDR", "127.0.0.1:0"),
        ("WAYPOINT_ADMIN_ADDR", "127.0.0.1:0"),
        ("WAYPOINT_STATS_ADDR", "127.0.0.1:0"),
        ("WAYPOINT_READINESS_ADDR", "127.0.0.1:0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let cfg = ambit_waypoint::config::Config::from_env(&env).unwrap();
    let waypoint_id = cfg.identity();
    let waypoint = ambit_waypoint::app::start(cfg, ambit_core::logging::LogHandle::noop())
        .await
        .unwrap();
    // Ready once its own certificate is there.
    for _ in 0..100 {
        if waypoint.readiness.is_ready() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        waypoint.readiness.is_ready(),
        "pending: {:?}",
        waypoint.readiness.pending()
    );
    let source = Source {
        hbone: HboneClient::new(
            Arc::new(H2Config::default()),
            ClientConnector { certs: certs(ca) },
        ),
        me: Identity::new("cluster.local", "demo", "client"),
        waypoint: waypoint_id,
        waypoint_addr: waypoint.addresses.hbone,
        client_addr,
    };
    (waypoint, source)
}

/// A source ztunnel: opens CONNECT streams to the waypoint as `client`, from `client_addr`.
pub struct Source {
    pub hbone: HboneClient<ClientConnector>,
    pub me: Identity,
    pub waypoint: Identity,
    pub waypoint_addr: SocketAddr,
    pub client_addr: SocketAddr,
}

impl Source {
    pub async fn connect(&self, authority: &str) -> Result<H2Stream, HboneError> {
        let key = PoolKey {
            src_identity: self.me.clone(),
            dst_identities: vec![self.waypoint.clone()],
            dst: self.waypoint_addr,
            src_ip: self.client_addr.ip(),
        };
        let req = Request::builder()
            .method(http::Method::CONNECT)
            .uri(authority)
            .header("forwarded", format!("for=\"{}\"", self.client_addr))
            .body(())
            .unwrap();
        self.hbone.connect(key, req).await.map(|(s, _)| s)
    }

    /// One HTTP/1.1 request over a fresh CONNECT stream; returns status, headers and body.
    pub async fn get(
        &self,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, http::HeaderMap, String) {
        let stream = self.connect(authority).await.expect("CONNECT");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder().uri(path).header("host", authority);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = send
            .send_request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status.as_u16(),
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// Raw bytes over a CONNECT stream; returns everything the waypoint answers until it closes or 2 s pass.
    pub async fn raw(&self, authority: &str, bytes: &[u8]) -> String {
        String::from_utf8_lossy(&self.raw_bytes(authority, bytes).await).into_owned()
    }

    pub async fn raw_bytes(&self, authority: &str, bytes: &[u8]) -> Vec<u8> {
        let mut s = self.connect(authority).await.expect("CONNECT");
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
        out
    }
}

/// An HTTP backend (HTTP/1.1 and h2c) that answers `<name> <method> <path>` and echoes what it saw in headers;
/// `Upgrade: websocket` requests get 101 and then an echo of the bytes.
pub async fn http_backend(addr: SocketAddr, name: &'static str) {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(serve_echo(s, name));
        }
    });
}

pub async fn serve_echo<IO>(io: IO, name: &'static str)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |mut req: Request<Incoming>| async move {
        let h = req.headers().clone();
        let seen = |k: &str| {
            h.get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        if h.contains_key("upgrade") {
            let up = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(u) = up.await {
                    let mut io = TokioIo::new(u);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let r = Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(Full::new(Bytes::new()))
                .unwrap();
            return Ok::<_, Infallible>(r);
        }
        if req.uri().path() == "/slow" {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        let r = Response::builder()
            .header("x-echo-request-id", seen("x-request-id"))
            .header("x-echo-traceparent", seen("traceparent"))
            .header("x-echo-host", seen("host"))
            .header("x-echo-added", seen("x-added"))
            .header("x-echo-xff", seen("x-forwarded-for"))
            .header("x-echo-xfcc", seen("x-forwarded-client-cert"))
            .header("x-echo-body", body.to_string())
            .body(Full::new(Bytes::from(format!("{name}\n"))))
            .unwrap();
        Ok(r)
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await;
}

pub async fn tcp_echo(addr: SocketAddr) {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// What a fake destination ztunnel saw: (CONNECT authority, peer identity).
pub type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A destination ztunnel on `ip:15008` as `identity`: records each CONNECT and serves an echo backend on the
/// stream itself (named `name`), as the real one would hand it to the pod.
pub async fn fake_ztunnel(
    ip: &str,
    identity: &Identity,
    certs: Arc<CertManager>,
    name: &'static str,
) -> Seen {
    let seen: Seen = Arc::default();
    let cert = certs.fetch(identity, Priority::RealTime).await.unwrap();
    let acceptor = TlsAcceptor::new(cert, TlsBackend::Rustls).unwrap();
    let l = TcpListener::bind(format!("{ip}:15008")).await.unwrap();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = s2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls.peer_identity().map(|i| i.to_string());
                let (_trigger, drain) = ambit_core::drain::new();
                let _ = hbone::serve(
                    tls,
                    Arc::new(H2Config::default()),
                    drain,
                    move |parts, responder| {
                        let seen = seen.clone();
                        let peer = peer.clone();
                        async move {
                            let authority = parts
                                .uri
                                .authority()
                                .map(|a| a.to_string())
                                .unwrap_or_default();
                            seen.lock().unwrap().push((authority, peer));
                            if let Ok(stream) = responder.accept(http::HeaderMap::new()) {
                                serve_echo(stream, name).await;
                            }
                        }
                    },
                )
                .await;
            });
        }
    });
    seen
}

/// `GET path` on a plain HTTP/1.1 port (the waypoint's admin or stats port); the body as text.
pub async fn get_text(addr: SocketAddr, path: &str) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", "x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}
