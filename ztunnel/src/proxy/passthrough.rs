//! Inbound plaintext on 15006: connections from outside the mesh, redirected in the pod. No identity, so any
//! policy that needs a principal or namespace denies them (this is how STRICT PeerAuthentication works). A live
//! connection is re-checked on every authorization change, as HBONE streams are, and closed once denied.

use std::net::SocketAddr;
use std::sync::Arc;

use ambit_core::drain::DrainWatcher;
use tokio::net::TcpStream;
use tracing::{Instrument, info, warn};

use super::connections::Protocol;
use super::{
    ProxyError, ProxyInputs, is_illegal_target_port, recheck_policy, socket, spoofed_source,
};
use crate::metrics::{Peer, Reporter, TrafficLabels};
use crate::rbac::Connection;

pub async fn handle(
    pi: Arc<ProxyInputs>,
    mut downstream: TcpStream,
    peer: SocketAddr,
    mut drain: DrainWatcher,
) {
    let span = tracing::info_span!("inbound_passthrough", src.addr = %peer);
    async move {
        let result = proxy(&pi, &mut downstream, peer, &mut drain).await;
        match result {
            Ok((dst, sent, recv)) => info!(target: "access", direction = "inbound", src.addr = %peer, dst.addr = %dst,
                bytes_sent = sent, bytes_recv = recv, "connection complete"),
            Err(e) => warn!(target: "access", direction = "inbound", src.addr = %peer, error = %e, "connection failed"),
        }
    }
    .instrument(span)
    .await
}

async fn proxy(
    pi: &ProxyInputs,
    downstream: &mut TcpStream,
    peer: SocketAddr,
    drain: &mut DrainWatcher,
) -> Result<(SocketAddr, u64, u64), ProxyError> {
    let dst = socket::canonical(socket::original_dst(downstream).map_err(ProxyError::OriginalDst)?);
    if is_illegal_target_port(&pi.cfg, dst.port()) {
        return Err(ProxyError::SelfCall(dst));
    }
    pi.sockets.tune(downstream)?;
    let dst_workload = pi.local_workload().await?;
    let src_workload = pi.state.workload_by_ip(&dst_workload.network, peer.ip());
    let labels = TrafficLabels::new(
        Reporter::destination,
        Peer {
            workload: src_workload.as_deref(),
            principal: None,
            baggage: None,
        },
        Peer {
            workload: Some(&dst_workload),
            principal: Some(dst_workload.identity().to_string()),
            baggage: None,
        },
        None,
        false,
    );
    let conn = Connection {
        src: peer,
        src_identity: None,
        dst,
    };
    // Subscribed before the first check, so a change between the check and the copy is not missed.
    let changes = pi.state.policy_changes();
    if let Err(denied) = pi.state.assert_rbac(&dst_workload, &conn) {
        pi.metrics.failed_early(labels, "DENY");
        return Err(denied.into());
    }
    let mut guard = pi.metrics.open(labels);
    let _live = pi.track_inbound(peer, None, dst, Protocol::Tcp);
    let mut upstream = match pi.sockets.connect(dst, spoofed_source(pi, peer.ip())).await {
        Ok(s) => s,
        Err(e) => {
            guard.fail("CONNECT");
            return Err(ProxyError::Connect(dst, e));
        }
    };
    let copied = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(downstream, &mut upstream, 64 * 1024, 64 * 1024) => r.map_err(ProxyError::Io),
        denied = recheck_policy(pi, changes, &dst_workload, &conn) => Err(ProxyError::Denied(denied)),
        _ = drain.forced() => Err(ProxyError::Io(std::io::Error::other("drained"))),
    };
    match copied {
        Ok((from_client, to_client)) => {
            guard.record_bytes(from_client, to_client);
            Ok((dst, to_client, from_client))
        }
        Err(e) => {
            guard.fail(e.response_flag());
            Err(e)
        }
    }
}
