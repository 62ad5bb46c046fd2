//! The monitoring port (15014): `/ready` (200 once the first state was computed and pushed, else 503),
//! `/metrics` (Prometheus text), `/debug/resources` (the computed resources as JSON), `/debug/connections`
//! (the xDS clients, with per-connection counters and the waypoint a connection's routes are scoped to),
//! `/debug/status` (the `status` of Gateways, routes, Services and pods as Kubernetes would hold it, by
//! `<kind>/<ns>/<name>`; filter with `?kind=&namespace=&name=`) and `/debug/config`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use ambit_core::drain::DrainWatcher;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::compute::render;
use crate::controller::Outputs;
use crate::xds::XdsServer;

pub struct AdminState {
    pub outputs: Outputs,
    pub registry: Registry,
    pub xds: XdsServer,
    /// The effective configuration, shown at `/debug/config`.
    pub config: serde_json::Value,
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    reply(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )
}

pub fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/ready" | "/healthz/ready" => {
            if *state.outputs.ready.borrow() {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: initial state not computed\n",
                )
            }
        }
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        "/debug/resources" => {
            let resources = state.outputs.resources.borrow().clone();
            let mut v = render::resources(&resources);
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "generation".into(),
                    state.outputs.snapshot.borrow().generation.into(),
                );
            }
            json(&v)
        }
        "/debug/connections" => {
            json(&serde_json::to_value(state.xds.connections()).unwrap_or_default())
        }
        "/debug/status" => {
            let resources = state.outputs.resources.borrow().clone();
            json(&status_json(&resources.status, req.uri().query()))
        }
        "/debug/config" => json(&state.config),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /ready, /metrics, /debug/resources, /debug/connections, /debug/status, /debug/config\n",
        ),
    }
}

/// The statuses whose `<kind>/<ns>/<name>` key matches the `kind`, `namespace` and `name` query parameters
/// (each optional; `kind` without case).
pub fn status_json(
    status: &std::collections::BTreeMap<String, serde_json::Value>,
    query: Option<&str>,
) -> serde_json::Value {
    let mut want: [Option<String>; 3] = [None, None, None];
    for pair in query.unwrap_or_default().split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match k {
            "kind" => 0,
            "namespace" => 1,
            "name" => 2,
            _ => continue,
        };
        if !v.is_empty() {
            want[slot] = Some(if slot == 0 {
                v.to_ascii_lowercase()
            } else {
                v.to_owned()
            });
        }
    }
    let matching = status.iter().filter(|(key, _)| {
        let parts: Vec<&str> = key.splitn(3, '/').collect();
        want.iter()
            .zip(&parts)
            .all(|(w, p)| w.as_deref().is_none_or(|w| w == *p))
    });
    serde_json::Value::Object(matching.map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Serves until drained.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut drain: DrainWatcher) {
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            _ = drain.signaled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        let state = state.clone();
        let mut conn_drain = drain.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = handle(&state, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = conn_drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn status_filters_by_kind_namespace_and_name() {
        let all: std::collections::BTreeMap<String, serde_json::Value> = [
            "gateway/a/wp",
            "gateway/b/wp",
            "service/a/wp",
            "httproute/a/r",
        ]
        .into_iter()
        .map(|k| (k.to_owned(), serde_json::json!({})))
        .collect();
        let keys = |q: Option<&str>| -> Vec<String> {
            status_json(&all, q)
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(keys(None).len(), 4);
        assert_eq!(
            keys(Some("kind=Gateway")),
            vec!["gateway/a/wp", "gateway/b/wp"]
        );
        assert_eq!(
            keys(Some("namespace=a&name=wp")),
            vec!["gateway/a/wp", "service/a/wp"]
        );
        assert_eq!(keys(Some("kind=httproute&name=")), vec!["httproute/a/r"]);
    }
}
