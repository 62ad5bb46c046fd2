//! The Event a pod gets when it ran uncaptured: with the CNI plugin installed, a running pod the plugin never
//! announced and whose namespace had no redirection when the agent captured it started without the mesh — its
//! ADD did not reach the agent (failure mode `open`, the agent down or failing), or it started before the plugin
//! was installed. `kubectl describe pod` and `kubectl get events` show it (`Warning StartedUncaptured`), the
//! visible trace failure mode `open` promises.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::{info, warn};

use crate::agent::LocalPod;

pub const REASON: &str = "StartedUncaptured";

pub struct UncapturedEvents {
    recorder: Recorder,
}

impl UncapturedEvents {
    pub fn new(client: Client, node: &str) -> UncapturedEvents {
        let reporter = Reporter {
            controller: "ambit-node-agent".to_owned(),
            instance: Some(node.to_owned()),
        };
        UncapturedEvents {
            recorder: Recorder::new(client, reporter),
        }
    }

    pub async fn started_uncaptured(&self, pod: &LocalPod) {
        let reference = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: REASON.to_owned(),
            note: Some(
                "the pod ran without traffic redirection from its start until now: its CNI ADD did not reach the \
                 node agent (failure mode open), or it started before the plugin was installed; it is captured now"
                    .to_owned(),
            ),
            action: "Capture".to_owned(),
            secondary: None,
        };
        match self.recorder.publish(&event, &reference).await {
            Ok(()) => {
                info!(pod.namespace = %pod.namespace, pod.name = %pod.name, "captured a pod that started uncaptured")
            }
            Err(e) => {
                warn!(pod.namespace = %pod.namespace, pod.name = %pod.name, error = %e,
                    "captured a pod that started uncaptured; its Event could not be written")
            }
        }
    }
}
