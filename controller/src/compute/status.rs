//! The `status` Kubernetes would hold for the objects the controller acts on, keyed `<kind>/<ns>/<name>` (kind in
//! lower case): waypoint Gateways (`Accepted`, `Programmed`, listener conditions, `addresses`), routes
//! (`status.parents`, from [`super::routes`]) and Services/pods that ask for a waypoint (`istio.io/WaypointBound`).
//! No `lastTransitionTime`: the output is a pure function of the input.

use std::collections::BTreeMap;

use ambit_proto::workload::gateway_address;
use serde_json::{Value, json};

use super::ip_from_bytes;
use super::routes::GATEWAY_GROUP;
use super::waypoint::{Bindings, GatewayCheck, INVALID_LISTENERS, Target, check_gateway};
use crate::index::{Index, Name};

pub const WAYPOINT_BOUND: &str = "istio.io/WaypointBound";

/// One condition.
pub fn condition(kind: &str, status: bool, reason: &str, message: &str) -> Value {
    json!({
        "type": kind,
        "status": if status { "True" } else { "False" },
        "reason": reason,
        "message": message,
    })
}

fn supported_kinds() -> Value {
    json!([
        {"group": GATEWAY_GROUP, "kind": "HTTPRoute"},
        {"group": GATEWAY_GROUP, "kind": "GRPCRoute"},
    ])
}

/// Status of every Gateway of a waypoint class.
pub fn gateways(
    index: &Index,
    bindings: &Bindings,
    attached: &BTreeMap<Name, u32>,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (key, gw) in &index.gateways {
        let (ns, name) = key;
        let status = match check_gateway(gw) {
            GatewayCheck::NotWaypoint => continue,
            GatewayCheck::InvalidListeners => {
                let listeners: Vec<Value> = gw
                    .spec
                    .listeners
                    .iter()
                    .map(|l| {
                        json!({
                            "name": l.name,
                            "supportedKinds": supported_kinds(),
                            "attachedRoutes": 0,
                            "conditions": [
                                condition("Accepted", false, "UnsupportedProtocol", INVALID_LISTENERS),
                                condition("Programmed", false, "Invalid", INVALID_LISTENERS),
                            ],
                        })
                    })
                    .collect();
                json!({
                    "conditions": [
                        condition("Accepted", false, "ListenersNotValid", INVALID_LISTENERS),
                        condition("Programmed", false, "Invalid", INVALID_LISTENERS),
                    ],
                    "listeners": listeners,
                })
            }
            GatewayCheck::Valid => {
                let Some(wp) = bindings.waypoints.get(key) else {
                    continue;
                };
                let address = match &wp.address.destination {
                    Some(gateway_address::Destination::Hostname(h)) => {
                        json!({"type": "Hostname", "value": h.hostname})
                    }
                    Some(gateway_address::Destination::Address(a)) => {
                        json!({"type": "IPAddress", "value": ip_from_bytes(&a.address).map(|ip| ip.to_string())})
                    }
                    None => Value::Null,
                };
                let programmed = if wp.ready {
                    condition("Programmed", true, "Programmed", "Resource programmed")
                } else {
                    condition(
                        "Programmed",
                        false,
                        "Pending",
                        &format!(
                            "Waiting for a ready pod labelled gateway.networking.k8s.io/gateway-name={name}"
                        ),
                    )
                };
                let listener = gw.spec.listeners.first().map_or("", |l| l.name.as_str());
                json!({
                    "addresses": [address],
                    "conditions": [
                        condition("Accepted", true, "Accepted", "Resource accepted"),
                        programmed.clone(),
                    ],
                    "listeners": [{
                        "name": listener,
                        "supportedKinds": supported_kinds(),
                        "attachedRoutes": attached.get(key).copied().unwrap_or(0),
                        "conditions": [
                            condition("Accepted", true, "Accepted", "No errors found"),
                            programmed,
                            condition("ResolvedRefs", true, "ResolvedRefs", "No errors found"),
                        ],
                    }],
                })
            }
        };
        out.insert(format!("gateway/{ns}/{name}"), status);
    }
    out
}

/// `istio.io/WaypointBound` for every Service and pod that asks for a waypoint.
pub fn waypoint_bound(bindings: &Bindings) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let sets = [
        ("service", Target::Service, &bindings.services),
        ("pod", Target::Workload, &bindings.pods),
        ("serviceentry", Target::Service, &bindings.service_entries),
    ];
    for (kind, target, set) in sets {
        for ((ns, name), b) in set {
            let (ok, reason, message) = b.condition(target);
            out.insert(
                format!("{kind}/{ns}/{name}"),
                json!({"conditions": [condition(WAYPOINT_BOUND, ok, reason, &message)]}),
            );
        }
    }
    out
}
