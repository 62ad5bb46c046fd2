//! `ambit.waypoint.Route` (wire) → [`Rule`] (domain). Every error names the field, and becomes the NACK reason
//! of that one resource; the rest of the update applies. `hostnames` are validated as the Gateway API CRD does
//! ([`Hostname::parse`]): an upper-case name, an IP address or a misplaced wildcard is a NACK.

use std::time::Duration;

use ambit_proto::waypoint as pb;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;

use super::{
    BackendRef, DirectResponse, GrpcMatch, HeaderMatch, Hostname, Match, Origin, Parent, PathMatch,
    QueryMatch, RouteKind, Rule, ServiceRef, Timeouts, ValueMatch,
};
use crate::filters::{Filter, HeaderModifier, Mirror, PathModifier, Redirect, Rewrite};
use crate::resilience::{Cors, Fault, RetryPolicy};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct ConvertError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ConvertError {
    ConvertError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Regular expressions are compiled with a size limit, so a hostile pattern cannot exhaust memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn regex(field: &str, s: &str) -> Result<Regex, ConvertError> {
    regex::RegexBuilder::new(s)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| err(field, format!("invalid regular expression {s:?}: {e}")))
}

fn port(field: &str, p: u32) -> Result<Option<u16>, ConvertError> {
    match p {
        0 => Ok(None),
        p => u16::try_from(p)
            .map(Some)
            .map_err(|_| err(field, format!("port {p} out of range"))),
    }
}

fn value_match(field: &str, t: i32, v: &str) -> Result<ValueMatch, ConvertError> {
    match pb::MatchType::try_from(t) {
        Ok(pb::MatchType::Exact) => Ok(ValueMatch::Exact(v.to_owned())),
        Ok(pb::MatchType::RegularExpression) => Ok(ValueMatch::Regex(regex(field, v)?)),
        // PATH_PREFIX on a header or query parameter: a string prefix (VirtualService `prefix`).
        Ok(pb::MatchType::PathPrefix) => Ok(ValueMatch::Prefix(v.to_owned())),
        Err(_) => Err(err(field, format!("unknown match type {t}"))),
    }
}

fn header_matches(
    f: &str,
    what: &str,
    hs: &[pb::HeaderMatch],
) -> Result<Vec<HeaderMatch>, ConvertError> {
    hs.iter()
        .enumerate()
        .map(|(i, h)| {
            let field = format!("{f}.{what}[{i}]");
            Ok(HeaderMatch {
                name: header_name(&field, &h.name)?,
                value: value_match(&field, h.r#type, &h.value)?,
            })
        })
        .collect()
}

fn path_match(field: &str, p: Option<&pb::PathMatch>) -> Result<PathMatch, ConvertError> {
    let Some(p) = p else {
        return Ok(PathMatch::Prefix(String::new()));
    };
    let t = pb::MatchType::try_from(p.r#type).map_err(|_| err(field, "unknown path match type"))?;
    if t != pb::MatchType::RegularExpression && !p.value.starts_with('/') {
        return Err(err(
            field,
            format!("path {:?} must start with '/'", p.value),
        ));
    }
    Ok(match t {
        pb::MatchType::Exact => PathMatch::Exact(p.value.clone()),
        pb::MatchType::PathPrefix => PathMatch::Prefix(p.value.trim_end_matches('/').to_owned()),
        pb::MatchType::RegularExpression => PathMatch::Regex(regex(field, &p.value)?),
    })
}

fn header_name(field: &str, n: &str) -> Result<HeaderName, ConvertError> {
    HeaderName::from_bytes(n.as_bytes())
        .map_err(|_| err(field, format!("invalid header name {n:?}")))
}

pub fn convert_match(kind: RouteKind, f: &str, m: &pb::RouteMatch) -> Result<Match, ConvertError> {
    let headers = header_matches(f, "headers", &m.headers)?;
    let query = m
        .query_params
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let field = format!("{f}.queryParams[{i}]");
            if q.name.is_empty() {
                return Err(err(field, "empty name"));
            }
            Ok(QueryMatch {
                name: q.name.clone(),
                value: value_match(&field, q.r#type, &q.value)?,
            })
        })
        .collect::<Result<_, ConvertError>>()?;
    let method = match m.method.as_str() {
        "" => None,
        s => Some(
            Method::from_bytes(s.as_bytes())
                .map_err(|_| err(format!("{f}.method"), format!("invalid method {s:?}")))?,
        ),
    };
    let grpc = if kind == RouteKind::Grpc {
        let part = |name: &str, v: &str| -> Result<Option<ValueMatch>, ConvertError> {
            if v.is_empty() {
                return Ok(None);
            }
            value_match(&format!("{f}.method.{name}"), m.grpc_type, v).map(Some)
        };
        Some(GrpcMatch {
            service: part("service", &m.grpc_service)?,
            method: part("method", &m.grpc_method)?,
        })
    } else {
        None
    };
    let mut path = path_match(&format!("{f}.path"), m.path.as_ref())?;
    if m.ignore_path_case {
        path = match path {
            PathMatch::Exact(p) => PathMatch::Exact(p.to_ascii_lowercase()),
            PathMatch::Prefix(p) => PathMatch::Prefix(p.to_ascii_lowercase()),
            PathMatch::Regex(r) => {
                PathMatch::Regex(regex(&format!("{f}.path"), &format!("(?i){}", r.as_str()))?)
            }
        };
    }
    Ok(Match {
        path,
        headers,
        query,
        method,
        grpc,
        ignore_path_case: m.ignore_path_case,
        without_headers: header_matches(f, "withoutHeaders", &m.without_headers)?,
        source_namespace: (!m.source_namespace.is_empty()).then(|| m.source_namespace.clone()),
        source_workloads: m
            .source_workloads
            .as_ref()
            .map(|w| w.uids.iter().cloned().collect()),
    })
}

fn header_modifier(f: &str, m: &pb::HeaderModifier) -> Result<HeaderModifier, ConvertError> {
    let pairs = |what: &str, hs: &[pb::Header]| {
        hs.iter()
            .enumerate()
            .map(|(i, h)| {
                let field = format!("{f}.{what}[{i}]");
                let v = HeaderValue::from_str(&h.value)
                    .map_err(|_| err(&field, format!("invalid header value for {:?}", h.name)))?;
                Ok((header_name(&field, &h.name)?, v))
            })
            .collect::<Result<Vec<_>, ConvertError>>()
    };
    Ok(HeaderModifier {
        set: pairs("set", &m.set)?,
        add: pairs("add", &m.add)?,
        remove: m
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| header_name(&format!("{f}.remove[{i}]"), n))
            .collect::<Result<_, _>>()?,
    })
}

fn path_modifier(
    f: &str,
    p: Option<&pb::PathModifier>,
) -> Result<Option<PathModifier>, ConvertError> {
    let Some(p) = p else { return Ok(None) };
    let kind =
        pb::path_modifier::Kind::try_from(p.kind).map_err(|_| err(f, "unknown path modifier"))?;
    if !p.value.is_empty() && !p.value.starts_with('/') {
        return Err(err(f, format!("path {:?} must start with '/'", p.value)));
    }
    Ok(Some(match kind {
        pb::path_modifier::Kind::ReplaceFullPath => PathModifier::ReplaceFullPath(p.value.clone()),
        pb::path_modifier::Kind::ReplacePrefixMatch => {
            PathModifier::ReplacePrefixMatch(p.value.clone())
        }
    }))
}

fn backend_target(f: &str, b: &pb::BackendRef) -> Result<Result<ServiceRef, String>, ConvertError> {
    if !b.invalid.is_empty() {
        return Ok(Err(b.invalid.clone()));
    }
    if b.hostname.is_empty() {
        return Ok(Err("backend has no hostname".into()));
    }
    let port =
        port(&format!("{f}.port"), b.port)?.ok_or_else(|| err(format!("{f}.port"), "required"))?;
    Ok(Ok(ServiceRef {
        hostname: b.hostname.clone(),
        port,
        subset: (!b.subset.is_empty()).then(|| b.subset.clone()),
    }))
}

fn filter(f: &str, x: &pb::Filter) -> Result<Filter, ConvertError> {
    let set = [
        x.request_header_modifier.is_some(),
        x.response_header_modifier.is_some(),
        x.request_redirect.is_some(),
        x.url_rewrite.is_some(),
        x.request_mirror.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        return Err(err(f, "a filter sets exactly one of its fields"));
    }
    if let Some(m) = &x.request_header_modifier {
        return Ok(Filter::RequestHeaders(header_modifier(f, m)?));
    }
    if let Some(m) = &x.response_header_modifier {
        return Ok(Filter::ResponseHeaders(header_modifier(f, m)?));
    }
    if let Some(r) = &x.request_redirect {
        let status = match r.status_code {
            0 => StatusCode::FOUND,
            c @ (301 | 302 | 303 | 307 | 308) => {
                StatusCode::from_u16(c as u16).unwrap_or(StatusCode::FOUND)
            }
            c => {
                return Err(err(
                    format!("{f}.statusCode"),
                    format!("{c} is not a redirect status"),
                ));
            }
        };
        let scheme = match r.scheme.as_str() {
            "" => None,
            s @ ("http" | "https") => Some(s.to_owned()),
            s => {
                return Err(err(
                    format!("{f}.scheme"),
                    format!("unsupported scheme {s:?}"),
                ));
            }
        };
        return Ok(Filter::Redirect(Redirect {
            scheme,
            hostname: (!r.hostname.is_empty()).then(|| r.hostname.clone()),
            path: path_modifier(&format!("{f}.path"), r.path.as_ref())?,
            port: port(&format!("{f}.port"), r.port)?,
            status,
        }));
    }
    if let Some(r) = &x.url_rewrite {
        return Ok(Filter::Rewrite(Rewrite {
            hostname: (!r.hostname.is_empty()).then(|| r.hostname.clone()),
            path: path_modifier(&format!("{f}.path"), r.path.as_ref())?,
        }));
    }
    let Some(m) = &x.request_mirror else {
        return Err(err(f, "empty filter"));
    };
    let percent = m.percent.unwrap_or(100.0);
    if !(0.0..=100.0).contains(&percent) {
        return Err(err(
            format!("{f}.percent"),
            format!("{percent} is not in 0..100"),
        ));
    }
    let target = match &m.backend {
        Some(b) => backend_target(&format!("{f}.backend"), b)?,
        None => return Err(err(format!("{f}.backend"), "required")),
    };
    Ok(Filter::Mirror(Mirror { target, percent }))
}

fn filters(f: &str, fs: &[pb::Filter]) -> Result<Vec<Filter>, ConvertError> {
    let out: Vec<Filter> = fs
        .iter()
        .enumerate()
        .map(|(i, x)| filter(&format!("{f}[{i}]"), x))
        .collect::<Result<_, _>>()?;
    let redirects = out
        .iter()
        .filter(|x| matches!(x, Filter::Redirect(_)))
        .count();
    let rewrites = out
        .iter()
        .filter(|x| matches!(x, Filter::Rewrite(_)))
        .count();
    if redirects > 1 || rewrites > 1 || (redirects > 0 && rewrites > 0) {
        return Err(err(f, "at most one of RequestRedirect and URLRewrite"));
    }
    Ok(out)
}

/// Converts one resource. `name` is the xDS resource name (used when the resource's own `name` is empty).
pub fn rule_from_proto(name: &str, r: &pb::Route) -> Result<Rule, ConvertError> {
    let kind = match pb::RouteKind::try_from(r.kind) {
        Ok(pb::RouteKind::Http) => RouteKind::Http,
        Ok(pb::RouteKind::Grpc) => RouteKind::Grpc,
        Ok(pb::RouteKind::Tcp) => RouteKind::Tcp,
        Err(_) => return Err(err("kind", format!("unknown route kind {}", r.kind))),
    };
    if r.parents.is_empty() {
        return Err(err("parents", "a rule needs at least one parent"));
    }
    let parents = r
        .parents
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let f = format!("parents[{i}]");
            if p.name.is_empty() {
                return Err(err(&f, "empty name"));
            }
            let port = port(&format!("{f}.port"), p.port)?;
            match pb::parent_ref::Kind::try_from(p.kind) {
                Ok(pb::parent_ref::Kind::Service) => Ok(Parent::Service {
                    hostname: p.name.clone(),
                    port,
                }),
                Ok(pb::parent_ref::Kind::Gateway) => Ok(Parent::Gateway {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    port,
                }),
                Err(_) => Err(err(&f, "unknown parent kind")),
            }
        })
        .collect::<Result<_, _>>()?;
    if kind == RouteKind::Tcp && !r.hostnames.is_empty() {
        return Err(err("hostnames", "a TCP rule has no hostnames"));
    }
    let hostnames = r
        .hostnames
        .iter()
        .enumerate()
        .map(|(i, h)| Hostname::parse(h).map_err(|e| err(format!("hostnames[{i}]"), e)))
        .collect::<Result<_, _>>()?;
    let mut matches: Vec<Match> = r
        .matches
        .iter()
        .enumerate()
        .map(|(i, m)| convert_match(kind, &format!("matches[{i}]"), m))
        .collect::<Result<_, _>>()?;
    if matches.is_empty() {
        let mut all = Match::everything();
        if kind == RouteKind::Grpc {
            all.grpc = Some(GrpcMatch {
                service: None,
                method: None,
            });
        }
        matches.push(all);
    }
    if kind == RouteKind::Tcp && (!r.matches.is_empty() || !r.filters.is_empty()) {
        return Err(err("matches", "a TCP rule has no matches or filters"));
    }
    let backends = r
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let f = format!("backends[{i}]");
            Ok(BackendRef {
                target: backend_target(&f, b)?,
                weight: b.weight,
                filters: filters(&format!("{f}.filters"), &b.filters)?,
            })
        })
        .collect::<Result<_, ConvertError>>()?;
    let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
    let timeouts = r
        .timeouts
        .as_ref()
        .map_or_else(Timeouts::default, |t| Timeouts {
            request: ms(t.request_ms),
            backend_request: ms(t.backend_request_ms),
        });
    if let (Some(req), Some(be)) = (timeouts.request, timeouts.backend_request)
        && be > req
    {
        return Err(err(
            "timeouts.backendRequest",
            "must not be longer than timeouts.request",
        ));
    }
    Ok(Rule {
        name: if r.name.is_empty() {
            name.to_owned()
        } else {
            r.name.clone()
        },
        kind,
        origin: match pb::RouteOrigin::try_from(r.origin) {
            Ok(pb::RouteOrigin::VirtualService) => Origin::VirtualService,
            Ok(pb::RouteOrigin::GatewayApi) => Origin::GatewayApi,
            Err(_) => return Err(err("origin", format!("unknown origin {}", r.origin))),
        },
        namespace: r.namespace.clone(),
        route_name: r.route_name.clone(),
        rule_index: r.rule_index,
        rule_name: r.rule_name.clone(),
        created: r.creation_timestamp,
        parents,
        hostnames,
        matches,
        filters: filters("filters", &r.filters)?,
        backends,
        timeouts,
        retry: r
            .retry
            .as_ref()
            .map(RetryPolicy::from_proto)
            .transpose()
            .map_err(|e| err("retry", e))?,
        fault: r
            .fault
            .as_ref()
            .map(Fault::from_proto)
            .transpose()
            .map_err(|e| err("fault", e))?
            .filter(|f| !f.is_empty()),
        cors: r
            .cors
            .as_ref()
            .map(Cors::from_proto)
            .transpose()
            .map_err(|e| err("cors", e))?,
        direct_response: r
            .direct_response
            .as_ref()
            .map(|d| {
                if (200..=599).contains(&d.status) {
                    Ok(DirectResponse {
                        status: d.status as u16,
                        body: d.body.clone(),
                    })
                } else {
                    Err(err(
                        "directResponse.status",
                        format!("{} is not an HTTP status", d.status),
                    ))
                }
            })
            .transpose()?,
    })
}
