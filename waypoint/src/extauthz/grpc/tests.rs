#![allow(clippy::unwrap_used)]

use ambit_proto::envoy::config::core::v3::HeaderValue as ProtoHeader;
use ambit_proto::envoy::r#type::v3::HttpStatus;
use ambit_proto::ext_authz::{DeniedHttpResponse, OkHttpResponse};
use ambit_proto::google::rpc::Status;

use super::*;

fn option(key: &str, value: &str, append: Option<bool>, action: i32) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(ProtoHeader {
            key: key.into(),
            value: value.into(),
        }),
        append,
        append_action: action,
    }
}

fn status(code: i32) -> Option<Status> {
    Some(Status {
        code,
        message: String::new(),
    })
}

fn allow(v: Result<Verdict, AskError>) -> HeaderEdits {
    match v {
        Ok(Verdict::Allow(e)) => e,
        Ok(Verdict::Deny(r)) => panic!("denied: {}", r.status()),
        Err(e) => panic!("error: {e}"),
    }
}

fn deny(v: Result<Verdict, AskError>) -> Response<RespBody> {
    match v {
        Ok(Verdict::Deny(r)) => *r,
        Ok(Verdict::Allow(_)) => panic!("allowed"),
        Err(e) => panic!("error: {e}"),
    }
}

#[test]
fn check_request_carries_identity_addresses_and_headers() {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("api.demo:80"));
    h.insert("x-request-id", HeaderValue::from_static("r-1"));
    h.append("x-tag", HeaderValue::from_static("a"));
    h.append("x-tag", HeaderValue::from_static("b"));
    h.insert("connection", HeaderValue::from_static("keep-alive"));
    h.insert("x-secret", HeaderValue::from_static("s"));
    let input = CheckInput {
        method: &Method::PUT,
        path: "/v1/x?q=1",
        authority: "api.demo:80",
        version: Version::HTTP_11,
        headers: &h,
        source_principal: Some("spiffe://cluster.local/ns/demo/sa/client"),
        source_addr: Some("10.0.0.1:40000".parse().unwrap()),
        destination_addr: Some("10.96.0.5:80".parse().unwrap()),
    };
    let mut provider = ExtAuthzProvider::default();
    let a = check_request(&provider, &input, "spiffe://w")
        .attributes
        .unwrap();
    let src = a.source.unwrap();
    assert_eq!(src.principal, "spiffe://cluster.local/ns/demo/sa/client");
    let Some(address::Address::SocketAddress(s)) = src.address.unwrap().address else {
        panic!("no socket address");
    };
    assert_eq!(
        (s.address.as_str(), s.port_specifier),
        (
            "10.0.0.1",
            Some(socket_address::PortSpecifier::PortValue(40000))
        )
    );
    assert_eq!(a.destination.unwrap().principal, "spiffe://w");
    let http = a.request.unwrap().http.unwrap();
    assert_eq!(
        (http.id.as_str(), http.method.as_str(), http.path.as_str()),
        ("r-1", "PUT", "/v1/x?q=1")
    );
    assert_eq!(
        (http.host.as_str(), http.protocol.as_str(), http.size),
        ("api.demo:80", "HTTP/1.1", -1)
    );
    assert_eq!(http.headers["x-tag"], "a,b");
    assert_eq!(http.headers[":authority"], "api.demo:80");
    assert_eq!(http.headers[":path"], "/v1/x?q=1");
    assert!(!http.headers.contains_key("connection") && !http.headers.contains_key("host"));

    // `includeRequestHeadersInCheck` limits the headers (the pseudo-headers always go).
    provider.include_request_headers_in_check = vec!["X-Tag".into()];
    let http = check_request(&provider, &input, "")
        .attributes
        .unwrap()
        .request
        .unwrap()
        .http
        .unwrap();
    let mut names: Vec<&str> = http.headers.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [":authority", ":method", ":path", ":scheme", "x-tag"]
    );
}

#[test]
fn ok_status_allows_with_edits_and_removals() {
    let answer = CheckResponse {
        status: status(0),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![
                option("x-user", "alice", None, 0),
                option("x-tag", "b", Some(true), 0),
                option("x-once", "n", None, HeaderAppendAction::AddIfAbsent as i32),
                option("bad header", "v", None, 0),
            ],
            headers_to_remove: vec!["authorization".into(), "host".into()],
        })),
    };
    let mut h = HeaderMap::new();
    h.insert("x-user", HeaderValue::from_static("mallory"));
    h.insert("x-tag", HeaderValue::from_static("a"));
    h.insert("x-once", HeaderValue::from_static("o"));
    h.insert("authorization", HeaderValue::from_static("Bearer t"));
    h.insert("host", HeaderValue::from_static("api"));
    allow(verdict(answer)).apply(&mut h);
    assert_eq!(h["x-user"], "alice", "unset append overwrites");
    assert_eq!(h["x-tag"], "a,b");
    assert_eq!(h["x-once"], "o");
    assert!(!h.contains_key("authorization"));
    assert_eq!(h["host"], "api", "host is never removed");

    // No status at all is code 0, as in Envoy.
    let e = allow(verdict(CheckResponse::default()));
    assert!(e.edits.is_empty() && e.remove.is_empty());
}

#[test]
fn other_statuses_deny_with_the_answer_or_403() {
    let answer = CheckResponse {
        status: status(7),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: 401 }),
            headers: vec![
                option("x-why", "no token", None, 0),
                option("set-cookie", "a=1", Some(true), 0),
                option("set-cookie", "b=2", Some(true), 0),
            ],
            body: "go away".into(),
        })),
    };
    let r = deny(verdict(answer));
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["x-why"], "no token");
    assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/plain");

    let r = deny(verdict(CheckResponse {
        status: status(16),
        http_response: None,
    }));
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(!r.headers().contains_key(header::CONTENT_TYPE));

    // An error_response is a provider failure, not a denial.
    let e = verdict(CheckResponse {
        status: status(14),
        http_response: Some(HttpResponse::ErrorResponse(DeniedHttpResponse::default())),
    });
    assert!(matches!(e, Err(AskError::Grpc { code: 14, .. })));
}

#[test]
fn framing_and_grpc_status() {
    let msg = CheckResponse {
        status: status(7),
        http_response: None,
    }
    .encode_to_vec();
    let mut framed = vec![0, 0, 0, 0, msg.len() as u8];
    framed.extend_from_slice(&msg);
    assert_eq!(
        decode(&Bytes::from(framed.clone()))
            .unwrap()
            .status
            .unwrap()
            .code,
        7
    );
    framed[0] = 1;
    assert!(decode(&Bytes::from(framed.clone())).is_err(), "compressed");
    framed[0] = 0;
    framed.pop();
    assert!(decode(&Bytes::from(framed)).is_err(), "truncated");
    assert!(decode(&Bytes::from_static(&[0, 0])).is_err(), "no message");

    let mut h = HeaderMap::new();
    assert!(matches!(grpc_status(&h), Err(AskError::Malformed(_))));
    h.insert("grpc-status", HeaderValue::from_static("0"));
    assert!(grpc_status(&h).is_ok());
    h.insert("grpc-status", HeaderValue::from_static("14"));
    h.insert("grpc-message", HeaderValue::from_static("down"));
    assert!(
        matches!(grpc_status(&h), Err(AskError::Grpc { code: 14, message }) if message == "down")
    );
}
