//! The targets reach the parsers they claim to: the seeds get the answers the real code gives them (a target
//! that silently stopped at a setup error would fuzz nothing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ambit_fuzz::harness::{
    connect_frames, dns_answer, hbone_connect_exchange, waypoint_http_exchange,
};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

fn query(name: &str, ty: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x1234;
    m.add_query(Query::query(Name::from_ascii(name).expect("a name"), ty));
    let mut input = vec![0u8];
    input.extend_from_slice(&m.to_vec().expect("encodes"));
    input
}

fn http(req: &str) -> String {
    let out = waypoint_http_exchange(req.as_bytes()).expect("the waypoint answered in time");
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn waypoint_http_reaches_routing_filters_and_policy() {
    let direct = http("GET /direct HTTP/1.1\r\nHost: reviews\r\n\r\n");
    assert!(direct.starts_with("HTTP/1.1 200"), "{direct}");
    assert!(direct.ends_with("hello"), "{direct}");
    let redirect = http("GET /redirect HTTP/1.1\r\nHost: reviews\r\n\r\n");
    assert!(redirect.starts_with("HTTP/1.1 301"), "{redirect}");
    assert!(
        redirect
            .to_ascii_lowercase()
            .contains("location: https://example.com:8443/moved"),
        "{redirect}"
    );
    let none = http("GET /nothing HTTP/1.1\r\nHost: reviews\r\n\r\n");
    assert!(none.starts_with("HTTP/1.1 404"), "{none}");
    let fault = http("GET /fault HTTP/1.1\r\nHost: reviews\r\n\r\n");
    assert!(fault.starts_with("HTTP/1.1 418"), "{fault}");
    // The only endpoint is unhealthy: routed requests never leave the process.
    let api = http(
        "GET /api?v=1 HTTP/1.1\r\nHost: reviews.demo.svc.cluster.local\r\nx-user: jason\r\n\r\n",
    );
    assert!(api.starts_with("HTTP/1.1 503"), "{api}");
    let denied = http("DELETE /admin/x HTTP/1.1\r\nHost: reviews\r\n\r\n");
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    let garbage = http("\x00\x01 not http\r\n\r\n");
    assert!(
        garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
        "{garbage}"
    );
}

#[test]
fn hbone_connect_seeds_reach_the_handler() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for authority in [
        "10.0.0.2:9080",
        "reviews.demo.svc.cluster.local:9080",
        "[fd00::2]:80",
    ] {
        let frames = rt
            .block_on(connect_frames(authority, b"hello"))
            .expect("frames");
        let (handled, out) = hbone_connect_exchange(&frames).expect("served in time");
        assert_eq!(
            handled, 1,
            "{authority}: the CONNECT did not reach the handler"
        );
        assert!(!out.is_empty(), "{authority}: the server wrote nothing");
    }
    // A CONNECT whose authority does not parse is refused by serve itself, before the handler.
    let frames = rt.block_on(connect_frames("a@b:80", b"")).expect("frames");
    let (handled, _) = hbone_connect_exchange(&frames).expect("served in time");
    assert_eq!(handled, 0);
}

#[test]
fn dns_seeds_are_answered_from_the_mesh() {
    let a = dns_answer(&query("server.demo.svc.cluster.local.", RecordType::A)).expect("an answer");
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(
        a.answers.iter().any(|r| r.record_type() == RecordType::A),
        "{a:?}"
    );
    let unknown = dns_answer(&query("example.com.", RecordType::A)).expect("an answer");
    assert_eq!(unknown.metadata.response_code, ResponseCode::ServFail);
    assert!(dns_answer(&[0, 7]).is_none());
}
