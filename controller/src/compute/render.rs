//! Readable JSON for computed resources (golden files and the debug endpoint). Field names follow upstream
//! ztunnel's local config / config_dump (camelCase); enums are names; IPs are text; empty fields are left out.

use std::collections::BTreeMap;

use ambit_proto::security::{self, Authorization, string_match};
use ambit_proto::workload::{self as wl, Address, GatewayAddress, Port, address, gateway_address};
use serde_json::{Map, Value, json};

use super::{Resources, ip_from_bytes};

/// The whole output: `{addresses: {name: ...}, authorizations: {name: ...}}`, plus `status` notes if any.
pub fn resources(r: &Resources) -> Value {
    let addresses: Map<String, Value> = r
        .addresses
        .iter()
        .map(|(k, v)| (k.clone(), address(v)))
        .collect();
    let authorizations: Map<String, Value> = r
        .authorizations
        .iter()
        .map(|(k, v)| (k.clone(), authorization(v)))
        .collect();
    let mut out = Map::new();
    out.insert("addresses".into(), Value::Object(addresses));
    out.insert("authorizations".into(), Value::Object(authorizations));
    if !r.policy_status.is_empty() {
        out.insert("policyStatus".into(), json!(r.policy_status));
    }
    if !r.routes.is_empty() {
        let routes: Map<String, Value> = r
            .routes
            .iter()
            .map(|(k, v)| (k.clone(), route(v)))
            .collect();
        out.insert("routes".into(), Value::Object(routes));
    }
    if !r.route_scopes.is_empty() {
        let scopes: Map<String, Value> = r
            .route_scopes
            .iter()
            .map(|((ns, gw), names)| (format!("{ns}/{gw}"), json!(names)))
            .collect();
        out.insert("routeScopes".into(), Value::Object(scopes));
    }
    if !r.backend_policies.is_empty() {
        let policies: Map<String, Value> = r
            .backend_policies
            .iter()
            .map(|(k, v)| (k.clone(), waypoint_message(v)))
            .collect();
        out.insert("backendPolicies".into(), Value::Object(policies));
    }
    if !r.backend_policy_scopes.is_empty() {
        let scopes: Map<String, Value> = r
            .backend_policy_scopes
            .iter()
            .map(|((ns, gw), names)| (format!("{ns}/{gw}"), json!(names)))
            .collect();
        out.insert("backendPolicyScopes".into(), Value::Object(scopes));
    }
    let scoped =
        |out: &mut Map<String, Value>, key: &str, scopes: &super::route_scopes::RouteScopes| {
            if !scopes.is_empty() {
                let scopes: Map<String, Value> = scopes
                    .iter()
                    .map(|((ns, gw), names)| (format!("{ns}/{gw}"), json!(names)))
                    .collect();
                out.insert(key.into(), Value::Object(scopes));
            }
        };
    if !r.waypoint_authorizations.is_empty() {
        let m: Map<String, Value> = r
            .waypoint_authorizations
            .iter()
            .map(|(k, v)| (k.clone(), waypoint_message(v)))
            .collect();
        out.insert("waypointAuthorizations".into(), Value::Object(m));
    }
    scoped(
        &mut out,
        "waypointAuthorizationScopes",
        &r.waypoint_authorization_scopes,
    );
    if !r.request_authentications.is_empty() {
        let m: Map<String, Value> = r
            .request_authentications
            .iter()
            .map(|(k, v)| (k.clone(), waypoint_message(v)))
            .collect();
        out.insert("requestAuthentications".into(), Value::Object(m));
    }
    scoped(
        &mut out,
        "requestAuthenticationScopes",
        &r.request_authentication_scopes,
    );
    if !r.rate_limits.is_empty() {
        let m: Map<String, Value> = r
            .rate_limits
            .iter()
            .map(|(k, v)| (k.clone(), waypoint_message(v)))
            .collect();
        out.insert("rateLimits".into(), Value::Object(m));
    }
    scoped(&mut out, "rateLimitScopes", &r.rate_limit_scopes);
    if !r.status.is_empty() {
        out.insert("status".into(), json!(r.status));
    }
    if !r.deployments.is_empty() {
        out.insert("deployments".into(), json!(r.deployments));
    }
    Value::Object(out)
}

/// A waypoint route in the schema's own JSON form (camelCase, enums by name), empty fields left out.
pub fn route(r: &ambit_proto::waypoint::Route) -> Value {
    waypoint_message(r)
}

/// Any message of the waypoint schema in its own JSON form, empty fields left out.
pub fn waypoint_message<M: serde::Serialize>(r: &M) -> Value {
    fn prune(v: Value) -> Option<Value> {
        match v {
            Value::Null | Value::Bool(false) => None,
            Value::String(s) if s.is_empty() => None,
            Value::Array(a) if a.is_empty() => None,
            // An empty object in a list stays (`rules: [{}]` matches everything; `[]` nothing).
            Value::Array(a) => Some(Value::Array(
                a.into_iter()
                    .map(|v| match v {
                        Value::Object(_) => prune(v).unwrap_or_else(|| Value::Object(Map::new())),
                        other => prune(other).unwrap_or(Value::Null),
                    })
                    .filter(|v| !v.is_null())
                    .collect(),
            )),
            Value::Object(o) => {
                let o: Map<String, Value> = o
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, prune(v)?)))
                    .collect();
                (!o.is_empty()).then_some(Value::Object(o))
            }
            other => Some(other),
        }
    }
    serde_json::to_value(r)
        .ok()
        .and_then(prune)
        .unwrap_or(Value::Null)
}

/// Inserts `v` unless it is empty/zero/false/null.
fn put(m: &mut Map<String, Value>, k: &str, v: Value) {
    let empty = match &v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_u64() == Some(0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    };
    if !empty {
        m.insert(k.to_owned(), v);
    }
}

fn ip_text(b: &[u8]) -> String {
    match ip_from_bytes(b) {
        Some(ip) => ip.to_string(),
        None => format!("<invalid {} bytes>", b.len()),
    }
}

fn ip(b: &[u8]) -> Value {
    json!(ip_text(b))
}

/// The proto name of an enum value (`HBONE`, `WORKLOAD_SELECTOR`), or the number when unknown.
macro_rules! enum_name {
    ($t:ty, $v:expr) => {
        match <$t>::try_from($v) {
            Ok(e) => json!(e.as_str_name()),
            Err(_) => json!($v),
        }
    };
}

pub fn address(a: &Address) -> Value {
    match &a.r#type {
        Some(address::Type::Workload(w)) => json!({ "workload": workload(w) }),
        Some(address::Type::Service(s)) => json!({ "service": service(s) }),
        None => Value::Null,
    }
}

fn ports(p: &[Port]) -> Value {
    Value::Array(
        p.iter()
            .map(|p| {
                let mut m = Map::new();
                m.insert("servicePort".into(), json!(p.service_port));
                m.insert("targetPort".into(), json!(p.target_port));
                if p.app_protocol != 0 {
                    m.insert(
                        "appProtocol".into(),
                        enum_name!(wl::AppProtocol, p.app_protocol),
                    );
                }
                Value::Object(m)
            })
            .collect(),
    )
}

fn gateway(g: &Option<GatewayAddress>) -> Value {
    let Some(g) = g else { return Value::Null };
    let dest = match &g.destination {
        Some(gateway_address::Destination::Hostname(h)) => {
            json!(format!("{}/{}", h.namespace, h.hostname))
        }
        Some(gateway_address::Destination::Address(a)) => {
            json!(format!("{}/{}", a.network, ip_text(&a.address)))
        }
        None => Value::Null,
    };
    json!({ "destination": dest, "hboneMtlsPort": g.hbone_mtls_port })
}

pub fn workload(w: &wl::Workload) -> Value {
    let mut m = Map::new();
    put(&mut m, "uid", json!(w.uid));
    put(&mut m, "name", json!(w.name));
    put(&mut m, "namespace", json!(w.namespace));
    put(
        &mut m,
        "addresses",
        Value::Array(w.addresses.iter().map(|a| ip(a)).collect()),
    );
    put(&mut m, "network", json!(w.network));
    m.insert(
        "tunnelProtocol".into(),
        enum_name!(wl::TunnelProtocol, w.tunnel_protocol),
    );
    if w.native_tunnel {
        m.insert("nativeTunnel".into(), json!(true));
    }
    put(&mut m, "trustDomain", json!(w.trust_domain));
    put(&mut m, "serviceAccount", json!(w.service_account));
    put(&mut m, "node", json!(w.node));
    put(&mut m, "canonicalName", json!(w.canonical_name));
    put(&mut m, "canonicalRevision", json!(w.canonical_revision));
    m.insert(
        "workloadType".into(),
        enum_name!(wl::WorkloadType, w.workload_type),
    );
    put(&mut m, "workloadName", json!(w.workload_name));
    let services: BTreeMap<&String, Value> = w
        .services
        .iter()
        .map(|(k, v)| (k, ports(&v.ports)))
        .collect();
    put(&mut m, "services", json!(services));
    put(
        &mut m,
        "authorizationPolicies",
        json!(w.authorization_policies),
    );
    put(&mut m, "waypoint", gateway(&w.waypoint));
    m.insert("status".into(), enum_name!(wl::WorkloadStatus, w.status));
    put(&mut m, "clusterId", json!(w.cluster_id));
    if w.network_mode != 0 {
        m.insert(
            "networkMode".into(),
            enum_name!(wl::NetworkMode, w.network_mode),
        );
    }
    Value::Object(m)
}

pub fn service(s: &wl::Service) -> Value {
    let mut m = Map::new();
    put(&mut m, "name", json!(s.name));
    put(&mut m, "namespace", json!(s.namespace));
    put(&mut m, "hostname", json!(s.hostname));
    put(
        &mut m,
        "addresses",
        Value::Array(
            s.addresses
                .iter()
                .map(|a| json!(format!("{}/{}", a.network, ip_text(&a.address))))
                .collect(),
        ),
    );
    put(&mut m, "ports", ports(&s.ports));
    put(&mut m, "subjectAltNames", json!(s.subject_alt_names));
    put(&mut m, "waypoint", gateway(&s.waypoint));
    if let Some(lb) = &s.load_balancing {
        let prefs: Vec<Value> = lb
            .routing_preference
            .iter()
            .map(|p| enum_name!(wl::load_balancing::Scope, *p))
            .collect();
        m.insert(
            "loadBalancing".into(),
            json!({ "routingPreference": prefs, "mode": enum_name!(wl::load_balancing::Mode, lb.mode) }),
        );
    }
    if s.ip_families != 0 {
        m.insert(
            "ipFamilies".into(),
            enum_name!(wl::IpFamilies, s.ip_families),
        );
    }
    Value::Object(m)
}

fn string_matches(v: &[security::StringMatch]) -> Value {
    Value::Array(
        v.iter()
            .filter_map(|s| {
                Some(match s.match_type.as_ref()? {
                    string_match::MatchType::Exact(x) => json!({ "Exact": x }),
                    string_match::MatchType::Prefix(x) => json!({ "Prefix": x }),
                    string_match::MatchType::Suffix(x) => json!({ "Suffix": x }),
                    string_match::MatchType::Presence(()) => json!({ "Presence": [] }),
                })
            })
            .collect(),
    )
}

fn cidrs(v: &[security::Address]) -> Value {
    Value::Array(
        v.iter()
            .map(|a| json!(format!("{}/{}", ip_text(&a.address), a.length)))
            .collect(),
    )
}

fn sas(v: &[security::ServiceAccountMatch]) -> Value {
    Value::Array(
        v.iter()
            .map(|s| json!({ "namespace": s.namespace, "serviceAccount": s.service_account }))
            .collect(),
    )
}

fn match_json(x: &security::Match) -> Value {
    let mut m = Map::new();
    put(&mut m, "namespaces", string_matches(&x.namespaces));
    put(&mut m, "notNamespaces", string_matches(&x.not_namespaces));
    put(&mut m, "principals", string_matches(&x.principals));
    put(&mut m, "notPrincipals", string_matches(&x.not_principals));
    put(&mut m, "sourceIps", cidrs(&x.source_ips));
    put(&mut m, "notSourceIps", cidrs(&x.not_source_ips));
    put(&mut m, "destinationIps", cidrs(&x.destination_ips));
    put(&mut m, "notDestinationIps", cidrs(&x.not_destination_ips));
    put(&mut m, "destinationPorts", json!(x.destination_ports));
    put(
        &mut m,
        "notDestinationPorts",
        json!(x.not_destination_ports),
    );
    put(&mut m, "serviceAccounts", sas(&x.service_accounts));
    put(&mut m, "notServiceAccounts", sas(&x.not_service_accounts));
    Value::Object(m)
}

/// Rules as triple-nested lists (rules → clauses → matches), as in ztunnel's local config.
pub fn authorization(a: &Authorization) -> Value {
    let rules: Vec<Value> = a
        .rules
        .iter()
        .map(|r| {
            Value::Array(
                r.clauses
                    .iter()
                    .map(|c| Value::Array(c.matches.iter().map(match_json).collect()))
                    .collect(),
            )
        })
        .collect();
    let mut m = Map::new();
    m.insert("name".into(), json!(a.name));
    m.insert("namespace".into(), json!(a.namespace));
    m.insert("scope".into(), enum_name!(security::Scope, a.scope));
    m.insert("action".into(), enum_name!(security::Action, a.action));
    put(&mut m, "dryRun", json!(a.dry_run));
    m.insert("rules".into(), Value::Array(rules));
    Value::Object(m)
}
