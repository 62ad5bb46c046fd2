//! Shared (in-pod) mode: one proxy per enrolled pod, each with its own listeners inside the pod's network
//! namespace, its own HBONE pool and the pod's own identity (spec 4.3).
//!
//! The node agent hands pods over with ZDS (`crate::inpod`); this module starts and drains their proxies. A pod's
//! proxy is a `ProxyInputs` whose socket factory creates every socket (listeners, connections to peers and to the
//! local application) inside the pod's namespace, so traffic leaves with the pod's address and the in-pod
//! redirection rules see ztunnel's mark.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use ambit_core::drain::{self, DrainTrigger, DrainWatcher};
use nix::sys::stat::fstat;
use tracing::{info, warn};

use crate::app::ProxyShared;
use crate::metrics::WorkloadManagerMetrics;
use crate::proxy::connections::ConnectionRegistry;
use crate::proxy::socket::{Netns, SocketFactory};

/// Who a pod is, as the node agent names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

struct RunningPod {
    identity: PodIdentity,
    /// (device, inode) of the namespace file: the same pod handed over again is not restarted.
    netns_id: (u64, u64),
    trigger: DrainTrigger,
    /// Its live connections, for `workloadState`.
    connections: Arc<ConnectionRegistry>,
}

/// The proxies of every pod this ztunnel serves.
pub struct PodProxies {
    shared: Arc<ProxyShared>,
    host_netns: Arc<OwnedFd>,
    pods: Mutex<HashMap<String, RunningPod>>,
    /// Pods whose proxy failed to start (the ZDS client retries them).
    pending: Mutex<HashMap<String, PodIdentity>>,
    metrics: Arc<WorkloadManagerMetrics>,
}

impl PodProxies {
    /// `drain` is ztunnel's own: when it fires every pod's proxy drains too, and ztunnel's drain waits for them.
    pub fn new(
        shared: Arc<ProxyShared>,
        metrics: Arc<WorkloadManagerMetrics>,
        drain: DrainWatcher,
    ) -> std::io::Result<Arc<PodProxies>> {
        let host_netns = Arc::new(Netns::current()?);
        let pods = Arc::new(PodProxies {
            shared,
            host_netns,
            pods: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            metrics,
        });
        // A strong reference: the ZDS client, the other owner, returns on the same signal, and were this the last
        // one the pods' triggers would be dropped unsignalled — every connection cut at once instead of drained.
        let owner = pods.clone();
        tokio::spawn(async move {
            let mut drain = drain;
            drain.signaled().await;
            let all: Vec<RunningPod> = owner.take(|_| true);
            owner.counted_stops(all.len());
            let deadline = owner.shared.cfg.termination_deadline;
            drop(owner);
            futures::future::join_all(all.into_iter().map(|p| p.trigger.drain(deadline))).await;
            // `drain` (a watcher of ztunnel's own drain) is held until here, so ztunnel waits for its pods.
            drop(drain);
        });
        Ok(pods)
    }

    /// Starts the proxy of pod `uid` inside `netns`. Starting a pod that runs already in the same namespace is a
    /// no-op; a different namespace (the pod sandbox was recreated) replaces it. A pod whose proxy fails to start
    /// is `Pending` (in `/config_dump` and `workload_manager_pending_proxy_count`) until it starts or is removed.
    pub async fn start(&self, uid: &str, pod: PodIdentity, netns: OwnedFd) -> Result<(), String> {
        let result = self.start_proxy(uid, pod.clone(), netns).await;
        {
            let mut pending = self.pending_lock();
            match &result {
                Ok(()) => pending.remove(uid),
                Err(_) => pending.insert(uid.to_owned(), pod),
            };
        }
        self.update_gauges();
        result
    }

    async fn start_proxy(&self, uid: &str, pod: PodIdentity, netns: OwnedFd) -> Result<(), String> {
        let stat = fstat(netns.as_fd()).map_err(|e| format!("netns: {e}"))?;
        check_network_namespace(&netns)?;
        let netns_id = (stat.st_dev, stat.st_ino);
        let replaced = {
            let mut pods = self.lock();
            match pods.get(uid) {
                Some(p) if p.netns_id == netns_id && p.identity == pod => return Ok(()),
                Some(_) => pods.remove(uid),
                None => None,
            }
        };
        if let Some(old) = replaced {
            info!(pod.uid = uid, "pod namespace changed; replacing its proxy");
            self.counted_stops(1);
            old.trigger
                .drain(self.shared.cfg.termination_deadline)
                .await;
        }
        let sockets = SocketFactory {
            netns: Some(Arc::new(Netns::new(netns, self.host_netns.clone()))),
            ..self.shared.sockets.clone()
        };
        let (trigger, watcher) = drain::new();
        let (pi, _) = self
            .shared
            .serve_workload(
                (
                    pod.namespace.clone(),
                    pod.name.clone(),
                    pod.service_account.clone(),
                ),
                &sockets,
                watcher.clone(),
                false,
            )
            .map_err(|e| format!("{e:#}"))?;
        if let Err(e) = self.shared.spawn_dns(&pi, &pi.sockets, watcher.clone()) {
            // The pod's proxies are up; only its DNS is not. Say so and go on.
            warn!(pod.uid = uid, error = %format!("{e:#}"), "pod DNS proxy not started");
        }
        {
            let pi = pi.clone();
            tokio::spawn(async move {
                if let Ok(w) = pi.local_workload().await {
                    pi.certs.prefetch(&w.identity());
                }
            });
        }
        drop(watcher);
        info!(
            pod.uid = uid,
            pod.namespace = %pod.namespace,
            pod.name = %pod.name,
            "pod proxy started"
        );
        self.lock().insert(
            uid.to_owned(),
            RunningPod {
                identity: pod,
                netns_id,
                trigger,
                connections: pi.connections.clone(),
            },
        );
        self.metrics.started.inc();
        Ok(())
    }

    /// Stops pod `uid`'s proxy: no new connections; open ones get the termination deadline to finish.
    pub async fn stop(&self, uid: &str) {
        self.pending_lock().remove(uid);
        let removed = self.lock().remove(uid);
        self.counted_stops(usize::from(removed.is_some()));
        match removed {
            Some(p) => {
                info!(pod.uid = uid, pod.name = %p.identity.name, "pod proxy draining");
                let deadline = self.shared.cfg.termination_deadline;
                tokio::spawn(p.trigger.drain(deadline));
            }
            None => warn!(pod.uid = uid, "stop for a pod that is not running"),
        }
    }

    /// Stops every pod not in `keep` (after a ZDS snapshot).
    pub async fn retain(&self, keep: &HashSet<String>) {
        self.pending_lock().retain(|uid, _| keep.contains(uid));
        let gone = self.take(|uid| !keep.contains(uid));
        self.counted_stops(gone.len());
        let deadline = self.shared.cfg.termination_deadline;
        for p in gone {
            info!(pod.name = %p.identity.name, "pod not in the node agent's snapshot; draining");
            tokio::spawn(p.trigger.drain(deadline));
        }
    }

    /// `workloadState` of `/config_dump` (spec 6.2): uid → {info: {name, namespace, serviceAccount}, state} and,
    /// for a pod whose proxy is up, its live `connections` ({inbound, outbound}), as upstream.
    pub fn dump(&self) -> serde_json::Value {
        let entry = |p: &PodIdentity, state: &str| {
            serde_json::json!({
                "info": {"name": p.name, "namespace": p.namespace, "serviceAccount": p.service_account},
                "state": state,
            })
        };
        let mut out = serde_json::Map::new();
        for (uid, p) in self.pending_lock().iter() {
            out.insert(uid.clone(), entry(p, "Pending"));
        }
        // The registries are read after the pod map's lock is released: a dump never holds up a pod starting.
        let up: Vec<(String, PodIdentity, Arc<ConnectionRegistry>)> = self
            .lock()
            .iter()
            .map(|(uid, p)| (uid.clone(), p.identity.clone(), p.connections.clone()))
            .collect();
        for (uid, p, connections) in up {
            let mut e = entry(&p, "Up");
            if let Some(obj) = e.as_object_mut() {
                obj.insert(
                    "connections".into(),
                    serde_json::to_value(connections.dump()).unwrap_or_default(),
                );
            }
            out.insert(uid, e);
        }
        serde_json::Value::Object(out)
    }

    fn take(&self, pred: impl Fn(&str) -> bool) -> Vec<RunningPod> {
        let mut pods = self.lock();
        let uids: Vec<String> = pods.keys().filter(|u| pred(u)).cloned().collect();
        uids.iter().filter_map(|u| pods.remove(u)).collect()
    }

    /// Counts `n` proxies stopped and refreshes the gauges.
    fn counted_stops(&self, n: usize) {
        self.metrics.stopped.inc_by(n as u64);
        self.update_gauges();
    }

    fn update_gauges(&self) {
        let active = self.lock().len();
        let pending = self.pending_lock().len();
        self.metrics
            .active
            .set(i64::try_from(active).unwrap_or(i64::MAX));
        self.metrics
            .pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    fn pending_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodIdentity>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunningPod>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts/removes).
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Refuses a descriptor that is not a namespace (nsfs), or is a namespace of another type, saying what it is. The
/// type is known only where /proc names it (`uts:[…]`); a bind-mounted namespace file shows its path, and a wrong
/// type there is found by the first socket's setns.
fn check_network_namespace(fd: &OwnedFd) -> Result<(), String> {
    let what = || {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into())
    };
    let not_netns = |what: String| {
        Err(format!(
            "the descriptor passed is not a network namespace (it is {what})"
        ))
    };
    match nix::sys::statfs::fstatfs(fd.as_fd()) {
        Ok(fs) if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC => return not_netns(what()),
        Ok(_) => {}
        Err(e) => return Err(format!("netns: {e}")),
    }
    let what = what();
    match what.split_once(":[") {
        Some((kind, _)) if kind != "net" && !kind.contains('/') => not_netns(what),
        _ => Ok(()),
    }
}
