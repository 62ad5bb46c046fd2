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
/// How long a read waits for the answer.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET path` on `addr` from inside namespace `ns`: the status code and the body, or `None` when it could not
/// connect or the answer was not HTTP.
pub fn get_in(ns: &str, addr: SocketAddr, path: &str) -> Option<(u16, Vec<u8>)> {
    request_in(ns, addr, "GET", path)
}

/// `method path` (no request body) on `addr` from inside namespace `ns`, as [`get_in`]; admin `POST`s such as
/// `/logging` use it.
pub fn request_in(ns: &str, addr: SocketAddr, method: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    answer_in(ns, addr, method, path).ok()
}

/// Why [`answer_in`] got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum NoAnswer {
    /// The namespace could not be entered (it does not exist, or no permission).
    #[error("cannot enter network namespace {ns}: {why}")]
    Namespace { ns: String, why: String },
    /// Nothing accepted the connection, or it could not be written to.
    #[error("{0}")]
    Connect(std::io::Error),
    /// It connected, but the peer closed the connection without sending anything.
    #[error("it closed the connection without an answer")]
    Closed,
    /// It connected, but the peer sent nothing before the read timed out.
    #[error("it sent nothing within {} s", READ_TIMEOUT.as_secs())]
    Silent,
    /// It answered, but not with an HTTP/1.x response; the start of what it sent.
    #[error("its answer is not HTTP (it starts {0:?})")]
    NotHttp(String),
    /// Its answer started as HTTP but ended within the status line or headers; the start of what it sent.
    #[error("its HTTP answer ends before the end of its headers (it starts {0:?})")]
    Truncated(String),
}

impl NoAnswer {
    /// The peer accepted the connection (something listens there, though not what was expected).
    pub fn connected(&self) -> bool {
        matches!(
            self,
            NoAnswer::Closed | NoAnswer::Silent | NoAnswer::NotHttp(_) | NoAnswer::Truncated(_)
        )
    }
}

/// `method path` on `addr` from inside namespace `ns`, as [`request_in`], saying why there was no answer.
pub fn answer_in(
    ns: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> Result<(u16, Vec<u8>), NoAnswer> {
    let (method, path) = (method.to_owned(), path.to_owned());
    let netns_path = format!("/var/run/netns/{ns}");
    let netns = File::open(&netns_path).map_err(|e| NoAnswer::Namespace {
        ns: ns.to_owned(),
        why: format!("{netns_path}: {e}"),
    })?;
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        setns(&netns, CloneFlags::CLONE_NEWNET).map_err(|e| NoAnswer::Namespace {
            ns,
            why: e.to_string(),
        })?;
        let s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(NoAnswer::Connect)?;
        let (buf, timed_out) = exchange(s, addr, &method, &path).map_err(NoAnswer::Connect)?;
        match (buf.is_empty(), timed_out) {
            (true, true) => return Err(NoAnswer::Silent),
            (true, false) => return Err(NoAnswer::Closed),
            _ => {}
        }
        parse_response(&buf).ok_or_else(|| {
            let headers_end = buf.windows(4).any(|w| w == b"\r\n\r\n");
            if buf.starts_with(b"HTTP/") && !headers_end {
                NoAnswer::Truncated(start_of(&buf))
            } else {
                NoAnswer::NotHttp(start_of(&buf))
            }
        })
    })
    .join()
    .unwrap_or_else(|_| {
        Err(NoAnswer::Connect(std::io::Error::other(
            "the request thread panicked",
        )))
    })
}

/// The first bytes of `buf`, for messages.
fn start_of(buf: &[u8]) -> String {
    let text = String::from_utf8_lossy(&buf[..buf.len().min(40)]).into_owned();
    if buf.len() > 40 { text + "…" } else { text }
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

fn request(s: TcpStream, addr: SocketAddr, method: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    parse_response(&exchange(s, addr, method, path).ok()?.0)
}

/// Sends the request and reads the raw answer (until the peer closes, the read times out, or `MAX_BODY`), and
/// whether the read timed out.
fn exchange(
    mut s: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(Vec<u8>, bool)> {
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    let length = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{length}\r\n"
    )?;
    let mut buf = Vec::new();
    let timed_out = match s.take(MAX_BODY).read_to_end(&mut buf) {
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        Ok(_) => false,
    };
    Ok((buf, timed_out))
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
    if !head.starts_with("HTTP/") {
        return None;
    }
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
        assert_eq!(parse_response(b"SSH-2.0 200 x\r\n\r\n"), None);
        assert_eq!(parse_response(b"HTTP/1.1 OK\r\n\r\n"), None);
    }
}
