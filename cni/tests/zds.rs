//! The node agent's ZDS server against ztunnel's ZDS client (the real one, with a recording proxy manager).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_cni::{PodInfo, ZdsServer};
use ambit_ztunnel::inpod::{self, WorkloadProxyManager};
use ambit_ztunnel::pods::PodIdentity;

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl WorkloadProxyManager for Recorder {
    async fn start(&self, uid: &str, pod: PodIdentity, netns: OwnedFd) -> Result<(), String> {
        // The descriptor is the namespace the agent opened.
        let f = std::fs::File::from(netns);
        use std::os::unix::fs::MetadataExt;
        let want = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(f.metadata().unwrap().ino(), want);
        self.calls.lock().unwrap().push(format!(
            "start {uid} {}/{}/{}",
            pod.namespace, pod.name, pod.service_account
        ));
        Ok(())
    }
    async fn stop(&self, uid: &str) {
        self.calls.lock().unwrap().push(format!("stop {uid}"));
    }
    async fn retain(&self, keep: &HashSet<String>) {
        let mut k: Vec<&String> = keep.iter().collect();
        k.sort();
        self.calls.lock().unwrap().push(format!("retain {k:?}"));
    }
}

fn pod(uid: &str, netns: &str) -> PodInfo {
    PodInfo {
        uid: uid.into(),
        name: format!("pod-{uid}"),
        namespace: "demo".into(),
        service_account: "sa".into(),
        netns: netns.into(),
    }
}

async fn wait_for(rec: &Recorder, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let c = rec.calls();
        if c.len() >= n {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rec.calls()
}

#[tokio::test]
async fn snapshot_then_live_adds_and_removes_and_a_reconnect_resends_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("zds.sock");
    let (_agent_trigger, agent_drain) = ambit_core::drain::new();
    let server = ZdsServer::start(&sock, agent_drain).unwrap();
    // Known before ztunnel connects: one with a namespace, one whose namespace file is gone (Keep).
    server.add(pod("a", "/proc/self/ns/net")).await.unwrap();
    server.add(pod("k", "/nonexistent/netns")).await.unwrap();

    let rec = Arc::new(Recorder::default());
    let readiness = ambit_core::readiness::Readiness::new();
    let block = readiness.register_task("inpod snapshot");
    let (zt_trigger, zt_drain) = ambit_core::drain::new();
    let client = tokio::spawn(inpod::run(sock.clone(), rec.clone(), Some(block), zt_drain));
    let calls = wait_for(&rec, 2).await;
    assert_eq!(
        calls,
        vec!["start a demo/pod-a/sa", "retain [\"a\", \"k\"]"]
    );
    assert!(readiness.is_ready(), "the snapshot releases readiness");

    // Live changes are acknowledged before the agent's call returns.
    server.add(pod("b", "/proc/self/ns/net")).await.unwrap();
    server.remove("a").await.unwrap();
    assert_eq!(
        rec.calls()[2..],
        ["start b demo/pod-b/sa".to_owned(), "stop a".to_owned()]
    );

    // ztunnel restarts: the new connection gets the current pods in a fresh snapshot.
    zt_trigger.drain(Duration::from_secs(1)).await;
    client.await.unwrap();
    let rec2 = Arc::new(Recorder::default());
    let (_t2, d2) = ambit_core::drain::new();
    tokio::spawn(inpod::run(sock, rec2.clone(), None, d2));
    let calls = wait_for(&rec2, 2).await;
    assert_eq!(
        calls,
        vec!["start b demo/pod-b/sa", "retain [\"b\", \"k\"]"]
    );
}

/// A proxy manager whose starts always fail.
#[derive(Default)]
struct Refuser {
    starts: Mutex<u32>,
}

#[async_trait::async_trait]
impl WorkloadProxyManager for Refuser {
    async fn start(&self, _uid: &str, _pod: PodIdentity, _netns: OwnedFd) -> Result<(), String> {
        *self.starts.lock().unwrap() += 1;
        Err("no room".into())
    }
    async fn stop(&self, _uid: &str) {}
    async fn retain(&self, _keep: &HashSet<String>) {}
}

#[tokio::test]
async fn a_refused_add_is_reported_and_the_pod_stays_known() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("zds.sock");
    let (_agent_trigger, agent_drain) = ambit_core::drain::new();
    let server = ZdsServer::start(&sock, agent_drain).unwrap();

    let refuser = Arc::new(Refuser::default());
    let (zt_trigger, zt_drain) = ambit_core::drain::new();
    let client = tokio::spawn(inpod::run(sock.clone(), refuser.clone(), None, zt_drain));
    // Until ztunnel is connected an add is answered Ok without an ack; wait for the refusal to come back.
    let mut err = None;
    for _ in 0..200 {
        server.remove("x").await.unwrap();
        match server.add(pod("x", "/proc/self/ns/net")).await {
            Err(e) => {
                err = Some(e);
                break;
            }
            Ok(()) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let err = err.expect("ztunnel never refused the pod");
    assert!(err.contains("failure to start proxy"), "{err}");
    assert!(err.contains("no room"), "{err}");

    // The connection survives the NACK, and the pod stays registered: a new ztunnel gets it in its snapshot.
    server.add(pod("y", "/proc/self/ns/net")).await.unwrap_err();
    zt_trigger.drain(Duration::from_secs(1)).await;
    client.await.unwrap();
    let rec = Arc::new(Recorder::default());
    let (_t2, d2) = ambit_core::drain::new();
    tokio::spawn(inpod::run(sock, rec.clone(), None, d2));
    let calls = wait_for(&rec, 3).await;
    assert_eq!(
        calls,
        vec![
            "start x demo/pod-x/sa",
            "start y demo/pod-y/sa",
            "retain [\"x\", \"y\"]"
        ]
    );
}

/// A ztunnel that stops answering is dropped after the 5 s ack deadline, and the agent keeps the pods for the next.
#[tokio::test(start_paused = true)]
async fn a_ztunnel_that_never_acks_is_dropped() {
    use ambit_core::zds::{ZdsError, ZdsSocket};
    use ambit_proto::zds::{Version, WorkloadRequest, ZdsHello, workload_request::Payload};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zds.sock");
    let (_t, d) = ambit_core::drain::new();
    let server = ZdsServer::start(&path, d).unwrap();
    server.add(pod("a", "/proc/self/ns/net")).await.unwrap();

    let mute = ZdsSocket::connect(&path).unwrap();
    mute.send_msg(
        &ZdsHello {
            version: Version::V1 as i32,
        },
        None,
    )
    .await
    .unwrap();
    let (req, fd) = mute.recv_msg::<WorkloadRequest>().await.unwrap();
    assert!(matches!(req.payload, Some(Payload::Add(_))) && fd.is_some());
    // No ack: after the deadline (virtual time here) the agent hangs up.
    assert!(matches!(mute.recv().await, Err(ZdsError::Closed)));

    // The pod is still known: a ztunnel that does answer gets it in its snapshot.
    let rec = Arc::new(Recorder::default());
    let (_t2, d2) = ambit_core::drain::new();
    tokio::spawn(inpod::run(path, rec.clone(), None, d2));
    let calls = wait_for(&rec, 2).await;
    assert_eq!(calls, vec!["start a demo/pod-a/sa", "retain [\"a\"]"]);
}

/// A ztunnel upgrade: the new process connects while the old one still serves. The new one gets the snapshot and
/// every change from then on; the old one's connection stays open and silent, so it neither reconnects (taking the
/// pods back) nor loses its pods' listeners before it is told to stop. When the new one leaves, the old one is
/// disconnected too, reconnects and gets a fresh snapshot.
#[tokio::test]
async fn a_new_ztunnel_takes_over_and_the_old_keeps_its_connection_until_then() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("zds.sock");
    let (_agent_trigger, agent_drain) = ambit_core::drain::new();
    let server = ZdsServer::start(&sock, agent_drain).unwrap();
    server.add(pod("a", "/proc/self/ns/net")).await.unwrap();

    let old = Arc::new(Recorder::default());
    let (_old_trigger, old_drain) = ambit_core::drain::new();
    tokio::spawn(inpod::run(sock.clone(), old.clone(), None, old_drain));
    assert_eq!(
        wait_for(&old, 2).await,
        vec!["start a demo/pod-a/sa", "retain [\"a\"]"]
    );

    let new = Arc::new(Recorder::default());
    let (new_trigger, new_drain) = ambit_core::drain::new();
    let new_client = tokio::spawn(inpod::run(sock.clone(), new.clone(), None, new_drain));
    assert_eq!(
        wait_for(&new, 2).await,
        vec!["start a demo/pod-a/sa", "retain [\"a\"]"]
    );
    server.add(pod("b", "/proc/self/ns/net")).await.unwrap();
    assert_eq!(new.calls()[2..], ["start b demo/pod-b/sa".to_owned()]);
    // Long enough for a reconnect (its backoff starts at 10 ms) and a second snapshot to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        old.calls().len(),
        2,
        "the old ztunnel reconnected or was sent more: {:?}",
        old.calls()
    );

    new_trigger.drain(Duration::from_secs(1)).await;
    new_client.await.unwrap();
    let calls = wait_for(&old, 5).await;
    assert_eq!(
        calls[2..],
        [
            "start a demo/pod-a/sa".to_owned(),
            "start b demo/pod-b/sa".to_owned(),
            "retain [\"a\", \"b\"]".to_owned()
        ],
        "the old ztunnel, disconnected when the new one left, reconnects for a fresh snapshot"
    );
}
