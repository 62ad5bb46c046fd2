//! WDS (`istio.workload.Address`) → [`Service`] / [`Workload`]. Only what the waypoint uses is kept; a malformed
//! resource is an error naming the field (the resource is NACKed, the rest of the update applies).

use std::collections::HashMap;
use std::net::IpAddr;

use ambit_proto::workload as pb;

use crate::balance::locality::Locality;

use super::{AppProtocol, Resource, Service, ServicePort, Tunnel, WaypointRef, Workload};

fn ip(b: &[u8]) -> Result<IpAddr, String> {
    match b.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(b).map_err(|_| "bad IPv4")?,
        )),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(b).map_err(|_| "bad IPv6")?,
        )),
        n => Err(format!("address of {n} bytes")),
    }
}

fn port(p: u32, what: &str) -> Result<u16, String> {
    u16::try_from(p).map_err(|_| format!("{what} {p} out of range"))
}

pub(super) fn app_protocol(p: i32) -> AppProtocol {
    match pb::AppProtocol::try_from(p) {
        Ok(pb::AppProtocol::Http11) => AppProtocol::Http1,
        Ok(pb::AppProtocol::Http2) => AppProtocol::Http2,
        Ok(pb::AppProtocol::Grpc) => AppProtocol::Grpc,
        Ok(pb::AppProtocol::Tcp) => AppProtocol::Tcp,
        Ok(pb::AppProtocol::Tls) => AppProtocol::Tls,
        Ok(pb::AppProtocol::Unknown) | Err(_) => AppProtocol::Unknown,
    }
}

fn waypoint(g: Option<&pb::GatewayAddress>) -> Result<Option<WaypointRef>, String> {
    let Some(g) = g else { return Ok(None) };
    Ok(match &g.destination {
        Some(pb::gateway_address::Destination::Hostname(h)) => Some(WaypointRef::Hostname {
            namespace: h.namespace.clone(),
            hostname: h.hostname.clone(),
        }),
        Some(pb::gateway_address::Destination::Address(a)) => Some(WaypointRef::Address(
            ip(&a.address).map_err(|e| format!("waypoint: {e}"))?,
        )),
        None => None,
    })
}

fn service(s: &pb::Service) -> Result<Service, String> {
    if s.hostname.is_empty() {
        return Err("service without hostname".into());
    }
    Ok(Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        vips: s
            .addresses
            .iter()
            .map(|a| ip(&a.address).map_err(|e| format!("addresses: {e}")))
            .collect::<Result<_, _>>()?,
        ports: s
            .ports
            .iter()
            .map(|p| {
                Ok(ServicePort {
                    port: port(p.service_port, "service port")?,
                    target_port: port(p.target_port, "target port")?,
                    protocol: app_protocol(p.app_protocol),
                })
            })
            .collect::<Result<_, String>>()?,
        waypoint: waypoint(s.waypoint.as_ref())?,
    })
}

fn workload(w: &pb::Workload) -> Result<Workload, String> {
    if w.uid.is_empty() {
        return Err("workload without uid".into());
    }
    let services = w
        .services
        .iter()
        .map(|(k, list)| {
            let ports = list
                .ports
                .iter()
                .map(|p| {
                    Ok((
                        port(p.service_port, "service port")?,
                        port(p.target_port, "target port")?,
                    ))
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok((k.clone(), ports))
        })
        .collect::<Result<HashMap<_, _>, String>>()?;
    Ok(Workload {
        uid: w.uid.clone(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        service_account: if w.service_account.is_empty() {
            "default".into()
        } else {
            w.service_account.clone()
        },
        trust_domain: if w.trust_domain.is_empty() {
            "cluster.local".into()
        } else {
            w.trust_domain.clone()
        },
        ips: w
            .addresses
            .iter()
            .map(|a| ip(a).map_err(|e| format!("addresses: {e}")))
            .collect::<Result<_, _>>()?,
        tunnel: if w.tunnel_protocol == pb::TunnelProtocol::Hbone as i32 {
            Tunnel::Hbone
        } else {
            Tunnel::None
        },
        workload_name: w.workload_name.clone(),
        canonical_name: w.canonical_name.clone(),
        canonical_revision: w.canonical_revision.clone(),
        cluster_id: w.cluster_id.clone(),
        services,
        healthy: w.status == pb::WorkloadStatus::Healthy as i32,
        waypoint: waypoint(w.waypoint.as_ref())?,
        locality: w.locality.as_ref().map(Locality::from).unwrap_or_default(),
    })
}

/// One WDS resource.
pub fn address_from_proto(a: &pb::Address) -> Result<Resource, String> {
    match &a.r#type {
        Some(pb::address::Type::Service(s)) => service(s).map(Resource::Service),
        Some(pb::address::Type::Workload(w)) => workload(w).map(Resource::Workload),
        None => Err("address without a workload or service".into()),
    }
}
