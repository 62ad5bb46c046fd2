//! The node agent's ZDS server against a ztunnel that misbehaves: a hello with an unknown version, no hello at all,
//! answers that do not decode or are of the wrong type, an answer without an ack, a message nobody asked for. Each
//! costs at most the connection, never the pods the agent knows: the next ztunnel to connect gets them all in its
//! snapshot. The "ztunnel" here is a raw ZDS socket driven by the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use ambit_cni::{PodInfo, ZdsServer};
use ambit_core::zds::{ZdsError, ZdsSocket};
use ambit_proto::zds::{
    Ack, Version, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request::Payload,
    workload_response,
};

fn pod(uid: &str) -> PodInfo {
    PodInfo {
        uid: uid.into(),
        name: format!("pod-{uid}"),
        namespace: "demo".into(),
        service_account: "sa".into(),
        netns: "/proc/self/ns/net".into(),
    }
}

/// An agent knowing pods `uids`, listening in a fresh directory (kept alive by the returned guard).
async fn agent(uids: &[&str]) -> (ZdsServer, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zds.sock");
    let (trigger, drain) = ambit_core::drain::new();
    // The server runs until the test ends.
    std::mem::forget(trigger);
    let server = ZdsServer::start(&path, drain).unwrap();
    for uid in uids {
        server.add(pod(uid)).await.unwrap();
    }
    (server, path, dir)
}

async fn hello(path: &Path, version: i32) -> ZdsSocket {
    let s = ZdsSocket::connect(path).unwrap();
    s.send_msg(&ZdsHello { version }, None).await.unwrap();
    s
}

async fn next_request(s: &ZdsSocket) -> Payload {
    let (req, fd) = tokio::time::timeout(Duration::from_secs(10), s.recv_msg::<WorkloadRequest>())
        .await
        .expect("a request from the agent")
        .unwrap();
    let payload = req.payload.expect("a payload");
    if matches!(payload, Payload::Add(_)) {
        assert!(fd.is_some(), "an add carries the namespace descriptor");
    }
    payload
}

async fn ack(s: &ZdsSocket) {
    let resp = WorkloadResponse {
        payload: Some(workload_response::Payload::Ack(Ack {
            error: String::new(),
        })),
    };
    s.send_msg(&resp, None).await.unwrap();
}

fn added(p: &Payload) -> Option<&str> {
    match p {
        Payload::Add(a) => Some(a.uid.as_str()),
        _ => None,
    }
}

/// Takes a whole snapshot as a well-behaved ztunnel does; returns the uids it was given.
async fn take_snapshot(s: &ZdsSocket) -> Vec<String> {
    let mut uids = Vec::new();
    loop {
        let p = next_request(s).await;
        ack(s).await;
        match p {
            Payload::SnapshotSent(_) => return uids,
            Payload::Add(a) => uids.push(a.uid),
            other => panic!("unexpected in a snapshot: {other:?}"),
        }
    }
}

/// Whether the agent hung up on `s` (within 10 s of virtual or real time).
async fn hung_up(s: &ZdsSocket) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.recv()).await,
        Ok(Err(ZdsError::Closed))
    )
}

#[tokio::test]
async fn an_unknown_hello_version_is_tried_as_v1() {
    let (_server, path, _dir) = agent(&["a"]).await;
    let zt = hello(&path, 7).await;
    assert_eq!(take_snapshot(&zt).await, ["a"]);
}

/// A ztunnel that connects and says nothing is hung up on after the 5 s deadline (virtual time here).
#[tokio::test(start_paused = true)]
async fn no_hello_within_the_deadline_is_hung_up_on() {
    let (_server, path, _dir) = agent(&["a"]).await;
    let mute = ZdsSocket::connect(&path).unwrap();
    let start = tokio::time::Instant::now();
    assert!(hung_up(&mute).await, "the agent waits for a hello forever");
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "hung up before the deadline: {:?}",
        start.elapsed()
    );
    let zt = hello(&path, Version::V1 as i32).await;
    assert_eq!(take_snapshot(&zt).await, ["a"]);
}

/// An answer to the snapshot's add that does not decode (`ff ff ff`), or is another message (a `ZdsHello`, whose
/// field 1 is a varint where an ack's is a message), ends that connection; the pod is kept for the next ztunnel.
#[tokio::test]
async fn an_undecodable_or_wrong_type_answer_ends_the_connection_and_the_pod_stays() {
    let (_server, path, _dir) = agent(&["a"]).await;
    let mut wrong_type = Vec::new();
    prost::Message::encode(
        &ZdsHello {
            version: Version::V1 as i32,
        },
        &mut wrong_type,
    )
    .unwrap();
    for bad in [vec![0xff, 0xff, 0xff], wrong_type] {
        let zt = hello(&path, Version::V1 as i32).await;
        assert_eq!(added(&next_request(&zt).await), Some("a"));
        zt.send(&bad, None).await.unwrap();
        assert!(hung_up(&zt).await, "the agent went on after {bad:02x?}");
    }
    let zt = hello(&path, Version::V1 as i32).await;
    assert_eq!(take_snapshot(&zt).await, ["a"]);
}

/// A response that decodes but carries no ack (only a field the agent does not know) is a refusal of that pod, not
/// an acceptance; the connection goes on and the next pod is acknowledged normally.
#[tokio::test]
async fn an_answer_without_an_ack_is_a_refusal() {
    let (server, path, _dir) = agent(&["a"]).await;
    let zt = hello(&path, Version::V1 as i32).await;
    assert_eq!(take_snapshot(&zt).await, ["a"]);
    let adding = tokio::spawn({
        let server = server.clone();
        async move { server.add(pod("b")).await }
    });
    assert_eq!(added(&next_request(&zt).await), Some("b"));
    // Field 2, varint 1: unknown to `WorkloadResponse`, so it decodes with no payload.
    zt.send(&[0x10, 0x01], None).await.unwrap();
    let reply = adding.await.unwrap();
    assert_eq!(reply, Err("response without an ack".to_owned()));
    let adding = tokio::spawn({
        let server = server.clone();
        async move { server.add(pod("c")).await }
    });
    assert_eq!(added(&next_request(&zt).await), Some("c"));
    ack(&zt).await;
    assert_eq!(adding.await.unwrap(), Ok(()));
}

/// ztunnel never speaks unprompted: a message after the snapshot ends the connection, and every pod (also one added
/// before the violation) is in the next ztunnel's snapshot.
#[tokio::test]
async fn an_unsolicited_message_ends_the_connection_and_the_pods_stay() {
    let (server, path, _dir) = agent(&["a"]).await;
    let zt = hello(&path, Version::V1 as i32).await;
    assert_eq!(take_snapshot(&zt).await, ["a"]);
    ack(&zt).await;
    assert!(
        hung_up(&zt).await,
        "the agent ignored an unsolicited message"
    );
    // No ztunnel connected: the agent remembers the pod and says so.
    assert_eq!(server.add(pod("b")).await, Ok(()));
    let zt = hello(&path, Version::V1 as i32).await;
    assert_eq!(take_snapshot(&zt).await, ["a", "b"]);
}
