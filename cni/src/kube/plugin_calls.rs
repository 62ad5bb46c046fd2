//! The CNI plugin's requests in the reconcile loop. An ADD comes while the pod is still `Pending` (the runtime
//! runs the CNI chain before any container starts): the pod is looked up in this node's watch, judged by the
//! same enrollment rule as every other pod, and when enrolled it is *announced* — its network namespace is the
//! one the runtime named (`CNI_NETNS`), no lookup needed — and the next reconcile captures it before the plugin
//! is answered, so its redirection is in place before its first packet. The announcement holds until the DEL of
//! that sandbox or the pod's end, so the later `Running` pod keeps the same namespace path (a different path
//! would look like a new sandbox and release and capture it again).
//!
//! An ADD for a pod this node's watch has not delivered yet waits for it, up to [`WAIT_FOR_POD`].

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::NodeState;
use super::pod::{NodePod, PodState};
use crate::plugin::{PluginCommand, PluginResponse};
use crate::plugin_server::PluginCall;

/// How long an ADD waits for its pod to show up in this node's watch; under the server's answer timeout.
pub const WAIT_FOR_POD: Duration = Duration::from_secs(20);

/// A pod the plugin announced: the sandbox's network namespace as the runtime named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Announced {
    pub netns: PathBuf,
    pub container_id: String,
}

/// Calls not answered yet.
#[derive(Debug, Default)]
pub(super) struct Calls {
    /// ADDs whose pod is not in the watch yet, with their deadline.
    waiting: Vec<(PluginCall, Instant)>,
    /// ADDs announced, answered after the next reconcile: (call, uid).
    announced: Vec<(PluginCall, String)>,
    /// DELs, answered after the next reconcile (which releases the sandbox).
    deleted: Vec<PluginCall>,
}

impl Calls {
    pub fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }
}

/// What an ADD's pod is, as the store has it.
enum Lookup {
    NotSeen,
    Enrolled { uid: String },
    NotEnrolled(&'static str),
    Failed(String),
}

impl NodeState {
    /// Takes the new calls and those still waiting: DELs drop their announcement, ADDs announce their pod or are
    /// answered at once (not enrolled) or keep waiting. Called with both listings complete.
    pub(super) fn take_calls(&mut self, new: Vec<PluginCall>) {
        let now = Instant::now();
        let waiting = std::mem::take(&mut self.calls.waiting);
        let fresh = new.into_iter().map(|c| (c, now + WAIT_FOR_POD));
        for (call, deadline) in waiting.into_iter().chain(fresh) {
            let req = &call.request;
            match req.command {
                PluginCommand::Del => {
                    self.announced.retain(|_, a| {
                        a.container_id != req.container_id
                            && (req.netns.as_os_str().is_empty() || a.netns != req.netns)
                    });
                    self.calls.deleted.push(call);
                }
                PluginCommand::Add => match self.lookup_call_pod(&call) {
                    Lookup::Enrolled { uid } => {
                        self.announced.insert(
                            uid.clone(),
                            Announced {
                                netns: req.netns.clone(),
                                container_id: req.container_id.clone(),
                            },
                        );
                        self.calls.announced.push((call, uid));
                    }
                    Lookup::NotEnrolled(why) => {
                        info!(pod.namespace = %req.pod_namespace, pod.name = %req.pod_name, reason = why,
                            "CNI ADD: not captured");
                        let _ = call.reply.send(PluginResponse::NotEnrolled);
                    }
                    Lookup::Failed(message) => {
                        warn!(%message, "CNI ADD failed");
                        let _ = call.reply.send(PluginResponse::error(message));
                    }
                    Lookup::NotSeen if now >= deadline => {
                        let message = format!(
                            "pod {}/{} did not appear in this node's watch within {WAIT_FOR_POD:?}",
                            req.pod_namespace, req.pod_name
                        );
                        warn!(%message, "CNI ADD failed");
                        let _ = call.reply.send(PluginResponse::error(message));
                    }
                    Lookup::NotSeen => self.calls.waiting.push((call, deadline)),
                },
            }
        }
    }

    /// Calls that came before both listings were complete: they wait (nothing is decided on a partial view).
    pub(super) fn calls_before_listing(&mut self, new: Vec<PluginCall>) {
        let deadline = Instant::now() + WAIT_FOR_POD;
        self.calls
            .waiting
            .extend(new.into_iter().map(|c| (c, deadline)));
    }

    /// Answers the ADDs and DELs the last reconcile acted on.
    pub(super) fn answer_calls(&mut self) {
        for (call, uid) in std::mem::take(&mut self.calls.announced) {
            let req = &call.request;
            let answer = if self.agent.has_captured(&uid) {
                info!(pod.namespace = %req.pod_namespace, pod.name = %req.pod_name, netns = %req.netns.display(),
                    "CNI ADD: captured before the pod's containers start");
                PluginResponse::Captured
            } else {
                // The capture failed (logged by the agent); the reconcile loop retries it.
                self.announced.remove(&uid);
                PluginResponse::error(format!(
                    "capturing pod {}/{} in {} failed (the node agent's log says why)",
                    req.pod_namespace,
                    req.pod_name,
                    req.netns.display()
                ))
            };
            let _ = call.reply.send(answer);
        }
        for call in std::mem::take(&mut self.calls.deleted) {
            let _ = call.reply.send(PluginResponse::Released);
        }
    }

    fn lookup_call_pod(&self, call: &PluginCall) -> Lookup {
        let req = &call.request;
        let found = self.pods.state().into_iter().find(|p| {
            p.metadata.namespace.as_deref() == Some(req.pod_namespace.as_str())
                && p.metadata.name.as_deref() == Some(req.pod_name.as_str())
                && (req.pod_uid.is_empty()
                    || p.metadata.uid.as_deref() == Some(req.pod_uid.as_str()))
        });
        let Some(pod) = found.and_then(|p| NodePod::try_from(p.as_ref()).ok()) else {
            return Lookup::NotSeen;
        };
        match pod.state {
            PodState::HostNetwork => return Lookup::NotEnrolled("host network"),
            PodState::Finished => return Lookup::NotEnrolled("finished"),
            PodState::Running | PodState::NotReady => {}
        }
        let labels = self.namespace_labels(&pod.namespace);
        if !self.agent.is_captured(&pod.local(&labels, PathBuf::new())) {
            return Lookup::NotEnrolled("not enrolled");
        }
        if req.netns.as_os_str().is_empty() || !req.netns.exists() {
            return Lookup::Failed(format!(
                "pod {}/{}: no network namespace at {:?} (the runtime's CNI_NETNS); is the host's /var/run/netns \
                 mounted into the node agent?",
                req.pod_namespace,
                req.pod_name,
                req.netns.display()
            ));
        }
        Lookup::Enrolled { uid: pod.uid }
    }
}
