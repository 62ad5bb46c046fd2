//! `istio.workload.Service` and `Workload` for ServiceEntries and WorkloadEntries, as istiod's ambient index
//! builds them.
//!
//! - **Services**: one per host of a ServiceEntry (`<ns>/<host>`), with the entry's `addresses` as VIPs (CIDRs
//!   too) or, without any, one allocated from `240.240.0.0/16` (istiod's `PILOT_ENABLE_IP_AUTOALLOCATE`, on by
//!   default): a hash of `<ns>/<host>` probed linearly, entries taken oldest first (creation time, then name), so
//!   an address stays put while its entry exists. Ports `number → targetPort` (or the number); the waypoint from
//!   `istio.io/use-waypoint` on the entry or its namespace.
//! - **Endpoints**: the entry's inline `endpoints` become workloads `<cluster>/networking.istio.io/ServiceEntry/
//!   <ns>/<name>/<address>`; its `workloadSelector` picks the WorkloadEntries of its namespace (and uncaptured
//!   pods, in [`super::workload`]). Endpoint ports come from the endpoint's `ports` by port name, else the entry's
//!   `targetPort`, else the port number.
//! - **WorkloadEntries** become workloads `<cluster>/networking.istio.io/WorkloadEntry/<ns>/<name>`, endpoints of
//!   the selecting entries and of the Kubernetes Services whose selector matches them (istiod's
//!   `PILOT_ENABLE_K8S_SELECT_WORKLOAD_ENTRIES`), HBONE when annotated `ambient.istio.io/redirection: enabled`.
//!
//! Not done (and said in the entry's status): wildcard hosts, and endpoints by DNS name (`resolution: DNS` with a
//! hostname, or no endpoints at all) — ztunnel does not resolve hostname workloads, so those get no endpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};

use ambit_proto::workload::{self as wl, NetworkAddress, Port, PortList};
use serde_json::{Value, json};

use super::authz::Policies;
use super::waypoint::Bindings;
use super::{ComputeConfig, ip_bytes, service_hostname};
use crate::index::Index;
use crate::sources::entries::{ServiceEntry, ServiceEntryPort, WorkloadEntrySpec};

/// The range istiod allocates ServiceEntry VIPs from.
const AUTO_RANGE: (Ipv4Addr, u32) = (Ipv4Addr::new(240, 240, 0, 0), 16);
/// The annotation that marks a WorkloadEntry (a VM running ztunnel) as speaking HBONE.
const REDIRECTION: &str = "ambient.istio.io/redirection";

/// What the entries add to WDS, and their status.
#[derive(Default)]
pub struct Entries {
    pub services: Vec<wl::Service>,
    pub workloads: Vec<wl::Workload>,
    /// `serviceentry/<ns>/<name>` → notes on what was not sent.
    pub notes: BTreeMap<String, Vec<String>>,
}

impl Entries {
    /// Adds to `status` (where [`super::status`] put the `WaypointBound` conditions) an `ambit.dev/Supported`
    /// condition, False with reason `UnsupportedValue`, on each entry with notes.
    pub fn add_status(&self, status: &mut BTreeMap<String, Value>) {
        for (key, notes) in &self.notes {
            let c = json!({
                "type": "ambit.dev/Supported",
                "status": "False",
                "reason": "UnsupportedValue",
                "message": notes.join("; "),
            });
            let entry = status
                .entry(key.clone())
                .or_insert_with(|| json!({"conditions": []}));
            match entry["conditions"].as_array_mut() {
                Some(list) => list.push(c),
                None => entry["conditions"] = json!([c]),
            }
        }
    }
}

/// The hosts of every ServiceEntry in `ns` whose `workloadSelector` selects `labels`, with the entry's ports.
pub fn selecting<'a>(
    index: &'a Index,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> impl Iterator<Item = (&'a ServiceEntry, &'a str)> {
    index
        .service_entries
        .range((ns.to_owned(), String::new())..)
        .take_while(move |((sns, _), _)| sns == ns)
        .filter(|(_, se)| {
            se.spec
                .workload_selector
                .as_ref()
                .is_some_and(|s| s.labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
        .flat_map(|(_, se)| usable_hosts(se).map(move |h| (se, h)))
}

fn usable_hosts(se: &ServiceEntry) -> impl Iterator<Item = &str> {
    se.spec
        .hosts
        .iter()
        .map(String::as_str)
        .filter(|h| !h.contains('*'))
}

/// The endpoint ports of `ports` for an endpoint with port map `named`.
pub fn endpoint_ports(ports: &[ServiceEntryPort], named: &BTreeMap<String, u32>) -> PortList {
    PortList {
        ports: ports
            .iter()
            .map(|p| Port {
                service_port: p.number,
                target_port: named
                    .get(&p.name)
                    .copied()
                    .or(p.target_port)
                    .unwrap_or(p.number),
                app_protocol: app_protocol(p.protocol.as_deref()) as i32,
            })
            .collect(),
    }
}

fn app_protocol(p: Option<&str>) -> wl::AppProtocol {
    match p.unwrap_or_default().to_ascii_uppercase().as_str() {
        "HTTP" => wl::AppProtocol::Http11,
        "HTTP2" => wl::AppProtocol::Http2,
        "GRPC" => wl::AppProtocol::Grpc,
        "TCP" | "MONGO" | "REDIS" | "MYSQL" => wl::AppProtocol::Tcp,
        "TLS" | "HTTPS" => wl::AppProtocol::Tls,
        _ => wl::AppProtocol::Unknown,
    }
}

/// VIPs allocated to the entries without `addresses`, by `(ns, host)`.
fn allocate(index: &Index) -> HashMap<(String, String), Ipv4Addr> {
    let mut wanting: Vec<(String, &str, &str, &str)> = index
        .service_entries
        .iter()
        .filter(|(_, se)| se.spec.addresses.is_empty())
        .flat_map(|((ns, name), se)| {
            let created = se
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            usable_hosts(se).map(move |h| (created.clone(), ns.as_str(), name.as_str(), h))
        })
        .collect();
    wanting.sort();
    let size = 1u32 << (32 - AUTO_RANGE.1);
    let base = u32::from(AUTO_RANGE.0);
    let mut taken: BTreeSet<u32> = BTreeSet::new();
    let mut out = HashMap::new();
    for (_, ns, _, host) in wanting {
        if out.contains_key(&(ns.to_owned(), host.to_owned())) {
            continue;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (ns, host).hash(&mut h);
        // Offsets 1 ..= size - 2: no network or broadcast address.
        let mut offset = (h.finish() % u64::from(size - 2)) as u32 + 1;
        while taken.contains(&offset) {
            offset = offset % (size - 2) + 1;
        }
        taken.insert(offset);
        out.insert(
            (ns.to_owned(), host.to_owned()),
            Ipv4Addr::from(base + offset),
        );
    }
    out
}

fn parse_address(s: &str, network: &str) -> Option<NetworkAddress> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, Some(len.parse::<u32>().ok()?)),
        None => (s.parse::<IpAddr>().ok()?, None),
    };
    Some(NetworkAddress {
        network: network.to_owned(),
        address: ip_bytes(ip),
        length: len,
    })
}

pub fn entries(
    index: &Index,
    cfg: &ComputeConfig,
    policies: &Policies,
    bindings: &Bindings,
) -> Entries {
    let mut out = Entries::default();
    let vips = allocate(index);
    for ((ns, name), se) in &index.service_entries {
        let key = format!("serviceentry/{ns}/{name}");
        let waypoint = bindings
            .service_entries
            .get(&(ns.clone(), name.clone()))
            .and_then(|b| b.address());
        let mut notes = Vec::new();
        for host in &se.spec.hosts {
            if host.contains('*') {
                notes.push(format!("host {host}: wildcard hosts are not supported"));
                continue;
            }
            let mut addresses: Vec<NetworkAddress> = Vec::new();
            for a in &se.spec.addresses {
                match parse_address(a, &cfg.network) {
                    Some(na) => addresses.push(na),
                    None => notes.push(format!("address {a:?} is not an IP or CIDR; ignored")),
                }
            }
            if se.spec.addresses.is_empty()
                && let Some(ip) = vips.get(&(ns.clone(), host.clone()))
            {
                addresses.push(NetworkAddress {
                    network: cfg.network.clone(),
                    address: ip_bytes(IpAddr::V4(*ip)),
                    length: None,
                });
            }
            out.services.push(wl::Service {
                name: name.clone(),
                namespace: ns.clone(),
                hostname: host.clone(),
                addresses,
                ports: endpoint_ports(&se.spec.ports, &BTreeMap::new()).ports,
                subject_alt_names: se.spec.subject_alt_names.clone(),
                waypoint: waypoint.clone(),
                ..Default::default()
            });
        }
        let dns = matches!(
            se.spec.resolution.as_deref(),
            Some("DNS" | "DNS_ROUND_ROBIN")
        );
        if dns && se.spec.endpoints.is_empty() && se.spec.workload_selector.is_none() {
            notes.push(
                "resolution DNS without endpoints: ztunnel does not resolve hostnames, so the hosts have no endpoint"
                    .to_owned(),
            );
        }
        for ep in &se.spec.endpoints {
            if ep.address.parse::<IpAddr>().is_err() {
                notes.push(format!(
                    "endpoint {:?}: endpoints by DNS name are not resolved by ztunnel; skipped",
                    ep.address
                ));
                continue;
            }
            let services = usable_hosts(se)
                .map(|h| {
                    (
                        format!("{ns}/{h}"),
                        endpoint_ports(&se.spec.ports, &ep.ports),
                    )
                })
                .collect();
            let uid = format!(
                "{}/networking.istio.io/ServiceEntry/{ns}/{name}/{}",
                cfg.cluster_id, ep.address
            );
            out.workloads.push(workload(
                cfg,
                policies,
                (ns, name),
                uid,
                ep,
                false,
                services,
            ));
        }
        if !notes.is_empty() {
            out.notes.insert(key, notes);
        }
    }
    for ((ns, name), we) in &index.workload_entries {
        let labels = &we.spec.labels;
        let mut services: HashMap<String, PortList> = selecting(index, ns, labels)
            .map(|(se, h)| {
                (
                    format!("{ns}/{h}"),
                    endpoint_ports(&se.spec.ports, &we.spec.ports),
                )
            })
            .collect();
        for ((sns, sname), svc) in index
            .services
            .range((ns.clone(), String::new())..)
            .take_while(|((sns, _), _)| sns == ns)
        {
            if super::workload::selects(svc, labels) {
                services.insert(
                    format!("{sns}/{}", service_hostname(sname, sns, cfg)),
                    PortList {
                        ports: super::service::ports_for(svc, &we.spec.ports),
                    },
                );
            }
        }
        let hbone = we
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REDIRECTION))
            .is_some_and(|v| v == "enabled");
        let uid = format!(
            "{}/networking.istio.io/WorkloadEntry/{ns}/{name}",
            cfg.cluster_id
        );
        out.workloads.push(workload(
            cfg,
            policies,
            (ns, name),
            uid,
            &we.spec,
            hbone,
            services,
        ));
    }
    out
}

fn workload(
    cfg: &ComputeConfig,
    policies: &Policies,
    (ns, name): (&String, &String),
    uid: String,
    ep: &WorkloadEntrySpec,
    hbone: bool,
    services: HashMap<String, PortList>,
) -> wl::Workload {
    let (addresses, hostname) = match ep.address.parse::<IpAddr>() {
        Ok(ip) => (vec![ip_bytes(ip)], String::new()),
        Err(_) => (Vec::new(), ep.address.clone()),
    };
    let canonical = ep
        .labels
        .get("service.istio.io/canonical-name")
        .or_else(|| ep.labels.get("app.kubernetes.io/name"))
        .or_else(|| ep.labels.get("app"))
        .cloned()
        .unwrap_or_else(|| name.clone());
    let revision = ep
        .labels
        .get("service.istio.io/canonical-revision")
        .or_else(|| ep.labels.get("app.kubernetes.io/version"))
        .or_else(|| ep.labels.get("version"))
        .cloned()
        .unwrap_or_else(|| "latest".to_owned());
    let mut locality = ep.locality.splitn(3, '/');
    let locality = (!ep.locality.is_empty()).then(|| wl::Locality {
        region: locality.next().unwrap_or_default().to_owned(),
        zone: locality.next().unwrap_or_default().to_owned(),
        subzone: locality.next().unwrap_or_default().to_owned(),
    });
    wl::Workload {
        uid,
        name: name.clone(),
        namespace: ns.clone(),
        addresses,
        hostname,
        network: if ep.network.is_empty() {
            cfg.network.clone()
        } else {
            ep.network.clone()
        },
        tunnel_protocol: if hbone {
            wl::TunnelProtocol::Hbone
        } else {
            wl::TunnelProtocol::None
        } as i32,
        trust_domain: cfg.trust_domain.clone(),
        service_account: if ep.service_account.is_empty() {
            "default".to_owned()
        } else {
            ep.service_account.clone()
        },
        canonical_name: canonical,
        canonical_revision: revision,
        workload_type: wl::WorkloadType::Pod as i32,
        workload_name: name.clone(),
        services,
        authorization_policies: policies.for_workload(ns, &ep.labels),
        cluster_id: cfg.cluster_id.clone(),
        locality,
        capacity: ep.weight,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
