//! In-process: CUSTOM authorization with a gRPC ext_authz provider (Envoy's `Authorization/Check`, here a tonic
//! server built from Ambit's protos) — what the provider is told, how its answer changes the request or becomes
//! the client's, and what `failOpen` does when it errs, hangs or cannot be reached. Nets 87–88.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ambit_proto::envoy::config::core::v3::{HeaderValue, HeaderValueOption, address};
use ambit_proto::envoy::r#type::v3::HttpStatus;
use ambit_proto::ext_authz::authorization_server::{Authorization, AuthorizationServer};
use ambit_proto::ext_authz::check_response::HttpResponse;
use ambit_proto::ext_authz::{CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse};
use ambit_proto::google::rpc::Status;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::faulty::{Answer, Mesh};
use tokio::net::TcpListener;

/// The provider: `x-allow: yes` is allowed (it sets `x-checked-by`, appends to `x-tag` and removes
/// `authorization`); `x-mode: fail` answers gRPC `UNAVAILABLE`; `x-mode: hang` never answers; anything else is
/// denied (`PERMISSION_DENIED`) with 401, `x-why` and a body. Every check it received is kept.
#[derive(Clone, Default)]
struct Ext {
    seen: Arc<Mutex<Vec<CheckRequest>>>,
}

fn option(key: &str, value: &str, append: Option<bool>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
        }),
        append,
        append_action: 0,
    }
}

fn status(code: i32) -> Option<Status> {
    Some(Status {
        code,
        message: String::new(),
    })
}

#[tonic::async_trait]
impl Authorization for Ext {
    async fn check(
        &self,
        req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let req = req.into_inner();
        self.seen.lock().unwrap().push(req.clone());
        let http = req
            .attributes
            .and_then(|a| a.request?.http)
            .unwrap_or_default();
        let header = |k: &str| http.headers.get(k).map(String::as_str);
        let answer = match (header("x-allow"), header("x-mode")) {
            (_, Some("fail")) => return Err(tonic::Status::unavailable("ext is down")),
            (_, Some("hang")) => std::future::pending().await,
            (Some("yes"), _) => CheckResponse {
                status: status(0),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![
                        option("x-checked-by", "ext-grpc", None),
                        option("x-tag", "authz", Some(true)),
                    ],
                    headers_to_remove: vec!["authorization".into()],
                })),
            },
            _ => CheckResponse {
                status: status(7),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 401 }),
                    headers: vec![option("x-why", "no x-allow", None)],
                    body: "denied by ext-grpc".into(),
                })),
            },
        };
        Ok(tonic::Response::new(answer))
    }
}

impl Ext {
    async fn serve(addr: SocketAddr) -> Ext {
        let ext = Ext::default();
        let listener = TcpListener::bind(addr).await.unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(ext.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        ext
    }

    fn checks(&self) -> Vec<CheckRequest> {
        self.seen.lock().unwrap().clone()
    }
}

/// A backend that answers 200 with the request headers it got, one `name: value` line each.
async fn header_echo(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let svc = service_fn(|req: http::Request<Incoming>| async move {
                let lines: String = req
                    .headers()
                    .iter()
                    .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("?")))
                    .collect();
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(lines))))
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
}

/// The values of request header `name` the echo backend reported.
fn saw<'a>(a: &'a Answer, name: &str) -> Vec<&'a str> {
    a.body
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .collect()
}

/// A CUSTOM policy on `service`'s `/private/*` asking the gRPC provider at `<provider>.demo`, with more provider
/// fields.
fn custom(m: &mut Mesh, service: &str, provider: &str, fields: &str) {
    m.item(
        "authorizationPolicies",
        &format!(
            "{{name: demo/{service}-ext, action: CUSTOM, \
             targets: [{{kind: SERVICE, name: {service}.demo.svc.cluster.local}}], \
             rules: [{{to: [{{paths: [\"/private/*\"]}}]}}], \
             provider: {{name: {provider}, service: {provider}.demo.svc.cluster.local, port: 80, grpc: true, {fields}}}}}"
        ),
    );
}

#[tokio::test]
async fn a_grpc_provider_is_told_about_the_request_and_allows_with_edits_or_denies() {
    let mut m = Mesh::new(87);
    let api = m.service("api").endpoint("api", 10, "api");
    let ext = m.service("ext").endpoint("ext", 11, "ext");
    m.route("api", "");
    custom(&mut m, "api", "ext", "timeoutMs: 5000");
    header_echo(api).await;
    let ext = Ext::serve(ext).await;
    let w = m.start().await;

    let a = w.get("api", "/public", &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        ext.checks().is_empty(),
        "a path outside the rule is not checked"
    );

    let a = w
        .get(
            "api",
            "/private/x?q=1",
            &[
                ("x-allow", "yes"),
                ("x-tag", "client"),
                ("authorization", "Bearer t"),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(saw(&a, "x-checked-by"), ["ext-grpc"], "{}", a.body);
    assert_eq!(saw(&a, "x-tag"), ["client,authz"], "{}", a.body);
    assert!(saw(&a, "authorization").is_empty(), "{}", a.body);

    let checks = ext.checks();
    assert_eq!(checks.len(), 1);
    let attrs = checks[0].attributes.clone().unwrap();
    let src = attrs.source.unwrap();
    assert_eq!(src.principal, "spiffe://cluster.local/ns/demo/sa/client");
    let Some(address::Address::SocketAddress(s)) = src.address.unwrap().address else {
        panic!("no source address");
    };
    assert_eq!(s.address, "127.0.87.2");
    assert_eq!(
        attrs.destination.unwrap().principal,
        "spiffe://cluster.local/ns/demo/sa/waypoint"
    );
    let http = attrs.request.unwrap().http.unwrap();
    assert_eq!(
        (http.method.as_str(), http.path.as_str(), http.host.as_str()),
        ("GET", "/private/x?q=1", "api.demo.svc.cluster.local:80")
    );
    assert_eq!(http.protocol, "HTTP/1.1");
    assert_eq!(http.headers["x-allow"], "yes");
    assert_eq!(http.headers["authorization"], "Bearer t");
    assert!(!http.id.is_empty(), "the request id is sent");

    let a = w.get("api", "/private/x", &[("x-tag", "client")]).await;
    assert_eq!(
        (a.status, a.header("x-why"), a.body.as_str()),
        (401, Some("no x-allow"), "denied by ext-grpc"),
        "{a:?}"
    );
    assert!(!a.body.contains("x-tag"), "the backend was not reached");
    assert_eq!(ext.checks().len(), 2);
}

#[tokio::test]
async fn a_failing_grpc_provider_fails_closed_unless_fail_open() {
    let mut m = Mesh::new(88);
    let closed = m.service("closed").endpoint("closed", 10, "closed");
    let open = m.service("open").endpoint("open", 11, "open");
    let ext = m.service("ext").endpoint("ext", 12, "ext");
    m.route("closed", "").route("open", "");
    let gone = m.service("gone").endpoint("gone", 13, "gone");
    let nobody = m.service("nobody").endpoint("nobody", 14, "nobody");
    m.route("gone", "");
    custom(&mut m, "closed", "ext", "timeoutMs: 300");
    custom(&mut m, "open", "ext", "timeoutMs: 300, failOpen: true");
    custom(&mut m, "gone", "nobody", "timeoutMs: 5000");
    header_echo(closed).await;
    header_echo(open).await;
    header_echo(gone).await;
    let _nobody = support::faulty::refuse(nobody, "nobody");
    let ext = Ext::serve(ext).await;
    let w = m.start().await;

    for mode in ["fail", "hang"] {
        let a = w.get("closed", "/private/x", &[("x-mode", mode)]).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (403, "RBAC: access denied"),
            "{mode}: {a:?}"
        );
        let a = w.get("open", "/private/x", &[("x-mode", mode)]).await;
        assert_eq!(a.status, 200, "{mode}: {a:?}");
        assert_eq!(
            saw(&a, "x-mode"),
            [mode],
            "{mode}: reached the backend unchanged"
        );
        assert!(saw(&a, "x-checked-by").is_empty(), "{mode}: {}", a.body);
    }
    assert_eq!(ext.checks().len(), 4, "every request was checked");
    // Nothing listens at the provider's endpoint: closed.
    let a = w.get("gone", "/private/x", &[("x-allow", "yes")]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (403, "RBAC: access denied"),
        "{a:?}"
    );
    // A real denial is not a failure: failOpen does not let it through.
    assert_eq!(w.get("open", "/private/x", &[]).await.status, 401);
}
