//! Bad requests on a real delta ADS stream: a subscription to a type the server does not serve, ACKs and NACKs
//! naming nonces it never sent. Each is answered as xDS expects (an empty first response; nothing) and the stream
//! keeps working: the real types are served on it, and the next change is pushed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use ambit_controller::xds::Snapshot;
use ambit_proto::type_url::ADDRESS;
use ambit_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status as RpcStatus};
use tonic::transport::Channel;

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}\n---\n";
const P1: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: p1, namespace: a}\nspec: {nodeName: n1}\nstatus: {podIP: 10.0.0.1}\n";
const P2: &str = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p2, namespace: a}\nspec: {nodeName: n1}\nstatus: {podIP: 10.0.0.2}\n";

const UNKNOWN: &str = "type.googleapis.com/nope.v1.Thing";

async fn next(stream: &mut tonic::Streaming<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an answer within 5 s")
        .unwrap()
        .expect("stream open")
}

/// Nothing arrives within a short wait (an answer would have).
async fn silent(stream: &mut tonic::Streaming<DeltaDiscoveryResponse>, what: &str) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
        panic!("{what}: the server answered {m:?}");
    }
}

#[tokio::test]
async fn unknown_types_and_nonces_are_answered_and_the_stream_keeps_working() {
    let first = support::resources(&format!("{NS}{P1}"));
    let (publish, addr) = support::serve(&first).await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, mut stream) = support::open_delta(channel, None).await.unwrap();
    let req = |type_url: &str| DeltaDiscoveryRequest {
        type_url: type_url.into(),
        ..Default::default()
    };

    // A type the server does not serve: answered once, empty (a client blocking readiness on it is released).
    tx.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: "ztunnel~10.0.0.100~ztunnel-abc.istio-system~istio-system.svc.cluster.local".into(),
            ..Default::default()
        }),
        ..req(UNKNOWN)
    })
    .await
    .unwrap();
    let r = next(&mut stream).await;
    assert_eq!(r.type_url, UNKNOWN);
    assert!(
        r.resources.is_empty() && r.removed_resources.is_empty(),
        "{r:?}"
    );

    // The real type is still served on the same stream.
    tx.send(req(ADDRESS)).await.unwrap();
    let a = next(&mut stream).await;
    assert_eq!(support::names(&a), vec!["Kubernetes//Pod/a/p1"]);

    // An ACK and a NACK naming nonces the server never sent, for a served and an unknown type: no answer.
    for (type_url, error) in [(ADDRESS, false), (ADDRESS, true), (UNKNOWN, false)] {
        tx.send(DeltaDiscoveryRequest {
            response_nonce: "never-sent-42".into(),
            error_detail: error.then(|| RpcStatus {
                code: 3,
                message: "stale".into(),
                details: vec![],
            }),
            ..req(type_url)
        })
        .await
        .unwrap();
        silent(
            &mut stream,
            &format!("{type_url} nonce never sent (NACK: {error})"),
        )
        .await;
    }
    // The real ACK of the first push, late: no answer either.
    tx.send(DeltaDiscoveryRequest {
        response_nonce: a.nonce.clone(),
        ..req(ADDRESS)
    })
    .await
    .unwrap();
    silent(&mut stream, "a late ACK").await;

    // The next change is pushed on the same stream, and only the change.
    let prev = publish.borrow().clone();
    publish.send_replace(Arc::new(Snapshot::next(
        &prev,
        2,
        &support::resources(&format!("{NS}{P1}{P2}")),
    )));
    let d = next(&mut stream).await;
    assert_eq!(d.type_url, ADDRESS);
    assert_eq!(support::names(&d), vec!["Kubernetes//Pod/a/p2"]);
}
