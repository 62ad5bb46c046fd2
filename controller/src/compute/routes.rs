//! `ambit.waypoint.Route`: one resource per rule of every HTTPRoute, GRPCRoute and TCPRoute attached to a
//! waypoint, named `<ns>/<kind>/<name>/<rule index>`, with Gateway API defaults filled in (path `PathPrefix /`,
//! match type `Exact`, weight 1) and references resolved to service hostnames. Also each route's `status.parents`.
//!
//! Parents: `Service` (group `""`) → a SERVICE parent with the service hostname (dropped, with `NoMatchingParent`,
//! when the Service does not exist); a waypoint `Gateway` → a GATEWAY parent (its listener's `allowedRoutes` must
//! admit the route's namespace, else `NotAllowedByListeners`); `ServiceEntry` is not indexed yet, so such parents
//! are dropped with `NoMatchingParent`. Gateways of other classes are somebody else's and are ignored silently.
//!
//! Backends (of rules, of backend filters and of `RequestMirror`): a `Service` with a port → hostname and port;
//! anything else is kept with `invalid` set (the waypoint answers 500 for requests that pick it) and
//! `ResolvedRefs=False` in status. A Service in another namespace needs a ReferenceGrant there that admits the
//! route's kind and namespace ([`super::reference_grant`]); without one it is invalid with `RefNotPermitted`.
//!
//! Hostnames are sent as written (for GRPCRoute too; TCPRoute has none). The waypoint applies them only to rules
//! that reach a service through the waypoint Gateway parent; for Service parents GAMMA (GEP-1426) says meshes
//! SHOULD NOT infer anything from them, so it ignores them there. One Route may carry both kinds of parent, and
//! only the waypoint knows which one brought a rule to a port, so the decision is the waypoint's. An invalid
//! hostname (what the CRD refuses: upper case, an IP address, a misplaced `*`) makes every parent
//! `Accepted=False UnsupportedValue` and no rule is sent (`hostnames`).
//!
//! Policies: `timeouts` (invalid durations, which the CRD refuses, count as unset), HTTPRoute `retry`
//! (`retry`) and fault injection through Ambit's `FaultInjection` extension filter ([`super::fault_injection`]:
//! an unresolvable one makes the rule answer 500, as Gateway API asks of custom filters). Other filter types the
//! waypoint does not implement (CORS, other ExtensionRefs) are skipped.
//!
//! Invalid values in a rule (a retry code out of range, two FaultInjection filters, ...) drop that rule, Gateway
//! API's "Drop Rule" approach: the other rules apply, each parent's status gets `PartiallyInvalid=True`
//! (reason `UnsupportedValue`, message `Dropped Rule(s): <field>: <problem>; ...`), and when no rule is left the
//! parent is `Accepted=False UnsupportedValue` (and does not count toward a listener's `attachedRoutes`). With
//! Kubernetes the CRD's validation would refuse most of these; the manifest source has no such validation.

use std::collections::BTreeMap;

#[cfg(test)]
mod grant_tests;
mod hostnames;
mod retry;
mod rule;
#[cfg(test)]
mod tests;

use ambit_proto::waypoint::{
    BackendRef, Filter, Header, HeaderMatch, HeaderModifier, MatchType, ParentRef, PathMatch,
    PathModifier, RequestMirror, RequestRedirect, Route, RouteKind, RouteMatch, Timeouts,
    UrlRewrite, parent_ref, path_modifier,
};
use serde_json::{Value, json};

use super::fault_injection;
use super::reference_grant::{self, Referrer, Target};
use super::status::condition;
use super::waypoint::{GatewayCheck, HBONE_PORT, Waypoint, check_gateway};
use super::{ComputeConfig, service_hostname};
use crate::index::{Index, Name};
use crate::sources::routes::{
    BackendObjectReference, HeaderFilter, HttpBackendRef, HttpRouteFilter, HttpRouteMatch,
    HttpRouteRetry, HttpRouteTimeouts, ParentReference, PathModifierSpec, ValueMatch,
    parse_duration,
};

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
pub const CONTROLLER_NAME: &str = "istio.io/mesh-controller";

/// The computed routes and what goes into status.
#[derive(Clone, Debug, Default)]
pub struct RouteOutput {
    pub routes: BTreeMap<String, Route>,
    /// `<kind>/<ns>/<name>` → the route's `status`.
    pub status: BTreeMap<String, Value>,
    /// Waypoint Gateway → how many routes attach to it directly (the listener's `attachedRoutes`).
    pub attached: BTreeMap<Name, u32>,
}

/// One rule, kind-independent.
struct RuleIn<'a> {
    name: Option<&'a str>,
    matches: Vec<RouteMatch>,
    filters: &'a [HttpRouteFilter],
    backends: &'a [HttpBackendRef],
    timeouts: Option<&'a HttpRouteTimeouts>,
    retry: Option<&'a HttpRouteRetry>,
}

/// One route object, kind-independent.
struct RouteIn<'a> {
    kind: RouteKind,
    ns: &'a str,
    name: &'a str,
    created: i64,
    parents: &'a [ParentReference],
    hostnames: &'a [String],
    rules: Vec<RuleIn<'a>>,
}

impl RouteIn<'_> {
    fn kind_name(&self) -> &'static str {
        match self.kind {
            RouteKind::Http => "httproute",
            RouteKind::Grpc => "grpcroute",
            RouteKind::Tcp => "tcproute",
        }
    }

    /// The Gateway API kind, as a ReferenceGrant's `from` names it.
    fn api_kind(&self) -> &'static str {
        match self.kind {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tcp => "TCPRoute",
        }
    }
}

fn created(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second())
}

fn match_type(kind: Option<&str>, default: MatchType) -> i32 {
    (match kind {
        Some("Exact") => MatchType::Exact,
        Some("PathPrefix") => MatchType::PathPrefix,
        Some("RegularExpression") => MatchType::RegularExpression,
        _ => default,
    }) as i32
}

fn value_matches(v: &[ValueMatch]) -> Vec<HeaderMatch> {
    v.iter()
        .map(|m| HeaderMatch {
            r#type: match_type(m.kind.as_deref(), MatchType::Exact),
            name: m.name.clone(),
            value: m.value.clone(),
        })
        .collect()
}

/// An HTTPRoute match with Gateway API's defaults (path `PathPrefix /`, value match `Exact`).
pub fn http_route_match(m: &HttpRouteMatch) -> RouteMatch {
    RouteMatch {
        path: Some(PathMatch {
            r#type: match_type(
                m.path.as_ref().and_then(|p| p.kind.as_deref()),
                MatchType::PathPrefix,
            ),
            value: m
                .path
                .as_ref()
                .and_then(|p| p.value.clone())
                .unwrap_or_else(|| "/".to_owned()),
        }),
        headers: value_matches(&m.headers),
        query_params: value_matches(&m.query_params),
        method: m.method.clone().unwrap_or_default(),
        ..Default::default()
    }
}

fn inputs(index: &Index) -> Vec<RouteIn<'_>> {
    let mut out = Vec::new();
    for ((ns, name), r) in &index.http_routes {
        let rules = r
            .spec
            .rules
            .iter()
            .map(|rule| RuleIn {
                name: rule.name.as_deref(),
                matches: rule.matches.iter().map(http_route_match).collect(),
                filters: &rule.filters,
                backends: &rule.backend_refs,
                timeouts: rule.timeouts.as_ref(),
                retry: rule.retry.as_ref(),
            })
            .collect();
        out.push(RouteIn {
            kind: RouteKind::Http,
            ns,
            name,
            created: created(&r.metadata),
            parents: &r.spec.parent_refs,
            hostnames: &r.spec.hostnames,
            rules,
        });
    }
    for ((ns, name), r) in &index.grpc_routes {
        let rules = r
            .spec
            .rules
            .iter()
            .map(|rule| RuleIn {
                name: rule.name.as_deref(),
                matches: rule
                    .matches
                    .iter()
                    .map(|m| RouteMatch {
                        headers: value_matches(&m.headers),
                        grpc_service: m
                            .method
                            .as_ref()
                            .and_then(|g| g.service.clone())
                            .unwrap_or_default(),
                        grpc_method: m
                            .method
                            .as_ref()
                            .and_then(|g| g.method.clone())
                            .unwrap_or_default(),
                        grpc_type: match_type(
                            m.method.as_ref().and_then(|g| g.kind.as_deref()),
                            MatchType::Exact,
                        ),
                        ..Default::default()
                    })
                    .collect(),
                filters: &rule.filters,
                backends: &rule.backend_refs,
                timeouts: None,
                retry: None,
            })
            .collect();
        out.push(RouteIn {
            kind: RouteKind::Grpc,
            ns,
            name,
            created: created(&r.metadata),
            parents: &r.spec.parent_refs,
            hostnames: &r.spec.hostnames,
            rules,
        });
    }
    for ((ns, name), r) in &index.tcp_routes {
        let rules = r
            .spec
            .rules
            .iter()
            .map(|rule| RuleIn {
                name: rule.name.as_deref(),
                matches: Vec::new(),
                filters: &[],
                backends: &rule.backend_refs,
                timeouts: None,
                retry: None,
            })
            .collect();
        out.push(RouteIn {
            kind: RouteKind::Tcp,
            ns,
            name,
            created: created(&r.metadata),
            parents: &r.spec.parent_refs,
            hostnames: &[],
            rules,
        });
    }
    out
}

/// What became of one parentRef.
enum ParentOutcome {
    Attached(ParentRef),
    /// `(reason, message)` of `Accepted=False`.
    Refused(&'static str, String),
    /// Not ours (a Gateway of another class, an unknown kind): no status either.
    Ignored,
}

fn resolve_parent(
    route: &RouteIn<'_>,
    p: &ParentReference,
    index: &Index,
    waypoints: &BTreeMap<Name, Waypoint>,
    cfg: &ComputeConfig,
) -> ParentOutcome {
    let group = p.group.as_deref().unwrap_or(GATEWAY_GROUP);
    let kind = p.kind.as_deref().unwrap_or("Gateway");
    let ns = p.namespace.as_deref().unwrap_or(route.ns);
    let key = (ns.to_owned(), p.name.clone());
    match (group, kind) {
        ("" | "core", "Service") => {
            if !index.services.contains_key(&key) {
                return ParentOutcome::Refused(
                    "NoMatchingParent",
                    format!("service {ns}/{} not found", p.name),
                );
            }
            ParentOutcome::Attached(ParentRef {
                kind: parent_ref::Kind::Service as i32,
                name: service_hostname(&p.name, ns, cfg),
                namespace: ns.to_owned(),
                port: p.port.unwrap_or(0),
            })
        }
        ("networking.istio.io", "ServiceEntry") => ParentOutcome::Refused(
            "NoMatchingParent",
            format!(
                "ServiceEntry parents are not supported (serviceentry {ns}/{})",
                p.name
            ),
        ),
        (GATEWAY_GROUP, "Gateway") => {
            let Some(gw) = index.gateways.get(&key) else {
                return ParentOutcome::Refused(
                    "NoMatchingParent",
                    format!("gateway {ns}/{} not found", p.name),
                );
            };
            match check_gateway(gw) {
                GatewayCheck::NotWaypoint => return ParentOutcome::Ignored,
                GatewayCheck::InvalidListeners => {
                    return ParentOutcome::Refused(
                        "NoMatchingParent",
                        format!("gateway {ns}/{} is not a valid waypoint", p.name),
                    );
                }
                GatewayCheck::Valid => {}
            }
            let listener = gw.spec.listeners.first().map_or("", |l| l.name.as_str());
            if p.section_name.as_deref().is_some_and(|s| s != listener)
                || p.port.is_some_and(|port| port != HBONE_PORT)
            {
                return ParentOutcome::Refused(
                    "NoMatchingParent",
                    "no listener matches the sectionName/port".to_owned(),
                );
            }
            if route.kind == RouteKind::Tcp {
                return ParentOutcome::Refused(
                    "NotAllowedByListeners",
                    format!("listener {listener} supports HTTPRoute and GRPCRoute only"),
                );
            }
            let admitted = waypoints.get(&key).is_some_and(|w| {
                w.allowed
                    .admits(ns, route.ns, &index.namespace_labels(route.ns))
            });
            if !admitted {
                return ParentOutcome::Refused(
                    "NotAllowedByListeners",
                    format!(
                        "listener {listener} does not allow routes from namespace {}",
                        route.ns
                    ),
                );
            }
            ParentOutcome::Attached(ParentRef {
                kind: parent_ref::Kind::Gateway as i32,
                name: p.name.clone(),
                namespace: ns.to_owned(),
                port: 0,
            })
        }
        _ => ParentOutcome::Ignored,
    }
}

/// Resolves backends and filters of one route, remembering the first unresolvable reference.
struct Resolver<'a> {
    index: &'a Index,
    cfg: &'a ComputeConfig,
    ns: &'a str,
    /// The route's Gateway API kind (`HTTPRoute`), for ReferenceGrants.
    route_kind: &'static str,
    /// `(reason, message)` for `ResolvedRefs=False`.
    problem: Option<(&'static str, String)>,
}

impl Resolver<'_> {
    fn backend(
        &mut self,
        b: &BackendObjectReference,
        weight: u32,
        filters: Vec<Filter>,
    ) -> BackendRef {
        let group = b.group.as_deref().unwrap_or("");
        let kind = b.kind.as_deref().unwrap_or("Service");
        let ns = b.namespace.as_deref().unwrap_or(self.ns);
        let mut out = BackendRef {
            namespace: ns.to_owned(),
            port: b.port.unwrap_or(0),
            weight,
            filters,
            ..Default::default()
        };
        let problem = match (group, kind) {
            ("" | "core", "Service") => {
                let from = Referrer {
                    group: GATEWAY_GROUP,
                    kind: self.route_kind,
                    namespace: self.ns,
                };
                let to = Target {
                    group,
                    kind,
                    namespace: ns,
                    name: &b.name,
                };
                if !reference_grant::permitted(self.index, from, to) {
                    Some((
                        "RefNotPermitted",
                        format!(
                            "backend {ns}/{} is in another namespace and no ReferenceGrant there allows {} from \
                             namespace {} to refer to it",
                            b.name, self.route_kind, self.ns
                        ),
                    ))
                } else if !self
                    .index
                    .services
                    .contains_key(&(ns.to_owned(), b.name.clone()))
                {
                    Some((
                        "BackendNotFound",
                        format!("service {ns}/{} not found", b.name),
                    ))
                } else if b.port.is_none() {
                    Some(("BackendNotFound", "port is required".to_owned()))
                } else {
                    out.hostname = service_hostname(&b.name, ns, self.cfg);
                    None
                }
            }
            _ => Some(("InvalidKind", format!("unsupported backend kind {kind}"))),
        };
        if let Some((reason, message)) = problem {
            out.invalid = message.clone();
            self.problem.get_or_insert((reason, message));
        }
        out
    }

    fn filters(&mut self, fs: &[HttpRouteFilter]) -> Vec<Filter> {
        fs.iter().filter_map(|f| self.filter(f)).collect()
    }

    /// One filter; `None` for types the waypoint does not implement (CORS, ExtensionRef) or an empty one.
    fn filter(&mut self, f: &HttpRouteFilter) -> Option<Filter> {
        let mut out = Filter::default();
        match f.kind.as_str() {
            "RequestHeaderModifier" => {
                out.request_header_modifier =
                    Some(header_modifier(f.request_header_modifier.as_ref()?));
            }
            "ResponseHeaderModifier" => {
                out.response_header_modifier =
                    Some(header_modifier(f.response_header_modifier.as_ref()?));
            }
            "RequestRedirect" => {
                let r = f.request_redirect.as_ref()?;
                out.request_redirect = Some(RequestRedirect {
                    scheme: r.scheme.clone().unwrap_or_default(),
                    hostname: r.hostname.clone().unwrap_or_default(),
                    path: r.path.as_ref().and_then(path_modifier),
                    port: r.port.unwrap_or(0),
                    status_code: r.status_code.unwrap_or(0),
                });
            }
            "URLRewrite" => {
                let r = f.url_rewrite.as_ref()?;
                out.url_rewrite = Some(UrlRewrite {
                    hostname: r.hostname.clone().unwrap_or_default(),
                    path: r.path.as_ref().and_then(path_modifier),
                });
            }
            "RequestMirror" => {
                let m = f.request_mirror.as_ref()?;
                let percent = match (&m.percent, &m.fraction) {
                    (Some(p), _) => Some(f64::from(*p)),
                    (None, Some(fr)) => {
                        let den = fr.denominator.unwrap_or(100).max(1);
                        Some(100.0 * f64::from(fr.numerator) / f64::from(den))
                    }
                    (None, None) => None,
                };
                out.request_mirror = Some(RequestMirror {
                    backend: Some(self.backend(&m.backend_ref, 1, Vec::new())),
                    percent,
                });
            }
            _ => return None,
        }
        Some(out)
    }
}

fn header_modifier(h: &HeaderFilter) -> HeaderModifier {
    let headers = |v: &[crate::sources::routes::HeaderValue]| {
        v.iter()
            .map(|h| Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    HeaderModifier {
        set: headers(&h.set),
        add: headers(&h.add),
        remove: h.remove.clone(),
    }
}

fn path_modifier(p: &PathModifierSpec) -> Option<PathModifier> {
    let (kind, value) = match p.kind.as_str() {
        "ReplaceFullPath" => (
            path_modifier::Kind::ReplaceFullPath,
            p.replace_full_path.clone(),
        ),
        "ReplacePrefixMatch" => (
            path_modifier::Kind::ReplacePrefixMatch,
            p.replace_prefix_match.clone(),
        ),
        _ => return None,
    };
    Some(PathModifier {
        kind: kind as i32,
        value: value.unwrap_or_default(),
    })
}

/// Invalid durations (which the CRD's validation would refuse) count as unset.
fn timeouts(t: Option<&HttpRouteTimeouts>) -> Option<Timeouts> {
    let t = t?;
    let ms = |d: &Option<String>| d.as_deref().and_then(parse_duration).unwrap_or(0);
    Some(Timeouts {
        request_ms: ms(&t.request),
        backend_request_ms: ms(&t.backend_request),
    })
}

/// The parentRef as status echoes it (Gateway API defaults filled in).
fn parent_ref_json(p: &ParentReference, default_kind: &str) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(
        "group".into(),
        json!(p.group.as_deref().unwrap_or(GATEWAY_GROUP)),
    );
    m.insert(
        "kind".into(),
        json!(p.kind.as_deref().unwrap_or(default_kind)),
    );
    if let Some(ns) = &p.namespace {
        m.insert("namespace".into(), json!(ns));
    }
    m.insert("name".into(), json!(p.name));
    if let Some(s) = &p.section_name {
        m.insert("sectionName".into(), json!(s));
    }
    if let Some(port) = p.port {
        m.insert("port".into(), json!(port));
    }
    Value::Object(m)
}

pub fn routes(
    index: &Index,
    cfg: &ComputeConfig,
    waypoints: &BTreeMap<Name, Waypoint>,
) -> RouteOutput {
    let mut out = RouteOutput::default();
    let faults = fault_injection::convert_all(index);
    out.status.extend(fault_injection::status(&faults));
    for route in inputs(index) {
        let mut parents = Vec::new();
        let mut parent_status = Vec::new();
        let mut resolver = Resolver {
            index,
            cfg,
            ns: route.ns,
            route_kind: route.api_kind(),
            problem: None,
        };
        let mut rules = Vec::new();
        // Messages of the rules dropped as invalid.
        let mut dropped: Vec<String> = Vec::new();
        for (i, rule) in route.rules.iter().enumerate() {
            let Some(parts) = rule::rule_parts(&mut resolver, &faults, i, rule, &mut dropped)
            else {
                continue;
            };
            rules.push((i, rule, parts));
        }
        let nothing_valid = !route.rules.is_empty() && rules.is_empty();
        let bad_hostnames = hostnames::problems(route.hostnames);
        let resolved = match &resolver.problem {
            None => condition(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "All references resolved",
            ),
            Some((reason, message)) => condition("ResolvedRefs", false, reason, message),
        };
        for p in route.parents {
            let accepted = match resolve_parent(&route, p, index, waypoints, cfg) {
                ParentOutcome::Ignored => continue,
                ParentOutcome::Attached(_) if !bad_hostnames.is_empty() => condition(
                    "Accepted",
                    false,
                    "UnsupportedValue",
                    &format!("Invalid hostnames: {}", bad_hostnames.join("; ")),
                ),
                ParentOutcome::Attached(_) if nothing_valid => condition(
                    "Accepted",
                    false,
                    "UnsupportedValue",
                    &format!("All rules are invalid: {}", dropped.join("; ")),
                ),
                ParentOutcome::Attached(parent) => {
                    if parent.kind == parent_ref::Kind::Gateway as i32 {
                        *out.attached
                            .entry((parent.namespace.clone(), parent.name.clone()))
                            .or_default() += 1;
                    }
                    parents.push(parent);
                    condition("Accepted", true, "Accepted", "Route was valid")
                }
                ParentOutcome::Refused(reason, message) => {
                    condition("Accepted", false, reason, &message)
                }
            };
            let mut conditions = vec![accepted, resolved.clone()];
            if !dropped.is_empty() && !nothing_valid && bad_hostnames.is_empty() {
                conditions.push(condition(
                    "PartiallyInvalid",
                    true,
                    "UnsupportedValue",
                    &format!("Dropped Rule(s): {}", dropped.join("; ")),
                ));
            }
            parent_status.push(json!({
                "parentRef": parent_ref_json(p, "Gateway"),
                "controllerName": CONTROLLER_NAME,
                "conditions": conditions,
            }));
        }
        if !parent_status.is_empty() {
            out.status.insert(
                format!("{}/{}/{}", route.kind_name(), route.ns, route.name),
                json!({ "parents": parent_status }),
            );
        }
        if parents.is_empty() {
            continue;
        }
        for (i, rule, parts) in rules {
            let name = format!("{}/{}/{}/{i}", route.ns, route.kind_name(), route.name);
            out.routes.insert(
                name.clone(),
                Route {
                    name,
                    namespace: route.ns.to_owned(),
                    route_name: route.name.to_owned(),
                    kind: route.kind as i32,
                    rule_index: u32::try_from(i).unwrap_or(u32::MAX),
                    rule_name: rule.name.unwrap_or_default().to_owned(),
                    creation_timestamp: route.created,
                    parents: parents.clone(),
                    hostnames: route.hostnames.to_vec(),
                    matches: rule.matches.clone(),
                    filters: parts.filters,
                    backends: parts.backends,
                    timeouts: timeouts(rule.timeouts),
                    retry: parts.retry,
                    fault: parts.fault,
                    direct_response: parts.direct_response,
                    ..Default::default()
                },
            );
        }
    }
    out
}
