//! The waypoint deployer: for every valid waypoint Gateway, the objects Istio's deployer creates (spec 2.1) — a
//! ServiceAccount, a Service and a Deployment, all named after the Gateway — as Kubernetes-shaped JSON, so that
//! a kubelet-like runner (the local mesh) can run them. A pure function; writing them out is `crate::deploy`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::service::TRAFFIC_DISTRIBUTION;
use super::waypoint::{GATEWAY_NAME, GatewayCheck, HBONE_PORT, MANAGED, check_gateway};
use crate::index::Index;

/// Gateway annotation naming the waypoint's ServiceAccount (default: the Gateway's name).
pub const SERVICE_ACCOUNT_ANNOTATION: &str = "gateway.istio.io/service-account";
/// Gateway annotation choosing the Service type (default `ClusterIP`).
pub const SERVICE_TYPE_ANNOTATION: &str = "networking.istio.io/service-type";
pub const MANAGED_BY: &str = "istio.io-mesh-controller";
/// Istio's Gateway annotation: the waypoint tells backends who the client is (`x-forwarded-client-cert`).
pub const XFCC_ANNOTATION: &str = "ambient.istio.io/xfcc-include-client-identity";
pub const STATUS_PORT: u32 = 15021;
pub const METRICS_PORT: u32 = 15020;

/// What the deployed waypoints are told.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeployerConfig {
    /// `XDS_ADDRESS` of the waypoint (host:port of this controller's xDS).
    pub xds_address: String,
    /// `CA_ADDRESS` of the waypoint.
    pub ca_address: String,
    pub image: String,
    /// The container's `command`.
    pub command: Vec<String>,
}

impl Default for DeployerConfig {
    fn default() -> Self {
        DeployerConfig {
            xds_address: "istiod.istio-system.svc:15012".to_owned(),
            ca_address: "istiod.istio-system.svc:15012".to_owned(),
            image: "ambit/waypoint:latest".to_owned(),
            command: vec!["waypoint".to_owned()],
        }
    }
}

/// `<ns>.<gw>` → the manifests (ServiceAccount, Service, Deployment) for that waypoint.
pub fn deployments(index: &Index, cfg: &DeployerConfig) -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    for ((ns, name), gw) in &index.gateways {
        if check_gateway(gw) != GatewayCheck::Valid {
            continue;
        }
        let annotations = gw.metadata.annotations.clone().unwrap_or_default();
        let sa = annotations
            .get(SERVICE_ACCOUNT_ANNOTATION)
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| name.clone());
        let service_type = annotations
            .get(SERVICE_TYPE_ANNOTATION)
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| "ClusterIP".to_owned());
        let owner = json!([{
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "name": name,
            "uid": gw.metadata.uid.clone().unwrap_or_default(),
        }]);
        let object_labels = json!({
            GATEWAY_NAME: name,
            MANAGED: MANAGED_BY,
        });
        let meta = |annotations: Value| {
            let mut m = json!({
                "name": name,
                "namespace": ns,
                "labels": object_labels,
                "ownerReferences": owner,
            });
            if annotations.as_object().is_some_and(|a| !a.is_empty()) {
                m["annotations"] = annotations;
            }
            m
        };
        let service_account = json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": sa, "namespace": ns, "labels": object_labels, "ownerReferences": owner},
        });
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(json!({TRAFFIC_DISTRIBUTION: "PreferClose"})),
            "spec": {
                "type": service_type,
                "selector": {GATEWAY_NAME: name},
                "ports": [
                    {"name": "status-port", "port": STATUS_PORT, "targetPort": STATUS_PORT,
                     "protocol": "TCP", "appProtocol": "tcp"},
                    {"name": "mesh", "port": HBONE_PORT, "targetPort": HBONE_PORT,
                     "protocol": "TCP", "appProtocol": "all"},
                ],
            },
        });
        let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
        let value = |name: &str, v: &str| json!({"name": name, "value": v});
        let deployment = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(json!({})),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {GATEWAY_NAME: name}},
                "template": {
                    "metadata": {
                        "labels": {
                            "istio.io/dataplane-mode": "none",
                            GATEWAY_NAME: name,
                            MANAGED: MANAGED_BY,
                            "sidecar.istio.io/inject": "false",
                        },
                    },
                    "spec": {
                        "serviceAccountName": sa,
                        "terminationGracePeriodSeconds": 2,
                        "containers": [{
                            "name": "istio-proxy",
                            "image": cfg.image,
                            "command": cfg.command,
                            "env": [
                                field("POD_NAME", "metadata.name"),
                                field("POD_NAMESPACE", "metadata.namespace"),
                                field("INSTANCE_IP", "status.podIP"),
                                value("SERVICE_ACCOUNT", &sa),
                                value("GATEWAY_NAME", name),
                                value("GATEWAY_CLASS", &gw.spec.gateway_class_name),
                                value(
                                    "XFCC_INCLUDE_CLIENT_IDENTITY",
                                    if annotations.get(XFCC_ANNOTATION).is_some_and(|v| v == "true") {
                                        "true"
                                    } else {
                                        "false"
                                    },
                                ),
                                value("XDS_ADDRESS", &cfg.xds_address),
                                value("CA_ADDRESS", &cfg.ca_address),
                            ],
                            "ports": [
                                {"name": "mesh", "containerPort": HBONE_PORT, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                                {"name": "status-port", "containerPort": STATUS_PORT, "protocol": "TCP"},
                            ],
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz/ready", "port": STATUS_PORT},
                                "periodSeconds": 5,
                                "failureThreshold": 4,
                            },
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "128Mi"},
                                "limits": {"cpu": "2", "memory": "1Gi"},
                            },
                        }],
                    },
                },
            },
        });
        out.insert(
            format!("{ns}.{name}"),
            vec![service_account, service, deployment],
        );
    }
    out
}
