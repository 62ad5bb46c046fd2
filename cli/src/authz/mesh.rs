//! The mesh as the controller computed it, read from its `/debug/resources` JSON (from `controller compute` or a
//! running controller): services, workloads, the ztunnels' L4 policies and each waypoint's L7 policies and JWT
//! rules. Only reading happens here; evaluation is `ambit_core::{rbac, authz, jwt}`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ambit_core::rbac::Authorization;
use ambit_proto::waypoint as pb;
use serde_json::Value;

use super::InputError;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<u16>,
    /// The bound waypoint's Service `(namespace, hostname)`.
    pub waypoint: Option<(String, String)>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub ips: Vec<IpAddr>,
    pub service_account: String,
    pub trust_domain: String,
    /// Service key `ns/hostname` → (service port, target port).
    pub services: BTreeMap<String, Vec<(u16, u16)>>,
    pub authorization_policies: Vec<String>,
    pub waypoint: Option<(String, String)>,
}

impl Workload {
    pub fn identity(&self) -> String {
        let td = if self.trust_domain.is_empty() {
            "cluster.local"
        } else {
            &self.trust_domain
        };
        format!(
            "spiffe://{td}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// Everything `ambit authz check` reads.
#[derive(Debug, Default)]
pub struct Mesh {
    pub services: Vec<Service>,
    pub workloads: Vec<Workload>,
    pub l4: BTreeMap<String, Arc<Authorization>>,
    pub waypoint_policies: BTreeMap<String, pb::AuthorizationPolicy>,
    pub waypoint_policy_scopes: BTreeMap<String, Vec<String>>,
    pub request_authns: BTreeMap<String, pb::RequestAuthentication>,
    pub request_authn_scopes: BTreeMap<String, Vec<String>>,
    /// Auto-deployed waypoint manifests by `<ns>.<gateway>`.
    pub deployments: BTreeMap<String, Vec<Value>>,
    /// Whether the addresses are the placeholders of `controller compute` (no pod is running).
    pub placeholders: bool,
}

fn str_of(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn u16_of(v: &Value, k: &str) -> u16 {
    v.get(k)
        .and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or(0)
}

/// `"ns/host"` (a rendered waypoint destination).
fn waypoint_of(v: &Value) -> Option<(String, String)> {
    let dest = v.get("waypoint")?.get("destination")?.as_str()?;
    let (ns, host) = dest.split_once('/')?;
    Some((ns.to_owned(), host.to_owned()))
}

fn names(v: Option<&Value>) -> BTreeMap<String, Vec<String>> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let list = v
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default();
                    (k.clone(), list)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Each entry of a `name → message` map, decoded with the schema's own serde form.
fn messages<T: serde::de::DeserializeOwned>(
    v: Option<&Value>,
    what: &str,
) -> Result<BTreeMap<String, T>, InputError> {
    let mut out = BTreeMap::new();
    for (k, m) in v.and_then(Value::as_object).into_iter().flatten() {
        let msg = serde_json::from_value(m.clone())
            .map_err(|e| InputError(format!("{what} {k}: {e}")))?;
        out.insert(k.clone(), msg);
    }
    Ok(out)
}

impl Mesh {
    pub fn from_resources(r: &Value) -> Result<Mesh, InputError> {
        let addresses = r
            .get("addresses")
            .and_then(Value::as_object)
            .ok_or_else(|| InputError("the resources have no `addresses` object".into()))?;
        let mut mesh = Mesh {
            placeholders: r.get("placeholders").is_some(),
            ..Mesh::default()
        };
        for a in addresses.values() {
            if let Some(s) = a.get("service") {
                mesh.services.push(Service {
                    name: str_of(s, "name"),
                    namespace: str_of(s, "namespace"),
                    hostname: str_of(s, "hostname"),
                    vips: s
                        .get("addresses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .filter_map(|a| a.rsplit('/').next()?.parse().ok())
                        .collect(),
                    ports: s
                        .get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(|p| u16_of(p, "servicePort"))
                        .collect(),
                    waypoint: waypoint_of(s),
                });
            } else if let Some(w) = a.get("workload") {
                let services = w
                    .get("services")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, ports)| {
                        let ports = ports
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|p| (u16_of(p, "servicePort"), u16_of(p, "targetPort")))
                            .collect();
                        (k.clone(), ports)
                    })
                    .collect();
                mesh.workloads.push(Workload {
                    name: str_of(w, "name"),
                    namespace: str_of(w, "namespace"),
                    ips: w
                        .get("addresses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str()?.parse().ok())
                        .collect(),
                    service_account: str_of(w, "serviceAccount"),
                    trust_domain: str_of(w, "trustDomain"),
                    services,
                    authorization_policies: w
                        .get("authorizationPolicies")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect(),
                    waypoint: waypoint_of(w),
                });
            }
        }
        for (k, p) in r
            .get("authorizations")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            // The same serde form ztunnel's local config file uses.
            let a: Authorization = serde_json::from_value(p.clone())
                .map_err(|e| InputError(format!("authorization {k}: {e}")))?;
            mesh.l4.insert(k.clone(), Arc::new(a));
        }
        mesh.waypoint_policies =
            messages(r.get("waypointAuthorizations"), "waypoint authorization")?;
        mesh.waypoint_policy_scopes = names(r.get("waypointAuthorizationScopes"));
        mesh.request_authns = messages(r.get("requestAuthentications"), "request authentication")?;
        mesh.request_authn_scopes = names(r.get("requestAuthenticationScopes"));
        if let Some(d) = r.get("deployments").and_then(Value::as_object) {
            for (k, v) in d {
                let list = v.as_array().cloned().unwrap_or_default();
                mesh.deployments.insert(k.clone(), list);
            }
        }
        Ok(mesh)
    }

    /// A service by hostname, `name.namespace`, or a hostname prefix ending at a dot.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.hostname == name)
            .or_else(|| {
                self.services
                    .iter()
                    .find(|s| format!("{}.{}", s.name, s.namespace) == name)
            })
            .or_else(|| {
                self.services.iter().find(|s| {
                    s.hostname
                        .strip_prefix(name)
                        .is_some_and(|r| r.starts_with('.'))
                })
            })
    }

    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Workload> {
        self.workloads
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
    }

    /// The workloads behind `svc` with their target port for `port`.
    pub fn endpoints(&self, svc: &Service, port: u16) -> Vec<(&Workload, u16)> {
        let key = format!("{}/{}", svc.namespace, svc.hostname);
        self.workloads
            .iter()
            .filter_map(|w| {
                let ports = w.services.get(&key)?;
                let target = ports
                    .iter()
                    .find(|(sp, _)| *sp == port)
                    .map_or(port, |(_, tp)| if *tp == 0 { port } else { *tp });
                Some((w, target))
            })
            .collect()
    }

    /// The L4 policies a destination ztunnel applies to `w` (the selection ztunnel itself makes).
    pub fn l4_policies_for(&self, w: &Workload) -> (Vec<Arc<Authorization>>, Vec<String>) {
        let mut unknown = Vec::new();
        let ps = ambit_core::rbac::select(
            self.l4.values(),
            |n| self.l4.get(n),
            &w.namespace,
            &w.authorization_policies,
            |n| unknown.push(n.to_owned()),
        );
        (ps, unknown)
    }

    /// A waypoint by its Service `(namespace, hostname)`: its Gateway name, class and service account, read from
    /// the deployment the controller made for it (Istio's defaults when there is none: the Gateway's name for
    /// both the Service and the service account, class `istio-waypoint`).
    pub fn waypoint(&self, ns: &str, hostname: &str) -> Waypoint {
        let name = hostname.split('.').next().unwrap_or(hostname).to_owned();
        let docs = self.deployments.get(&format!("{ns}.{name}"));
        let deployment = docs
            .into_iter()
            .flatten()
            .find(|d| d.get("kind").and_then(Value::as_str) == Some("Deployment"));
        let pod_spec = deployment.and_then(|d| d.pointer("/spec/template/spec"));
        let env = |key: &str| {
            pod_spec?
                .get("containers")?
                .as_array()?
                .iter()
                .flat_map(|c| c.get("env").and_then(Value::as_array).into_iter().flatten())
                .find(|e| e.get("name").and_then(Value::as_str) == Some(key))?
                .get("value")?
                .as_str()
                .map(str::to_owned)
        };
        let gateway = env("GATEWAY_NAME").unwrap_or(name);
        let service_account = pod_spec
            .and_then(|s| s.get("serviceAccountName"))
            .and_then(Value::as_str)
            .map_or_else(|| gateway.clone(), str::to_owned);
        let class = env("GATEWAY_CLASS").unwrap_or_else(|| "istio-waypoint".to_owned());
        let pod = self
            .workloads
            .iter()
            .find(|w| {
                w.namespace == ns
                    && w.service_account == service_account
                    && w.name.starts_with(&gateway)
            })
            .cloned();
        Waypoint {
            namespace: ns.to_owned(),
            gateway,
            class,
            service_account,
            pod,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Waypoint {
    pub namespace: String,
    pub gateway: String,
    pub class: String,
    pub service_account: String,
    /// A waypoint pod (its address), if the resources have one.
    pub pod: Option<Workload>,
}

impl Waypoint {
    pub fn identity(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.gateway)
    }
}
