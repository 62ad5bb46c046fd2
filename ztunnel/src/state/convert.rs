//! xDS wire types (`istio.workload.*`) → domain types, with the defaulting and validation of spec 2.5.
//! An error here rejects one resource: it becomes that resource's NACK reason.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ambit_proto::workload as pb;
use ipnet::IpNet;

use super::types::*;

/// Why an `istio.workload` resource was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("address has neither a workload nor a service")]
    EmptyAddress,
    #[error("invalid IP address: {0} bytes (want 4 or 16)")]
    BadIpLength(usize),
    #[error("tunnel protocol LEGACY_ISTIO_MTLS is not supported")]
    LegacyIstioMtls,
    #[error("gateway address has no destination")]
    GatewayWithoutDestination,
    #[error("unknown {field} value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("{field} {value} is not a valid port")]
    BadPort { field: &'static str, value: u32 },
    #[error("routing preference UNSPECIFIED_SCOPE is not allowed")]
    UnspecifiedScope,
    #[error("invalid prefix length {len} for {ip}")]
    BadPrefix { ip: IpAddr, len: u32 },
}

/// A domain resource decoded from one `Address`. Short-lived (converted, then stored), so not boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressResource {
    Workload(Workload),
    Service(Service),
}

impl TryFrom<pb::Address> for AddressResource {
    type Error = ConvertError;
    fn try_from(a: pb::Address) -> Result<Self, Self::Error> {
        match a.r#type {
            Some(pb::address::Type::Workload(w)) => Ok(AddressResource::Workload(w.try_into()?)),
            Some(pb::address::Type::Service(s)) => Ok(AddressResource::Service(s.try_into()?)),
            None => Err(ConvertError::EmptyAddress),
        }
    }
}

pub(crate) fn ip_from_bytes(b: &[u8]) -> Result<IpAddr, ConvertError> {
    match b.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(b);
            Ok(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        n => Err(ConvertError::BadIpLength(n)),
    }
}

fn port(field: &'static str, value: u32) -> Result<u16, ConvertError> {
    u16::try_from(value).map_err(|_| ConvertError::BadPort { field, value })
}

fn unknown(field: &'static str, value: i32) -> ConvertError {
    ConvertError::UnknownEnum { field, value }
}

fn or_default(s: String, default: &str) -> String {
    if s.is_empty() { default.to_owned() } else { s }
}

fn port_map(ports: &[pb::Port]) -> Result<PortMap, ConvertError> {
    ports
        .iter()
        .map(|p| {
            Ok((
                port("service port", p.service_port)?,
                port("target port", p.target_port)?,
            ))
        })
        .collect()
}

impl TryFrom<pb::GatewayAddress> for GatewayAddress {
    type Error = ConvertError;
    fn try_from(g: pb::GatewayAddress) -> Result<Self, Self::Error> {
        let destination = match g
            .destination
            .ok_or(ConvertError::GatewayWithoutDestination)?
        {
            pb::gateway_address::Destination::Hostname(h) => {
                GatewayDestination::Hostname(NamespacedHostname {
                    namespace: h.namespace,
                    hostname: h.hostname,
                })
            }
            pb::gateway_address::Destination::Address(a) => {
                GatewayDestination::Address(NetworkAddress {
                    network: a.network,
                    address: ip_from_bytes(&a.address)?,
                })
            }
        };
        let hbone_mtls_port = match g.hbone_mtls_port {
            0 => DEFAULT_HBONE_PORT,
            p => port("hbone_mtls_port", p)?,
        };
        Ok(GatewayAddress {
            destination,
            hbone_mtls_port,
        })
    }
}

fn gateway(g: Option<pb::GatewayAddress>) -> Result<Option<GatewayAddress>, ConvertError> {
    g.map(GatewayAddress::try_from).transpose()
}

impl TryFrom<pb::Workload> for Workload {
    type Error = ConvertError;
    fn try_from(w: pb::Workload) -> Result<Self, Self::Error> {
        let workload_ips = w
            .addresses
            .iter()
            .map(|a| ip_from_bytes(a))
            .collect::<Result<Vec<_>, _>>()?;
        let protocol = match pb::TunnelProtocol::try_from(w.tunnel_protocol) {
            Ok(pb::TunnelProtocol::None) => InboundProtocol::Tcp,
            Ok(pb::TunnelProtocol::Hbone) => InboundProtocol::Hbone,
            Ok(pb::TunnelProtocol::LegacyIstioMtls) => return Err(ConvertError::LegacyIstioMtls),
            Err(_) => return Err(unknown("tunnel_protocol", w.tunnel_protocol)),
        };
        let network_mode = match pb::NetworkMode::try_from(w.network_mode) {
            Ok(pb::NetworkMode::Standard) => NetworkMode::Standard,
            Ok(pb::NetworkMode::HostNetwork) => NetworkMode::HostNetwork,
            Err(_) => return Err(unknown("network_mode", w.network_mode)),
        };
        let status = match pb::WorkloadStatus::try_from(w.status) {
            Ok(pb::WorkloadStatus::Healthy) => HealthStatus::Healthy,
            Ok(pb::WorkloadStatus::Unhealthy) => HealthStatus::Unhealthy,
            Err(_) => return Err(unknown("status", w.status)),
        };
        // Unknown workload types fall back to the zero value (DEPLOYMENT), as upstream does.
        let workload_type = match pb::WorkloadType::try_from(w.workload_type) {
            Ok(pb::WorkloadType::Cronjob) => WorkloadType::Cronjob,
            Ok(pb::WorkloadType::Pod) => WorkloadType::Pod,
            Ok(pb::WorkloadType::Job) => WorkloadType::Job,
            Ok(pb::WorkloadType::Deployment) | Err(_) => WorkloadType::Deployment,
        };
        let application_tunnel = match w.application_tunnel {
            None => None,
            Some(t) => {
                let protocol = match pb::application_tunnel::Protocol::try_from(t.protocol) {
                    Ok(pb::application_tunnel::Protocol::None) => AppTunnelProtocol::None,
                    Ok(pb::application_tunnel::Protocol::Proxy) => AppTunnelProtocol::Proxy,
                    Err(_) => return Err(unknown("application_tunnel.protocol", t.protocol)),
                };
                let port = match t.port {
                    0 => None,
                    p => Some(port("application_tunnel.port", p)?),
                };
                Some(ApplicationTunnel { protocol, port })
            }
        };
        let services = w
            .services
            .iter()
            .map(|(k, v)| Ok((k.clone(), port_map(&v.ports)?)))
            .collect::<Result<BTreeMap<_, _>, ConvertError>>()?;
        let locality = w
            .locality
            .map(|l| Locality {
                region: l.region,
                zone: l.zone,
                subzone: l.subzone,
            })
            .unwrap_or_default();
        Ok(Workload {
            uid: w.uid,
            name: w.name,
            namespace: w.namespace,
            workload_ips,
            hostname: w.hostname,
            network: w.network,
            protocol,
            network_mode,
            trust_domain: or_default(w.trust_domain, "cluster.local"),
            service_account: or_default(w.service_account, "default"),
            waypoint: gateway(w.waypoint)?,
            network_gateway: gateway(w.network_gateway)?,
            node: w.node,
            canonical_name: w.canonical_name,
            canonical_revision: w.canonical_revision,
            workload_type,
            workload_name: w.workload_name,
            native_tunnel: w.native_tunnel,
            application_tunnel,
            services,
            authorization_policies: w.authorization_policies,
            status,
            cluster_id: or_default(w.cluster_id, "Kubernetes"),
            locality,
            capacity: w.capacity.unwrap_or(1),
        })
    }
}

fn load_balancer(lb: pb::LoadBalancing) -> Result<LoadBalancer, ConvertError> {
    use pb::load_balancing::{HealthPolicy as PbHealth, Mode, Scope};
    let routing_preferences = lb
        .routing_preference
        .iter()
        .map(|&s| match Scope::try_from(s) {
            Ok(Scope::UnspecifiedScope) => Err(ConvertError::UnspecifiedScope),
            Ok(Scope::Region) => Ok(LbScope::Region),
            Ok(Scope::Zone) => Ok(LbScope::Zone),
            Ok(Scope::Subzone) => Ok(LbScope::Subzone),
            Ok(Scope::Node) => Ok(LbScope::Node),
            Ok(Scope::Cluster) => Ok(LbScope::Cluster),
            Ok(Scope::Network) => Ok(LbScope::Network),
            Err(_) => Err(unknown("routing_preference", s)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mode = match Mode::try_from(lb.mode) {
        Ok(Mode::UnspecifiedMode) => LbMode::Standard,
        Ok(Mode::Strict) => LbMode::Strict,
        Ok(Mode::Failover) => LbMode::Failover,
        Ok(Mode::Passthrough) => LbMode::Passthrough,
        Err(_) => return Err(unknown("load_balancing.mode", lb.mode)),
    };
    let health_policy = match PbHealth::try_from(lb.health_policy) {
        Ok(PbHealth::OnlyHealthy) => HealthPolicy::OnlyHealthy,
        Ok(PbHealth::AllowAll) => HealthPolicy::AllowAll,
        Err(_) => return Err(unknown("load_balancing.health_policy", lb.health_policy)),
    };
    Ok(LoadBalancer {
        routing_preferences,
        mode,
        health_policy,
    })
}

impl TryFrom<pb::Service> for Service {
    type Error = ConvertError;
    fn try_from(s: pb::Service) -> Result<Self, Self::Error> {
        let mut vips = Vec::new();
        let mut cidr_vips = Vec::new();
        for a in s.addresses {
            let ip = ip_from_bytes(&a.address)?;
            let full = if ip.is_ipv4() { 32 } else { 128 };
            match a.length {
                Some(len) if len != full => {
                    let prefix =
                        u8::try_from(len).map_err(|_| ConvertError::BadPrefix { ip, len })?;
                    let cidr =
                        IpNet::new(ip, prefix).map_err(|_| ConvertError::BadPrefix { ip, len })?;
                    cidr_vips.push(NetworkCidr {
                        network: a.network,
                        cidr: cidr.trunc(),
                    });
                }
                _ => vips.push(NetworkAddress {
                    network: a.network,
                    address: ip,
                }),
            }
        }
        let ip_families = match pb::IpFamilies::try_from(s.ip_families) {
            Ok(pb::IpFamilies::Automatic) => None,
            Ok(pb::IpFamilies::Ipv4Only) => Some(IpFamilies::Ipv4Only),
            Ok(pb::IpFamilies::Ipv6Only) => Some(IpFamilies::Ipv6Only),
            Ok(pb::IpFamilies::Dual) => Some(IpFamilies::Dual),
            Err(_) => return Err(unknown("ip_families", s.ip_families)),
        };
        // Unknown visibility values fall back to PUBLIC.
        let visibility = match pb::service::Visibility::try_from(s.visibility) {
            Ok(pb::service::Visibility::Namespace) => Visibility::Namespace,
            _ => Visibility::Public,
        };
        let weighted_waypoints = s
            .weighted_waypoints
            .into_iter()
            .map(|w| {
                let destination = w
                    .destination
                    .ok_or(ConvertError::GatewayWithoutDestination)?
                    .try_into()?;
                Ok(WeightedWaypoint {
                    destination,
                    weight: w.weight,
                })
            })
            .collect::<Result<Vec<_>, ConvertError>>()?;
        Ok(Service {
            name: s.name,
            namespace: s.namespace,
            hostname: s.hostname,
            vips,
            cidr_vips,
            ports: port_map(&s.ports)?,
            endpoints: BTreeMap::new(),
            subject_alt_names: s.subject_alt_names,
            waypoint: gateway(s.waypoint)?,
            weighted_waypoints,
            load_balancer: s.load_balancing.map(load_balancer).transpose()?,
            ip_families,
            canonical: s.canonical,
            visibility,
        })
    }
}
