//! CUSTOM authorization: asking an external authorization service (an Istio `envoyExtAuthzHttp` or
//! `envoyExtAuthzGrpc` provider) whether a request may pass, as Envoy's `ext_authz` HTTP filter does.
//!
//! Either check goes to the provider's service through the mesh, like a request to any backend, over the
//! waypoint's pooled upstream connections:
//!
//! * HTTP (`extauthz/http.rs`): a request with the original method, the provider's `pathPrefix` + the original path, and the
//!   request's headers (only those in `includeRequestHeadersInCheck` when set, plus `host`). A 2xx answer allows:
//!   the headers named in `headersToUpstreamOnAllow` are copied from the answer onto the request. Any other answer
//!   denies with the provider's status and body, and the headers named in `headersToDownstreamOnDeny`.
//! * gRPC (`extauthz/grpc.rs`): Envoy's `envoy.service.auth.v3.Authorization/Check` over HTTP/2, with the client's identity
//!   and address, the destination and the request's method, path, host, protocol and headers. Status `OK` allows
//!   and the answer's header edits (set, append, add-if-absent, remove) apply to the request; any other status
//!   denies with the answer's HTTP status (403 if none), headers and body.
//!
//! When the provider cannot be asked or fails (no endpoint, connect failure, a non-OK gRPC status, a malformed or
//! oversized answer, timeout: Istio's 600 s by default), `failOpen` decides between letting the request through
//! unchanged and 403 `RBAC: access denied`; the log says why.

mod grpc;
mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::http::header::{HeaderMap, HeaderName, HeaderValue};
use ::http::{Method, Response, StatusCode, Version};
use ambit_proto::waypoint::ExtAuthzProvider;
use tracing::warn;

use crate::http::Proxy;
use crate::http::body::RespBody;
use crate::state::{Picked, Snapshot};
use crate::upstream::UpstreamError;

/// Istio's default for `envoyExtAuthz*.timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// The largest provider answer read (an HTTP deny body, a gRPC `CheckResponse`); a longer one is a failure.
const MAX_ANSWER: usize = 64 * 1024;

/// What the provider is told about the request.
pub struct CheckInput<'a> {
    pub method: &'a Method,
    /// Path and query.
    pub path: &'a str,
    pub authority: &'a str,
    pub version: Version,
    pub headers: &'a HeaderMap,
    /// The client's SPIFFE URI.
    pub source_principal: Option<&'a str>,
    pub source_addr: Option<SocketAddr>,
    /// The service VIP (or workload address) and port the request is for.
    pub destination_addr: Option<SocketAddr>,
}

/// What the provider said.
pub enum Verdict {
    /// Allowed, with these changes to the request sent upstream.
    Allow(HeaderEdits),
    /// Denied with this answer for the client.
    Deny(Box<Response<RespBody>>),
}

/// How one header of a provider's answer goes onto a header map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EditAction {
    /// Replace any values (or add the header).
    Overwrite,
    /// Join onto the existing value with `,` (or add the header), as Envoy's `appendCopy`.
    Append,
    /// One more value of the header.
    Add,
    AddIfAbsent,
    OverwriteIfExists,
}

/// Header changes from a provider's answer, in its order, then removals.
#[derive(Debug, Default)]
pub struct HeaderEdits {
    pub edits: Vec<(HeaderName, HeaderValue, EditAction)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    pub fn apply(self, headers: &mut HeaderMap) {
        for (name, value, action) in self.edits {
            let present = headers.contains_key(&name);
            match action {
                EditAction::Overwrite => {
                    headers.insert(name, value);
                }
                EditAction::AddIfAbsent if !present => {
                    headers.insert(name, value);
                }
                EditAction::OverwriteIfExists if present => {
                    headers.insert(name, value);
                }
                EditAction::AddIfAbsent | EditAction::OverwriteIfExists => {}
                EditAction::Add => {
                    headers.append(name, value);
                }
                EditAction::Append => {
                    let mut joined: Vec<u8> = Vec::new();
                    for v in headers.get_all(&name) {
                        joined.extend_from_slice(v.as_bytes());
                        joined.push(b',');
                    }
                    joined.extend_from_slice(value.as_bytes());
                    if let Ok(v) = HeaderValue::from_bytes(&joined) {
                        headers.insert(name, v);
                    }
                }
            }
        }
        for name in self.remove {
            headers.remove(name);
        }
    }
}

/// Why a provider could not be asked, or its answer not understood (`failOpen` decides).
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("port {0} out of range")]
    Port(u32),
    #[error("service {0} not found")]
    NoService(String),
    #[error("no healthy endpoint of {0}")]
    NoEndpoint(String),
    #[error("building the check request: {0}")]
    Request(#[from] ::http::Error),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("reading the answer: {0}")]
    Body(String),
    #[error("HTTP {0} from a gRPC provider")]
    HttpStatus(StatusCode),
    #[error("gRPC status {code}: {message}")]
    Grpc { code: i32, message: String },
    #[error("malformed answer: {0}")]
    Malformed(String),
}

/// Asks `provider` about a request.
pub async fn check(
    proxy: &Arc<Proxy>,
    snap: &Snapshot,
    provider: &ExtAuthzProvider,
    input: &CheckInput<'_>,
) -> Verdict {
    let timeout = match provider.timeout_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(ms),
    };
    let ask = async {
        let picked = endpoint(snap, provider)?;
        if provider.grpc {
            grpc::ask(proxy, &picked, provider, input, timeout).await
        } else {
            http::ask(proxy, &picked, provider, input).await
        }
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(verdict)) => verdict,
        Ok(Err(why)) => provider_failed(provider, &why.to_string()),
        Err(_) => provider_failed(provider, &format!("no answer within {timeout:?}")),
    }
}

/// An endpoint of the provider's service.
fn endpoint(snap: &Snapshot, provider: &ExtAuthzProvider) -> Result<Picked, AskError> {
    let port = u16::try_from(provider.port).map_err(|_| AskError::Port(provider.port))?;
    let backend = snap
        .backend(&provider.service, port, None)
        .ok_or_else(|| AskError::NoService(provider.service.clone()))?;
    let (_, picked) = backend
        .pick(None, &[])
        .ok_or_else(|| AskError::NoEndpoint(provider.service.clone()))?;
    Ok(picked)
}

fn provider_failed(provider: &ExtAuthzProvider, why: &str) -> Verdict {
    warn!(provider = %provider.name, %why, fail_open = provider.fail_open, "ext_authz provider failed");
    if provider.fail_open {
        Verdict::Allow(HeaderEdits::default())
    } else {
        Verdict::Deny(Box::new(crate::http::headers::error_response(
            StatusCode::FORBIDDEN,
            false,
            "RBAC: access denied",
        )))
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "te" | "upgrade" | "proxy-connection"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn edit(name: &'static str, value: &'static str, action: EditAction) -> HeaderEdits {
        HeaderEdits {
            edits: vec![(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
                action,
            )],
            remove: Vec::new(),
        }
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn each_edit_action_on_a_present_and_an_absent_header() {
        use EditAction::*;
        // (action, values after it on a map with `x: 1`, values after it on a map without `x`)
        let cases: [(EditAction, &[&str], &[&str]); 5] = [
            (Overwrite, &["2"], &["2"]),
            (Append, &["1,2"], &["2"]),
            (Add, &["1", "2"], &["2"]),
            (AddIfAbsent, &["1"], &["2"]),
            (OverwriteIfExists, &["2"], &[]),
        ];
        for (action, with, without) in cases {
            let mut h = HeaderMap::new();
            h.insert("x", HeaderValue::from_static("1"));
            edit("x", "2", action).apply(&mut h);
            assert_eq!(values(&h, "x"), with, "{action:?} on a present header");
            let mut h = HeaderMap::new();
            edit("x", "2", action).apply(&mut h);
            assert_eq!(values(&h, "x"), without, "{action:?} on an absent header");
        }
    }

    #[test]
    fn removals_come_after_edits() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        let mut e = edit("x-user", "alice", EditAction::Overwrite);
        e.edits.push((
            HeaderName::from_static("authorization"),
            HeaderValue::from_static("Bearer u"),
            EditAction::Overwrite,
        ));
        e.remove.push(HeaderName::from_static("authorization"));
        e.apply(&mut h);
        assert_eq!(values(&h, "x-user"), ["alice"]);
        assert!(!h.contains_key("authorization"));
    }
}
