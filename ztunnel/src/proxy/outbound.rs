//! Outbound: connections the application made, captured on 15001 (or handed over by SOCKS5). Decides where the
//! bytes go (spec 1.6) and carries them there: HBONE to the peer's ztunnel or waypoint, plain TCP to
//! uncaptured workloads, passthrough for destinations the mesh does not know.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use ambit_core::Identity;
use ambit_core::drain::DrainWatcher;
use ambit_core::hbone::PoolKey;
use tokio::net::TcpStream;
use tracing::{Instrument, debug, info, warn};

use super::connections::Protocol;
use super::{HBONE_PORT, ProxyError, ProxyInputs, headers, is_self_call};
use crate::metrics::{Peer, Reporter, TrafficLabels};
use crate::state::{
    GatewayAddress, InboundProtocol, ProxyState, ResolvedWaypoint, Service, Upstream, Workload,
};

/// Where one outbound connection goes.
#[derive(Debug)]
pub enum Route {
    /// HBONE to `next_hop` (a ztunnel's or waypoint's 15008) asking for `authority`.
    Hbone {
        next_hop: SocketAddr,
        authority: SocketAddr,
        expected: Vec<Identity>,
        workload: Arc<Workload>,
        service: Option<Arc<Service>>,
        via_waypoint: bool,
    },
    /// Plain TCP to a workload outside the mesh's tunnel.
    Tcp {
        dst: SocketAddr,
        workload: Arc<Workload>,
        service: Option<Arc<Service>>,
    },
    /// Not a mesh destination: plain TCP to where the application dialed.
    Passthrough { dst: SocketAddr },
}

impl Route {
    /// Where the bytes leave to (the next hop's TCP address) and how: `actualDst` and `protocol` of the
    /// connection's `/config_dump` entry.
    pub fn next_hop(&self) -> (SocketAddr, Protocol) {
        match self {
            Route::Hbone { next_hop, .. } => (*next_hop, Protocol::Hbone),
            Route::Tcp { dst, .. } | Route::Passthrough { dst } => (*dst, Protocol::Tcp),
        }
    }

    fn hbone(up: Upstream, service: Option<Arc<Service>>) -> Route {
        let mut expected: Vec<Identity> = service
            .iter()
            .flat_map(|s| s.subject_alt_names.iter())
            .filter_map(|san| san.parse().ok())
            .collect();
        expected.push(up.workload.identity());
        expected.sort();
        expected.dedup();
        Route::Hbone {
            next_hop: SocketAddr::new(up.ip, HBONE_PORT),
            authority: SocketAddr::new(up.ip, up.port),
            expected,
            workload: up.workload,
            service,
            via_waypoint: false,
        }
    }

    fn to_upstream(up: Upstream, service: Option<Arc<Service>>) -> Route {
        match up.workload.protocol {
            InboundProtocol::Hbone => Route::hbone(up, service),
            InboundProtocol::Tcp => Route::Tcp {
                dst: SocketAddr::new(up.ip, up.port),
                workload: up.workload,
                service,
            },
        }
    }

    /// HBONE to a waypoint: the authority is the destination exactly as the application dialed it.
    fn via_waypoint(
        wp: ResolvedWaypoint,
        original: SocketAddr,
        service: Option<Arc<Service>>,
    ) -> Route {
        let up = wp.upstream;
        let mut expected: Vec<Identity> = wp
            .service_sans
            .iter()
            .filter_map(|san| san.parse().ok())
            .collect();
        expected.push(up.workload.identity());
        expected.sort();
        expected.dedup();
        Route::Hbone {
            next_hop: SocketAddr::new(up.ip, up.port),
            authority: original,
            expected,
            workload: up.workload,
            service,
            via_waypoint: true,
        }
    }
}

/// Spec 1.6, as a pure function of the state: `src` is the workload the connection came from, `downstream` the
/// address it came from, `dst` where it was meant to go.
pub fn route(
    state: &ProxyState,
    src: &Workload,
    downstream: IpAddr,
    dst: SocketAddr,
) -> Result<Route, ProxyError> {
    if let Some(svc) = state.service_by_vip(&src.network, dst.ip(), &src.namespace) {
        if let Some(wp) = svc.choose_waypoint() {
            let up = resolve_waypoint(state, wp, src, &svc.hostname)?;
            return Ok(Route::via_waypoint(up, dst, Some(svc)));
        }
        if svc.is_passthrough() {
            return Ok(Route::Passthrough { dst });
        }
        let up = state
            .pick_endpoint(&svc, dst.port(), src, dst.ip())
            .ok_or_else(|| ProxyError::NoHealthyUpstream(svc.hostname.clone()))?;
        return Ok(Route::to_upstream(up, Some(svc)));
    }
    if let Some(w) = state.workload_by_ip(&src.network, dst.ip()) {
        if let Some(wp) = &w.waypoint {
            // Traffic the waypoint itself sends on to its workloads goes straight there. Any of the waypoint's
            // workloads counts, not only the one load balancing would pick.
            let me = src.identity();
            let from_its_waypoint = state
                .waypoint_workloads(wp)
                .iter()
                .any(|w| w.identity() == me && w.workload_ips.contains(&downstream));
            if !from_its_waypoint {
                let up = resolve_waypoint(state, wp, src, &w.name)?;
                return Ok(Route::via_waypoint(up, dst, None));
            }
        }
        return Ok(Route::to_upstream(
            Upstream {
                workload: w,
                ip: dst.ip(),
                port: dst.port(),
            },
            None,
        ));
    }
    Ok(Route::Passthrough { dst })
}

fn resolve_waypoint(
    state: &ProxyState,
    wp: &GatewayAddress,
    src: &Workload,
    what: &str,
) -> Result<ResolvedWaypoint, ProxyError> {
    state
        .resolve_waypoint(wp, src)
        .ok_or_else(|| ProxyError::UnknownWaypoint(what.to_owned()))
}

/// Handles one captured connection: `src` is the application's address, `dst` where it meant to go.
pub async fn handle(
    pi: Arc<ProxyInputs>,
    mut downstream: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    drain: DrainWatcher,
) {
    let span = tracing::info_span!("outbound", src.addr = %src, dst.addr = %dst);
    async move {
        if let Err(e) = proxy(&pi, &mut downstream, src, dst, drain).await {
            warn!(target: "access", direction = "outbound", src.addr = %src, dst.addr = %dst, error = %e, "connection failed");
        }
    }
    .instrument(span)
    .await
}

async fn proxy(
    pi: &ProxyInputs,
    downstream: &mut TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    mut drain: DrainWatcher,
) -> Result<(), ProxyError> {
    if is_self_call(&pi.cfg, dst) {
        return Err(ProxyError::SelfCall(dst));
    }
    pi.sockets.tune(downstream)?;
    let source = pi.local_workload().await?;
    let route = route(&pi.state, &source, src.ip(), dst)?;
    debug!(?route, "routed");
    let (next_hop, protocol) = route.next_hop();
    let _live = pi.track_outbound(src, dst, next_hop, protocol);
    let started = Instant::now();
    let src_principal = Some(source.identity().to_string());

    match route {
        Route::Hbone {
            next_hop,
            authority,
            expected,
            workload,
            service,
            via_waypoint,
        } => {
            let labels = TrafficLabels::new(
                Reporter::source,
                Peer {
                    workload: Some(&source),
                    principal: src_principal,
                    baggage: None,
                },
                Peer {
                    workload: (!via_waypoint).then_some(&*workload),
                    principal: (!via_waypoint).then(|| workload.identity().to_string()),
                    baggage: None,
                },
                service.as_deref(),
                true,
            );
            let mut guard = pi.metrics.open(labels);
            let key = PoolKey {
                src_identity: source.identity(),
                dst_identities: expected,
                dst: next_hop,
                src_ip: src.ip(),
            };
            // Fail closed: a pooled connection was set up while the source's certificate was valid; once it has
            // expired unrenewed (the CA unreachable past its lifetime), no new connection goes out on its name.
            if let Err(e) = pi.certs.check_unexpired(&key.src_identity) {
                let e = ProxyError::Certificate(key.src_identity.clone(), e.to_string());
                guard.fail(e.response_flag());
                return Err(e);
            }
            let request = http::Request::builder()
                .method(http::Method::CONNECT)
                .uri(authority.to_string())
                .header("baggage", headers::baggage(&source))
                .header(
                    "forwarded",
                    headers::forwarded(src, service.as_deref().map(|s| s.hostname.as_str())),
                )
                .header("traceparent", headers::traceparent())
                .body(())
                .map_err(|e| ProxyError::Io(std::io::Error::other(e)))?;
            // Boxed: the CONNECT future (pool checkout, and on a miss the TCP, TLS and HTTP/2 handshakes) is large
            // and lives only until the stream is open; inline, it would size this connection's task for its whole
            // life (measured: `ambit-bench --idle-connections`, docs/PERFORMANCE.md).
            // The response (the destination's `baggage`) is not kept for the connection's life.
            let (stream, _) = match Box::pin(pi.hbone.connect(key, request)).await {
                Ok(ok) => ok,
                Err(e) => {
                    let e = ProxyError::Hbone(e);
                    guard.fail(e.response_flag());
                    return Err(e);
                }
            };
            let result = tokio::select! {
                r = super::copy_hbone(stream, downstream) => r.map_err(ProxyError::Hbone),
                _ = drain.forced() => Err(ProxyError::Io(std::io::Error::other("drained"))),
            };
            let (sent, recv) = match &result {
                Ok(c) => (c.to_h2, c.from_h2),
                Err(_) => (0, 0),
            };
            guard.record_bytes(sent, recv);
            if let Err(e) = &result {
                guard.fail(e.response_flag());
            }
            log_complete(
                src,
                dst,
                Some(next_hop),
                &workload,
                service.as_deref(),
                sent,
                recv,
                started,
                result.as_ref().err(),
            );
            result.map(|_| ())
        }
        Route::Tcp {
            dst: target,
            workload,
            service,
        } => {
            let labels = TrafficLabels::new(
                Reporter::source,
                Peer {
                    workload: Some(&source),
                    principal: src_principal,
                    baggage: None,
                },
                Peer {
                    workload: Some(&workload),
                    principal: None,
                    baggage: None,
                },
                service.as_deref(),
                false,
            );
            let mut guard = pi.metrics.open(labels);
            // Boxed, as is the passthrough's: the plain-TCP state is the largest of this future's branches, and
            // inline it would size every HBONE connection's task too.
            let result = Box::pin(plain(pi, downstream, target, &mut drain)).await;
            let (sent, recv) = *result.as_ref().unwrap_or(&(0, 0));
            guard.record_bytes(sent, recv);
            if let Err(e) = &result {
                guard.fail(e.response_flag());
            }
            log_complete(
                src,
                target,
                None,
                &workload,
                service.as_deref(),
                sent,
                recv,
                started,
                result.as_ref().err(),
            );
            result.map(|_| ())
        }
        Route::Passthrough { dst: target } => Box::pin(plain(pi, downstream, target, &mut drain))
            .await
            .map(|_| ()),
    }
}

/// Plain TCP to `dst`, copied both ways until both sides finish. Returns (sent to upstream, received).
async fn plain(
    pi: &ProxyInputs,
    downstream: &mut TcpStream,
    dst: SocketAddr,
    drain: &mut DrainWatcher,
) -> Result<(u64, u64), ProxyError> {
    let mut upstream = pi
        .sockets
        .connect(dst, None)
        .await
        .map_err(|e| ProxyError::Connect(dst, e))?;
    tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(downstream, &mut upstream, 64 * 1024, 64 * 1024) => Ok(r?),
        _ = drain.forced() => Err(ProxyError::Io(std::io::Error::other("drained"))),
    }
}

#[allow(clippy::too_many_arguments)]
fn log_complete(
    src: SocketAddr,
    dst: SocketAddr,
    hbone_addr: Option<SocketAddr>,
    workload: &Workload,
    service: Option<&Service>,
    sent: u64,
    recv: u64,
    started: Instant,
    error: Option<&ProxyError>,
) {
    let duration = format!("{}ms", started.elapsed().as_millis());
    let hbone_addr = hbone_addr.map(|a| a.to_string());
    let service = service.map(|s| s.hostname.as_str());
    match error {
        None => info!(target: "access", direction = "outbound",
            src.addr = %src, dst.addr = %dst, dst.hbone_addr = hbone_addr, dst.service = service,
            dst.workload = %workload.name, dst.namespace = %workload.namespace, dst.identity = %workload.identity(), bytes_sent = sent, bytes_recv = recv, duration, "connection complete"),
        Some(e) => tracing::error!(target: "access", direction = "outbound",
            src.addr = %src, dst.addr = %dst, dst.hbone_addr = hbone_addr, dst.service = service,
            dst.workload = %workload.name, dst.namespace = %workload.namespace, dst.identity = %workload.identity(), bytes_sent = sent, bytes_recv = recv, duration, error = %e, "connection complete"),
    }
}

#[cfg(test)]
mod tests;
