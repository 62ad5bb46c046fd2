//! One HTTP request through the waypoint: route (404 `NR` when a service's routes match nothing), rule filters,
//! weighted backend choice (500 for a missing or invalid backend), endpoint choice (503 `UH` when none is
//! healthy), forwarding on a reused connection (503 `UF` when it cannot be made, 504 `UT` on timeout), response
//! filters, then metrics and one access-log event when the response ends.
//!
//! The steps a request goes through are plain code in [`handle`], in order: that is the filter chain that
//! resilience and L7 policy plug into.

pub mod body;
pub mod forward;
pub mod headers;
mod log;
mod mirror;
mod policy;

pub use log::SeriesKey;
use log::{AccessLog, Finished, finish_synthetic};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use ambit_core::Identity;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rand::Rng;

use crate::config::Config;
use crate::filters::{self, Filter, HeaderModifier, Mirror};
use crate::jwt::Authenticator;
use crate::metrics::{Metrics, Series};
use crate::ratelimit;
use crate::resilience::{Abort, RetryPolicy, deadlines, parse_grpc_timeout};
use crate::route::{Match, RequestView, Rule, pick_weighted};
use crate::state::{AppProtocol, Backend, Picked, Snapshot, Store, Target, Workload};
use crate::upstream::Upstream;
use body::{Counted, RespBody};
use headers::{
    TRACEPARENT, X_REQUEST_ID, error_response, is_grpc, next_traceparent, strip_hop_by_hop,
};

/// What every request of one worker shares.
pub struct Proxy {
    pub cfg: Arc<Config>,
    pub certs: Arc<ambit_core::cert::CertManager>,
    pub store: Store,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    /// For routes without a retry policy, and services without routes.
    pub default_retry: RetryPolicy,
    /// Verifies JWTs against the RequestAuthentications' rules (keys from the shared JWKS cache).
    pub authenticator: Authenticator,
}

/// One downstream connection (one HBONE CONNECT stream): what it was addressed to and who sent it.
pub struct Conn {
    pub target: Target,
    pub source_principal: Option<Identity>,
    /// The client's address as the source ztunnel reported it (`forwarded: for=`).
    pub source_addr: Option<SocketAddr>,
    pub source: Option<Arc<Workload>>,
    /// The source identity as text (`spiffe://…`), built once per connection for policy checks.
    pub principal: Option<String>,
    /// The metric series this connection's requests were reported in (the source side of the labels is the
    /// connection's, so only the rest is looked up), so a keep-alive connection builds each label set once.
    pub series: std::sync::Mutex<Vec<(SeriesKey, Series)>>,
}

impl Conn {
    /// The client's namespace: its identity's, else its workload's.
    pub fn source_namespace(&self) -> Option<&str> {
        self.source_principal
            .as_ref()
            .map(|i| i.namespace.as_str())
            .or_else(|| self.source.as_deref().map(|w| w.namespace.as_str()))
    }

    pub fn new(
        target: Target,
        source_principal: Option<Identity>,
        source_addr: Option<SocketAddr>,
        source: Option<Arc<Workload>>,
    ) -> Conn {
        Conn {
            principal: source_principal.as_ref().map(ToString::to_string),
            target,
            source_principal,
            source_addr,
            source,
            series: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// Where a request goes after routing.
enum Dest {
    Backend(Arc<Backend>),
    Workload(Picked),
    /// A synthetic answer: status, response flag, message.
    Answer(StatusCode, &'static str, String),
    Redirect(StatusCode, String),
    Direct(StatusCode, String),
    /// A CORS preflight answered here (200 with these headers).
    Preflight(http::HeaderMap),
}

/// Envoy's response flags, as Istio users read them in logs and metrics.
pub mod flags {
    pub const NONE: &str = "-";
    pub const NO_ROUTE: &str = "NR";
    pub const NO_HEALTHY_UPSTREAM: &str = "UH";
    pub const UPSTREAM_CONNECT_FAILURE: &str = "UF";
    pub const UPSTREAM_TERMINATION: &str = "UC";
    pub const UPSTREAM_TIMEOUT: &str = "UT";
    pub const DOWNSTREAM_TERMINATION: &str = "DC";
    pub const UPSTREAM_OVERFLOW: &str = "UO";
    pub const FAULT_INJECTED: &str = "FI";
    pub const DELAY_INJECTED: &str = "DI";
    pub const RATE_LIMITED: &str = "RL";
}

/// Serves one request.
pub async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let start = Instant::now();
    let snap = proxy.store.load();
    let grpc = is_grpc(req.headers());
    let downstream_version = req.version();
    let upgrading =
        downstream_version <= Version::HTTP_11 && req.headers().contains_key(header::UPGRADE);
    let on_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    if !parts.headers.contains_key(X_REQUEST_ID)
        && let Ok(v) = HeaderValue::from_str(&headers::request_id())
    {
        parts.headers.insert(X_REQUEST_ID, v);
    }
    policy::client_identity_headers(&proxy, &conn, &mut parts.headers);
    let tp = next_traceparent(parts.headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()));
    if let Ok(v) = HeaderValue::from_str(&tp) {
        parts.headers.insert(TRACEPARENT, v);
    }
    let mut authority = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();

    // The access log's own fields are only built when it is on.
    let logging = tracing::enabled!(target: "access", tracing::Level::INFO);
    let mut log = AccessLog {
        proxy: proxy.clone(),
        conn: conn.clone(),
        snap: snap.clone(),
        start,
        method: if logging {
            parts.method.to_string()
        } else {
            String::new()
        },
        path: if logging {
            parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".into(), |p| p.to_string())
        } else {
            String::new()
        },
        authority: if logging {
            authority.clone()
        } else {
            String::new()
        },
        request_id: parts
            .headers
            .get(X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        protocol: if grpc { "grpc" } else { "http" },
        route: None,
        service: None,
        destination: None,
        upstream: None,
        code: 0,
        flags: flags::NONE,
        request_bytes: Arc::new(AtomicU64::new(0)),
        _active: None,
        _guard: None,
    };

    // Who the request is for, for metrics and logs of answers given before routing too.
    match &conn.target {
        Target::Service { service, .. } => log.service = Some(service.clone()),
        Target::Workload { workload, .. } => log.destination = Some(workload.clone()),
    }

    // Request authentication (RequestAuthentication targeting this waypoint or the service): an invalid token is
    // refused here; a valid one gives the request its principal and claims; no token is not an error.
    let jwt = match policy::authenticate(&proxy, &snap, &conn, &mut parts, &authority, grpc) {
        Ok(jwt) => jwt,
        Err(refused) => {
            log.code = refused.status().as_u16();
            return Ok(finish_synthetic(*refused, log));
        }
    };

    // Authorization (AuthorizationPolicies targeting this waypoint, its class or the service): CUSTOM asks the
    // provider first, then DENY, then ALLOW, as Istio evaluates them.
    if let Err(denied) = policy::authorize(
        &proxy,
        &snap,
        &conn,
        &mut parts,
        &authority,
        jwt.as_ref(),
        grpc,
    )
    .await
    {
        log.code = denied.status().as_u16();
        return Ok(finish_synthetic(*denied, log));
    }

    // Routing, then the rule's own answers (CORS preflight, direct response), filters and faults.
    let mut response_mods: Vec<&HeaderModifier> = Vec::new();
    let mut mirrors: Vec<&Mirror> = Vec::new();
    let mut rule_chosen: Option<&Arc<Rule>> = None;
    let (dest, service_port) = match &conn.target {
        Target::Workload { workload, ip, port } => {
            log.destination = Some(workload.clone());
            let stats = snap.stats_of(&workload.uid);
            let picked = Picked {
                workload: workload.clone(),
                addr: SocketAddr::new(*ip, *port),
                stats,
            };
            (Dest::Workload(picked), None)
        }
        Target::Service { service, port } => {
            log.service = Some(service.clone());
            let dest = match snap.http_routes(&service.hostname, *port) {
                None => to_backend(&snap, &service.hostname, *port, None),
                Some(table) => {
                    let view = RequestView {
                        method: &parts.method,
                        path: parts.uri.path(),
                        query: parts.uri.query(),
                        headers: &parts.headers,
                        authority: &authority,
                        source_namespace: conn.source_namespace(),
                        source_uid: conn.source.as_deref().map(|w| w.uid.as_str()),
                    };
                    match table.select(&view) {
                        None => Dest::Answer(
                            StatusCode::NOT_FOUND,
                            flags::NO_ROUTE,
                            "route not found".into(),
                        ),
                        Some((rule, m)) => {
                            log.route = Some(rule.name.clone());
                            rule_chosen = Some(rule);
                            match rule_answer(rule, &parts) {
                                Some(d) => d,
                                None => {
                                    let pq = parts
                                        .uri
                                        .path_and_query()
                                        .cloned()
                                        .unwrap_or_else(|| PathAndQuery::from_static("/"));
                                    match apply_filters(
                                        &rule.filters,
                                        &mut parts,
                                        &mut authority,
                                        &pq,
                                        m,
                                        *port,
                                        &mut response_mods,
                                        &mut mirrors,
                                    ) {
                                        Some(redirect) => redirect,
                                        None => choose_backend(
                                            &snap,
                                            rule,
                                            &mut parts,
                                            &mut response_mods,
                                        ),
                                    }
                                }
                            }
                        }
                    }
                }
            };
            (dest, Some((service.clone(), *port)))
        }
    };
    let dest = match dest {
        Dest::Backend(b) => forward::Destination::Backend(b),
        Dest::Workload(p) => forward::Destination::Workload(p, snap.passthrough().clone()),
        Dest::Answer(status, flag, msg) => {
            log.code = status.as_u16();
            log.flags = flag;
            return Ok(finish_synthetic(error_response(status, grpc, &msg), log));
        }
        Dest::Redirect(status, location) => {
            log.code = status.as_u16();
            let mut r = error_response(status, false, "");
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return Ok(finish_synthetic(r, log));
        }
        Dest::Direct(status, body) => {
            log.code = status.as_u16();
            let mut r = Response::new(RespBody::new(RespBody::full(body.into_bytes()), None, None));
            *r.status_mut() = status;
            return Ok(finish_synthetic(r, log));
        }
        Dest::Preflight(headers) => {
            log.code = 200;
            let mut r = Response::new(RespBody::new(RespBody::full(Vec::<u8>::new()), None, None));
            *r.headers_mut() = headers;
            return Ok(finish_synthetic(r, log));
        }
    };

    // Local rate limits of the service, the waypoint and the matched rule.
    let service_key = service_port
        .as_ref()
        .map(|(s, p)| (s.hostname.as_str(), *p));
    let rule_name = rule_chosen.map(|r| r.name.as_str());
    let quota = match policy::rate_limit(
        &proxy,
        &snap,
        &conn,
        &parts,
        &authority,
        service_key,
        rule_name,
        grpc,
    ) {
        Ok(q) => q,
        Err(limited) => {
            log.code = limited.status().as_u16();
            log.flags = flags::RATE_LIMITED;
            return Ok(finish_synthetic(*limited, log));
        }
    };

    // Fault injection (Envoy's order: the delay, then the abort, both before any upstream request).
    let mut fault_flag = flags::NONE;
    if let Some(fault) = rule_chosen.and_then(|r| r.fault.as_ref()) {
        let decision = fault.decide(&mut rand::rng());
        if let Some(d) = decision.delay {
            tokio::time::sleep(d).await;
            fault_flag = flags::DELAY_INJECTED;
        }
        if let Some(abort) = decision.abort {
            log.flags = flags::FAULT_INJECTED;
            let resp = fault_abort(abort, grpc);
            log.code = resp.status().as_u16();
            return Ok(finish_synthetic(resp, log));
        }
    }

    // Mirrors get a copy of the request (and of its body, as the real backend reads it), not while upgrading.
    let has_body = !hyper::body::Body::is_end_stream(&body);
    let feeds: Vec<mirror::Feed> = if upgrading {
        Vec::new()
    } else {
        mirrors
            .into_iter()
            .filter_map(|m| mirror::start(&proxy, &snap, m, &parts, has_body))
            .collect()
    };

    // The backend's protocol: the service port's, else what the client spoke.
    let protocol = service_port
        .as_ref()
        .and_then(|(s, p)| s.port(*p))
        .map_or(AppProtocol::Unknown, |p| p.protocol);
    let h2_up = match protocol {
        AppProtocol::Http1 => false,
        AppProtocol::Unknown => downstream_version == Version::HTTP_2 || grpc,
        other => other.is_h2(),
    };
    let cors_origin = rule_chosen
        .and_then(|r| r.cors.as_ref())
        .and_then(|_| parts.headers.get(header::ORIGIN).cloned());
    let grpc_timeout = if grpc {
        parts
            .headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
    } else {
        None
    };
    let hash = match &dest {
        forward::Destination::Backend(b) => b.hash_key(
            &parts.headers,
            parts.uri.query(),
            conn.source_addr.map(|a| a.ip()),
        ),
        forward::Destination::Workload(..) => None,
    };
    strip_hop_by_hop(&mut parts.headers, upgrading);
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if h2_up && !upgrading {
        parts.version = Version::HTTP_2;
        parts.headers.remove(header::HOST);
        match Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(pq)
            .build()
        {
            Ok(u) => parts.uri = u,
            Err(_) => {
                log.code = 400;
                return Ok(finish_synthetic(
                    error_response(StatusCode::BAD_REQUEST, grpc, "bad authority"),
                    log,
                ));
            }
        }
    } else {
        parts.version = Version::HTTP_11;
        parts.uri = Uri::from(pq);
        if let Ok(v) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, v);
        }
    }

    let body = Counted::boxed(mirror::Tee::new(body, feeds), log.request_bytes.clone());
    let timeouts = rule_chosen.map(|r| r.timeouts).unwrap_or_default();
    let plan = forward::Plan {
        retry: rule_chosen
            .and_then(|r| r.retry.as_ref())
            .unwrap_or(&proxy.default_retry),
        deadlines: deadlines(timeouts.request, timeouts.backend_request, grpc_timeout),
        h2: h2_up,
        upgrade: upgrading,
        hash,
    };
    let sent = match forward::forward(&proxy, &dest, plan, parts, body).await {
        Ok(sent) => sent,
        Err(failed) => {
            if let Some(p) = failed.picked {
                log.destination = Some(p.workload.clone());
                log.upstream = Some(p.addr);
            }
            log.code = failed.status.as_u16();
            log.flags = failed.flags;
            return Ok(finish_synthetic(
                error_response(failed.status, grpc, failed.message),
                log,
            ));
        }
    };
    log.destination = Some(sent.picked.workload.clone());
    log.upstream = Some(sent.picked.addr);
    log._active = Some(sent.picked.stats.start());
    log._guard = sent.guard;
    log.flags = if sent.flags != flags::NONE {
        sent.flags
    } else {
        fault_flag
    };
    let mut resp = sent.response;
    let release = sent.release;
    if let Some(client_side) = on_upgrade
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let server_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(a), Ok(b)) = (client_side.await, server_side.await) {
                let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            }
        });
    }
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(
        &mut rparts.headers,
        rparts.status == StatusCode::SWITCHING_PROTOCOLS,
    );
    for m in response_mods {
        m.apply(&mut rparts.headers);
    }
    if let (Some(cors), Some(origin)) = (rule_chosen.and_then(|r| r.cors.as_ref()), cors_origin) {
        let mut req_headers = http::HeaderMap::new();
        req_headers.insert(header::ORIGIN, origin);
        cors.response_headers(&req_headers, &mut rparts.headers);
    }
    if let Some(q) = &quota {
        ratelimit::headers(q, false, &mut rparts.headers);
    }
    rparts.version = downstream_version;
    log.code = rparts.status.as_u16();
    let grpc_status = rparts
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = RespBody::new(rbody.map_err(Into::into).boxed_unsync(), release, None);
    body.set_finish(Box::new(Finished { log, grpc_status }));
    Ok(Response::from_parts(rparts, body))
}

/// A rule that answers by itself: a CORS preflight it allows, or its direct response.
fn rule_answer(rule: &Rule, parts: &http::request::Parts) -> Option<Dest> {
    if let Some(cors) = &rule.cors
        && let Some(headers) = cors.preflight(&parts.method, &parts.headers)
    {
        return Some(Dest::Preflight(headers));
    }
    let d = rule.direct_response.as_ref()?;
    let status = StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK);
    Some(Dest::Direct(status, d.body.clone()))
}

/// The answer of an injected abort: the HTTP status, or a trailers-only gRPC status for gRPC requests when the
/// fault names one.
fn fault_abort(abort: Abort, grpc: bool) -> Response<RespBody> {
    const MESSAGE: &str = "fault filter abort";
    match (grpc, abort.grpc_status) {
        (true, Some(code)) => headers::grpc_response(code, MESSAGE),
        _ => error_response(
            StatusCode::from_u16(abort.http_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            grpc,
            MESSAGE,
        ),
    }
}

fn to_backend(snap: &Snapshot, hostname: &str, port: u16, subset: Option<&str>) -> Dest {
    match snap.backend(hostname, port, subset) {
        Some(b) => Dest::Backend(b),
        None if subset.is_some() && snap.service(hostname).is_some() => Dest::Answer(
            StatusCode::SERVICE_UNAVAILABLE,
            flags::NO_HEALTHY_UPSTREAM,
            "no healthy upstream".into(),
        ),
        None => Dest::Answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            flags::NONE,
            format!("backend {hostname} not found"),
        ),
    }
}

/// Runs a rule's (or backend's) filters on the request; a redirect ends the request here.
#[allow(clippy::too_many_arguments)]
fn apply_filters<'a>(
    fs: &'a [Filter],
    parts: &mut http::request::Parts,
    authority: &mut String,
    pq: &PathAndQuery,
    m: &Match,
    port: u16,
    response_mods: &mut Vec<&'a HeaderModifier>,
    mirrors: &mut Vec<&'a Mirror>,
) -> Option<Dest> {
    for f in fs {
        match f {
            Filter::RequestHeaders(h) => h.apply(&mut parts.headers),
            Filter::ResponseHeaders(h) => response_mods.push(h),
            Filter::Mirror(mi) => mirrors.push(mi),
            Filter::Redirect(r) => {
                let location = filters::redirect_location(
                    r,
                    "http",
                    filters::host_without_port(authority),
                    port,
                    pq,
                    &m.path,
                );
                return Some(Dest::Redirect(r.status, location));
            }
            Filter::Rewrite(r) => {
                if let Some(h) = &r.hostname {
                    *authority = h.clone();
                }
                if let Some(p) = &r.path
                    && let Ok(new) = PathAndQuery::try_from(filters::modify_path(pq, &m.path, p))
                {
                    parts.uri = Uri::from(new);
                }
            }
        }
    }
    None
}

/// Weighted choice among the rule's backends, then the backend's own header filters.
fn choose_backend<'a>(
    snap: &Snapshot,
    rule: &'a Rule,
    parts: &mut http::request::Parts,
    response_mods: &mut Vec<&'a HeaderModifier>,
) -> Dest {
    let Some(i) = pick_weighted(
        &rule.backends,
        |b| b.weight,
        |t| rand::rng().random_range(0..t),
    ) else {
        return Dest::Answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            flags::NONE,
            "no backend for this route".into(),
        );
    };
    let b = &rule.backends[i];
    let target = match &b.target {
        Ok(t) => t,
        Err(why) => {
            return Dest::Answer(StatusCode::INTERNAL_SERVER_ERROR, flags::NONE, why.clone());
        }
    };
    for f in &b.filters {
        match f {
            Filter::RequestHeaders(h) => h.apply(&mut parts.headers),
            Filter::ResponseHeaders(h) => response_mods.push(h),
            _ => {}
        }
    }
    to_backend(
        snap,
        &target.hostname,
        target.port,
        target.subset.as_deref(),
    )
}
