//! SOCKS5 on 127.0.0.1:15080 (`UNSTABLE_ENABLE_SOCKS5=true`): no authentication, CONNECT only, to an IPv4, IPv6 or
//! domain address. The chosen destination then goes through the outbound path like a captured connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ambit_core::drain::DrainWatcher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::warn;

use super::{ProxyInputs, outbound};

#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    #[error("not SOCKS version 5 (got {0})")]
    Version(u8),
    #[error("request is not SOCKS version 5 (got {0})")]
    RequestVersion(u8),
    #[error("the client offers no 'no authentication' method")]
    NoAcceptableMethod,
    #[error("only CONNECT is supported (got command {0})")]
    Command(u8),
    #[error("unknown address type {0}")]
    AddressType(u8),
    #[error("could not resolve {0}")]
    Resolve(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

// Reply codes (RFC 1928 section 6).
const REP_SUCCESS: u8 = 0;
const REP_GENERAL_FAILURE: u8 = 1;
const REP_HOST_UNREACHABLE: u8 = 4;
const REP_COMMAND_NOT_SUPPORTED: u8 = 7;
const REP_ADDRESS_NOT_SUPPORTED: u8 = 8;

pub async fn handle(
    pi: Arc<ProxyInputs>,
    mut stream: TcpStream,
    peer: SocketAddr,
    drain: DrainWatcher,
) {
    // A client that connects and stalls is let go after the handshake timeout, as on the HBONE port.
    let handshake =
        match tokio::time::timeout(pi.cfg.handshake_timeout, handshake(&mut stream)).await {
            Ok(r) => r,
            Err(_) => Err(Socks5Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no SOCKS5 greeting and request in time",
            ))),
        };
    match handshake {
        Ok(dst) => outbound::handle(pi, stream, peer, dst, drain).await,
        Err(e) => {
            warn!(src.addr = %peer, error = %e, "socks5 handshake failed");
            if let Some(rep) = reply_code(&e) {
                let _ = reply(&mut stream, rep).await;
            }
            // Boxed: an error path only, which would otherwise size every SOCKS5 connection's task.
            Box::pin(linger(stream)).await;
        }
    }
}

/// Closes after an answer without losing it: a close with unread input sends an RST, and an RST can discard the
/// answer before the client reads it. So: FIN first, then read and drop what the client still sends, until it
/// closes too, [`LINGER`] passes or [`LINGER_BYTES`] have come.
async fn linger(mut stream: TcpStream) {
    const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
    const LINGER_BYTES: usize = 64 * 1024;
    let _ = stream.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut seen = 0;
        while seen < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The reply a failed handshake gets (RFC 1928 section 6), if any: none to a greeting that is not SOCKS5 or offers
/// no method we accept (the method answer `05 ff` was the answer), one to a failed request.
fn reply_code(e: &Socks5Error) -> Option<u8> {
    match e {
        Socks5Error::Version(_) | Socks5Error::NoAcceptableMethod => None,
        Socks5Error::Command(_) => Some(REP_COMMAND_NOT_SUPPORTED),
        Socks5Error::AddressType(_) => Some(REP_ADDRESS_NOT_SUPPORTED),
        Socks5Error::Resolve(_) => Some(REP_HOST_UNREACHABLE),
        Socks5Error::RequestVersion(_) | Socks5Error::Io(_) => Some(REP_GENERAL_FAILURE),
    }
}

async fn reply(stream: &mut TcpStream, rep: u8) -> std::io::Result<()> {
    // Bound address 0.0.0.0:0: clients do not use it.
    stream.write_all(&[5, rep, 0, 1, 0, 0, 0, 0, 0, 0]).await
}

/// Reads the greeting and the CONNECT request, answers success, and returns the destination.
pub async fn handshake(stream: &mut TcpStream) -> Result<SocketAddr, Socks5Error> {
    let version = stream.read_u8().await?;
    if version != 5 {
        return Err(Socks5Error::Version(version));
    }
    let n = stream.read_u8().await? as usize;
    let mut methods = vec![0u8; n];
    stream.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        stream.write_all(&[5, 0xff]).await?;
        return Err(Socks5Error::NoAcceptableMethod);
    }
    stream.write_all(&[5, 0]).await?;

    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(Socks5Error::RequestVersion(head[0]));
    }
    if head[1] != 1 {
        return Err(Socks5Error::Command(head[1]));
    }
    let ip = match head[3] {
        1 => {
            let mut b = [0u8; 4];
            stream.read_exact(&mut b).await?;
            IpAddr::V4(Ipv4Addr::from(b))
        }
        4 => {
            let mut b = [0u8; 16];
            stream.read_exact(&mut b).await?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
        3 => {
            let len = stream.read_u8().await? as usize;
            let mut name = vec![0u8; len];
            stream.read_exact(&mut name).await?;
            let name = String::from_utf8_lossy(&name).into_owned();
            let port = stream.read_u16().await?;
            let addr = tokio::net::lookup_host((name.as_str(), port))
                .await
                .ok()
                .and_then(|mut it| it.next())
                .ok_or(Socks5Error::Resolve(name))?;
            reply(stream, REP_SUCCESS).await?;
            return Ok(addr);
        }
        other => return Err(Socks5Error::AddressType(other)),
    };
    let port = stream.read_u16().await?;
    reply(stream, REP_SUCCESS).await?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn connect_ipv4_and_ipv6() {
        for (atyp, addr, expect) in [
            (1u8, vec![10, 0, 0, 1], "10.0.0.1:8080"),
            (4u8, Ipv6Addr::LOCALHOST.octets().to_vec(), "[::1]:8080"),
        ] {
            let (mut c, mut s) = pair().await;
            let server = tokio::spawn(async move { handshake(&mut s).await.unwrap() });
            c.write_all(&[5, 1, 0]).await.unwrap();
            let mut m = [0u8; 2];
            c.read_exact(&mut m).await.unwrap();
            assert_eq!(m, [5, 0]);
            let mut req = vec![5, 1, 0, atyp];
            req.extend_from_slice(&addr);
            req.extend_from_slice(&8080u16.to_be_bytes());
            c.write_all(&req).await.unwrap();
            let mut rep = [0u8; 10];
            c.read_exact(&mut rep).await.unwrap();
            assert_eq!(rep[1], REP_SUCCESS);
            assert_eq!(server.await.unwrap(), expect.parse::<SocketAddr>().unwrap());
        }
    }

    #[tokio::test]
    async fn refuses_bind_and_auth_only_clients() {
        let (mut c, mut s) = pair().await;
        let server = tokio::spawn(async move { handshake(&mut s).await });
        c.write_all(&[5, 1, 2]).await.unwrap(); // only username/password offered
        let mut m = [0u8; 2];
        c.read_exact(&mut m).await.unwrap();
        assert_eq!(m, [5, 0xff]);
        assert!(matches!(
            server.await.unwrap(),
            Err(Socks5Error::NoAcceptableMethod)
        ));

        let (mut c, mut s) = pair().await;
        let server = tokio::spawn(async move { handshake(&mut s).await });
        c.write_all(&[5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80])
            .await
            .unwrap(); // BIND
        assert!(matches!(
            server.await.unwrap(),
            Err(Socks5Error::Command(2))
        ));
    }

    /// The handshake's error for bytes a client sends (after the greeting `05 01 00` unless they start with it).
    async fn error_for(bytes: &[u8]) -> Socks5Error {
        let (mut c, mut s) = pair().await;
        let server = tokio::spawn(async move { handshake(&mut s).await });
        c.write_all(bytes).await.unwrap();
        c.shutdown().await.unwrap();
        server.await.unwrap().unwrap_err()
    }

    #[tokio::test]
    async fn malformed_handshakes_get_their_own_errors_and_replies() {
        let cases: [(&[u8], &str, Option<u8>); 8] = [
            (&[4, 1, 0], "Version(4)", None),
            (&[5, 0], "NoAcceptableMethod", None),
            (&[5, 1, 0, 4, 1, 0, 1], "RequestVersion(4)", Some(1)),
            (
                &[5, 1, 0, 5, 3, 0, 1, 10, 0, 0, 1, 0, 80],
                "Command(3)",
                Some(7),
            ),
            (&[5, 1, 0, 5, 1, 0, 9, 1, 2], "AddressType(9)", Some(8)),
            // An empty name: the system resolver refuses it without asking anyone.
            (&[5, 1, 0, 5, 1, 0, 3, 0, 0, 80], "Resolve", Some(4)),
            // EOF in the middle of the request: in the address, and before the port.
            (&[5, 1, 0, 5, 1, 0, 1, 10, 0], "Io", Some(1)),
            (&[5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1], "Io", Some(1)),
        ];
        for (bytes, want, rep) in cases {
            let e = error_for(bytes).await;
            assert!(format!("{e:?}").starts_with(want), "{bytes:?}: {e:?}");
            assert_eq!(reply_code(&e), rep, "{bytes:?}: {e:?}");
        }
    }
}
