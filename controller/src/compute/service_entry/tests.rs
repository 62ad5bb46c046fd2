//! ServiceEntries and WorkloadEntries through the whole computation: the services and workloads ztunnel gets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use ambit_proto::workload::{Service, Workload, address};

use crate::compute::test_support::compute_text;
use crate::compute::{ComputeConfig, Resources, ip_from_bytes};

fn compute_yaml(text: &str) -> Resources {
    compute_text(text, &ComputeConfig::default())
}

fn service<'a>(r: &'a Resources, key: &str) -> &'a Service {
    match r.addresses.get(key).and_then(|a| a.r#type.as_ref()) {
        Some(address::Type::Service(s)) => s,
        other => panic!("{key}: {other:?}"),
    }
}

fn workload<'a>(r: &'a Resources, uid: &str) -> &'a Workload {
    match r.addresses.get(uid).and_then(|a| a.r#type.as_ref()) {
        Some(address::Type::Workload(w)) => w,
        other => panic!(
            "{uid}: {other:?}; have {:?}",
            r.addresses.keys().collect::<Vec<_>>()
        ),
    }
}

fn vips(s: &Service) -> Vec<String> {
    s.addresses
        .iter()
        .map(|a| {
            let ip = ip_from_bytes(&a.address).unwrap();
            match a.length {
                Some(l) => format!("{ip}/{l}"),
                None => ip.to_string(),
            }
        })
        .collect()
}

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: ext, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: static, namespace: ext}
spec:
  hosts: [api.example.com]
  addresses: [10.9.0.1, 10.9.1.0/24]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {app: api}, serviceAccount: api}
  - {address: 10.0.0.2, ports: {http: 9090}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: auto, namespace: ext}
spec:
  hosts: [a.internal, b.internal, "*.wild.internal"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms, namespace: ext}
spec:
  hosts: [vm.internal]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: ext, annotations: {ambient.istio.io/redirection: enabled}}
spec: {address: 10.1.0.1, labels: {app: vm}, serviceAccount: vm, ports: {http: 8081}}
---
apiVersion: v1
kind: Service
metadata: {name: vm-svc, namespace: ext}
spec: {selector: {app: vm}, clusterIP: 10.96.0.50, ports: [{port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: ext, labels: {app: vm, istio.io/dataplane-mode: none}}
spec: {containers: [{name: c, image: x, ports: [{name: http, containerPort: 7070}]}]}
status: {podIP: 10.0.5.5, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: meshed, namespace: ext, labels: {app: vm}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 10.0.5.6, phase: Running}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns, namespace: ext}
spec:
  hosts: [db.example.com]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: DNS
"#;

#[test]
fn static_entry_with_inline_endpoints() {
    let r = compute_yaml(MESH);
    let s = service(&r, "ext/api.example.com");
    assert_eq!(s.name, "static");
    assert_eq!(vips(s), ["10.9.0.1", "10.9.1.0/24"]);
    assert_eq!(
        (s.ports[0].service_port, s.ports[0].target_port),
        (80, 8080)
    );
    assert_eq!(
        r.aliases.get("/10.9.1.0/24").map(String::as_str),
        Some("ext/api.example.com")
    );
    let ep1 = workload(
        &r,
        "Kubernetes/networking.istio.io/ServiceEntry/ext/static/10.0.0.1",
    );
    assert_eq!(ep1.service_account, "api");
    assert_eq!(ep1.canonical_name, "api");
    assert_eq!(
        ep1.services["ext/api.example.com"].ports[0].target_port,
        8080
    );
    let ep2 = workload(
        &r,
        "Kubernetes/networking.istio.io/ServiceEntry/ext/static/10.0.0.2",
    );
    assert_eq!(
        ep2.services["ext/api.example.com"].ports[0].target_port, 9090,
        "named endpoint port wins"
    );
    assert_eq!(
        ep2.tunnel_protocol, 0,
        "inline endpoints are outside the mesh"
    );
}

#[test]
fn addresses_are_allocated_stably_and_wildcards_are_reported() {
    let r = compute_yaml(MESH);
    let a = vips(service(&r, "ext/a.internal"));
    let b = vips(service(&r, "ext/b.internal"));
    assert_eq!(a.len(), 1);
    assert_ne!(a, b);
    for ip in [&a[0], &b[0]] {
        let ip: IpAddr = ip.parse().unwrap();
        assert!(ip.to_string().starts_with("240.240."), "{ip}");
    }
    // Another entry elsewhere does not move them.
    let more = format!(
        "{MESH}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: z, namespace: ext}}\nspec: {{hosts: [c.internal], ports: [{{number: 1, name: x}}]}}\n"
    );
    let r2 = compute_yaml(&more);
    assert_eq!(vips(service(&r2, "ext/a.internal")), a);
    assert_eq!(vips(service(&r2, "ext/b.internal")), b);
    assert!(!r.addresses.contains_key("ext/*.wild.internal"));
    let status = r.status["serviceentry/ext/auto"].to_string();
    assert!(
        status.contains("wildcard hosts are not supported"),
        "{status}"
    );
    let dns = r.status["serviceentry/ext/dns"].to_string();
    assert!(dns.contains("ztunnel does not resolve hostnames"), "{dns}");
}

#[test]
fn workload_entries_and_uncaptured_pods_are_selected() {
    let r = compute_yaml(MESH);
    let vm = workload(&r, "Kubernetes/networking.istio.io/WorkloadEntry/ext/vm-1");
    assert_eq!(vm.tunnel_protocol, 1, "annotated for HBONE");
    assert_eq!(vm.service_account, "vm");
    assert_eq!(vm.services["ext/vm.internal"].ports[0].target_port, 8081);
    assert_eq!(
        vm.services["ext/vm-svc.ext.svc.cluster.local"].ports[0].target_port, 8081,
        "a Kubernetes Service selects the entry, its named targetPort from the entry's ports"
    );
    let legacy = workload(&r, "Kubernetes//Pod/ext/legacy");
    assert_eq!(
        legacy.services["ext/vm.internal"].ports[0].target_port,
        7070
    );
    let meshed = workload(&r, "Kubernetes//Pod/ext/meshed");
    assert!(
        !meshed.services.contains_key("ext/vm.internal"),
        "a captured pod is never a ServiceEntry endpoint"
    );
}

#[test]
fn an_entry_can_use_a_waypoint() {
    let text = format!(
        r#"{MESH}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: egress, namespace: ext}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: egress-1, namespace: ext, labels: {{gateway.networking.k8s.io/gateway-name: egress}}}}
spec: {{containers: [{{name: c, image: x}}]}}
status: {{podIP: 10.0.9.9, phase: Running}}
"#
    )
    .replace(
        "metadata: {name: static, namespace: ext}",
        "metadata: {name: static, namespace: ext, labels: {istio.io/use-waypoint: egress}}",
    );
    let r = compute_yaml(&text);
    let s = service(&r, "ext/api.example.com");
    assert!(s.waypoint.is_some(), "{s:?}");
    let c = &r.status["serviceentry/ext/static"]["conditions"][0];
    assert_eq!(c["type"], "istio.io/WaypointBound");
    assert_eq!(c["status"], "True", "{c}");
}
