//! The HTTPS front: TLS (HTTP/2 and HTTP/1.1 by ALPN), authentication, discovery routes, and the hand-off of
//! resource paths to the handlers. Every failure becomes a `Status` response; no input panics the server.

mod handlers;
mod query;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::auth;
use crate::discovery;
use crate::error::ApiError;
use crate::store::Store;
use crate::token::{self, TokenSigner};

pub use query::Query;

pub type Body = BoxBody<Bytes, Infallible>;

/// Request bodies above this are refused (413), like the real server's 3 MiB object limit with headroom.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// What every request handler shares.
pub struct State {
    pub store: Arc<Store>,
    pub signer: TokenSigner,
    pub admin_token: String,
    pub bookmark_every: Duration,
    pub shutdown: watch::Receiver<bool>,
    pub server_address: String,
}

pub fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

pub fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.to_status())
}

/// Accepts connections until `shutdown` flips; each connection drains its in-flight requests on shutdown.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(src.addr = %peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req, peer).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(src.addr = %peer, error = %e, "connection ended with an error");
                    }
                }
                _ = conn_shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

fn authenticated(state: &State, headers: &HeaderMap) -> bool {
    let Some(token) = auth::bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    if auth::constant_time_eq(token, &state.admin_token) {
        return true;
    }
    let inner = state.store.lock();
    state
        .signer
        .authenticate(
            token,
            &[token::ISSUER.to_owned()],
            &inner,
            token::unix_now(),
        )
        .is_ok()
}

async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::TooLarge(format!(
                "the request body is larger than {MAX_BODY} bytes"
            )))
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "reading the request body: {e}"
        ))),
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_owned();
    let path = if path.is_empty() {
        "/".to_owned()
    } else {
        path
    };
    if !auth::is_public(&path) && !authenticated(&state, &parts.headers) {
        return error_response(&ApiError::Unauthorized("Unauthorized".into()));
    }
    let query = match Query::parse(parts.uri.query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return error_response(&e),
    };
    let body = if matches!(
        parts.method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        match read_body(body).await {
            Ok(b) => b,
            Err(e) => return error_response(&e),
        }
    } else {
        Bytes::new()
    };
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let resp = route(
        &state,
        &parts.method,
        &path,
        &query,
        &parts.headers,
        &accept,
        body,
    );
    tracing::debug!(src.addr = %peer, method = %parts.method, path, status = resp.status().as_u16(), "request");
    resp
}

fn discovery_response(v: Value, aggregated: Option<&str>) -> Response<Body> {
    match aggregated {
        Some(version) => full(
            StatusCode::OK,
            &format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"),
            serde_json::to_vec(&v).unwrap_or_default(),
        ),
        None => json_response(StatusCode::OK, &v),
    }
}

fn route(
    state: &Arc<State>,
    method: &Method,
    path: &str,
    query: &Query,
    headers: &HeaderMap,
    accept: &str,
    body: Bytes,
) -> Response<Body> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let not_found = || {
        error_response(&ApiError::NotFound {
            message: "the server could not find the requested resource".into(),
            details: Default::default(),
        })
    };
    let get_only = |resp: Response<Body>| {
        if method == Method::GET || method == Method::HEAD {
            resp
        } else {
            error_response(&ApiError::MethodNotAllowed(format!(
                "{method} is not allowed on {path}"
            )))
        }
    };
    match segs.as_slice() {
        ["version"] => get_only(json_response(StatusCode::OK, &discovery::version())),
        ["healthz"] | ["livez"] | ["readyz"] => get_only(full(StatusCode::OK, "text/plain", "ok")),
        ["api"] => {
            let agg = discovery::wants_aggregated(accept);
            let reg = state.store.lock().registry.clone();
            get_only(match agg {
                Some(v) => discovery_response(discovery::aggregated(&reg, true, v), agg),
                None => json_response(
                    StatusCode::OK,
                    &discovery::core_versions(&state.server_address),
                ),
            })
        }
        ["apis"] => {
            let agg = discovery::wants_aggregated(accept);
            let reg = state.store.lock().registry.clone();
            get_only(match agg {
                Some(v) => discovery_response(discovery::aggregated(&reg, false, v), agg),
                None => json_response(StatusCode::OK, &discovery::group_list(&reg)),
            })
        }
        ["api", "v1"] => {
            let reg = state.store.lock().registry.clone();
            get_only(
                discovery::resource_list(&reg, "", "v1")
                    .map_or_else(not_found, |v| json_response(StatusCode::OK, &v)),
            )
        }
        ["apis", group] => {
            let reg = state.store.lock().registry.clone();
            get_only(
                discovery::group(&reg, group)
                    .map_or_else(not_found, |v| json_response(StatusCode::OK, &v)),
            )
        }
        ["apis", group, version] => {
            let reg = state.store.lock().registry.clone();
            get_only(
                discovery::resource_list(&reg, group, version)
                    .map_or_else(not_found, |v| json_response(StatusCode::OK, &v)),
            )
        }
        ["openapi", "v2"] => {
            let (doc, ct) = crate::openapi::v2(accept.contains("protobuf"));
            get_only(full(StatusCode::OK, ct, doc))
        }
        ["openapi", "v3"] => {
            let reg = state.store.lock().registry.clone();
            get_only(json_response(StatusCode::OK, &crate::openapi::root(&reg)))
        }
        ["openapi", "v3", gv @ ..] => {
            let reg = state.store.lock().registry.clone();
            get_only(
                crate::openapi::group_version(&reg, &gv.join("/"))
                    .map_or_else(not_found, |v| json_response(StatusCode::OK, &v)),
            )
        }
        ["api", "v1", rest @ ..] => {
            handlers::resource(state, method, "", "v1", rest, query, headers, accept, body)
        }
        ["apis", group, version, rest @ ..] => handlers::resource(
            state, method, group, version, rest, query, headers, accept, body,
        ),
        _ => not_found(),
    }
}
