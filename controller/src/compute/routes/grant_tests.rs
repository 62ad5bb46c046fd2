//! Cross-namespace backends and ReferenceGrants through the whole computation: routes in namespace `front`
//! (parent Service `front/web`) to Service `back/api`, with and without grants in `back`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ambit_proto::waypoint::BackendRef;

use crate::compute::test_support::compute_text;
use crate::compute::{ComputeConfig, Resources};
use crate::index::Index;
use crate::sources::{Document, Event, parse_document};

const MESH: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: front}
spec: {clusterIP: 10.0.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: back}
spec: {clusterIP: 10.0.0.20, ports: [{port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: admin, namespace: back}
spec: {clusterIP: 10.0.0.21, ports: [{port: 8080}]}
";

/// A route of `kind` (`HTTPRoute`, `GRPCRoute`, `TCPRoute`) `r` in `front` on Service `web`, to `back/<svc>`.
fn route(kind: &str, svc: &str) -> String {
    let version = if kind == "TCPRoute" { "v1alpha2" } else { "v1" };
    format!(
        "apiVersion: gateway.networking.k8s.io/{version}\nkind: {kind}\nmetadata: {{name: r, namespace: front}}\n\
         spec:\n  parentRefs: [{{group: \"\", kind: Service, name: web}}]\n  rules:\n  \
         - backendRefs: [{{name: {svc}, namespace: back, port: 8080}}]\n"
    )
}

/// A grant in `ns` from `from_kind` routes in `from_ns` to Services (only `name` when given).
fn grant(ns: &str, from_kind: &str, from_ns: &str, name: Option<&str>) -> String {
    let name = name.map(|n| format!(", name: {n}")).unwrap_or_default();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: {ns}}}\n\
         spec:\n  from: [{{group: gateway.networking.k8s.io, kind: {from_kind}, namespace: {from_ns}}}]\n  \
         to: [{{group: \"\", kind: Service{name}}}]\n"
    )
}

fn compute(docs: &[String]) -> Resources {
    compute_text(
        &format!("{MESH}\n---\n{}", docs.join("\n---\n")),
        &ComputeConfig::default(),
    )
}

fn backend<'a>(r: &'a Resources, kind: &str) -> &'a BackendRef {
    let name = format!("front/{}/r/0", kind.to_lowercase());
    &r.routes
        .get(&name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.routes.keys()))
        .backends[0]
}

/// `(status, reason)` of the route's `ResolvedRefs` on its one parent.
fn resolved_refs(r: &Resources, kind: &str) -> (String, String, String) {
    let key = format!("{}/front/r", kind.to_lowercase());
    let c = r.status[&key]["parents"][0]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ResolvedRefs")
        .unwrap()
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    (s("status"), s("reason"), s("message"))
}

#[test]
fn granted_backends_resolve_for_every_route_kind() {
    for kind in ["HTTPRoute", "GRPCRoute", "TCPRoute"] {
        let r = compute(&[route(kind, "api"), grant("back", kind, "front", None)]);
        let b = backend(&r, kind);
        assert_eq!(b.invalid, "", "{kind}");
        assert_eq!(b.hostname, "api.back.svc.cluster.local", "{kind}");
        assert_eq!(b.namespace, "back");
        assert_eq!(
            resolved_refs(&r, kind).0,
            "True",
            "{kind}: {:?}",
            resolved_refs(&r, kind)
        );
    }
}

#[test]
fn without_a_matching_grant_the_backend_is_not_permitted() {
    let cases = [
        ("no grant", vec![route("HTTPRoute", "api")]),
        (
            "grant for another route kind",
            vec![
                route("HTTPRoute", "api"),
                grant("back", "GRPCRoute", "front", None),
            ],
        ),
        (
            "grant from another namespace",
            vec![
                route("HTTPRoute", "api"),
                grant("back", "HTTPRoute", "elsewhere", None),
            ],
        ),
        (
            "grant in the route's namespace instead of the backend's",
            vec![
                route("HTTPRoute", "api"),
                grant("front", "HTTPRoute", "front", None),
            ],
        ),
        (
            "grant for another Service by name",
            vec![
                route("HTTPRoute", "api"),
                grant("back", "HTTPRoute", "front", Some("admin")),
            ],
        ),
        (
            "grant to another kind",
            vec![
                route("HTTPRoute", "api"),
                grant("back", "HTTPRoute", "front", None).replace("kind: Service", "kind: Secret"),
            ],
        ),
    ];
    for (what, docs) in cases {
        let r = compute(&docs);
        let b = backend(&r, "HTTPRoute");
        assert!(
            b.invalid.contains("no ReferenceGrant"),
            "{what}: {:?}",
            b.invalid
        );
        assert_eq!(
            b.hostname, "",
            "{what}: an unpermitted backend has no target"
        );
        let (status, reason, message) = resolved_refs(&r, "HTTPRoute");
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "RefNotPermitted"),
            "{what}"
        );
        assert_eq!(
            message,
            "backend back/api is in another namespace and no ReferenceGrant there allows HTTPRoute from \
             namespace front to refer to it",
            "{what}"
        );
        // The route is still accepted: only that backend is unusable (requests to it get 500).
        let accepted = &r.status["httproute/front/r"]["parents"][0]["conditions"][0];
        assert_eq!(accepted["type"], "Accepted");
        assert_eq!(accepted["status"], "True", "{what}");
    }
}

#[test]
fn a_name_restricted_grant_admits_that_service_only() {
    let r = compute(&[
        route("HTTPRoute", "admin"),
        grant("back", "HTTPRoute", "front", Some("admin")),
    ]);
    assert_eq!(backend(&r, "HTTPRoute").invalid, "");
    assert_eq!(resolved_refs(&r, "HTTPRoute").0, "True");
}

#[test]
fn a_missing_service_in_a_granted_namespace_is_not_found() {
    let r = compute(&[
        route("HTTPRoute", "gone"),
        grant("back", "HTTPRoute", "front", None),
    ]);
    let (status, reason, _) = resolved_refs(&r, "HTTPRoute");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "BackendNotFound")
    );
}

#[test]
fn mirror_backends_need_a_grant_too() {
    let mirror = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: front}\n\
        spec:\n  parentRefs: [{group: \"\", kind: Service, name: web}]\n  rules:\n  \
        - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: api, namespace: back, port: 8080}}}]\n    \
          backendRefs: [{name: web, port: 80}]\n"
        .to_owned();
    let mirrored = |r: &Resources| {
        r.routes["front/httproute/r/0"].filters[0]
            .request_mirror
            .as_ref()
            .unwrap()
            .backend
            .clone()
            .unwrap()
    };
    let r = compute(std::slice::from_ref(&mirror));
    assert!(mirrored(&r).invalid.contains("no ReferenceGrant"));
    assert_eq!(resolved_refs(&r, "HTTPRoute").1, "RefNotPermitted");
    let r = compute(&[mirror, grant("back", "HTTPRoute", "front", None)]);
    assert_eq!(mirrored(&r).hostname, "api.back.svc.cluster.local");
    assert_eq!(resolved_refs(&r, "HTTPRoute").0, "True");
}

/// The controller recomputes on every change the index reports: applying a grant is a change that makes the
/// next compute resolve the backend, deleting it one that revokes the permission.
#[test]
fn granting_and_revoking_change_the_next_compute() {
    let mut idx = Index::default();
    let apply = |idx: &mut Index, text: &str| {
        let doc = parse_document(serde_yaml::from_str(text).unwrap()).unwrap();
        let Document::Object(o) = doc else {
            panic!("{doc:?}")
        };
        let key = o.key();
        (idx.apply(Event::Apply(o)), key)
    };
    for doc in MESH.split("---") {
        apply(&mut idx, doc);
    }
    apply(&mut idx, &route("HTTPRoute", "api"));
    let cfg = ComputeConfig::default();
    let invalid = |idx: &Index| {
        let r = crate::compute::compute(idx, &cfg);
        r.routes["front/httproute/r/0"].backends[0].invalid.clone()
    };
    assert_ne!(invalid(&idx), "");
    let (changed, key) = apply(&mut idx, &grant("back", "HTTPRoute", "front", None));
    assert!(changed, "a new grant triggers a recompute");
    assert_eq!(invalid(&idx), "");
    let (changed, _) = apply(
        &mut idx,
        &grant("back", "HTTPRoute", "front", Some("admin")),
    );
    assert!(changed, "a changed grant triggers a recompute");
    assert_ne!(invalid(&idx), "");
    apply(&mut idx, &grant("back", "HTTPRoute", "front", None));
    assert!(
        idx.apply(Event::Delete(key)),
        "a deleted grant triggers a recompute"
    );
    assert!(invalid(&idx).contains("no ReferenceGrant"));
}
