//! Inbound HBONE on 15008: mTLS as the waypoint, then one CONNECT stream per client connection. The authority
//! names the destination (a service VIP:port or hostname:port — service-addressed — or a pod IP:port —
//! workload-addressed); the peer certificate names the client; `forwarded: for=` carries the client's address.
//! Each stream is then served as HTTP (HTTP/1.1 or HTTP/2, by hyper) or proxied as TCP, by the service port's
//! protocol or, when unknown, by its first bytes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ambit_core::cert::Priority;
use ambit_core::drain::DrainWatcher;
use ambit_core::hbone::{self, H2Config, H2Stream, Responder, parse_authority};
use ambit_core::tls::{TlsAcceptor, TlsBackend};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, warn};

use crate::http::{Conn, Proxy};
use crate::metrics::{Report, RequestLabels, TcpLabels};
use crate::route::pick_weighted;
use crate::state::{AppProtocol, Target};

/// Accepts HBONE connections until drained; each runs on the runtime this is called on.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    h2: Arc<H2Config>,
    tls_backend: TlsBackend,
    drain: DrainWatcher,
) {
    let mut stop = drain.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.signaled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let proxy = proxy.clone();
        let h2 = h2.clone();
        let drain = drain.clone();
        let span = tracing::info_span!("inbound", src.addr = %peer);
        tokio::spawn(
            async move {
                if let Err(e) = connection(proxy, tcp, h2, tls_backend, drain).await {
                    warn!(target: "access", error = %e, src.addr = %peer, "connection failed");
                }
            }
            .instrument(span),
        );
    }
}

async fn connection(
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    h2: Arc<H2Config>,
    tls_backend: TlsBackend,
    drain: DrainWatcher,
) -> anyhow::Result<()> {
    let me = proxy.cfg.identity();
    let cert = proxy.certs.fetch(&me, Priority::RealTime).await?;
    let acceptor = TlsAcceptor::new(cert, tls_backend)?;
    let mut tls = tokio::time::timeout(h2.handshake_timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| anyhow::anyhow!("TLS handshake timed out"))??;
    let peer_id = tls.peer_identity();
    // Under a CRL the connection lives only as long as the source is not revoked.
    let revocation = tls.take_revocation();
    let stream_drain = drain.clone();
    let handler = move |parts: http::request::Parts, responder: Responder| {
        let proxy = proxy.clone();
        let peer_id = peer_id.clone();
        let drain = stream_drain.clone();
        let me = me.clone();
        async move {
            // Fail closed, as ztunnel: once the waypoint's certificate expired unrenewed, streams on connections
            // set up while it was valid are refused like a new handshake would be.
            if let Err(e) = proxy.certs.check_unexpired(&me) {
                warn!(target: "access", error = %e, "connection refused: the waypoint's certificate");
                responder.reject(StatusCode::SERVICE_UNAVAILABLE);
                return;
            }
            stream(proxy, parts, responder, peer_id, drain).await
        }
    };
    match revocation {
        None => hbone::serve(tls, h2, drain, handler).await?,
        // Boxed: only connections under a CRL pay for the watch in their task.
        Some(watch) => {
            Box::pin(ambit_core::tls::until_revoked(
                hbone::serve(tls, h2, drain, handler),
                Some(watch),
            ))
            .await??
        }
    }
    Ok(())
}

/// The client address from `forwarded: for="ip:port"` (as ztunnel sends it).
pub fn forwarded_for(h: &HeaderMap) -> Option<SocketAddr> {
    let v = h.get("forwarded")?.to_str().ok()?;
    v.split([';', ',']).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        if !k.eq_ignore_ascii_case("for") {
            return None;
        }
        v.trim_matches('"').parse().ok()
    })
}

async fn stream(
    proxy: Arc<Proxy>,
    parts: http::request::Parts,
    responder: Responder,
    peer_id: Option<ambit_core::Identity>,
    drain: DrainWatcher,
) {
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let Ok(target) = parse_authority(&authority) else {
        responder.reject(StatusCode::BAD_REQUEST);
        return;
    };
    let snap = proxy.store.load();
    let Some(target) = snap.target(&target) else {
        warn!(target: "access", error = "unknown destination", dst.addr = %authority, "connection failed");
        responder.reject(StatusCode::BAD_REQUEST);
        return;
    };
    let source_addr = forwarded_for(&parts.headers);
    let source = source_addr.and_then(|a| snap.workload_by_ip(a.ip()).cloned());
    let protocol = match &target {
        Target::Service { service, port } => service
            .port(*port)
            .map_or(AppProtocol::Unknown, |p| p.protocol),
        Target::Workload { .. } => AppProtocol::Unknown,
    };
    drop(snap);
    let Ok(stream) = responder.accept(HeaderMap::new()) else {
        return;
    };
    let conn = Arc::new(Conn::new(target, peer_id, source_addr, source));
    let (io, is_http) = if protocol.is_tcp() {
        (Prefixed::new(Bytes::new(), stream), false)
    } else if protocol == AppProtocol::Unknown {
        match detect(stream, proxy.cfg.protocol_detect_timeout).await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "connection closed before protocol detection");
                return;
            }
        }
    } else {
        (Prefixed::new(Bytes::new(), stream), true)
    };
    if is_http {
        serve_http(proxy, conn, io, drain).await;
    } else {
        tcp(proxy, conn, io).await;
    }
}

/// Serves HTTP/1.1 or HTTP/2 (by the connection preface) on one stream until the client closes it or the drain
/// deadline passes; on drain, HTTP/2 clients get GOAWAY and HTTP/1.1 ones `Connection: close`.
async fn serve_http(
    proxy: Arc<Proxy>,
    conn: Arc<Conn>,
    io: Prefixed<H2Stream>,
    mut drain: DrainWatcher,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(proxy.cfg.max_request_headers.max(8192))
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .max_header_list_size(u32::try_from(proxy.cfg.max_request_headers).unwrap_or(u32::MAX))
        .timer(hyper_util::rt::TokioTimer::new());
    let svc = service_fn(move |req| crate::http::handle(proxy.clone(), conn.clone(), req));
    let serving = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(serving);
    let mut forced = drain.clone();
    tokio::select! {
        r = serving.as_mut() => {
            if let Err(e) = r {
                debug!(error = %e, "http connection ended with an error");
            }
            return;
        }
        _ = drain.signaled() => serving.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        _ = serving.as_mut() => {}
        _ = forced.forced() => {}
    }
}

/// Reads the first bytes: the HTTP/2 preface or an HTTP/1.x request line means HTTP; anything else (or nothing
/// within `timeout`: a server-first protocol) means TCP. The bytes read are replayed.
async fn detect(mut s: H2Stream, timeout: Duration) -> io::Result<(Prefixed<H2Stream>, bool)> {
    let mut buf = BytesMut::with_capacity(64);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match sniff(&buf) {
            Sniff::Http => return Ok((Prefixed::new(buf.freeze(), s), true)),
            Sniff::Tcp => return Ok((Prefixed::new(buf.freeze(), s), false)),
            Sniff::More => {}
        }
        match tokio::time::timeout_at(deadline, s.read_buf(&mut buf)).await {
            Err(_) => return Ok((Prefixed::new(buf.freeze(), s), false)),
            Ok(Ok(0)) => {
                let http = matches!(sniff(&buf), Sniff::Http);
                return Ok((Prefixed::new(buf.freeze(), s), http));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Sniff {
    Http,
    Tcp,
    More,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Classifies the first bytes of a connection: an HTTP/1.x request starts with a method token (upper-case
/// letters, at most 20) and a space; HTTP/2 with its preface.
pub fn sniff(b: &[u8]) -> Sniff {
    if b.is_empty() {
        return Sniff::More;
    }
    let n = b.len().min(H2_PREFACE.len());
    if b[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniff::Http
        } else {
            Sniff::More
        };
    }
    for (i, c) in b.iter().enumerate().take(21) {
        match c {
            b'A'..=b'Z' | b'-' => continue,
            b' ' if i > 0 => return Sniff::Http,
            _ => return Sniff::Tcp,
        }
    }
    if b.len() > 20 {
        Sniff::Tcp
    } else {
        Sniff::More
    }
}

/// TCP through the waypoint: the service port's TCPRoute (weighted backends), else the service (or pod) itself.
async fn tcp(proxy: Arc<Proxy>, conn: Arc<Conn>, mut io: Prefixed<H2Stream>) {
    let start = Instant::now();
    let snap = proxy.store.load();
    let (service, picked) = match &conn.target {
        Target::Workload { workload, ip, port } => (
            None,
            Some(crate::state::Picked {
                workload: workload.clone(),
                addr: SocketAddr::new(*ip, *port),
                stats: snap.stats_of(&workload.uid),
            }),
        ),
        Target::Service { service, port } => {
            let (host, p) = match snap.tcp_route(&service.hostname, *port) {
                Some(rule) => {
                    let chosen = pick_weighted(
                        &rule.backends,
                        |b| b.weight,
                        |t| rand::Rng::random_range(&mut rand::rng(), 0..t),
                    );
                    match chosen.map(|i| &rule.backends[i].target) {
                        Some(Ok(t)) => (t.hostname.clone(), t.port),
                        _ => {
                            warn!(target: "access", route = %rule.name, "tcp: no usable backend");
                            return;
                        }
                    }
                }
                None => (service.hostname.clone(), *port),
            };
            (
                Some(service.clone()),
                snap.backend(&host, p, None)
                    .and_then(|b| b.pick(None, &[]).map(|(_, p)| p)),
            )
        }
    };
    let flags_of = |f: &'static str| f;
    let Some(picked) = picked else {
        warn!(target: "access", flags = "UH", dst.service = ?service.as_ref().map(|s| s.hostname.as_str()), "tcp: no healthy upstream");
        return;
    };
    let mut report = Report {
        source: conn.source.as_deref(),
        source_principal: conn.source_principal.as_ref().map(ToString::to_string),
        destination: Some(&picked.workload),
        service: service.as_deref(),
        protocol: "tcp",
        code: 0,
        grpc_status: None,
        flags: flags_of("-"),
    };
    let mut upstream = match proxy.upstream.connect(&picked.workload, picked.addr).await {
        Ok(u) => u,
        Err(e) => {
            report.flags = "UF";
            let labels = TcpLabels::from(&RequestLabels::new(&report));
            proxy.metrics.tcp_opened.get_or_create(&labels).inc();
            proxy.metrics.tcp_closed.get_or_create(&labels).inc();
            warn!(target: "access", error = %e, flags = "UF", dst.addr = %picked.addr, "tcp: connect failed");
            return;
        }
    };
    let labels = TcpLabels::from(&RequestLabels::new(&report));
    proxy.metrics.tcp_opened.get_or_create(&labels).inc();
    let _active = picked.stats.start();
    let result = tokio::io::copy_bidirectional(&mut io, &mut upstream).await;
    let (recv, sent) = result.as_ref().map_or((0, 0), |(a, b)| (*a, *b));
    proxy
        .metrics
        .tcp_received
        .get_or_create(&labels)
        .inc_by(recv);
    proxy.metrics.tcp_sent.get_or_create(&labels).inc_by(sent);
    proxy.metrics.tcp_closed.get_or_create(&labels).inc();
    info!(target: "access", protocol = "tcp", src.addr = ?conn.source_addr, dst.addr = %picked.addr,
        dst.service = ?service.as_ref().map(|s| s.hostname.as_str()), bytes_recv = recv, bytes_sent = sent,
        duration_ms = start.elapsed().as_millis() as u64, error = ?result.err().map(|e| e.to_string()),
        "tcp connection complete");
}

/// A stream with bytes already read from it put back in front.
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_sniffing() {
        let cases: [(&[u8], Sniff); 10] = [
            (b"GET / HTTP/1.1\r\n", Sniff::Http),
            (b"POST", Sniff::More),
            (b"M-SEARCH * HTTP/1.1", Sniff::Http),
            (H2_PREFACE, Sniff::Http),
            (b"PRI * HTTP/2", Sniff::More),
            (b"\x16\x03\x01\x02\x00", Sniff::Tcp),
            (b"SSH-2.0-OpenSSH", Sniff::Tcp),
            (b"get / HTTP/1.1", Sniff::Tcp),
            (b" GET", Sniff::Tcp),
            (b"", Sniff::More),
        ];
        for (bytes, want) in cases {
            assert_eq!(sniff(bytes), want, "{:?}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(sniff(b"AAAAAAAAAAAAAAAAAAAAAAAAA"), Sniff::Tcp);
    }

    #[test]
    fn forwarded_header() {
        let mut h = HeaderMap::new();
        h.insert(
            "forwarded",
            http::HeaderValue::from_static("for=\"10.0.0.1:4000\";host=a.b"),
        );
        assert_eq!(
            forwarded_for(&h),
            Some("10.0.0.1:4000".parse().expect("addr"))
        );
        h.insert(
            "forwarded",
            http::HeaderValue::from_static("for=\"[fd00::1]:80\""),
        );
        assert_eq!(
            forwarded_for(&h),
            Some("[fd00::1]:80".parse().expect("addr"))
        );
        h.insert("forwarded", http::HeaderValue::from_static("for=unknown"));
        assert_eq!(forwarded_for(&h), None);
    }
}
