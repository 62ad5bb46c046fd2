//! The headers HBONE carries besides the authority: `baggage` (workload telemetry), `forwarded` (original client
//! address and service host) and `traceparent` (one W3C trace id per outbound connection).

use std::fmt::Write;
use std::net::SocketAddr;

use rand::Rng;

use crate::state::Workload;

/// The W3C baggage of a workload, in upstream's key order; empty values are left out.
pub fn baggage(w: &Workload) -> String {
    let kind = w.workload_type.as_str();
    let type_key = format!("k8s.{kind}.name");
    let pairs: [(&str, &str); 7] = [
        ("k8s.cluster.name", &w.cluster_id),
        ("k8s.namespace.name", &w.namespace),
        (&type_key, &w.workload_name),
        ("service.name", &w.canonical_name),
        ("service.version", &w.canonical_revision),
        ("cloud.region", &w.locality.region),
        ("cloud.availability_zone", &w.locality.zone),
    ];
    let mut out = String::new();
    for (k, v) in pairs {
        if v.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "{k}={v}");
    }
    out
}

/// What a peer's baggage says about it (used when the peer's workload is not known from xDS).
#[derive(Debug, Default, PartialEq, Eq, Clone)]
pub struct Baggage {
    pub cluster: String,
    pub namespace: String,
    pub workload_name: String,
    pub service_name: String,
    pub revision: String,
    pub region: String,
    pub zone: String,
}

/// Parses a `baggage` header leniently: unknown keys, members without `=` and properties after `;` are ignored.
pub fn parse_baggage(value: &str) -> Baggage {
    let mut b = Baggage::default();
    for member in value.split(',') {
        let member = member.split(';').next().unwrap_or_default();
        let Some((k, v)) = member.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim().to_owned());
        match k {
            "k8s.cluster.name" => b.cluster = v,
            "k8s.namespace.name" => b.namespace = v,
            "k8s.deployment.name" | "k8s.cronjob.name" | "k8s.pod.name" | "k8s.job.name" => {
                b.workload_name = v
            }
            "service.name" => b.service_name = v,
            "service.version" => b.revision = v,
            "cloud.region" => b.region = v,
            "cloud.availability_zone" => b.zone = v,
            _ => {}
        }
    }
    b
}

/// `for="<client ip:port>"`, plus `;host=<service hostname>` when the destination is a service.
pub fn forwarded(client: SocketAddr, service_host: Option<&str>) -> String {
    match service_host {
        Some(h) => format!("for=\"{client}\";host={h}"),
        None => format!("for=\"{client}\""),
    }
}

/// The `host=` parameter of a `forwarded` header, if any (ASCII `;`-separated, optional quotes).
pub fn forwarded_host(value: &str) -> Option<&str> {
    value.split([';', ',']).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.eq_ignore_ascii_case("host").then(|| v.trim_matches('"'))
    })
}

/// A fresh W3C `traceparent`: version 00, random trace and parent ids, not sampled.
pub fn traceparent() -> String {
    let mut rng = rand::rng();
    let trace: u128 = rng.random_range(1..=u128::MAX);
    let parent: u64 = rng.random_range(1..=u64::MAX);
    format!("00-{trace:032x}-{parent:016x}-00")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_round_trip() {
        let v = forwarded(
            "10.0.0.1:1234".parse().unwrap(),
            Some("svc.ns.svc.cluster.local"),
        );
        assert_eq!(v, "for=\"10.0.0.1:1234\";host=svc.ns.svc.cluster.local");
        assert_eq!(forwarded_host(&v), Some("svc.ns.svc.cluster.local"));
        assert_eq!(forwarded_host("for=\"[fd00::1]:80\""), None);
        assert_eq!(forwarded_host("For=x; HOST=\"a.b\""), Some("a.b"));
    }

    #[test]
    fn traceparent_shape() {
        let t = traceparent();
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "00")
        );
        assert_ne!(t, traceparent());
    }

    #[test]
    fn baggage_parse_is_lenient() {
        let b = parse_baggage(
            "k8s.cluster.name=c1,k8s.namespace.name=demo,k8s.deployment.name=server;prop=1,service.name=srv,junk,=x,cloud.region=r",
        );
        assert_eq!(b.cluster, "c1");
        assert_eq!(b.namespace, "demo");
        assert_eq!(b.workload_name, "server");
        assert_eq!(b.service_name, "srv");
        assert_eq!(b.region, "r");
        assert_eq!(parse_baggage(""), Baggage::default());
    }
}
