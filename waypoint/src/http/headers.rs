//! Header handling on the way through: hop-by-hop headers, `x-request-id`, W3C `traceparent`, and the synthetic
//! error responses (HTTP status, or gRPC status in a trailers-only response).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use rand::Rng;

use super::body::RespBody;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1), plus the ones the `Connection`
/// header names. `upgrade` and `connection` are kept when `upgrading` (WebSocket pass-through).
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrading: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(upgrading && *n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
    ] {
        h.remove(n);
    }
    h.remove(header::TRANSFER_ENCODING);
    if !upgrading {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    // `te` may only say `trailers` past this hop (gRPC needs it).
    if h.get(header::TE)
        .is_some_and(|v| v.as_bytes() != b"trailers")
    {
        h.remove(header::TE);
    }
}

/// A random version-4 UUID (`x-request-id` when the client sent none).
pub fn request_id() -> String {
    let v: u128 = rand::rng().random();
    let v = (v & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The `traceparent` for the next hop: the same trace id with a new span id (this hop), or a new trace when the
/// incoming one is absent or malformed. Flags are kept.
pub fn next_traceparent(incoming: Option<&str>) -> String {
    let mut rng = rand::rng();
    let span: u64 = rng.random_range(1..=u64::MAX);
    if let Some(t) = incoming {
        let parts: Vec<&str> = t.trim().split('-').collect();
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if parts.len() == 4
            && hex(parts[0], 2)
            && parts[0] != "ff"
            && hex(parts[1], 32)
            && parts[1].bytes().any(|b| b != b'0')
            && hex(parts[2], 16)
            && hex(parts[3], 2)
        {
            return format!(
                "{}-{}-{span:016x}-{}",
                parts[0],
                parts[1].to_ascii_lowercase(),
                parts[3]
            );
        }
    }
    let trace: u128 = rng.random_range(1..=u128::MAX);
    format!("00-{trace:032x}-{span:016x}-00")
}

/// Whether the request is gRPC (`content-type: application/grpc[+...]`).
pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The gRPC status for a synthetic HTTP error (as Envoy maps them; timeouts are DEADLINE_EXCEEDED).
pub fn grpc_status_for(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 => 14,
        504 => 4,
        _ => 2,
    }
}

/// A trailers-only gRPC answer: 200 with `grpc-status: code`.
pub fn grpc_response(code: u32, message: &str) -> Response<RespBody> {
    let mut r = Response::new(RespBody::new(RespBody::full(Vec::<u8>::new()), None, None));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(message) {
        h.insert("grpc-message", v);
    }
    h.insert("server", HeaderValue::from_static("ambit-waypoint"));
    r
}

/// A synthetic response: `status` with a short text body, or for gRPC a trailers-only 200 with `grpc-status`.
pub fn error_response(status: StatusCode, grpc: bool, message: &str) -> Response<RespBody> {
    if grpc {
        return grpc_response(u32::from(grpc_status_for(status)), message);
    }
    let mut r = Response::new(RespBody::new(
        RespBody::full(message.to_owned()),
        None,
        None,
    ));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert("server", HeaderValue::from_static("ambit-waypoint"));
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("gzip"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut ws = HeaderMap::new();
        ws.insert("connection", HeaderValue::from_static("Upgrade"));
        ws.insert("upgrade", HeaderValue::from_static("websocket"));
        ws.insert("te", HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut ws, true);
        assert_eq!(ws.len(), 3, "{ws:?}");
    }

    #[test]
    fn traceparents() {
        let t = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let n = next_traceparent(Some(t));
        assert!(n.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{n}");
        assert!(n.ends_with("-01"));
        assert_ne!(&n[36..52], "b7ad6b7169203331");
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            let n = next_traceparent(Some(bad));
            assert!(
                n.starts_with("00-") && n.len() == 55 && !n.contains("0af765"),
                "{bad} -> {n}"
            );
        }
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(request_id(), id);
    }

    #[test]
    fn grpc_errors() {
        let r = error_response(StatusCode::SERVICE_UNAVAILABLE, true, "no healthy upstream");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(grpc_status_for(StatusCode::GATEWAY_TIMEOUT), 4);
        assert_eq!(grpc_status_for(StatusCode::NOT_FOUND), 12);
        let r = error_response(StatusCode::NOT_FOUND, false, "route not found");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
