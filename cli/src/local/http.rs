//! A minimal HTTP/1.0 `GET` made from inside a network namespace, for what the runtime asks of the components it
//! runs: readiness (`/ready`, `/healthz/ready`, pods' readiness probes) and the controller's `/debug/status`;
//! and `ambit ztunnel-config`'s requests to a ztunnel's admin port.
//! A thread enters the namespace, so the caller's stays untouched.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, Socket, Type};

/// The most of a response body [`get_in`] reads.
const MAX_BODY: u64 = 16 << 20;

/// `GET path` on `addr` from inside namespace `ns`: the status code and the body, or `None` when it could not
/// connect or the answer was not HTTP.
pub fn get_in(ns: &str, addr: SocketAddr, path: &str) -> Option<(u16, Vec<u8>)> {
    request_in(ns, addr, "GET", path)
}

/// `method path` (no request body) on `addr` from inside namespace `ns`, as [`get_in`]; admin `POST`s such as
/// `/logging` use it.
pub fn request_in(ns: &str, addr: SocketAddr, method: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    let (method, path) = (method.to_owned(), path.to_owned());
    in_ns(ns, move || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        request(s, addr, &method, &path)
    })
}

/// A kubelet's probe, from inside namespace `ns` with source address `source`: the status of `GET path` (an
/// HTTP probe, `Some`), or whether `addr` accepts a connection (a TCP probe, `path` `None`).
///
/// The source is what istio-cni SNATs kubelet probes to on a node: captured pods let it through to the app
/// without ztunnel, so the probe sees the app itself.
pub fn probe_in(ns: &str, source: Ipv4Addr, addr: SocketAddr, path: Option<&str>) -> Option<u16> {
    let path = path.map(str::to_owned);
    in_ns(ns, move || {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).ok()?;
        socket.bind(&SocketAddr::from((source, 0)).into()).ok()?;
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(1))
            .ok()?;
        let s = TcpStream::from(socket);
        match &path {
            Some(path) => request(s, addr, "GET", path).map(|(code, _)| code),
            None => Some(0),
        }
    })
}

/// Runs `f` on a thread that entered namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> Option<T> + Send + 'static) -> Option<T> {
    let netns = File::open(format!("/var/run/netns/{ns}")).ok()?;
    std::thread::spawn(move || -> Option<T> {
        setns(&netns, CloneFlags::CLONE_NEWNET).ok()?;
        f()
    })
    .join()
    .ok()
    .flatten()
}

fn request(mut s: TcpStream, addr: SocketAddr, method: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let length = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{length}\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.take(MAX_BODY).read_to_end(&mut buf);
    parse_response(&buf)
}

/// The status code of `GET path`, or `None` when it could not connect.
pub fn status_in(ns: &str, addr: SocketAddr, path: &str) -> Option<u16> {
    get_in(ns, addr, path).map(|(code, _)| code)
}

/// Status code and body of a raw HTTP/1.x response (no chunked encoding: HTTP/1.0 requests are not answered
/// chunked).
fn parse_response(buf: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, buf[end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"a\":1}");
        assert_eq!(r, Some((200, b"{\"a\":1}".to_vec())));
        assert_eq!(
            parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            Some((404, vec![]))
        );
        assert_eq!(parse_response(b"garbage"), None);
    }
}
