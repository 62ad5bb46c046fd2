//! Fuzz entry points for every parser of Ambit that sees untrusted bytes.
//!
//! Each target is a plain `fn(&[u8])` that feeds the bytes to the real parser (the same function the data path or
//! the control plane calls) and checks cheap invariants (round trips, idempotence, answers that decode). A panic is
//! a finding. The functions are called by the libFuzzer binaries in `fuzz/targets/` and, over the checked-in
//! corpora, by `tests/replay.rs` (so every fixed crash stays fixed under plain `cargo test`).
//!
//! Bytes are never given a meaning here that the parser would not give them, except where a parser would touch
//! the outside world (a SOCKS5 domain name would be resolved by the system resolver): such spots are documented
//! at the target.

mod config;
#[doc(hidden)]
pub mod harness {
    //! Views into what a target saw, for the tests that prove the targets reach their parsers.
    pub use crate::dns::answer as dns_answer;
    pub use crate::hbone::{connect_exchange as hbone_connect_exchange, connect_frames};
    pub use crate::waypoint_http::exchange as waypoint_http_exchange;
}
mod csr;
mod dns;
mod hbone;
mod runtime;
mod socks5;
mod waypoint;
mod waypoint_http;
mod xds;
mod zds;

pub use config::{controller_manifest, waypoint_localconfig, ztunnel_localconfig};
pub use csr::ca_csr;
pub use dns::dns_query;
pub use hbone::{H2_PREFACE, hbone_connect, hbone_headers};
pub use socks5::socks5;
pub use waypoint::{MESH_YAML, waypoint_xds};
pub use waypoint_http::waypoint_http;
pub use xds::{xds_address, xds_authorization};
pub use zds::zds_session;

/// One fuzz target: its name (the corpus directory and the libFuzzer binary) and its entry point.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// What it covers, for `run.sh` and the reliability notes.
    pub covers: &'static str,
}

/// Every target, in the order `run.sh all` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "hbone_headers",
        run: hbone_headers,
        covers: "CONNECT authority, baggage, forwarded (host= and for=), traceparent and SPIFFE identity parsers",
    },
    Target {
        name: "hbone_connect",
        run: hbone_connect,
        covers: "raw HTTP/2 from a peer into ambit_core::hbone::serve (h2 framing, HPACK, CONNECT checks)",
    },
    Target {
        name: "socks5",
        run: socks5,
        covers: "ztunnel's SOCKS5 greeting and CONNECT request over a loopback TCP pair",
    },
    Target {
        name: "zds_session",
        run: zds_session,
        covers: "ZDS packets from the node agent into ztunnel's inpod::serve session over a SOCK_SEQPACKET pair",
    },
    Target {
        name: "xds_address",
        run: xds_address,
        covers: "istio.workload.Address decode, conversion and store indexing in ztunnel's ProxyState",
    },
    Target {
        name: "xds_authorization",
        run: xds_authorization,
        covers: "istio.security.Authorization decode, conversion, store and L4 RBAC evaluation",
    },
    Target {
        name: "waypoint_xds",
        run: waypoint_xds,
        covers: "the waypoint's xDS resources (Address, Route, BackendPolicy, RateLimit, RequestAuthn, Authz) through decode_resource and a snapshot build",
    },
    Target {
        name: "waypoint_http",
        run: waypoint_http,
        covers: "HTTP/1.1 bytes through hyper into the waypoint's request handler (routing, filters, authz, answers)",
    },
    Target {
        name: "ztunnel_localconfig",
        run: ztunnel_localconfig,
        covers: "ztunnel's local config YAML (LOCAL_XDS) and applying it to a ProxyState",
    },
    Target {
        name: "waypoint_localconfig",
        run: waypoint_localconfig,
        covers: "the waypoint's local config YAML into resources and a snapshot",
    },
    Target {
        name: "controller_manifest",
        run: controller_manifest,
        covers: "multi-document manifest YAML into the controller's typed objects (parse_document, document_key)",
    },
    Target {
        name: "dns_query",
        run: dns_query,
        covers: "DNS query packets into ztunnel's DnsProxy (UDP and TCP limits), answers re-decoded",
    },
    Target {
        name: "ca_csr",
        run: ca_csr,
        covers: "CSRs at the CA: the controller's csr_identity and the signer's sign_csr",
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Splits `data` into records of `[len: u16 big-endian][len bytes]` (a short last record takes what is left).
pub(crate) fn records(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let take = len.min(rest.len());
        out.push(&rest[..take]);
        data = &rest[take..];
    }
    out
}

/// The inverse of `records`, for seeds.
pub fn encode_records(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        let len = u16::try_from(p.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&p[..usize::from(len)]);
    }
    out
}
