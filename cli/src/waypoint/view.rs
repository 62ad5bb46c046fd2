//! What `list` and `status` show, read from Gateway objects (with the status the controller computed merged in)
//! and from the `istio.io/WaypointBound` conditions of the Services, ServiceEntries and pods that ask for a
//! waypoint; and the tables themselves, laid out as istioctl's `tabwriter` does (columns padded to the widest
//! cell plus 5 spaces, the last column unpadded).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value};

/// The GatewayClasses whose Gateways are waypoints (the controller's list).
pub const WAYPOINT_CLASSES: [&str; 3] = [
    "istio-waypoint",
    "ambit-waypoint",
    "istio-agentgateway-waypoint",
];
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
pub const REVISION: &str = "istio.io/rev";
pub const FOR_SERVICE_ACCOUNT: &str = "istio.io/for-service-account";
pub const WAYPOINT_BOUND: &str = "istio.io/WaypointBound";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Condition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl Condition {
    fn from_value(v: &Value) -> Condition {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        Condition {
            type_: s("type"),
            status: s("status"),
            reason: s("reason"),
            message: s("message"),
        }
    }
}

/// One waypoint Gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Waypoint {
    pub namespace: String,
    pub name: String,
    pub class: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub conditions: Vec<Condition>,
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

impl Waypoint {
    /// The Gateway `obj` if it is of a waypoint class.
    pub fn from_object(obj: &Value) -> Option<Waypoint> {
        if obj["kind"] != "Gateway" {
            return None;
        }
        let class = obj["spec"]["gatewayClassName"].as_str().unwrap_or_default();
        if !WAYPOINT_CLASSES.contains(&class) {
            return None;
        }
        let meta = &obj["metadata"];
        Some(Waypoint {
            namespace: meta["namespace"].as_str().unwrap_or("default").to_owned(),
            name: meta["name"].as_str().unwrap_or_default().to_owned(),
            class: class.to_owned(),
            labels: string_map(&meta["labels"]),
            annotations: string_map(&meta["annotations"]),
            conditions: obj["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(Condition::from_value)
                .collect(),
        })
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    pub fn programmed(&self) -> bool {
        self.condition("Programmed")
            .is_some_and(|c| c.status == "True")
    }

    /// istioctl's REVISION: `istio.io/rev`, `default` when unlabelled.
    pub fn revision(&self) -> &str {
        self.labels.get(REVISION).map_or("default", String::as_str)
    }

    /// istioctl's TRAFFIC TYPE: `istio.io/waypoint-for`, `none` when unlabelled (the controller then applies the
    /// class default, `service`).
    pub fn traffic_type(&self) -> &str {
        self.labels.get(WAYPOINT_FOR).map_or("none", String::as_str)
    }
}

/// The waypoints among `objects`, sorted by namespace and name.
pub fn waypoints(objects: &[Value]) -> Vec<Waypoint> {
    let mut out: Vec<Waypoint> = objects.iter().filter_map(Waypoint::from_object).collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// An object that asked for a waypoint, and whether it got it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// `Service demo/echo`.
    pub object: String,
    /// `ns/name` of the waypoint it asked for.
    pub waypoint: String,
    pub bound: bool,
    pub reason: String,
    pub message: String,
}

/// The `istio.io/WaypointBound` conditions of a `/debug/status` map (`<kind>/<ns>/<name>` → status).
pub fn bindings(status: &Map<String, Value>) -> Vec<Binding> {
    let mut out = Vec::new();
    for (key, s) in status {
        let mut parts = key.splitn(3, '/');
        let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let kind = match kind {
            "service" => "Service",
            "pod" => "Pod",
            "serviceentry" => "ServiceEntry",
            _ => continue,
        };
        for c in s["conditions"].as_array().into_iter().flatten() {
            let c = Condition::from_value(c);
            if c.type_ != WAYPOINT_BOUND {
                continue;
            }
            // The controller's messages name the waypoint: `waypoint demo/wp has no ready pod`.
            let words: Vec<&str> = c.message.split_whitespace().collect();
            let Some(waypoint) = words
                .windows(2)
                .find(|w| w[0] == "waypoint" && w[1].contains('/'))
                .map(|w| w[1].trim_end_matches(['.', ',', ':']).to_owned())
            else {
                continue;
            };
            out.push(Binding {
                object: format!("{kind} {ns}/{name}"),
                waypoint,
                bound: c.status == "True",
                reason: c.reason,
                message: c.message,
            });
        }
    }
    out.sort_by(|a, b| (&a.waypoint, &a.object).cmp(&(&b.waypoint, &b.object)));
    out
}

/// Rows laid out as Go's `tabwriter.NewWriter(w, 0, 8, 5, ' ', 0)`: every column but the last padded to its
/// widest cell plus 5 spaces.
pub fn tabwrite(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter(|r| i + 1 < r.len())
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                let pad = widths[i] + 5 - cell.chars().count();
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}

/// `ambit waypoint list`: istioctl's columns (`NAMESPACE` with `-A`). `status_known` is false when the
/// controller's status could not be read: PROGRAMMED is then `Unknown`.
pub fn render_list(wps: &[Waypoint], all_namespaces: bool, status_known: bool) -> String {
    if wps.is_empty() {
        return "No waypoints found.\n".to_owned();
    }
    let mut header = vec!["NAME", "REVISION", "TRAFFIC TYPE", "PROGRAMMED"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut rows = vec![header.into_iter().map(str::to_owned).collect::<Vec<_>>()];
    for wp in wps {
        let programmed = match wp.condition("Programmed") {
            Some(c) => c.status.clone(),
            None if status_known => "False".to_owned(),
            None => "Unknown".to_owned(),
        };
        let mut row = vec![
            wp.name.clone(),
            wp.revision().to_owned(),
            wp.traffic_type().to_owned(),
            programmed,
        ];
        if all_namespaces {
            row.insert(0, wp.namespace.clone());
        }
        rows.push(row);
    }
    tabwrite(&rows)
}

/// What to do about a refused binding, by the controller's reason; `exists` says whether the Gateway does.
fn fix_for(reason: &str, waypoint: &str, exists: bool) -> String {
    let (ns, name) = waypoint.split_once('/').unwrap_or(("default", waypoint));
    match reason {
        "UnsupportedTrafficType" => format!(
            "label the Gateway istio.io/waypoint-for with the traffic it should take (`ambit waypoint apply -n {ns} --name {name} --for all`)"
        ),
        "AttachmentDenied" => {
            "allow the object's namespace in the Gateway listener's allowedRoutes.namespaces".to_owned()
        }
        "WaypointIsNotReady" if !exists => {
            format!("apply it: `ambit waypoint apply -n {ns} --name {name}`")
        }
        "WaypointIsNotReady" => "until the waypoint has a ready pod, traffic goes direct without its L7 policy: see its pod (`ambit local status`, `ambit local logs`)".to_owned(),
        _ => "see the object's status (`ambit local get`)".to_owned(),
    }
}

/// `ambit waypoint status`: istioctl's table (the `Programmed` condition of each waypoint; `NAMESPACE` unless
/// one namespace was asked for), then why each waypoint is or is not used: its own state and the
/// `istio.io/WaypointBound` verdict of every object that asks for it.
pub fn render_status(
    wps: &[Waypoint],
    bindings: &[Binding],
    show_namespace: bool,
    status_known: bool,
) -> String {
    if wps.is_empty() && bindings.is_empty() {
        return "No waypoints found.\n".to_owned();
    }
    let mut header = vec!["NAME", "STATUS", "TYPE", "REASON", "MESSAGE"];
    if show_namespace {
        header.insert(0, "NAMESPACE");
    }
    let mut rows = vec![header.into_iter().map(str::to_owned).collect::<Vec<_>>()];
    for wp in wps {
        let c = wp
            .condition("Programmed")
            .or(wp.conditions.last())
            .cloned()
            .unwrap_or_else(|| Condition {
                type_: "Programmed".into(),
                status: if status_known { "False" } else { "Unknown" }.into(),
                reason: String::new(),
                message: if status_known {
                    "the controller has no status for it".into()
                } else {
                    "the controller's status could not be read".into()
                },
            });
        let mut row = vec![wp.name.clone(), c.status, c.type_, c.reason, c.message];
        if show_namespace {
            row.insert(0, wp.namespace.clone());
        }
        rows.push(row);
    }
    let mut out = if wps.is_empty() {
        String::new()
    } else {
        tabwrite(&rows)
    };
    let mut keys: Vec<String> = wps.iter().map(Waypoint::key).collect();
    for b in bindings {
        if !keys.contains(&b.waypoint) {
            keys.push(b.waypoint.clone());
        }
    }
    let mut why = String::new();
    for key in &keys {
        let wp = wps.iter().find(|w| &w.key() == key);
        let mine: Vec<&Binding> = bindings.iter().filter(|b| &b.waypoint == key).collect();
        let used: Vec<&str> = mine
            .iter()
            .filter(|b| b.bound)
            .map(|b| b.object.as_str())
            .collect();
        match wp {
            None => {
                let _ = writeln!(
                    why,
                    "{key}: no such waypoint Gateway, yet asked for by {} object(s)",
                    mine.len()
                );
            }
            Some(wp) if status_known && !wp.programmed() => {
                let c = wp.condition("Programmed").cloned().unwrap_or_default();
                let _ = writeln!(
                    why,
                    "{key}: not programmed ({}): objects bound to it get no waypoint, and their traffic goes direct without its L7 policy",
                    if c.reason.is_empty() {
                        "no status".to_owned()
                    } else {
                        format!("{}: {}", c.reason, c.message)
                    }
                );
            }
            Some(wp) => {
                if let Some(sa) = wp.annotations.get(FOR_SERVICE_ACCOUNT) {
                    let _ = writeln!(
                        why,
                        "{key}: for the pods of service account {}/{sa} only",
                        wp.namespace
                    );
                }
                if mine.is_empty() && status_known {
                    let _ = writeln!(
                        why,
                        "{key}: nothing uses it: label a namespace, Service or pod istio.io/use-waypoint={}",
                        wp.name
                    );
                }
            }
        }
        if !used.is_empty() {
            let _ = writeln!(why, "{key}: used by {}", used.join(", "));
        }
        for b in mine.iter().filter(|b| !b.bound) {
            let _ = writeln!(
                why,
                "{key}: not used by {}: {}: {}",
                b.object, b.reason, b.message
            );
            let _ = writeln!(why, "    fix: {}", fix_for(&b.reason, key, wp.is_some()));
        }
    }
    if !why.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&why);
    }
    out
}
