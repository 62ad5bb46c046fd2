//! A test-only external authorization server for the waypoint's CUSTOM AuthorizationPolicy end-to-end test (the
//! shape of Istio's `samples/extauthz` HTTP server): a check request with `x-allow: yes` is allowed (200), any
//! other is denied (403, body `denied by e2e-ext-authz`). Either answer carries `x-ext-authz-check-result:
//! <allowed|denied> <path the check arrived on>`, so a test can see that the provider was asked, on which path (the
//! provider's `pathPrefix` + the original path), and that the waypoint copied the header where the provider's
//! `headersToUpstreamOnAllow` / `headersToDownstreamOnDeny` say. HTTP/1.1 and h2c.
//!
//! Usage: `e2e-ext-authz [listen address, default 0.0.0.0:8000]`.

use std::convert::Infallible;
use std::net::SocketAddr;

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
    let listen: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "0.0.0.0:8000".to_owned())
        .parse()
        .context("listen address")?;
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
