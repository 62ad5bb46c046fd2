use serde_json::json;

use super::*;

fn rt(inner: &Inner, group: &str, plural: &str) -> ResourceType {
    inner
        .registry
        .get(&TypeKey::new(group, plural))
        .cloned()
        .unwrap()
}

fn ctx() -> WriteCtx {
    WriteCtx::new("test")
}

fn setup() -> Store {
    let store = Store::new(StoreConfig {
        history_limit: 5,
        ..Default::default()
    });
    {
        let mut inner = store.lock();
        let ns = rt(&inner, "", "namespaces");
        inner
            .create(&ns, "", json!({"metadata": {"name": "demo"}}), &ctx())
            .unwrap();
    }
    store
}

#[test]
fn versions_increase_and_generation_follows_spec_only() {
    let store = setup();
    let mut inner = store.lock();
    let deploy = rt(&inner, "apps", "deployments");
    let before = inner.resource_version();
    let d = inner
        .create(
            &deploy,
            "demo",
            json!({"metadata": {"generateName": "web-"}, "spec": {"template": {}}}),
            &ctx(),
        )
        .unwrap();
    let name = meta::name(&d).to_owned();
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    assert_eq!(meta::resource_version(&d), (before + 1).to_string());
    assert_eq!(d["spec"]["replicas"], 1, "defaulted");
    assert_eq!(d["metadata"]["generation"], 1);
    let mut labelled = (*d).clone();
    labelled["metadata"]["labels"] = json!({"a": "b"});
    let l = inner
        .update(&deploy, "demo", &name, labelled, Subresource::Main, &ctx())
        .unwrap();
    assert_eq!(
        l["metadata"]["generation"], 1,
        "metadata changes keep the generation"
    );
    let mut scaled = (*l).clone();
    scaled["spec"]["replicas"] = json!(3);
    let s = inner
        .update(&deploy, "demo", &name, scaled, Subresource::Main, &ctx())
        .unwrap();
    assert_eq!(s["metadata"]["generation"], 2);
    // The stale version of `l` conflicts; a no-op write does not bump the version.
    let err = inner
        .update(
            &deploy,
            "demo",
            &name,
            (*l).clone(),
            Subresource::Main,
            &ctx(),
        )
        .unwrap_err();
    assert_eq!(err.code(), 409);
    let same = inner
        .update(
            &deploy,
            "demo",
            &name,
            (*s).clone(),
            Subresource::Main,
            &ctx(),
        )
        .unwrap();
    assert_eq!(meta::resource_version(&same), meta::resource_version(&s));
}

#[test]
fn status_is_only_written_through_the_subresource() {
    let store = setup();
    let mut inner = store.lock();
    let pods = rt(&inner, "", "pods");
    let p = inner
        .create(
            &pods,
            "demo",
            json!({"metadata": {"name": "p"}, "spec": {}, "status": {"phase": "Running"}}),
            &ctx(),
        )
        .unwrap();
    assert_eq!(
        p["status"]["phase"], "Pending",
        "status ignored on create, then defaulted"
    );
    let mut s = json!({"metadata": {"name": "p", "labels": {"ignored": "x"}}, "status": {"phase": "Running", "podIP": "10.0.0.1"}});
    s["spec"] = json!({"nodeName": "ignored"});
    let p = inner
        .update(&pods, "demo", "p", s, Subresource::Status, &ctx())
        .unwrap();
    assert_eq!(p["status"]["podIP"], "10.0.0.1");
    assert!(p.pointer("/metadata/labels").is_none() && p.pointer("/spec/nodeName").is_none());
    let mut main = (*p).clone();
    main["status"] = json!({"phase": "Failed"});
    main["spec"]["nodeName"] = json!("n1");
    let p = inner
        .update(&pods, "demo", "p", main, Subresource::Main, &ctx())
        .unwrap();
    assert_eq!(
        (
            p["status"]["phase"].as_str(),
            p["spec"]["nodeName"].as_str()
        ),
        (Some("Running"), Some("n1"))
    );
}

#[test]
fn creates_check_namespace_name_and_duplicates() {
    let store = setup();
    let mut inner = store.lock();
    let cms = rt(&inner, "", "configmaps");
    let cm = |n: &str| json!({"metadata": {"name": n}});
    assert_eq!(
        inner
            .create(&cms, "nope", cm("a"), &ctx())
            .unwrap_err()
            .code(),
        404
    );
    assert_eq!(
        inner
            .create(&cms, "demo", cm("Bad_Name"), &ctx())
            .unwrap_err()
            .code(),
        422
    );
    inner.create(&cms, "demo", cm("a"), &ctx()).unwrap();
    assert_eq!(
        inner
            .create(&cms, "demo", cm("a"), &ctx())
            .unwrap_err()
            .reason(),
        "AlreadyExists"
    );
    let wrong = json!({"kind": "Secret", "metadata": {"name": "b"}});
    assert_eq!(
        inner
            .create(&cms, "demo", wrong, &ctx())
            .unwrap_err()
            .code(),
        400
    );
    let other_ns = json!({"metadata": {"name": "c", "namespace": "default"}});
    assert_eq!(
        inner
            .create(&cms, "demo", other_ns, &ctx())
            .unwrap_err()
            .code(),
        400
    );
}

#[test]
fn history_is_bounded_and_compaction_is_tracked() {
    let store = setup();
    let mut inner = store.lock();
    let cms = rt(&inner, "", "configmaps");
    for i in 0..10 {
        inner
            .create(
                &cms,
                "demo",
                json!({"metadata": {"name": format!("c{i}")}}),
                &ctx(),
            )
            .unwrap();
    }
    let rv = inner.resource_version();
    assert_eq!(inner.compacted(), rv - 5);
    assert_eq!(inner.history_since(inner.compacted()).count(), 5);
    inner.compact();
    assert_eq!(inner.compacted(), rv);
    assert_eq!(inner.history_since(rv).count(), 0);
}

#[test]
fn garbage_collection_follows_owner_references() {
    let store = setup();
    let mut inner = store.lock();
    let (deploy, rs, pods) = (
        rt(&inner, "apps", "deployments"),
        rt(&inner, "apps", "replicasets"),
        rt(&inner, "", "pods"),
    );
    let owner = |o: &Value| json!([{"apiVersion": "v1", "kind": "X", "name": meta::name(o), "uid": meta::uid(o)}]);
    let d = inner
        .create(
            &deploy,
            "demo",
            json!({"metadata": {"name": "d"}, "spec": {}}),
            &ctx(),
        )
        .unwrap();
    let r = inner
        .create(
            &rs,
            "demo",
            json!({"metadata": {"name": "r", "ownerReferences": owner(&d)}, "spec": {}}),
            &ctx(),
        )
        .unwrap();
    let other = inner
        .create(
            &deploy,
            "demo",
            json!({"metadata": {"name": "other"}, "spec": {}}),
            &ctx(),
        )
        .unwrap();
    let mut two = owner(&r);
    two.as_array_mut()
        .unwrap()
        .extend(owner(&other).as_array().unwrap().clone());
    inner
        .create(
            &pods,
            "demo",
            json!({"metadata": {"name": "p1", "ownerReferences": owner(&r)}}),
            &ctx(),
        )
        .unwrap();
    inner
        .create(
            &pods,
            "demo",
            json!({"metadata": {"name": "p2", "ownerReferences": two}}),
            &ctx(),
        )
        .unwrap();
    inner
        .delete(&deploy, "demo", "d", &DeleteOptions::default())
        .unwrap();
    assert!(
        inner.get(&rs, "demo", "r").is_err(),
        "replica set collected"
    );
    assert!(inner.get(&pods, "demo", "p1").is_err(), "its pod collected");
    let p2 = inner.get(&pods, "demo", "p2").unwrap();
    assert_eq!(
        meta::owner_uids(&p2),
        vec![meta::uid(&other).to_owned()],
        "a pod with a live owner stays"
    );
    let orphan = DeleteOptions {
        propagation: Some(Propagation::Orphan),
        ..Default::default()
    };
    inner.delete(&deploy, "demo", "other", &orphan).unwrap();
    assert!(meta::owner_uids(&inner.get(&pods, "demo", "p2").unwrap()).is_empty());
}

#[test]
fn finalizers_delay_deletion_and_namespaces_empty_themselves() {
    let store = setup();
    let mut inner = store.lock();
    let (cms, ns) = (rt(&inner, "", "configmaps"), rt(&inner, "", "namespaces"));
    inner
        .create(&cms, "demo", json!({"metadata": {"name": "plain"}}), &ctx())
        .unwrap();
    inner
        .create(
            &cms,
            "demo",
            json!({"metadata": {"name": "held", "finalizers": ["x/y"]}}),
            &ctx(),
        )
        .unwrap();
    let r = inner
        .delete(&ns, "", "demo", &DeleteOptions::default())
        .unwrap();
    assert!(matches!(r, Deleted::Pending(_)), "held by the finalizer");
    assert!(inner.get(&cms, "demo", "plain").is_err());
    let held = inner.get(&cms, "demo", "held").unwrap();
    assert!(meta::is_deleting(&held));
    assert_eq!(
        inner.get(&ns, "", "demo").unwrap()["status"]["phase"],
        "Terminating"
    );
    let err = inner
        .create(&cms, "demo", json!({"metadata": {"name": "late"}}), &ctx())
        .unwrap_err();
    assert_eq!(err.code(), 403);
    let mut released = (*held).clone();
    released["metadata"]["finalizers"] = json!([]);
    inner
        .update(&cms, "demo", "held", released, Subresource::Main, &ctx())
        .unwrap();
    assert!(inner.get(&cms, "demo", "held").is_err());
    assert!(
        inner.get(&ns, "", "demo").is_err(),
        "the namespace goes with its last object"
    );
}

#[test]
fn crds_serve_their_kind_until_deleted() {
    let store = setup();
    let mut inner = store.lock();
    let crds = rt(&inner, "apiextensions.k8s.io", "customresourcedefinitions");
    let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget"}, "versions": [{"name": "v1", "served": true, "storage": true}]}});
    let c = inner.create(&crds, "", crd, &ctx()).unwrap();
    assert_eq!(c["status"]["conditions"][1]["type"], "Established");
    let again = inner
        .update(
            &crds,
            "",
            "widgets.example.com",
            (*c).clone(),
            Subresource::Main,
            &ctx(),
        )
        .unwrap();
    assert_eq!(
        meta::resource_version(&again),
        meta::resource_version(&c),
        "re-applying a CRD is a no-op"
    );
    let widgets = inner
        .registry
        .lookup("example.com", "v1", "widgets")
        .cloned()
        .unwrap();
    inner
        .create(
            &widgets,
            "demo",
            json!({"metadata": {"name": "w"}, "spec": {"size": 1}}),
            &ctx(),
        )
        .unwrap();
    let shadow = json!({"metadata": {"name": "pods"}, "spec": {"group": "", "scope": "Namespaced",
        "names": {"plural": "pods", "kind": "Pod"}, "versions": [{"name": "v1", "served": true, "storage": true}]}});
    assert!(inner.create(&crds, "", shadow, &ctx()).is_err());
    inner
        .delete(&crds, "", "widgets.example.com", &DeleteOptions::default())
        .unwrap();
    assert!(
        inner
            .registry
            .lookup("example.com", "v1", "widgets")
            .is_none()
    );
    assert_eq!(inner.objects_of(&widgets.key()).count(), 0);
}

#[test]
fn services_get_cluster_ips_that_stay() {
    let store = setup();
    let mut inner = store.lock();
    let svcs = rt(&inner, "", "services");
    let a = inner
        .create(
            &svcs,
            "demo",
            json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}),
            &ctx(),
        )
        .unwrap();
    let b = inner
        .create(
            &svcs,
            "demo",
            json!({"metadata": {"name": "b"}, "spec": {}}),
            &ctx(),
        )
        .unwrap();
    assert_eq!(a["spec"]["clusterIP"], "10.96.0.10");
    assert_eq!(b["spec"]["clusterIP"], "10.96.0.11");
    assert_eq!(
        a["spec"]["ports"][0],
        json!({"port": 80, "protocol": "TCP", "targetPort": 80})
    );
    let mut a2 = (*a).clone();
    a2["spec"].as_object_mut().unwrap().remove("clusterIP");
    let a2 = inner
        .update(&svcs, "demo", "a", a2, Subresource::Main, &ctx())
        .unwrap();
    assert_eq!(a2["spec"]["clusterIP"], "10.96.0.10");
    let mut a3 = (*a2).clone();
    a3["spec"]["clusterIP"] = json!("10.96.9.9");
    assert_eq!(
        inner
            .update(&svcs, "demo", "a", a3, Subresource::Main, &ctx())
            .unwrap_err()
            .code(),
        422
    );
}
