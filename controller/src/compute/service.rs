//! `istio.workload.Service` for every Kubernetes Service.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_proto::workload::{self as wl, NetworkAddress, Port};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::waypoint::Bindings;
use super::{ComputeConfig, ip_bytes, labels_of, service_hostname};
use crate::index::Index;

/// Annotation listing extra service accounts (names in the service's namespace) whose SPIFFE ids are accepted.
pub const KUBERNETES_SERVICE_ACCOUNTS: &str = "alpha.istio.io/kubernetes-serviceaccounts";
/// Annotation listing extra accepted identities verbatim.
pub const CANONICAL_SERVICE_ACCOUNTS: &str = "alpha.istio.io/canonical-serviceaccounts";
pub const TRAFFIC_DISTRIBUTION: &str = "networking.istio.io/traffic-distribution";

pub fn services(index: &Index, cfg: &ComputeConfig, bindings: &Bindings) -> Vec<wl::Service> {
    index
        .services
        .iter()
        .map(|((ns, name), svc)| {
            let labels = labels_of(&svc.metadata);
            let spec = svc.spec.clone().unwrap_or_default();
            let waypoint = bindings
                .services
                .get(&(ns.clone(), name.clone()))
                .and_then(|b| b.address());
            let network = labels
                .get("topology.istio.io/network")
                .cloned()
                .unwrap_or_else(|| cfg.network.clone());
            let vips = cluster_ips(&spec);
            wl::Service {
                name: name.clone(),
                namespace: ns.clone(),
                hostname: service_hostname(name, ns, cfg),
                addresses: vips
                    .iter()
                    .map(|ip| NetworkAddress {
                        network: network.clone(),
                        address: ip_bytes(*ip),
                        length: None,
                    })
                    .collect(),
                ports: spec.ports.iter().flatten().map(service_port).collect(),
                subject_alt_names: subject_alt_names(svc, ns, cfg),
                waypoint,
                load_balancing: load_balancing(svc, &spec),
                ip_families: ip_families(&spec, &vips) as i32,
                ..Default::default()
            }
        })
        .collect()
}

/// The VIPs; none for headless services (`clusterIP: None`) or when unset.
fn cluster_ips(spec: &core::ServiceSpec) -> Vec<IpAddr> {
    let raw: Vec<&String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    raw.into_iter()
        .filter_map(|s| match s.parse() {
            Ok(ip) => Some(ip),
            Err(_) if s == "None" || s.is_empty() => None,
            Err(_) => {
                tracing::warn!(cluster_ip = %s, "ignoring invalid clusterIP");
                None
            }
        })
        .collect()
}

/// `service_port → target_port`; a named target port is 0 (resolved per endpoint by the workload's port map).
fn service_port(p: &core::ServicePort) -> Port {
    let service_port = u32::try_from(p.port).unwrap_or_default();
    let target_port = match &p.target_port {
        None => service_port,
        Some(IntOrString::Int(n)) => u32::try_from(*n).unwrap_or_default(),
        Some(IntOrString::String(s)) => s.parse().unwrap_or(0),
    };
    Port {
        service_port,
        target_port,
        app_protocol: app_protocol(p) as i32,
    }
}

/// The application protocol from `appProtocol` or the Istio port-name prefix convention.
fn app_protocol(p: &core::ServicePort) -> wl::AppProtocol {
    let declared = p.app_protocol.clone().or_else(|| {
        p.name
            .as_ref()
            .map(|n| n.split('-').next().unwrap_or("").to_owned())
    });
    match declared.unwrap_or_default().to_ascii_lowercase().as_str() {
        "http" => wl::AppProtocol::Http11,
        "http2" | "h2c" | "kubernetes.io/h2c" => wl::AppProtocol::Http2,
        "grpc" => wl::AppProtocol::Grpc,
        "tcp" => wl::AppProtocol::Tcp,
        "tls" | "https" => wl::AppProtocol::Tls,
        _ => wl::AppProtocol::Unknown,
    }
}

fn subject_alt_names(svc: &core::Service, ns: &str, cfg: &ComputeConfig) -> Vec<String> {
    let ann = svc.metadata.annotations.clone().unwrap_or_default();
    let split = |s: &String| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut out: Vec<String> = ann
        .get(KUBERNETES_SERVICE_ACCOUNTS)
        .map(split)
        .unwrap_or_default()
        .into_iter()
        .map(|sa| format!("spiffe://{}/ns/{ns}/sa/{sa}", cfg.trust_domain))
        .collect();
    out.extend(
        ann.get(CANONICAL_SERVICE_ACCOUNTS)
            .map(split)
            .unwrap_or_default(),
    );
    out
}

/// `PreferClose` (annotation or `spec.trafficDistribution`) prefers network, region, zone, subzone in failover mode.
fn load_balancing(svc: &core::Service, spec: &core::ServiceSpec) -> Option<wl::LoadBalancing> {
    let ann = svc.metadata.annotations.clone().unwrap_or_default();
    let dist = ann
        .get(TRAFFIC_DISTRIBUTION)
        .cloned()
        .or_else(|| spec.traffic_distribution.clone())?;
    if dist != "PreferClose" {
        return None;
    }
    use wl::load_balancing::{Mode, Scope};
    Some(wl::LoadBalancing {
        routing_preference: [Scope::Network, Scope::Region, Scope::Zone, Scope::Subzone]
            .map(|s| s as i32)
            .to_vec(),
        mode: Mode::Failover as i32,
        health_policy: 0,
    })
}

fn ip_families(spec: &core::ServiceSpec, vips: &[IpAddr]) -> wl::IpFamilies {
    let fams: Vec<bool> = match &spec.ip_families {
        Some(f) if !f.is_empty() => f.iter().map(|f| f == "IPv4").collect(),
        _ => vips.iter().map(IpAddr::is_ipv4).collect(),
    };
    let (v4, v6) = (fams.iter().any(|&b| b), fams.iter().any(|&b| !b));
    match (v4, v6) {
        (true, true) => wl::IpFamilies::Dual,
        (true, false) => wl::IpFamilies::Ipv4Only,
        (false, true) => wl::IpFamilies::Ipv6Only,
        (false, false) => wl::IpFamilies::Automatic,
    }
}

/// Port map of a Service for one pod: `service_port → target_port`, with a named target port looked up among
/// the pod's container ports (ports the pod does not expose are left out, as Kubernetes Endpoints do).
pub fn endpoint_ports(svc: &core::Service, pod: &core::Pod) -> Vec<Port> {
    ports_for(svc, &container_ports(pod))
}

/// A pod's named container ports.
pub fn container_ports(pod: &core::Pod) -> BTreeMap<String, u32> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some((p.name.clone()?, u32::try_from(p.container_port).ok()?)))
        .collect()
}

/// Port map of a Service for an endpoint whose named ports are `named` (a pod's container ports, a
/// WorkloadEntry's `ports`).
pub fn ports_for(svc: &core::Service, named: &BTreeMap<String, u32>) -> Vec<Port> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| {
            let service_port = u32::try_from(p.port).ok()?;
            let target_port = match &p.target_port {
                None => service_port,
                Some(IntOrString::Int(n)) => u32::try_from(*n).ok()?,
                Some(IntOrString::String(s)) => match s.parse() {
                    Ok(n) => n,
                    Err(_) => *named.get(s.as_str())?,
                },
            };
            Some(Port {
                service_port,
                target_port,
                app_protocol: app_protocol(p) as i32,
            })
        })
        .collect()
}
