//! A backend that fails each request a fixed number of times before it succeeds, for the retry end-to-end tests:
//! the first `<fail>` arrivals of each `x-request-id` (a proxy's retries keep the id) get `503`, later ones `200`.
//! Every answer says who answered and which attempt it was (`pod=<POD_NAME>`, `attempt=<n>`); a request without
//! `x-request-id` (one that did not go through a proxy) gets `400`. HTTP/1.1 and h2c.
//!
//! Usage: `e2e-flaky [listen address, default 0.0.0.0:8080] [fail count, default 2]`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Request ids remembered at most; the map starts over beyond this (a test sends far fewer).
const MAX_IDS: usize = 100_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .unwrap_or_else(|| "0.0.0.0:8080".to_owned())
        .parse()
        .context("listen address")?;
    let fail: u32 = args
        .next()
        .unwrap_or_else(|| "2".to_owned())
        .parse()
        .context("fail count")?;
    let pod = std::env::var("POD_NAME").unwrap_or_default();
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    println!("e2e-flaky listening on {listen}, failing each request id {fail} times");
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (seen, pod) = (seen.clone(), pod.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = answer(&seen, &pod, fail, &req);
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

fn answer(
    seen: &Mutex<HashMap<String, u32>>,
    pod: &str,
    fail: u32,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(id) = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    else {
        return reply(
            StatusCode::BAD_REQUEST,
            format!("pod={pod}\nno x-request-id\n"),
        );
    };
    let attempt = {
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_IDS {
            seen.clear();
        }
        let n = seen.entry(id.to_owned()).or_default();
        *n += 1;
        *n
    };
    let status = if attempt <= fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    reply(status, format!("pod={pod}\nattempt={attempt}\n"))
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}
