//! `ambit echo`: the built-in test server of the demos and end-to-end tests.
//!
//! HTTP/1.1 and h2c (prior knowledge) on one port answer with who answered (hostname, pod, namespace) and what
//! arrived (method, path, version, headers, peer address), as text or, with `?format=json`, JSON;
//! `/status/<code>` answers that status. An optional plain-TCP port echoes bytes back, except that a first line
//! `whoami` is answered with the pod's name.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

#[derive(clap::Args, Debug, Clone)]
pub struct EchoArgs {
    /// HTTP/1.1 and h2c port.
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Plain TCP echo port (off unless given).
    #[arg(long)]
    pub tcp_port: Option<u16>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Seconds to wait before listening: an app that is slow to start, for readiness tests.
    #[arg(long, default_value_t = 0)]
    pub start_delay: u64,
}

/// Who this server is.
#[derive(Debug)]
pub struct Identity {
    pub hostname: String,
    pub pod: String,
    pub namespace: String,
}

impl Identity {
    pub fn from_env() -> Identity {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let pod = std::env::var("POD_NAME").unwrap_or_else(|_| hostname.clone());
        Identity {
            hostname,
            pod,
            namespace: std::env::var("POD_NAMESPACE").unwrap_or_default(),
        }
    }
}

/// Serves until `shutdown` completes.
pub async fn run(args: EchoArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let id = Arc::new(Identity::from_env());
    tokio::time::sleep(std::time::Duration::from_secs(args.start_delay)).await;
    let http = TcpListener::bind(SocketAddr::new(args.bind, args.http_port))
        .await
        .with_context(|| format!("bind {}:{}", args.bind, args.http_port))?;
    let tcp = match args.tcp_port {
        Some(p) => Some(
            TcpListener::bind(SocketAddr::new(args.bind, p))
                .await
                .with_context(|| format!("bind {}:{p}", args.bind))?,
        ),
        None => None,
    };
    eprintln!(
        "ambit echo: http+h2c on {}{}",
        http.local_addr()?,
        tcp.as_ref()
            .and_then(|t| t.local_addr().ok())
            .map(|a| format!(", tcp on {a}"))
            .unwrap_or_default()
    );
    tokio::select! {
        _ = shutdown => Ok(()),
        r = serve_http(http, id.clone()) => r,
        r = serve_tcp(tcp, id) => r,
    }
}

/// Serves HTTP/1.1 and h2c on `listener`.
pub async fn serve_http(listener: TcpListener, id: Arc<Identity>) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "accept");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = id.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let id = id.clone();
                async move { Ok::<_, Infallible>(respond(&id, peer, &req)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Serves the TCP echo (never returns when `listener` is `None`).
pub async fn serve_tcp(listener: Option<TcpListener>, id: Arc<Identity>) -> anyhow::Result<()> {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "accept");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let id = id.clone();
        tokio::spawn(async move {
            let _ = echo_tcp(stream, &id).await;
        });
    }
}

const WHOAMI: &[u8] = b"whoami\n";

async fn echo_tcp(mut s: TcpStream, id: &Identity) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    // The first bytes, gathered while they may still turn out to be `whoami\n` (it can arrive in pieces).
    let mut n = 0;
    loop {
        let m = s.read(&mut buf[n..]).await?;
        n += m;
        if m == 0 || n >= WHOAMI.len() || !WHOAMI.starts_with(&buf[..n]) {
            break;
        }
    }
    if n == 0 {
        return Ok(());
    }
    if buf[..n].starts_with(WHOAMI) {
        s.write_all(format!("{}\n", id.pod).as_bytes()).await?;
        s.write_all(&buf[WHOAMI.len()..n]).await?;
    } else {
        s.write_all(&buf[..n]).await?;
    }
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n]).await?;
    }
}

fn respond(id: &Identity, peer: SocketAddr, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let status = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    let json = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "format=json"));
    let version = format!("{:?}", req.version());
    let (body, ctype) = if json {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
                )
            })
            .collect();
        let v = serde_json::json!({
            "hostname": id.hostname,
            "pod": id.pod,
            "namespace": id.namespace,
            "method": req.method().as_str(),
            "path": path,
            "version": version,
            "peer": peer.to_string(),
            "headers": headers,
        });
        (v.to_string(), "application/json")
    } else {
        let mut b = String::with_capacity(256);
        let _ = writeln!(b, "hostname={}", id.hostname);
        let _ = writeln!(b, "pod={}", id.pod);
        let _ = writeln!(b, "namespace={}", id.namespace);
        let _ = writeln!(b, "method={}", req.method());
        let _ = writeln!(b, "path={path}");
        let _ = writeln!(b, "version={version}");
        let _ = writeln!(b, "peer={peer}");
        for (k, v) in req.headers() {
            let _ = writeln!(b, "header {}={}", k, String::from_utf8_lossy(v.as_bytes()));
        }
        (b, "text/plain; charset=utf-8")
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}
