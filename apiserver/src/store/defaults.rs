//! What the real server fills in or owns for a few kinds: namespace phase and finalizer, pod phase, Service
//! type, ports and cluster IP, Deployment/ReplicaSet replicas, and a CRD's status (established at once).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::{Value, json};

use super::Inner;
use crate::meta;
use crate::resources::{ResourceType, TypeKey, crd_resource_type};

impl Inner {
    /// `obj` with the server's defaults filled in, as a write would store it (errors leave it as it is).
    pub fn normalize(&self, rt: &ResourceType, obj: &mut Value, old: Option<&Value>) {
        let mut candidate = obj.clone();
        if self.apply_defaults(rt, &mut candidate, old).is_ok() {
            *obj = candidate;
        }
    }

    /// Fills defaults on `obj` (`old` is the stored object on updates). An error makes the write `Invalid`.
    pub(super) fn apply_defaults(
        &self,
        rt: &ResourceType,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), String> {
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "namespaces") => {
                if obj.pointer("/spec/finalizers").is_none() {
                    obj["spec"] = json!({"finalizers": ["kubernetes"]});
                }
                if obj.pointer("/status/phase").is_none() {
                    obj["status"] = json!({"phase": if meta::is_deleting(obj) { "Terminating" } else { "Active" }});
                }
                let name = meta::name(obj).to_owned();
                if let Some(m) = meta::meta_mut(obj) {
                    let labels = m.entry("labels").or_insert_with(|| json!({}));
                    if let Some(l) = labels.as_object_mut() {
                        l.insert("kubernetes.io/metadata.name".into(), json!(name));
                    }
                }
            }
            ("", "pods") if old.is_none() && obj.pointer("/status/phase").is_none() => {
                obj["status"] = json!({"phase": "Pending"});
            }
            ("", "services") => self.default_service(obj, old)?,
            ("apps", "deployments" | "replicasets") => {
                if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.entry("replicas").or_insert(json!(1));
                }
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                let crd_rt = crd_resource_type(obj).map_err(|e| e.0)?;
                if self.registry.is_builtin(&crd_rt.key()) {
                    return Err(format!("{} is a built-in resource", crd_rt.key().id()));
                }
                let status = crd_status(obj, &crd_rt);
                // Unchanged names keep the old conditions (and their transition times): a re-apply is a no-op.
                let same = old.and_then(|o| o.get("status")).filter(|s| {
                    s.get("acceptedNames") == status.get("acceptedNames")
                        && s.get("storedVersions") == status.get("storedVersions")
                });
                obj["status"] = same.cloned().unwrap_or(status);
            }
            _ => {}
        }
        Ok(())
    }

    fn default_service(&self, obj: &mut Value, old: Option<&Value>) -> Result<(), String> {
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return Err("spec: Required value".into());
        };
        let svc_type = spec
            .entry("type")
            .or_insert(json!("ClusterIP"))
            .as_str()
            .unwrap_or("")
            .to_owned();
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.entry("protocol").or_insert(json!("TCP"));
                if let Some(port) = p.get("port").cloned() {
                    p.entry("targetPort").or_insert(port);
                }
            }
        }
        if svc_type == "ExternalName" {
            return Ok(());
        }
        let old_ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str);
        let ip = match (spec.get("clusterIP").and_then(Value::as_str), old_ip) {
            (Some(new), Some(old)) if !new.is_empty() && new != old => {
                return Err(format!(
                    "spec.clusterIP: Invalid value: {new:?}: field is immutable"
                ));
            }
            (_, Some(old)) => old.to_owned(),
            (Some(new), None) if !new.is_empty() => new.to_owned(),
            _ => self.allocate_cluster_ip()?,
        };
        spec.insert("clusterIP".into(), json!(ip));
        spec.entry("clusterIPs").or_insert(json!([ip]));
        Ok(())
    }

    fn allocate_cluster_ip(&self) -> Result<String, String> {
        let (base, len) = self
            .config
            .service_cidr
            .split_once('/')
            .and_then(|(a, l)| Some((a.parse::<Ipv4Addr>().ok()?, l.parse::<u32>().ok()?)))
            .filter(|(_, l)| (8..=30).contains(l))
            .ok_or_else(|| {
                format!(
                    "the service CIDR {:?} is not an IPv4 CIDR",
                    self.config.service_cidr
                )
            })?;
        let used: HashSet<&str> = self
            .objects_of(&TypeKey::new("", "services"))
            .filter_map(|s| s.pointer("/spec/clusterIP").and_then(Value::as_str))
            .collect();
        let base = u32::from(base) & !((1u32 << (32 - len)) - 1);
        // .1 is the API server's own `kubernetes` Service address on a cluster: start at .10.
        (10..(1u32 << (32 - len)) - 1)
            .map(|i| Ipv4Addr::from(base + i).to_string())
            .find(|ip| !used.contains(ip.as_str()))
            .ok_or_else(|| "spec.clusterIP: Internal error: the service CIDR is full".into())
    }

    /// Bookkeeping after a create or update: a CRD's kind becomes served at once.
    pub(super) fn after_write(&mut self, rt: &ResourceType, obj: &Arc<Value>) {
        if rt.key() == TypeKey::crds()
            && let Ok(crd_rt) = crd_resource_type(obj)
        {
            // Validated in apply_defaults; a clash with a built-in was refused there.
            let _ = self.registry.register_crd(crd_rt);
        }
    }
}

fn crd_status(crd: &Value, rt: &ResourceType) -> Value {
    let now = meta::now_rfc3339();
    let cond = |t: &str, reason: &str, msg: &str| json!({"type": t, "status": "True", "lastTransitionTime": now, "reason": reason, "message": msg});
    json!({
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or(json!({})),
        "storedVersions": [rt.storage_version()],
    })
}
