//! The data plane: outbound capture (15001), inbound HBONE (15008), inbound plaintext (15006) and SOCKS5 (15080).
//!
//! Every listener gets the same [`ProxyInputs`]; a connection task owns its sockets, its drain watcher, one
//! metrics guard and one registration in its workload's live connections ([`connections`]), and never holds a lock
//! across I/O.

pub mod connections;
pub mod headers;
pub mod inbound;
pub mod outbound;
pub mod passthrough;
pub mod proxy_protocol;
pub mod socket;
pub mod socks5;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::cert::{CertManager, Priority};
use ambit_core::drain::DrainWatcher;
use ambit_core::hbone::{self, Connect, H2Config, HboneClient, HboneError, PoolKey};
use ambit_core::tls::{ClientTlsStream, TlsBackend, TlsConnector};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::rbac::RbacDenied;
use crate::state::{ProxyState, Workload};
use crate::workers::Workers;
use connections::{
    ConnectionRegistry, InboundConnection, LiveConnection, OutboundConnection, Protocol,
};
use socket::SocketFactory;

/// Ports that must never be the target of a proxied connection: dialing them would loop back into ztunnel.
pub const HBONE_PORT: u16 = 15008;

/// Everything a listener needs. Shared by all connections through an `Arc`.
pub struct ProxyInputs {
    pub cfg: Arc<Config>,
    pub state: ProxyState,
    pub certs: Arc<CertManager>,
    pub metrics: Arc<Metrics>,
    pub sockets: SocketFactory,
    pub hbone: HboneClient<HboneConnector>,
    pub h2: Arc<H2Config>,
    pub tls_backend: TlsBackend,
    /// The workload this proxy serves (dedicated mode): namespace, name, service account.
    pub workload: (String, String, String),
    /// Connect to local applications from the peer's address (needs IP_TRANSPARENT and the in-pod routing rules).
    pub spoof_source: bool,
    /// The live connections of the workload this proxy serves, shared by its proxies on every worker.
    pub connections: Arc<ConnectionRegistry>,
    /// The worker these inputs belong to: its shard of `connections`.
    pub worker: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the workload this proxy serves ({0}) is not known yet")]
    UnknownLocalWorkload(String),
    #[error("refusing to proxy to {0}: it would loop back into ztunnel")]
    SelfCall(SocketAddr),
    #[error("service {0} has no healthy endpoint")]
    NoHealthyUpstream(String),
    #[error("waypoint for {0} could not be resolved")]
    UnknownWaypoint(String),
    #[error("no certificate for {0}: {1}")]
    Certificate(Identity, String),
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, io::Error),
    #[error("hbone: {0}")]
    Hbone(#[from] HboneError),
    #[error("tls handshake: {0}")]
    Tls(String),
    #[error("{0}")]
    Denied(#[from] RbacDenied),
    #[error("original destination: {0}")]
    OriginalDst(io::Error),
    #[error("io: {0}")]
    Io(#[from] io::Error),
}

impl ProxyError {
    /// Istio's response flag for this failure.
    pub fn response_flag(&self) -> &'static str {
        match self {
            ProxyError::Denied(_) => "DENY",
            ProxyError::Tls(_) => "TLS_FAILURE",
            ProxyError::Certificate(..) => "IDENTITY_ERROR",
            ProxyError::Hbone(e) => e.response_flag(),
            _ => "CONNECT",
        }
    }
}

/// True for destinations that would loop back into ztunnel's own listeners.
pub fn is_self_call(cfg: &Config, dst: SocketAddr) -> bool {
    let illegal = [
        cfg.outbound_addr.port(),
        cfg.inbound_addr.port(),
        cfg.hbone_addr.port(),
    ];
    let socks = cfg.socks5_enabled && dst.port() == cfg.socks5_addr.port();
    dst.ip().is_loopback() && (illegal.contains(&dst.port()) || socks)
}

/// True when an inbound connection's final target port is one of ztunnel's own.
pub fn is_illegal_target_port(cfg: &Config, port: u16) -> bool {
    let illegal = [
        cfg.outbound_addr.port(),
        cfg.inbound_addr.port(),
        cfg.hbone_addr.port(),
    ];
    illegal.contains(&port) || (cfg.socks5_enabled && port == cfg.socks5_addr.port())
}

impl ProxyInputs {
    /// The local workload, waiting up to 5 s for it to arrive from xDS.
    pub async fn local_workload(&self) -> Result<Arc<Workload>, ProxyError> {
        let (ns, name, sa) = &self.workload;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(w) = self.state.find_workload(ns, name, sa) {
                return Ok(w);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProxyError::UnknownLocalWorkload(format!(
                    "{ns}/{name}/{sa}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Registers an inbound connection (or HBONE stream) until the guard drops.
    pub fn track_inbound(
        &self,
        src: SocketAddr,
        original_dst: Option<&str>,
        actual_dst: SocketAddr,
        protocol: Protocol,
    ) -> LiveConnection<'_> {
        let c = InboundConnection {
            src,
            original_dst: original_dst.map(Into::into),
            actual_dst,
            protocol,
        };
        self.connections.inbound(self.worker, c)
    }

    /// Registers an outbound connection until the guard drops.
    pub fn track_outbound(
        &self,
        src: SocketAddr,
        original_dst: SocketAddr,
        actual_dst: SocketAddr,
        protocol: Protocol,
    ) -> LiveConnection<'_> {
        let c = OutboundConnection {
            src,
            original_dst,
            actual_dst,
            protocol,
        };
        self.connections.outbound(self.worker, c)
    }
}

/// Opens HBONE transports for the pool: a marked TCP connection and mTLS as the source identity.
pub struct HboneConnector {
    pub certs: Arc<CertManager>,
    pub sockets: SocketFactory,
    pub backend: TlsBackend,
}

#[async_trait::async_trait]
impl Connect for HboneConnector {
    type Io = ClientTlsStream<TcpStream>;

    async fn connect(&self, key: &PoolKey) -> Result<Self::Io, HboneError> {
        let cert = self
            .certs
            .fetch(&key.src_identity, Priority::RealTime)
            .await
            .map_err(|e| {
                HboneError::Transport(format!("certificate for {}: {e}", key.src_identity))
            })?;
        let tcp = self
            .sockets
            .connect(key.dst, None)
            .await
            .map_err(|e| HboneError::Transport(format!("connect to {}: {e}", key.dst)))?;
        let connector =
            TlsConnector::new(cert, self.backend).map_err(|e| HboneError::Tls(e.to_string()))?;
        connector
            .connect(tcp, &key.dst_identities)
            .await
            .map_err(|e| HboneError::Tls(e.to_string()))
    }

    fn take_revocation(&self, io: &mut Self::Io) -> Option<Box<ambit_core::tls::RevocationWatch>> {
        io.take_revocation()
    }
}

/// What one kind of listener does with a connection, on every worker: worker `i` runs it with `inputs[i]` (its
/// own HBONE pool).
pub struct Handlers<F> {
    workers: Arc<Workers>,
    inputs: Vec<Arc<ProxyInputs>>,
    handle: F,
}

impl<F, Fut> Handlers<F>
where
    F: Fn(Arc<ProxyInputs>, TcpStream, SocketAddr, DrainWatcher) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    pub fn new(workers: &Arc<Workers>, inputs: &[Arc<ProxyInputs>], handle: F) -> Arc<Self> {
        Arc::new(Handlers {
            workers: workers.clone(),
            inputs: inputs.to_vec(),
            handle,
        })
    }

    /// Starts a connection accepted on worker `here` on the worker [`Workers::pick`] chooses.
    fn dispatch(
        self: &Arc<Self>,
        here: usize,
        stream: TcpStream,
        peer: SocketAddr,
        drain: DrainWatcher,
    ) {
        let to = self.workers.pick(here);
        if to == here || to >= self.inputs.len() {
            tokio::spawn((self.handle)(
                self.inputs[here].clone(),
                stream,
                peer,
                drain,
            ));
            return;
        }
        // Hand the socket to the other worker's reactor: deregistered here, registered there.
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(src.addr = %peer, error = %e, "could not hand a connection to another worker");
                return;
            }
        };
        let h = self.clone();
        self.workers.handle(to).spawn(async move {
            match TcpStream::from_std(std) {
                Ok(s) => (h.handle)(h.inputs[to].clone(), s, peer, drain).await,
                Err(e) => {
                    warn!(src.addr = %peer, error = %e, "could not take over a connection from another worker")
                }
            }
        });
    }
}

/// Accepts on `listener` (bound on worker `here`) until drained, starting each connection in its own task on the
/// worker `handlers` picks.
pub async fn serve<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    mut drain: DrainWatcher,
    handlers: Arc<Handlers<F>>,
    here: usize,
) where
    F: Fn(Arc<ProxyInputs>, TcpStream, SocketAddr, DrainWatcher) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = drain.signaled() => {
                debug!(listener = name, "draining: no longer accepting");
                return;
            }
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                handlers.dispatch(here, stream, socket::canonical(peer), drain.clone())
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The source address to use for a connection to a local application.
pub fn spoofed_source(pi: &ProxyInputs, peer: IpAddr) -> Option<SocketAddr> {
    pi.spoof_source.then_some(SocketAddr::new(peer, 0))
}

pub use hbone::copy_bidirectional as copy_hbone;

/// Resolves when an authorization change (see [`ProxyState::policy_changes`]) denies the live inbound connection
/// `conn` to `dst` (re-read by uid, so a changed policy list counts). `changes` is subscribed before the
/// connection's first check. Shared by HBONE streams and plaintext inbound.
pub(crate) async fn recheck_policy(
    pi: &ProxyInputs,
    mut changes: tokio::sync::watch::Receiver<u64>,
    dst: &Workload,
    conn: &crate::rbac::Connection,
) -> RbacDenied {
    loop {
        if changes.changed().await.is_err() {
            // The state is gone: nothing will change any more.
            std::future::pending::<()>().await;
        }
        let current = pi.state.workload_by_uid(&dst.uid);
        let w = current.as_deref().unwrap_or(dst);
        if let Err(denied) = pi.state.assert_rbac(w, conn) {
            tracing::info!(src.addr = %conn.src, dst.addr = %conn.dst, reason = %denied,
                "closing connection after an authorization change");
            return denied;
        }
    }
}
