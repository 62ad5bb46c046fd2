//! Matching one rule against one request, shared by the data path and the explanation: every check takes a
//! [`Trace`]; [`Quiet`] ignores failures (no allocation), [`Record`] keeps the first failure's reason.
//!
//! Value semantics are Istio's (<https://istio.io/latest/docs/reference/config/security/authorization-policy/>,
//! "Value matching"): exact, prefix `abc*`, suffix `*abc`, and `*` for any non-empty value. Hosts compare
//! case-insensitively (Istio security bulletin ISTIO-SECURITY-2021-008, RFC 4343). Paths are matched without
//! the query string (Envoy's `url_path` matcher, which Istio generates for `paths`).

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::{Condition, ConditionKey, ConditionValues, Operation, Request, Rule, Source};

/// Istio's string value: exact, `prefix*`, `*suffix`, or `*` (present and non-empty).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl StringMatch {
    /// `*` ⇒ presence, `*x` ⇒ suffix, `x*` ⇒ prefix, else exact (istiod's conversion).
    pub fn parse(s: &str) -> Self {
        if s == "*" {
            StringMatch::Presence
        } else if let Some(x) = s.strip_prefix('*') {
            StringMatch::Suffix(x.to_owned())
        } else if let Some(x) = s.strip_suffix('*') {
            StringMatch::Prefix(x.to_owned())
        } else {
            StringMatch::Exact(s.to_owned())
        }
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            StringMatch::Exact(s) => v == s,
            StringMatch::Prefix(s) => v.starts_with(s.as_str()),
            StringMatch::Suffix(s) => v.ends_with(s.as_str()),
            StringMatch::Presence => !v.is_empty(),
        }
    }

    /// ASCII case-insensitive (hosts).
    fn matches_ignore_case(&self, v: &str) -> bool {
        let (v, n) = (v.as_bytes(), |s: &String| s.len());
        match self {
            StringMatch::Exact(s) => v.eq_ignore_ascii_case(s.as_bytes()),
            StringMatch::Prefix(s) => v
                .get(..n(s))
                .is_some_and(|h| h.eq_ignore_ascii_case(s.as_bytes())),
            StringMatch::Suffix(s) => v
                .len()
                .checked_sub(n(s))
                .and_then(|at| v.get(at..))
                .is_some_and(|t| t.eq_ignore_ascii_case(s.as_bytes())),
            StringMatch::Presence => !v.is_empty(),
        }
    }
}

impl fmt::Display for StringMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StringMatch::Exact(s) => f.write_str(s),
            StringMatch::Prefix(s) => write!(f, "{s}*"),
            StringMatch::Suffix(s) => write!(f, "*{s}"),
            StringMatch::Presence => f.write_str("*"),
        }
    }
}

/// A `hosts` value, compared case-insensitively. A value without `:` is compared with the authority's host
/// (its port removed), so `httpbin.foo` matches `httpbin.foo:8000`; a value with `:` (`httpbin.foo:*`, as Istio
/// users write for ports) is compared with the whole authority.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostMatch {
    pub pattern: StringMatch,
    pub with_port: bool,
}

impl HostMatch {
    pub fn parse(s: &str) -> Self {
        HostMatch {
            pattern: StringMatch::parse(s),
            with_port: s.contains(':') && !s.starts_with('['),
        }
    }

    pub fn matches(&self, authority: &str) -> bool {
        let v = if self.with_port {
            authority
        } else {
            host_of(authority)
        };
        self.pattern.matches_ignore_case(v)
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.pattern.fmt(f)
    }
}

/// The authority without its port (`[::1]:80` ⇒ `[::1]`).
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .and_then(|i| authority.get(..=i))
            .unwrap_or(authority);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// A `paths` value: Istio's wildcards, or a path template with `{*}` (one segment) and `{**}` (the remaining
/// segments, last only), as Istio 1.22 added (istio/istio#50365).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Value(StringMatch),
    Template(Vec<Segment>),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    Literal(String),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: zero or more segments.
    Rest,
}

impl PathMatch {
    /// Matches the path without its query string.
    pub fn matches(&self, path: &str) -> bool {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        match self {
            PathMatch::Value(m) => m.matches(path),
            PathMatch::Template(segs) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = rest.split('/');
                for seg in segs {
                    match seg {
                        Segment::Rest => return true,
                        Segment::One => match parts.next() {
                            Some(p) if !p.is_empty() => {}
                            _ => return false,
                        },
                        Segment::Literal(l) => {
                            if parts.next() != Some(l.as_str()) {
                                return false;
                            }
                        }
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathMatch::Value(m) => m.fmt(f),
            PathMatch::Template(segs) => {
                for s in segs {
                    match s {
                        Segment::Literal(l) => write!(f, "/{l}")?,
                        Segment::One => f.write_str("/{*}")?,
                        Segment::Rest => f.write_str("/{**}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for ConditionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConditionKey::RequestHeader(h) => write!(f, "request.headers[{h}]"),
            ConditionKey::AuthPrincipal => f.write_str("request.auth.principal"),
            ConditionKey::AuthAudiences => f.write_str("request.auth.audiences"),
            ConditionKey::AuthPresenter => f.write_str("request.auth.presenter"),
            ConditionKey::AuthClaims(path) => {
                f.write_str("request.auth.claims")?;
                path.iter().try_for_each(|c| write!(f, "[{c}]"))
            }
            ConditionKey::SourceIp => f.write_str("source.ip"),
            ConditionKey::RemoteIp => f.write_str("remote.ip"),
            ConditionKey::SourceNamespace => f.write_str("source.namespace"),
            ConditionKey::SourcePrincipal => f.write_str("source.principal"),
            ConditionKey::DestinationIp => f.write_str("destination.ip"),
            ConditionKey::DestinationPort => f.write_str("destination.port"),
            ConditionKey::ConnectionSni => f.write_str("connection.sni"),
        }
    }
}

/// Receives why a check failed. Reasons are built lazily, so [`Quiet`] never allocates.
pub(crate) trait Trace: Sized {
    fn child(&self) -> Self;
    fn fail(&mut self, why: impl FnOnce() -> String);
    /// Adds a failed alternative of an ORed list to `self` (a group).
    fn join(&mut self, alternative: Self);
    /// Takes a group's reasons as this trace's failure.
    fn adopt(&mut self, group: Self);
}

/// The data path: failures are not recorded.
pub(crate) struct Quiet;

impl Trace for Quiet {
    #[inline]
    fn child(&self) -> Self {
        Quiet
    }
    #[inline]
    fn fail(&mut self, _: impl FnOnce() -> String) {}
    #[inline]
    fn join(&mut self, _: Self) {}
    #[inline]
    fn adopt(&mut self, _: Self) {}
}

/// The explanation: the first failure's reason.
#[derive(Default)]
pub(crate) struct Record(pub(crate) Option<String>);

impl Trace for Record {
    fn child(&self) -> Self {
        Record(None)
    }
    fn fail(&mut self, why: impl FnOnce() -> String) {
        if self.0.is_none() {
            self.0 = Some(why());
        }
    }
    fn join(&mut self, alternative: Self) {
        match (&mut self.0, alternative.0) {
            (Some(s), Some(r)) => {
                s.push_str("; ");
                s.push_str(&r);
            }
            (None, r) => self.0 = r,
            (Some(_), None) => {}
        }
    }
    fn adopt(&mut self, group: Self) {
        if self.0.is_none() {
            self.0 = group.0;
        }
    }
}

/// A field named in a reason: `from[0].source.principals`, `to[1].operation.notPaths`.
#[derive(Clone, Copy)]
struct Field {
    from: bool,
    index: usize,
    name: &'static str,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.from {
            true => write!(f, "from[{}].source.{}", self.index, self.name),
            false => write!(f, "to[{}].operation.{}", self.index, self.name),
        }
    }
}

/// `["a", "b"]`, each value as written in the policy.
struct Listed<'a, P>(&'a [P]);

impl<P: fmt::Display> fmt::Display for Listed<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{:?}", p.to_string())?;
        }
        f.write_str("]")
    }
}

fn shown(v: Option<&str>) -> String {
    v.map_or_else(|| "(none)".to_owned(), |v| format!("{v:?}"))
}

/// A positive list holds when empty or when any value hits.
fn pos<T: Trace, P: fmt::Display>(
    t: &mut T,
    field: Field,
    list: &[P],
    actual: impl FnOnce() -> String,
    hit: impl Fn(&P) -> bool,
) -> bool {
    if list.is_empty() || list.iter().any(hit) {
        return true;
    }
    t.fail(|| format!("{field}: {} not in {}", actual(), Listed(list)));
    false
}

/// A `not_` list holds when no value hits.
fn neg<T: Trace, P: fmt::Display>(
    t: &mut T,
    field: Field,
    list: &[P],
    actual: impl FnOnce() -> String,
    hit: impl Fn(&P) -> bool,
) -> bool {
    match list.iter().find(|p| hit(p)) {
        None => true,
        Some(p) => {
            t.fail(|| format!("{field}: {} matches {:?}", actual(), p.to_string()));
            false
        }
    }
}

/// An ORed list: empty holds; otherwise one alternative must hold (all their reasons are kept if none does).
fn any_of<T: Trace, I>(
    t: &mut T,
    items: &[I],
    mut f: impl FnMut(usize, &I, &mut T) -> bool,
) -> bool {
    if items.is_empty() {
        return true;
    }
    let mut group = t.child();
    for (i, item) in items.iter().enumerate() {
        let mut c = t.child();
        if f(i, item, &mut c) {
            return true;
        }
        group.join(c);
    }
    t.adopt(group);
    false
}

impl Rule {
    /// All of `from` (ORed), `to` (ORed) and `when` (ANDed) hold; an empty section holds.
    pub(crate) fn matches<T: Trace>(&self, req: &Request<'_>, t: &mut T) -> bool {
        any_of(t, &self.from, |i, s, t| s.matches(i, req, t))
            && any_of(t, &self.to, |i, o, t| o.matches(i, req, t))
            && self
                .when
                .iter()
                .enumerate()
                .all(|(i, c)| c.matches(i, req, t))
    }
}

impl Source {
    fn matches<T: Trace>(&self, index: usize, req: &Request<'_>, t: &mut T) -> bool {
        let f = |name| Field {
            from: true,
            index,
            name,
        };
        // No peer identity (plaintext): principals, namespaces and service accounts never hit.
        let principal = req.principal();
        let p_hit = |m: &StringMatch| principal.is_some_and(|p| m.matches(p));
        let p_show = || shown(principal);
        let rp = req.auth.map(|a| a.principal);
        let rp_hit = |m: &StringMatch| rp.is_some_and(|p| m.matches(p));
        let rp_show = || shown(rp);
        let ns = req.namespace();
        let ns_hit = |m: &StringMatch| ns.is_some_and(|n| m.matches(n));
        let ns_show = || shown(ns);
        let sa = req.service_account();
        let sa_hit =
            |m: &super::ServiceAccount| sa.is_some_and(|(n, s)| n == m.namespace && s == m.name);
        let sa_show = || shown(sa.map(|(n, s)| format!("{n}/{s}")).as_deref());
        let (src, remote) = (req.source_ip, req.remote_ip);
        let ip_show = |ip: IpAddr| move || ip.to_string();
        pos(t, f("principals"), &self.principals, p_show, p_hit)
            && neg(t, f("notPrincipals"), &self.not_principals, p_show, p_hit)
            && pos(
                t,
                f("requestPrincipals"),
                &self.request_principals,
                rp_show,
                rp_hit,
            )
            && neg(
                t,
                f("notRequestPrincipals"),
                &self.not_request_principals,
                rp_show,
                rp_hit,
            )
            && pos(t, f("namespaces"), &self.namespaces, ns_show, ns_hit)
            && neg(t, f("notNamespaces"), &self.not_namespaces, ns_show, ns_hit)
            && pos(
                t,
                f("serviceAccounts"),
                &self.service_accounts,
                sa_show,
                sa_hit,
            )
            && neg(
                t,
                f("notServiceAccounts"),
                &self.not_service_accounts,
                sa_show,
                sa_hit,
            )
            && pos(t, f("ipBlocks"), &self.ip_blocks, ip_show(src), |n| {
                n.contains(&src)
            })
            && neg(
                t,
                f("notIpBlocks"),
                &self.not_ip_blocks,
                ip_show(src),
                |n| n.contains(&src),
            )
            && pos(
                t,
                f("remoteIpBlocks"),
                &self.remote_ip_blocks,
                ip_show(remote),
                |n| n.contains(&remote),
            )
            && neg(
                t,
                f("notRemoteIpBlocks"),
                &self.not_remote_ip_blocks,
                ip_show(remote),
                |n| n.contains(&remote),
            )
    }
}

impl Operation {
    fn matches<T: Trace>(&self, index: usize, req: &Request<'_>, t: &mut T) -> bool {
        let f = |name| Field {
            from: false,
            index,
            name,
        };
        let (host, method, path, port) = (req.host, req.method, req.path, req.destination_port);
        let h_show = || format!("{host:?}");
        let m_show = || format!("{method:?}");
        let p_show = || format!("{:?}", path.split(['?', '#']).next().unwrap_or(path));
        let port_show = || port.to_string();
        pos(t, f("hosts"), &self.hosts, h_show, |m| m.matches(host))
            && neg(t, f("notHosts"), &self.not_hosts, h_show, |m| {
                m.matches(host)
            })
            && pos(t, f("ports"), &self.ports, port_show, |p| *p == port)
            && neg(t, f("notPorts"), &self.not_ports, port_show, |p| *p == port)
            && pos(t, f("methods"), &self.methods, m_show, |m| {
                m.matches(method)
            })
            && neg(t, f("notMethods"), &self.not_methods, m_show, |m| {
                m.matches(method)
            })
            && pos(t, f("paths"), &self.paths, p_show, |m| m.matches(path))
            && neg(t, f("notPaths"), &self.not_paths, p_show, |m| {
                m.matches(path)
            })
    }
}

impl Condition {
    /// One of `values` (if any) and none of `not_values`.
    fn matches<T: Trace>(&self, index: usize, req: &Request<'_>, t: &mut T) -> bool {
        let key = &self.key;
        if !self.values.is_empty() && !key.hits(&self.values, req) {
            t.fail(|| {
                format!(
                    "when[{index}] {key}: {} not in {}",
                    key.shown(req),
                    self.values.listed()
                )
            });
            return false;
        }
        if !self.not_values.is_empty() && key.hits(&self.not_values, req) {
            t.fail(|| {
                format!(
                    "when[{index}] {key}: {} matches notValues {}",
                    key.shown(req),
                    self.not_values.listed()
                )
            });
            return false;
        }
        true
    }
}

impl ConditionValues {
    fn listed(&self) -> String {
        match self {
            ConditionValues::Strings(v) => Listed(v).to_string(),
            ConditionValues::Ips(v) => Listed(v).to_string(),
            ConditionValues::Ports(v) => Listed(v).to_string(),
        }
    }
}

/// A claim value as text: strings as they are, anything else as its JSON text (allocates).
fn claim_text(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        other => Cow::Owned(other.to_string()),
    }
}

/// Calls `f` for each text of a claim (each element of a list) until it returns true. A null claim is absent.
fn any_claim_text(v: Option<&Value>, mut f: impl FnMut(&str) -> bool) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Array(items)) => items.iter().any(|i| f(&claim_text(i))),
        Some(other) => f(&claim_text(other)),
    }
}

impl ConditionKey {
    fn ip(&self, req: &Request<'_>) -> Option<IpAddr> {
        match self {
            ConditionKey::SourceIp => Some(req.source_ip),
            ConditionKey::RemoteIp => Some(req.remote_ip),
            ConditionKey::DestinationIp => Some(req.destination_ip),
            _ => None,
        }
    }

    fn claim<'r>(&self, req: &Request<'r>) -> Option<&'r Value> {
        let claims = req.auth?.claims;
        match self {
            ConditionKey::AuthAudiences => claims.get("aud"),
            ConditionKey::AuthPresenter => claims.get("azp"),
            ConditionKey::AuthClaims(path) => path.iter().try_fold(claims, |v, k| v.get(k)),
            _ => None,
        }
    }

    /// Calls `f` with each value of the attribute (none when absent) until it returns true.
    fn any_str(&self, req: &Request<'_>, mut f: impl FnMut(&str) -> bool) -> bool {
        match self {
            ConditionKey::RequestHeader(name) => {
                let mut all = req.headers.get_all(name).iter();
                let Some(first) = all.next() else {
                    return false;
                };
                match all.next() {
                    None => f(&String::from_utf8_lossy(first.as_bytes())),
                    // Envoy joins repeated headers with "," before matching.
                    Some(second) => {
                        let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
                        for v in std::iter::once(second).chain(all) {
                            joined.push(',');
                            joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
                        }
                        f(&joined)
                    }
                }
            }
            ConditionKey::AuthPrincipal => req.auth.is_some_and(|a| f(a.principal)),
            ConditionKey::AuthAudiences | ConditionKey::AuthClaims(_) => {
                any_claim_text(self.claim(req), f)
            }
            // `azp` is a single string.
            ConditionKey::AuthPresenter => self.claim(req).and_then(Value::as_str).is_some_and(f),
            ConditionKey::SourceNamespace => req.namespace().is_some_and(f),
            ConditionKey::SourcePrincipal => req.principal().is_some_and(f),
            ConditionKey::ConnectionSni => req.sni.is_some_and(f),
            ConditionKey::SourceIp
            | ConditionKey::RemoteIp
            | ConditionKey::DestinationIp
            | ConditionKey::DestinationPort => false,
        }
    }

    fn hits(&self, values: &ConditionValues, req: &Request<'_>) -> bool {
        match values {
            ConditionValues::Strings(ms) => self.any_str(req, |v| ms.iter().any(|m| m.matches(v))),
            ConditionValues::Ips(nets) => self
                .ip(req)
                .is_some_and(|ip| nets.iter().any(|n: &IpNet| n.contains(&ip))),
            ConditionValues::Ports(ps) => {
                *self == ConditionKey::DestinationPort && ps.contains(&req.destination_port)
            }
        }
    }

    /// The attribute's value(s) for an explanation.
    fn shown(&self, req: &Request<'_>) -> String {
        if let Some(ip) = self.ip(req) {
            return ip.to_string();
        }
        if *self == ConditionKey::DestinationPort {
            return req.destination_port.to_string();
        }
        let mut all = Vec::new();
        self.any_str(req, |v| {
            all.push(v.to_owned());
            false
        });
        match all.as_slice() {
            [] => "(none)".to_owned(),
            [one] => format!("{one:?}"),
            many => format!("{many:?}"),
        }
    }
}
