//! DNS queries from a pod into ztunnel's DNS proxy, answered from a mesh loaded from ztunnel's own test fixture
//! (no upstream resolvers: a name the mesh does not know is answered SERVFAIL without leaving the process).

use std::cell::OnceCell;
use std::sync::Arc;
use std::time::Duration;

use ambit_ztunnel::dns::{DnsConfig, DnsProxy};
use ambit_ztunnel::state::ProxyState;
use hickory_proto::op::{Message, MessageType};

use crate::runtime::block_on_within;

/// Every field of ztunnel's local config format, from ztunnel's tests.
pub const FIXTURE: &str = include_str!("../../ztunnel/tests/fixtures/full.yaml");

thread_local! {
    static PROXY: OnceCell<Option<DnsProxy>> = const { OnceCell::new() };
}

fn build() -> Option<DnsProxy> {
    let cfg = ambit_ztunnel::localconfig::parse(FIXTURE).ok()?;
    let client = cfg.workloads.first().cloned().map(Arc::new);
    let state = ProxyState::new();
    state.replace_all(cfg);
    let dns = DnsConfig {
        cluster_domain: "cluster.local".into(),
        search_domains: None,
        upstreams: vec![],
        prefered_service_namespace: None,
        ipv6_enabled: true,
        forward_timeout: Duration::from_secs(1),
    };
    Some(DnsProxy::new(
        state,
        Arc::new(dns),
        Arc::new(move || client.clone()),
    ))
}

/// Input: one DNS message as a client sends it; the first byte's low bit chooses TCP (1) or UDP (0) limits.
pub fn dns_query(data: &[u8]) {
    let _ = answer(data);
}

/// The proxy's decoded answer (for the harness tests); `None` when there was none.
#[doc(hidden)]
pub fn answer(data: &[u8]) -> Option<Message> {
    let (&mode, packet) = data.split_first()?;
    let tcp = mode & 1 == 1;
    let Some(proxy) = PROXY.with(|p| p.get_or_init(build).clone()) else {
        panic!("dns target: the fixture mesh does not load");
    };
    let packet = packet.to_vec();
    let answer = block_on_within(Duration::from_secs(10), async move {
        proxy.handle_on(&packet, tcp).await
    })?;
    let Some(answer) = answer else {
        // No answer only when there was not even a header.
        assert!(data.len() < 3, "no answer to a packet with a header");
        return None;
    };
    let resp = Message::from_vec(&answer)
        .unwrap_or_else(|e| panic!("the proxy's answer does not decode: {e}"));
    assert_eq!(resp.metadata.message_type, MessageType::Response);
    assert_eq!(
        resp.metadata.id,
        u16::from_be_bytes([data[1], data[2]]),
        "answer id differs from the query id"
    );
    if !tcp {
        let limit = Message::from_vec(&data[1..])
            .ok()
            .and_then(|q| q.edns.map(|e| usize::from(e.max_payload())))
            .unwrap_or(512)
            .max(512);
        assert!(
            answer.len() <= limit,
            "UDP answer of {} bytes over the client's {limit}",
            answer.len()
        );
    }
    Some(resp)
}
