//! What VirtualService and DestinationRule conversion share: resolving Istio `hosts` to the Services of the index,
//! the waypoint a Service is bound to, validation messages, and the status both kinds get.
//!
//! Host resolution follows istiod's `ResolveShortnameToFQDN`: a host without a dot is a short name in the
//! object's namespace (`reviews` → `reviews.<ns>.svc.<suffix>`); anything else is compared with the Service
//! hostnames as written; `*` and `*.<suffix>` match every Service hostname ending in the suffix. Hosts that are not
//! Services of the index (ServiceEntry hosts, external names) resolve to nothing: ambient applies VirtualService and
//! DestinationRule only at a waypoint, and only Services (bound to one) have one here.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::status::condition;
use super::waypoint::{Bindings, Target};
use super::{ComputeConfig, service_hostname};
use crate::index::{Index, Name};

/// Every Service of the index by hostname.
pub struct HostIndex<'a> {
    pub by_hostname: BTreeMap<String, (&'a Name, &'a k8s_openapi::api::core::v1::Service)>,
    pub suffix: &'a str,
}

/// One Service a host resolved to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResolvedHost {
    pub hostname: String,
    pub namespace: String,
    pub name: String,
}

impl<'a> HostIndex<'a> {
    pub fn new(index: &'a Index, cfg: &'a ComputeConfig) -> Self {
        let by_hostname = index
            .services
            .iter()
            .map(|(key, svc)| (service_hostname(&key.1, &key.0, cfg), (key, svc)))
            .collect();
        HostIndex {
            by_hostname,
            suffix: &cfg.domain_suffix,
        }
    }

    /// The fully qualified form of `host` written in namespace `ns`.
    pub fn fqdn(&self, host: &str, ns: &str) -> String {
        if host.contains('.') || host.starts_with('*') {
            host.to_owned()
        } else {
            format!("{host}.{ns}.svc.{}", self.suffix)
        }
    }

    /// The Services `host` (written in namespace `ns`) names; empty when none.
    pub fn resolve(&self, host: &str, ns: &str) -> Vec<ResolvedHost> {
        let fqdn = self.fqdn(host, ns);
        let found = |h: &String, key: &Name| ResolvedHost {
            hostname: h.clone(),
            namespace: key.0.clone(),
            name: key.1.clone(),
        };
        if let Some(suffix) = fqdn.strip_prefix('*') {
            return self
                .by_hostname
                .iter()
                .filter(|(h, _)| h.ends_with(suffix))
                .map(|(h, (key, _))| found(h, key))
                .collect();
        }
        self.by_hostname
            .get(&fqdn)
            .map(|(key, _)| vec![found(&fqdn, key)])
            .unwrap_or_default()
    }

    /// The Service behind a hostname.
    pub fn service(&self, hostname: &str) -> Option<&'a k8s_openapi::api::core::v1::Service> {
        self.by_hostname.get(hostname).map(|(_, s)| *s)
    }
}

/// The waypoint `ns/name` a Service is bound to, or why it is not (`Err(message)`).
pub fn bound_waypoint(bindings: &Bindings, host: &ResolvedHost) -> Result<String, String> {
    match bindings
        .services
        .get(&(host.namespace.clone(), host.name.clone()))
    {
        Some(b) => {
            let (wns, wname) = &b.waypoint;
            match &b.outcome {
                Ok(_) => Ok(format!("{wns}/{wname}")),
                Err(_) => Err(format!(
                    "service {}/{}: {}",
                    host.namespace,
                    host.name,
                    b.condition(Target::Service).2
                )),
            }
        }
        None => Err(format!(
            "service {}/{} is not bound to a waypoint (istio.io/use-waypoint); ztunnel ignores it",
            host.namespace, host.name
        )),
    }
}

/// Validation messages of one object: errors dropped something, warnings did not.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Messages {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Messages {
    pub fn error(&mut self, field: &str, message: impl std::fmt::Display) {
        self.errors.push(format!("{field}: {message}"));
    }

    pub fn warn(&mut self, field: &str, message: impl std::fmt::Display) {
        self.warnings.push(format!("{field}: {message}"));
    }

    /// Warnings for the fields of `unknown` that are not in `harmless`.
    pub fn unsupported(
        &mut self,
        field: &str,
        unknown: &BTreeMap<String, serde_yaml::Value>,
        harmless: &[&str],
    ) {
        for k in unknown.keys().filter(|k| !harmless.contains(&k.as_str())) {
            self.warn(&format!("{field}.{k}"), "not supported; ignored");
        }
    }

    /// Errors for the fields of `unknown` that are not in `harmless` (fields whose absence would change what
    /// matches or where traffic goes, so the part holding them is dropped).
    pub fn unsupported_strict(
        &mut self,
        field: &str,
        unknown: &BTreeMap<String, serde_yaml::Value>,
        harmless: &[&str],
    ) {
        for k in unknown.keys().filter(|k| !harmless.contains(&k.as_str())) {
            self.error(&format!("{field}.{k}"), "not supported");
        }
    }
}

/// Where an object took effect: `(host, outcome)` for each host it names.
pub type HostOutcomes = Vec<(String, Result<String, String>)>;

/// The status of a VirtualService or DestinationRule: `Accepted` (validation: `Accepted`, `PartiallyInvalid` when
/// some part was dropped, `Invalid` when nothing valid is left), `Reconciled` (where it took effect: `Applied`
/// with the waypoints, else `NotApplied` with why for each host), and every message in `validationMessages`.
pub fn object_status(
    messages: &Messages,
    nothing_valid: bool,
    hosts: &HostOutcomes,
    not_applied_reason: &str,
) -> Value {
    let accepted = if messages.errors.is_empty() {
        condition("Accepted", true, "Accepted", "Configuration is valid")
    } else if nothing_valid {
        condition("Accepted", false, "Invalid", &messages.errors.join("; "))
    } else {
        condition(
            "Accepted",
            true,
            "PartiallyInvalid",
            &format!("invalid parts dropped: {}", messages.errors.join("; ")),
        )
    };
    let applied: Vec<String> = hosts
        .iter()
        .filter_map(|(h, o)| o.as_ref().ok().map(|w| format!("{h} (waypoint {w})")))
        .collect();
    let refused: Vec<String> = hosts
        .iter()
        .filter_map(|(h, o)| o.as_ref().err().map(|why| format!("{h}: {why}")))
        .collect();
    let reconciled = if applied.is_empty() {
        let why = if refused.is_empty() {
            "no hosts".to_owned()
        } else {
            refused.join("; ")
        };
        condition("Reconciled", false, not_applied_reason, &why)
    } else {
        let mut m = format!("Applied to {}", applied.join(", "));
        if !refused.is_empty() {
            m.push_str(&format!("; not applied to {}", refused.join("; ")));
        }
        condition("Reconciled", true, "Applied", &m)
    };
    let mut validation: Vec<Value> = messages
        .errors
        .iter()
        .map(|m| json!({"level": "Error", "message": m}))
        .collect();
    validation.extend(
        messages
            .warnings
            .iter()
            .map(|m| json!({"level": "Warning", "message": m})),
    );
    let mut out = json!({"conditions": [accepted, reconciled]});
    if !validation.is_empty()
        && let Some(o) = out.as_object_mut()
    {
        o.insert("validationMessages".into(), Value::Array(validation));
    }
    out
}

/// Seconds since the epoch of an object's creation (0: unknown), for ordering.
pub fn created(meta: &ObjectMeta) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second())
}

/// The WDS uid of a pod, exactly as [`super::workload`] builds it.
pub fn workload_uid(cfg: &ComputeConfig, ns: &str, name: &str) -> String {
    format!("{}//Pod/{ns}/{name}", cfg.cluster_id)
}
