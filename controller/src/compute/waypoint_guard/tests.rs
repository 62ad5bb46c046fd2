//! The guard policies as the destination ztunnel evaluates them (`ambit_core::rbac`, the code ztunnel runs):
//! a direct call from the client is refused only in waypoint-required mode, the waypoint's call always passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ambit_core::identity::Identity;
use ambit_core::rbac::{self, Connection, RbacDenied};
use ambit_proto::workload::address;

use crate::compute::{ComputeConfig, Resources};

/// A namespace `demo` (labels `ns_labels`), a service waypoint for it, Service `echo` (extra labels
/// `svc_labels`, port 80 → 8080) and its pod; the waypoint has a ready pod running as `waypoint-sa`.
fn mesh(ns_labels: &str, svc_labels: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: demo, labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint{ns_labels}}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: demo}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: waypoint-1, namespace: demo, labels: {{gateway.networking.k8s.io/gateway-name: waypoint}}}}
spec: {{serviceAccountName: waypoint-sa, containers: [{{name: c, image: x}}]}}
status: {{podIP: 10.0.0.9, phase: Running}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: demo, labels: {{app: echo{svc_labels}}}}}
spec: {{selector: {{app: echo}}, ports: [{{port: 80, targetPort: 8080}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-1, namespace: demo, labels: {{app: echo}}}}
spec: {{containers: [{{name: c, image: x}}]}}
status: {{podIP: 10.0.0.5, phase: Running}}
{extra}
"#
    )
}

use crate::compute::test_support::compute_text as compute_with;

/// The destination ztunnel's decision for `src_sa` (namespace `demo`, or the waypoint's `waypoint-sa`) calling
/// pod `echo-1` on `port`.
fn decide(r: &Resources, src_sa: &str, port: u16) -> Result<(), RbacDenied> {
    let Some(address::Type::Workload(wl)) =
        r.addresses["Kubernetes//Pod/demo/echo-1"].r#type.as_ref()
    else {
        panic!("echo-1 is not a workload")
    };
    let all: Vec<Arc<rbac::Authorization>> = r
        .authorizations
        .values()
        .map(|a| Arc::new(rbac::Authorization::try_from(a.clone()).unwrap()))
        .collect();
    let policies = rbac::select(
        &all,
        |name| all.iter().find(|p| p.key() == name),
        "demo",
        &wl.authorization_policies,
        |name| panic!("workload names unknown policy {name}"),
    );
    let conn = Connection {
        src: "10.0.0.7:40000".parse().unwrap(),
        src_identity: Some(Identity {
            trust_domain: "cluster.local".into(),
            namespace: "demo".into(),
            service_account: src_sa.into(),
        }),
        dst: format!("10.0.0.5:{port}").parse().unwrap(),
    };
    rbac::evaluate(&policies, &conn)
}

fn required_key(r: &Resources) -> Option<String> {
    r.authorizations
        .keys()
        .find(|k| k.contains("ambit_waypoint_required"))
        .cloned()
}

#[test]
fn default_mode_lets_direct_calls_through() {
    let r = compute_with(&mesh("", "", ""), &ComputeConfig::default());
    assert_eq!(required_key(&r), None);
    assert_eq!(decide(&r, "client", 8080), Ok(()));
    assert_eq!(decide(&r, "waypoint-sa", 8080), Ok(()));
}

#[test]
fn namespace_label_refuses_direct_calls_on_the_service_ports_only() {
    let r = compute_with(
        &mesh(", ambit.dev/waypoint-required: \"true\"", "", ""),
        &ComputeConfig::default(),
    );
    let key = required_key(&r).expect("a guard policy");
    assert_eq!(key, "demo/ambit_waypoint_required_demo_waypoint_ports_8080");
    assert!(matches!(decide(&r, "client", 8080), Err(RbacDenied::ExplicitDeny(k)) if k == key));
    assert_eq!(decide(&r, "waypoint-sa", 8080), Ok(()));
    // A port no Service bound to the waypoint exposes is not the waypoint's to guard.
    assert_eq!(decide(&r, "client", 9090), Ok(()));
}

#[test]
fn service_label_overrides_namespace_label() {
    let off = compute_with(
        &mesh(
            ", ambit.dev/waypoint-required: \"true\"",
            ", ambit.dev/waypoint-required: \"false\"",
            "",
        ),
        &ComputeConfig::default(),
    );
    assert_eq!(required_key(&off), None);
    let on = compute_with(
        &mesh("", ", ambit.dev/waypoint-required: \"true\"", ""),
        &ComputeConfig::default(),
    );
    assert!(decide(&on, "client", 8080).is_err());
}

#[test]
fn a_waypoint_that_is_down_still_guards_its_pods() {
    // The waypoint pod is not running: the binding is refused (not ready) and WDS sends no waypoint.
    let text = mesh(", ambit.dev/waypoint-required: \"true\"", "", "")
        .replace("podIP: 10.0.0.9, phase: Running", "phase: Pending");
    let r = compute_with(&text, &ComputeConfig::default());
    let Some(address::Type::Service(svc)) = r.addresses["demo/echo.demo.svc.cluster.local"]
        .r#type
        .as_ref()
    else {
        panic!("no echo service")
    };
    assert_eq!(svc.waypoint, None, "not ready: no waypoint in WDS");
    assert!(decide(&r, "client", 8080).is_err(), "fails closed");
    assert_eq!(decide(&r, "waypoint-sa", 8080), Ok(()));
    // Not even a pod yet: the guard allows the identity the deployer will give it (its Gateway name).
    let start = text
        .find("apiVersion: v1\nkind: Pod\nmetadata: {name: waypoint-1")
        .unwrap();
    let end = start + text[start..].find("---").unwrap() + 3;
    let r = compute_with(
        &format!("{}{}", &text[..start], &text[end..]),
        &ComputeConfig::default(),
    );
    assert!(decide(&r, "waypoint-sa", 8080).is_err());
    assert_eq!(decide(&r, "waypoint", 8080), Ok(()));
}

#[test]
fn auto_allow_adds_istios_policy_for_bound_pods() {
    let cfg = ComputeConfig {
        auto_allow_waypoint_policy: true,
        ..ComputeConfig::default()
    };
    // A selector policy that allows only the client: with a waypoint in the path the destination sees the
    // waypoint's identity, which it would refuse (spec 2.3's two-layer trap) without the implicit policy.
    let only_client = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]
"#;
    let without = compute_with(&mesh("", "", only_client), &ComputeConfig::default());
    assert_eq!(
        decide(&without, "waypoint-sa", 8080),
        Err(RbacDenied::NotAllowed)
    );
    let with = compute_with(&mesh("", "", only_client), &cfg);
    let policy = &with.authorizations["demo/istio_allow_waypoint_demo_waypoint"];
    assert_eq!(policy.name, "istio_allow_waypoint_demo_waypoint");
    assert_eq!(decide(&with, "waypoint-sa", 8080), Ok(()));
    assert_eq!(decide(&with, "client", 8080), Ok(()));
    assert_eq!(decide(&with, "other", 8080), Err(RbacDenied::NotAllowed));
}

#[test]
fn auto_allow_skips_unbound_pods() {
    let cfg = ComputeConfig {
        auto_allow_waypoint_policy: true,
        ..ComputeConfig::default()
    };
    let text = mesh("", "", "").replace("podIP: 10.0.0.9, phase: Running", "phase: Pending");
    let r = compute_with(&text, &cfg);
    assert!(
        !r.authorizations
            .keys()
            .any(|k| k.contains("istio_allow_waypoint")),
        "a waypoint that is not bound gets no implicit policy"
    );
}

#[test]
fn a_workload_binding_guards_every_port() {
    let text = mesh(", ambit.dev/waypoint-required: \"true\"", "", "")
        .replace(
            "metadata: {name: waypoint, namespace: demo}",
            "metadata: {name: waypoint, namespace: demo, labels: {istio.io/waypoint-for: all}}",
        )
        .replace(
            "metadata: {name: echo-1, namespace: demo, labels: {app: echo}}",
            "metadata: {name: echo-1, namespace: demo, labels: {app: echo, istio.io/use-waypoint: waypoint}}",
        );
    let r = compute_with(&text, &ComputeConfig::default());
    assert_eq!(
        required_key(&r).as_deref(),
        Some("demo/ambit_waypoint_required_demo_waypoint")
    );
    assert!(decide(&r, "client", 9090).is_err());
    assert_eq!(decide(&r, "waypoint-sa", 9090), Ok(()));
}
