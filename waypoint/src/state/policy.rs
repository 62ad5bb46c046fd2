//! `ambit.waypoint.BackendPolicy` (an Istio DestinationRule, converted by the controller) → the traffic policy of
//! each backend: load balancer, connection pool limits, outlier detection, and subsets.
//!
//! A policy is resolved per (service port, subset) section by section, the most specific setting winning: the
//! subset's port-level section, then the subset's, then the service's port-level section, then the service's —
//! so a subset that sets only `loadBalancer` keeps the service's connection pool, as in Istio.

use std::collections::{BTreeMap, HashSet};

use ambit_proto::waypoint as pb;

use crate::balance::lb::Algorithm;
use crate::balance::limits::Limits;
use crate::balance::outlier::OutlierDetection;

/// One section each; `None` where the source did not set it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sections {
    /// The algorithm, and whether close endpoints are preferred.
    pub load_balancer: Option<(Algorithm, bool)>,
    /// `connectionPool`: circuit-breaker limits and connection settings.
    pub pool: Option<Limits>,
    pub outlier: Option<OutlierDetection>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SubsetPolicy {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The workloads (uids) the subset selects.
    pub workloads: HashSet<String>,
    pub policy: Sections,
    pub ports: Vec<(u16, Sections)>,
}

/// The policy of one service.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendPolicy {
    pub hostname: String,
    /// The DestinationRule it came from (`<ns>/<name>`).
    pub source: String,
    pub policy: Sections,
    pub ports: Vec<(u16, Sections)>,
    pub subsets: Vec<SubsetPolicy>,
}

/// What applies to one backend (service port, maybe a subset), every section resolved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolved {
    pub algorithm: Option<Algorithm>,
    pub prefer_close: bool,
    pub pool: Limits,
    pub outlier: Option<OutlierDetection>,
}

impl Sections {
    fn from_proto(f: &str, p: Option<&pb::TrafficPolicy>) -> Result<Sections, String> {
        let Some(p) = p else {
            return Ok(Sections::default());
        };
        let load_balancer = p
            .load_balancer
            .as_ref()
            .map(|lb| {
                Algorithm::from_proto(lb)
                    .map(|a| (a, lb.prefer_close))
                    .map_err(|e| format!("{f}.loadBalancer: {e}"))
            })
            .transpose()?;
        let pool = p
            .connection_pool
            .as_ref()
            .map(|c| Limits::from_proto(c).map_err(|e| format!("{f}.connectionPool: {e}")))
            .transpose()?;
        let outlier = p
            .outlier_detection
            .as_ref()
            .map(|o| {
                OutlierDetection::from_proto(o).map_err(|e| format!("{f}.outlierDetection: {e}"))
            })
            .transpose()?;
        Ok(Sections {
            load_balancer,
            pool,
            outlier,
        })
    }

    /// Fills what `self` does not set from `less_specific`.
    fn or(&self, less_specific: &Sections) -> Sections {
        Sections {
            load_balancer: self
                .load_balancer
                .clone()
                .or_else(|| less_specific.load_balancer.clone()),
            pool: self.pool.clone().or_else(|| less_specific.pool.clone()),
            outlier: self
                .outlier
                .clone()
                .or_else(|| less_specific.outlier.clone()),
        }
    }
}

fn port_sections(f: &str, ports: &[pb::PortTrafficPolicy]) -> Result<Vec<(u16, Sections)>, String> {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let f = format!("{f}[{i}]");
            let port = u16::try_from(p.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{f}.port: {} is not a port", p.port))?;
            Ok((port, Sections::from_proto(&f, p.policy.as_ref())?))
        })
        .collect()
}

fn at_port(ports: &[(u16, Sections)], port: u16) -> Option<&Sections> {
    ports.iter().find(|(p, _)| *p == port).map(|(_, s)| s)
}

impl BackendPolicy {
    /// Converts one resource; every error names the field.
    pub fn from_proto(name: &str, p: &pb::BackendPolicy) -> Result<BackendPolicy, String> {
        let hostname = if p.hostname.is_empty() {
            name.to_owned()
        } else {
            p.hostname.clone()
        };
        if hostname.is_empty() {
            return Err("hostname: empty".into());
        }
        let mut names = HashSet::new();
        let subsets = p
            .subsets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let f = format!("subsets[{i}]");
                if s.name.is_empty() {
                    return Err(format!("{f}.name: empty"));
                }
                if !names.insert(s.name.clone()) {
                    return Err(format!("{f}.name: {:?} defined twice", s.name));
                }
                Ok(SubsetPolicy {
                    name: s.name.clone(),
                    labels: s
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    workloads: s
                        .workloads
                        .as_ref()
                        .map(|w| w.uids.iter().cloned().collect())
                        .unwrap_or_default(),
                    policy: Sections::from_proto(&format!("{f}.policy"), s.policy.as_ref())?,
                    ports: port_sections(&format!("{f}.ports"), &s.ports)?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(BackendPolicy {
            hostname,
            source: p.source.clone(),
            policy: Sections::from_proto("policy", p.policy.as_ref())?,
            ports: port_sections("ports", &p.ports)?,
            subsets,
        })
    }

    pub fn subset(&self, name: &str) -> Option<&SubsetPolicy> {
        self.subsets.iter().find(|s| s.name == name)
    }

    /// The policy of `port` (and `subset`), section by section from the most specific.
    pub fn resolve(&self, port: u16, subset: Option<&SubsetPolicy>) -> Resolved {
        let service =
            at_port(&self.ports, port).map_or_else(|| self.policy.clone(), |p| p.or(&self.policy));
        let s = match subset {
            Some(sub) => {
                let own = at_port(&sub.ports, port)
                    .map_or_else(|| sub.policy.clone(), |p| p.or(&sub.policy));
                own.or(&service)
            }
            None => service,
        };
        Resolved {
            algorithm: s.load_balancer.as_ref().map(|(a, _)| a.clone()),
            prefer_close: s.load_balancer.as_ref().is_some_and(|(_, c)| *c),
            pool: s.pool.unwrap_or_default(),
            outlier: s.outlier,
        }
    }
}
