//! One VirtualService `http[i]` / `tcp[i]` rule → the parts of an `ambit.waypoint.Route`. Every error names its
//! field (`http[2].retries.retryOn: unknown condition "5xxx"`) and drops the rule; warnings keep it.

use std::collections::{BTreeMap, BTreeSet};

use ambit_proto::waypoint::{
    BackendRef, CorsPolicy, DirectResponse, FaultInjection, Filter, Header, HeaderMatch,
    HeaderModifier, MatchType, PathMatch, PathModifier, RequestMirror, RequestRedirect,
    RetryPolicy, RouteMatch, Timeouts, UrlRewrite, WorkloadSet, path_modifier,
};
use base64::Engine;

use super::super::ComputeConfig;
use super::super::istio_hosts::{HostIndex, Messages, workload_uid};
use super::policy::{cors, fault, retries};
use crate::index::Index;
use crate::sources::istio::{
    Percent, StringMatch, VsDestination, VsHeaderOperations, VsHeaders, VsHttpMatch, VsHttpRoute,
    VsRedirect, VsRewrite, VsRouteDestination, VsTcpRoute,
};
use crate::sources::routes::parse_istio_duration;

/// The converted parts of one rule.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleParts {
    pub matches: Vec<RouteMatch>,
    /// The ports the rule's matches are restricted to (empty: every port).
    pub ports: BTreeSet<u32>,
    pub filters: Vec<Filter>,
    pub backends: Vec<BackendRef>,
    pub timeouts: Option<Timeouts>,
    pub retry: Option<RetryPolicy>,
    pub fault: Option<FaultInjection>,
    pub cors: Option<CorsPolicy>,
    pub direct_response: Option<DirectResponse>,
    /// Every match names gateways other than `mesh`: the rule is not for waypoints.
    pub not_for_mesh: bool,
}

/// Shared inputs of a conversion.
pub struct Converter<'a> {
    pub index: &'a Index,
    pub cfg: &'a ComputeConfig,
    pub hosts: &'a HostIndex<'a>,
    /// The VirtualService's namespace (short destination hosts resolve here).
    pub ns: &'a str,
    /// Hostname → the subsets DestinationRules define for it (for "subset not found" warnings).
    pub subsets: &'a BTreeMap<String, BTreeSet<String>>,
}

pub(super) fn percent(m: &mut Messages, f: &str, p: Option<&Percent>) -> Option<f64> {
    let p = p?;
    if !(0.0..=100.0).contains(&p.value) {
        m.error(
            &format!("{f}.value"),
            format!("{} is not between 0 and 100", p.value),
        );
    }
    Some(p.value)
}

pub(super) fn duration(m: &mut Messages, f: &str, d: Option<&str>) -> Option<u64> {
    let d = d?;
    let ms = parse_istio_duration(d);
    if ms.is_none() {
        m.error(f, format!("invalid duration {d:?}"));
    }
    ms
}

/// Rust-regex escaping of a literal (what `regex::escape` does).
fn escape(s: &str) -> String {
    regex::escape(s)
}

fn check_regex(m: &mut Messages, f: &str, r: &str) {
    if let Err(e) = regex::Regex::new(r) {
        let first = e.to_string();
        let line = first.lines().last().unwrap_or_default().trim().to_owned();
        m.error(f, format!("invalid regular expression {r:?}: {line}"));
    }
}

/// `(type, value)` of an Istio StringMatch; `None` (after an error) when more than one kind is set. An empty
/// match is "present" (`.*`) when `empty_present`, else an error.
pub(super) fn string_match(
    m: &mut Messages,
    f: &str,
    s: &StringMatch,
    empty_present: bool,
) -> Option<(MatchType, String)> {
    let set = [&s.exact, &s.prefix, &s.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set > 1 {
        m.error(f, "exactly one of exact, prefix, regex may be set");
        return None;
    }
    if let Some(v) = &s.exact {
        return Some((MatchType::Exact, v.clone()));
    }
    if let Some(v) = &s.prefix {
        return Some((MatchType::PathPrefix, v.clone()));
    }
    if let Some(v) = &s.regex {
        check_regex(m, &format!("{f}.regex"), v);
        return Some((MatchType::RegularExpression, v.clone()));
    }
    if empty_present {
        return Some((MatchType::RegularExpression, ".*".to_owned()));
    }
    m.error(f, "one of exact, prefix, regex is required");
    None
}

fn header_matches(
    m: &mut Messages,
    f: &str,
    map: &BTreeMap<String, StringMatch>,
) -> Vec<HeaderMatch> {
    map.iter()
        .filter_map(|(name, s)| {
            let (t, value) = string_match(m, &format!("{f}.{name}"), s, true)?;
            Some(HeaderMatch {
                r#type: t as i32,
                name: name.to_ascii_lowercase(),
                value,
            })
        })
        .collect()
}

impl Converter<'_> {
    /// The uids of the pods `labels` selects (in `ns`, or any namespace).
    fn source_workloads(&self, labels: &BTreeMap<String, String>, ns: Option<&str>) -> WorkloadSet {
        let uids = self
            .index
            .pods
            .iter()
            .filter(|((pns, _), _)| ns.is_none_or(|n| n == pns))
            .filter(|(_, p)| {
                let pl = p.metadata.labels.as_ref();
                labels
                    .iter()
                    .all(|(k, v)| pl.and_then(|l| l.get(k)) == Some(v))
            })
            .map(|((pns, pname), _)| workload_uid(self.cfg, pns, pname))
            .collect();
        WorkloadSet { uids }
    }

    fn http_match(
        &self,
        m: &mut Messages,
        f: &str,
        x: &VsHttpMatch,
        prefix_rewrite: bool,
    ) -> RouteMatch {
        m.unsupported_strict(f, &x.unknown, &["statPrefix"]);
        let path = x.uri.as_ref().and_then(|u| {
            let (t, v) = string_match(m, &format!("{f}.uri"), u, false)?;
            // Istio's uri prefix is a string prefix; the schema's path prefix is element-wise, so it is sent as a
            // regular expression, except `/` (the same either way) and under a prefix `rewrite.uri` (which needs
            // the prefix to replace it).
            Some(match t {
                MatchType::PathPrefix if v == "/" || prefix_rewrite => {
                    if v != "/" && !v.ends_with('/') {
                        m.warn(
                            &format!("{f}.uri.prefix"),
                            "with rewrite.uri the prefix matches whole path segments only",
                        );
                    }
                    PathMatch {
                        r#type: MatchType::PathPrefix as i32,
                        value: v,
                    }
                }
                MatchType::PathPrefix => PathMatch {
                    r#type: MatchType::RegularExpression as i32,
                    value: format!("{}.*", escape(&v)),
                },
                t => PathMatch {
                    r#type: t as i32,
                    value: v,
                },
            })
        });
        let method = match &x.method {
            None => String::new(),
            Some(s) => match string_match(m, &format!("{f}.method"), s, false) {
                Some((MatchType::Exact, v)) => v,
                Some(_) => {
                    m.error(&format!("{f}.method"), "only exact is supported");
                    String::new()
                }
                None => String::new(),
            },
        };
        let mut headers = header_matches(m, &format!("{f}.headers"), &x.headers);
        if let Some(a) = &x.authority
            && let Some((t, value)) = string_match(m, &format!("{f}.authority"), a, false)
        {
            // The waypoint compares `host` with the request's authority (HTTP/1 Host, HTTP/2 :authority).
            headers.push(HeaderMatch {
                r#type: t as i32,
                name: "host".to_owned(),
                value,
            });
        }
        let ns = x.source_namespace.as_deref().filter(|n| !n.is_empty());
        RouteMatch {
            path,
            headers,
            query_params: header_matches(m, &format!("{f}.queryParams"), &x.query_params),
            method,
            source_namespace: ns.unwrap_or_default().to_owned(),
            source_workloads: x
                .source_labels
                .as_ref()
                .map(|l| self.source_workloads(l, ns)),
            ignore_path_case: x.ignore_uri_case,
            without_headers: header_matches(m, &format!("{f}.withoutHeaders"), &x.without_headers),
            ..Default::default()
        }
    }

    /// A destination → a backend (hostname resolved, port chosen). Problems that only this backend has are
    /// carried in `invalid` (500 for requests that pick it) and reported as warnings.
    fn backend(
        &self,
        m: &mut Messages,
        f: &str,
        d: &VsDestination,
        weight: u32,
        filters: Vec<Filter>,
        rule_ports: &BTreeSet<u32>,
    ) -> BackendRef {
        let mut out = BackendRef {
            weight,
            filters,
            subset: d.subset.clone().unwrap_or_default(),
            ..Default::default()
        };
        if d.host.is_empty() {
            m.error(&format!("{f}.host"), "required");
            return out;
        }
        let fqdn = self.hosts.fqdn(&d.host, self.ns);
        let (Some(svc), false) = (self.hosts.service(&fqdn), fqdn.starts_with('*')) else {
            out.invalid = format!("service {fqdn} not found");
            m.warn(&format!("{f}.host"), &out.invalid);
            return out;
        };
        let svc_ns = svc.metadata.namespace.clone().unwrap_or_default();
        let ports: Vec<u32> = svc
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .filter_map(|p| u32::try_from(p.port).ok())
            .collect();
        let port = match d.port.as_ref().and_then(|p| p.number) {
            Some(p) => Some(p),
            None if ports.len() == 1 => ports.first().copied(),
            // As Istio: the port the request came in on, when the rule is for one port.
            None if rule_ports.len() == 1 => rule_ports.first().copied(),
            None => None,
        };
        match port {
            Some(p) if p == 0 || p > 65535 => m.error(&format!("{f}.port.number"), "not a port"),
            Some(p) => {
                out.hostname = fqdn.clone();
                out.namespace = svc_ns;
                out.port = p;
            }
            None => {
                out.invalid = format!(
                    "destination.port is required: service {fqdn} has {} ports",
                    ports.len()
                );
                m.warn(&format!("{f}.port"), &out.invalid);
            }
        }
        if !out.subset.is_empty()
            && !self
                .subsets
                .get(&fqdn)
                .is_some_and(|s| s.contains(&out.subset))
        {
            m.warn(
                &format!("{f}.subset"),
                format!(
                    "no DestinationRule defines subset {:?} for {fqdn} (requests get 503)",
                    out.subset
                ),
            );
        }
        out
    }

    fn destinations(
        &self,
        m: &mut Messages,
        f: &str,
        route: &[VsRouteDestination],
        rule_ports: &BTreeSet<u32>,
    ) -> Vec<BackendRef> {
        let single = route.len() == 1;
        let mut total: i64 = 0;
        let out: Vec<BackendRef> = route
            .iter()
            .enumerate()
            .map(|(k, r)| {
                let fk = format!("{f}[{k}]");
                let w = r.weight.unwrap_or(if single { 100 } else { 0 });
                if !(0..=i64::from(u32::MAX)).contains(&w) {
                    m.error(
                        &format!("{fk}.weight"),
                        format!("{w} is negative or too large"),
                    );
                }
                total += w.max(0);
                let w = u32::try_from(w).unwrap_or(0);
                let filters = headers_filters(r.headers.as_ref());
                self.backend(
                    m,
                    &format!("{fk}.destination"),
                    &r.destination,
                    if single && w == 0 { 100 } else { w },
                    filters,
                    rule_ports,
                )
            })
            .collect();
        if !single && !route.is_empty() && total == 0 {
            m.error(f, "the weights add up to 0");
        }
        out
    }

    /// One `http[i]` rule (`f` is `http[i]`).
    pub fn http_rule(&self, m: &mut Messages, f: &str, r: &VsHttpRoute) -> RuleParts {
        m.unsupported_strict(f, &r.unknown, &["name"]);
        let mut out = RuleParts::default();
        let prefix_rewrite = r.rewrite.as_ref().is_some_and(|w| w.uri.is_some())
            && !r.matches.is_empty()
            && r.matches
                .iter()
                .all(|x| x.uri.as_ref().is_some_and(|u| u.prefix.is_some()));
        let mut all_ports = true;
        let mut for_mesh = 0;
        for (j, x) in r.matches.iter().enumerate() {
            let fj = format!("{f}.match[{j}]");
            if !x.gateways.is_empty() && !x.gateways.iter().any(|g| g == "mesh") {
                m.warn(
                    &format!("{fj}.gateways"),
                    "does not include mesh; the match does not apply at waypoints",
                );
                continue;
            }
            for_mesh += 1;
            match x.port {
                Some(p) if p == 0 || p > 65535 => m.error(&format!("{fj}.port"), "not a port"),
                Some(p) => {
                    out.ports.insert(p);
                }
                None => all_ports = false,
            }
            out.matches.push(self.http_match(m, &fj, x, prefix_rewrite));
        }
        if !r.matches.is_empty() && for_mesh == 0 {
            out.not_for_mesh = true;
            return out;
        }
        if !all_ports && !out.ports.is_empty() {
            m.warn(
                &format!("{f}.match"),
                "some matches set a port and others do not: the rule applies on every port",
            );
            out.ports.clear();
        } else if out.ports.len() > 1 {
            m.warn(
                &format!("{f}.match"),
                "matches set different ports: each match applies on all of them",
            );
        }
        let exclusive = [
            !r.route.is_empty(),
            r.redirect.is_some(),
            r.direct_response.is_some(),
        ];
        match exclusive.iter().filter(|b| **b).count() {
            0 => m.error(f, "one of route, redirect, directResponse is required"),
            1 => {}
            _ => m.error(
                f,
                "route, redirect and directResponse are mutually exclusive",
            ),
        }
        if r.rewrite.is_some() && r.redirect.is_some() {
            m.error(f, "rewrite and redirect are mutually exclusive");
        }
        out.filters = headers_filters(r.headers.as_ref());
        if let Some(rd) = &r.redirect {
            out.filters
                .extend(redirect(m, &format!("{f}.redirect"), rd));
        }
        if let Some(rw) = &r.rewrite {
            out.filters
                .extend(rewrite(m, &format!("{f}.rewrite"), rw, prefix_rewrite));
        }
        if let Some(mirror) = &r.mirror {
            let backend =
                self.backend(m, &format!("{f}.mirror"), mirror, 1, Vec::new(), &out.ports);
            let pct = percent(
                m,
                &format!("{f}.mirrorPercentage"),
                r.mirror_percentage.as_ref(),
            );
            out.filters.push(Filter {
                request_mirror: Some(RequestMirror {
                    backend: Some(backend),
                    percent: pct,
                }),
                ..Default::default()
            });
        }
        out.backends = self.destinations(m, &format!("{f}.route"), &r.route, &out.ports);
        let request_ms = duration(m, &format!("{f}.timeout"), r.timeout.as_deref());
        let (retry, per_try) = retries(m, &format!("{f}.retries"), r.retries.as_ref());
        out.retry = retry;
        if request_ms.is_some() || per_try.is_some() {
            out.timeouts = Some(Timeouts {
                request_ms: request_ms.unwrap_or(0),
                backend_request_ms: per_try.unwrap_or(0),
            });
        }
        out.fault = r.fault.as_ref().map(|x| fault(m, &format!("{f}.fault"), x));
        out.cors = r
            .cors_policy
            .as_ref()
            .map(|c| cors(m, &format!("{f}.corsPolicy"), c));
        if let Some(d) = &r.direct_response {
            let fd = format!("{f}.directResponse");
            let status = d.status.unwrap_or(0);
            if !(200..=599).contains(&status) {
                m.error(
                    &format!("{fd}.status"),
                    format!("{status} is not between 200 and 599"),
                );
            }
            let body = match d.body.as_ref() {
                None => String::new(),
                Some(b) => match (&b.string, &b.bytes) {
                    (Some(s), None) => s.clone(),
                    (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .ok()
                        .and_then(|v| String::from_utf8(v).ok())
                        .unwrap_or_else(|| {
                            m.error(&format!("{fd}.body.bytes"), "not base64 of UTF-8 text");
                            String::new()
                        }),
                    (None, None) => String::new(),
                    (Some(_), Some(_)) => {
                        m.error(
                            &format!("{fd}.body"),
                            "string and bytes are mutually exclusive",
                        );
                        String::new()
                    }
                },
            };
            out.direct_response = Some(DirectResponse {
                status: u32::try_from(status).unwrap_or(0),
                body,
            });
        }
        out
    }

    /// One `tcp[i]` rule.
    pub fn tcp_rule(&self, m: &mut Messages, f: &str, r: &VsTcpRoute) -> RuleParts {
        let mut out = RuleParts::default();
        let mut all_ports = true;
        let mut for_mesh = 0;
        for (j, x) in r.matches.iter().enumerate() {
            let fj = format!("{f}.match[{j}]");
            if !x.gateways.is_empty() && !x.gateways.iter().any(|g| g == "mesh") {
                continue;
            }
            for_mesh += 1;
            m.unsupported_strict(&fj, &x.unknown, &[]);
            match x.port {
                Some(p) if p == 0 || p > 65535 => m.error(&format!("{fj}.port"), "not a port"),
                Some(p) => {
                    out.ports.insert(p);
                }
                None => all_ports = false,
            }
        }
        if !r.matches.is_empty() && for_mesh == 0 {
            out.not_for_mesh = true;
            return out;
        }
        if !all_ports {
            out.ports.clear();
        }
        if r.route.is_empty() {
            m.error(&format!("{f}.route"), "required");
        }
        out.backends = self.destinations(m, &format!("{f}.route"), &r.route, &out.ports);
        out
    }
}

fn header_modifier(h: &VsHeaderOperations) -> HeaderModifier {
    let pairs = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| Header {
                name: k.clone(),
                value: v.clone(),
            })
            .collect()
    };
    HeaderModifier {
        set: pairs(&h.set),
        add: pairs(&h.add),
        remove: h.remove.clone(),
    }
}

/// `headers.request` / `headers.response` → header modifier filters.
fn headers_filters(h: Option<&VsHeaders>) -> Vec<Filter> {
    let Some(h) = h else { return Vec::new() };
    let mut out = Vec::new();
    if let Some(r) = &h.request {
        out.push(Filter {
            request_header_modifier: Some(header_modifier(r)),
            ..Default::default()
        });
    }
    if let Some(r) = &h.response {
        out.push(Filter {
            response_header_modifier: Some(header_modifier(r)),
            ..Default::default()
        });
    }
    out
}

fn check_path(m: &mut Messages, f: &str, p: &str) {
    if !p.starts_with('/') {
        m.error(f, format!("{p:?} must start with '/'"));
    }
}

fn redirect(m: &mut Messages, f: &str, r: &VsRedirect) -> Option<Filter> {
    m.unsupported(f, &r.unknown, &[]);
    let code = r.redirect_code.unwrap_or(301);
    if ![301, 302, 303, 307, 308].contains(&code) {
        m.error(
            &format!("{f}.redirectCode"),
            format!("{code} is not one of 301, 302, 303, 307, 308"),
        );
    }
    if let Some(u) = &r.uri {
        check_path(m, &format!("{f}.uri"), u);
    }
    if let Some(p) = r.port
        && (p == 0 || p > 65535)
    {
        m.error(&format!("{f}.port"), "not a port");
    }
    Some(Filter {
        request_redirect: Some(RequestRedirect {
            scheme: r.scheme.clone().unwrap_or_default(),
            hostname: r.authority.clone().unwrap_or_default(),
            path: r.uri.as_ref().map(|u| PathModifier {
                kind: path_modifier::Kind::ReplaceFullPath as i32,
                value: u.clone(),
            }),
            port: r.port.unwrap_or(0),
            status_code: code,
        }),
        ..Default::default()
    })
}

/// `rewrite.uri` replaces the matched prefix when every match is a uri prefix (as Istio), else the whole path.
fn rewrite(m: &mut Messages, f: &str, r: &VsRewrite, prefix: bool) -> Option<Filter> {
    m.unsupported_strict(f, &r.unknown, &[]);
    if let Some(u) = &r.uri {
        check_path(m, &format!("{f}.uri"), u);
    }
    Some(Filter {
        url_rewrite: Some(UrlRewrite {
            hostname: r.authority.clone().unwrap_or_default(),
            path: r.uri.as_ref().map(|u| PathModifier {
                kind: if prefix {
                    path_modifier::Kind::ReplacePrefixMatch
                } else {
                    path_modifier::Kind::ReplaceFullPath
                } as i32,
                value: u.clone(),
            }),
        }),
        ..Default::default()
    })
}
