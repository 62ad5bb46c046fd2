//! The cluster configuration of `addons/prometheus/` on a real Prometheus: its relabeling applied to the local
//! mesh's pods as Kubernetes discovery would describe them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ambit_e2e::local::{LocalMesh, NET_NS};
use ambit_e2e::process::Process;
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::{NS, free_port, get, promtool_check, repo};

/// `addons/prometheus/`'s configuration, checked with `promtool check config`. Debian's Prometheus is built without
/// Kubernetes discovery, so each `kubernetes_sd_configs` is swapped for a `file_sd_configs` reading `sd_file`, where
/// [`cluster_relabeling`] writes targets with the labels Kubernetes discovery would give; the relabeling (the part
/// that is ours) is used as written.
fn check_cluster_config(dir: &Path, sd_file: &Path) -> Result<PathBuf> {
    let manifest = std::fs::read_to_string(repo().join("addons/prometheus/prometheus.yaml"))?;
    let mut config = None;
    for doc in serde_yaml::Deserializer::from_str(&manifest) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc)?;
        if v["kind"] == "ConfigMap" {
            config = v["data"]["prometheus.yml"].as_str().map(str::to_owned);
        }
    }
    let text =
        config.context("no ConfigMap with prometheus.yml in addons/prometheus/prometheus.yaml")?;
    let mut parsed: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let jobs = parsed["scrape_configs"]
        .as_sequence_mut()
        .context("no scrape_configs")?;
    let mut swapped = 0;
    for job in jobs.iter_mut() {
        if let Some(m) = job.as_mapping_mut()
            && m.remove("kubernetes_sd_configs").is_some()
        {
            let sd: serde_yaml::Value =
                serde_yaml::from_str(&format!("[{{files: ['{}']}}]", sd_file.display()))?;
            m.insert("file_sd_configs".into(), sd);
            swapped += 1;
        }
    }
    ensure!(swapped == 4, "expected 4 Kubernetes jobs, found {swapped}");
    // Scraped every second, as the local configuration in this test, so that targets are up at once.
    for k in ["scrape_interval", "scrape_timeout"] {
        parsed["global"][k] = "1s".into();
    }
    let path = dir.join("cluster-prometheus.yml");
    std::fs::write(&path, serde_yaml::to_string(&parsed)?)?;
    std::fs::write(sd_file, "[]")?;
    promtool_check(&path)?;
    Ok(path)
}

/// One pod as Kubernetes discovery reports it: a target per container port, with `__meta_kubernetes_*` labels.
fn discovered(
    ip: &str,
    ports: &[u16],
    ns: &str,
    pod: &str,
    node: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> Vec<Value> {
    let mut meta = serde_json::Map::new();
    let mut set = |k: String, v: &str| {
        meta.insert(k, Value::from(v));
    };
    set("__meta_kubernetes_namespace".into(), ns);
    set("__meta_kubernetes_pod_name".into(), pod);
    set("__meta_kubernetes_pod_node_name".into(), node);
    set("__meta_kubernetes_pod_phase".into(), "Running");
    set("__meta_kubernetes_pod_ip".into(), ip);
    for (k, v) in labels {
        set(format!("__meta_kubernetes_pod_label_{k}"), v);
        set(format!("__meta_kubernetes_pod_labelpresent_{k}"), "true");
    }
    for (k, v) in annotations {
        set(format!("__meta_kubernetes_pod_annotation_{k}"), v);
    }
    ports
        .iter()
        .map(|p| {
            let mut m = meta.clone();
            m.insert(
                "__meta_kubernetes_pod_container_port_number".into(),
                Value::from(p.to_string()),
            );
            serde_json::json!({"targets": [format!("{ip}:{p}")], "labels": m})
        })
        .collect()
}

/// The cluster configuration's relabeling on the local mesh's real pods, described as Kubernetes discovery would
/// (a target per container port): each ztunnel (also annotated, as Istio's chart does) and the waypoint in their
/// jobs on 15020 only, and up; an annotated app pod in `kubernetes-pods` on its annotated port and path; a pod
/// without annotations nowhere; the target labels the dashboards use the same as the local configuration's.
pub(crate) fn cluster_relabeling(mesh: &LocalMesh, logs: &Path, local: SocketAddr) -> Result<()> {
    let sd_file = logs.join("cluster-targets.json");
    let config = check_cluster_config(logs, &sd_file)?;
    let scrape = [
        ("prometheus_io_scrape", "true"),
        ("prometheus_io_port", "15020"),
    ];
    let mut groups = Vec::new();
    for node in ["node-1", "node-2"] {
        let ip = mesh.node_ip(node)?;
        let pod = format!("ztunnel-{node}");
        let app = [("app", "ztunnel")];
        groups.extend(discovered(
            &ip,
            &[15020, 15021],
            "istio-system",
            &pod,
            node,
            &app,
            &scrape,
        ));
    }
    let wp = mesh.one_pod(NS, "waypoint", Duration::from_secs(5))?;
    let gw = [("gateway_networking_k8s_io_gateway_name", "waypoint")];
    groups.extend(discovered(
        &wp.ip,
        &[15008, 15020, 15021],
        NS,
        &wp.name,
        &wp.node,
        &gw,
        &[],
    ));
    // The controller, on the pod network's gateway address, as its pod would be discovered.
    let ctl = [("app", "ambit-controller")];
    groups.extend(discovered(
        "10.244.0.1",
        &[15010, 15012, 15014],
        "istio-system",
        "ambit-controller-0",
        "node-1",
        &ctl,
        &scrape,
    ));
    let server = mesh.one_pod(NS, "server", Duration::from_secs(5))?;
    let annotated = [
        ("prometheus_io_scrape", "true"),
        ("prometheus_io_port", "8080"),
        ("prometheus_io_path", "/stats"),
    ];
    let app = [("app", "server")];
    groups.extend(discovered(
        &server.ip,
        &[8080],
        NS,
        &server.name,
        &server.node,
        &app,
        &annotated,
    ));
    let client = mesh.one_pod(NS, "client", Duration::from_secs(5))?;
    groups.extend(discovered(
        &client.ip,
        &[8080],
        NS,
        &client.name,
        &client.node,
        &[],
        &[],
    ));
    std::fs::write(&sd_file, serde_json::to_string(&groups)?)?;

    let port = free_port()?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", NET_NS, "prometheus"])
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            logs.join("cluster-data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let _prom = Process::spawn("prometheus-cluster", cmd, logs)?;
    let url = format!("http://127.0.0.1:{port}/api/v1/targets?state=active");
    let targets = poll(
        "the cluster configuration's targets up",
        Duration::from_secs(15),
        || {
            let v: Value = serde_json::from_str(&mesh.get_in(NET_NS, &url)?)?;
            let t = v["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up = |job: &str| {
                t.iter()
                    .filter(|t| t["labels"]["job"] == job && t["health"] == "up")
                    .count()
            };
            Ok((up("ztunnel") == 2 && up("waypoint") == 1 && up("controller") == 1).then_some(t))
        },
    )?;
    let by_job = |job: &str| -> Vec<&Value> {
        targets
            .iter()
            .filter(|t| t["labels"]["job"] == job)
            .collect()
    };
    ensure!(
        by_job("ztunnel").len() == 2
            && by_job("waypoint").len() == 1
            && by_job("controller").len() == 1,
        "{targets:?}"
    );
    let pods = by_job("kubernetes-pods");
    ensure!(
        pods.len() == 1 && pods[0]["scrapeUrl"] == format!("http://{}:8080/stats", server.ip),
        "kubernetes-pods targets: {pods:?}"
    );
    ensure!(
        pods[0]["labels"]["app"] == "server" && pods[0]["labels"]["namespace"] == NS,
        "{pods:?}"
    );

    // The labels the dashboards select and group by are those of the local configuration.
    let (_, body) = get(local, "/api/v1/targets?state=active")?;
    let v: Value = serde_json::from_str(&body)?;
    let local_targets = v["data"]["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for t in by_job("ztunnel").into_iter().chain(by_job("waypoint")) {
        let l = &t["labels"];
        let same = local_targets
            .iter()
            .find(|x| x["labels"]["instance"] == l["instance"])
            .with_context(|| {
                format!(
                    "{} is not a target of the local configuration",
                    l["instance"]
                )
            })?;
        for k in [
            "job",
            "namespace",
            "pod",
            "node",
            "app",
            "gateway_networking_k8s_io_gateway_name",
        ] {
            ensure!(
                same["labels"][k] == l[k],
                "label {k}: cluster {l}, local {}",
                same["labels"]
            );
        }
    }
    Ok(())
}
