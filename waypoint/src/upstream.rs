//! Connections to backends: HBONE to `podIP:15008` (authority `podIP:targetPort`, the waypoint's own identity,
//! the endpoint's identity expected, spec 1.9), or plain TCP to endpoints outside the mesh's tunnel.
//!
//! HTTP connections to an endpoint are reused: HTTP/1.1 connections (one HBONE stream each) wait in a per-endpoint
//! idle list between requests; one HTTP/2 connection per endpoint carries every request (HBONE connections
//! underneath are pooled by `ambit_core::hbone::HboneClient` as in ztunnel).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::cert::{CertManager, Priority};
use ambit_core::hbone::{Connect, H2Config, H2Stream, HboneClient, HboneError, PoolKey};
use ambit_core::tls::{ClientTlsStream, TlsBackend, TlsConnector};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use crate::state::{Tunnel, Workload};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies on their way to a backend (the client's, or a synthetic one for mirrors).
pub type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("hbone to {0}: {1}")]
    Hbone(SocketAddr, HboneError),
    #[error("http to {0}: {1}")]
    Http(SocketAddr, hyper::Error),
}

impl UpstreamError {
    /// Whether the request never reached the backend (connect failure, `UF`) rather than failing on the way.
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Connect(..) => true,
            UpstreamError::Hbone(_, e) => !matches!(e, HboneError::H2(_) | HboneError::Reset(_)),
            UpstreamError::Http(_, e) => e.is_canceled(),
        }
    }
}

/// TCP + mTLS for pooled HBONE connections, as the waypoint's own identity.
pub struct Connector {
    pub certs: Arc<CertManager>,
    pub backend: TlsBackend,
}

#[async_trait::async_trait]
impl Connect for Connector {
    type Io = ClientTlsStream<TcpStream>;

    async fn connect(&self, key: &PoolKey) -> Result<Self::Io, HboneError> {
        let cert = self
            .certs
            .fetch(&key.src_identity, Priority::RealTime)
            .await
            .map_err(|e| {
                HboneError::Transport(format!("certificate for {}: {e}", key.src_identity))
            })?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(key.dst))
            .await
            .map_err(|_| HboneError::Transport(format!("connect to {}: timed out", key.dst)))?
            .map_err(|e| HboneError::Transport(format!("connect to {}: {e}", key.dst)))?;
        let _ = tcp.set_nodelay(true);
        let tls =
            TlsConnector::new(cert, self.backend).map_err(|e| HboneError::Tls(e.to_string()))?;
        tls.connect(tcp, &key.dst_identities)
            .await
            .map_err(|e| HboneError::Tls(e.to_string()))
    }
}

/// A byte stream to one endpoint.
pub enum Io {
    Hbone(Box<H2Stream>),
    Tcp(TcpStream),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Hbone(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Hbone(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Hbone(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Hbone(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    addr: SocketAddr,
    tunnel: Tunnel,
}

#[derive(Default)]
struct Idle {
    h1: HashMap<Key, Vec<http1::SendRequest<ReqBody>>>,
    h2: HashMap<Key, http2::SendRequest<ReqBody>>,
}

/// Connections to backends, shared by every request of one worker.
pub struct Upstream {
    hbone: HboneClient<Connector>,
    me: Identity,
    my_ip: IpAddr,
    idle: Arc<Mutex<Idle>>,
}

/// Gives an HTTP/1.1 connection back to the idle list once its response has been read to the end.
pub struct Release {
    idle: Weak<Mutex<Idle>>,
    key: Key,
    sender: http1::SendRequest<ReqBody>,
}

impl Release {
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        if let Some(idle) = self.idle.upgrade()
            && let Ok(mut idle) = idle.lock()
        {
            let list = idle.h1.entry(self.key).or_default();
            if list.len() < MAX_IDLE_PER_ENDPOINT {
                list.push(self.sender);
            }
        }
    }
}

impl Upstream {
    pub fn new(h2: Arc<H2Config>, connector: Connector, me: Identity, my_ip: IpAddr) -> Upstream {
        Upstream {
            hbone: HboneClient::new(h2, connector),
            me,
            my_ip,
            idle: Arc::default(),
        }
    }

    /// A new byte stream to `addr` on `w` (HBONE when the workload speaks it).
    pub async fn connect(&self, w: &Workload, addr: SocketAddr) -> Result<Io, UpstreamError> {
        match w.tunnel {
            Tunnel::Hbone => {
                let key = PoolKey {
                    src_identity: self.me.clone(),
                    dst_identities: vec![w.identity()],
                    dst: SocketAddr::new(addr.ip(), crate::HBONE_PORT),
                    src_ip: self.my_ip,
                };
                let req = Request::builder()
                    .method(http::Method::CONNECT)
                    .uri(addr.to_string())
                    .body(())
                    .map_err(|e| UpstreamError::Connect(addr, e.to_string()))?;
                let (stream, _) = self
                    .hbone
                    .connect(key, req)
                    .await
                    .map_err(|e| UpstreamError::Hbone(addr, e))?;
                Ok(Io::Hbone(Box::new(stream)))
            }
            Tunnel::None => {
                let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                    .await
                    .map_err(|_| UpstreamError::Connect(addr, "timed out".into()))?
                    .map_err(|e| UpstreamError::Connect(addr, e.to_string()))?;
                let _ = tcp.set_nodelay(true);
                Ok(Io::Tcp(tcp))
            }
        }
    }

    /// Sends `req` to the endpoint over HTTP/2 (`h2`) or HTTP/1.1, on a reused connection when one is idle.
    /// HTTP/1.1 responses come with a [`Release`] to call once the body has been read to its end.
    pub async fn send(
        &self,
        w: &Workload,
        addr: SocketAddr,
        h2: bool,
        req: Request<ReqBody>,
    ) -> Result<(Response<Incoming>, Option<Release>), UpstreamError> {
        let key = Key {
            addr,
            tunnel: w.tunnel,
        };
        if h2 {
            let mut sender = self.h2_sender(&key, w).await?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| UpstreamError::Http(addr, e))?;
            return Ok((resp, None));
        }
        let mut sender = self.h1_sender(&key, w).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Http(addr, e))?;
        let release = Release {
            idle: Arc::downgrade(&self.idle),
            key,
            sender,
        };
        Ok((resp, Some(release)))
    }

    /// A new HTTP/1.1 connection that may be upgraded (WebSocket): never pooled.
    pub async fn send_upgrade(
        &self,
        w: &Workload,
        addr: SocketAddr,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let io = self.connect(w, addr).await?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Http(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream connection ended");
            }
        });
        sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Http(addr, e))
    }

    fn checkout_h1(&self, key: &Key) -> Option<http1::SendRequest<ReqBody>> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.h1.get_mut(key)?;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    async fn h1_sender(
        &self,
        key: &Key,
        w: &Workload,
    ) -> Result<http1::SendRequest<ReqBody>, UpstreamError> {
        while let Some(mut s) = self.checkout_h1(key) {
            if s.ready().await.is_ok() {
                return Ok(s);
            }
        }
        let io = self.connect(w, key.addr).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Http(key.addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    async fn h2_sender(
        &self,
        key: &Key,
        w: &Workload,
    ) -> Result<http2::SendRequest<ReqBody>, UpstreamError> {
        if let Ok(idle) = self.idle.lock()
            && let Some(s) = idle.h2.get(key)
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let io = self.connect(w, key.addr).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Http(key.addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream connection ended");
            }
        });
        if let Ok(mut idle) = self.idle.lock() {
            idle.h2.insert(key.clone(), sender.clone());
        }
        Ok(sender)
    }
}
