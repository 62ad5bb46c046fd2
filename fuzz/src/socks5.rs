//! ztunnel's SOCKS5 handshake, over a real loopback TCP pair (the handshake takes a `TcpStream`).
//!
//! One deviation from the wire: a domain name (address type 3) that is not an IP literal is replaced by
//! `127.0.0.1` before it is sent, because the handshake resolves names with the system resolver and a fuzzer must
//! not send millions of DNS queries. The name bytes themselves are only decoded (lossy UTF-8) by the handshake.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ambit_ztunnel::proxy::socks5::handshake;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::runtime::block_on_within;

thread_local! {
    static LISTENER: Option<std::net::TcpListener> = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .ok();
}

/// Input: the bytes a SOCKS5 client sends (greeting, then the request).
pub fn socks5(data: &[u8]) {
    let input = rewrite_domain(data);
    let expected = reference(&input);
    let Some(listener) = LISTENER.with(|l| l.as_ref().and_then(|l| l.try_clone().ok())) else {
        panic!("socks5 target: cannot bind a loopback listener");
    };
    let outcome = block_on_within(Duration::from_secs(10), async move {
        let listener = TcpListener::from_std(listener).ok()?;
        let addr = listener.local_addr().ok()?;
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut client, (mut server, _)) = (client.ok()?, server.ok()?);
        // RST on close: no TIME_WAIT, so millions of connections do not exhaust the ephemeral ports.
        let _ = SockRef::from(&client).set_linger(Some(Duration::ZERO));
        let _ = SockRef::from(&server).set_linger(Some(Duration::ZERO));
        let peer = async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        };
        let serving = async move {
            let r = handshake(&mut server).await;
            drop(server);
            r
        };
        let (result, ()) = tokio::join!(serving, peer);
        Some(result)
    });
    if let Some(Some(result)) = outcome {
        match (result, expected) {
            (Ok(got), Some(want)) => assert_eq!(got, want, "handshake read another destination"),
            (Ok(got), None) => panic!("handshake accepted {got} from a request RFC 1928 refuses"),
            (Err(_), _) => {}
        }
    }
}

/// What a correct server makes of `b`: the destination, or `None` when the request must be refused or is short.
fn reference(b: &[u8]) -> Option<SocketAddr> {
    let (&ver, rest) = b.split_first()?;
    let (&n, rest) = rest.split_first()?;
    let n = usize::from(n);
    if ver != 5 || rest.len() < n || !rest[..n].contains(&0) {
        return None;
    }
    let req = &rest[n..];
    if req.len() < 4 || req[0] != 5 || req[1] != 1 {
        return None;
    }
    let (ip, rest) = match req[3] {
        1 => {
            let o: [u8; 4] = req.get(4..8)?.try_into().ok()?;
            (IpAddr::V4(Ipv4Addr::from(o)), &req[8..])
        }
        4 => {
            let o: [u8; 16] = req.get(4..20)?.try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(o)), &req[20..])
        }
        3 => {
            let len = usize::from(*req.get(4)?);
            let name = req.get(5..5 + len)?;
            let ip = std::str::from_utf8(name).ok()?.parse().ok()?;
            (ip, &req[5 + len..])
        }
        _ => return None,
    };
    let port = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
    Some(SocketAddr::new(ip, port))
}

/// Replaces a domain-name destination that is not an IP literal by `127.0.0.1` (see the module docs).
fn rewrite_domain(b: &[u8]) -> Vec<u8> {
    let out = b.to_vec();
    let Some(&n) = b.get(1) else { return out };
    let head = 2 + usize::from(n);
    if b.get(head + 3) != Some(&3) {
        return out;
    }
    let Some(&len) = b.get(head + 4) else {
        return out;
    };
    let start = head + 5;
    let end = (start + usize::from(len)).min(b.len());
    let name = &b[start..end];
    let literal = std::str::from_utf8(name).is_ok_and(|s| s.parse::<IpAddr>().is_ok());
    if literal || end < start + usize::from(len) {
        return out;
    }
    let mut rewritten = b[..head + 4].to_vec();
    let replacement = b"127.0.0.1";
    rewritten.push(replacement.len() as u8);
    rewritten.extend_from_slice(replacement);
    rewritten.extend_from_slice(&b[end..]);
    rewritten
}
