//! Istio `VirtualService` → `ambit.waypoint.Route`: each `http[i]` rule becomes one resource named
//! `<ns>/virtualservice/<name>/<i>` (kind HTTP), each `tcp[i]` rule one named `<ns>/virtualservice/<name>/tcp-<i>`
//! (kind TCP), with `origin: VIRTUAL_SERVICE` so the waypoint orders them as Istio does (first match wins within
//! the VirtualService, oldest VirtualService first) rather than by Gateway API precedence. Field conversion is in
//! `convert`; this module decides where a VirtualService applies and writes its status.
//!
//! **Where it applies.** A VirtualService whose `gateways` do not include `mesh` (empty means `mesh`) is for
//! ingress gateways, not waypoints: no routes, `Reconciled=False NotForMesh`. Each host resolves to Services
//! ([`super::istio_hosts`]); a Service gets a `SERVICE` parent only when it is bound to a waypoint
//! (`istio.io/use-waypoint`, and the waypoint serves it): ztunnel ignores VirtualService, as in Istio, so a
//! VirtualService for an unbound Service is reported as not applied. The parent's `port` is the match `port`
//! when every match of the rule sets it (one parent per distinct port), else 0 (every port).
//!
//! **Mixing with Gateway API.** Istio calls mixing the two undefined; Ambit's rule: when a Service has any
//! HTTPRoute/GRPCRoute/TCPRoute attached to it (a `SERVICE` parent, any port), Gateway API wins for that Service:
//! the VirtualService gets no parent for it and its status says `OverriddenByGatewayAPI` with the routes' names.
//! Per Service rather than per port so that one Service never answers from two rule orders at once. Routes
//! attached to the waypoint Gateway itself do not count: they are the waypoint's defaults, below any Service rule.
//!
//! **Validation.** An invalid field drops its rule (the other rules apply), reported as an error in
//! `validationMessages` and `Accepted=True PartiallyInvalid` (`Accepted=False Invalid` when no rule is left).
//! A backend that cannot be resolved keeps the rule with that backend marked `invalid` (500 when picked, as Gateway
//! API does), as a warning. Unsupported fields that would change what a rule matches or where it sends traffic
//! (`delegate`, `mirrors`, `match.scheme`, `rewrite.uriRegexRewrite`, ...) are errors; ones that do not are
//! warnings. A `sourceLabels` match is resolved to the uids of the matching pods (in `sourceNamespace` when set,
//! else in every namespace); `retries` absent leaves `retry` unset (the waypoint's default, Istio's), `attempts: 0`
//! (or no attempts) turns retries off; `perTryTimeout` becomes `timeouts.backendRequest` when there are retries.

mod convert;
mod policy;
#[cfg(test)]
pub(super) mod tests;

use std::collections::{BTreeMap, BTreeSet};

use ambit_proto::waypoint::{ParentRef, Route, RouteKind, RouteOrigin, parent_ref};
use serde_json::Value;

use super::ComputeConfig;
use super::istio_hosts::{
    HostIndex, HostOutcomes, Messages, bound_waypoint, created, object_status,
};
use super::waypoint::Bindings;
use crate::index::Index;
use crate::sources::VirtualService;
use convert::{Converter, RuleParts};
pub(super) use policy::fault as convert_fault;
pub use policy::{DEFAULT_RETRY_ON, RETRY_ON};

/// The computed VirtualService routes and their objects' status (`virtualservice/<ns>/<name>`).
#[derive(Clone, Debug, Default)]
pub struct VsOutput {
    pub routes: BTreeMap<String, Route>,
    pub status: BTreeMap<String, Value>,
}

/// `(service namespace, hostname)` → the Gateway API routes attached to it (by resource name).
pub fn gateway_api_services(
    routes: &BTreeMap<String, Route>,
) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for r in routes.values() {
        if r.origin != RouteOrigin::GatewayApi as i32 {
            continue;
        }
        for p in &r.parents {
            if p.kind == parent_ref::Kind::Service as i32 {
                let names = out
                    .entry((p.namespace.clone(), p.name.clone()))
                    .or_default();
                let kind = r.name.split('/').nth(1).unwrap_or("route");
                let route = format!("{kind} {}/{}", r.namespace, r.route_name);
                if !names.contains(&route) {
                    names.push(route);
                }
            }
        }
    }
    out
}

/// Where one VirtualService applies: its parents (without port) and the outcome per host.
fn parents(
    vs: &VirtualService,
    ns: &str,
    hosts: &HostIndex<'_>,
    bindings: &Bindings,
    gateway_api: &BTreeMap<(String, String), Vec<String>>,
    m: &mut Messages,
    overridden: &mut bool,
) -> (Vec<ParentRef>, HostOutcomes) {
    let mut parents = Vec::new();
    let mut outcomes = HostOutcomes::new();
    if vs.spec.hosts.is_empty() {
        m.error("hosts", "at least one host is required");
    }
    for (k, host) in vs.spec.hosts.iter().enumerate() {
        let resolved = hosts.resolve(host, ns);
        if resolved.is_empty() {
            let fqdn = hosts.fqdn(host, ns);
            m.warn(
                &format!("hosts[{k}]"),
                format!("no service {fqdn} (only Services are supported)"),
            );
            outcomes.push((fqdn, Err("no such service".to_owned())));
        }
        for h in resolved {
            let outcome = match bound_waypoint(bindings, &h) {
                Err(why) => Err(why),
                Ok(w) => match gateway_api.get(&(h.namespace.clone(), h.hostname.clone())) {
                    Some(routes) => {
                        *overridden = true;
                        Err(format!(
                            "Gateway API routes are attached to the service ({}) and win over VirtualService",
                            routes.join(", ")
                        ))
                    }
                    None => {
                        if !parents.iter().any(|p: &ParentRef| p.name == h.hostname) {
                            parents.push(ParentRef {
                                kind: parent_ref::Kind::Service as i32,
                                name: h.hostname.clone(),
                                namespace: h.namespace.clone(),
                                port: 0,
                            });
                        }
                        Ok(w)
                    }
                },
            };
            outcomes.push((h.hostname, outcome));
        }
    }
    (parents, outcomes)
}

/// The parents of one rule: each VirtualService parent on each of the rule's ports (or on every port).
fn rule_parents(parents: &[ParentRef], ports: &BTreeSet<u32>) -> Vec<ParentRef> {
    if ports.is_empty() {
        return parents.to_vec();
    }
    parents
        .iter()
        .flat_map(|p| {
            ports.iter().map(move |port| ParentRef {
                port: *port,
                ..p.clone()
            })
        })
        .collect()
}

/// Every VirtualService's routes and status. `gateway_api` is the Gateway API routes computed by
/// [`super::routes`] (for the mixing rule); `subsets` the subsets DestinationRules define per hostname.
pub fn virtual_services(
    index: &Index,
    cfg: &ComputeConfig,
    bindings: &Bindings,
    gateway_api: &BTreeMap<String, Route>,
    subsets: &BTreeMap<String, BTreeSet<String>>,
) -> VsOutput {
    let hosts = HostIndex::new(index, cfg);
    let attached = gateway_api_services(gateway_api);
    let mut out = VsOutput::default();
    for ((ns, name), vs) in &index.virtual_services {
        let mut m = Messages::default();
        m.unsupported("spec", &vs.spec.unknown, &["exportTo", "tls"]);
        if vs.spec.unknown.contains_key("exportTo") {
            m.warn(
                "spec.exportTo",
                "ignored: waypoints apply the VirtualService of the services they serve",
            );
        }
        if vs.spec.unknown.contains_key("tls") {
            m.warn(
                "spec.tls",
                "TLS routes are not supported at waypoints; ignored",
            );
        }
        let key = format!("virtualservice/{ns}/{name}");
        let gateways = &vs.spec.gateways;
        if !gateways.is_empty() && !gateways.iter().any(|g| g == "mesh") {
            let why = format!("gateways {gateways:?} do not include mesh: not for waypoints");
            out.status.insert(
                key,
                object_status(&m, false, &vec![(String::new(), Err(why))], "NotForMesh"),
            );
            continue;
        }
        if gateways.len() > 1 {
            m.warn(
                "gateways",
                "only mesh applies at waypoints; the other gateways are ignored here",
            );
        }
        let mut overridden = false;
        let (parents, outcomes) =
            parents(vs, ns, &hosts, bindings, &attached, &mut m, &mut overridden);
        let conv = Converter {
            index,
            cfg,
            hosts: &hosts,
            ns,
            subsets,
        };
        let rules = vs.spec.http.len() + vs.spec.tcp.len();
        let mut valid = 0;
        let mut emit =
            |kind: RouteKind, rule_id: String, i: usize, rule_name: &str, parts: RuleParts| {
                let rule_parents = rule_parents(&parents, &parts.ports);
                if rule_parents.is_empty() {
                    return;
                }
                let route_name = format!("{ns}/virtualservice/{name}/{rule_id}");
                out.routes.insert(
                    route_name.clone(),
                    Route {
                        name: route_name,
                        namespace: ns.clone(),
                        route_name: name.clone(),
                        kind: kind as i32,
                        rule_index: u32::try_from(i).unwrap_or(u32::MAX),
                        rule_name: rule_name.to_owned(),
                        creation_timestamp: created(&vs.metadata),
                        parents: rule_parents,
                        matches: parts.matches,
                        filters: parts.filters,
                        backends: parts.backends,
                        timeouts: parts.timeouts,
                        retry: parts.retry,
                        fault: parts.fault,
                        cors: parts.cors,
                        direct_response: parts.direct_response,
                        origin: RouteOrigin::VirtualService as i32,
                        ..Default::default()
                    },
                );
            };
        for (i, rule) in vs.spec.http.iter().enumerate() {
            let before = m.errors.len();
            let parts = conv.http_rule(&mut m, &format!("http[{i}]"), rule);
            if m.errors.len() > before || parts.not_for_mesh {
                continue;
            }
            valid += 1;
            emit(
                RouteKind::Http,
                i.to_string(),
                i,
                rule.name.as_deref().unwrap_or_default(),
                parts,
            );
        }
        for (i, rule) in vs.spec.tcp.iter().enumerate() {
            let before = m.errors.len();
            let parts = conv.tcp_rule(&mut m, &format!("tcp[{i}]"), rule);
            if m.errors.len() > before || parts.not_for_mesh {
                continue;
            }
            valid += 1;
            emit(RouteKind::Tcp, format!("tcp-{i}"), i, "", parts);
        }
        let nothing_valid = valid == 0 && (rules > 0 || !m.errors.is_empty());
        let reason = if overridden {
            "OverriddenByGatewayAPI"
        } else {
            "NotApplied"
        };
        out.status
            .insert(key, object_status(&m, nothing_valid, &outcomes, reason));
    }
    out
}
