//! L4 policies that keep traffic from skipping a waypoint, attached to the destination workloads (so the
//! destination ztunnel, upstream's or ours, enforces them; no new wire field).
//!
//! - **`ambit.dev/waypoint-required: "true"`** on a namespace, a Service or a pod (the most specific label wins;
//!   `"false"` opts out): a pod whose traffic is meant to pass a waypoint — its own (workload binding) or one of
//!   its Services' (service binding) — gets a DENY policy refusing every peer that is not one of those
//!   waypoints' identities. For a service binding only the Service's target ports are guarded; for a workload
//!   binding every port is. The binding need not have succeeded: a waypoint that is missing, not ready or
//!   refuses the attachment still guards its pods, so while it is down traffic fails closed instead of going
//!   direct without L7 policy. Name: `<pod ns>/ambit_waypoint_required_<wns>_<wname>[_…][_ports_<p>-<p>]`.
//! - **`PILOT_AUTO_ALLOW_WAYPOINT_POLICY`** ([`super::ComputeConfig::auto_allow_waypoint_policy`], off by
//!   default): istiod's synthetic `<wns>/istio_allow_waypoint_<wns>_<wname>` ALLOW policy for the identities of
//!   each waypoint a pod is bound to, attached to those pods. Like any ALLOW policy it also means that a peer no
//!   other ALLOW policy admits is refused at the destination.

use std::collections::{BTreeMap, BTreeSet};

use ambit_proto::security::string_match::MatchType;
use ambit_proto::security::{Action, Authorization, Clause, Match, Rule, Scope, StringMatch};

use super::ComputeConfig;
use super::waypoint::{Binding, Bindings};
use crate::index::Name;

/// Namespace, Service or pod label: refuse traffic to the bound pods that does not come from their waypoint.
pub const WAYPOINT_REQUIRED: &str = "ambit.dev/waypoint-required";

/// A Service selecting the pod, as far as the guard cares.
pub struct PodService<'a> {
    pub name: &'a Name,
    pub labels: &'a BTreeMap<String, String>,
    /// The Service's target ports on this pod.
    pub target_ports: Vec<u32>,
}

/// The pod whose policies are being computed.
pub struct PodView<'a> {
    pub name: &'a Name,
    pub labels: &'a BTreeMap<String, String>,
    pub ns_labels: &'a BTreeMap<String, String>,
    pub services: Vec<PodService<'a>>,
}

/// Builds the guard policies while the workloads are computed: one resource per distinct guard, shared by the
/// pods that need the same one.
pub struct Guards<'a> {
    cfg: &'a ComputeConfig,
    bindings: &'a Bindings,
    pub resources: BTreeMap<String, Authorization>,
}

/// The label's verdict, the object's own before its namespace's.
fn required(own: &BTreeMap<String, String>, ns_labels: &BTreeMap<String, String>) -> bool {
    own.get(WAYPOINT_REQUIRED)
        .or_else(|| ns_labels.get(WAYPOINT_REQUIRED))
        .is_some_and(|v| v == "true")
}

impl<'a> Guards<'a> {
    pub fn new(cfg: &'a ComputeConfig, bindings: &'a Bindings) -> Self {
        Guards {
            cfg,
            bindings,
            resources: BTreeMap::new(),
        }
    }

    /// The identities (`<td>/ns/<ns>/sa/<sa>`) of a waypoint; its Gateway name when it is unknown.
    fn identities(&self, (ns, name): &Name) -> Vec<String> {
        let td = &self.cfg.trust_domain;
        let sas = self
            .bindings
            .waypoints
            .get(&(ns.clone(), name.clone()))
            .map_or_else(|| vec![name.clone()], |w| w.identities.clone());
        sas.iter()
            .map(|sa| format!("{td}/ns/{ns}/sa/{sa}"))
            .collect()
    }

    /// Names of the guard policies that apply to the pod, creating the resources on first use.
    pub fn for_pod(&mut self, pod: &PodView<'_>) -> Vec<String> {
        let pod_binding = self.bindings.pods.get(pod.name);
        let service_bindings: Vec<(&PodService<'_>, &Binding)> = pod
            .services
            .iter()
            .filter_map(|s| Some((s, self.bindings.services.get(s.name)?)))
            .collect();
        let mut out = Vec::new();
        // Waypoint-required: which waypoints may reach the pod, and on which ports (None = all).
        let mut waypoints: BTreeSet<&Name> = BTreeSet::new();
        let mut ports: Option<BTreeSet<u32>> = Some(BTreeSet::new());
        if let Some(b) = pod_binding
            && required(pod.labels, pod.ns_labels)
        {
            waypoints.insert(&b.waypoint);
            ports = None;
        }
        for (svc, b) in &service_bindings {
            if required(svc.labels, pod.ns_labels) {
                waypoints.insert(&b.waypoint);
                if let Some(p) = ports.as_mut() {
                    p.extend(&svc.target_ports);
                }
            }
        }
        if !waypoints.is_empty() {
            out.push(self.required_policy(&pod.name.0, &waypoints, ports.as_ref()));
        }
        if self.cfg.auto_allow_waypoint_policy {
            let bound = pod_binding
                .into_iter()
                .chain(service_bindings.iter().map(|(_, b)| *b))
                .filter(|b| b.outcome.is_ok())
                .map(|b| &b.waypoint);
            for wp in bound.collect::<BTreeSet<_>>() {
                out.push(self.allow_policy(wp));
            }
        }
        out
    }

    fn required_policy(
        &mut self,
        ns: &str,
        waypoints: &BTreeSet<&Name>,
        ports: Option<&BTreeSet<u32>>,
    ) -> String {
        let mut name = "ambit_waypoint_required".to_owned();
        for (wns, wname) in waypoints {
            name.push_str(&format!("_{wns}_{wname}"));
        }
        if let Some(ports) = ports {
            let list: Vec<String> = ports.iter().map(u32::to_string).collect();
            name.push_str(&format!("_ports_{}", list.join("-")));
        }
        let key = format!("{ns}/{name}");
        if !self.resources.contains_key(&key) {
            let principals = waypoints
                .iter()
                .flat_map(|w| self.identities(w))
                .map(exact)
                .collect();
            let mut clauses = vec![Clause {
                matches: vec![Match {
                    not_principals: principals,
                    ..Default::default()
                }],
            }];
            if let Some(ports) = ports {
                clauses.push(Clause {
                    matches: vec![Match {
                        destination_ports: ports.iter().copied().collect(),
                        ..Default::default()
                    }],
                });
            }
            self.resources.insert(
                key.clone(),
                Authorization {
                    name,
                    namespace: ns.to_owned(),
                    scope: Scope::WorkloadSelector as i32,
                    action: Action::Deny as i32,
                    rules: vec![Rule { clauses }],
                    ..Default::default()
                },
            );
        }
        key
    }

    fn allow_policy(&mut self, wp: &Name) -> String {
        let (wns, wname) = wp;
        let name = format!("istio_allow_waypoint_{wns}_{wname}");
        let key = format!("{wns}/{name}");
        if !self.resources.contains_key(&key) {
            let principals = self.identities(wp).into_iter().map(exact).collect();
            self.resources.insert(
                key.clone(),
                Authorization {
                    name,
                    namespace: wns.clone(),
                    scope: Scope::WorkloadSelector as i32,
                    action: Action::Allow as i32,
                    rules: vec![Rule {
                        clauses: vec![Clause {
                            matches: vec![Match {
                                principals,
                                ..Default::default()
                            }],
                        }],
                    }],
                    ..Default::default()
                },
            );
        }
        key
    }
}

fn exact(s: String) -> StringMatch {
    StringMatch {
        match_type: Some(MatchType::Exact(s)),
    }
}

#[cfg(test)]
mod tests;
