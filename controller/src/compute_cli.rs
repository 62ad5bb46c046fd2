//! `controller compute --manifests DIR`: reads the manifests once, runs the server's compute, prints the resources
//! as `/debug/resources` renders them, and exits. This is how `ambit authz check --manifests` gets the converted
//! policies of a directory without importing the controller crate.
//!
//! A directory holds Deployments, not the Pods a cluster would run; the compute only sees Pods. So, as a dry-run
//! kubelet, each Deployment, StatefulSet, DaemonSet or ReplicaSet (and each auto-deployed waypoint Deployment) that
//! no Pod in the directory belongs to becomes one Pod from its template, named `<workload>-compute-0`, with a
//! placeholder address from 240.0.0.0/8, and each Service without a `clusterIP` gets a placeholder VIP from
//! 240.255.0.0/16. These addresses are marked in the output (`placeholders`): no pod is running there.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ambit_controller::compute::{self, ComputeConfig, Resources, render};
use ambit_controller::index::Index;
use ambit_controller::sources::manifest::ManifestState;
use ambit_controller::sources::{Document, Event, Object, parse_document};
use anyhow::Context;
use serde::Deserialize;
use serde_json::{Value, json};
use serde_yaml::Value as Yaml;

/// Kinds whose pod template becomes a placeholder Pod.
const POD_OWNERS: [&str; 4] = ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"];

/// One compute of a directory: the index (with placeholders), its resources, and the documents that did not parse.
pub struct Computed {
    pub index: Index,
    pub resources: Resources,
    pub placeholders: Value,
    /// `(file, error)`.
    pub errors: Vec<(String, String)>,
}

/// Computes the resources of `dirs` and returns the `/debug/resources` JSON.
pub fn run(dirs: &[PathBuf], cfg: &ComputeConfig) -> anyhow::Result<Value> {
    let c = compute_dirs(dirs, cfg)?;
    for (file, e) in &c.errors {
        eprintln!("warning: {file}: {e}");
    }
    let mut out = render::resources(&c.resources);
    if let Some(o) = out.as_object_mut() {
        o.insert("generation".into(), json!(1));
        o.insert("placeholders".into(), c.placeholders);
    }
    Ok(out)
}

/// Reads `dirs` once and computes, with placeholder pods and VIPs where a cluster would have real ones.
pub fn compute_dirs(dirs: &[PathBuf], cfg: &ComputeConfig) -> anyhow::Result<Computed> {
    for d in dirs {
        anyhow::ensure!(d.is_dir(), "--manifests {}: not a directory", d.display());
    }
    let mut state = ManifestState::default();
    let mut index = Index::default();
    for ev in state.rescan(dirs) {
        index.apply(ev);
    }
    let errors = state
        .errors()
        .into_iter()
        .flat_map(|(file, errors)| errors.into_iter().map(move |e| (file.clone(), e)))
        .collect();
    let mut placeholders = Placeholders::default();
    placeholders.service_vips(&mut index)?;
    let owners = pod_owners(dirs);
    placeholders.pods(&mut index, &owners)?;
    index.synced = true;
    let first = compute::compute(&index, cfg);
    // The waypoints the controller would deploy run like any other Deployment.
    let waypoints: Vec<Yaml> = first
        .deployments
        .values()
        .flatten()
        .filter_map(|v| serde_yaml::to_value(v).ok())
        .collect();
    let resources: Resources = if placeholders.pods(&mut index, &waypoints)? > 0 {
        compute::compute(&index, cfg)
    } else {
        first
    };
    Ok(Computed {
        index,
        resources,
        placeholders: json!({ "pods": placeholders.pod_names, "serviceVips": placeholders.vip_names }),
        errors,
    })
}

/// Every workload-owning document in the directories (the manifest source skips these kinds).
fn pod_owners(dirs: &[PathBuf]) -> Vec<Yaml> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_manifest(p))
            .collect();
        files.sort();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let Ok(v) = Yaml::deserialize(doc) else {
                    break;
                };
                let kind = v.get("kind").and_then(Yaml::as_str).unwrap_or("");
                if POD_OWNERS.contains(&kind) {
                    out.push(v);
                }
            }
        }
    }
    out
}

fn is_manifest(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml")
}

#[derive(Default)]
struct Placeholders {
    next_pod: u32,
    next_vip: u32,
    pod_names: Vec<String>,
    vip_names: Vec<String>,
}

fn ip(prefix: [u8; 2], n: u32) -> String {
    let [_, _, hi, lo] = n.to_be_bytes();
    format!("{}.{}.{hi}.{lo}", prefix[0], prefix[1])
}

impl Placeholders {
    fn service_vips(&mut self, index: &mut Index) -> anyhow::Result<()> {
        let mut updated = Vec::new();
        for svc in index.services.values() {
            let Some(spec) = &svc.spec else { continue };
            if spec.cluster_ip.as_deref().is_some_and(|s| !s.is_empty()) {
                continue;
            }
            self.next_vip += 1;
            let vip = ip([240, 255], self.next_vip);
            let mut svc = svc.clone();
            if let Some(spec) = svc.spec.as_mut() {
                spec.cluster_ip = Some(vip.clone());
                spec.cluster_ips = Some(vec![vip.clone()]);
            }
            let ns = svc.metadata.namespace.clone().unwrap_or_default();
            let name = svc.metadata.name.clone().unwrap_or_default();
            self.vip_names.push(format!("{ns}/{name}={vip}"));
            updated.push(Object::Service(Box::new(svc)));
        }
        for o in updated {
            index.apply(Event::Apply(o));
        }
        Ok(())
    }

    /// Adds one Pod per owner that has none yet; returns how many were added.
    /// Adds a placeholder Pod for each workload of `owners` that has none (no Pod it owns, none its selector
    /// matches), and returns how many it added.
    fn pods(&mut self, index: &mut Index, owners: &[Yaml]) -> anyhow::Result<usize> {
        let existing: BTreeSet<(String, String)> = index
            .pods
            .values()
            .flat_map(|p| {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .map(move |o| (ns.clone(), o.name.clone()))
            })
            .collect();
        let mut added = 0;
        for owner in owners {
            let kind = owner.get("kind").and_then(Yaml::as_str).unwrap_or("");
            if !POD_OWNERS.contains(&kind) {
                continue;
            }
            let meta = owner.get("metadata");
            let name = meta.and_then(|m| m.get("name")).and_then(Yaml::as_str);
            let Some(name) = name else { continue };
            let ns = meta
                .and_then(|m| m.get("namespace"))
                .and_then(Yaml::as_str)
                .unwrap_or("default");
            // A Deployment's pods belong to its ReplicaSet `<name>-<hash>`.
            let (owner_kind, owner_name, hash) = if kind == "Deployment" {
                ("ReplicaSet", format!("{name}-compute"), Some("compute"))
            } else {
                (kind, name.to_owned(), None)
            };
            if existing.contains(&(ns.to_owned(), owner_name.clone()))
                || selects_a_pod(index, ns, owner)
            {
                continue;
            }
            let template = owner
                .get("spec")
                .and_then(|s| s.get("template"))
                .cloned()
                .unwrap_or(Yaml::Null);
            let pod_name = format!("{name}-compute-0");
            self.next_pod += 1;
            let pod_ip = ip([240, 0], self.next_pod);
            let mut labels = template
                .get("metadata")
                .and_then(|m| m.get("labels"))
                .cloned()
                .unwrap_or_else(|| Yaml::Mapping(Default::default()));
            if let (Some(h), Yaml::Mapping(m)) = (hash, &mut labels) {
                m.insert("pod-template-hash".into(), h.into());
            }
            let annotations = template
                .get("metadata")
                .and_then(|m| m.get("annotations"))
                .cloned()
                .unwrap_or(Yaml::Null);
            let spec = template.get("spec").cloned().unwrap_or(Yaml::Null);
            let pod: Yaml = serde_yaml::to_value(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": ns,
                    "labels": serde_json::to_value(&labels).unwrap_or(Value::Null),
                    "annotations": serde_json::to_value(&annotations).unwrap_or(Value::Null),
                    "ownerReferences": [{
                        "apiVersion": "apps/v1", "kind": owner_kind, "name": owner_name,
                        "uid": format!("compute-{ns}-{owner_name}"), "controller": true,
                    }],
                },
                "spec": serde_json::to_value(&spec).unwrap_or(Value::Null),
                "status": { "phase": "Running", "podIP": pod_ip, "podIPs": [{ "ip": pod_ip }] },
            }))
            .context("placeholder pod")?;
            match parse_document(pod) {
                Ok(Document::Object(o)) => {
                    index.apply(Event::Apply(o));
                    self.pod_names.push(format!("{ns}/{pod_name}={pod_ip}"));
                    added += 1;
                }
                Ok(_) => {}
                Err(e) => eprintln!(
                    "warning: {kind} {ns}/{name}: cannot make a pod from its template: {e}"
                ),
            }
        }
        Ok(added)
    }
}

/// Whether some Pod of `ns` matches the workload's `spec.selector.matchLabels` (how Kubernetes relates a
/// Deployment to its pods; the local mesh's pods are named `<name>-<hash>-<n>`, not after a placeholder).
fn selects_a_pod(index: &Index, ns: &str, owner: &Yaml) -> bool {
    let Some(Yaml::Mapping(sel)) = owner
        .get("spec")
        .and_then(|s| s.get("selector"))
        .and_then(|s| s.get("matchLabels"))
    else {
        return false;
    };
    if sel.is_empty() {
        return false;
    }
    index
        .pods
        .range((ns.to_owned(), String::new())..)
        .take_while(|((pns, _), _)| pns == ns)
        .any(|(_, p)| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            sel.iter().all(|(k, v)| {
                matches!((k.as_str(), v.as_str()), (Some(k), Some(v)) if labels.get(k).map(String::as_str) == Some(v))
            })
        })
}
