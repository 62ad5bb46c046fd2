//! Push order within one change, against the real xDS server: the Addresses a selector policy selects go before
//! the policy's Authorization, and on removal the workload's Address goes before its policy (fail closed; the
//! reasons are at `push_order` in `xds/conn.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use ambit_controller::xds::Snapshot;
use ambit_proto::type_url::{ADDRESS, AUTHORIZATION};
use ambit_proto::workload::{Address, address};
use ambit_proto::xds::{DeltaDiscoveryResponse, Node};
use prost::Message;
use std::sync::Arc;
use support::{Client, names};

const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: p1, namespace: a, labels: {app: x}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.0.0.1}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: p2, namespace: a, labels: {app: y}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.0.0.2}\n";

/// A new pod selected by the new policy, and the policy.
const ADDED: &str = "\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p3, namespace: a, labels: {app: x}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.0.0.3}\n\
---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-x, namespace: a}\n\
spec: {selector: {matchLabels: {app: x}}, action: DENY, rules: [{from: [{source: {namespaces: [other]}}]}]}\n";

fn ztunnel_node() -> Option<Node> {
    Some(Node {
        id: "ztunnel~10.0.0.100~ztunnel-abc.istio-system~istio-system.svc.cluster.local".into(),
        ..Default::default()
    })
}

async fn recv(c: &mut Client) -> DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(60), c.recv())
        .await
        .expect("a push within 60 s")
}

/// The workload policy names of the workloads in an Address response, by resource name.
fn workload_policies(r: &DeltaDiscoveryResponse) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for res in &r.resources {
        let a = Address::decode(res.resource.as_ref().unwrap().value.as_slice()).unwrap();
        if let Some(address::Type::Workload(w)) = a.r#type {
            out.push((w.name.clone(), w.authorization_policies.clone()));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn selected_addresses_go_before_the_policy_and_leave_before_it() {
    let first = support::resources(BASE);
    let (publish, addr) = support::serve(&first).await;
    let mut c = Client::connect(addr).await;
    // Subscribed in the opposite order to the one pushes must follow: the order is the server's, not the client's.
    let z = c.subscribe(ztunnel_node(), AUTHORIZATION).await;
    assert!(
        !names(&z).contains(&"a/deny-x".to_owned()),
        "{:?}",
        names(&z)
    );
    let a = c.subscribe(None, ADDRESS).await;
    assert_eq!(a.resources.len(), 2, "{:?}", names(&a));

    // One change: p3 appears, p1 and p3 are selected by the new policy deny-x.
    let mut with_policy = BASE.to_owned();
    with_policy.push_str(ADDED);
    let prev = publish.borrow().clone();
    publish.send_replace(Arc::new(Snapshot::next(
        &prev,
        2,
        &support::resources(&with_policy),
    )));
    let r1 = recv(&mut c).await;
    assert_eq!(
        r1.type_url, ADDRESS,
        "the selected Addresses come first, then the policy"
    );
    let selected = workload_policies(&r1);
    let names1: Vec<&str> = selected.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names1, vec!["p1", "p3"], "{selected:?}");
    assert!(
        selected
            .iter()
            .all(|(_, p)| p == &vec!["a/deny-x".to_owned()]),
        "{selected:?}"
    );
    let r2 = recv(&mut c).await;
    assert_eq!(r2.type_url, AUTHORIZATION);
    assert_eq!(names(&r2), vec!["a/deny-x"]);

    // One change: p3 and the policy go (p1 stops naming it). The workload loses its policy last.
    let prev = publish.borrow().clone();
    publish.send_replace(Arc::new(Snapshot::next(
        &prev,
        3,
        &support::resources(BASE),
    )));
    let r3 = recv(&mut c).await;
    assert_eq!(
        r3.type_url, ADDRESS,
        "the Address removal comes before the policy's removal"
    );
    assert_eq!(r3.removed_resources.len(), 1, "{:?}", r3.removed_resources);
    assert!(
        r3.removed_resources[0].contains("p3"),
        "{:?}",
        r3.removed_resources
    );
    assert_eq!(
        workload_policies(&r3),
        vec![("p1".to_owned(), Vec::new())],
        "p1 no longer names the policy"
    );
    let r4 = recv(&mut c).await;
    assert_eq!(r4.type_url, AUTHORIZATION);
    assert_eq!(r4.removed_resources, vec!["a/deny-x"]);
    assert!(r4.resources.is_empty());
}
