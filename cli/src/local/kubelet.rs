//! What the runtime does for a pod as the kubelet, beyond starting its process: the command resolved to a binary
//! of this build (`ambit`, `waypoint`), the environment Kubernetes would give it (downward-API `fieldRef`s; for a
//! waypoint also the mesh root certificate and a pod token, as Istio's injection template mounts them), and
//! readiness: the pod's probe (HTTP, TCP, or every declared port) and, for a captured pod, its ztunnel holding it.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::NodeState;
use super::manifests::{EnvVar, PodSpec, Probe};

/// The container command that runs the waypoint binary.
pub const WAYPOINT_COMMAND: &str = "waypoint";

/// The binaries pods may name as their command, besides what is on `PATH`.
#[derive(Clone, Debug)]
pub struct PodBinaries {
    pub ambit: PathBuf,
    /// `None` when the waypoint was not built: pods that need it fail to start with a clear error.
    pub waypoint: Option<PathBuf>,
}

/// What a waypoint gets from the cluster rather than from its manifest.
#[derive(Clone, Debug)]
pub struct MeshCredentials {
    /// The controller's root certificate (`XDS_ROOT_CA`, `CA_ROOT_CA`).
    pub root_cert: PathBuf,
    pub trust_domain: String,
    pub cluster_id: String,
}

/// Why a binary is missing, with what to do about it.
pub fn missing_binary(name: &str, ambit: &Path, needed_by: &str) -> String {
    format!(
        "`{name}` is neither next to {} nor on PATH, and {needed_by} needs it: build it with \
         `cargo build --workspace --bins` (or `cargo build -p ambit-{name}`)",
        ambit.display()
    )
}

/// The argv to run: `ambit` is this very binary, `waypoint` the waypoint next to it; anything else is looked up
/// on `PATH` when it starts.
pub fn argv(pod: &PodSpec, bins: &PodBinaries) -> Result<Vec<String>> {
    let mut argv = pod.argv.clone();
    match argv.first().map(String::as_str) {
        Some("ambit") => argv[0] = bins.ambit.to_string_lossy().into_owned(),
        Some(WAYPOINT_COMMAND) => {
            let bin = bins.waypoint.as_ref().with_context(|| {
                missing_binary(WAYPOINT_COMMAND, &bins.ambit, &format!("pod {}", pod.key()))
            })?;
            argv[0] = bin.to_string_lossy().into_owned();
        }
        _ => {}
    }
    Ok(argv)
}

pub fn is_waypoint(pod: &PodSpec) -> bool {
    pod.argv.first().map(String::as_str) == Some(WAYPOINT_COMMAND)
}

/// The pod's environment: what every pod gets, then (for a waypoint) its credentials, then the manifest's own
/// variables, which win.
pub fn env(
    pod: &PodSpec,
    uid: &str,
    ip: Ipv4Addr,
    node: &NodeState,
    waypoint: Option<(&MeshCredentials, &Path)>,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("POD_NAME".to_owned(), pod.name.clone()),
        ("POD_NAMESPACE".to_owned(), pod.namespace.clone()),
        ("POD_IP".to_owned(), ip.to_string()),
        ("NODE_NAME".to_owned(), node.name.clone()),
        ("HOSTNAME".to_owned(), pod.name.clone()),
        ("HOME".to_owned(), "/root".to_owned()),
    ];
    if let Some((creds, token)) = waypoint {
        let root = creds.root_cert.to_string_lossy().into_owned();
        for (k, v) in [
            ("XDS_ROOT_CA", root.clone()),
            ("CA_ROOT_CA", root),
            ("AUTH_TOKEN", token.to_string_lossy().into_owned()),
            ("TRUST_DOMAIN", creds.trust_domain.clone()),
            ("CLUSTER_ID", creds.cluster_id.clone()),
            // Pods have an IPv4 address only.
            ("IPV6_ENABLED", "false".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ] {
            env.push((k.to_owned(), v));
        }
    }
    for e in &pod.env {
        match e {
            EnvVar::Value(k, v) => env.push((k.clone(), v.clone())),
            EnvVar::Field(k, f) => {
                let v = match f.as_str() {
                    "metadata.name" => pod.name.clone(),
                    "metadata.namespace" => pod.namespace.clone(),
                    "metadata.uid" => uid.to_owned(),
                    "status.podIP" => ip.to_string(),
                    "spec.nodeName" => node.name.clone(),
                    "spec.serviceAccountName" => pod.service_account.clone(),
                    "status.hostIP" => node.ip.to_string(),
                    _ => String::new(),
                };
                env.push((k.clone(), v));
            }
        }
    }
    env
}

/// A pod's readiness: its probe and, for a captured pod, whether its node's ztunnel holds it.
#[derive(Debug)]
pub struct Prober {
    pub probe: Probe,
    /// The probe passes and, when the pod is captured, its ztunnel holds it: what the pod's `Ready` says.
    pub ready: bool,
    probe_ok: bool,
    /// The pod's node's ztunnel has taken it over (ZDS) and holds a valid certificate for its identity; set by
    /// the supervisor from the ztunnel's `/config_dump` until the pod is ready.
    pub held: bool,
    /// The pod's service account, whose certificate its ztunnel must hold.
    pub service_account: String,
    next: Instant,
}

/// How often a probe runs: often until the pod is ready, then as a kubelet's default period.
const PROBE_UNREADY: Duration = Duration::from_millis(500);
const PROBE_READY: Duration = Duration::from_secs(5);

impl Prober {
    pub fn new(probe: Probe, service_account: &str) -> Prober {
        Prober {
            probe,
            ready: false,
            probe_ok: false,
            held: false,
            service_account: service_account.to_owned(),
            next: Instant::now(),
        }
    }

    /// Probes `ip` from namespace `from` when due, from the probe source address. `captured`: readiness also
    /// needs [`Prober::held`]. Returns true when readiness changed.
    pub fn tick(&mut self, from: &str, ip: Ipv4Addr, captured: bool) -> bool {
        if Instant::now() >= self.next {
            let src = super::net::PROBE_SOURCE;
            self.probe_ok = match &self.probe {
                Probe::Http(p) => {
                    super::http::probe_in(from, src, SocketAddr::from((ip, p.port)), Some(&p.path))
                        .is_some_and(|c| (200..400).contains(&c))
                }
                Probe::Tcp(ports) => ports.iter().all(|port| {
                    super::http::probe_in(from, src, SocketAddr::from((ip, *port)), None).is_some()
                }),
                Probe::Started => true,
            };
            self.next = Instant::now()
                + if self.probe_ok {
                    PROBE_READY
                } else {
                    PROBE_UNREADY
                };
        }
        let ready = self.probe_ok && (self.held || !captured);
        let changed = ready != self.ready;
        self.ready = ready;
        changed
    }

    /// Not ready until a probe passes again (the process restarted).
    pub fn reset(&mut self) {
        self.ready = false;
        self.probe_ok = false;
        self.next = Instant::now();
    }
}

/// Whether a ztunnel's `/config_dump` shows the pod `uid` handed over (`workloadState` `Up`) and a valid
/// certificate for `identity` (`certificates` `Available`).
pub fn ztunnel_holds(dump: &serde_json::Value, uid: &str, identity: &str) -> bool {
    let up = dump["workloadState"][uid]["state"] == "Up";
    let cert = dump["certificates"].as_array().is_some_and(|certs| {
        certs
            .iter()
            .any(|c| c["identity"] == identity && c["state"] == "Available")
    });
    up && cert
}

/// The workloads a ztunnel's `/config_dump` routes to (`status` `Healthy`), as `(namespace, name)`.
pub fn healthy_workloads(dump: &serde_json::Value) -> BTreeSet<(String, String)> {
    let field = |w: &serde_json::Value, k: &str| w[k].as_str().unwrap_or_default().to_owned();
    dump["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["status"] == "Healthy")
        .map(|w| (field(w, "namespace"), field(w, "name")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(argv: &[&str], env: Vec<EnvVar>) -> PodSpec {
        PodSpec {
            namespace: "bookinfo".into(),
            name: "waypoint-1234-0".into(),
            labels: Default::default(),
            annotations: Default::default(),
            service_account: "waypoint".into(),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            env,
            ports: vec![],
            node_name: None,
            owner: Some("waypoint".into()),
            readiness: Probe::Started,
            object: serde_yaml::Value::Null,
        }
    }

    fn node() -> NodeState {
        NodeState {
            name: "node-1".into(),
            ip: Ipv4Addr::new(10, 244, 0, 11),
            netns: "ambit-l-node-1".into(),
        }
    }

    #[test]
    fn waypoint_command_needs_the_binary_and_says_so() {
        let bins = PodBinaries {
            ambit: "/x/ambit".into(),
            waypoint: None,
        };
        let p = pod(&["waypoint"], vec![]);
        let err = format!("{:#}", argv(&p, &bins).unwrap_err());
        assert!(
            err.contains("`waypoint` is neither next to /x/ambit"),
            "{err}"
        );
        assert!(err.contains("bookinfo/waypoint-1234-0"), "{err}");
        let bins = PodBinaries {
            waypoint: Some("/x/waypoint".into()),
            ..bins
        };
        assert_eq!(argv(&p, &bins).unwrap(), vec!["/x/waypoint"]);
        assert_eq!(
            argv(&pod(&["ambit", "echo"], vec![]), &bins).unwrap(),
            vec!["/x/ambit", "echo"]
        );
        assert_eq!(
            argv(&pod(&["sleep", "infinity"], vec![]), &bins).unwrap(),
            vec!["sleep", "infinity"]
        );
    }

    #[test]
    fn waypoint_env_has_credentials_and_the_manifest_wins() {
        let creds = MeshCredentials {
            root_cert: "/s/controller/root-cert.pem".into(),
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
        };
        let p = pod(
            &["waypoint"],
            vec![
                EnvVar::Field("INSTANCE_IP".into(), "status.podIP".into()),
                EnvVar::Value("CLUSTER_ID".into(), "mine".into()),
            ],
        );
        let ip = Ipv4Addr::new(10, 244, 1, 2);
        let env = env(
            &p,
            "uid",
            ip,
            &node(),
            Some((&creds, Path::new("/s/token"))),
        );
        // Later entries win when the process starts.
        let get = |k: &str| {
            env.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("INSTANCE_IP"), Some("10.244.1.2"));
        assert_eq!(get("XDS_ROOT_CA"), Some("/s/controller/root-cert.pem"));
        assert_eq!(get("AUTH_TOKEN"), Some("/s/token"));
        assert_eq!(get("IPV6_ENABLED"), Some("false"));
        assert_eq!(get("CLUSTER_ID"), Some("mine"));
        let plain = super::env(&pod(&["sleep"], vec![]), "uid", ip, &node(), None);
        assert!(!plain.iter().any(|(k, _)| k == "AUTH_TOKEN"));
    }

    #[test]
    fn a_pod_is_held_when_its_ztunnel_has_it_up_with_a_certificate() {
        let id = "spiffe://cluster.local/ns/demo/sa/default";
        let dump = |state: &str, cert: &str| {
            serde_json::json!({
                "workloadState": {"u1": {"state": state}},
                "certificates": [
                    {"identity": "spiffe://cluster.local/ns/demo/sa/other", "state": "Available"},
                    {"identity": id, "state": cert},
                ],
            })
        };
        assert!(ztunnel_holds(&dump("Up", "Available"), "u1", id));
        assert!(!ztunnel_holds(&dump("Pending", "Available"), "u1", id));
        assert!(!ztunnel_holds(&dump("Up", "Initializing"), "u1", id));
        assert!(!ztunnel_holds(&dump("Up", "Available"), "u2", id));
        assert!(!ztunnel_holds(&serde_json::json!({}), "u1", id));
    }

    #[test]
    fn healthy_workloads_skips_unhealthy_ones_and_bad_dumps() {
        let dump = serde_json::json!({"workloads": [
            {"namespace": "demo", "name": "a", "status": "Healthy"},
            {"namespace": "demo", "name": "b", "status": "Unhealthy"},
        ]});
        let want = BTreeSet::from([("demo".to_owned(), "a".to_owned())]);
        assert_eq!(healthy_workloads(&dump), want);
        assert!(healthy_workloads(&serde_json::json!({"workloads": 3})).is_empty());
    }
}
