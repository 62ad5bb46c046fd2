//! The supervisor behind `ambit local up`: builds the network, runs the controller, one ztunnel and one node
//! agent per virtual node, and every pod of the manifests; re-applies the manifests when they change and restarts
//! whatever exits. On SIGTERM (from `ambit local down`) it stops everything and removes what it created.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_yaml::Value;
use tracing::{info, warn};

use super::bins::Bins;
use super::kubelet::{self, MeshCredentials, Prober};
use super::manifests::{self, Desired, PodSpec};
use super::net::{self, GATEWAY, NET_NS, VipRule};
use super::process::{Proc, stop_all};
use super::{NodeState, PodState, ServiceState, State, UpArgs, pid_alive};

mod readiness;
mod rollout;

pub use rollout::request as request_ztunnel_restart;

const SERVICE_CIDR_BASE: [u8; 3] = [10, 96, 0];

struct Supervisor {
    dir: PathBuf,
    bins: Bins,
    state: State,
    pods: HashMap<String, Proc>,
    /// Controller, node agents and ztunnels.
    system: Vec<Proc>,
    manifests_hash: u64,
    dns: Arc<super::dns::Records>,
    vips: BTreeMap<String, Ipv4Addr>,
    /// Where the controller writes the waypoints it deploys (read like the manifests); `None` when it cannot.
    deploy_dir: Option<PathBuf>,
    /// Readiness probes by pod key.
    probes: HashMap<String, Prober>,
    creds: MeshCredentials,
    /// `<ns>/<name>` of the waypoint Gateways in the manifests, which `up` waits for.
    waypoint_gateways: Vec<String>,
    /// Rolling ztunnel restarts in progress ([`rollout`]).
    rollouts: Vec<rollout::Rollout>,
}

/// Runs the mesh until SIGTERM/SIGINT.
pub fn run(dir: &Path, up: &UpArgs) -> Result<()> {
    let _log = ambit_core::logging::init("info", false);
    if let Ok(s) = State::load(dir)
        && s.supervisor_pid != std::process::id()
        && pid_alive(s.supervisor_pid)
    {
        bail!(
            "a local mesh is already running (supervisor pid {})",
            s.supervisor_pid
        );
    }
    if up.nodes == 0 || up.nodes > 50 {
        bail!("--nodes must be between 1 and 50");
    }
    let manifests_dir = std::fs::canonicalize(&up.manifests)
        .with_context(|| format!("manifest directory {}", up.manifests.display()))?;
    // A previous run that crashed may have left namespaces and processes: start clean.
    let swept = super::sweep(dir);
    if swept > 0 {
        info!(
            namespaces = swept,
            "removed the leftovers of a previous run"
        );
    }
    for sub in [
        "cluster",
        "controller",
        "nodes",
        "logs",
        "deployed",
        "secrets",
    ] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let bins = Bins::find()?;
    if bins.pods.waypoint.is_none()
        && let Some(gw) = manifests::load(&manifests_dir)?.waypoint_gateways().first()
    {
        bail!(
            "{}",
            kubelet::missing_binary(
                kubelet::WAYPOINT_COMMAND,
                &bins.pods.ambit,
                &format!("the waypoint Gateway {gw}")
            )
        );
    }
    let deploy_dir = if bins.controller_deploys_waypoints() {
        Some(dir.join("deployed"))
    } else {
        warn!(
            controller = %bins.controller.display(),
            "this controller has no --deploy-dir: waypoint Gateways get no pods"
        );
        None
    };
    let stop = Arc::new(AtomicBool::new(false));
    let dns = Arc::new(super::dns::Records::default());
    let _dns_thread = super::dns::spawn(dns.clone(), stop.clone())?;

    net::create_network().context("create the pod network")?;
    let mut state = State {
        manifests: manifests_dir,
        supervisor_pid: std::process::id(),
        ..State::default()
    };
    for k in 1..=up.nodes {
        let node = NodeState {
            name: format!("node-{k}"),
            ip: Ipv4Addr::new(10, 244, 0, 10 + u8::try_from(k)?),
            netns: format!("{}node-{k}", net::PREFIX),
        };
        net::attach(&node.netns, &format!("vn{k}"), node.ip)
            .with_context(|| format!("create {}", node.name))?;
        net::write_resolv_conf(&node.netns, &[])?;
        std::fs::create_dir_all(dir.join("nodes").join(&node.name))?;
        state.nodes.push(node);
    }
    let mut sup = Supervisor {
        dir: dir.to_owned(),
        bins,
        state,
        pods: HashMap::new(),
        system: Vec::new(),
        manifests_hash: 0,
        dns,
        vips: BTreeMap::new(),
        deploy_dir,
        probes: HashMap::new(),
        waypoint_gateways: Vec::new(),
        rollouts: Vec::new(),
        creds: MeshCredentials {
            root_cert: dir.join("controller/root-cert.pem"),
            trust_domain: "cluster.local".to_owned(),
            cluster_id: "Kubernetes".to_owned(),
        },
    };
    let result = sup.serve(&stop);
    info!("stopping the local mesh");
    sup.shutdown();
    result
}

impl Supervisor {
    fn serve(&mut self, stop: &AtomicBool) -> Result<()> {
        self.reconcile()?;
        self.start_system()?;
        self.state.save(&self.dir)?;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            let mut apply = self.manifests_hash() != self.manifests_hash;
            let mut changed = false;
            for p in self.system.iter_mut() {
                changed |= p.supervise();
            }
            self.take_rollout_requests();
            self.advance_rollouts();
            for (key, p) in self.pods.iter_mut() {
                if p.supervise() {
                    changed = true;
                    // A restarted pod is not ready until its probe passes again.
                    if let Some(probe) = self.probes.get_mut(key)
                        && probe.ready
                    {
                        probe.reset();
                        apply = true;
                    }
                }
            }
            self.check_held();
            for (key, probe) in self.probes.iter_mut() {
                if let Some(s) = self.state.pods.get(key)
                    && probe.tick(NET_NS, s.ip, s.captured)
                {
                    info!(pod = %key, ready = probe.ready, "readiness changed");
                    apply = true;
                }
            }
            // Readiness is in the pods' status the controller reads: write it out with the manifests.
            if apply && let Err(e) = self.reconcile() {
                warn!(error = %format!("{e:#}"), "applying the manifests failed");
            }
            if changed {
                self.sync_pids();
            }
            if !self.state.ready && self.ready() {
                info!("local mesh ready");
                self.state.ready = true;
                self.state.save(&self.dir)?;
            }
        }
        Ok(())
    }

    fn sync_pids(&mut self) {
        for (key, p) in &self.pods {
            if let Some(s) = self.state.pods.get_mut(key) {
                s.pid = p.pid();
                s.restarts = p.restarts;
                s.ready = self
                    .probes
                    .get(key)
                    .map_or(p.child.is_some(), |probe| probe.ready);
            }
        }
        if let Err(e) = self.state.save(&self.dir) {
            warn!(error = %e, "save state");
        }
    }

    fn controller_dir(&self) -> PathBuf {
        self.dir.join("controller")
    }

    fn start_system(&mut self) -> Result<()> {
        let cdir = self.controller_dir();
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let address = format!("https://{GATEWAY}:15012");
        let mut argv = vec![
            s(&self.bins.controller),
            "--manifests".into(),
            s(&self.dir.join("cluster")),
            "--state-dir".into(),
            s(&cdir),
            "--tls-san".into(),
            GATEWAY.to_string(),
        ];
        if let Some(deploy) = &self.deploy_dir {
            // The controller deploys waypoints into this directory, told where to find it as pods see it.
            argv.extend([
                "--deploy-dir".into(),
                s(deploy),
                "--waypoint-xds-address".into(),
                address.clone(),
                "--waypoint-ca-address".into(),
                address.clone(),
            ]);
        }
        let mut controller = Proc::new(
            "controller",
            NET_NS,
            argv,
            controller_env(),
            self.dir.join("logs/controller.log"),
        );
        controller.start()?;
        self.system.push(controller);
        let root = cdir.join("root-cert.pem");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !root.exists() {
            if Instant::now() > deadline {
                bail!(
                    "the controller did not write {} within 30 s",
                    root.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for node in self.state.nodes.clone() {
            let ndir = self.dir.join("nodes").join(&node.name);
            let token = net::run(
                Command::new(&self.bins.controller)
                    .args(["token", "--node", &node.name, "--state-dir"])
                    .arg(&cdir),
            )?;
            std::fs::write(ndir.join("token"), token.trim())?;
            let socket = ndir.join("ztunnel.sock");
            let mut agent = Proc::new(
                &format!("node-agent/{}", node.name),
                &node.netns,
                vec![
                    s(&self.bins.node_agent),
                    "--zds-socket".into(),
                    s(&socket),
                    "--pods".into(),
                    s(&ndir.join("pods.json")),
                ],
                vec![
                    ("RUST_LOG".into(), "info".into()),
                    ("DNS_CAPTURE".into(), "true".into()),
                ],
                self.dir.join(format!("logs/node-agent-{}.log", node.name)),
            );
            agent.start()?;
            self.system.push(agent);
            let env = [
                ("PROXY_MODE", "shared".to_owned()),
                ("NODE_NAME", node.name.clone()),
                ("POD_NAME", format!("ztunnel-{}", node.name)),
                ("POD_NAMESPACE", "istio-system".to_owned()),
                ("INSTANCE_IP", node.ip.to_string()),
                ("INPOD_UDS", s(&socket)),
                ("XDS_ADDRESS", address.clone()),
                ("CA_ADDRESS", address.clone()),
                ("XDS_ROOT_CA", s(&root)),
                ("CA_ROOT_CA", s(&root)),
                ("AUTH_TOKEN", s(&ndir.join("token"))),
                ("IPV6_ENABLED", "false".to_owned()),
                // Captured pods' DNS goes to their ztunnel's proxy; it forwards the rest to the cluster DNS.
                ("ISTIO_META_DNS_CAPTURE", "true".to_owned()),
                ("RUST_LOG", "info".to_owned()),
            ];
            let env = env
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .chain(passed_through(ZTUNNEL_PASSED_THROUGH))
                .collect();
            let mut zt = Proc::new(
                &format!("ztunnel/{}", node.name),
                &node.netns,
                vec![s(&self.bins.ztunnel)],
                env,
                self.dir.join(format!("logs/ztunnel-{}.log", node.name)),
            );
            zt.start()?;
            self.system.push(zt);
        }
        Ok(())
    }

    /// A hash of the user's manifests and of the controller's deployments.
    fn manifests_hash(&self) -> u64 {
        let mut h = manifests_hash(&self.state.manifests);
        if let Some(d) = &self.deploy_dir {
            h ^= manifests_hash(d).rotate_left(1);
        }
        h
    }

    /// Applies the manifests: pods to start and stop, VIPs, the controller's view, the node agents' pod lists,
    /// Service rules and DNS records.
    fn reconcile(&mut self) -> Result<()> {
        self.manifests_hash = self.manifests_hash();
        let mut desired = manifests::load(&self.state.manifests)
            .with_context(|| format!("read {}", self.state.manifests.display()))?;
        self.waypoint_gateways = desired.waypoint_gateways();
        // What the controller deployed applies as if the user had written it (and is never written back).
        match &self.deploy_dir {
            Some(d) => match manifests::load(d) {
                Ok(deployed) => desired.merge(deployed),
                Err(e) => desired.errors.push(format!("read {}: {e}", d.display())),
            },
            None => {
                for gw in desired.waypoint_gateways() {
                    desired.errors.push(format!(
                        "waypoint Gateway {gw} gets no pods: this controller cannot deploy waypoints (no --deploy-dir)"
                    ));
                }
            }
        }
        for e in &desired.errors {
            warn!(error = %e, "manifest skipped");
        }
        self.state.errors = desired.errors.clone();
        let wanted: BTreeMap<String, &PodSpec> =
            desired.pods.iter().map(|p| (p.key(), p)).collect();
        // Stop pods that are gone or whose spec changed.
        let stale: Vec<String> = self
            .state
            .pods
            .iter()
            .filter(|(k, s)| wanted.get(*k).is_none_or(|p| spec_hash(p) != s.spec_hash))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.stop_pod(&key);
        }
        for (key, pod) in &wanted {
            if !self.state.pods.contains_key(key)
                && let Err(e) = self.start_pod(pod)
            {
                warn!(pod = %key, error = %format!("{e:#}"), "pod not started");
                self.state.errors.push(format!("pod {key}: {e:#}"));
            }
        }
        for (key, s) in self.state.pods.iter_mut() {
            if let Some(p) = wanted.get(key) {
                let ns_labels = desired
                    .namespaces
                    .get(&p.namespace)
                    .cloned()
                    .unwrap_or_default();
                s.captured = ambit_core::enrollment::captured(
                    &p.labels,
                    &p.annotations,
                    &p.namespace,
                    &ns_labels,
                    &ambit_core::enrollment::default_excluded_namespaces(),
                );
            }
        }
        self.services(&desired)?;
        self.write_cluster(&desired)?;
        self.write_node_agents(&desired)?;
        self.sync_pids();
        Ok(())
    }

    fn start_pod(&mut self, pod: &PodSpec) -> Result<()> {
        let key = pod.key();
        let node = match &pod.node_name {
            Some(n) => self
                .state
                .nodes
                .iter()
                .find(|x| &x.name == n)
                .with_context(|| format!("spec.nodeName {n} is not a node of this mesh"))?
                .clone(),
            None => {
                let count = |n: &NodeState| {
                    self.state
                        .pods
                        .values()
                        .filter(|p| p.node == n.name)
                        .count()
                };
                self.state
                    .nodes
                    .iter()
                    .min_by_key(|n| count(n))
                    .context("no nodes")?
                    .clone()
            }
        };
        // What can fail without side effects first: the namespace is only created once the command is runnable.
        kubelet::argv(pod, &self.bins.pods)?;
        let node_index = node.ip.octets()[3] - 10;
        let used: Vec<Ipv4Addr> = self.state.pods.values().map(|p| p.ip).collect();
        let ip = (2..=254u8)
            .map(|h| Ipv4Addr::new(10, 244, node_index, h))
            .find(|ip| !used.contains(ip))
            .with_context(|| format!("no free pod address on {}", node.name))?;
        let netns = format!("{}pod-{}.{}", net::PREFIX, pod.namespace, pod.name);
        let veth = format!("vp{node_index}x{}", ip.octets()[3]);
        net::attach(&netns, &veth, ip)?;
        let cd = "cluster.local";
        net::write_resolv_conf(
            &netns,
            &[
                format!("{}.svc.{cd}", pod.namespace),
                format!("svc.{cd}"),
                cd.to_owned(),
            ],
        )?;
        let uid = format!(
            "{:016x}-{:08x}",
            manifests::fnv1a(key.as_bytes()),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let argv = kubelet::argv(pod, &self.bins.pods)?;
        let token = if kubelet::is_waypoint(pod) {
            Some(self.pod_token(pod)?)
        } else {
            None
        };
        let env = kubelet::env(
            pod,
            &uid,
            ip,
            &node,
            token.as_deref().map(|t| (&self.creds, t)),
        );
        let log = self
            .dir
            .join("logs")
            .join(format!("{}_{}.log", pod.namespace, pod.name));
        // Not started here: as in Kubernetes, the pod object (with its address) reaches the controller and the node
        // agent first, and its process starts on the next supervision tick. A waypoint asks the CA for its
        // identity right away, which the CA grants only to a pod it knows.
        let proc = Proc::new(&format!("pod/{key}"), &netns, argv, env, log.clone());
        info!(pod = %key, %ip, node = %node.name, "pod scheduled");
        self.state.pods.insert(
            key.clone(),
            PodState {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                uid,
                ip,
                node: node.name.clone(),
                netns,
                veth,
                owner: pod.owner.clone(),
                captured: false,
                ready: false,
                pid: proc.pid(),
                restarts: 0,
                log,
                spec_hash: spec_hash(pod),
            },
        );
        self.probes.insert(
            key.clone(),
            Prober::new(pod.readiness.clone(), &pod.service_account),
        );
        self.pods.insert(key, proc);
        Ok(())
    }

    /// A token for the pod's own identity (Kubernetes would mount a projected service-account token), minted by
    /// the controller's token authority.
    fn pod_token(&self, pod: &PodSpec) -> Result<PathBuf> {
        let dir = self
            .dir
            .join("secrets")
            .join(format!("{}.{}", pod.namespace, pod.name));
        std::fs::create_dir_all(&dir)?;
        let token = net::run(
            Command::new(&self.bins.controller)
                .args(["token", "--pod", &pod.key(), "--state-dir"])
                .arg(self.controller_dir()),
        )
        .with_context(|| format!("mint a token for pod {}", pod.key()))?;
        let path = dir.join("token");
        std::fs::write(&path, token.trim())?;
        Ok(path)
    }

    fn stop_pod(&mut self, key: &str) {
        self.probes.remove(key);
        if let Some(mut p) = self.pods.remove(key) {
            p.stop(Duration::from_secs(3));
        }
        if let Some(s) = self.state.pods.remove(key) {
            let _ = net::ip(&["-n", NET_NS, "link", "del", &s.veth]);
            net::delete_ns(&s.netns);
            let secrets = format!("{}.{}", s.namespace, s.name);
            let _ = std::fs::remove_dir_all(self.dir.join("secrets").join(secrets));
            info!(pod = %key, "pod stopped");
        }
    }

    /// VIPs (kept stable while a Service exists), endpoints, Service rules and DNS records.
    fn services(&mut self, desired: &Desired) -> Result<()> {
        let keys: Vec<String> = desired.services.iter().map(|s| s.key()).collect();
        self.vips.retain(|k, _| keys.contains(k));
        let mut rules = Vec::new();
        let mut records = BTreeMap::new();
        self.state.services.clear();
        for svc in &desired.services {
            let vip = if svc.headless() {
                None
            } else if let Some(ip) = svc.cluster_ip.as_deref().and_then(|s| s.parse().ok()) {
                Some(ip)
            } else if let Some(ip) = self.vips.get(&svc.key()) {
                Some(*ip)
            } else {
                let used: Vec<Ipv4Addr> = self.vips.values().copied().collect();
                let ip = (11..=250u8)
                    .map(|h| {
                        Ipv4Addr::new(
                            SERVICE_CIDR_BASE[0],
                            SERVICE_CIDR_BASE[1],
                            SERVICE_CIDR_BASE[2],
                            h,
                        )
                    })
                    .find(|ip| !used.contains(ip))
                    .context("the Service CIDR is full")?;
                self.vips.insert(svc.key(), ip);
                Some(ip)
            };
            let members: Vec<(&PodSpec, Ipv4Addr)> = desired
                .pods
                .iter()
                .filter(|p| svc.selects(p))
                // As kube-proxy and headless DNS: only ready pods (see `Probe`) receive a Service's traffic.
                .filter(|p| self.probes.get(&p.key()).is_some_and(|probe| probe.ready))
                .filter_map(|p| self.state.pods.get(&p.key()).map(|s| (p, s.ip)))
                .collect();
            if let Some(vip) = vip {
                for port in &svc.ports {
                    rules.push(VipRule {
                        vip,
                        port: port.port,
                        protocol: port.protocol.clone(),
                        endpoints: members
                            .iter()
                            .filter_map(|(p, ip)| Some((*ip, p.resolve(&port.target)?)))
                            .collect(),
                    });
                }
            }
            let answer: Vec<Ipv4Addr> = match vip {
                Some(v) => vec![v],
                None => members.iter().map(|m| m.1).collect(),
            };
            records.insert(
                format!("{}.{}.svc.cluster.local.", svc.name, svc.namespace),
                answer,
            );
            self.state.services.insert(
                svc.key(),
                ServiceState {
                    namespace: svc.namespace.clone(),
                    name: svc.name.clone(),
                    vip,
                    ports: svc.ports.iter().map(|p| p.port).collect(),
                    endpoints: members.iter().map(|m| m.1).collect(),
                },
            );
        }
        net::write_service_rules(&rules)?;
        self.dns.replace(records);
        Ok(())
    }

    /// What the controller reads: the passthrough objects, Services with their VIPs, and Pods with a status.
    fn write_cluster(&self, desired: &Desired) -> Result<()> {
        let mut docs: Vec<Value> = desired.passthrough.clone();
        for svc in &desired.services {
            let mut obj = svc.object.clone();
            if let Some(vip) = self.state.services.get(&svc.key()).and_then(|s| s.vip) {
                set(&mut obj, &["spec", "clusterIP"], vip.to_string().into());
            }
            docs.push(obj);
        }
        for pod in &desired.pods {
            let Some(s) = self.state.pods.get(&pod.key()) else {
                continue;
            };
            let node_ip = self
                .state
                .nodes
                .iter()
                .find(|n| n.name == s.node)
                .map(|n| n.ip.to_string())
                .unwrap_or_default();
            let mut obj = pod.object.clone();
            set(&mut obj, &["metadata", "uid"], s.uid.clone().into());
            set(&mut obj, &["spec", "nodeName"], s.node.clone().into());
            // See `Probe`: the probe passes and a captured pod's ztunnel holds it.
            let ready = self.probes.get(&pod.key()).is_some_and(|p| p.ready);
            let status: Value = serde_yaml::from_str(&format!(
                "phase: Running\nhostIP: {node_ip}\npodIP: {ip}\npodIPs: [{{ip: {ip}}}]\nconditions: [{{type: Ready, status: \"{ready}\"}}]\n",
                ip = s.ip,
                ready = if ready { "True" } else { "False" },
            ))?;
            set(&mut obj, &["status"], status);
            docs.push(obj);
        }
        let mut text = String::new();
        for d in &docs {
            text.push_str("---\n");
            text.push_str(&serde_yaml::to_string(d)?);
        }
        let tmp = self.dir.join("cluster/.cluster.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.dir.join("cluster/cluster.yaml"))?;
        Ok(())
    }

    /// Each node agent's pod list (it decides capture from the labels itself).
    fn write_node_agents(&self, desired: &Desired) -> Result<()> {
        for node in &self.state.nodes {
            let mut list = Vec::new();
            for pod in &desired.pods {
                let Some(s) = self.state.pods.get(&pod.key()) else {
                    continue;
                };
                if s.node != node.name {
                    continue;
                }
                list.push(ambit_core::local_pod::LocalPod {
                    uid: s.uid.clone(),
                    name: pod.name.clone(),
                    namespace: pod.namespace.clone(),
                    service_account: pod.service_account.clone(),
                    netns: PathBuf::from(format!("/var/run/netns/{}", s.netns)),
                    labels: pod.labels.clone(),
                    annotations: pod.annotations.clone(),
                    namespace_labels: desired
                        .namespaces
                        .get(&pod.namespace)
                        .cloned()
                        .unwrap_or_default(),
                });
            }
            let path = self.dir.join("nodes").join(&node.name).join("pods.json");
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&list)?)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(())
    }

    fn shutdown(&mut self) {
        // Every pod at once, then the mesh (ztunnels drain meanwhile), then whatever is left goes with the
        // namespaces.
        let mut pods: Vec<Proc> = self.pods.drain().map(|(_, p)| p).collect();
        stop_all(&mut pods, Duration::from_secs(3));
        // An old ztunnel still draining from a rolling restart stops with the rest.
        self.system
            .extend(self.rollouts.drain(..).map(rollout::Rollout::into_old));
        stop_all(&mut self.system, Duration::from_secs(5));
        super::sweep(&self.dir);
    }
}

/// The controller's environment: its log level, and the mesh settings it reads from the environment when the
/// user set them for `ambit local up` (as istiod's env in a cluster).
fn controller_env() -> Vec<(String, String)> {
    let mut env = vec![("RUST_LOG".to_owned(), "info".to_owned())];
    env.extend(passed_through(&["PILOT_AUTO_ALLOW_WAYPOINT_POLICY"]));
    env
}

/// The ztunnel settings `ambit local up` hands on from its own environment (as the ztunnel chart's `env` on a
/// cluster): the certificate lifetime asked of the CA, and how long a draining ztunnel keeps its connections.
const ZTUNNEL_PASSED_THROUGH: &[&str] = &["SECRET_TTL", "CONNECTION_TERMINATION_DEADLINE"];

/// Those of `keys` set in this process's environment, with their values.
fn passed_through(keys: &[&str]) -> Vec<(String, String)> {
    keys.iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect()
}

fn set(obj: &mut Value, path: &[&str], value: Value) {
    let mut cur = obj;
    for (i, k) in path.iter().enumerate() {
        if !cur.is_mapping() {
            *cur = Value::Mapping(Default::default());
        }
        let Some(m) = cur.as_mapping_mut() else {
            return;
        };
        if i == path.len() - 1 {
            m.insert((*k).into(), value);
            return;
        }
        cur = m
            .entry((*k).into())
            .or_insert_with(|| Value::Mapping(Default::default()));
    }
}

fn spec_hash(p: &PodSpec) -> u64 {
    manifests::fnv1a(
        format!(
            "{:?}|{:?}|{:?}|{}",
            p.argv, p.env, p.node_name, p.service_account
        )
        .as_bytes(),
    )
}

/// A hash of the manifest files' names and contents.
fn manifests_hash(dir: &Path) -> u64 {
    let mut bytes = Vec::new();
    for f in manifests::files(dir).unwrap_or_default() {
        bytes.extend_from_slice(f.to_string_lossy().as_bytes());
        bytes.extend(std::fs::read(&f).unwrap_or_default());
    }
    manifests::fnv1a(&bytes)
}
