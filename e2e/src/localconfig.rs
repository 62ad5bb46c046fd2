//! ztunnel local config (`LOCAL_XDS_PATH`), upstream's YAML format (spec 2.7).

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// One workload of the local config.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub ip: Ipv4Addr,
    /// `HBONE` for a workload with a ztunnel, `TCP` otherwise.
    pub protocol: &'static str,
}

impl Workload {
    pub fn hbone(name: &str, ip: Ipv4Addr) -> Workload {
        Workload {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            service_account: name.to_owned(),
            ip,
            protocol: "HBONE",
        }
    }

    /// `cluster.local/ns/<ns>/sa/<sa>`: the principal policies match on.
    pub fn principal(&self) -> String {
        format!(
            "cluster.local/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "uid": format!("cluster1//v1/Pod/{}/{}", self.namespace, self.name),
            "name": self.name,
            "namespace": self.namespace,
            "serviceAccount": self.service_account,
            "trustDomain": "cluster.local",
            "workloadIps": [self.ip.to_string()],
            "protocol": self.protocol,
            "clusterId": "Kubernetes",
            "workloadName": self.name,
            "canonicalName": self.name,
            // Upstream's `LocalWorkload` requires it (service name → port map); none here.
            "services": {},
        })
    }
}

/// A policy of the local config (only the shapes the tests use).
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    /// `Global`, `Namespace` or `WorkloadSelector`.
    pub scope: &'static str,
    /// `Allow` or `Deny`.
    pub action: &'static str,
    /// One rule, one clause: matches when the peer principal is any of these (exact).
    pub principals: Vec<String>,
}

impl Policy {
    /// A global DENY for connections from `principal`.
    pub fn deny_principal(name: &str, principal: &str) -> Policy {
        Policy {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            scope: "Global",
            action: "Deny",
            principals: vec![principal.to_owned()],
        }
    }

    fn to_json(&self) -> Value {
        let principals: Vec<Value> = self
            .principals
            .iter()
            .map(|p| json!({ "Exact": p }))
            .collect();
        json!({
            "name": self.name,
            "namespace": self.namespace,
            "scope": self.scope,
            "action": self.action,
            "dryRun": false,
            // rules → clauses → matches
            "rules": [[[{ "principals": principals }]]],
        })
    }
}

/// The YAML document listing `workloads` and `policies` (no services).
pub fn render(workloads: &[Workload], policies: &[Policy]) -> Result<String> {
    let doc = json!({
        "workloads": workloads.iter().map(Workload::to_json).collect::<Vec<_>>(),
        "services": [],
        "policies": policies.iter().map(Policy::to_json).collect::<Vec<_>>(),
    });
    serde_yaml::to_string(&doc).context("render local config")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_upstream_shape() {
        let a = Workload::hbone("a", Ipv4Addr::new(10, 77, 0, 2));
        let yaml = render(
            std::slice::from_ref(&a),
            &[Policy::deny_principal("deny-a", &a.principal())],
        )
        .unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let w = &v["workloads"][0];
        assert_eq!(w["uid"].as_str(), Some("cluster1//v1/Pod/default/a"));
        assert_eq!(w["serviceAccount"].as_str(), Some("a"));
        assert_eq!(w["workloadIps"][0].as_str(), Some("10.77.0.2"));
        assert_eq!(w["protocol"].as_str(), Some("HBONE"));
        assert!(
            w["services"].as_mapping().is_some_and(|m| m.is_empty()),
            "upstream refuses a workload without `services`: {w:?}"
        );
        let p = &v["policies"][0];
        assert_eq!(p["action"].as_str(), Some("Deny"));
        assert_eq!(p["scope"].as_str(), Some("Global"));
        assert_eq!(
            p["rules"][0][0][0]["principals"][0]["Exact"].as_str(),
            Some("cluster.local/ns/default/sa/a")
        );
    }
}
