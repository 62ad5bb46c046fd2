//! CUSTOM authorization: asking an external authorization service (Istio's `envoyExtAuthzHttp` provider) whether
//! a request may pass, as Envoy's `ext_authz` HTTP filter does.
//!
//! The check is a request to the provider's service (through the mesh, like any backend) with the original
//! method, the provider's `pathPrefix` + the original path, and the request's headers (only those in
//! `includeRequestHeadersInCheck` when set, plus `host`). A 2xx answer allows: the headers named in
//! `headersToUpstreamOnAllow` are copied from the answer onto the request. Any other answer denies with the
//! provider's status and body, and the headers named in `headersToDownstreamOnDeny`. When the provider cannot be
//! asked (no endpoint, connect failure, timeout: Istio's 600 s by default), `failOpen` decides. gRPC providers
//! (`envoyExtAuthzGrpc`, Envoy's `Authorization/Check`) are not implemented: they fail as an unreachable provider
//! does, and the log says why.

use std::sync::Arc;
use std::time::Duration;

use ambit_proto::waypoint::ExtAuthzProvider;
use http::{HeaderMap, HeaderName, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use tracing::warn;

use crate::http::Proxy;
use crate::http::body::RespBody;
use crate::state::Snapshot;
use crate::upstream::ReqBody;

/// Istio's default for `envoyExtAuthz*.timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest provider answer body passed to the client on a deny.
const MAX_DENY_BODY: usize = 64 * 1024;

/// What the provider said.
pub enum Verdict {
    /// Allowed; these headers go onto the request sent upstream.
    Allow(Vec<(HeaderName, http::HeaderValue)>),
    /// Denied with this answer for the client.
    Deny(Box<Response<RespBody>>),
}

/// Asks `provider` about a request with `method`, `path` and `headers`.
pub async fn check(
    proxy: &Arc<Proxy>,
    snap: &Snapshot,
    provider: &ExtAuthzProvider,
    method: &http::Method,
    path: &str,
    headers: &HeaderMap,
) -> Verdict {
    let timeout = match provider.timeout_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(ms),
    };
    let answer =
        tokio::time::timeout(timeout, ask(proxy, snap, provider, method, path, headers)).await;
    match answer {
        Ok(Ok(resp)) => resp,
        Ok(Err(why)) => unreachable_provider(provider, &why),
        Err(_) => unreachable_provider(provider, &format!("no answer within {timeout:?}")),
    }
}

fn unreachable_provider(provider: &ExtAuthzProvider, why: &str) -> Verdict {
    warn!(provider = %provider.name, %why, fail_open = provider.fail_open, "ext_authz provider unreachable");
    if provider.fail_open {
        Verdict::Allow(Vec::new())
    } else {
        Verdict::Deny(Box::new(crate::http::headers::error_response(
            StatusCode::FORBIDDEN,
            false,
            "RBAC: access denied",
        )))
    }
}

async fn ask(
    proxy: &Arc<Proxy>,
    snap: &Snapshot,
    provider: &ExtAuthzProvider,
    method: &http::Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Verdict, String> {
    if provider.grpc {
        return Err("gRPC ext_authz providers are not supported yet".into());
    }
    let port = u16::try_from(provider.port).map_err(|_| format!("port {}", provider.port))?;
    let backend = snap
        .backend(&provider.service, port, None)
        .ok_or_else(|| format!("service {} not found", provider.service))?;
    let (_, picked) = backend
        .pick(None, &[])
        .ok_or_else(|| format!("no healthy endpoint of {}", provider.service))?;
    let mut req = Request::builder()
        .method(method.clone())
        .uri(format!("{}{}", provider.path_prefix, path))
        .body(RespBody::full(Vec::<u8>::new()) as ReqBody)
        .map_err(|e| e.to_string())?;
    let h = req.headers_mut();
    for (name, value) in headers {
        let wanted = provider.include_request_headers_in_check.is_empty()
            || name == header::HOST
            || provider
                .include_request_headers_in_check
                .iter()
                .any(|w| w.eq_ignore_ascii_case(name.as_str()));
        if wanted && !is_hop_by_hop(name) {
            h.append(name.clone(), value.clone());
        }
    }
    h.remove(header::CONTENT_LENGTH);
    let (resp, release) = proxy
        .upstream
        .send(&picked.workload, picked.addr, false, req, None)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let resp_headers = resp.headers().clone();
    let body = Limited::new(resp.into_body(), MAX_DENY_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if let Some(r) = release {
        r.release();
    }
    let copy = |names: &[String]| -> Vec<(HeaderName, http::HeaderValue)> {
        names
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .flat_map(|n| {
                resp_headers
                    .get_all(&n)
                    .iter()
                    .map(|v| (n.clone(), v.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    if status.is_success() {
        return Ok(Verdict::Allow(copy(&provider.headers_to_upstream_on_allow)));
    }
    let mut deny = Response::new(RespBody::new(RespBody::full(body), None, None));
    *deny.status_mut() = status;
    for (n, v) in copy(&provider.headers_to_downstream_on_deny) {
        deny.headers_mut().append(n, v);
    }
    Ok(Verdict::Deny(Box::new(deny)))
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "te" | "upgrade" | "proxy-connection"
    )
}
