//! Shared by the integration tests: a server on 127.0.0.1:0 and a kube-rs client from the kubeconfig it writes.

use std::path::Path;
use std::time::Duration;

use ambit_apiserver::{ApiServer, Config};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams, WatchEvent};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

pub fn install_crypto() {
    // Explicitly aws-lc-rs: with both rustls backends in a workspace build, kube-client cannot pick one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub async fn start(data_dir: Option<&Path>) -> ApiServer {
    install_crypto();
    let config = Config {
        data_dir: data_dir.map(Path::to_path_buf),
        kubeconfig: data_dir.map(|d| d.join("kubeconfig")),
        bookmark_interval: Duration::from_millis(300),
        ..Default::default()
    };
    ApiServer::start(config).await.unwrap()
}

pub async fn client(server: &ApiServer) -> Client {
    let kc = Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

pub fn gateway_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gateways.gateway.networking.k8s.io"},
        "spec": {
            "group": "gateway.networking.k8s.io",
            "scope": "Namespaced",
            "names": {"plural": "gateways", "singular": "gateway", "kind": "Gateway", "listKind": "GatewayList", "shortNames": ["gtw"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "additionalPrinterColumns": [
                    {"name": "Class", "type": "string", "jsonPath": ".spec.gatewayClassName"},
                    {"name": "Programmed", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Programmed\")].status"}
                ]
            }]
        }
    })
}

pub async fn namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

pub fn pod(name: &str, labels: Value, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app:1"}]}
    }))
    .unwrap()
}

pub fn api_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other:?}"),
    }
}

pub async fn next_event<K>(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
) -> WatchEvent<K> {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("watch event in time");
        match ev.expect("stream open").expect("event decodes") {
            WatchEvent::Bookmark(_) => continue,
            other => return other,
        }
    }
}

pub fn kind_name<K: ResourceExt>(ev: &WatchEvent<K>) -> (String, String) {
    match ev {
        WatchEvent::Added(o) => ("ADDED".into(), o.name_any()),
        WatchEvent::Modified(o) => ("MODIFIED".into(), o.name_any()),
        WatchEvent::Deleted(o) => ("DELETED".into(), o.name_any()),
        WatchEvent::Bookmark(_) => ("BOOKMARK".into(), String::new()),
        WatchEvent::Error(e) => (format!("ERROR {}", e.code), String::new()),
    }
}
