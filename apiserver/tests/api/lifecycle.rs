//! Lifecycles through kube-rs: garbage collection, namespace deletion, restarts from the snapshot, TokenReview,
//! and malformed requests.

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::common::{api_code, namespace, next_event, pod};

#[tokio::test]
async fn owner_references_are_garbage_collected_and_namespaces_empty() {
    let server = crate::common::start(None).await;
    let client = crate::common::client(&server).await;
    namespace(&client, "gc").await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "gc");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "gc");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "gc");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}}}})).unwrap();
    let d = deploys.create(&PostParams::default(), &d).await.unwrap();
    let owner = |kind: &str, name: &str, uid: &str| json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true}]);
    let rs: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": "web-1", "ownerReferences": owner("Deployment", "web", &d.uid().unwrap())},
        "spec": {"selector": {"matchLabels": {"app": "web"}}}})).unwrap();
    let rs = rss.create(&PostParams::default(), &rs).await.unwrap();
    let mut p = pod("web-1-x", json!({"app": "web"}), "node-1");
    p.metadata.owner_references =
        serde_json::from_value(owner("ReplicaSet", "web-1", &rs.uid().unwrap())).unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    pods.create(
        &PostParams::default(),
        &pod("standalone", json!({}), "node-1"),
    )
    .await
    .unwrap();

    // A dry run stores nothing.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let shown = pods
        .create(&dry, &pod("dry", json!({}), "node-1"))
        .await
        .unwrap();
    assert_eq!(shown.name_any(), "dry");
    assert_eq!(api_code(&pods.get("dry").await.unwrap_err()), 404);
    // deletecollection honours the selector.
    pods.create(
        &PostParams::default(),
        &pod("batch-1", json!({"batch": "x"}), "node-1"),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("batch-2", json!({"batch": "x"}), "node-1"),
    )
    .await
    .unwrap();
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("batch=x"),
    )
    .await
    .unwrap();
    let left: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(left, vec!["standalone", "web-1-x"]);

    deploys
        .delete("web", &DeleteParams::background())
        .await
        .unwrap();
    assert_eq!(api_code(&rss.get("web-1").await.unwrap_err()), 404);
    assert_eq!(api_code(&pods.get("web-1-x").await.unwrap_err()), 404);
    assert!(pods.get("standalone").await.is_ok());

    // A finalizer holds an object (and so its namespace) until it is removed.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "gc");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.delete("gc", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(&pods.get("standalone").await.unwrap_err()), 404);
    let held = cms.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(
        nss.get("gc")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Terminating")
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_code(&nss.get("gc").await.unwrap_err()), 404);
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::common::start(Some(dir.path())).await;
    let client = crate::common::client(&server).await;
    let crd: CustomResourceDefinition =
        serde_json::from_value(crate::common::gateway_crd()).unwrap();
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway"),
        "gateways",
    );
    let gws: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let gw: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "waypoint"}, "spec": {"gatewayClassName": "ambit-waypoint"}}),
    )
    .unwrap();
    gws.create(&PostParams::default(), &gw).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let before = pods
        .create(
            &PostParams::default(),
            &pod("keep", json!({"a": "b"}), "node-1"),
        )
        .await
        .unwrap();
    let last_rv = before.resource_version().unwrap();
    server.shutdown().await;
    assert!(dir.path().join("state.json").exists());

    // Same data directory: same CA and token, so the kubeconfig the first run wrote is still good.
    let server = crate::common::start(Some(dir.path())).await;
    let client = crate::common::client(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let after = pods.get("keep").await.unwrap();
    assert_eq!(after.uid(), before.uid());
    assert_eq!(after.resource_version(), before.resource_version());
    let gws: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    assert_eq!(
        gws.get("waypoint").await.unwrap().data["spec"]["gatewayClassName"],
        "ambit-waypoint"
    );
    // A watch from the last version before the restart resumes (no 410) and sees the next change.
    let mut s = pods
        .watch(&WatchParams::default().timeout(10), &last_rv)
        .await
        .unwrap()
        .boxed();
    pods.patch(
        "keep",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "c"}}})),
    )
    .await
    .unwrap();
    match next_event(&mut s).await {
        WatchEvent::Modified(p) => {
            assert_eq!(p.labels()["a"], "c");
            assert!(
                p.resource_version().unwrap().parse::<u64>().unwrap()
                    > last_rv.parse::<u64>().unwrap()
            );
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn token_review_authenticates_minted_pod_tokens() {
    let server = crate::common::start(None).await;
    let client = crate::common::client(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p = pods
        .create(
            &PostParams::default(),
            &pod("ztunnel-x", json!({}), "node-1"),
        )
        .await
        .unwrap();
    let token = server
        .mint_pod_token(&ambit_apiserver::PodToken {
            namespace: "default".into(),
            service_account: "ztunnel".into(),
            pod_name: "ztunnel-x".into(),
            pod_uid: p.uid().unwrap(),
            node_name: Some("node-1".into()),
            audiences: vec!["istio-ca".into()],
            ttl_seconds: 600,
            ..Default::default()
        })
        .unwrap();
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = |aud: &str| -> TokenReview {
        serde_json::from_value(
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "metadata": {"name": "r"}, "spec": {"token": token, "audiences": [aud]}}),
        )
        .unwrap()
    };
    let ok = reviews
        .create(&PostParams::default(), &review("istio-ca"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(ok.authenticated, Some(true));
    let user = ok.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:ztunnel")
    );
    let extra = user.extra.unwrap();
    assert_eq!(
        extra["authentication.kubernetes.io/pod-name"],
        vec!["ztunnel-x".to_owned()]
    );
    assert_eq!(
        extra["authentication.kubernetes.io/node-name"],
        vec!["node-1".to_owned()]
    );
    let wrong = reviews
        .create(&PostParams::default(), &review("other"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(wrong.authenticated, Some(false));
    pods.delete("ztunnel-x", &DeleteParams::default())
        .await
        .unwrap();
    let gone = reviews
        .create(&PostParams::default(), &review("istio-ca"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(gone.authenticated, Some(false));
}

#[tokio::test]
async fn malformed_requests_get_status_errors_and_the_server_lives_on() {
    let server = crate::common::start(None).await;
    let client = crate::common::client(&server).await;
    let send = |method: &str, path: &str, ct: &str, body: &str| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", ct)
            .body(body.as_bytes().to_vec())
            .unwrap()
    };
    let cases = [
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            "{not json",
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            "[1,2]",
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            r#"{"metadata": {"name": "X!"}}"#,
            422,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            r#"{"metadata": "x"}"#,
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            r#"{"metadata": {"name": "a", "labels": {"k": 1}}}"#,
            422,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/none",
            "application/merge-patch+json",
            "{}",
            404,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/none",
            "text/plain",
            "{}",
            415,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/widgets",
            "application/json",
            "",
            404,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?labelSelector=a%20in",
            "application/json",
            "",
            400,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?watch=1&resourceVersion=abc",
            "application/json",
            "",
            400,
        ),
        (
            "PUT",
            "/api/v1/namespaces/default/pods",
            "application/json",
            "{}",
            405,
        ),
        (
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            "application/json",
            r#"{"metadata": {"name": "x"}, "spec": {}}"#,
            422,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/serviceaccounts/default/token",
            "application/json",
            "[]",
            400,
        ),
        (
            "GET",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            "application/json",
            "",
            405,
        ),
        (
            "POST",
            "/api/v1/namespaces",
            "application/vnd.kubernetes.protobuf",
            "k8s\0garbage",
            400,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default",
            "application/json-patch+json",
            r#"[{"op": "nope", "path": "/x"}]"#,
            400,
        ),
    ];
    for (method, path, ct, body, want) in cases {
        let err = client
            .request_text(send(method, path, ct, body))
            .await
            .unwrap_err();
        assert_eq!(api_code(&err), want, "{method} {path} {body}");
    }
    // A body over the 8 MiB limit: 413, and nothing was created.
    let mut big = r#"{"metadata": {"name": "big", "annotations": {"k": ""#.to_owned();
    big.push_str(&"x".repeat(8 * 1024 * 1024));
    big.push_str(r#""}}}"#);
    let err = client
        .request_text(send(
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            &big,
        ))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 413, "{err}");
    let err = client
        .request_text(send(
            "GET",
            "/api/v1/namespaces/default/pods/big",
            "application/json",
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 404, "the oversized object was not stored");
    // Unauthenticated: 401.
    let anon = reqwest_like_get(&server, "/api/v1/pods").await;
    assert_eq!(anon, 401);
    assert_eq!(reqwest_like_get(&server, "/version").await, 200);
    // Still serving.
    assert!(
        Api::<Pod>::all(client)
            .list(&ListParams::default())
            .await
            .is_ok()
    );
}

/// A GET without credentials, over the server's TLS.
async fn reqwest_like_get(server: &ambit_apiserver::ApiServer, path: &str) -> u16 {
    let mut kc = kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
    kc.auth_infos[0].auth_info.as_mut().unwrap().token = None;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let req = http::Request::get(path).body(Vec::new()).unwrap();
    match client.request_text(req).await {
        Ok(_) => 200,
        Err(e) => api_code(&e),
    }
}
