//! The request's L7 policy steps, in the order `handle` runs them: what the backend learns about the client,
//! RequestAuthentication (JWT), AuthorizationPolicy (CUSTOM through ext_authz, DENY, ALLOW) and local rate limits.
//! Each returns the answer for a refused request as `Err`; none does any work when no policy of its kind exists.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use tracing::{debug, info};

use super::body::RespBody;
use super::headers::error_response;
use super::{Conn, Proxy};
use crate::authz::{Decision, Request as AuthzRequest, RequestAuth};
use crate::extauthz;
use crate::jwt::{JwtRule, Outcome as JwtOutcome, VerifiedJwt, apply_edits, www_authenticate};
use crate::ratelimit::{self, Quota, RateLimitPolicy};
use crate::route::RequestView;
use crate::state::{Snapshot, Target};

/// The answer for a refused request (boxed: it is the rare path).
pub(super) type Refused = Box<Response<RespBody>>;

/// RequestAuthentications targeting this waypoint or the service: an invalid token is refused (401, or 403 for a
/// disallowed audience); a valid one gives the request its principal and claims; no token is not an error.
pub(super) fn authenticate(
    proxy: &Proxy,
    snap: &Snapshot,
    conn: &Conn,
    parts: &mut http::request::Parts,
    authority: &str,
    grpc: bool,
) -> Result<Option<VerifiedJwt>, Refused> {
    if snap.request_authns().is_empty() {
        return Ok(None);
    }
    let service_key = match &conn.target {
        Target::Service { service, port } => Some((service.hostname.as_str(), *port)),
        Target::Workload { .. } => None,
    };
    let mut rules: Vec<&JwtRule> = Vec::new();
    for t in snap.request_authns().for_request(service_key, None) {
        for r in &t.policy {
            if !rules.iter().any(|x| std::ptr::eq(*x, r)) {
                rules.push(r);
            }
        }
    }
    if rules.is_empty() {
        return Ok(None);
    }
    match proxy.authenticator.authenticate(
        &rules,
        &parts.headers,
        parts.uri.query(),
        std::time::SystemTime::now(),
    ) {
        JwtOutcome::NoToken => Ok(None),
        JwtOutcome::Authenticated(a) => {
            apply_edits(&a.edits, &mut parts.headers);
            Ok(Some(a.jwt))
        }
        JwtOutcome::Rejected(e) => {
            let mut r = error_response(e.status(), grpc, &e.to_string());
            if let Ok(v) = HeaderValue::from_str(&www_authenticate(authority)) {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            Err(Box::new(r))
        }
    }
}

/// The local rate limits of the service, the waypoint and the matched rule: `Err` is the 429; `Ok` carries the
/// tightest limit's numbers for the response's `x-ratelimit-*` headers.
#[allow(clippy::too_many_arguments)]
pub(super) fn rate_limit(
    proxy: &Proxy,
    snap: &Snapshot,
    conn: &Conn,
    parts: &http::request::Parts,
    authority: &str,
    service: Option<(&str, u16)>,
    rule: Option<&str>,
    grpc: bool,
) -> Result<Option<Quota>, Refused> {
    if snap.rate_limits().is_empty() {
        return Ok(None);
    }
    // A policy that targets the request twice (say, its service and its route) counts once.
    let mut seen: Vec<*const RateLimitPolicy> = Vec::new();
    let policies = snap
        .rate_limits()
        .for_request(service, rule)
        .map(|t| &t.policy)
        .filter(|p| {
            let ptr: *const RateLimitPolicy = *p;
            let new = !seen.contains(&ptr);
            seen.push(ptr);
            new
        });
    let view = RequestView {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        authority,
        source_namespace: conn.source_namespace(),
        source_uid: conn.source.as_deref().map(|w| w.uid.as_str()),
    };
    let key = ratelimit::KeyInput {
        identity: conn.principal.as_deref(),
        source_ip: conn.source_addr.map(|a| a.ip()),
        headers: &parts.headers,
        path: parts.uri.path(),
    };
    match ratelimit::check(policies, &view, &key, tokio::time::Instant::now()) {
        ratelimit::Verdict::Limited(q) => {
            proxy.metrics.rate_limited();
            let mut r = error_response(StatusCode::TOO_MANY_REQUESTS, grpc, "local_rate_limited");
            ratelimit::headers(&q, true, r.headers_mut());
            Err(Box::new(r))
        }
        ratelimit::Verdict::Allowed(q) => Ok(q),
    }
}

/// What the backend learns about the client, as Istio's waypoint writes it: `x-forwarded-for` gets the client's
/// address appended; `x-forwarded-client-cert` is never taken from the client (it could claim any identity) and,
/// when the Gateway asks for it, is set to `By=<waypoint>;URI=<client identity>` (Envoy's `SANITIZE_SET` with the
/// URI; no `Hash`: the client's certificate is the source ztunnel's HBONE certificate, not one the client showed).
pub(super) fn client_identity_headers(proxy: &Proxy, conn: &Conn, headers: &mut http::HeaderMap) {
    const XFF: &str = "x-forwarded-for";
    const XFCC: &str = "x-forwarded-client-cert";
    if let Some(addr) = conn.source_addr {
        let ip = addr.ip().to_string();
        let value = match headers.get(XFF).and_then(|v| v.to_str().ok()) {
            Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
            _ => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(XFF, v);
        }
    }
    headers.remove(XFCC);
    if proxy.cfg.xfcc_include_client_identity
        && let Some(client) = &conn.principal
        && let Ok(v) = HeaderValue::from_str(&format!("By={};URI={client}", proxy.cfg.identity()))
    {
        headers.insert(XFCC, v);
    }
}

/// The authorization step: `Err` is the answer for a denied request.
pub(super) async fn authorize(
    proxy: &Arc<Proxy>,
    snap: &Snapshot,
    conn: &Conn,
    parts: &mut http::request::Parts,
    authority: &str,
    jwt: Option<&VerifiedJwt>,
    grpc: bool,
) -> Result<(), Refused> {
    if snap.authz().is_empty() {
        return Ok(());
    }
    let (service, destination) = match &conn.target {
        Target::Service { service, port } => (
            Some(service.hostname.as_str()),
            (service.vips.first().copied(), *port),
        ),
        Target::Workload { ip, port, .. } => (None, (Some(*ip), *port)),
    };
    let unspecified = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    let source_ip = conn.source_addr.map_or(unspecified, |a| a.ip());
    let remote_ip = parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(source_ip);
    let me = proxy.store.me();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let req = AuthzRequest {
        gateway: (me.gateway.0.as_str(), me.gateway.1.as_str()),
        gateway_class: &proxy.cfg.gateway_class,
        service,
        source_principal: conn.principal.as_deref(),
        source_namespace: conn.source_namespace(),
        source_ip,
        remote_ip,
        destination_ip: destination.0.unwrap_or(unspecified),
        destination_port: destination.1,
        host: authority,
        method: parts.method.as_str(),
        path,
        headers: &parts.headers,
        sni: None,
        auth: jwt.and_then(|j| {
            Some(RequestAuth {
                principal: j.principal.as_deref()?,
                claims: &j.claims,
            })
        }),
    };
    let decision = snap.authz().evaluate(&req);
    for a in &decision.audited {
        info!(target: "access", policy = a.name, "authorization audit");
    }
    if decision.dry_run_would_deny {
        info!(policy = ?decision.dry_run_by.as_ref().map(|p| p.name), "dry-run policy would deny");
    }
    if !decision.allowed {
        debug!(policy = ?decision.by.as_ref().map(|p| p.name), "authorization denied");
        return Err(Box::new(error_response(
            StatusCode::FORBIDDEN,
            grpc,
            Decision::DENIED_BODY,
        )));
    }
    if let Some(custom) = decision.custom {
        let provider = custom.provider.clone();
        let input = extauthz::CheckInput {
            method: &parts.method,
            path,
            authority,
            version: parts.version,
            headers: &parts.headers,
            source_principal: conn.principal.as_deref(),
            source_addr: conn.source_addr,
            destination_addr: destination
                .0
                .map(|ip| std::net::SocketAddr::new(ip, destination.1)),
        };
        match extauthz::check(proxy, snap, &provider, &input).await {
            extauthz::Verdict::Allow(edits) => edits.apply(&mut parts.headers),
            // A gRPC caller gets the provider's status as a trailers-only gRPC answer.
            extauthz::Verdict::Deny(resp) if grpc => {
                return Err(Box::new(error_response(
                    resp.status(),
                    true,
                    Decision::DENIED_BODY,
                )));
            }
            extauthz::Verdict::Deny(resp) => return Err(resp),
        }
    }
    Ok(())
}
