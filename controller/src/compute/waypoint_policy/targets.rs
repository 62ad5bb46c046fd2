//! Resolving `targetRef(s)` to [`PolicyTarget`]s, with each target's binding outcome for `WaypointAccepted`.
//!
//! Istio's `PolicyTargetReference` (AuthorizationPolicy, RequestAuthentication), validated as istiod's
//! `validatePolicyTargetReference` does (a name, no `namespace`: cross-namespace references are not supported,
//! and one of the allowed kinds) and bound as `WaypointPolicyStatusCollection` binds it:
//!
//! | kind (group) | target | outcome |
//! |---|---|---|
//! | `Gateway` (`gateway.networking.k8s.io`) | GATEWAY `ns/name` | `Accepted` "bound to ns/name" when it is a waypoint, else `TargetNotFound` |
//! | `Service` (`""`/`core`) | SERVICE by hostname | `Accepted` "bound to ns/waypoint", `AncestorNotBound` when the Service has no waypoint, `TargetNotFound` |
//! | `ServiceEntry` (`networking.istio.io`) | SERVICE by hostname, one per host | `Accepted` when the entry has a waypoint, else `AncestorNotBound`; `TargetNotFound` |
//! | `GatewayClass` (`gateway.networking.k8s.io`) | GATEWAY_CLASS | root namespace only (mesh-wide waypoint defaults), a waypoint class; elsewhere `Invalid` |
//!
//! A Service target is sent even while the Service is not bound, so the policy applies as soon as it is; only
//! targets that do not resolve are left out. Rate limits add `HTTPRoute`/`GRPCRoute` (with a rule name as
//! `sectionName`) and a Service port name as `sectionName` ([`rate_limit_target`]).

use ambit_proto::waypoint::{PolicyTarget, policy_target};

use super::super::routes::GATEWAY_GROUP;
use super::super::service_hostname;
use super::super::waypoint::{Refusal, WAYPOINT_CLASSES};
use super::{Ctx, reason};
use crate::sources::ambit::RateLimitTargetRef;
use crate::sources::types::PolicyTargetReference;

/// What became of one target reference.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetOutcome {
    /// istiod's ancestor name, `Kind.group:ns/name` (group `core` for `""`).
    pub ancestor: String,
    pub bound: bool,
    pub reason: &'static str,
    pub message: String,
    /// What the waypoint gets, when the reference resolved (a ServiceEntry: one per host).
    pub targets: Vec<PolicyTarget>,
}

impl TargetOutcome {
    fn new(ancestor: String, reason: &'static str, message: String) -> Self {
        TargetOutcome {
            ancestor,
            bound: false,
            reason,
            message,
            targets: Vec::new(),
        }
    }
}

fn target(kind: policy_target::Kind, namespace: &str, name: &str, port: u32) -> PolicyTarget {
    PolicyTarget {
        kind: kind as i32,
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        port,
    }
}

/// The `targetRef` and `targetRefs` of an Istio policy with their field paths.
pub fn istio_refs<'a>(
    target_ref: Option<&'a PolicyTargetReference>,
    target_refs: &'a [PolicyTargetReference],
) -> Vec<(String, &'a PolicyTargetReference)> {
    let mut out: Vec<(String, &PolicyTargetReference)> = target_ref
        .map(|t| ("targetRef".to_owned(), t))
        .into_iter()
        .collect();
    out.extend(
        target_refs
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("targetRefs[{i}]"), t)),
    );
    out
}

fn ancestor(kind: &str, group: &str, ns: &str, name: &str) -> String {
    let group = if group.is_empty() { "core" } else { group };
    format!("{kind}.{group}:{ns}/{name}")
}

/// A Gateway target: bound when it is a waypoint.
fn gateway(ctx: &Ctx<'_>, ancestor: String, ns: &str, name: &str, port: u32) -> TargetOutcome {
    let key = (ns.to_owned(), name.to_owned());
    if ctx.bindings.waypoints.contains_key(&key) {
        return TargetOutcome {
            ancestor,
            bound: true,
            reason: reason::ACCEPTED,
            message: format!("bound to {ns}/{name}"),
            targets: vec![target(policy_target::Kind::Gateway, ns, name, port)],
        };
    }
    let message = if ctx.index.gateways.contains_key(&key) {
        format!("Gateway {ns}/{name} is not a waypoint")
    } else {
        format!("Gateway {ns}/{name} was not found")
    };
    TargetOutcome::new(ancestor, reason::TARGET_NOT_FOUND, message)
}

/// A Service target (with a port, 0 for all): sent by hostname, bound when the Service has a waypoint.
fn service(ctx: &Ctx<'_>, ancestor: String, ns: &str, name: &str, port: u32) -> TargetOutcome {
    let key = (ns.to_owned(), name.to_owned());
    if !ctx.index.services.contains_key(&key) {
        return TargetOutcome::new(
            ancestor,
            reason::TARGET_NOT_FOUND,
            format!("Service {ns}/{name} was not found"),
        );
    }
    let hostname = service_hostname(name, ns, ctx.cfg);
    let t = vec![target(policy_target::Kind::Service, ns, &hostname, port)];
    let binding = ctx.bindings.services.get(&key);
    match binding.map(|b| (&b.waypoint, b.outcome.as_ref().err())) {
        Some(((wns, wname), None)) => TargetOutcome {
            ancestor,
            bound: true,
            reason: reason::ACCEPTED,
            message: format!("bound to {wns}/{wname}"),
            targets: t.clone(),
        },
        Some(((wns, wname), Some(refusal))) => {
            let why = match refusal {
                Refusal::NotFound => "was not found",
                Refusal::NotReady => "has no ready pod",
                Refusal::UnsupportedTrafficType => "does not accept service traffic",
                Refusal::AttachmentDenied => "does not allow attachment from this namespace",
            };
            TargetOutcome {
                targets: t.clone(),
                ..TargetOutcome::new(
                    ancestor,
                    reason::ANCESTOR_NOT_BOUND,
                    format!(
                        "Service {ns}/{name} is not bound to a waypoint (waypoint {wns}/{wname} {why})"
                    ),
                )
            }
        }
        None => TargetOutcome {
            targets: t.clone(),
            ..TargetOutcome::new(
                ancestor,
                reason::ANCESTOR_NOT_BOUND,
                format!("Service {ns}/{name} is not bound to a waypoint"),
            )
        },
    }
}

/// A ServiceEntry target: each of its hosts, as a Service by hostname; bound when the entry has a waypoint.
fn service_entry(ctx: &Ctx<'_>, ancestor: String, ns: &str, name: &str) -> TargetOutcome {
    let key = (ns.to_owned(), name.to_owned());
    let Some(se) = ctx.index.service_entries.get(&key) else {
        return TargetOutcome::new(
            ancestor,
            reason::TARGET_NOT_FOUND,
            format!("ServiceEntry {ns}/{name} was not found"),
        );
    };
    let targets: Vec<PolicyTarget> = se
        .spec
        .hosts
        .iter()
        .filter(|h| !h.contains('*'))
        .map(|h| target(policy_target::Kind::Service, ns, h, 0))
        .collect();
    match ctx.bindings.service_entries.get(&key) {
        Some(b) if b.outcome.is_ok() => TargetOutcome {
            ancestor,
            bound: true,
            reason: reason::ACCEPTED,
            message: format!("bound to {}/{}", b.waypoint.0, b.waypoint.1),
            targets,
        },
        _ => TargetOutcome {
            targets,
            ..TargetOutcome::new(
                ancestor,
                reason::ANCESTOR_NOT_BOUND,
                format!("ServiceEntry {ns}/{name} is not bound to a waypoint"),
            )
        },
    }
}

/// One `targetRef(s)` entry of an AuthorizationPolicy or RequestAuthentication in `policy_ns`.
pub fn istio_target(
    ctx: &Ctx<'_>,
    policy_ns: &str,
    path: &str,
    t: &PolicyTargetReference,
) -> TargetOutcome {
    let anc = ancestor(&t.kind, &t.group, policy_ns, &t.name);
    if t.name.is_empty() {
        return TargetOutcome::new(anc, reason::INVALID, format!("{path}.name: must be set"));
    }
    if t.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
        return TargetOutcome::new(
            anc,
            reason::INVALID,
            format!(
                "{path}.namespace: must not be set; cross namespace referencing is not supported"
            ),
        );
    }
    let name = t.name.as_str();
    match (t.group.as_str(), t.kind.as_str()) {
        (GATEWAY_GROUP, "Gateway") => gateway(ctx, anc, policy_ns, name, 0),
        ("" | "core", "Service") => service(ctx, anc, policy_ns, name, 0),
        ("networking.istio.io", "ServiceEntry") => service_entry(ctx, anc, policy_ns, name),
        (GATEWAY_GROUP, "GatewayClass") => {
            if policy_ns != ctx.cfg.root_namespace {
                return TargetOutcome::new(
                    anc,
                    reason::INVALID,
                    format!(
                        "{path}: a GatewayClass target is only allowed in the root namespace ({}), for mesh-wide waypoint defaults",
                        ctx.cfg.root_namespace
                    ),
                );
            }
            if !WAYPOINT_CLASSES.contains(&name) {
                return TargetOutcome::new(
                    anc,
                    reason::TARGET_NOT_FOUND,
                    format!(
                        "GatewayClass {name} is not a waypoint class ({})",
                        WAYPOINT_CLASSES.join(", ")
                    ),
                );
            }
            TargetOutcome {
                ancestor: anc,
                bound: true,
                reason: reason::ACCEPTED,
                message: format!("bound to every waypoint of GatewayClass {name}"),
                targets: vec![target(policy_target::Kind::GatewayClass, "", name, 0)],
            }
        }
        (group, kind) => TargetOutcome::new(
            anc,
            reason::INVALID,
            format!(
                "{path}: targetRef must be to one of Gateway ({GATEWAY_GROUP}), Service (core), ServiceEntry (networking.istio.io) or GatewayClass ({GATEWAY_GROUP}) but was {group}/{kind}"
            ),
        ),
    }
}

/// One `targetRefs` entry of a RateLimitPolicy in `policy_ns`: a waypoint Gateway, a Service (`sectionName`: a
/// port name), or an HTTPRoute/GRPCRoute (`sectionName`: a rule name; without it, every rule).
pub fn rate_limit_target(
    ctx: &Ctx<'_>,
    policy_ns: &str,
    path: &str,
    t: &RateLimitTargetRef,
) -> TargetOutcome {
    let anc = ancestor(&t.kind, &t.group, policy_ns, &t.name);
    if t.name.is_empty() {
        return TargetOutcome::new(anc, reason::INVALID, format!("{path}.name: must be set"));
    }
    let name = t.name.as_str();
    let section = t.section_name.as_deref().filter(|s| !s.is_empty());
    match (t.group.as_str(), t.kind.as_str()) {
        (GATEWAY_GROUP, "Gateway") => match section {
            None => gateway(ctx, anc, policy_ns, name, 0),
            Some(_) => TargetOutcome::new(
                anc,
                reason::INVALID,
                format!(
                    "{path}.sectionName: not supported for a waypoint Gateway (it has a single listener)"
                ),
            ),
        },
        ("" | "core", "Service") => {
            let svc = ctx
                .index
                .services
                .get(&(policy_ns.to_owned(), name.to_owned()));
            let port = match (section, svc) {
                // No port, or no Service (which `service` reports).
                (None, _) | (_, None) => 0,
                (Some(port_name), Some(svc)) => {
                    let port = svc
                        .spec
                        .as_ref()
                        .and_then(|s| s.ports.as_ref())
                        .and_then(|ps| ps.iter().find(|p| p.name.as_deref() == Some(port_name)))
                        .and_then(|p| u32::try_from(p.port).ok());
                    let Some(port) = port else {
                        return TargetOutcome::new(
                            anc,
                            reason::TARGET_NOT_FOUND,
                            format!("Service {policy_ns}/{name} has no port named {port_name:?}"),
                        );
                    };
                    port
                }
            };
            service(ctx, anc, policy_ns, name, port)
        }
        (GATEWAY_GROUP, kind @ ("HTTPRoute" | "GRPCRoute")) => {
            route(ctx, anc, policy_ns, kind, name, section)
        }
        (group, kind) => TargetOutcome::new(
            anc,
            reason::INVALID,
            format!(
                "{path}: must be a Gateway, HTTPRoute or GRPCRoute ({GATEWAY_GROUP}) or a Service (core), not {group}/{kind}"
            ),
        ),
    }
}

/// A route target: the rule named `section`, or the whole route; bound when some waypoint gets the route.
fn route(
    ctx: &Ctx<'_>,
    anc: String,
    ns: &str,
    kind: &str,
    name: &str,
    section: Option<&str>,
) -> TargetOutcome {
    let key = (ns.to_owned(), name.to_owned());
    let (kind_name, rule_names): (&str, Option<Vec<Option<&str>>>) = if kind == "HTTPRoute" {
        (
            "httproute",
            ctx.index
                .http_routes
                .get(&key)
                .map(|r| r.spec.rules.iter().map(|r| r.name.as_deref()).collect()),
        )
    } else {
        (
            "grpcroute",
            ctx.index
                .grpc_routes
                .get(&key)
                .map(|r| r.spec.rules.iter().map(|r| r.name.as_deref()).collect()),
        )
    };
    let Some(rule_names) = rule_names else {
        return TargetOutcome::new(
            anc,
            reason::TARGET_NOT_FOUND,
            format!("{kind} {ns}/{name} was not found"),
        );
    };
    let resource = match section {
        None => format!("{ns}/{kind_name}/{name}"),
        Some(rule) => match rule_names.iter().position(|n| *n == Some(rule)) {
            Some(i) => format!("{ns}/{kind_name}/{name}/{i}"),
            None => {
                return TargetOutcome::new(
                    anc,
                    reason::TARGET_NOT_FOUND,
                    format!("{kind} {ns}/{name} has no rule named {rule:?}"),
                );
            }
        },
    };
    let waypoints: Vec<String> = ctx
        .route_scopes
        .iter()
        .filter(|(_, names)| names.iter().any(|n| super::route_matches(&resource, n)))
        .map(|((wns, w), _)| format!("{wns}/{w}"))
        .collect();
    let t = vec![target(policy_target::Kind::Route, ns, &resource, 0)];
    if waypoints.is_empty() {
        let what = if ctx
            .routes
            .iter()
            .any(|r| super::route_matches(&resource, r))
        {
            "is not served by any waypoint"
        } else {
            "has no rule attached to a waypoint"
        };
        return TargetOutcome {
            targets: t.clone(),
            ..TargetOutcome::new(
                anc,
                reason::ANCESTOR_NOT_BOUND,
                format!("{kind} {ns}/{name} {what}"),
            )
        };
    }
    TargetOutcome {
        ancestor: anc,
        bound: true,
        reason: reason::ACCEPTED,
        message: format!("bound to {}", waypoints.join(", ")),
        targets: t.clone(),
    }
}
