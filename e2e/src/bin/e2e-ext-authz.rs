//! A test-only external authorization server for the waypoint's CUSTOM AuthorizationPolicy end-to-end test (the
//! shape of Istio's `samples/extauthz` HTTP server): a check request with `x-allow: yes` is allowed (200), any
//! other is denied (403, body `denied by e2e-ext-authz`). Either answer carries `x-ext-authz-check-result:
//! <allowed|denied> <path the check arrived on>`, so a test can see that the provider was asked, on which path (the
//! provider's `pathPrefix` + the original path), and that the waypoint copied the header where the provider's
//! `headersToUpstreamOnAllow` / `headersToDownstreamOnDeny` say. HTTP/1.1 and h2c.
//!
//! With `--grpc` it is an `envoyExtAuthzGrpc` provider instead (Envoy's `Authorization/Check`) with the same rule
//! on the check's headers: allowed with `x-ext-authz-check-result: allowed <path>` set on the request, or denied
//! (`PERMISSION_DENIED`, HTTP 403) with that header saying `denied <path>` and the same body for the client.
//!
//! Usage: `e2e-ext-authz [--grpc] [listen address, default 0.0.0.0:8000]`.

use std::convert::Infallible;
use std::net::SocketAddr;

use ambit_proto::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use ambit_proto::envoy::r#type::v3::HttpStatus;
use ambit_proto::ext_authz::authorization_server::{Authorization, AuthorizationServer};
use ambit_proto::ext_authz::check_response::HttpResponse;
use ambit_proto::ext_authz::{CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse};
use ambit_proto::google::rpc::Status;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let grpc = args.iter().any(|a| a == "--grpc");
    let listen: SocketAddr = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or("0.0.0.0:8000", String::as_str)
        .parse()
        .context("listen address")?;
    if grpc {
        println!(
            "e2e-ext-authz (gRPC) listening on {listen}: x-allow: yes is allowed, anything else denied"
        );
        return tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(GrpcCheck))
            .serve(listen)
            .await
            .with_context(|| format!("gRPC server on {listen}"));
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    println!("e2e-ext-authz listening on {listen}: x-allow: yes is allowed, anything else denied");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|req: Request<Incoming>| {
                let resp = answer(&req);
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

fn answer(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let allowed = req
        .headers()
        .get("x-allow")
        .is_some_and(|v| v.as_bytes() == b"yes");
    let path = req.uri().path();
    let (status, verdict, body) = if allowed {
        (StatusCode::OK, "allowed", "")
    } else {
        (StatusCode::FORBIDDEN, "denied", "denied by e2e-ext-authz\n")
    };
    println!("check {} {path}: {verdict}", req.method());
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    if let Ok(v) = format!("{verdict} {path}").parse() {
        resp.headers_mut().insert("x-ext-authz-check-result", v);
    }
    resp
}

/// The gRPC provider: the same rule, read from the check's attributes.
struct GrpcCheck;

fn header(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
        }),
        append: Some(false),
        append_action: 0,
    }
}

#[tonic::async_trait]
impl Authorization for GrpcCheck {
    async fn check(
        &self,
        req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let http = req
            .into_inner()
            .attributes
            .and_then(|a| a.request?.http)
            .unwrap_or_default();
        let allowed = http.headers.get("x-allow").is_some_and(|v| v == "yes");
        let path = http.path.split('?').next().unwrap_or("");
        let verdict = if allowed { "allowed" } else { "denied" };
        println!("check (gRPC) {} {path}: {verdict}", http.method);
        let result = header("x-ext-authz-check-result", format!("{verdict} {path}"));
        let answer = if allowed {
            CheckResponse {
                status: Some(Status::default()),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![result],
                    headers_to_remove: Vec::new(),
                })),
            }
        } else {
            CheckResponse {
                status: Some(Status {
                    code: 7,
                    message: "denied by e2e-ext-authz".to_owned(),
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 403 }),
                    headers: vec![result],
                    body: "denied by e2e-ext-authz\n".to_owned(),
                })),
            }
        };
        Ok(tonic::Response::new(answer))
    }
}
