//! Inbound HBONE on 15008: mTLS as the destination workload, then HTTP/2 CONNECT streams, each checked as in
//! spec 1.5 (authority, destination, L4 authorization) before it is joined to the local application.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_core::Identity;
use ambit_core::cert::Priority;
use ambit_core::drain::DrainWatcher;
use ambit_core::hbone::{self, Authority, Responder};
use ambit_core::tls::TlsAcceptor;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{Instrument, debug, info, warn};

use super::connections::Protocol;
use super::proxy_protocol;
use super::{
    ProxyError, ProxyInputs, headers, is_illegal_target_port, recheck_policy, socket,
    spoofed_source,
};
use crate::metrics::{Peer, Reporter, TrafficLabels};
use crate::rbac::Connection;
use crate::state::{AppTunnelProtocol, Workload};

const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one TCP connection accepted on the HBONE port.
pub async fn handle(pi: Arc<ProxyInputs>, tcp: TcpStream, peer: SocketAddr, drain: DrainWatcher) {
    let span = tracing::info_span!("inbound", src.addr = %peer);
    async move {
        if let Err(e) = serve(pi, tcp, peer, drain).await {
            warn!(target: "access", direction = "inbound", src.addr = %peer, error = %e, "connection failed");
        }
    }
    .instrument(span)
    .await
}

async fn serve(
    pi: Arc<ProxyInputs>,
    tcp: TcpStream,
    peer: SocketAddr,
    drain: DrainWatcher,
) -> Result<(), ProxyError> {
    pi.sockets.tune(&tcp)?;
    let local = socket::canonical(tcp.local_addr()?);
    // The certificate is that of the workload the connection was addressed to (dedicated mode: the one we serve).
    let dst = pi.local_workload().await?;
    let id = dst.identity();
    let cert = pi
        .certs
        .fetch(&id, Priority::RealTime)
        .await
        .map_err(|e| ProxyError::Certificate(id.clone(), e.to_string()))?;
    let acceptor =
        TlsAcceptor::new(cert, pi.tls_backend).map_err(|e| ProxyError::Tls(e.to_string()))?;
    let mut tls = tokio::time::timeout(pi.h2.handshake_timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| ProxyError::Tls("handshake timed out".into()))?
        .map_err(|e| ProxyError::Tls(e.to_string()))?;
    let peer_id = tls.peer_identity();
    // Under a CRL the connection lives only as long as the peer is not revoked (as upstream: `CERT_REVOKED`).
    let revocation = tls.take_revocation();
    debug!(src.identity = ?peer_id.as_ref().map(|i| i.to_string()), "mTLS established");
    let h2 = pi.h2.clone();
    let stream_drain = drain.clone();
    let cert_id = Arc::new(id);
    let handler = move |parts, responder| {
        // Only what the stream uses is kept: the request itself (its headers: ~1 KiB) goes before the stream's
        // task starts, rather than living as long as the connection.
        let request = Connect::of(parts);
        let pi = pi.clone();
        let peer_id = peer_id.clone();
        let drain = stream_drain.clone();
        let cert_id = cert_id.clone();
        async move {
            // Fail closed: this connection was set up while its certificate was valid; once that expired
            // unrenewed, its streams are refused as a new handshake would be.
            if let Err(e) = pi.certs.check_unexpired(&cert_id) {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    responder,
                    peer,
                    &request.authority,
                    &e.to_string(),
                );
            }
            stream(pi, request, responder, peer, peer_id, local, drain).await
        }
    };
    match revocation {
        None => hbone::serve(tls, h2, drain, handler).await,
        // Boxed: only connections under a CRL pay for the watch in their task.
        Some(watch) => Box::pin(ambit_core::tls::until_revoked(
            hbone::serve(tls, h2, drain, handler),
            Some(watch),
        ))
        .await
        .map_err(|e| ProxyError::Tls(format!("CERT_REVOKED: {e}")))?,
    }
    .map_err(ProxyError::Hbone)
}

/// Why a CONNECT stream was refused, and with which status.
fn refuse(status: StatusCode, responder: Responder, peer: SocketAddr, authority: &str, why: &str) {
    warn!(target: "access", direction = "inbound", src.addr = %peer, dst.addr = authority, status = status.as_u16(),
        error = why, "connection failed");
    responder.reject(status);
}

/// What a stream needs of its CONNECT request.
struct Connect {
    authority: String,
    /// `forwarded: host=` (the service hostname the client addressed), when present and not empty.
    for_host: Option<String>,
    /// The `baggage` header, read only when the peer's workload is not known from xDS (its telemetry labels).
    baggage: Option<HeaderValue>,
}

impl Connect {
    fn of(mut parts: http::request::Parts) -> Connect {
        Connect {
            baggage: parts.headers.remove("baggage"),
            authority: parts
                .uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default(),
            for_host: forwarded_host(&parts.headers).map(str::to_owned),
        }
    }
}

async fn stream(
    pi: Arc<ProxyInputs>,
    request: Connect,
    responder: Responder,
    peer: SocketAddr,
    peer_id: Option<Identity>,
    local: SocketAddr,
    mut drain: DrainWatcher,
) {
    let started = Instant::now();
    let Connect {
        authority: authority_str,
        for_host,
        baggage,
    } = request;
    let for_host = for_host.as_deref();
    let authority = match hbone::parse_authority(&authority_str) {
        Ok(a) => a,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                responder,
                peer,
                &authority_str,
                &e.to_string(),
            );
        }
    };
    let dst_workload = match pi.local_workload().await {
        Ok(w) => w,
        Err(e) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                responder,
                peer,
                &authority_str,
                &e.to_string(),
            );
        }
    };
    let target = match resolve_target(&pi, &dst_workload, &authority, local.ip()) {
        Ok(t) => t,
        Err((status, why)) => return refuse(status, responder, peer, &authority_str, &why),
    };
    let conn = Connection {
        src: peer,
        src_identity: peer_id.clone(),
        dst: target,
    };
    let service = for_host.and_then(|h| pi.state.service_by_hostname(h, &dst_workload.namespace));
    let src_workload = pi.state.workload_by_ip(&dst_workload.network, peer.ip());
    // A peer xDS does not know (another cluster's, or a network gateway's) is described by its baggage.
    let src_baggage = match (&src_workload, &baggage) {
        (None, Some(v)) => v.to_str().ok().map(headers::parse_baggage),
        _ => None,
    };
    let labels = TrafficLabels::new(
        Reporter::destination,
        Peer {
            workload: src_workload.as_deref(),
            principal: peer_id.as_ref().map(|i| i.to_string()),
            baggage: src_baggage.as_ref(),
        },
        Peer {
            workload: Some(&dst_workload),
            principal: Some(dst_workload.identity().to_string()),
            baggage: None,
        },
        service.as_deref(),
        true,
    );
    // Subscribed before the first check, so a change between the check and the copy is not missed.
    let changes = pi.state.policy_changes();
    if let Err(denied) = pi.state.assert_rbac(&dst_workload, &conn) {
        pi.metrics.failed_early(labels, "DENY");
        return refuse(
            StatusCode::UNAUTHORIZED,
            responder,
            peer,
            &authority_str,
            &denied.to_string(),
        );
    }
    let mut guard = pi.metrics.open(labels);
    // Upstream's rule: a stream with a proven peer identity is HBONE.
    let protocol = if peer_id.is_some() {
        Protocol::Hbone
    } else {
        Protocol::Tcp
    };
    let (dial, src) = match localhost_app_tunnel(&pi, &dst_workload, target) {
        // The workload's own application tunnel listens on loopback: dial it there, from loopback.
        Some(dial) => (dial, None),
        None => (target, spoofed_source(&pi, peer.ip())),
    };
    let _live = pi.track_inbound(peer, for_host, dial, protocol);
    let connect = pi.sockets.connect(dial, src);
    let mut upstream = match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            guard.fail("CONNECT");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                responder,
                peer,
                &authority_str,
                &e.to_string(),
            );
        }
        Err(_) => {
            guard.fail("CONNECT");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                responder,
                peer,
                &authority_str,
                "upstream connect timed out",
            );
        }
    };
    if let Some(header) =
        proxy_protocol_header(&pi, &dst_workload, &authority, peer, target, &peer_id)
        && let Err(e) = upstream.write_all(&header).await
    {
        guard.fail("CONNECT");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            responder,
            peer,
            &authority_str,
            &format!("writing the PROXY protocol header: {e}"),
        );
    }
    let mut response_headers = HeaderMap::new();
    if pi.cfg.enable_response_baggage
        && let Ok(v) = HeaderValue::from_str(&headers::baggage(&dst_workload))
    {
        response_headers.insert("baggage", v);
    }
    let h2 = match responder.accept(response_headers) {
        Ok(s) => s,
        Err(e) => {
            guard.fail("CONNECT");
            warn!(error = %e, "could not answer CONNECT");
            return;
        }
    };
    let result = tokio::select! {
        r = hbone::copy_bidirectional(h2, &mut upstream) => r.map_err(ProxyError::Hbone),
        denied = recheck_policy(&pi, changes, &dst_workload, &conn) => Err(ProxyError::Denied(denied)),
        _ = drain.forced() => Err(ProxyError::Io(std::io::Error::other("drained"))),
    };
    let (recv, sent) = match &result {
        Ok(c) => (c.from_h2, c.to_h2),
        Err(_) => (0, 0),
    };
    guard.record_bytes(recv, sent);
    if let Err(e) = &result {
        guard.fail(e.response_flag());
    }
    let duration = format!("{}ms", started.elapsed().as_millis());
    let src_identity = peer_id.map(|i| i.to_string());
    match &result {
        Ok(_) => {
            info!(target: "access", direction = "inbound", src.addr = %peer, src.identity = src_identity, dst.addr = %target,
            dst.hbone_addr = %local, dst.workload = %dst_workload.name, dst.namespace = %dst_workload.namespace,
            dst.identity = %dst_workload.identity(), bytes_sent = sent, bytes_recv = recv,
            duration, "connection complete")
        }
        Err(e) => {
            tracing::error!(target: "access", direction = "inbound", src.addr = %peer, src.identity = src_identity, dst.addr = %target,
            dst.hbone_addr = %local, dst.workload = %dst_workload.name, dst.namespace = %dst_workload.namespace,
            dst.identity = %dst_workload.identity(), bytes_sent = sent, bytes_recv = recv,
            duration, error = %e, "connection complete")
        }
    }
}

/// Spec 1.5: where the stream goes on this pod, or the status that refuses it.
fn resolve_target(
    pi: &ProxyInputs,
    dst: &Workload,
    authority: &Authority,
    dialed: IpAddr,
) -> Result<SocketAddr, (StatusCode, String)> {
    let port = match authority {
        Authority::Addr(addr) => {
            let ip = socket::canonical(*addr).ip();
            let app_tunnel = dst.application_tunnel.is_some();
            if ip != dialed && !app_tunnel && !is_waypoint_for(pi, dst, ip) {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("ip mismatch: authority {ip}, connection to {dialed}"),
                ));
            }
            addr.port()
        }
        Authority::Host(host, port) => {
            let svc = pi
                .state
                .service_by_hostname(host, &dst.namespace)
                .ok_or_else(|| {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("unknown service {host}"),
                    )
                })?;
            pi.state.target_port(&svc, *port, dst).ok_or_else(|| {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{host} has no port {port}"),
                )
            })?
        }
    };
    let port = dst
        .application_tunnel
        .as_ref()
        .and_then(|t| t.port)
        .unwrap_or(port);
    if is_illegal_target_port(&pi.cfg, port) {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("refusing to forward to ztunnel's own port {port}"),
        ));
    }
    Ok(SocketAddr::new(dialed, port))
}

/// `LOCALHOST_APP_TUNNEL` (default on), as upstream: a workload whose application tunnel speaks PROXY protocol is
/// reached on loopback at the tunnel port, so the tunnel cannot be used without going through ztunnel. `None`
/// when the setting is off or the workload has no such tunnel (authorization still sees the pod address).
fn localhost_app_tunnel(
    pi: &ProxyInputs,
    dst: &Workload,
    target: SocketAddr,
) -> Option<SocketAddr> {
    let tunnel = dst.application_tunnel.as_ref()?;
    if !pi.cfg.localhost_app_tunnel || tunnel.protocol != AppTunnelProtocol::Proxy {
        return None;
    }
    let loopback = match target {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    Some(SocketAddr::new(loopback, target.port()))
}

/// Spec 1.10: the PROXY v2 header for a workload whose application tunnel speaks it. The destination is the
/// authority's address; for a hostname authority, a VIP of the service (this network's first, IPv4 first) with the
/// requested port, and the hostname goes in its own TLV.
fn proxy_protocol_header(
    pi: &ProxyInputs,
    dst: &Workload,
    authority: &Authority,
    peer: SocketAddr,
    target: SocketAddr,
    peer_id: &Option<Identity>,
) -> Option<Vec<u8>> {
    if dst.application_tunnel.as_ref()?.protocol != AppTunnelProtocol::Proxy {
        return None;
    }
    let (destination, hostname) = match authority {
        Authority::Addr(addr) => (*addr, None),
        Authority::Host(host, port) => {
            let vip = pi
                .state
                .service_by_hostname(host, &dst.namespace)
                .and_then(|svc| {
                    svc.vips
                        .iter()
                        .min_by_key(|v| (v.network != dst.network, !v.address.is_ipv4()))
                        .map(|v| v.address)
                });
            let ip = vip.unwrap_or(target.ip());
            (SocketAddr::new(ip, *port), Some(host.as_str()))
        }
    };
    let identity = peer_id.as_ref().map(ToString::to_string);
    Some(proxy_protocol::v2_header(
        peer,
        destination,
        identity.as_deref(),
        hostname,
    ))
}

/// True when `ip` belongs to a workload or service whose waypoint is this workload (the sandwich case). Every
/// waypoint the service may use counts, and any workload of that waypoint (not only the one load balancing picks).
fn is_waypoint_for(pi: &ProxyInputs, me: &Workload, ip: IpAddr) -> bool {
    let waypoints: Vec<_> = match pi.state.service_by_vip(&me.network, ip, &me.namespace) {
        Some(s) => s
            .waypoint
            .iter()
            .chain(s.weighted_waypoints.iter().map(|w| &w.destination))
            .cloned()
            .collect(),
        None => pi
            .state
            .workload_by_ip(&me.network, ip)
            .and_then(|w| w.waypoint.clone())
            .into_iter()
            .collect(),
    };
    waypoints.iter().any(|g| {
        pi.state
            .waypoint_workloads(g)
            .iter()
            .any(|w| w.uid == me.uid)
    })
}

/// The service the client dialled, from the `forwarded` header's `host=`: the destination service for telemetry
/// and the `originalDst` of the stream's `/config_dump` entry.
fn forwarded_host(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("forwarded")?.to_str().ok()?;
    headers::forwarded_host(value).filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    /// The size of what calling a seven-argument `f` returns (here, an `async fn`'s future).
    #[allow(clippy::too_many_arguments)]
    fn returned_size<A, B, C, D, E, F, G, R>(_: impl FnOnce(A, B, C, D, E, F, G) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Each CONNECT stream is a task of its own for the connection's life: its future is what an idle tunnelled
    /// connection costs on this side (with tokio's ~120 bytes and the allocator's size class on top). 2,784 bytes
    /// when the request headers were kept and the branches inline; a ceiling, not the figure.
    #[test]
    fn a_streams_future_stays_small() {
        let n = returned_size(super::stream);
        println!("inbound::stream future: {n} bytes");
        assert!(n <= 3000, "inbound::stream's future grew to {n} bytes");
    }
}
