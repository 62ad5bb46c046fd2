//! L7 policy for waypoints: AuthorizationPolicy with `targetRef(s)` → `ambit.waypoint.AuthorizationPolicy`
//! ([`authz`]), RequestAuthentication → `ambit.waypoint.RequestAuthentication` ([`request_authn`]) and Ambit's
//! `RateLimitPolicy` → `ambit.waypoint.RateLimitPolicy` ([`rate_limit`]), one resource `<ns>/<name>` per object,
//! each with its targets resolved ([`targets`]), the `WaypointAccepted` condition in its status, and which
//! waypoint gets which (`scopes`).
//!
//! **Which tier enforces what** (spec §2.3, istiod's `convertAuthorizationPolicy`): an AuthorizationPolicy with
//! `targetRef(s)` is the waypoint's; ztunnel never sees it ([`super::authz`] skips it) and it gets no
//! `ZtunnelAccepted` condition, only `WaypointAccepted`. A policy with a selector or none is ztunnel's and gets
//! `ZtunnelAccepted` (`Accepted` "attached to ztunnel", or `UnsupportedValue` with what the fail-closed
//! conversion changed), never `WaypointAccepted`.
//!
//! **`WaypointAccepted`** follows istiod's `WaypointPolicyStatusCollection` and `flattenConditions`
//! (`pilot/pkg/serviceregistry/kube/controller/ambient/policies.go`, `pilot/pkg/model/service.go`): each target
//! is `Accepted` ("bound to ns/waypoint"), `TargetNotFound`, `AncestorNotBound` (a Service with no waypoint) or
//! `Invalid` (a kind or reference Istio's validation refuses); one target gives its own condition, several give
//! `Accepted` (all bound), `PartiallyInvalid` (some) or `Invalid` (none) with the unbound ones listed. Problems
//! inside the policy (a rule field that is invalid or that the waypoint cannot enforce) turn `Accepted` into
//! `PartiallyInvalid` and are listed with their field path; an object that cannot be converted at all is
//! `Invalid` and not sent.
//!
//! **Fail closed.** The manifest source has no admission webhook, so invalid values do reach us. An invalid
//! field drops what makes the policy *less* restrictive to drop: an ALLOW (or AUDIT) rule with one is dropped
//! whole (it then allows nothing); a DENY (or CUSTOM) rule is kept without that field, which only widens what it
//! denies (or sends to the ext_authz provider). A CUSTOM policy whose provider cannot be resolved denies every
//! request it targets, as istiod's `rbacDefaultDenyAll` does.
//!
//! **Scopes.** A waypoint `(ns, gw)` gets the policies that target its Gateway, its GatewayClass (root-namespace
//! policies), a Service it serves per WDS (`waypoint` or `weighted_waypoints`, as routes are scoped in
//! [`super::route_scopes`]) and, for rate limits, a route rule in its route scope. Unscoped xDS clients get all.

pub mod authz;
pub mod mesh_config;
pub mod rate_limit;
pub mod request_authn;
pub mod targets;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use ambit_proto::waypoint::{
    AuthorizationPolicy, PolicyTarget, RateLimitPolicy, RequestAuthentication, policy_target,
};
use ambit_proto::workload::Address;
use serde_json::{Value, json};

use super::ComputeConfig;
use super::route_scopes::{self, RouteScopes};
use super::status::condition;
use super::waypoint::Bindings;
use crate::index::{Index, Name};

pub const WAYPOINT_ACCEPTED: &str = "WaypointAccepted";
pub const ZTUNNEL_ACCEPTED: &str = "ZtunnelAccepted";

/// istiod's `WaypointPolicyReason*`.
pub mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const INVALID: &str = "Invalid";
    pub const PARTIALLY_INVALID: &str = "PartiallyInvalid";
    pub const ANCESTOR_NOT_BOUND: &str = "AncestorNotBound";
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
}

/// What the waypoints get, and the status of the objects it came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WaypointPolicies {
    pub authorizations: BTreeMap<String, AuthorizationPolicy>,
    pub request_authentications: BTreeMap<String, RequestAuthentication>,
    pub rate_limits: BTreeMap<String, RateLimitPolicy>,
    pub authorization_scopes: RouteScopes,
    pub request_authentication_scopes: RouteScopes,
    pub rate_limit_scopes: RouteScopes,
    /// `<kind>/<ns>/<name>` → status, as in [`super::Resources::status`].
    pub status: BTreeMap<String, Value>,
}

/// What the conversions need besides the object itself.
pub struct Ctx<'a> {
    pub index: &'a Index,
    pub cfg: &'a ComputeConfig,
    pub bindings: &'a Bindings,
    /// The computed routes' scopes (rate limits on route rules).
    pub route_scopes: &'a RouteScopes,
    /// Names of the computed routes (rule resources).
    pub routes: &'a BTreeSet<String>,
}

/// Converts every waypoint policy object of the index. `addresses` are the computed WDS addresses (to know
/// which waypoint serves which Service).
pub fn compute_all(ctx: &Ctx<'_>, addresses: &BTreeMap<String, Address>) -> WaypointPolicies {
    let mut out = WaypointPolicies::default();
    let providers = mesh_config::Providers::from_index(ctx.index, ctx.cfg);
    for ((ns, name), ap) in &ctx.index.authorization_policies {
        let Some(c) = authz::convert(ctx, &providers, ns, name, ap) else {
            continue;
        };
        out.status.insert(
            format!("authorizationpolicy/{ns}/{name}"),
            json!({ "conditions": [c.condition] }),
        );
        if let Some(p) = c.policy {
            out.authorizations.insert(format!("{ns}/{name}"), p);
        }
    }
    for ((ns, name), ra) in &ctx.index.request_authentications {
        let c = request_authn::convert(ctx, ns, name, ra);
        out.status.insert(
            format!("requestauthentication/{ns}/{name}"),
            json!({ "conditions": [c.condition] }),
        );
        if let Some(p) = c.policy {
            out.request_authentications
                .insert(format!("{ns}/{name}"), p);
        }
    }
    for ((ns, name), rl) in &ctx.index.rate_limit_policies {
        let c = rate_limit::convert(ctx, ns, name, rl);
        out.status.insert(
            format!("ratelimitpolicy/{ns}/{name}"),
            json!({ "conditions": [c.condition] }),
        );
        if let Some(p) = c.policy {
            out.rate_limits.insert(format!("{ns}/{name}"), p);
        }
    }
    let scoper = Scoper::new(ctx, addresses);
    out.authorization_scopes = scoper.scopes(
        out.authorizations
            .iter()
            .map(|(k, p)| (k.as_str(), p.targets.as_slice())),
    );
    out.request_authentication_scopes = scoper.scopes(
        out.request_authentications
            .iter()
            .map(|(k, p)| (k.as_str(), p.targets.as_slice())),
    );
    out.rate_limit_scopes = scoper.scopes(
        out.rate_limits
            .iter()
            .map(|(k, p)| (k.as_str(), p.targets.as_slice())),
    );
    out
}

/// Finds the waypoints a policy's targets concern.
struct Scoper<'a> {
    /// Waypoint → its GatewayClass.
    classes: BTreeMap<&'a Name, &'a str>,
    /// Service `(ns, hostname)` → the waypoints serving it (per WDS).
    serving: BTreeMap<(String, String), BTreeSet<Name>>,
    route_scopes: &'a RouteScopes,
}

impl<'a> Scoper<'a> {
    fn new(ctx: &Ctx<'a>, addresses: &BTreeMap<String, Address>) -> Self {
        let classes = ctx
            .bindings
            .waypoints
            .keys()
            .filter_map(|k| {
                let gw = ctx.index.gateways.get(k)?;
                Some((k, gw.spec.gateway_class_name.as_str()))
            })
            .collect();
        Scoper {
            classes,
            serving: route_scopes::service_waypoints(addresses, &ctx.bindings.waypoints),
            route_scopes: ctx.route_scopes,
        }
    }

    fn waypoints_of(&self, t: &PolicyTarget) -> BTreeSet<Name> {
        use policy_target::Kind;
        match Kind::try_from(t.kind) {
            Ok(Kind::Gateway) => {
                let key = (t.namespace.clone(), t.name.clone());
                self.classes
                    .contains_key(&key)
                    .then_some(key)
                    .into_iter()
                    .collect()
            }
            Ok(Kind::GatewayClass) => self
                .classes
                .iter()
                .filter(|(_, class)| **class == t.name)
                .map(|(k, _)| (*k).clone())
                .collect(),
            Ok(Kind::Service) => self
                .serving
                .get(&(t.namespace.clone(), t.name.clone()))
                .cloned()
                .unwrap_or_default(),
            Ok(Kind::Route) => self
                .route_scopes
                .iter()
                .filter(|(_, names)| names.iter().any(|n| route_matches(&t.name, n)))
                .map(|(k, _)| k.clone())
                .collect(),
            Err(_) => BTreeSet::new(),
        }
    }

    fn scopes<'p>(
        &self,
        policies: impl Iterator<Item = (&'p str, &'p [PolicyTarget])>,
    ) -> RouteScopes {
        let mut out = RouteScopes::new();
        for (name, targets) in policies {
            for t in targets {
                for w in self.waypoints_of(t) {
                    out.entry(w).or_default().insert(name.to_owned());
                }
            }
        }
        out
    }
}

/// `target` names route rule `rule`, or the route (`<ns>/<kind>/<name>`) it belongs to.
pub fn route_matches(target: &str, rule: &str) -> bool {
    rule == target
        || rule
            .strip_prefix(target)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|index| !index.is_empty() && !index.contains('/'))
}

/// The `ZtunnelAccepted` condition of every AuthorizationPolicy ztunnel is responsible for (no `targetRef(s)`),
/// as istiod writes it: `Accepted` "attached to ztunnel" when sent unchanged, `UnsupportedValue` with what the
/// conversion changed (`True` when sent anyway, `False` when not sent). `notes` and `sent` are
/// [`super::authz::Policies`]' status notes and resources.
pub fn ztunnel_status<T>(
    index: &Index,
    notes: &BTreeMap<String, String>,
    sent: &BTreeMap<String, T>,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for ((ns, name), ap) in &index.authorization_policies {
        if ap.spec.target_ref.is_some() || !ap.spec.target_refs.is_empty() {
            continue;
        }
        let key = format!("{ns}/{name}");
        let bound = sent.contains_key(&key);
        let c = match notes.get(&key) {
            None => condition(ZTUNNEL_ACCEPTED, bound, "Accepted", "attached to ztunnel"),
            Some(note) => condition(ZTUNNEL_ACCEPTED, bound, "UnsupportedValue", note),
        };
        out.insert(
            format!("authorizationpolicy/{ns}/{name}"),
            json!({ "conditions": [c] }),
        );
    }
    out
}

/// The flattened `WaypointAccepted` condition of a policy from its targets' outcomes (istiod's
/// `flattenConditions`, with the reason of each unbound target kept in the message) and the problems found in
/// its body (which make an accepted policy `PartiallyInvalid`).
pub fn waypoint_condition(outcomes: &[targets::TargetOutcome], problems: &[String]) -> Value {
    let (status, mut why, mut message) = match outcomes {
        [] => (
            false,
            reason::INVALID,
            "targetRefs: at least one target is required".to_owned(),
        ),
        [one] => (one.bound, one.reason, one.message.clone()),
        many => {
            let bound: Vec<&str> = many
                .iter()
                .filter(|o| o.bound)
                .map(|o| o.message.as_str())
                .collect();
            let unbound: Vec<String> = many
                .iter()
                .filter(|o| !o.bound)
                .map(|o| format!("{} ({})", o.ancestor, o.message))
                .collect();
            let why = match (bound.is_empty(), unbound.is_empty()) {
                (false, true) => reason::ACCEPTED,
                (false, false) => reason::PARTIALLY_INVALID,
                (true, _) => reason::INVALID,
            };
            let mut parts: Vec<String> = bound.iter().map(|s| (*s).to_owned()).collect();
            parts.dedup();
            if !unbound.is_empty() {
                parts.push(format!("Invalid targetRefs: {}", unbound.join(", ")));
            }
            (!bound.is_empty(), why, parts.join("; "))
        }
    };
    if !problems.is_empty() {
        if why == reason::ACCEPTED {
            why = reason::PARTIALLY_INVALID;
        }
        message = format!("{message}; {}", problems.join("; "));
    }
    condition(WAYPOINT_ACCEPTED, status, why, &message)
}

/// `WaypointAccepted=False, Invalid` with every fatal problem.
pub fn invalid_condition(problems: &[String]) -> Value {
    condition(
        WAYPOINT_ACCEPTED,
        false,
        reason::INVALID,
        &problems.join("; "),
    )
}
