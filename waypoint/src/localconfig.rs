//! A waypoint's whole configuration from one YAML file (`LOCAL_XDS_PATH`), for running a waypoint by hand or in
//! tests: the services and workloads WDS would send, and route rules in the `ambit.waypoint.Route` schema (field
//! names in camelCase, enums by name). The file is re-read when it changes; a file that does not parse, has a field
//! no schema knows (a misspelt key would otherwise drop what it meant to set), or a resource that does not convert,
//! keeps the previous configuration and logs why. A reload replaces what the file gave before and leaves resources
//! from xDS alone.
//!
//! ```yaml
//! services:
//! - {name: reviews, namespace: demo, hostname: reviews.demo.svc.cluster.local, vips: [10.96.0.20],
//!    ports: [{port: 9080, targetPort: 9080, protocol: http1}],
//!    waypoint: {namespace: demo, hostname: waypoint.demo.svc.cluster.local}}
//! workloads:
//! - {uid: reviews-v1, name: reviews-v1-0, namespace: demo, serviceAccount: reviews, ips: [10.244.1.5],
//!    tunnel: HBONE, services: {demo/reviews.demo.svc.cluster.local: {9080: 9080}}}
//! routes:
//! - {name: demo/httproute/reviews/0, kind: HTTP, parents: [{kind: SERVICE, name: reviews.demo.svc.cluster.local}],
//!    backends: [{hostname: reviews-v1.demo.svc.cluster.local, port: 9080, weight: 80}, ...]}
//! backendPolicies:
//! - {hostname: reviews.demo.svc.cluster.local, policy: {outlierDetection: {consecutive5xxErrors: 5}},
//!    subsets: [{name: v1, labels: {version: v1}, workloads: {uids: [reviews-v1]}}]}
//! ```

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_core::drain::DrainWatcher;
use serde::Deserialize;
use tracing::{info, warn};

use crate::balance::locality::Locality;
use crate::route::rule_from_proto;
use crate::state::{
    AppProtocol, BackendPolicy, Resource, Service, ServicePort, Store, Tunnel, WaypointRef,
    Workload,
};

#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    #[error("read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("parse {0}: {1}")]
    Parse(PathBuf, serde_yaml::Error),
    /// A key of the `ambit.waypoint` sections no field of the schema has, by its place (`routes[0].backend`).
    #[error("parse {0}: unknown field `{1}`")]
    UnknownField(PathBuf, String),
    #[error("{0}: route {1}: {2}")]
    Route(PathBuf, String, crate::route::ConvertError),
    #[error("{0}: policy {1}: {2}")]
    Policy(PathBuf, String, String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct File {
    services: Vec<ServiceYaml>,
    workloads: Vec<WorkloadYaml>,
    routes: Vec<ambit_proto::waypoint::Route>,
    backend_policies: Vec<ambit_proto::waypoint::BackendPolicy>,
    rate_limits: Vec<ambit_proto::waypoint::RateLimitPolicy>,
    request_authentications: Vec<ambit_proto::waypoint::RequestAuthentication>,
    authorization_policies: Vec<ambit_proto::waypoint::AuthorizationPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceYaml {
    name: String,
    namespace: String,
    hostname: String,
    #[serde(default)]
    vips: Vec<IpAddr>,
    #[serde(default)]
    ports: Vec<PortYaml>,
    #[serde(default)]
    waypoint: Option<WaypointYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortYaml {
    port: u16,
    #[serde(default)]
    target_port: u16,
    #[serde(default = "unknown")]
    protocol: AppProtocol,
}

fn unknown() -> AppProtocol {
    AppProtocol::Unknown
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WaypointYaml {
    namespace: String,
    hostname: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WorkloadYaml {
    uid: String,
    name: String,
    namespace: String,
    #[serde(default = "default_sa")]
    service_account: String,
    #[serde(default = "default_td")]
    trust_domain: String,
    ips: Vec<IpAddr>,
    #[serde(default = "hbone")]
    tunnel: Tunnel,
    #[serde(default)]
    workload_name: String,
    #[serde(default)]
    canonical_name: String,
    #[serde(default)]
    canonical_revision: String,
    #[serde(default)]
    cluster_id: String,
    #[serde(default)]
    services: BTreeMap<String, BTreeMap<u16, u16>>,
    #[serde(default = "yes")]
    healthy: bool,
    #[serde(default)]
    locality: Option<LocalityYaml>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LocalityYaml {
    region: String,
    zone: String,
    subzone: String,
}

fn default_sa() -> String {
    "default".into()
}
fn default_td() -> String {
    "cluster.local".into()
}
fn hbone() -> Tunnel {
    Tunnel::Hbone
}
fn yes() -> bool {
    true
}

/// Parses a file's text into resources (all or nothing).
pub fn parse(path: &Path, text: &str) -> Result<Vec<(String, Resource)>, LocalConfigError> {
    let blank = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim().starts_with('#'));
    let file: File = if blank {
        File::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| LocalConfigError::Parse(path.into(), e))?
    };
    if let Some(field) = unknown_field(text, &file) {
        return Err(LocalConfigError::UnknownField(path.into(), field));
    }
    let mut out = Vec::new();
    for s in file.services {
        out.push((
            format!("{}/{}", s.namespace, s.hostname),
            Resource::Service(Service {
                name: s.name,
                namespace: s.namespace,
                hostname: s.hostname,
                vips: s.vips,
                ports: s
                    .ports
                    .into_iter()
                    .map(|p| ServicePort {
                        port: p.port,
                        target_port: p.target_port,
                        protocol: p.protocol,
                    })
                    .collect(),
                waypoint: s.waypoint.map(|w| WaypointRef::Hostname {
                    namespace: w.namespace,
                    hostname: w.hostname,
                }),
            }),
        ));
    }
    for w in file.workloads {
        out.push((
            w.uid.clone(),
            Resource::Workload(Workload {
                uid: w.uid,
                name: w.name,
                namespace: w.namespace,
                service_account: w.service_account,
                trust_domain: w.trust_domain,
                ips: w.ips,
                tunnel: w.tunnel,
                workload_name: w.workload_name,
                canonical_name: w.canonical_name,
                canonical_revision: w.canonical_revision,
                cluster_id: w.cluster_id,
                services: w
                    .services
                    .into_iter()
                    .map(|(k, v)| (k, v.into_iter().collect()))
                    .collect::<HashMap<_, _>>(),
                healthy: w.healthy,
                waypoint: None,
                locality: w
                    .locality
                    .map(|l| Locality {
                        region: l.region,
                        zone: l.zone,
                        subzone: l.subzone,
                    })
                    .unwrap_or_default(),
            }),
        ));
    }
    for r in file.routes {
        let rule = rule_from_proto(&r.name, &r)
            .map_err(|e| LocalConfigError::Route(path.into(), r.name.clone(), e))?;
        out.push((rule.name.clone(), Resource::Rule(rule)));
    }
    for p in file.backend_policies {
        let policy = BackendPolicy::from_proto(&p.hostname, &p)
            .map_err(|e| LocalConfigError::Policy(path.into(), p.hostname.clone(), e))?;
        out.push((policy.hostname.clone(), Resource::Policy(policy)));
    }
    for p in file.rate_limits {
        let policy = crate::app::rate_limit_from_proto(&p)
            .map_err(|e| LocalConfigError::Policy(path.into(), p.name.clone(), e))?;
        out.push((
            crate::app::store_key(ambit_proto::type_url::WAYPOINT_RATE_LIMIT, &p.name),
            Resource::RateLimit(policy),
        ));
    }
    for p in file.request_authentications {
        let policy = crate::app::request_authn_from_proto(&p)
            .map_err(|e| LocalConfigError::Policy(path.into(), p.name.clone(), e))?;
        out.push((
            crate::app::store_key(
                ambit_proto::type_url::WAYPOINT_REQUEST_AUTHENTICATION,
                &p.name,
            ),
            Resource::RequestAuthn(policy),
        ));
    }
    for p in file.authorization_policies {
        let policy = crate::authz::Policy::from_proto(&p)
            .map_err(|e| LocalConfigError::Policy(path.into(), p.name.clone(), e.to_string()))?;
        out.push((
            crate::app::store_key(ambit_proto::type_url::WAYPOINT_AUTHORIZATION, &p.name),
            Resource::Authz(policy),
        ));
    }
    Ok(out)
}

/// The first key of the file's `ambit.waypoint` sections that their schema lacks. Those types' serde derive is
/// generated (`proto/build.rs`) without `deny_unknown_fields`, so each item is serialized back (every field,
/// defaults included) and compared with what the file wrote; keys of maps (`labels`) are data and survive the round
/// trip.
fn unknown_field(text: &str, file: &File) -> Option<String> {
    let serde_yaml::Value::Mapping(doc) = serde_yaml::from_str(text).ok()? else {
        return None;
    };
    unknown_in_section(&doc, "routes", &file.routes)
        .or_else(|| unknown_in_section(&doc, "backendPolicies", &file.backend_policies))
        .or_else(|| unknown_in_section(&doc, "rateLimits", &file.rate_limits))
        .or_else(|| {
            unknown_in_section(
                &doc,
                "requestAuthentications",
                &file.request_authentications,
            )
        })
        .or_else(|| unknown_in_section(&doc, "authorizationPolicies", &file.authorization_policies))
}

/// The first unknown key of the items of section `key`.
fn unknown_in_section<T: serde::Serialize>(
    doc: &serde_yaml::Mapping,
    key: &str,
    items: &[T],
) -> Option<String> {
    let serde_yaml::Value::Sequence(written) = doc.get(key)? else {
        return None;
    };
    written
        .iter()
        .zip(items)
        .enumerate()
        .find_map(|(i, (written, item))| {
            first_unknown(
                written,
                &serde_yaml::to_value(item).ok()?,
                &format!("{key}[{i}]"),
            )
        })
}

/// The first key of `written` (at `at`) that `known`, its round trip, lacks.
fn first_unknown(
    written: &serde_yaml::Value,
    known: &serde_yaml::Value,
    at: &str,
) -> Option<String> {
    use serde_yaml::Value;
    match (written, known) {
        (Value::Mapping(w), Value::Mapping(k)) => w.iter().find_map(|(key, value)| {
            // A key that is not a string names no field.
            let name = key.as_str()?;
            let at = format!("{at}.{name}");
            match k.get(name) {
                Some(known) => first_unknown(value, known, &at),
                None => Some(at),
            }
        }),
        (Value::Sequence(w), Value::Sequence(k)) => w
            .iter()
            .zip(k)
            .enumerate()
            .find_map(|(i, (w, k))| first_unknown(w, k, &format!("{at}[{i}]"))),
        _ => None,
    }
}

pub fn load(path: &Path) -> Result<Vec<(String, Resource)>, LocalConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| LocalConfigError::Read(path.into(), e))?;
    parse(path, &text)
}

const POLL: Duration = Duration::from_millis(250);

/// Re-reads `path` when its contents change and replaces what it gave the store before (resources from xDS stay);
/// a bad file, or a missing one, changes nothing.
pub async fn watch(path: PathBuf, store: Store, mut drain: DrainWatcher) {
    let mut last = std::fs::read(&path).ok();
    // The names the file gave (the caller applied it at start).
    let mut mine: HashSet<String> = load(&path)
        .map(|r| r.into_iter().map(|(name, _)| name).collect())
        .unwrap_or_default();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = drain.signaled() => return,
            _ = tick.tick() => {}
        }
        let now = std::fs::read(&path).ok();
        if now == last {
            continue;
        }
        last = now;
        match load(&path) {
            Ok(resources) => {
                info!(path = %path.display(), resources = resources.len(), "local config reloaded");
                let now: HashSet<String> = resources.iter().map(|(name, _)| name.clone()).collect();
                let gone = mine.difference(&now).cloned().collect();
                store.update(resources, gone);
                mine = now;
            }
            Err(e) => warn!(error = %e, "local config not applied; keeping the previous one"),
        }
    }
}
