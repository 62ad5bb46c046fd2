//! The API server through the real kube-rs client, as the controller and node agents will use it.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use serde_json::json;

use crate::common::{api_code, kind_name, namespace, next_event, pod};

#[tokio::test]
async fn pods_crud_selectors_and_watch_in_order() {
    let server = crate::common::start(None).await;
    let client = crate::common::client(&server).await;
    namespace(&client, "demo").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "demo");
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = pods
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();

    pods.create(
        &PostParams::default(),
        &pod("web", json!({"app": "web"}), "node-1"),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("db", json!({"app": "db"}), "node-2"),
    )
    .await
    .unwrap();
    let patched = pods
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.labels().get("tier").map(String::as_str),
        Some("front")
    );
    pods.delete("db", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(kind_name(&next_event(&mut stream).await));
    }
    let want: Vec<(String, String)> = [
        ("ADDED", "web"),
        ("ADDED", "db"),
        ("MODIFIED", "web"),
        ("DELETED", "db"),
    ]
    .iter()
    .map(|(a, b)| ((*a).into(), (*b).into()))
    .collect();
    assert_eq!(seen, want);

    let get = pods.get("web").await.unwrap();
    assert_eq!(get.metadata.generation, Some(1));
    assert!(get.metadata.uid.is_some() && get.metadata.creation_timestamp.is_some());
    assert_eq!(api_code(&pods.get("db").await.unwrap_err()), 404);

    pods.create(
        &PostParams::default(),
        &pod("api", json!({"app": "api", "tier": "back"}), "node-2"),
    )
    .await
    .unwrap();
    let names =
        |l: kube::core::ObjectList<Pod>| l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();
    let by = |sel: &str| ListParams::default().labels(sel);
    assert_eq!(
        names(pods.list(&by("tier in (front,back)")).await.unwrap()),
        vec!["api", "web"]
    );
    assert_eq!(
        names(pods.list(&by("app!=web")).await.unwrap()),
        vec!["api"]
    );
    assert_eq!(names(pods.list(&by("!tier")).await.unwrap()).len(), 0);
    let on_node = ListParams::default().fields("spec.nodeName=node-1");
    assert_eq!(
        names(
            Api::<Pod>::all(client.clone())
                .list(&on_node)
                .await
                .unwrap()
        ),
        vec!["web"]
    );
    let page = pods.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let token = page.metadata.continue_.clone().unwrap();
    let rest = pods
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(rest), vec!["web"]);
    assert_eq!(
        api_code(&pods.list(&by("app in web")).await.unwrap_err()),
        400
    );
}

#[tokio::test]
async fn watch_resumes_from_a_version_and_410s_after_compaction() {
    let server = crate::common::start(None).await;
    let client = crate::common::client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"k": "1"}})).unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let rv1 = created.resource_version().unwrap();
    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .unwrap();
    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "3"}})),
    )
    .await
    .unwrap();

    // From rv1: exactly the two modifications, in order.
    let mut s = cms
        .watch(&WatchParams::default().timeout(10), &rv1)
        .await
        .unwrap()
        .boxed();
    for want in ["2", "3"] {
        match next_event(&mut s).await {
            WatchEvent::Modified(c) => assert_eq!(c.data.unwrap()["k"], want),
            other => panic!("expected MODIFIED, got {other:?}"),
        }
    }
    // Bookmarks arrive when asked for, carrying a current version.
    let mut b = cms
        .watch(&WatchParams::default().timeout(10), &rv1)
        .await
        .unwrap()
        .boxed();
    let mut got_bookmark = false;
    for _ in 0..4 {
        if let Ok(Some(Ok(WatchEvent::Bookmark(bm)))) =
            tokio::time::timeout(Duration::from_secs(3), b.next()).await
        {
            assert!(
                bm.metadata.resource_version.parse::<u64>().unwrap() >= rv1.parse::<u64>().unwrap()
            );
            got_bookmark = true;
            break;
        }
    }
    assert!(got_bookmark, "a bookmark within the interval");

    server.compact();
    let mut s = cms
        .watch(&WatchParams::default().timeout(10), &rv1)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut s).await {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected a 410, got {other:?}"),
    }

    // kube-runtime's watcher lists, then follows; it sees the next change after its initial list.
    let mut w = watcher(cms.clone(), watcher::Config::default()).boxed();
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), w.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::Init => {}
            watcher::Event::InitApply(c) => initial.push(c.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, vec!["c"]);
    // The streaming-list form (sendInitialEvents + the initial-events-end bookmark) gives the same start.
    let mut streaming = watcher(cms.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut streamed = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), streaming.try_next()).await;
        match ev.unwrap().unwrap().unwrap() {
            watcher::Event::Init => {}
            watcher::Event::InitApply(c) => streamed.push(c.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(streamed, vec!["c"]);
    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "4"}})),
    )
    .await
    .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), w.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        watcher::Event::Apply(c) => assert_eq!(c.data.unwrap()["k"], "4"),
        other => panic!("expected Apply, got {other:?}"),
    }
}

#[tokio::test]
async fn conflicts_status_subresource_and_server_side_apply() {
    let server = crate::common::start(None).await;
    let client = crate::common::client(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p = pods
        .create(&PostParams::default(), &pod("p", json!({}), "node-1"))
        .await
        .unwrap();

    // A stale resourceVersion on PUT: 409 Conflict.
    let mut first = p.clone();
    first.labels_mut().insert("a".into(), "1".into());
    pods.replace("p", &PostParams::default(), &first)
        .await
        .unwrap();
    let mut stale = p.clone();
    stale.labels_mut().insert("b".into(), "2".into());
    let err = pods
        .replace("p", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 409);
    let kube::Error::Api(status) = err else {
        unreachable!()
    };
    assert_eq!(status.reason, "Conflict");

    // Status only through /status; the main resource ignores status.
    let s = pods
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.1.0.5"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        s.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.1.0.5")
    );
    let m = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Failed"}, "metadata": {"labels": {"c": "3"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(m.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(m.labels().get("c").map(String::as_str), Some("3"));

    // Server-side apply: two managers, a conflict, force, and managedFields per manager.
    let cfg = |v: &str| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"owner": v}}});
    pods.patch(
        "p",
        &PatchParams::apply("ambit-controller"),
        &Patch::Apply(cfg("ctl")),
    )
    .await
    .unwrap();
    let err = pods
        .patch(
            "p",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(cfg("other")),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), 409);
    let forced = pods
        .patch(
            "p",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(cfg("other")),
        )
        .await
        .unwrap();
    assert_eq!(forced.labels()["owner"], "other");
    let managers: Vec<String> = forced
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&"someone-else".to_owned()),
        "{managers:?}"
    );
    // Dropping a label from one's own apply removes it.
    let two = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"x": "1", "y": "2"}}});
    pods.patch("p", &PatchParams::apply("mgr"), &Patch::Apply(two))
        .await
        .unwrap();
    let one =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"x": "1"}}});
    let after = pods
        .patch("p", &PatchParams::apply("mgr"), &Patch::Apply(one))
        .await
        .unwrap();
    assert!(after.labels().contains_key("x") && !after.labels().contains_key("y"));
    // Apply creates, and status apply by the controller.
    let fresh = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q"}, "spec": {"containers": [{"name": "a", "image": "a"}]}});
    pods.patch("q", &PatchParams::apply("mgr"), &Patch::Apply(fresh))
        .await
        .unwrap();
    let st = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q"}, "status": {"phase": "Succeeded"}});
    let q = pods
        .patch_status("q", &PatchParams::apply("kubelet"), &Patch::Apply(st))
        .await
        .unwrap();
    assert_eq!(q.status.unwrap().phase.as_deref(), Some("Succeeded"));
    // JSON patch and strategic merge patch.
    let j = pods
        .patch(
            "q",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(
                    json!([{"op": "add", "path": "/metadata/labels", "value": {"j": "1"}}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(j.labels()["j"], "1");
    let smp = json!({"spec": {"containers": [{"name": "a", "image": "a:2"}]}});
    let s = pods
        .patch("q", &PatchParams::default(), &Patch::Strategic(smp))
        .await
        .unwrap();
    assert_eq!(s.spec.unwrap().containers[0].image.as_deref(), Some("a:2"));
}

#[tokio::test]
async fn crd_defined_gateway_is_served_with_status_and_watch() {
    let server = crate::common::start(None).await;
    let client = crate::common::client(&server).await;
    namespace(&client, "demo").await;
    let crd: CustomResourceDefinition =
        serde_json::from_value(crate::common::gateway_crd()).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let created = crds.create(&PostParams::default(), &crd).await.unwrap();
    let conds = created.status.unwrap().conditions.unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );

    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "gateways");
    let gws: Api<DynamicObject> = Api::namespaced_with(client.clone(), "demo", &ar);
    let mut stream = gws
        .watch(&WatchParams::default().timeout(10), "0")
        .await
        .unwrap()
        .boxed();
    let gw: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "waypoint", "labels": {"istio.io/waypoint-for": "service"}},
        "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
    }))
    .unwrap();
    gws.create(&PostParams::default(), &gw).await.unwrap();
    assert_eq!(
        kind_name(&next_event(&mut stream).await),
        ("ADDED".into(), "waypoint".into())
    );

    let status = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "waypoint"},
        "status": {"conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed"}]}});
    gws.patch_status(
        "waypoint",
        &PatchParams::apply("ambit-controller"),
        &Patch::Apply(status),
    )
    .await
    .unwrap();
    let got = gws.get("waypoint").await.unwrap();
    assert_eq!(got.data["status"]["conditions"][0]["type"], "Programmed");
    assert_eq!(got.data["spec"]["gatewayClassName"], "ambit-waypoint");
    assert_eq!(
        kind_name(&next_event(&mut stream).await),
        ("MODIFIED".into(), "waypoint".into())
    );
    assert_eq!(
        gws.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    // Deleting the CRD takes its objects (and the kind) with it.
    crds.delete(
        "gateways.gateway.networking.k8s.io",
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        kind_name(&next_event(&mut stream).await),
        ("DELETED".into(), "waypoint".into())
    );
    assert_eq!(
        api_code(&gws.list(&ListParams::default()).await.unwrap_err()),
        404
    );
}
