//! Route rules and their matching, as pure functions (table tests in `route/tests.rs`).
//!
//! A [`Rule`] is one rule of an HTTPRoute, GRPCRoute or TCPRoute (one `ambit.waypoint.Route` resource). For each
//! service port the waypoint serves, the rules attached to it are flattened into a [`RouteTable`]: one entry per
//! (rule, match), sorted once by the Gateway API's precedence, so choosing a rule for a request is a walk down a
//! list that stops at the first entry that matches.
//!
//! Route `hostnames` ([`host`]) count only for rules that reach the port through the waypoint Gateway
//! ([`Attachment::Gateway`]): there the table first narrows to the routes whose hostnames match the request's
//! authority, the most specific hostname winning before match precedence, as at any Gateway listener. A request
//! whose host no route there claims goes to the service itself, as if no route were attached. Rules attached to
//! the Service ignore `hostnames`: GAMMA (GEP-1426) binds mesh routes by the service's VIP, not by `Host`, and
//! says meshes SHOULD NOT infer anything from the field (conformance `MeshFrontendHostname`).

mod convert;
pub mod host;
#[cfg(test)]
mod host_tests;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use crate::filters::Filter;
use crate::resilience::{Cors, Fault, RetryPolicy};

pub use convert::{ConvertError, convert_match, rule_from_proto};
pub use host::Hostname;

/// Which kind of route a rule came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RouteKind {
    Http,
    Grpc,
    Tcp,
}

/// Where a rule attaches.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Parent {
    /// Traffic addressed to a service (by hostname), on one port or all (`None`).
    Service { hostname: String, port: Option<u16> },
    /// Every service the waypoint `namespace/name` serves.
    Gateway {
        namespace: String,
        name: String,
        port: Option<u16>,
    },
}

/// A string match on a header, query parameter or gRPC name.
#[derive(Clone, Debug, serde::Serialize)]
pub enum ValueMatch {
    Exact(String),
    /// A string prefix (VirtualService `prefix`; Gateway API has none for headers).
    Prefix(String),
    Regex(#[serde(serialize_with = "regex_str")] Regex),
}

impl ValueMatch {
    pub fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(e) => e == v,
            ValueMatch::Prefix(p) => v.starts_with(p.as_str()),
            ValueMatch::Regex(r) => full_match(r, v),
        }
    }

    /// For gRPC precedence: the number of characters of an exact match (a regex counts as none).
    fn exact_len(&self) -> usize {
        match self {
            ValueMatch::Exact(e) => e.len(),
            ValueMatch::Prefix(_) | ValueMatch::Regex(_) => 0,
        }
    }
}

fn regex_str<S: serde::Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

/// Gateway API regular expressions match the whole value.
fn full_match(r: &Regex, v: &str) -> bool {
    r.find(v)
        .is_some_and(|m| m.start() == 0 && m.end() == v.len())
}

#[derive(Clone, Debug, serde::Serialize)]
pub enum PathMatch {
    Exact(String),
    /// Element-wise: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`. Stored without a trailing `/`
    /// (so `/` is stored as the empty string and matches everything).
    Prefix(String),
    Regex(#[serde(serialize_with = "regex_str")] Regex),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(e) => e == path,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathMatch::Regex(r) => full_match(r, path),
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct HeaderMatch {
    #[serde(serialize_with = "header_name_str")]
    pub name: HeaderName,
    pub value: ValueMatch,
}

fn header_name_str<S: serde::Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct QueryMatch {
    pub name: String,
    pub value: ValueMatch,
}

/// GRPCRoute's method match; `None` parts match anything.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GrpcMatch {
    pub service: Option<ValueMatch>,
    pub method: Option<ValueMatch>,
}

/// One match of a rule: every condition must hold.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Match {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    #[serde(serialize_with = "method_str")]
    pub method: Option<Method>,
    pub grpc: Option<GrpcMatch>,
    /// VirtualService `ignoreUriCase`: the path is compared without ASCII case.
    pub ignore_path_case: bool,
    /// VirtualService `withoutHeaders`: none may match.
    pub without_headers: Vec<HeaderMatch>,
    /// VirtualService `sourceNamespace`.
    pub source_namespace: Option<String>,
    /// VirtualService `sourceLabels`, as the uids of the client workloads they select.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_workloads: Option<HashSet<String>>,
}

fn method_str<S: serde::Serializer>(m: &Option<Method>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_some(m.as_str()),
        None => s.serialize_none(),
    }
}

impl Match {
    /// `PathPrefix /`: what a rule without matches means.
    pub fn everything() -> Match {
        Match {
            path: PathMatch::Prefix(String::new()),
            headers: vec![],
            query: vec![],
            method: None,
            grpc: None,
            ignore_path_case: false,
            without_headers: vec![],
            source_namespace: None,
            source_workloads: None,
        }
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(m) = &self.method
            && m != req.method
        {
            return false;
        }
        if let Some(g) = &self.grpc {
            // gRPC paths are `/<package.Service>/<Method>`.
            let Some((service, method)) =
                req.path.strip_prefix('/').and_then(|p| p.split_once('/'))
            else {
                return false;
            };
            if g.service.as_ref().is_some_and(|s| !s.matches(service))
                || g.method.as_ref().is_some_and(|m| !m.matches(method))
            {
                return false;
            }
        } else if self.ignore_path_case {
            if !self.path.matches(&req.path.to_ascii_lowercase()) {
                return false;
            }
        } else if !self.path.matches(req.path) {
            return false;
        }
        if let Some(ns) = &self.source_namespace
            && req.source_namespace != Some(ns.as_str())
        {
            return false;
        }
        if let Some(set) = &self.source_workloads
            && !req.source_uid.is_some_and(|u| set.contains(u))
        {
            return false;
        }
        let header_ok = |h: &HeaderMatch| {
            let mut values = req.headers.get_all(&h.name).iter().peekable();
            if h.name == http::header::HOST && values.peek().is_none() {
                return h.value.matches(req.authority);
            }
            values.any(|v| v.to_str().is_ok_and(|v| h.value.matches(v)))
        };
        self.headers.iter().all(header_ok)
            && !self.without_headers.iter().any(header_ok)
            && self
                .query
                .iter()
                .all(|q| query_value(req.query, &q.name).is_some_and(|v| q.value.matches(&v)))
    }
}

/// The first value of query parameter `name` (names compared exactly, values percent-decoded).
pub fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The parts of a request that routing looks at.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The request's authority (HTTP/2 `:authority`, HTTP/1.1 `Host`): a match on the `host` header compares it
    /// when the request has no `Host` header.
    pub authority: &'a str,
    /// The client workload's namespace and uid, when the waypoint knows it.
    pub source_namespace: Option<&'a str>,
    pub source_uid: Option<&'a str>,
}

/// A backend a rule sends to, with its share of the traffic.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackendRef {
    /// `Err(reason)`: the controller could not resolve the reference; a request that picks it gets 500.
    pub target: Result<ServiceRef, String>,
    pub weight: u32,
    pub filters: Vec<Filter>,
}

/// A service and port to send to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ServiceRef {
    pub hostname: String,
    pub port: u16,
    /// A subset of the service's endpoints, defined by its BackendPolicy (VirtualService `destination.subset`).
    pub subset: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub backend_request: Option<Duration>,
}

/// Where a rule came from, which decides how it is ordered among the rules of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Origin {
    /// Gateway API precedence (most specific match first).
    GatewayApi,
    /// VirtualService order: oldest VirtualService first, then its `http` entries in order, first match wins.
    VirtualService,
}

/// One rule of a route.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Rule {
    /// The xDS resource name (`<ns>/<kind>/<name>/<rule index>`).
    pub name: String,
    pub kind: RouteKind,
    pub origin: Origin,
    pub namespace: String,
    pub route_name: String,
    pub rule_index: u32,
    pub rule_name: String,
    pub created: i64,
    pub parents: Vec<Parent>,
    /// HTTPRoute/GRPCRoute `hostnames` (empty: any host); they apply only where the rule attaches through the
    /// waypoint Gateway ([`Attachment`]).
    pub hostnames: Vec<Hostname>,
    /// Never empty: a rule without matches gets [`Match::everything`] (HTTP; gRPC: every method).
    pub matches: Vec<Match>,
    pub filters: Vec<Filter>,
    pub backends: Vec<BackendRef>,
    pub timeouts: Timeouts,
    /// `None`: the waypoint's default policy.
    pub retry: Option<RetryPolicy>,
    pub fault: Option<Fault>,
    pub cors: Option<Cors>,
    pub direct_response: Option<DirectResponse>,
}

/// An answer given without a backend (VirtualService `directResponse`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct DirectResponse {
    pub status: u16,
    pub body: String,
}

impl Rule {
    /// Whether the rule attaches to `hostname:port` served by waypoint `gateway` (namespace, name).
    pub fn attaches_to(&self, hostname: &str, port: u16, gateway: (&str, &str)) -> Option<bool> {
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        let mut via_gateway = None;
        for p in &self.parents {
            match p {
                Parent::Service {
                    hostname: h,
                    port: p,
                } if h == hostname && port_ok(p) => {
                    return Some(true);
                }
                Parent::Gateway {
                    namespace,
                    name,
                    port: p,
                } if (namespace.as_str(), name.as_str()) == gateway && port_ok(p) => {
                    via_gateway = Some(false);
                }
                _ => {}
            }
        }
        via_gateway
    }
}

/// How the rules of a table reached their service port, which decides whether their `hostnames` count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// Through a Service (or ServiceEntry) parent: `hostnames` are ignored (GAMMA matches by VIP). The
    /// controller still sends them, since one rule may also have a Gateway parent, and only the waypoint knows
    /// which parent brought a rule to a port.
    Service,
    /// Through the waypoint Gateway: `hostnames` select routes by the request's authority. `default` is the
    /// service port itself, for requests whose host no rule claims.
    Gateway { default: ServiceRef },
}

/// The rules of one service port, in precedence order.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    entries: Vec<(Arc<Rule>, usize)>,
    /// `Some` when hostnames count ([`Attachment::Gateway`]): the rule for requests no route's hostnames match.
    by_host: Option<Arc<Rule>>,
}

/// The name of the rule that sends a request no Gateway-attached route claims to the service itself.
pub const DEFAULT_RULE: &str = "_waypoint-default";

/// A rule that forwards everything to `target` unchanged (no filters, the waypoint's default policies).
fn default_rule(kind: RouteKind, target: ServiceRef) -> Rule {
    Rule {
        name: DEFAULT_RULE.to_owned(),
        kind,
        origin: Origin::GatewayApi,
        namespace: String::new(),
        route_name: DEFAULT_RULE.to_owned(),
        rule_index: 0,
        rule_name: String::new(),
        created: 0,
        parents: Vec::new(),
        hostnames: Vec::new(),
        matches: vec![Match::everything()],
        filters: Vec::new(),
        backends: vec![BackendRef {
            target: Ok(target),
            weight: 1,
            filters: Vec::new(),
        }],
        timeouts: Timeouts::default(),
        retry: None,
        fault: None,
        cors: None,
        direct_response: None,
    }
}

/// The precedence of one (rule, match), smallest first (Gateway API HTTPRoute and GRPCRoute rules).
type HttpKey<'a> = (
    u8,
    Reverse<usize>,
    u8,
    Reverse<usize>,
    Reverse<usize>,
    Tiebreak<'a>,
);
type GrpcKey<'a> = (Reverse<usize>, Reverse<usize>, Reverse<usize>, Tiebreak<'a>);
/// Oldest route first, then `namespace/name` alphabetically, then rule order, then match order.
type Tiebreak<'a> = (i64, &'a str, &'a str, u32, usize);

fn tiebreak(r: &Rule, m: usize) -> Tiebreak<'_> {
    (r.created, &r.namespace, &r.route_name, r.rule_index, m)
}

fn http_key(r: &Rule, m: usize) -> HttpKey<'_> {
    let mm = &r.matches[m];
    let (rank, len) = match &mm.path {
        PathMatch::Exact(p) => (0, p.len()),
        PathMatch::Prefix(p) => (1, p.len()),
        PathMatch::Regex(_) => (2, 0),
    };
    (
        rank,
        Reverse(len),
        u8::from(mm.method.is_none()),
        Reverse(mm.headers.len()),
        Reverse(mm.query.len()),
        tiebreak(r, m),
    )
}

fn grpc_key(r: &Rule, m: usize) -> GrpcKey<'_> {
    let g = r.matches[m].grpc.as_ref();
    let len = |v: Option<&ValueMatch>| v.map_or(0, ValueMatch::exact_len);
    (
        Reverse(len(g.and_then(|g| g.service.as_ref()))),
        Reverse(len(g.and_then(|g| g.method.as_ref()))),
        Reverse(r.matches[m].headers.len()),
        tiebreak(r, m),
    )
}

impl RouteTable {
    /// Flattens and sorts `rules` (all of one kind: HTTP and gRPC rules are not mixed on one port).
    pub fn new(rules: &[Arc<Rule>], attachment: Attachment) -> RouteTable {
        let mut entries: Vec<(Arc<Rule>, usize)> = rules
            .iter()
            .flat_map(|r| (0..r.matches.len()).map(move |m| (r.clone(), m)))
            .collect();
        // Gateway API rules before VirtualService rules (the controller sends one kind per service port; should
        // both arrive, Gateway API wins, as the controller's rule says).
        entries.sort_by(|(a, am), (b, bm)| {
            a.origin
                .cmp(&b.origin)
                .then_with(|| match (a.origin, a.kind, b.kind) {
                    (Origin::VirtualService, _, _) => tiebreak(a, *am).cmp(&tiebreak(b, *bm)),
                    (_, RouteKind::Grpc, RouteKind::Grpc) => {
                        grpc_key(a, *am).cmp(&grpc_key(b, *bm))
                    }
                    _ => http_key(a, *am).cmp(&http_key(b, *bm)),
                })
        });
        let by_host = match attachment {
            Attachment::Service => None,
            Attachment::Gateway { default } => {
                let kind = rules.first().map_or(RouteKind::Http, |r| r.kind);
                Some(Arc::new(default_rule(kind, default)))
            }
        };
        RouteTable { entries, by_host }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first rule (and the match that selected it) for this request. With hostnames in force, the first
    /// among the matching entries of the routes whose hostnames match the request's host most specifically; the
    /// default rule when no route's hostnames match it; `None` when routes claim the host but none of their
    /// matches applies.
    pub fn select(&self, req: &RequestView<'_>) -> Option<(&Arc<Rule>, &Match)> {
        let Some(default) = &self.by_host else {
            return self.entries.iter().find_map(|(r, m)| {
                let mm = &r.matches[*m];
                mm.matches(req).then_some((r, mm))
            });
        };
        let host = host::request_host(req.authority);
        let mut claimed = false;
        let mut best: Option<(host::HostRank, &Arc<Rule>, &Match)> = None;
        for (r, m) in &self.entries {
            let Some(rank) = host::rank(&r.hostnames, &host) else {
                continue;
            };
            claimed = true;
            // Entries are in match precedence order, so a later entry wins only with a better host rank.
            if best.as_ref().is_some_and(|(b, _, _)| *b >= rank) {
                continue;
            }
            let mm = &r.matches[*m];
            if mm.matches(req) {
                best = Some((rank, r, mm));
            }
        }
        match best {
            Some((_, r, mm)) => Some((r, mm)),
            None if !claimed => Some((default, &default.matches[0])),
            None => None,
        }
    }

    /// The rules in precedence order (for `/config_dump`).
    pub fn rules(&self) -> impl Iterator<Item = (&Arc<Rule>, usize)> {
        self.entries.iter().map(|(r, m)| (r, *m))
    }
}

/// Picks an index by weight (zero weights never), or `None` when all weights are zero. `roll` is uniform in
/// `0..total weight`, given by the caller so the choice is testable.
pub fn pick_weighted<T>(
    items: &[T],
    weight: impl Fn(&T) -> u32,
    roll: impl FnOnce(u64) -> u64,
) -> Option<usize> {
    let total: u64 = items.iter().map(|i| u64::from(weight(i))).sum();
    if total == 0 {
        return None;
    }
    let mut r = roll(total).min(total - 1);
    for (i, item) in items.iter().enumerate() {
        let w = u64::from(weight(item));
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}
