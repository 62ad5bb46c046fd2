//! HBONE: TCP carried in HTTP/2 CONNECT streams (inside mutual TLS, which the caller provides).
//!
//! Built on raw `h2` moving `Bytes`: [`server::serve`] answers CONNECT streams on one connection,
//! [`client::HboneClient`] opens them over pooled connections, and [`copy_bidirectional`] joins a stream to a
//! socket without copying payload between buffers.

mod client;
mod server;
mod stream;

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

pub use client::{Connect, HboneClient, PoolKey};
pub use server::{Responder, serve};
pub use stream::{CopyResult, H2Stream, copy_bidirectional};

/// HTTP/2 settings and pool limits (spec 1.3 and 1.7); `Default` gives upstream's values.
#[derive(Clone, Debug)]
pub struct H2Config {
    pub stream_window: u32,
    pub connection_window: u32,
    pub frame_size: u32,
    pub client_max_header_list: u32,
    pub server_max_header_list: u32,
    pub server_max_concurrent_streams: u32,
    pub server_send_buffer: usize,
    pub pool_max_streams_per_conn: u32,
    /// How long the pool keeps a key's one spare connection (its most recently used idle one, when none of the
    /// key's connections is busy) before releasing it (`POOL_UNUSED_RELEASE_TIMEOUT` in ztunnel).
    pub pool_idle_timeout: Duration,
    /// How long any other idle connection stays: the connections a burst opened beyond what the key needs once it
    /// is over are closed this soon after going idle, not kept for `pool_idle_timeout`. At most `pool_idle_timeout`.
    pub pool_surplus_idle_timeout: Duration,
    pub pool_capacity: usize,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// How long a new server connection may take to complete its handshakes (TLS where the proxy terminates it,
    /// then the HTTP/2 preface and SETTINGS) before it is closed: a peer that connects and stalls holds a socket
    /// and a task for this long at most.
    pub handshake_timeout: Duration,
}

impl Default for H2Config {
    fn default() -> Self {
        H2Config {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            frame_size: 1024 * 1024,
            client_max_header_list: 16 * 1024,
            server_max_header_list: 64 * 1024,
            server_max_concurrent_streams: 200,
            server_send_buffer: 400 * 1024,
            pool_max_streams_per_conn: 100,
            pool_idle_timeout: Duration::from_secs(300),
            pool_surplus_idle_timeout: Duration::from_secs(5),
            pool_capacity: 500,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    /// The TCP connection to the next hop could not be made.
    #[error("transport: {0}")]
    Transport(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("http/2 handshake: {0}")]
    Handshake(h2::Error),
    #[error("http/2: {0}")]
    H2(#[from] h2::Error),
    /// The peer answered the CONNECT with something other than 200.
    #[error("CONNECT answered {0}")]
    Status(http::StatusCode),
    #[error("bad authority {0:?}")]
    BadAuthority(String),
    #[error("stream reset by peer: {0:?}")]
    Reset(h2::Reason),
    #[error("keepalive: no PONG from the peer in time")]
    KeepaliveTimeout,
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl HboneError {
    /// Istio's response flag for telemetry.
    pub fn response_flag(&self) -> &'static str {
        match self {
            HboneError::Tls(_) => "TLS_FAILURE",
            HboneError::Handshake(_) => "H2_HANDSHAKE_FAILURE",
            HboneError::Status(s) if *s == http::StatusCode::UNAUTHORIZED => "DENY",
            _ => "CONNECT",
        }
    }

    /// Whether a new attempt could succeed (the request never reached the destination application).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            HboneError::Transport(_) | HboneError::Handshake(_) | HboneError::KeepaliveTimeout
        )
    }
}

/// A CONNECT target: a socket address, or `host:port` (service hostname authorities).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authority {
    Addr(SocketAddr),
    Host(String, u16),
}

/// Parses an authority: a whole socket address first (IPv6 bracketed), else `host:port` with a numeric port.
pub fn parse_authority(a: &str) -> Result<Authority, HboneError> {
    if let Ok(addr) = SocketAddr::from_str(a) {
        return Ok(Authority::Addr(addr));
    }
    let bad = || HboneError::BadAuthority(a.to_owned());
    let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let valid_host = !host.is_empty()
        && !host.contains(['[', ']', ':', '/', ' ', '@'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' || c == '*');
    if !valid_host {
        return Err(bad());
    }
    Ok(Authority::Host(host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(
            parse_authority("10.0.0.1:80").unwrap(),
            Authority::Addr("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            parse_authority("[fd00::1]:8080").unwrap(),
            Authority::Addr("[fd00::1]:8080".parse().unwrap())
        );
        assert_eq!(
            parse_authority("svc.ns.svc.cluster.local:9080").unwrap(),
            Authority::Host("svc.ns.svc.cluster.local".into(), 9080)
        );
        for bad in [
            "10.0.0.1",
            "svc",
            "svc:",
            ":80",
            "svc:http",
            "svc:99999",
            "fd00::1:80x",
            "a b:80",
            "",
            "[::1]",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn flags() {
        assert_eq!(
            HboneError::Status(http::StatusCode::UNAUTHORIZED).response_flag(),
            "DENY"
        );
        assert_eq!(HboneError::Tls("x".into()).response_flag(), "TLS_FAILURE");
        assert_eq!(HboneError::Transport("x".into()).response_flag(), "CONNECT");
        assert!(HboneError::Transport("x".into()).retryable());
        assert!(!HboneError::Status(http::StatusCode::BAD_REQUEST).retryable());
    }
}
