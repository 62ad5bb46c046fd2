//! When the local mesh and its pods are ready: each pod's probe, a captured pod held by its node's ztunnel, and
//! every ztunnel routing to every pod; `ambit local up` returns only then.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use super::super::net::{GATEWAY, NET_NS};
use super::super::{get, http, kubelet};
use super::{NodeState, Supervisor};

impl Supervisor {
    /// Marks the captured pods that are not ready yet as held once their node's ztunnel has taken them over with
    /// a certificate for their identity (one `/config_dump` per node that has such a pod). A pod released from
    /// the mesh is held by nothing again.
    pub(super) fn check_held(&mut self) {
        let mut dumps: HashMap<String, Option<serde_json::Value>> = HashMap::new();
        for (key, probe) in self.probes.iter_mut() {
            let Some(s) = self.state.pods.get(key) else {
                continue;
            };
            if !s.captured {
                probe.held = false;
                continue;
            }
            if probe.ready {
                continue;
            }
            let Some(node) = self.state.nodes.iter().find(|n| n.name == s.node) else {
                continue;
            };
            let dump = dumps
                .entry(node.name.clone())
                .or_insert_with(|| ztunnel_dump(node));
            let identity = format!(
                "spiffe://{}/ns/{}/sa/{}",
                self.creds.trust_domain, s.namespace, probe.service_account
            );
            probe.held = dump
                .as_ref()
                .is_some_and(|d| kubelet::ztunnel_holds(d, &s.uid, &identity));
        }
    }

    /// Ready: the controller, every ztunnel and every pod process are up.
    pub(super) fn ready(&self) -> bool {
        let controller = http::status_in(NET_NS, SocketAddr::from((GATEWAY, 15014)), "/ready");
        if controller != Some(200) {
            return false;
        }
        let ztunnels = self.state.nodes.iter().all(|n| {
            http::status_in(NET_NS, SocketAddr::from((n.ip, 15021)), "/healthz/ready") == Some(200)
        });
        ztunnels
            && self.pods.values().all(|p| p.child.is_some())
            && self.probes.values().all(|p| p.ready)
            && self.ztunnels_route_to_every_pod()
            && self.waypoints_settled()
    }

    /// Every ztunnel has every pod as a healthy workload: the controller has pushed the pods' readiness, so a
    /// request made right after `up` finds each Service's endpoints.
    fn ztunnels_route_to_every_pod(&self) -> bool {
        self.state.nodes.iter().all(|node| {
            let Some(healthy) = ztunnel_dump(node).map(|d| kubelet::healthy_workloads(&d)) else {
                return false;
            };
            self.state
                .pods
                .values()
                .all(|p| healthy.contains(&(p.namespace.clone(), p.name.clone())))
        })
    }

    /// Every waypoint Gateway of the manifests is programmed (its pod ready and bound) or refused, as the
    /// controller's status says; true when the controller cannot deploy waypoints or predates `/debug/status`.
    fn waypoints_settled(&self) -> bool {
        if self.deploy_dir.is_none() || self.waypoint_gateways.is_empty() {
            return true;
        }
        let addr = SocketAddr::from((GATEWAY, 15014));
        match http::get_in(NET_NS, addr, "/debug/status?kind=gateway") {
            Some((200, body)) => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v.as_object()
                        .map(|m| get::waypoints_settled(m, &self.waypoint_gateways))
                })
                .unwrap_or(false),
            Some(_) => true,
            None => false,
        }
    }
}

/// A node's ztunnel `/config_dump` (its admin port listens on localhost in the node's namespace).
fn ztunnel_dump(node: &NodeState) -> Option<serde_json::Value> {
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, 15000));
    match http::get_in(&node.netns, admin, "/config_dump")? {
        (200, body) => serde_json::from_slice(&body).ok(),
        _ => None,
    }
}
