//! One model of a ztunnel `config_dump`, read from either ztunnel.
//!
//! Upstream ztunnel's `/config_dump` (its `ProxyState` flattened: `workloads`, `services`, `policies`,
//! `stagedServices`; then `staticConfig`, `version`, `config`, `certificates`, and `workloadState` in shared mode)
//! and Ambit's (the same sections, built to the same shape) differ in details this reader absorbs:
//!
//! - sections are lists in current dumps and maps (keyed by address, uid or name) in older upstream ones;
//! - a service's `endpoints` map is keyed by workload uid (Ambit, current upstream) or `uid:address` (older
//!   upstream); the `workloadUid` field inside is what counts;
//! - a waypoint is `{destination, hboneMtlsPort}` (current) or `{destination, port}` (older), its destination a
//!   `<network>/<ip>` or `<namespace>/<hostname>` string;
//! - certificate serial numbers are decimal (upstream and current Ambit) or hexadecimal (older Ambit dumps): see
//!   [`super::certs`];
//! - `workloadState` entries carry `connections` (both ztunnels; older Ambit dumps lack them).
//!
//! Every entry keeps its JSON as read (`raw`), so `-o json|yaml` shows all of it whichever ztunnel wrote it.
//! Only the fields the tables and filters use are interpreted; unknown fields are ignored.

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The five sections istioctl reads, in its order.
pub const SECTIONS: [&str; 5] = [
    "workloads",
    "services",
    "policies",
    "certificates",
    "workloadState",
];

/// A parsed config dump.
#[derive(Debug, Clone, Default)]
pub struct Dump {
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub policies: Vec<Policy>,
    pub certificates: Vec<CertEntry>,
    pub workload_state: Vec<WorkloadState>,
    /// The dump as read.
    pub raw: Value,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub workload_ips: Vec<String>,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub network: String,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default = "healthy")]
    pub status: String,
    /// The waypoint's destination (`<network>/<ip>` or `<namespace>/<hostname>`).
    #[serde(default, deserialize_with = "gateway")]
    pub waypoint: Option<String>,
    #[serde(skip)]
    pub raw: Value,
}

impl Workload {
    pub fn is_healthy(&self) -> bool {
        self.status == "Healthy"
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub hostname: String,
    /// `<network>/<ip>` each.
    #[serde(default, alias = "addresses")]
    pub vips: Vec<String>,
    #[serde(default, deserialize_with = "gateway")]
    pub waypoint: Option<String>,
    #[serde(default)]
    pub weighted_waypoints: Vec<WeightedWaypoint>,
    /// The workload uid of each endpoint.
    #[serde(default, deserialize_with = "endpoint_uids")]
    pub endpoints: Vec<String>,
    #[serde(skip)]
    pub raw: Value,
}

impl Service {
    /// `<namespace>/<hostname>`: how workloads and waypoints name a service.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedWaypoint {
    #[serde(default, deserialize_with = "gateway")]
    pub destination: Option<String>,
    #[serde(default)]
    pub weight: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default, deserialize_with = "enum_name")]
    pub action: String,
    #[serde(default, deserialize_with = "enum_name")]
    pub scope: String,
    #[serde(skip)]
    pub raw: Value,
}

/// One identity the ztunnel holds (or is fetching) a certificate for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertEntry {
    #[serde(default)]
    pub identity: String,
    #[serde(default)]
    pub state: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub cert_chain: Vec<Cert>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub root_certs: Vec<Cert>,
    #[serde(skip)]
    pub raw: Value,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cert {
    /// The PEM text, base64-encoded (both ztunnels) or as is (older dumps).
    #[serde(default)]
    pub pem: String,
    #[serde(default, deserialize_with = "string_or_number")]
    pub serial_number: String,
    #[serde(default)]
    pub valid_from: String,
    #[serde(default)]
    pub expiration_time: String,
}

/// A pod the ztunnel proxies (shared mode), from `workloadState`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadState {
    #[serde(skip)]
    pub uid: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub info: WorkloadInfo,
    /// `None` when the ztunnel does not report connections.
    #[serde(default)]
    pub connections: Option<Connections>,
    #[serde(skip)]
    pub raw: Value,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub service_account: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Connections {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub inbound: Vec<Connection>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub outbound: Vec<Connection>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    #[serde(default)]
    pub src: String,
    /// Inbound: the service hostname the client dialled, when known.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub original_dst: String,
    #[serde(default)]
    pub actual_dst: String,
    #[serde(default)]
    pub protocol: String,
}

/// Why a dump could not be read; the caller adds where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DumpError(pub String);

impl Dump {
    /// Reads a `/config_dump` body.
    pub fn parse(bytes: &[u8]) -> Result<Dump, DumpError> {
        let raw: Value =
            serde_json::from_slice(bytes).map_err(|e| DumpError(format!("not JSON ({e})")))?;
        let Value::Object(top) = &raw else {
            return Err(DumpError(format!(
                "the top level is {}, not a JSON object",
                kind(&raw)
            )));
        };
        if !SECTIONS.iter().any(|s| top.contains_key(*s)) {
            return Err(DumpError(format!(
                "it has none of the sections {}",
                SECTIONS.join(", ")
            )));
        }
        let workload_state = entries(&raw, "workloadState")?
            .into_iter()
            .map(|(key, v)| {
                let mut s: WorkloadState = item(&key, &v)?;
                s.uid = key.uid;
                s.raw = v;
                Ok(s)
            })
            .collect::<Result<_, DumpError>>()?;
        Ok(Dump {
            workloads: section(&raw, "workloads", |w: &mut Workload, v| w.raw = v)?,
            services: section(&raw, "services", |s: &mut Service, v| s.raw = v)?,
            policies: section(&raw, "policies", |p: &mut Policy, v| p.raw = v)?,
            certificates: section(&raw, "certificates", |c: &mut CertEntry, v| c.raw = v)?,
            workload_state,
            raw,
        })
    }

    /// The dump as read, with every section of [`SECTIONS`] present (empty when the ztunnel had none), for
    /// `all -o json|yaml`.
    pub fn full(&self) -> Value {
        let mut v = self.raw.clone();
        if let Value::Object(m) = &mut v {
            for s in SECTIONS {
                let empty = if s == "workloadState" {
                    Value::Object(Default::default())
                } else {
                    Value::Array(Vec::new())
                };
                match m.get(s) {
                    Some(Value::Null) | None => {
                        m.insert(s.to_owned(), empty);
                    }
                    Some(_) => {}
                }
            }
        }
        v
    }

    /// True when some `workloadState` entry reports its connections.
    pub fn tracks_connections(&self) -> bool {
        self.workload_state.iter().any(|s| s.connections.is_some())
    }
}

/// Where an entry sits in its section, for messages.
struct Key {
    label: String,
    /// The map key (a uid in `workloadState`), or the index.
    uid: String,
}

fn section<T: DeserializeOwned>(
    raw: &Value,
    name: &str,
    keep: impl Fn(&mut T, Value),
) -> Result<Vec<T>, DumpError> {
    entries(raw, name)?
        .into_iter()
        .map(|(key, v)| {
            let mut t: T = item(&key, &v)?;
            keep(&mut t, v);
            Ok(t)
        })
        .collect()
}

fn item<T: DeserializeOwned>(key: &Key, v: &Value) -> Result<T, DumpError> {
    T::deserialize(v).map_err(|e| DumpError(format!("{}: {e}", key.label)))
}

/// The entries of a section that is a list or a map (in the map's key order); none when it is absent or null.
fn entries(raw: &Value, name: &str) -> Result<Vec<(Key, Value)>, DumpError> {
    match raw.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    Key {
                        label: format!("{name}[{i}]"),
                        uid: i.to_string(),
                    },
                    v.clone(),
                )
            })
            .collect()),
        Some(Value::Object(m)) => Ok(m
            .iter()
            .map(|(k, v)| {
                (
                    Key {
                        label: format!("{name}[{k:?}]"),
                        uid: k.clone(),
                    },
                    v.clone(),
                )
            })
            .collect()),
        Some(other) => Err(DumpError(format!(
            "{name} is {}, not a list or a map",
            kind(other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn tcp() -> String {
    "TCP".to_owned()
}

fn healthy() -> String {
    "Healthy".to_owned()
}

/// A gateway address: `{destination: "<network>/<ip>" | "<namespace>/<hostname>", ...}`. A destination written as
/// an object (`{network, address}` or `{namespace, hostname}`) or the bare string are accepted too.
fn gateway<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::Error;
    fn destination(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Object(m) => {
                let field = |k: &str| m.get(k).and_then(Value::as_str);
                match (field("network"), field("address")) {
                    (net, Some(addr)) => Some(format!("{}/{addr}", net.unwrap_or(""))),
                    _ => Some(format!("{}/{}", field("namespace")?, field("hostname")?)),
                }
            }
            _ => None,
        }
    }
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Object(m)) => match m.get("destination") {
            None | Some(Value::Null) => Ok(None),
            Some(dst) => destination(dst).map(Some).ok_or_else(|| {
                D::Error::custom(format!(
                    "waypoint destination {dst} is neither <network>/<ip> nor <namespace>/<hostname>"
                ))
            }),
        },
        Some(other) => Err(D::Error::custom(format!(
            "a gateway address is an object with a destination, not {}",
            kind(&other)
        ))),
    }
}

/// `endpoints`: a map (keyed by uid or `uid:address`) or a list of `{workloadUid, ...}`.
fn endpoint_uids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    use serde::de::Error;
    let uid = |key: Option<&String>, v: &Value| -> Result<String, D::Error> {
        match (v.get("workloadUid").and_then(Value::as_str), key) {
            (Some(u), _) => Ok(u.to_owned()),
            (None, Some(k)) => Ok(k.clone()),
            (None, None) => Err(D::Error::custom("an endpoint without a workloadUid")),
        }
    };
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(m)) => m.iter().map(|(k, v)| uid(Some(k), v)).collect(),
        Some(Value::Array(items)) => items.iter().map(|v| uid(None, v)).collect(),
        Some(other) => Err(D::Error::custom(format!(
            "endpoints is {}, not a map or a list",
            kind(&other)
        ))),
    }
}

/// An enum as the ztunnel serializes it (`Allow`, `WorkloadSelector`); the proto spelling (`ALLOW`,
/// `WORKLOAD_SELECTOR`) is turned into it.
fn enum_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = Option::<String>::deserialize(d)?.unwrap_or_default();
    if s.is_empty() || s.chars().any(|c| c.is_ascii_lowercase()) {
        return Ok(s);
    }
    Ok(s.split('_')
        .map(|w| {
            let mut cs = w.chars();
            cs.next()
                .map(|c| c.to_string() + &cs.as_str().to_ascii_lowercase())
                .unwrap_or_default()
        })
        .collect())
}

fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(D::Error::custom(format!(
            "a serial number is a string, not {}",
            kind(&other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lists_and_maps_alike() {
        let list = br#"{"workloads": [{"name": "a", "namespace": "ns", "workloadIps": ["10.0.0.1"],
            "waypoint": {"destination": "net/10.96.0.1", "hboneMtlsPort": 15008}}]}"#;
        let map = br#"{"workloads": {"net/10.0.0.1": {"name": "a", "namespace": "ns",
            "workloadIps": ["10.0.0.1"], "waypoint": {"destination": "net/10.96.0.1", "port": 15008}}}}"#;
        for bytes in [&list[..], &map[..]] {
            let d = Dump::parse(bytes).unwrap();
            assert_eq!(d.workloads.len(), 1);
            let w = &d.workloads[0];
            assert_eq!((w.name.as_str(), w.protocol.as_str()), ("a", "TCP"));
            assert_eq!(w.waypoint.as_deref(), Some("net/10.96.0.1"));
            assert!(w.is_healthy());
            assert_eq!(w.raw["namespace"], "ns");
        }
    }

    #[test]
    fn endpoints_by_uid_field_or_key() {
        let d = Dump::parse(
            br#"{"services": [
                {"name": "s", "namespace": "n", "hostname": "s.n", "vips": ["/10.96.0.1"],
                 "endpoints": {"uid-1:/10.0.0.1": {"workloadUid": "uid-1"}, "uid-2": {}}}]}"#,
        )
        .unwrap();
        let mut eps = d.services[0].endpoints.clone();
        eps.sort();
        assert_eq!(eps, ["uid-1", "uid-2"]);
        assert_eq!(d.services[0].key(), "n/s.n");
    }

    #[test]
    fn proto_enum_names_become_the_ztunnel_ones() {
        let d = Dump::parse(
            br#"{"policies": [{"name": "p", "namespace": "n", "action": "DENY", "scope": "WORKLOAD_SELECTOR"},
                              {"name": "q", "namespace": "n", "action": "Allow", "scope": "Global"}]}"#,
        )
        .unwrap();
        assert_eq!(d.policies[0].action, "Deny");
        assert_eq!(d.policies[0].scope, "WorkloadSelector");
        assert_eq!(d.policies[1].scope, "Global");
    }

    #[test]
    fn workload_state_with_and_without_connections() {
        let d = Dump::parse(
            br#"{"workloadState": {
                "u1": {"state": "Up", "info": {"name": "a", "namespace": "n", "serviceAccount": "sa"}},
                "u2": {"state": "Up", "info": {"name": "b", "namespace": "n"},
                       "connections": {"inbound": [{"src": "10.0.0.1:1", "originalDst": null,
                                        "actualDst": "10.0.0.2:80", "protocol": "HBONE"}], "outbound": []}}}}"#,
        )
        .unwrap();
        assert_eq!(d.workload_state.len(), 2);
        assert_eq!(d.workload_state[0].uid, "u1");
        assert!(d.workload_state[0].connections.is_none());
        let c = d.workload_state[1].connections.as_ref().unwrap();
        assert_eq!(c.inbound[0].original_dst, "");
        assert!(d.tracks_connections());
    }

    #[test]
    fn full_has_every_section() {
        let d = Dump::parse(br#"{"workloads": [], "config": {"proxyMode": "Shared"}}"#).unwrap();
        let full = d.full();
        for s in SECTIONS {
            assert!(full.get(s).is_some(), "{s}");
        }
        assert_eq!(full["config"]["proxyMode"], "Shared");
        assert!(full["workloadState"].is_object());
    }

    #[test]
    fn malformed_dumps_say_what_is_wrong() {
        let err = |b: &[u8]| Dump::parse(b).unwrap_err().0;
        assert!(
            err(b"{\"workloads\": [").starts_with("not JSON"),
            "{}",
            err(b"{")
        );
        assert_eq!(err(b"[1, 2]"), "the top level is a list, not a JSON object");
        assert!(err(b"{\"nodes\": []}").contains("none of the sections"));
        assert_eq!(
            err(b"{\"workloads\": 5}"),
            "workloads is a number, not a list or a map"
        );
        let e = err(br#"{"workloads": [{"name": "a"}, {"workloadIps": "10.0.0.1"}]}"#);
        assert!(e.starts_with("workloads[1]: invalid type"), "{e}");
        let e = err(br#"{"services": [{"name": "s", "waypoint": {"destination": 7}}]}"#);
        assert!(e.contains("waypoint destination 7"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
