//! Delta ADS client (spec 2.1–2.3): one bidirectional stream, wildcard subscriptions, per-resource ACK/NACK,
//! `initial_resource_versions` on reconnect, and upstream's backoff.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambit_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::drain::DrainWatcher;
use crate::grpc::{self, ControlPlaneConfig, GrpcError};
use crate::readiness::BlockReady;

const MAX_MESSAGE: usize = 200 * 1024 * 1024;
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// One change to one resource.
#[derive(Debug, Clone)]
pub enum XdsUpdate {
    Upsert {
        name: String,
        version: String,
        resource: prost_types::Any,
    },
    Remove {
        name: String,
    },
}

/// A resource the handler would not apply, and why (becomes part of the NACK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub name: String,
    pub reason: String,
}

/// Receives the resources of each response.
pub trait XdsHandler: Send + Sync + 'static {
    /// Applies one response's changes for `type_url`; returns the ones it rejected (the rest were applied).
    fn apply(&self, type_url: &str, updates: Vec<XdsUpdate>) -> Vec<Rejection>;
}

#[derive(Debug, thiserror::Error)]
enum XdsError {
    /// The channel could not be built (bad address, unreadable root certificate).
    #[error("{0}")]
    Grpc(#[from] GrpcError),
    /// Opening the stream failed (TCP, TLS or HTTP/2 connect).
    #[error("connect: {0}")]
    Connection(tonic::Status),
    /// The open stream ended with a gRPC status.
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("request channel closed")]
    Closed,
}

/// What to do after a stream ended (spec 2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Wait the current backoff, then double it.
    Backoff,
    /// Wait the initial backoff and reset it.
    Quick,
    /// Reconnect at once and reset the backoff.
    Immediate,
}

impl XdsError {
    fn retry(&self) -> (Retry, &'static str) {
        match self {
            XdsError::Grpc(_) | XdsError::Connection(_) => (Retry::Backoff, "ConnectionError"),
            XdsError::Status(s) if benign(s) => (Retry::Quick, "Reconnect"),
            XdsError::Status(_) => (Retry::Backoff, "Error"),
            XdsError::Closed => (Retry::Immediate, "Error"),
        }
    }
}

/// Upstream's "benign" endings: reconnect quickly with a reset backoff.
fn benign(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => true,
        tonic::Code::Unavailable => {
            s.message().contains("transport is closing")
                || s.message().contains("received prior goaway")
        }
        _ => false,
    }
}

/// The node identity sent with each type's first request (spec 2.2).
pub fn node_from_env(env: &HashMap<String, String>) -> Node {
    let get = |k: &str| env.get(k).cloned().unwrap_or_default();
    let ip = env
        .get("INSTANCE_IP")
        .cloned()
        .unwrap_or_else(|| "1.1.1.1".to_owned());
    let (pod, ns) = (get("POD_NAME"), get("POD_NAMESPACE"));
    let mut fields = std::collections::BTreeMap::new();
    let string = |s: String| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s)),
    };
    fields.insert("NAME".to_owned(), string(pod.clone()));
    fields.insert("NAMESPACE".to_owned(), string(ns.clone()));
    fields.insert("INSTANCE_IPS".to_owned(), string(get("INSTANCE_IP")));
    fields.insert("NODE_NAME".to_owned(), string(get("NODE_NAME")));
    for (k, v) in env {
        if let Some(key) = k.strip_prefix("ISTIO_META_") {
            fields.insert(key.to_owned(), string(v.clone()));
        } else if let Some(key) = k.strip_prefix("ISTIO_METAJSON_") {
            match serde_json::from_str::<serde_json::Value>(v) {
                Ok(json) => {
                    fields.insert(key.to_owned(), json_to_value(json));
                }
                Err(e) => {
                    warn!(var = %k, error = %e, "ignoring ISTIO_METAJSON_ value that is not JSON")
                }
            }
        }
    }
    Node {
        // Istio's node types: `ztunnel`, and `router` for gateways and waypoints (`NODE_TYPE`).
        id: format!(
            "{}~{ip}~{pod}.{ns}~{ns}.svc.cluster.local",
            env.get("NODE_TYPE").map_or("ztunnel", String::as_str)
        ),
        cluster: String::new(),
        metadata: Some(prost_types::Struct { fields }),
        build_version: String::new(),
    }
}

fn json_to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UrlLabel {
    url: String,
}

#[derive(Clone, Default)]
struct XdsMetrics {
    terminations: Family<ReasonLabel, Counter>,
    messages: Family<UrlLabel, Counter>,
    bytes: Family<UrlLabel, Counter>,
}

pub struct XdsClient {
    cfg: ControlPlaneConfig,
    node: Node,
    types: Vec<String>,
    handler: Arc<dyn XdsHandler>,
    block_ready: Option<BlockReady>,
    metrics: XdsMetrics,
    /// type → name → version of every accepted resource, for `initial_resource_versions`.
    versions: HashMap<String, HashMap<String, String>>,
    /// Types not yet ACKed once; readiness is held until this is empty.
    awaiting: HashSet<String>,
}

impl XdsClient {
    pub fn new(
        cfg: ControlPlaneConfig,
        node: Node,
        type_urls: Vec<String>,
        handler: Arc<dyn XdsHandler>,
        block_ready: BlockReady,
        registry: &mut Registry,
    ) -> Self {
        let metrics = XdsMetrics::default();
        registry.register(
            "istio_xds_connection_terminations",
            "The total number of completed connections to xds server",
            metrics.terminations.clone(),
        );
        registry.register(
            "istio_xds_message",
            "Total number of messages received",
            metrics.messages.clone(),
        );
        registry.register(
            "istio_xds_message_bytes",
            "Total number of bytes received",
            metrics.bytes.clone(),
        );
        XdsClient {
            cfg,
            node,
            awaiting: type_urls.iter().cloned().collect(),
            handler,
            // Nothing to wait for: ready at once.
            block_ready: (!type_urls.is_empty()).then_some(block_ready),
            types: type_urls,
            metrics,
            versions: HashMap::new(),
        }
    }

    /// Keeps a stream open until drained, reconnecting with backoff.
    pub async fn run(mut self, mut drain: DrainWatcher) {
        let mut backoff = BACKOFF_START;
        loop {
            let result = tokio::select! {
                _ = drain.signaled() => return,
                r = self.stream() => r,
            };
            let wait = match result {
                Ok(()) => {
                    self.terminate("Complete");
                    info!("xds stream ended; reconnecting");
                    backoff = BACKOFF_START;
                    Duration::ZERO
                }
                Err(e) => {
                    let (retry, reason) = e.retry();
                    self.terminate(reason);
                    match retry {
                        Retry::Immediate => {
                            warn!(error = %e, "xds stream failed; reconnecting");
                            backoff = BACKOFF_START;
                            Duration::ZERO
                        }
                        Retry::Quick => {
                            debug!(error = %e, "xds stream closed; reconnecting");
                            backoff = BACKOFF_START;
                            BACKOFF_START
                        }
                        Retry::Backoff => {
                            warn!(error = %e, retry.in_ms = backoff.as_millis() as u64, "xds stream failed");
                            let w = backoff;
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                            w
                        }
                    }
                }
            };
            tokio::select! {
                _ = drain.signaled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn terminate(&self, reason: &str) {
        self.metrics
            .terminations
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    async fn stream(&mut self) -> Result<(), XdsError> {
        let channel = grpc::connect(&self.cfg)?;
        let mut client =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(self.types.len() + 16);
        for t in &self.types {
            let initial = self.versions.get(t).cloned().unwrap_or_default();
            let req = DeltaDiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: t.clone(),
                initial_resource_versions: initial,
                ..Default::default()
            };
            tx.send(req).await.map_err(|_| XdsError::Closed)?;
        }
        let mut responses = client
            .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(XdsError::Connection)?
            .into_inner();
        info!(address = %self.cfg.address, "xds stream open");
        while let Some(resp) = responses.message().await? {
            let ack = self.handle(resp);
            let acked = ack.error_detail.is_none();
            let url = ack.type_url.clone();
            tx.send(ack).await.map_err(|_| XdsError::Closed)?;
            if acked && self.block_ready.is_some() {
                self.awaiting.remove(&url);
                if self.awaiting.is_empty() {
                    info!("xds: every type acknowledged once; ready");
                    self.block_ready = None;
                }
            }
        }
        Ok(())
    }

    /// Applies one response and builds its ACK (or NACK).
    fn handle(&mut self, resp: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let url = resp.type_url.clone();
        self.metrics
            .messages
            .get_or_create(&UrlLabel { url: url.clone() })
            .inc();
        self.metrics
            .bytes
            .get_or_create(&UrlLabel { url: url.clone() })
            .inc_by(resp.encoded_len() as u64);
        debug!(
            type_url = %url,
            resources = resp.resources.len(),
            removed = resp.removed_resources.len(),
            "xds response"
        );
        if !self.types.contains(&url) {
            warn!(type_url = %url, "xds response for a type not subscribed; acknowledging and ignoring it");
            return DeltaDiscoveryRequest {
                type_url: url,
                response_nonce: resp.nonce,
                ..Default::default()
            };
        }
        let mut updates = Vec::with_capacity(resp.resources.len() + resp.removed_resources.len());
        // name → Some(version) for upserts, None for removals: what to record once the handler answered.
        let mut changes = Vec::with_capacity(updates.capacity());
        let mut rejected = Vec::new();
        for r in resp.resources {
            match r.resource {
                Some(any) => {
                    changes.push((r.name.clone(), Some(r.version.clone())));
                    updates.push(XdsUpdate::Upsert {
                        name: r.name,
                        version: r.version,
                        resource: any,
                    });
                }
                None => {
                    changes.push((r.name.clone(), None));
                    rejected.push(Rejection {
                        name: r.name,
                        reason: "resource has no body".into(),
                    });
                }
            }
        }
        for name in resp.removed_resources {
            changes.push((name.clone(), None));
            updates.push(XdsUpdate::Remove { name });
        }
        rejected.extend(self.handler.apply(&url, updates));
        let bad: HashSet<&str> = rejected.iter().map(|r| r.name.as_str()).collect();
        let versions = self.versions.entry(url.clone()).or_default();
        for (name, version) in changes {
            if bad.contains(name.as_str()) {
                // Rejected: the handler keeps what it held of it, and so does the record. A reconnect declares the
                // version still in force (so the server can send a newer one, or a removal if it went while the
                // stream was down); a rejected new name was never recorded, so a reconnect asks for it again.
                continue;
            }
            match version {
                Some(v) => {
                    versions.insert(name, v);
                }
                None => {
                    versions.remove(&name);
                }
            }
        }
        let error_detail = (!rejected.is_empty()).then(|| {
            let message = rejected
                .iter()
                .map(|r| format!("{}: {}", r.name, r.reason))
                .collect::<Vec<_>>()
                .join("; ");
            warn!(type_url = %url, nonce = %resp.nonce, %message, "xds NACK");
            Status {
                code: tonic::Code::InvalidArgument as i32,
                message,
                details: vec![],
            }
        });
        DeltaDiscoveryRequest {
            type_url: url,
            response_nonce: resp.nonce,
            error_detail,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_identity() {
        let env: HashMap<String, String> = [
            ("POD_NAME", "ztunnel-abc"),
            ("POD_NAMESPACE", "istio-system"),
            ("INSTANCE_IP", "10.0.0.5"),
            ("NODE_NAME", "node1"),
            ("ISTIO_META_CLUSTER_ID", "c1"),
            ("ISTIO_METAJSON_LABELS", r#"{"a":"b"}"#),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let n = node_from_env(&env);
        assert_eq!(
            n.id,
            "ztunnel~10.0.0.5~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
        );
        let f = n.metadata.unwrap().fields;
        assert!(
            matches!(&f["CLUSTER_ID"].kind, Some(prost_types::value::Kind::StringValue(s)) if s == "c1")
        );
        assert!(
            matches!(&f["NODE_NAME"].kind, Some(prost_types::value::Kind::StringValue(s)) if s == "node1")
        );
        assert!(matches!(
            &f["LABELS"].kind,
            Some(prost_types::value::Kind::StructValue(_))
        ));
        assert_eq!(
            node_from_env(&HashMap::new()).id,
            "ztunnel~1.1.1.1~.~.svc.cluster.local"
        );
    }
}
