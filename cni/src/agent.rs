//! The node agent's reconcile loop: from the pods scheduled on this node (with their labels and their namespace's
//! labels) to redirection rules inside each captured pod and the pod's hand-off to ztunnel. Label changes take
//! effect on running pods: enrolling installs the rules and hands the pod over, releasing does the reverse.

use std::collections::HashMap;

use tracing::{info, warn};

use crate::server::{PodInfo, ZdsServer};
use ambit_core::redirect as rules;

pub use ambit_core::local_pod::LocalPod;

/// Pod annotation overriding DNS capture (`true`/`false`).
pub const DNS_CAPTURE_ANNOTATION: &str = "ambient.istio.io/dns-capture";

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub dns_capture: bool,
    pub excluded_namespaces: Vec<String>,
}

pub struct NodeAgent {
    cfg: AgentConfig,
    zds: ZdsServer,
    /// uid → the pod as captured.
    captured: HashMap<String, LocalPod>,
}

impl NodeAgent {
    pub fn new(cfg: AgentConfig, zds: ZdsServer) -> NodeAgent {
        NodeAgent {
            cfg,
            zds,
            captured: HashMap::new(),
        }
    }

    /// Whether the pod with `uid` is captured now (its rules installed).
    pub fn has_captured(&self, uid: &str) -> bool {
        self.captured.contains_key(uid)
    }

    /// Whether the enrollment rule captures `pod` (its netns plays no part).
    pub fn is_captured(&self, pod: &LocalPod) -> bool {
        ambit_core::enrollment::captured(
            &pod.labels,
            &pod.annotations,
            &pod.namespace,
            &pod.namespace_labels,
            &self.cfg.excluded_namespaces,
        )
    }

    /// Brings the node to `pods`: captures newly enrolled pods, releases pods that left or opted out. Returns the
    /// uids of the pods captured now whose namespace had no redirection yet (pods already redirected, as a
    /// restarted agent finds them, are not among them).
    pub async fn apply(&mut self, pods: &[LocalPod]) -> Vec<String> {
        let wanted: HashMap<&str, &LocalPod> = pods
            .iter()
            .filter(|p| self.is_captured(p))
            .map(|p| (p.uid.as_str(), p))
            .collect();
        let gone: Vec<String> = self
            .captured
            .iter()
            .filter(|(uid, old)| {
                wanted
                    .get(uid.as_str())
                    .is_none_or(|p| p.netns != old.netns)
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            if let Some(pod) = self.captured.remove(&uid) {
                self.release(&pod).await;
            }
        }
        let mut redirected_now = Vec::new();
        for (uid, pod) in wanted {
            if self.captured.contains_key(uid) {
                continue;
            }
            if let Some(written) = self.capture(pod).await {
                self.captured.insert(uid.to_owned(), pod.clone());
                if written {
                    redirected_now.push(uid.to_owned());
                }
            }
        }
        redirected_now
    }

    fn dns_capture(&self, pod: &LocalPod) -> bool {
        match pod
            .annotations
            .get(DNS_CAPTURE_ANNOTATION)
            .map(String::as_str)
        {
            Some("true") => true,
            Some("false") => false,
            _ => self.cfg.dns_capture,
        }
    }

    /// Hands the pod to ztunnel (so its listeners are up), then redirects its traffic. `Some(written)` when
    /// captured: whether the rules had to be written.
    async fn capture(&self, pod: &LocalPod) -> Option<bool> {
        let info = PodInfo {
            uid: pod.uid.clone(),
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
            netns: pod.netns.clone(),
        };
        if let Err(e) = self.zds.add(info).await {
            warn!(pod.name = %pod.name, error = %e, "ztunnel has not taken the pod yet; redirecting anyway");
        }
        let netns = pod.netns.clone();
        let dns = self.dns_capture(pod);
        match tokio::task::spawn_blocking(move || rules::install(&netns, dns)).await {
            Ok(Ok(written)) => {
                info!(pod.namespace = %pod.namespace, pod.name = %pod.name, rules_written = written, "pod captured");
                Some(written)
            }
            Ok(Err(e)) => {
                warn!(pod.name = %pod.name, error = %e, "installing the redirection failed");
                let _ = self.zds.remove(&pod.uid).await;
                None
            }
            Err(e) => {
                warn!(error = %e, "rules task failed");
                None
            }
        }
    }

    /// Stops redirecting first (new connections go straight to the app), then takes the pod from ztunnel.
    async fn release(&self, pod: &LocalPod) {
        let netns = pod.netns.clone();
        if netns.exists() {
            match tokio::task::spawn_blocking(move || rules::remove(&netns)).await {
                Ok(Err(e)) => {
                    warn!(pod.name = %pod.name, error = %e, "removing the redirection failed")
                }
                Err(e) => warn!(error = %e, "rules task failed"),
                Ok(Ok(())) => {}
            }
        }
        if let Err(e) = self.zds.remove(&pod.uid).await {
            warn!(pod.name = %pod.name, error = %e, "ztunnel did not confirm the release");
        }
        info!(pod.namespace = %pod.namespace, pod.name = %pod.name, "pod released");
    }
}
