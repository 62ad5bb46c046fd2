//! `istio.workload.Workload` for every pod with an IP.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ambit_proto::workload::{self as wl, PortList};
use k8s_openapi::api::core::v1 as core;

use super::authz::Policies;
use super::service::endpoint_ports;
use super::waypoint::Bindings;
use super::waypoint_guard::{Guards, PodService, PodView};
use super::{ComputeConfig, ip_bytes, labels_of, service_hostname};
use crate::index::Index;

pub use ambit_core::enrollment::{DATAPLANE_MODE, SIDECAR_STATUS};

/// Whether the pod is captured by ztunnel (the rule the node agent applies too: `ambit_core::enrollment`).
pub fn enrolled(
    pod_labels: &BTreeMap<String, String>,
    pod_annotations: &BTreeMap<String, String>,
    ns: &str,
    ns_labels: &BTreeMap<String, String>,
    cfg: &ComputeConfig,
) -> bool {
    ambit_core::enrollment::captured(
        pod_labels,
        pod_annotations,
        ns,
        ns_labels,
        &cfg.excluded_namespaces,
    )
}

pub fn workloads(
    index: &Index,
    cfg: &ComputeConfig,
    policies: &Policies,
    bindings: &Bindings,
    guards: &mut Guards<'_>,
) -> Vec<wl::Workload> {
    let selectors = SelectorIndex::new(index);
    let mut out = Vec::new();
    for ((ns, name), pod) in &index.pods {
        let status = pod.status.clone().unwrap_or_default();
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let ips = pod_ips(&status);
        if ips.is_empty() {
            continue;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let labels = labels_of(&pod.metadata);
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let ns_labels = index.namespace_labels(ns);
        // Waypoint pods are never captured but speak HBONE natively (istiod's `setTunnelProtocol`).
        let native = labels
            .get(super::waypoint::MANAGED)
            .is_some_and(|v| v == "istio.io-mesh-controller");
        let hbone = native || enrolled(&labels, &annotations, ns, &ns_labels, cfg);
        let waypoint = bindings
            .pods
            .get(&(ns.clone(), name.clone()))
            .and_then(|b| b.address());
        let (workload_name, workload_type) = workload_name_and_type(pod, name);
        let mut guarded = Vec::new();
        let services: HashMap<String, PortList> = selectors
            .candidates(ns, &labels)
            .filter(|(_, svc)| selects(svc, &labels))
            .map(|(key @ (sns, sname), svc)| {
                let ports = endpoint_ports(svc, pod);
                guarded.push(PodService {
                    name: key,
                    labels: svc.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
                    target_ports: ports.iter().map(|p| p.target_port).collect(),
                });
                (
                    format!("{sns}/{}", service_hostname(sname, sns, cfg)),
                    PortList { ports },
                )
            })
            .collect();
        // ServiceEntries select only pods outside the mesh (istiod: captured pods cannot be selected).
        let mut services = services;
        if !hbone {
            for (se, host) in super::service_entry::selecting(index, ns, &labels) {
                services.insert(
                    format!("{ns}/{host}"),
                    super::service_entry::endpoint_ports(
                        &se.spec.ports,
                        &super::service::container_ports(pod),
                    ),
                );
            }
        }
        let key = (ns.clone(), name.clone());
        let mut authorization_policies = policies.for_workload(ns, &labels);
        authorization_policies.extend(guards.for_pod(&PodView {
            name: &key,
            labels: &labels,
            ns_labels: &ns_labels,
            services: guarded,
        }));
        let ready = status
            .conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_none_or(|c| c.status == "True");
        out.push(wl::Workload {
            uid: format!("{}//Pod/{ns}/{name}", cfg.cluster_id),
            name: name.clone(),
            namespace: ns.clone(),
            addresses: ips.iter().map(|ip| ip_bytes(*ip)).collect(),
            network: labels
                .get("topology.istio.io/network")
                .cloned()
                .unwrap_or_else(|| cfg.network.clone()),
            tunnel_protocol: if hbone {
                wl::TunnelProtocol::Hbone
            } else {
                wl::TunnelProtocol::None
            } as i32,
            native_tunnel: native,
            trust_domain: cfg.trust_domain.clone(),
            service_account: spec
                .service_account_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned()),
            waypoint,
            node: spec.node_name.clone().unwrap_or_default(),
            canonical_name: canonical_name(&labels, &workload_name),
            canonical_revision: canonical_revision(&labels),
            workload_type: workload_type as i32,
            workload_name,
            services,
            authorization_policies,
            status: if ready {
                wl::WorkloadStatus::Healthy
            } else {
                wl::WorkloadStatus::Unhealthy
            } as i32,
            cluster_id: cfg.cluster_id.clone(),
            network_mode: if spec.host_network == Some(true) {
                wl::NetworkMode::HostNetwork
            } else {
                wl::NetworkMode::Standard
            } as i32,
            ..Default::default()
        });
    }
    out
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// The services of each namespace keyed by the first entry of their selector. A pod can only be selected by a
/// service whose first selector entry it carries, so a pod looks at the services under its own labels instead of
/// every service of its namespace (100k pods x 10k services was 10^9 checks). Each service is in one bucket, so
/// no match is found twice.
struct SelectorIndex<'a> {
    by_label: HashMap<LabelKey<'a>, Vec<ServiceRef<'a>>>,
}

/// (namespace, label key, label value).
type LabelKey<'a> = (&'a str, &'a str, &'a str);
/// A service with its (namespace, name).
type ServiceRef<'a> = (&'a (String, String), &'a core::Service);

impl<'a> SelectorIndex<'a> {
    fn new(index: &'a Index) -> Self {
        let mut by_label: HashMap<_, Vec<_>> = HashMap::new();
        for (key, svc) in &index.services {
            let first = svc
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|sel| sel.iter().next());
            if let Some((k, v)) = first {
                by_label
                    .entry((key.0.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push((key, svc));
            }
        }
        SelectorIndex { by_label }
    }

    fn candidates<'b>(
        &'b self,
        ns: &'b str,
        labels: &'b BTreeMap<String, String>,
    ) -> impl Iterator<Item = ServiceRef<'a>> + 'b {
        labels
            .iter()
            .filter_map(move |(k, v)| self.by_label.get(&(ns, k.as_str(), v.as_str())))
            .flatten()
            .copied()
    }
}

/// Kubernetes endpoint selection: a Service with a non-empty selector selects pods carrying all its labels.
pub(crate) fn selects(svc: &core::Service, labels: &BTreeMap<String, String>) -> bool {
    match svc.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        Some(sel) if !sel.is_empty() => sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
        _ => false,
    }
}

fn pod_ips(status: &core::PodStatus) -> Vec<IpAddr> {
    let mut raw: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    if raw.is_empty() {
        raw.extend(status.pod_ip.as_deref());
    }
    let mut out = Vec::new();
    for s in raw {
        match s.parse::<IpAddr>() {
            Ok(ip) if !out.contains(&ip) => out.push(ip),
            Ok(_) => {}
            Err(_) => tracing::warn!(pod.ip = s, "ignoring invalid pod IP"),
        }
    }
    out
}

/// istiod's workload name: the Deployment behind a ReplicaSet (pod-template-hash stripped), the Job, or the
/// controller's name; a bare pod is its own workload.
fn workload_name_and_type(pod: &core::Pod, name: &str) -> (String, wl::WorkloadType) {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let Some(owner) = owner else {
        return (name.to_owned(), wl::WorkloadType::Pod);
    };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let hash = labels_of(&pod.metadata).get("pod-template-hash").cloned();
            let deployment = hash
                .and_then(|h| owner.name.strip_suffix(&format!("-{h}")).map(str::to_owned))
                .unwrap_or_else(|| owner.name.clone());
            (deployment, wl::WorkloadType::Deployment)
        }
        "Job" => (owner.name.clone(), wl::WorkloadType::Job),
        "CronJob" => (owner.name.clone(), wl::WorkloadType::Cronjob),
        _ => (owner.name.clone(), wl::WorkloadType::Deployment),
    }
}

fn canonical_name(labels: &BTreeMap<String, String>, workload_name: &str) -> String {
    [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| labels.get(*k).cloned())
    .unwrap_or_else(|| workload_name.to_owned())
}

fn canonical_revision(labels: &BTreeMap<String, String>) -> String {
    [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| labels.get(*k).cloned())
    .unwrap_or_else(|| "latest".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn enrollment_rules() {
        let cfg = ComputeConfig::default();
        let amb = map(&[(DATAPLANE_MODE, "ambient")]);
        let none = map(&[(DATAPLANE_MODE, "none")]);
        let empty = map(&[]);
        assert!(enrolled(&amb, &empty, "a", &empty, &cfg));
        assert!(enrolled(&empty, &empty, "a", &amb, &cfg));
        assert!(!enrolled(&none, &empty, "a", &amb, &cfg));
        assert!(!enrolled(&empty, &empty, "a", &empty, &cfg));
        assert!(!enrolled(&amb, &empty, "kube-system", &empty, &cfg));
        assert!(!enrolled(
            &amb,
            &map(&[(SIDECAR_STATUS, "{}")]),
            "a",
            &empty,
            &cfg
        ));
    }
}
