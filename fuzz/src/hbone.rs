//! HBONE: the CONNECT request a peer sends (raw HTTP/2 into `hbone::serve`) and the header values ztunnel and the
//! waypoint read from it.

use std::sync::Arc;
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::hbone::{self, Authority, H2Config, Responder, parse_authority};
use ambit_waypoint::http::headers::next_traceparent;
use ambit_waypoint::inbound::forwarded_for;
use ambit_ztunnel::proxy::headers::{forwarded_host, parse_baggage};
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::block_on_within;

/// The HTTP/2 client preface; prepended to every input so the fuzzer starts at the frames.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Input: newline-separated values of, in order, the CONNECT authority, `baggage`, `forwarded`, `traceparent`
/// and a SPIFFE identity (missing lines are skipped).
pub fn hbone_headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    if let Some(a) = lines.next() {
        check_authority(a);
    }
    if let Some(b) = lines.next() {
        check_baggage(b);
    }
    if let Some(f) = lines.next() {
        check_forwarded(f);
    }
    if let Some(t) = lines.next() {
        check_traceparent(Some(t));
    }
    if let Some(id) = lines.next() {
        check_identity(id);
    }
}

fn check_authority(a: &str) {
    let Ok(parsed) = parse_authority(a) else {
        return;
    };
    // What was accepted prints back to an authority that parses to the same destination.
    let printed = match &parsed {
        Authority::Addr(addr) => addr.to_string(),
        Authority::Host(h, p) => format!("{h}:{p}"),
    };
    let again = parse_authority(&printed).unwrap_or_else(|e| {
        panic!("{a:?} parsed as {parsed:?}, but its print {printed:?} does not: {e}")
    });
    let port = |x: &Authority| match x {
        Authority::Addr(s) => s.port(),
        Authority::Host(_, p) => *p,
    };
    assert_eq!(
        port(&parsed),
        port(&again),
        "port changed through {printed:?}"
    );
    if let (Authority::Host(h1, _), Authority::Host(h2, _)) = (&parsed, &again) {
        assert_eq!(h1, h2);
    }
}

fn check_baggage(v: &str) {
    let b = parse_baggage(v);
    for field in [
        &b.cluster,
        &b.namespace,
        &b.workload_name,
        &b.service_name,
        &b.revision,
        &b.region,
        &b.zone,
    ] {
        assert!(
            !field.contains([',', ';']),
            "baggage member separators leaked into a value: {field:?}"
        );
    }
}

fn check_forwarded(v: &str) {
    if let Some(h) = forwarded_host(v) {
        assert!(
            !h.contains([';', ',']),
            "forwarded host= kept a separator: {h:?}"
        );
    }
    if let Ok(value) = HeaderValue::from_str(v) {
        let mut headers = HeaderMap::new();
        headers.insert("forwarded", value);
        let _ = forwarded_for(&headers);
    }
}

fn check_traceparent(incoming: Option<&str>) {
    let next = next_traceparent(incoming);
    let parts: Vec<&str> = next.split('-').collect();
    assert_eq!(parts.len(), 4, "malformed traceparent {next:?}");
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(
        hex(parts[0], 2) && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2),
        "malformed traceparent {next:?} from {incoming:?}"
    );
    assert!(HeaderValue::from_str(&next).is_ok());
}

fn check_identity(s: &str) {
    if let Ok(id) = s.parse::<Identity>() {
        let printed = id.to_string();
        let again: Identity = printed.parse().unwrap_or_else(|e| {
            panic!("identity {s:?} prints as {printed:?}, which does not parse: {e}")
        });
        assert_eq!(id, again);
    }
}

/// Input: the HTTP/2 frames a peer sends after the preface (SETTINGS, HEADERS with a CONNECT, ...), served by
/// `ambit_core::hbone::serve` with the default settings. Every request that reaches the handler has its headers
/// read as ztunnel's and the waypoint's inbound paths read them.
///
/// The input is cut after its last whole frame (so the harness's closing PING starts a frame of its own).
pub fn hbone_connect(data: &[u8]) {
    let _ = connect_exchange(data);
}

/// A PING the peer sends after the input, with a payload a fuzzed PING is unlikely to carry.
const PING: [u8; 17] = [
    0, 0, 8, 6, 0, 0, 0, 0, 0, b'a', b'm', b'b', b'i', b't', b'e', b'n', b'd',
];

/// `data` up to the end of its last complete frame.
fn whole_frames(data: &[u8]) -> &[u8] {
    let mut end = 0;
    while let Some(h) = data.get(end..end + 9) {
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        if data.len() < end + 9 + len {
            break;
        }
        end += 9 + len;
    }
    &data[..end]
}

/// Whether `out` (frames from the server, after none or its SETTINGS) holds the ACK of [`PING`].
fn has_ping_ack(out: &[u8]) -> bool {
    let mut at = 0;
    while let Some(h) = out.get(at..at + 9) {
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let Some(payload) = out.get(at + 9..at + 9 + len) else {
            return false;
        };
        if h[3] == 6 && h[4] & 1 == 1 && payload == &PING[9..] {
            return true;
        }
        at += 9 + len;
    }
    false
}

/// How many CONNECTs reached the handler, and the bytes the server wrote (for the harness tests).
#[doc(hidden)]
pub fn connect_exchange(data: &[u8]) -> Option<(usize, Vec<u8>)> {
    let mut input = H2_PREFACE.to_vec();
    input.extend_from_slice(whole_frames(data));
    block_on_within(Duration::from_secs(10), serve_once(input))
}

async fn serve_once(input: Vec<u8>) -> (usize, Vec<u8>) {
    let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = handled.clone();
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let (_trigger, drain) = ambit_core::drain::new();
    let cfg = Arc::new(H2Config::default());
    let handler = move |parts: http::request::Parts, responder: Responder| {
        inspect(&parts);
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        responder.reject(StatusCode::SERVICE_UNAVAILABLE);
        std::future::ready(())
    };
    let serving = hbone::serve(server, cfg, drain, handler);
    let peer = async move {
        // The frames, then a PING: its ACK means the server has read (and handed to the handler) everything
        // before it; only then the connection is closed (h2 drops requests it has not yet accepted at EOF).
        let _ = client.write_all(&input).await;
        let _ = client.write_all(&PING).await;
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if has_ping_ack(&out) {
                let _ = client.shutdown().await;
                let _ = client.read_to_end(&mut out).await;
                break;
            }
        }
        out
    };
    let (_, out) = tokio::join!(serving, peer);
    (handled.load(std::sync::atomic::Ordering::Relaxed), out)
}

fn inspect(parts: &http::request::Parts) {
    // serve hands over only CONNECTs whose authority parses.
    assert_eq!(parts.method, http::Method::CONNECT);
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .unwrap_or_default();
    assert!(
        parse_authority(authority).is_ok(),
        "handler got an unparsable authority {authority:?}"
    );
    check_authority(authority);
    let text = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(b) = text("baggage") {
        check_baggage(b);
    }
    if let Some(f) = text("forwarded") {
        check_forwarded(f);
    }
    check_traceparent(text("traceparent"));
}

/// What a real HBONE client (h2, a CONNECT to `authority` with baggage, forwarded and traceparent, then `data`)
/// puts on the wire after the preface: the seeds of [`hbone_connect`].
#[doc(hidden)]
pub async fn connect_frames(authority: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    let (client_io, mut server_io) = tokio::io::duplex(1 << 20);
    let (mut client, conn) = h2::client::handshake(client_io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .header(
            "baggage",
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=demo,k8s.deployment.name=sleep,service.name=sleep,service.version=v1",
        )
        .header("forwarded", "for=\"10.0.0.1:40000\";host=reviews.demo.svc.cluster.local")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
        .body(())
        .map_err(|e| e.to_string())?;
    let (_resp, mut send) = client
        .send_request(req, data.is_empty())
        .map_err(|e| e.to_string())?;
    if !data.is_empty() {
        send.send_data(bytes::Bytes::copy_from_slice(data), true)
            .map_err(|e| e.to_string())?;
    }
    // Everything the client writes without an answer from the server: read until it goes quiet.
    let mut wire = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), server_io.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        wire.extend_from_slice(&buf[..n]);
    }
    driver.abort();
    wire.strip_prefix(H2_PREFACE)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "the h2 client did not start with the preface".to_owned())
}
