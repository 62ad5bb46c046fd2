//! The HBONE client and its connection pool (spec 1.7).
//!
//! Connections are keyed by [`PoolKey`]. A checkout takes any live connection of the key with a free stream slot;
//! otherwise one task per key establishes a new connection while the others wait for it and then share it.
//! A key's one spare idle connection is released after `pool_idle_timeout`, any other idle connection (what a burst
//! opened beyond the key's need) after `pool_surplus_idle_timeout`, and the pool never holds more than
//! `pool_capacity`. A reaper task applies the timeouts while the pool holds connections (and ends when it holds
//! none), so an idle pool lets go of its connections without waiting for the next dial.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::PingPong;
use h2::client::SendRequest;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{H2Config, H2Stream, HboneError};
use crate::identity::Identity;

/// What makes two HBONE connections interchangeable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub src_identity: Identity,
    /// Sorted.
    pub dst_identities: Vec<Identity>,
    /// The next hop (`ip:15008`).
    pub dst: SocketAddr,
    /// The downstream client's IP.
    pub src_ip: IpAddr,
}

/// Opens the transport (TCP + mTLS) for a new pooled connection.
#[async_trait::async_trait]
pub trait Connect: Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    async fn connect(&self, key: &PoolKey) -> Result<Self::Io, HboneError>;

    /// The watch on the peer of a connection just made, when a CRL is in force: the pool closes the connection
    /// once a CRL update revokes it. Transports without one (plain TCP in tests) keep the default.
    fn take_revocation(&self, _io: &mut Self::Io) -> Option<Box<crate::tls::RevocationWatch>> {
        None
    }
}

struct Conn {
    send: SendRequest<Bytes>,
    active: AtomicU32,
    closed: Arc<AtomicBool>,
    last_used: Mutex<Instant>,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn idle_since(&self) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        self.last_used.lock().ok().map(|t| *t)
    }
}

/// Gives the stream slot back when the stream ends.
struct ActiveGuard(Arc<Conn>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Ok(mut t) = self.0.last_used.lock() {
            *t = Instant::now();
        }
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Inner<C> {
    cfg: Arc<H2Config>,
    connector: C,
    conns: Mutex<HashMap<PoolKey, Vec<Arc<Conn>>>>,
    establishing: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Whether a reaper task runs; set and cleared under the `conns` lock.
    reaping: AtomicBool,
}

/// A cheap, clonable handle to a pool of HBONE connections.
pub struct HboneClient<C: Connect> {
    inner: Arc<Inner<C>>,
}

impl<C: Connect> Clone for HboneClient<C> {
    fn clone(&self) -> Self {
        HboneClient {
            inner: self.inner.clone(),
        }
    }
}

impl<C: Connect> HboneClient<C> {
    pub fn new(cfg: Arc<H2Config>, connector: C) -> Self {
        HboneClient {
            inner: Arc::new(Inner {
                cfg,
                connector,
                conns: Mutex::new(HashMap::new()),
                establishing: Mutex::new(HashMap::new()),
                reaping: AtomicBool::new(false),
            }),
        }
    }

    /// Opens a CONNECT stream for `request` (method CONNECT, `:authority` from its URI, its headers as given).
    ///
    /// A stream the peer did not process — its connection ended or is going away before the stream left (a GOAWAY
    /// arrived, as when the peer drains for a restart), a GOAWAY excluded it, or it was refused — is opened again on
    /// another connection, up to `ATTEMPTS` (3) times in all: a peer's graceful drain costs no new connection.
    /// Nothing of the tunnel's payload has been sent at that point (bytes follow the 200), so a second attempt
    /// cannot duplicate data.
    pub async fn connect(
        &self,
        key: PoolKey,
        request: http::Request<()>,
    ) -> Result<(H2Stream, http::response::Parts), HboneError> {
        let (parts, ()) = request.into_parts();
        let mut attempt = 1;
        loop {
            match self.attempt(&key, rebuild(&parts)).await {
                Err(Attempt::Unprocessed(e)) if attempt < ATTEMPTS => {
                    debug!(dst = %key.dst, error = %e, attempt, "hbone stream not processed by the peer; trying another connection");
                    attempt += 1;
                }
                Err(Attempt::Unprocessed(e)) | Err(Attempt::Failed(e)) => return Err(e),
                Ok(ok) => return Ok(ok),
            }
        }
    }

    async fn attempt(
        &self,
        key: &PoolKey,
        request: http::Request<()>,
    ) -> Result<(H2Stream, http::response::Parts), Attempt> {
        let conn = match self.checkout(key) {
            Some(c) => c,
            None => self.establish(key).await.map_err(Attempt::Failed)?,
        };
        let guard = ActiveGuard(conn.clone());
        // The connection cannot open a stream (it has ended, or a GOAWAY came): the request never left, so it goes
        // to another connection, and this one leaves the pool whatever the reason.
        let retire = |e: h2::Error| {
            conn.closed.store(true, Ordering::Release);
            Attempt::Unprocessed(e.into())
        };
        let mut send = conn.send.clone().ready().await.map_err(retire)?;
        let (response, stream) = send.send_request(request, false).map_err(retire)?;
        // The request was sent: only the peer's word that it did not process it makes another attempt safe.
        let response = response.await.map_err(|e| {
            let retry = not_processed(&e);
            if retry || e.is_io() {
                conn.closed.store(true, Ordering::Release);
            }
            if retry {
                Attempt::Unprocessed(e.into())
            } else {
                Attempt::Failed(e.into())
            }
        })?;
        let (parts, body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(Attempt::Failed(HboneError::Status(parts.status)));
        }
        Ok((H2Stream::new(stream, body, Some(Box::new(guard))), parts))
    }

    /// Number of live pooled connections (for tests and debugging).
    pub fn connections(&self) -> usize {
        self.inner
            .conns
            .lock()
            .map(|m| {
                m.values()
                    .map(|v| v.iter().filter(|c| !c.is_closed()).count())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// A live connection of `key` with a free stream slot, with that slot taken.
    fn checkout(&self, key: &PoolKey) -> Option<Arc<Conn>> {
        let mut conns = self.inner.conns.lock().ok()?;
        let list = conns.get_mut(key)?;
        list.retain(|c| !c.is_closed());
        let cap = self.inner.cfg.pool_max_streams_per_conn;
        for c in list.iter() {
            let max = cap
                .min(u32::try_from(c.send.current_max_send_streams()).unwrap_or(u32::MAX))
                .max(1);
            let mut n = c.active.load(Ordering::Acquire);
            while n < max {
                match c
                    .active
                    .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return Some(c.clone()),
                    Err(now) => n = now,
                }
            }
        }
        None
    }

    async fn establish(&self, key: &PoolKey) -> Result<Arc<Conn>, HboneError> {
        let lock = match self.inner.establishing.lock() {
            Ok(mut m) => m.entry(key.clone()).or_default().clone(),
            Err(_) => Arc::new(tokio::sync::Mutex::new(())),
        };
        let _turn = lock.lock().await;
        if let Some(c) = self.checkout(key) {
            return Ok(c);
        }
        let result = self.dial(key).await;
        if let Ok(mut m) = self.inner.establishing.lock() {
            // Only the map and this task hold the lock: nobody else is waiting for this key.
            if Arc::strong_count(&lock) <= 2 {
                m.remove(key);
            }
        }
        result
    }

    async fn dial(&self, key: &PoolKey) -> Result<Arc<Conn>, HboneError> {
        let cfg = &self.inner.cfg;
        let mut io = self.inner.connector.connect(key).await?;
        let revocation = self.inner.connector.take_revocation(&mut io);
        let (send, mut connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(cfg.stream_window)
            .initial_connection_window_size(cfg.connection_window)
            .max_frame_size(cfg.frame_size)
            .max_header_list_size(cfg.client_max_header_list)
            .max_send_buffer_size(cfg.stream_window as usize)
            .initial_max_send_streams(100)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(HboneError::Handshake)?;
        let closed = Arc::new(AtomicBool::new(false));
        let dead = keepalive(connection.ping_pong(), cfg);
        {
            let closed = closed.clone();
            let dst = key.dst;
            tokio::spawn(async move {
                let driven = async {
                    tokio::select! {
                        r = &mut connection => if let Err(e) = r { debug!(dst = %dst, error = %e, "hbone connection ended") },
                        _ = dead => debug!(dst = %dst, "hbone connection failed its keepalive"),
                    }
                };
                if let Err(e) = crate::tls::until_revoked(driven, revocation).await {
                    tracing::warn!(dst = %dst, error = %e, "hbone connection closed");
                }
                closed.store(true, Ordering::Release);
            });
        }
        let conn = Arc::new(Conn {
            send,
            active: AtomicU32::new(1),
            closed,
            last_used: Mutex::new(Instant::now()),
        });
        if let Ok(mut conns) = self.inner.conns.lock() {
            sweep(&mut conns, cfg, cfg.pool_capacity.saturating_sub(1));
            conns.entry(key.clone()).or_default().push(conn.clone());
            if !self.inner.reaping.swap(true, Ordering::AcqRel) {
                tokio::spawn(reap(Arc::downgrade(&self.inner)));
            }
        }
        Ok(conn)
    }
}

/// How many connections one CONNECT may try when peers refuse it unprocessed.
pub const ATTEMPTS: u32 = 3;

/// One try of [`HboneClient::connect`].
enum Attempt {
    /// The peer did not process the stream: safe to open it again elsewhere.
    Unprocessed(HboneError),
    Failed(HboneError),
}

/// Whether `e` says the peer never processed the stream (RFC 9113 §6.8: a GOAWAY covers only the streams up to its
/// last stream id; REFUSED_STREAM, §8.7, means not processed at all). A GOAWAY from the peer also ends streams it did
/// process if the connection closes before they answer; those carry no payload yet either, so retrying them is safe.
fn not_processed(e: &h2::Error) -> bool {
    (e.is_go_away() && e.is_remote())
        || (e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// A copy of a bodiless request (an `http::Request` is not `Clone`).
fn rebuild(parts: &http::request::Parts) -> http::Request<()> {
    let mut req = http::Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}

/// Applies the idle timeouts while the pool holds connections; ends when it holds none (the next dial starts
/// another) or when the pool itself is gone.
async fn reap<C: Connect>(pool: Weak<Inner<C>>) {
    loop {
        let Some(tick) = pool.upgrade().map(|p| reap_interval(&p.cfg)) else {
            return;
        };
        tokio::time::sleep(tick).await;
        let Some(p) = pool.upgrade() else {
            return;
        };
        let Ok(mut conns) = p.conns.lock() else {
            return;
        };
        sweep(&mut conns, &p.cfg, p.cfg.pool_capacity);
        if conns.is_empty() {
            p.reaping.store(false, Ordering::Release);
            return;
        }
    }
}

/// Half the shorter idle timeout: a connection outlives its timeout by at most this much.
fn reap_interval(cfg: &H2Config) -> Duration {
    (cfg.pool_surplus_idle_timeout.min(cfg.pool_idle_timeout) / 2).max(Duration::from_millis(10))
}

/// Drops closed connections and idle ones past their time — a key's spare (its most recently used idle connection,
/// when none of its connections is busy) after `pool_idle_timeout`, every other idle one after
/// `pool_surplus_idle_timeout` — then the least recently used idle ones beyond `capacity`.
fn sweep(conns: &mut HashMap<PoolKey, Vec<Arc<Conn>>>, cfg: &H2Config, capacity: usize) {
    let long = cfg.pool_idle_timeout;
    let short = cfg.pool_surplus_idle_timeout.min(long);
    for list in conns.values_mut() {
        list.retain(|c| !c.is_closed());
        // The spare: the most recently used idle connection, when none of the key's is busy. (A connection that
        // turns busy or idle between this pass and the next is kept: busy ones always are, and one just idle
        // has not been idle long.)
        let mut spare: Option<(usize, Instant)> = None;
        for (i, c) in list.iter().enumerate() {
            match c.idle_since() {
                None => {
                    spare = None;
                    break;
                }
                Some(t) if spare.is_none_or(|(_, s)| t >= s) => spare = Some((i, t)),
                Some(_) => {}
            }
        }
        let spare = spare.map(|(i, _)| i);
        let mut i = 0;
        list.retain(|c| {
            let keep = match c.idle_since() {
                None => true,
                Some(t) => t.elapsed() < if spare == Some(i) { long } else { short },
            };
            i += 1;
            keep
        });
    }
    conns.retain(|_, l| !l.is_empty());
    let total: usize = conns.values().map(Vec::len).sum();
    if total <= capacity {
        return;
    }
    let mut idle: Vec<(Instant, PoolKey, usize)> = conns
        .iter()
        .flat_map(|(k, l)| {
            l.iter()
                .enumerate()
                .filter_map(move |(i, c)| c.idle_since().map(|t| (t, k.clone(), i)))
        })
        .collect();
    idle.sort_by_key(|(t, _, _)| *t);
    let mut remove: HashMap<PoolKey, Vec<usize>> = HashMap::new();
    for (_, k, i) in idle.into_iter().take(total - capacity) {
        remove.entry(k).or_default().push(i);
    }
    for (k, mut idx) in remove {
        if let Some(list) = conns.get_mut(&k) {
            idx.sort_unstable_by(|a, b| b.cmp(a));
            for i in idx {
                list.remove(i);
            }
        }
    }
    conns.retain(|_, l| !l.is_empty());
}

/// Resolves when the peer stops answering PINGs: one every `keepalive_interval`, each allowed
/// `keepalive_timeout` for its PONG.
pub(super) fn keepalive(
    pp: Option<PingPong>,
    cfg: &H2Config,
) -> impl Future<Output = ()> + Send + 'static {
    let (interval, timeout) = (cfg.keepalive_interval, cfg.keepalive_timeout);
    async move {
        let Some(mut pp) = pp else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(interval).await;
            match tokio::time::timeout(timeout, pp.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
        }
    }
}
