//! Kubernetes mode: the agent watches the pods of its own node (`spec.nodeName` field selector) and every
//! namespace through kube-rs reflectors, and after each batch of changes brings the node to what they say with
//! [`NodeAgent::apply`]: the same enrollment rule as the controller, on running pods with an IP whose network
//! namespace is found ([`NetnsLookup`]).
//!
//! Nothing is applied before both initial listings are complete, so a restarted agent never releases a pod only
//! because it has not read its namespace yet; the first apply captures (and repairs) every enrolled pod that
//! started before the agent. A pod whose namespace cannot be found yet is retried every [`RETRY`], and logged
//! once; so is a pod whose redirection failed to install.

mod events;
mod plugin_calls;
pub mod pod;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ::kube::Client;
use ::kube::api::Api;
use ::kube::runtime::reflector::{self, Store};
use ::kube::runtime::{WatchStreamExt, watcher};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use tracing::{info, warn};

use crate::agent::{LocalPod, NodeAgent};
use crate::netns::{NetnsLookup, NetnsQuery};
use crate::plugin_server::PluginCall;
use plugin_calls::{Announced, Calls};
use pod::{NodePod, PodState};

/// How soon a pod that could not be captured (namespace not found, rules failed) is tried again.
pub const RETRY: Duration = Duration::from_secs(1);

/// What the loop needs of a watch event (the object itself is in the reflector's store by then).
enum Change {
    Pods(Seen),
    Namespaces(Seen),
    /// A request of the CNI plugin ([`plugin_calls`]).
    Plugin(PluginCall),
}

enum Seen {
    /// A listing completed.
    Listed,
    /// An object changed (or a listing is under way).
    Changed,
    Failed(watcher::Error),
}

impl Seen {
    fn of<K>(ev: Result<watcher::Event<K>, watcher::Error>) -> Seen {
        match ev {
            Ok(watcher::Event::InitDone) => Seen::Listed,
            Ok(_) => Seen::Changed,
            Err(e) => Seen::Failed(e),
        }
    }
}

/// Watches the API for `node`'s pods and reconciles `agent` until `shutdown` completes; answers the CNI plugin's
/// requests from `plugin` (the [`crate::plugin_server`] channel) when the plugin is installed.
pub async fn run(
    client: Client,
    node: &str,
    agent: NodeAgent,
    lookup: Arc<dyn NetnsLookup>,
    mut plugin: Option<tokio::sync::mpsc::Receiver<PluginCall>>,
    shutdown: impl Future<Output = ()>,
) {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (namespaces, ns_writer) = reflector::store::<Namespace>();
    let selector = format!("spec.nodeName={node}");
    let pod_events = reflector::reflector(
        pod_writer,
        watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&selector),
        ),
    )
    .default_backoff()
    .map(|ev| Change::Pods(Seen::of(ev)))
    .boxed();
    let uncaptured = plugin
        .is_some()
        .then(|| events::UncapturedEvents::new(client.clone(), node));
    let ns_events = reflector::reflector(
        ns_writer,
        watcher(Api::<Namespace>::all(client), watcher::Config::default()),
    )
    .default_backoff()
    .map(|ev| Change::Namespaces(Seen::of(ev)))
    .boxed();
    let mut events = futures::stream::select(pod_events, ns_events);
    let mut node_state = NodeState::new(agent, lookup, pods, namespaces);
    node_state.uncaptured = uncaptured;
    let (mut pods_listed, mut namespaces_listed) = (false, false);
    let mut retry_at: Option<tokio::time::Instant> = None;
    info!(node, field_selector = %selector, "watching this node's pods and the namespaces");
    tokio::pin!(shutdown);
    loop {
        let change = tokio::select! {
            _ = &mut shutdown => break,
            ev = events.next() => match ev {
                Some(ev) => Some(ev),
                None => {
                    warn!("the Kubernetes watches ended");
                    break;
                }
            },
            call = next_call(&mut plugin) => match call {
                Some(call) => Some(Change::Plugin(call)),
                None => {
                    plugin = None;
                    None
                }
            },
            _ = sleep_until(retry_at) => None,
        };
        // The changes already there go in the same reconcile.
        let mut batch: Vec<Change> = change.into_iter().collect();
        while let Some(Some(ev)) = events.next().now_or_never() {
            batch.push(ev);
        }
        let mut calls = Vec::new();
        for ev in batch {
            match ev {
                Change::Plugin(call) => calls.push(call),
                Change::Pods(Seen::Listed) if !pods_listed => {
                    pods_listed = true;
                    info!(
                        pods = node_state.pods.state().len(),
                        "initial listing of this node's pods done"
                    );
                }
                Change::Namespaces(Seen::Listed) => namespaces_listed = true,
                Change::Pods(Seen::Failed(e)) => {
                    warn!(error = %e, "watching pods failed; retrying with backoff")
                }
                Change::Namespaces(Seen::Failed(e)) => {
                    warn!(error = %e, "watching namespaces failed; retrying with backoff")
                }
                _ => {}
            }
        }
        if pods_listed && namespaces_listed {
            node_state.take_calls(calls);
            let behind = node_state.reconcile().await;
            node_state.answer_calls();
            retry_at = (behind || node_state.calls.is_waiting())
                .then(|| tokio::time::Instant::now() + RETRY);
        } else {
            // Nothing is decided before both listings are complete.
            node_state.calls_before_listing(calls);
        }
    }
}

async fn next_call(
    plugin: &mut Option<tokio::sync::mpsc::Receiver<PluginCall>>,
) -> Option<PluginCall> {
    match plugin {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The reconcile side of the loop: the reflectors' stores, the namespaces found so far and what was logged.
struct NodeState {
    agent: NodeAgent,
    lookup: Arc<dyn NetnsLookup>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    /// uid → its network namespace, as found (checked with `still_valid` before each reuse).
    netns: HashMap<String, PathBuf>,
    /// Enrolled pods whose namespace is not found yet (logged once each).
    waiting: HashSet<String>,
    /// Pods that cannot be read (logged once each).
    unreadable: HashSet<String>,
    /// uid → the sandbox the CNI plugin announced (captured while still `Pending`).
    announced: HashMap<String, Announced>,
    calls: Calls,
    /// With the plugin installed: the Event for pods found running unredirected ([`events`]).
    uncaptured: Option<events::UncapturedEvents>,
}

impl NodeState {
    fn new(
        agent: NodeAgent,
        lookup: Arc<dyn NetnsLookup>,
        pods: Store<Pod>,
        namespaces: Store<Namespace>,
    ) -> NodeState {
        NodeState {
            agent,
            lookup,
            pods,
            namespaces,
            netns: HashMap::new(),
            waiting: HashSet::new(),
            unreadable: HashSet::new(),
            announced: HashMap::new(),
            calls: Calls::default(),
            uncaptured: None,
        }
    }

    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .state()
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(namespace))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }

    /// The enrolled running pods, with their namespace's labels (netns still empty).
    fn enrolled(&mut self) -> Vec<LocalPod> {
        let labels: HashMap<String, BTreeMap<String, String>> = self
            .namespaces
            .state()
            .iter()
            .filter_map(|n| {
                let name = n.metadata.name.clone()?;
                Some((name, n.metadata.labels.clone().unwrap_or_default()))
            })
            .collect();
        let none = BTreeMap::new();
        let mut unreadable = HashSet::new();
        let mut present = HashSet::new();
        let mut out = Vec::new();
        for p in self.pods.state() {
            let pod = match NodePod::try_from(p.as_ref()) {
                Ok(pod) => pod,
                Err(e) => {
                    let key = format!(
                        "{}/{}",
                        p.metadata.namespace.as_deref().unwrap_or_default(),
                        p.metadata.name.as_deref().unwrap_or_default()
                    );
                    if !self.unreadable.contains(&key) {
                        warn!(pod = %key, error = %e, "ignoring a pod that cannot be read");
                    }
                    unreadable.insert(key);
                    continue;
                }
            };
            let announced = self.announced.get(&pod.uid);
            let netns = match (&pod.state, announced) {
                (PodState::Finished | PodState::HostNetwork, _) => continue,
                (_, Some(a)) => a.netns.clone(),
                (PodState::Running, None) => PathBuf::new(),
                (PodState::NotReady, None) => continue,
            };
            present.insert(pod.uid.clone());
            let ns_labels = labels.get(&pod.namespace).unwrap_or(&none);
            let local = pod.local(ns_labels, netns);
            if self.agent.is_captured(&local) {
                out.push(local);
            }
        }
        self.unreadable = unreadable;
        // An announcement ends with its pod.
        self.announced.retain(|uid, _| present.contains(uid));
        out
    }

    /// Brings the node to the stores. Returns whether a pod that should be captured is not (retry soon).
    async fn reconcile(&mut self) -> bool {
        let enrolled = self.enrolled();
        let queries: Vec<(NetnsQuery, Option<PathBuf>)> = enrolled
            .iter()
            .filter(|p| p.netns.as_os_str().is_empty())
            .map(|p| {
                let query = NetnsQuery {
                    uid: p.uid.clone(),
                    annotations: p.annotations.clone(),
                };
                (query, self.netns.get(&p.uid).cloned())
            })
            .collect();
        let lookup = Arc::clone(&self.lookup);
        let found = tokio::task::spawn_blocking(move || {
            let mut found = BTreeMap::new();
            let mut unknown = Vec::new();
            for (query, known) in queries {
                match known {
                    Some(path) if lookup.still_valid(&query, &path) => {
                        found.insert(query.uid, Ok(path));
                    }
                    _ => unknown.push(query),
                }
            }
            if !unknown.is_empty() {
                found.extend(lookup.find(&unknown));
            }
            found
        })
        .await;
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "the network-namespace lookup failed");
                return true;
            }
        };
        let mut behind = false;
        let mut netns = HashMap::new();
        let mut pods = Vec::with_capacity(enrolled.len());
        for mut pod in enrolled {
            if !pod.netns.as_os_str().is_empty() {
                // Announced by the plugin: the runtime's own path.
                netns.insert(pod.uid.clone(), pod.netns.clone());
                pods.push(pod);
                continue;
            }
            match found.get(&pod.uid) {
                Some(Ok(path)) => {
                    if self.waiting.remove(&pod.uid) {
                        info!(pod.namespace = %pod.namespace, pod.name = %pod.name, netns = %path.display(),
                            "found the pod's network namespace");
                    }
                    netns.insert(pod.uid.clone(), path.clone());
                    pod.netns = path.clone();
                    pods.push(pod);
                }
                Some(Err(e)) => {
                    behind = true;
                    if self.waiting.insert(pod.uid.clone()) {
                        warn!(pod.namespace = %pod.namespace, pod.name = %pod.name, reason = %e,
                            "the pod's network namespace is not found yet; retrying");
                    }
                }
                None => behind = true,
            }
        }
        // Pods that left (or stopped being enrolled) are no longer waited for.
        self.waiting.retain(|uid| found.contains_key(uid));
        self.netns = netns;
        let redirected_now = self.agent.apply(&pods).await;
        if let Some(events) = &self.uncaptured {
            // Announced pods were captured at their ADD, before they started.
            for pod in pods
                .iter()
                .filter(|p| redirected_now.contains(&p.uid) && !self.announced.contains_key(&p.uid))
            {
                events.started_uncaptured(pod).await;
            }
        }
        behind || pods.iter().any(|p| !self.agent.has_captured(&p.uid))
    }
}
