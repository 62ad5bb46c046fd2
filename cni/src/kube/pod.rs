//! From a Kubernetes Pod (and its namespace's labels) to the [`LocalPod`] the agent reconciles.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;

use crate::agent::LocalPod;
use crate::netns::NetnsQuery;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    #[error("pod without metadata.{0}")]
    Missing(&'static str),
}

/// Where a pod is in its life, as far as capture goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// Running with an IP in its own network namespace: capturable.
    Running,
    /// Not yet (pending, or running without an IP yet).
    NotReady,
    /// Succeeded or Failed: its containers are gone; released.
    Finished,
    /// Shares the node's network namespace: never captured.
    HostNetwork,
}

/// What the agent reads of a pod on its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub state: PodState,
}

impl TryFrom<&Pod> for NodePod {
    type Error = PodError;

    fn try_from(pod: &Pod) -> Result<NodePod, PodError> {
        let meta = &pod.metadata;
        let required = |v: &Option<String>, what| {
            v.clone()
                .filter(|s| !s.is_empty())
                .ok_or(PodError::Missing(what))
        };
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        let has_ip = status
            .and_then(|s| s.pod_ip.as_deref())
            .is_some_and(|ip| !ip.is_empty());
        let state = if spec.and_then(|s| s.host_network).unwrap_or(false) {
            PodState::HostNetwork
        } else {
            match phase {
                Some("Succeeded" | "Failed") => PodState::Finished,
                // A terminating pod (deletionTimestamp set) stays captured until it is gone, so its last
                // connections still go through ztunnel.
                Some("Running") if has_ip => PodState::Running,
                _ => PodState::NotReady,
            }
        };
        let service_account = spec
            .and_then(|s| {
                s.service_account_name
                    .as_ref()
                    .or(s.service_account.as_ref())
            })
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| "default".to_owned());
        Ok(NodePod {
            uid: required(&meta.uid, "uid")?,
            name: required(&meta.name, "name")?,
            namespace: required(&meta.namespace, "namespace")?,
            service_account,
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            state,
        })
    }
}

impl NodePod {
    /// The pod as the agent reconciles it, with its namespace's labels and its network namespace.
    pub fn local(&self, namespace_labels: &BTreeMap<String, String>, netns: PathBuf) -> LocalPod {
        LocalPod {
            uid: self.uid.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            netns,
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            namespace_labels: namespace_labels.clone(),
        }
    }

    pub fn netns_query(&self) -> NetnsQuery {
        NetnsQuery {
            uid: self.uid.clone(),
            annotations: self.annotations.clone(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    fn running() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "demo", "uid": "u-1",
                "labels": {"app": "web", "istio.io/dataplane-mode": "ambient"},
                "annotations": {"ambit.dev/netns": "/var/run/netns/web"}
            },
            "spec": {"nodeName": "node1", "serviceAccountName": "web", "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": "10.1.0.5"}
        })
    }

    #[test]
    fn a_running_pod_becomes_a_local_pod_with_its_namespace_labels() {
        let p = NodePod::try_from(&pod(running())).unwrap();
        assert_eq!(p.state, PodState::Running);
        let ns: BTreeMap<String, String> = [("team".to_owned(), "a".to_owned())].into();
        let local = p.local(&ns, PathBuf::from("/proc/7/ns/net"));
        assert_eq!(
            local,
            LocalPod {
                uid: "u-1".into(),
                name: "web-1".into(),
                namespace: "demo".into(),
                service_account: "web".into(),
                netns: PathBuf::from("/proc/7/ns/net"),
                labels: [
                    ("app".to_owned(), "web".to_owned()),
                    ("istio.io/dataplane-mode".to_owned(), "ambient".to_owned())
                ]
                .into(),
                annotations: [(
                    "ambit.dev/netns".to_owned(),
                    "/var/run/netns/web".to_owned()
                )]
                .into(),
                namespace_labels: ns,
            }
        );
        let q = p.netns_query();
        assert_eq!(q.uid, "u-1");
        assert_eq!(q.annotations, local.annotations);
    }

    #[test]
    fn only_running_pods_with_an_ip_and_their_own_namespace_are_capturable() {
        let with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = running();
            edit(&mut v);
            NodePod::try_from(&pod(v)).unwrap().state
        };
        assert_eq!(with(&|_| {}), PodState::Running);
        // Terminating but still running: still captured.
        assert_eq!(
            with(&|v| v["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into()),
            PodState::Running
        );
        assert_eq!(
            with(&|v| v["status"]["podIP"] = "".into()),
            PodState::NotReady
        );
        assert_eq!(
            with(&|v| {
                v["status"].as_object_mut().unwrap().remove("podIP");
            }),
            PodState::NotReady
        );
        assert_eq!(
            with(&|v| v["status"]["phase"] = "Pending".into()),
            PodState::NotReady
        );
        assert_eq!(
            with(&|v| {
                v.as_object_mut().unwrap().remove("status");
            }),
            PodState::NotReady
        );
        assert_eq!(
            with(&|v| v["status"]["phase"] = "Succeeded".into()),
            PodState::Finished
        );
        assert_eq!(
            with(&|v| v["status"]["phase"] = "Failed".into()),
            PodState::Finished
        );
        assert_eq!(
            with(&|v| v["spec"]["hostNetwork"] = true.into()),
            PodState::HostNetwork
        );
    }

    #[test]
    fn service_account_falls_back_to_the_deprecated_field_then_default() {
        let sa = |spec: serde_json::Value| {
            let mut v = running();
            v["spec"] = spec;
            NodePod::try_from(&pod(v)).unwrap().service_account
        };
        assert_eq!(
            sa(serde_json::json!({"containers": [], "serviceAccount": "old"})),
            "old"
        );
        assert_eq!(
            sa(serde_json::json!({"containers": [], "serviceAccountName": ""})),
            "default"
        );
        assert_eq!(sa(serde_json::json!({"containers": []})), "default");
    }

    #[test]
    fn a_pod_without_uid_name_or_namespace_is_an_error() {
        for field in ["uid", "name", "namespace"] {
            let mut v = running();
            v["metadata"].as_object_mut().unwrap().remove(field);
            assert_eq!(
                NodePod::try_from(&pod(v)),
                Err(PodError::Missing(field)),
                "{field}"
            );
        }
        let mut v = running();
        v["metadata"]["uid"] = "".into();
        assert_eq!(NodePod::try_from(&pod(v)), Err(PodError::Missing("uid")));
        // Labels and annotations are optional.
        let mut v = running();
        v["metadata"].as_object_mut().unwrap().remove("labels");
        v["metadata"].as_object_mut().unwrap().remove("annotations");
        let p = NodePod::try_from(&pod(v)).unwrap();
        assert!(p.labels.is_empty() && p.annotations.is_empty());
    }
}
