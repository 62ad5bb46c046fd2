//! What Prometheus scrapes in the local mesh: the configuration `ambit dashboard prometheus` writes, and its
//! file-based service discovery (`file_sd`) targets computed from the supervisor's `state.json` and the manifests.
//!
//! The target labels are the ones the cluster configuration (`addons/prometheus/`) derives from Kubernetes
//! discovery, so the same dashboards and queries work on both: `namespace`, `pod`, `node`, and every pod label
//! with its name sanitized as Prometheus' `labelmap` does (`app`, `gateway_networking_k8s_io_gateway_name`, …).
//! Four jobs, as in the cluster: `ztunnel` (each node's ztunnel, `<node ip>:15020`), `waypoint` (each waypoint
//! pod, `<pod ip>:15020`), `controller` (its monitoring port, `10.244.0.1:15014`) and `kubernetes-pods` (pods annotated `prometheus.io/scrape: "true"`, on
//! `prometheus.io/port` and `prometheus.io/path`). Every address is on the pod network, so Prometheus runs in the
//! mesh's network namespace.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::local::State;
use crate::local::manifests::{Desired, PodSpec};

/// The stats port of ztunnel and of the waypoint (`/metrics`).
pub const STATS_PORT: u16 = 15020;
/// The controller's monitoring port (`/metrics`).
pub const CONTROLLER_PORT: u16 = 15014;
/// The `app` label of the controller's target (the cluster configuration keeps `istiod` and `ambit-controller`).
pub const CONTROLLER_APP: &str = "ambit-controller";
/// The label every waypoint pod carries (the controller's deployments set it).
const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
/// The jobs and their target files, in the order of the configuration.
pub const JOBS: [&str; 4] = ["ztunnel", "waypoint", "controller", "kubernetes-pods"];

/// One `file_sd` target group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// The target groups of every job, by job name.
pub type Targets = BTreeMap<&'static str, Vec<TargetGroup>>;

/// A label name as Prometheus' `labelmap` makes it from a Kubernetes label: anything but `[a-zA-Z0-9_]` becomes
/// `_`.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A waypoint pod: labelled with its Gateway (the controller's deployments), or running the waypoint.
pub fn is_waypoint(spec: &PodSpec) -> bool {
    spec.labels.contains_key(GATEWAY_NAME) || crate::local::kubelet::is_waypoint(spec)
}

fn pod_labels(spec: &PodSpec, pod: &str, node: &str) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (sanitize(k), v.clone()))
        .collect();
    labels.insert("namespace".into(), spec.namespace.clone());
    labels.insert("pod".into(), pod.to_owned());
    labels.insert("node".into(), node.to_owned());
    labels
}

/// The targets of the running mesh: `state` for addresses, `desired` (its manifests and the controller's
/// deployments) for labels and annotations. Pods without a spec (being replaced) are left out until the next
/// refresh.
pub fn targets(state: &State, desired: &Desired) -> Targets {
    let mut out = Targets::new();
    for job in JOBS {
        out.insert(job, Vec::new());
    }
    let ztunnels = state
        .nodes
        .iter()
        .map(|n| TargetGroup {
            targets: vec![format!("{}:{STATS_PORT}", n.ip)],
            labels: BTreeMap::from([
                ("namespace".into(), "istio-system".into()),
                ("pod".into(), format!("ztunnel-{}", n.name)),
                ("node".into(), n.name.clone()),
                ("app".into(), "ztunnel".into()),
            ]),
        })
        .collect();
    out.insert("ztunnel", ztunnels);
    // The controller runs in the pod network's namespace, on its gateway address.
    out.insert(
        "controller",
        vec![TargetGroup {
            targets: vec![format!("{}:{CONTROLLER_PORT}", crate::local::net::GATEWAY)],
            labels: BTreeMap::from([
                ("namespace".into(), "istio-system".into()),
                ("pod".into(), CONTROLLER_APP.into()),
                ("app".into(), CONTROLLER_APP.into()),
            ]),
        }],
    );
    let specs: BTreeMap<String, &PodSpec> = desired.pods.iter().map(|p| (p.key(), p)).collect();
    for (key, pod) in &state.pods {
        let Some(spec) = specs.get(key) else { continue };
        let labels = pod_labels(spec, &pod.name, &pod.node);
        if is_waypoint(spec) {
            if let Some(v) = out.get_mut("waypoint") {
                v.push(TargetGroup {
                    targets: vec![format!("{}:{STATS_PORT}", pod.ip)],
                    labels,
                });
            }
            continue;
        }
        if spec
            .annotations
            .get("prometheus.io/scrape")
            .is_none_or(|v| v != "true")
        {
            continue;
        }
        // As Kubernetes discovery does: the annotated port, else every declared container port.
        let ports: Vec<u16> = match spec.annotations.get("prometheus.io/port") {
            Some(p) => p.trim().parse().ok().into_iter().collect(),
            None => spec.ports.iter().map(|(_, p)| *p).collect(),
        };
        let mut labels = labels;
        if let Some(path) = spec.annotations.get("prometheus.io/path") {
            labels.insert("__metrics_path__".into(), path.clone());
        }
        if let Some(v) = out.get_mut("kubernetes-pods") {
            for port in ports {
                v.push(TargetGroup {
                    targets: vec![format!("{}:{port}", pod.ip)],
                    labels: labels.clone(),
                });
            }
        }
    }
    out
}

/// `interval` when it is a Prometheus duration (`500ms`, `1s`, `15s`, `1m`, …).
pub fn parse_interval(interval: &str) -> Result<String, String> {
    let digits = interval.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &interval[digits.len()..];
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !["ms", "s", "m", "h"].contains(&unit)
    {
        return Err(format!(
            "{interval:?} is not a Prometheus duration such as 1s, 15s or 1m"
        ));
    }
    Ok(interval.to_owned())
}

/// The Prometheus configuration for the local mesh whose Prometheus files are in `prom_dir`.
pub fn config(prom_dir: &Path, interval: &str) -> String {
    let mut out = format!(
        "# Written by `ambit dashboard prometheus` for the local mesh; rewritten on every run.\n\
         # The targets are in {dir}/targets/*.json, refreshed from the mesh's state while the command runs.\n\
         global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n  scrape_timeout: {interval}\n\
         scrape_configs:\n",
        dir = prom_dir.display()
    );
    for job in JOBS {
        out.push_str(&format!(
            "- job_name: {job}\n  metrics_path: /metrics\n  file_sd_configs:\n  - files: ['{}']\n    refresh_interval: 5s\n",
            prom_dir.join("targets").join(format!("{job}.json")).display()
        ));
    }
    out
}

/// Writes `targets` into `<prom_dir>/targets/<job>.json` (each through a renamed temporary file, so Prometheus
/// never reads half a file), skipping files whose content is unchanged. Returns whether anything changed.
pub fn write_targets(prom_dir: &Path, targets: &Targets) -> std::io::Result<bool> {
    let dir = prom_dir.join("targets");
    std::fs::create_dir_all(&dir)?;
    let mut changed = false;
    for (job, groups) in targets {
        let path = dir.join(format!("{job}.json"));
        let text = serde_json::to_string_pretty(groups).map_err(std::io::Error::other)?;
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            continue;
        }
        let tmp = dir.join(format!(".{job}.json.tmp"));
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, &path)?;
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::{NodeState, PodState};
    use std::net::Ipv4Addr;

    fn spec(
        ns: &str,
        name: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> PodSpec {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{}}}, annotations: {{{}}}}}\n\
             spec: {{containers: [{{name: c, command: [sleep, infinity], ports: [{{containerPort: 8080}}]}}]}}\n",
            labels
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            annotations
                .iter()
                .map(|(k, v)| format!("{k}: \"{v}\""))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        std::fs::write(dir.path().join("p.yaml"), text).unwrap_or_else(|e| panic!("write: {e}"));
        let d = crate::local::manifests::load(dir.path()).unwrap_or_else(|e| panic!("load: {e}"));
        d.pods
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no pod parsed"))
    }

    fn pod(ns: &str, name: &str, ip: [u8; 4]) -> PodState {
        PodState {
            namespace: ns.into(),
            name: name.into(),
            uid: String::new(),
            ip: Ipv4Addr::from(ip),
            node: "node-1".into(),
            netns: String::new(),
            veth: String::new(),
            owner: None,
            captured: true,
            ready: true,
            pid: None,
            restarts: 0,
            log: Default::default(),
            spec_hash: 0,
        }
    }

    #[test]
    fn targets_per_job_with_kubernetes_labels() {
        let desired = Desired {
            pods: vec![
                spec(
                    "demo",
                    "waypoint-1",
                    &[("gateway.networking.k8s.io/gateway-name", "waypoint")],
                    &[],
                ),
                spec(
                    "demo",
                    "app-1",
                    &[("app", "app")],
                    &[
                        ("prometheus.io/scrape", "true"),
                        ("prometheus.io/port", "9100"),
                        ("prometheus.io/path", "/stats"),
                    ],
                ),
                spec("demo", "plain-1", &[("app", "plain")], &[]),
            ],
            ..Desired::default()
        };
        let mut state = State {
            nodes: vec![NodeState {
                name: "node-1".into(),
                ip: Ipv4Addr::new(10, 244, 0, 11),
                netns: String::new(),
            }],
            ..State::default()
        };
        for (name, ip) in [
            ("waypoint-1", [10, 244, 1, 2]),
            ("app-1", [10, 244, 1, 3]),
            ("plain-1", [10, 244, 1, 4]),
            ("gone-1", [10, 244, 1, 5]),
        ] {
            state
                .pods
                .insert(format!("demo/{name}"), pod("demo", name, ip));
        }
        let t = targets(&state, &desired);
        let zt = &t["ztunnel"];
        assert_eq!(zt.len(), 1);
        assert_eq!(zt[0].targets, ["10.244.0.11:15020"]);
        assert_eq!(zt[0].labels["app"], "ztunnel");
        assert_eq!(zt[0].labels["node"], "node-1");
        let ctl = &t["controller"];
        assert_eq!(ctl.len(), 1);
        assert_eq!(ctl[0].targets, ["10.244.0.1:15014"]);
        assert_eq!(ctl[0].labels["app"], CONTROLLER_APP);
        let wp = &t["waypoint"];
        assert_eq!(wp.len(), 1);
        assert_eq!(wp[0].targets, ["10.244.1.2:15020"]);
        assert_eq!(
            wp[0].labels["gateway_networking_k8s_io_gateway_name"],
            "waypoint"
        );
        assert_eq!(wp[0].labels["namespace"], "demo");
        assert_eq!(wp[0].labels["pod"], "waypoint-1");
        let pods = &t["kubernetes-pods"];
        assert_eq!(pods.len(), 1, "{pods:?}");
        assert_eq!(pods[0].targets, ["10.244.1.3:9100"]);
        assert_eq!(pods[0].labels["__metrics_path__"], "/stats");
    }

    #[test]
    fn config_names_every_job_and_the_interval() {
        let c = config(Path::new("/run/ambit/local/prometheus"), "1s");
        assert!(c.contains("scrape_interval: 1s"));
        for job in JOBS {
            assert!(c.contains(&format!("- job_name: {job}\n")));
            assert!(c.contains(&format!("/run/ambit/local/prometheus/targets/{job}.json")));
        }
        assert_eq!(parse_interval("15s").as_deref(), Ok("15s"));
        assert!(
            parse_interval("15").is_err()
                && parse_interval("s").is_err()
                && parse_interval("1d").is_err()
        );
    }

    #[test]
    fn targets_are_rewritten_only_when_changed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let t = targets(&State::default(), &Desired::default());
        assert!(write_targets(dir.path(), &t).unwrap_or(false));
        assert!(!write_targets(dir.path(), &t).unwrap_or(true));
        let text =
            std::fs::read_to_string(dir.path().join("targets/ztunnel.json")).unwrap_or_default();
        assert_eq!(text, "[]");
    }
}
