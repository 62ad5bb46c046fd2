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
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

use crate::balance::limits::{Counters, Limits};
use crate::state::{Tunnel, Workload};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies on their way to a backend (the client's, or a synthetic one for mirrors).
pub type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a request pending on a full connection pool looks again (besides being woken by a returned one).
const PENDING_POLL: Duration = Duration::from_millis(10);

/// How long a pending request waits for a connection: the pool's connect timeout, else the default.
fn connect_timeout(pool: Option<Pool<'_>>) -> Duration {
    pool.and_then(|p| p.limits.connect_timeout)
        .unwrap_or(CONNECT_TIMEOUT)
}
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
    /// The backend's circuit breaker is full (connections and pending requests): 503 `UO`.
    #[error("connection pool of {0} overflowed")]
    Overflow(SocketAddr),
}

impl UpstreamError {
    /// Whether the request never reached the backend (connect failure, `UF`) rather than failing on the way.
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Connect(..) => true,
            UpstreamError::Hbone(_, e) => !matches!(e, HboneError::H2(_) | HboneError::Reset(_)),
            UpstreamError::Http(_, e) => e.is_canceled(),
            UpstreamError::Overflow(_) => false,
        }
    }

    pub fn is_overflow(&self) -> bool {
        matches!(self, UpstreamError::Overflow(_))
    }

    /// An HTTP/2 `REFUSED_STREAM` reset: the server did not process the request.
    pub fn is_refused_stream(&self) -> bool {
        let UpstreamError::Http(_, e) = self else {
            return false;
        };
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(h2) = s.downcast_ref::<h2::Error>() {
                return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            }
            source = s.source();
        }
        false
    }

    /// Whether the failure came before the request was written (a reset-before-request in Envoy's terms): the
    /// connection or tunnel failed, or hyper gave the request back unsent.
    pub fn is_before_request(&self) -> bool {
        match self {
            UpstreamError::Connect(..) | UpstreamError::Hbone(..) | UpstreamError::Overflow(_) => {
                true
            }
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

    fn take_revocation(&self, io: &mut Self::Io) -> Option<Box<ambit_core::tls::RevocationWatch>> {
        io.take_revocation()
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

/// An idle HTTP/1.1 connection: how many requests it has carried, and since when it is idle.
struct IdleH1 {
    sender: http1::SendRequest<ReqBody>,
    uses: u32,
    since: Instant,
}

#[derive(Default)]
struct Idle {
    h1: HashMap<Key, Vec<IdleH1>>,
    h2: HashMap<Key, http2::SendRequest<ReqBody>>,
}

/// The backend's circuit breaker and connection settings, for the connections a request may open.
#[derive(Clone, Copy)]
pub struct Pool<'a> {
    pub counters: &'a Arc<Counters>,
    pub limits: &'a Limits,
}

/// Connections to backends, shared by every request of one worker.
pub struct Upstream {
    hbone: HboneClient<Connector>,
    me: Identity,
    my_ip: IpAddr,
    idle: Arc<Mutex<Idle>>,
    /// Signalled when a connection goes back to the idle list (for requests pending on a full pool).
    returned: Arc<Notify>,
}

/// Gives an HTTP/1.1 connection back to the idle list once its response has been read to the end.
pub struct Release {
    idle: Weak<Mutex<Idle>>,
    returned: Arc<Notify>,
    key: Key,
    sender: http1::SendRequest<ReqBody>,
    uses: u32,
    /// `maxRequestsPerConnection`: past it the connection is closed instead of kept.
    max_uses: Option<u32>,
}

impl Release {
    pub fn release(self) {
        if self.sender.is_closed() || self.max_uses.is_some_and(|m| self.uses >= m) {
            return;
        }
        if let Some(idle) = self.idle.upgrade()
            && let Ok(mut idle) = idle.lock()
        {
            let list = idle.h1.entry(self.key).or_default();
            if list.len() < MAX_IDLE_PER_ENDPOINT {
                list.push(IdleH1 {
                    sender: self.sender,
                    uses: self.uses,
                    since: Instant::now(),
                });
                self.returned.notify_one();
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
            returned: Arc::default(),
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
    /// HTTP/1.1 responses come with a [`Release`] to call once the body has been read to its end. `pool`: the
    /// backend's connection limits (a new connection needs a slot; without one the request waits as pending
    /// for a connection to come back, if the pending limit allows, else fails with `Overflow`).
    pub async fn send(
        &self,
        w: &Workload,
        addr: SocketAddr,
        h2: bool,
        req: Request<ReqBody>,
        pool: Option<Pool<'_>>,
    ) -> Result<(Response<Incoming>, Option<Release>), UpstreamError> {
        let key = Key {
            addr,
            tunnel: w.tunnel,
        };
        if h2 {
            let mut sender = self.h2_sender(&key, w, pool).await?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| UpstreamError::Http(addr, e))?;
            return Ok((resp, None));
        }
        let (mut sender, uses) = self.h1_sender(&key, w, pool).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Http(addr, e))?;
        let release = Release {
            idle: Arc::downgrade(&self.idle),
            returned: self.returned.clone(),
            key,
            sender,
            uses: uses + 1,
            max_uses: pool.and_then(|p| p.limits.max_requests_per_connection),
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

    fn checkout_h1(&self, key: &Key, idle_timeout: Option<Duration>) -> Option<IdleH1> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.h1.get_mut(key)?;
        while let Some(c) = list.pop() {
            let stale = idle_timeout.is_some_and(|t| c.since.elapsed() > t);
            if !c.sender.is_closed() && !stale {
                return Some(c);
            }
        }
        None
    }

    async fn h1_sender(
        &self,
        key: &Key,
        w: &Workload,
        pool: Option<Pool<'_>>,
    ) -> Result<(http1::SendRequest<ReqBody>, u32), UpstreamError> {
        let idle_timeout = pool.and_then(|p| p.limits.idle_timeout);
        let mut pending = None;
        let deadline = Instant::now() + connect_timeout(pool);
        let slot = loop {
            while let Some(mut c) = self.checkout_h1(key, idle_timeout) {
                if c.sender.ready().await.is_ok() {
                    return Ok((c.sender, c.uses));
                }
            }
            let Some(p) = pool else { break None };
            if let Some(slot) = p.counters.try_connection(p.limits) {
                break Some(slot);
            }
            // At the connection limit: wait as a pending request, if there is room for one.
            if pending.is_none() {
                pending = p.counters.try_pending(p.limits);
                if pending.is_none() {
                    return Err(UpstreamError::Overflow(key.addr));
                }
            }
            if Instant::now() >= deadline {
                return Err(UpstreamError::Overflow(key.addr));
            }
            tokio::select! {
                _ = self.returned.notified() => {}
                _ = tokio::time::sleep(PENDING_POLL) => {}
            }
        };
        drop(pending);
        let io = self.connect_within(w, key.addr, pool).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Http(key.addr, e))?;
        tokio::spawn(async move {
            // The connection's slot in the backend's pool is held while it is open.
            let _slot = slot;
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream connection ended");
            }
        });
        Ok((sender, 0))
    }

    async fn connect_within(
        &self,
        w: &Workload,
        addr: SocketAddr,
        pool: Option<Pool<'_>>,
    ) -> Result<Io, UpstreamError> {
        match pool.and_then(|p| p.limits.connect_timeout) {
            Some(t) => tokio::time::timeout(t, self.connect(w, addr))
                .await
                .map_err(|_| UpstreamError::Connect(addr, "timed out".into()))?,
            None => self.connect(w, addr).await,
        }
    }

    async fn h2_sender(
        &self,
        key: &Key,
        w: &Workload,
        pool: Option<Pool<'_>>,
    ) -> Result<http2::SendRequest<ReqBody>, UpstreamError> {
        if let Ok(idle) = self.idle.lock()
            && let Some(s) = idle.h2.get(key)
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let slot = match pool {
            Some(p) => Some(
                p.counters
                    .try_connection(p.limits)
                    .ok_or(UpstreamError::Overflow(key.addr))?,
            ),
            None => None,
        };
        let io = self.connect_within(w, key.addr, pool).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Http(key.addr, e))?;
        tokio::spawn(async move {
            let _slot = slot;
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
