//! Shared (in-pod) mode: the ZDS client (spec 4.1). The node agent hands over each enrolled pod of this node with
//! its network namespace; ztunnel starts the pod's proxy inside it ([`crate::pods`]) and acknowledges every message.
//!
//! Rules: an `AddWorkload` carries exactly one descriptor and the workload info, nothing else carries one;
//! `KeepWorkload` only before the snapshot; one `SnapshotSent` per connection, after which every pod neither added
//! nor kept on this connection is drained. A proxy that fails to start is NACKed and retried every 5 s on the same
//! connection; any other violation is NACKed and the connection dropped (and re-made with backoff 10 ms → 15 s).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::drain::DrainWatcher;
use ambit_core::readiness::BlockReady;
use ambit_core::zds::{ZdsError, ZdsSocket};
use ambit_proto::zds::{
    Ack, Version, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request::Payload,
    workload_response,
};
use tracing::{debug, info, warn};

use crate::pods::{PodIdentity, PodProxies};

const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
const START_RETRY: Duration = Duration::from_secs(5);

/// What the ZDS client drives: [`PodProxies`] in ztunnel, a recorder in tests.
#[async_trait::async_trait]
pub trait WorkloadProxyManager: Send + Sync + 'static {
    /// Starts (or keeps) the proxy of one pod inside `netns`.
    async fn start(&self, uid: &str, pod: PodIdentity, netns: OwnedFd) -> Result<(), String>;
    /// Drains one pod's proxy.
    async fn stop(&self, uid: &str);
    /// Drains every pod not in `keep`.
    async fn retain(&self, keep: &HashSet<String>);
}

#[async_trait::async_trait]
impl WorkloadProxyManager for PodProxies {
    async fn start(&self, uid: &str, pod: PodIdentity, netns: OwnedFd) -> Result<(), String> {
        PodProxies::start(self, uid, pod, netns).await
    }
    async fn stop(&self, uid: &str) {
        PodProxies::stop(self, uid).await
    }
    async fn retain(&self, keep: &HashSet<String>) {
        PodProxies::retain(self, keep).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InpodError {
    #[error("{0}")]
    Zds(#[from] ZdsError),
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Connects to the node agent at `path` and serves it until `drain` fires, reconnecting with backoff. `ready` is
/// released after the first snapshot.
pub async fn run(
    path: PathBuf,
    mgr: Arc<dyn WorkloadProxyManager>,
    mut ready: Option<BlockReady>,
    mut drain: DrainWatcher,
) {
    let mut backoff = BACKOFF_START;
    loop {
        let outcome = tokio::select! {
            _ = drain.signaled() => return,
            r = connect_and_serve(&path, &*mgr, &mut ready) => r,
        };
        match outcome {
            Ok(()) => {
                info!("node agent closed the ZDS connection; reconnecting");
                backoff = BACKOFF_START;
            }
            Err(e) => {
                // The socket does not exist until the node agent starts: expected, so quiet.
                if matches!(&e, InpodError::Zds(ZdsError::Io(io)) if io.kind() == std::io::ErrorKind::NotFound || io.kind() == std::io::ErrorKind::ConnectionRefused)
                {
                    debug!(path = %path.display(), error = %e, "node agent not reachable yet");
                } else {
                    warn!(path = %path.display(), error = %e, retry.in_ms = backoff.as_millis() as u64, "ZDS connection failed");
                }
            }
        }
        tokio::select! {
            _ = drain.signaled() => return,
            _ = tokio::time::sleep(backoff) => {},
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect_and_serve(
    path: &std::path::Path,
    mgr: &dyn WorkloadProxyManager,
    ready: &mut Option<BlockReady>,
) -> Result<(), InpodError> {
    let sock = ZdsSocket::connect(path).map_err(ZdsError::from)?;
    info!(path = %path.display(), "connected to the node agent");
    serve(&sock, mgr, ready).await
}

/// Per-connection state.
#[derive(Default)]
struct Session {
    snapshot_done: bool,
    /// Pods added or kept on this connection.
    seen: HashSet<String>,
    /// Pods whose proxy failed to start, retried every 5 s.
    pending: HashMap<String, (PodIdentity, OwnedFd)>,
}

/// Serves one connection: hello, then one ack per request. Returns `Ok` when the node agent hangs up.
pub async fn serve(
    sock: &ZdsSocket,
    mgr: &dyn WorkloadProxyManager,
    ready: &mut Option<BlockReady>,
) -> Result<(), InpodError> {
    sock.send_msg(
        &ZdsHello {
            version: Version::V1 as i32,
        },
        None,
    )
    .await?;
    let mut s = Session::default();
    let mut retry = tokio::time::interval(START_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    retry.reset();
    loop {
        tokio::select! {
            msg = sock.recv_msg::<WorkloadRequest>() => {
                let (req, fd) = match msg {
                    Ok(m) => m,
                    Err(ZdsError::Closed) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                let (error, fatal) = match s.handle(mgr, req, fd).await {
                    Ok(()) => (String::new(), None),
                    Err(Outcome::Nack(e)) => (e, None),
                    Err(Outcome::Fatal(e)) => (e.clone(), Some(e)),
                };
                if !error.is_empty() {
                    warn!(error = %error, "ZDS request NACKed");
                }
                let ack = WorkloadResponse {
                    payload: Some(workload_response::Payload::Ack(Ack { error })),
                };
                sock.send_msg(&ack, None).await?;
                if let Some(e) = fatal {
                    return Err(InpodError::Protocol(e));
                }
                if s.snapshot_done && ready.take().is_some() {
                    info!("ZDS snapshot applied");
                }
            }
            _ = retry.tick(), if !s.pending.is_empty() => s.retry(mgr).await,
        }
    }
}

enum Outcome {
    /// NACK and carry on.
    Nack(String),
    /// NACK and drop the connection.
    Fatal(String),
}

impl Session {
    async fn handle(
        &mut self,
        mgr: &dyn WorkloadProxyManager,
        req: WorkloadRequest,
        fd: Option<OwnedFd>,
    ) -> Result<(), Outcome> {
        let payload = req
            .payload
            .ok_or_else(|| Outcome::Fatal("request without a payload".into()))?;
        if fd.is_some() && !matches!(payload, Payload::Add(_)) {
            return Err(Outcome::Fatal(
                "a descriptor came with a message other than AddWorkload".into(),
            ));
        }
        match payload {
            Payload::Add(add) => {
                let fd = fd.ok_or_else(|| {
                    Outcome::Fatal(format!(
                        "AddWorkload {} without a namespace descriptor",
                        add.uid
                    ))
                })?;
                let info = add.workload_info.ok_or_else(|| {
                    Outcome::Fatal(format!("AddWorkload {} without workload info", add.uid))
                })?;
                let pod = PodIdentity {
                    namespace: info.namespace,
                    name: info.name,
                    service_account: info.service_account,
                };
                self.seen.insert(add.uid.clone());
                self.pending.remove(&add.uid);
                let retry_fd = fd.as_fd().try_clone_to_owned();
                match mgr.start(&add.uid, pod.clone(), fd).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        if let Ok(f) = retry_fd {
                            self.pending.insert(add.uid.clone(), (pod, f));
                        }
                        Err(Outcome::Nack(format!("failure to start proxy: {e}")))
                    }
                }
            }
            Payload::Keep(keep) => {
                if self.snapshot_done {
                    return Err(Outcome::Fatal(format!(
                        "KeepWorkload {} after the snapshot",
                        keep.uid
                    )));
                }
                self.seen.insert(keep.uid);
                Ok(())
            }
            Payload::SnapshotSent(_) => {
                if self.snapshot_done {
                    return Err(Outcome::Fatal("a second SnapshotSent".into()));
                }
                self.snapshot_done = true;
                mgr.retain(&self.seen).await;
                Ok(())
            }
            Payload::Del(del) => {
                self.seen.remove(&del.uid);
                self.pending.remove(&del.uid);
                mgr.stop(&del.uid).await;
                Ok(())
            }
        }
    }

    async fn retry(&mut self, mgr: &dyn WorkloadProxyManager) {
        let uids: Vec<String> = self.pending.keys().cloned().collect();
        for uid in uids {
            let Some((pod, fd)) = self.pending.get(&uid) else {
                continue;
            };
            let Ok(fd) = fd.as_fd().try_clone_to_owned() else {
                continue;
            };
            match mgr.start(&uid, pod.clone(), fd).await {
                Ok(()) => {
                    info!(pod.uid = %uid, "pod proxy started on retry");
                    self.pending.remove(&uid);
                }
                Err(e) => warn!(pod.uid = %uid, error = %e, "pod proxy still failing to start"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_proto::zds::{AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, WorkloadInfo};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        fail_starts: Mutex<u32>,
    }

    #[async_trait::async_trait]
    impl WorkloadProxyManager for Recorder {
        async fn start(&self, uid: &str, pod: PodIdentity, _netns: OwnedFd) -> Result<(), String> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("start {uid} {}/{}", pod.namespace, pod.name));
            let mut f = self.fail_starts.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return Err("boom".into());
            }
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

    fn add(uid: &str) -> WorkloadRequest {
        WorkloadRequest {
            payload: Some(Payload::Add(AddWorkload {
                uid: uid.into(),
                workload_info: Some(WorkloadInfo {
                    name: format!("pod-{uid}"),
                    namespace: "ns".into(),
                    service_account: "sa".into(),
                }),
            })),
        }
    }

    fn req(p: Payload) -> WorkloadRequest {
        WorkloadRequest { payload: Some(p) }
    }

    /// The node agent's side of a test: sends a request, returns the ack's error text.
    async fn ask(agent: &ZdsSocket, r: WorkloadRequest, with_fd: bool) -> String {
        let ns = std::fs::File::open("/proc/self/ns/net").unwrap();
        agent
            .send_msg(&r, with_fd.then(|| ns.as_fd()))
            .await
            .unwrap();
        let (resp, fd) = agent.recv_msg::<WorkloadResponse>().await.unwrap();
        assert!(fd.is_none());
        match resp.payload {
            Some(workload_response::Payload::Ack(a)) => a.error,
            None => panic!("response without ack"),
        }
    }

    async fn start() -> (
        ZdsSocket,
        Arc<Recorder>,
        tokio::task::JoinHandle<Result<(), InpodError>>,
    ) {
        let (agent, zt) = ZdsSocket::pair().unwrap();
        let rec = Arc::new(Recorder::default());
        let mgr = rec.clone();
        let task = tokio::spawn(async move {
            let mut ready = None;
            serve(&zt, &*mgr, &mut ready).await
        });
        let (hello, _) = agent.recv_msg::<ZdsHello>().await.unwrap();
        assert_eq!(hello.version, Version::V1 as i32);
        (agent, rec, task)
    }

    #[tokio::test]
    async fn snapshot_then_adds_and_deletes() {
        let (agent, rec, task) = start().await;
        assert_eq!(ask(&agent, add("a"), true).await, "");
        assert_eq!(
            ask(
                &agent,
                req(Payload::Keep(KeepWorkload { uid: "k".into() })),
                false
            )
            .await,
            ""
        );
        assert_eq!(
            ask(&agent, req(Payload::SnapshotSent(SnapshotSent {})), false).await,
            ""
        );
        assert_eq!(ask(&agent, add("b"), true).await, "");
        assert_eq!(
            ask(
                &agent,
                req(Payload::Del(DelWorkload { uid: "a".into() })),
                false
            )
            .await,
            ""
        );
        drop(agent);
        task.await.unwrap().unwrap();
        assert_eq!(
            *rec.calls.lock().unwrap(),
            vec![
                "start a ns/pod-a",
                "retain [\"a\", \"k\"]",
                "start b ns/pod-b",
                "stop a",
            ]
        );
    }

    #[tokio::test]
    async fn violations_are_nacked_and_end_the_connection() {
        let cases: Vec<(Vec<(WorkloadRequest, bool)>, &str)> = vec![
            (vec![(add("a"), false)], "without a namespace descriptor"),
            (
                vec![(req(Payload::Del(DelWorkload { uid: "a".into() })), true)],
                "other than AddWorkload",
            ),
            (
                vec![
                    (req(Payload::SnapshotSent(SnapshotSent {})), false),
                    (req(Payload::SnapshotSent(SnapshotSent {})), false),
                ],
                "second SnapshotSent",
            ),
            (
                vec![
                    (req(Payload::SnapshotSent(SnapshotSent {})), false),
                    (req(Payload::Keep(KeepWorkload { uid: "k".into() })), false),
                ],
                "after the snapshot",
            ),
        ];
        for (requests, expect) in cases {
            let (agent, _rec, task) = start().await;
            let n = requests.len();
            let mut last = String::new();
            for (r, fd) in requests {
                last = ask(&agent, r, fd).await;
            }
            assert!(
                last.contains(expect),
                "after {n} requests: {last:?} lacks {expect:?}"
            );
            let err = task.await.unwrap().unwrap_err();
            assert!(matches!(err, InpodError::Protocol(_)), "{err}");
        }
    }

    /// A violation ends the connection, not the pods: nothing is stopped or retained when it drops; the client
    /// reconnects, and the new connection's snapshot is what reconciles (a pod it does not list is drained then).
    #[tokio::test]
    async fn a_violation_keeps_the_pods_and_the_next_snapshot_reconciles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ztunnel.sock");
        let listener = ambit_core::zds::ZdsListener::bind(&path).unwrap();
        let rec = Arc::new(Recorder::default());
        let (trigger, watcher) = ambit_core::drain::new();
        let client = tokio::spawn(run(path, rec.clone(), None, watcher));
        let snapshot = || req(Payload::SnapshotSent(SnapshotSent {}));
        let calls = || rec.calls.lock().unwrap().clone();

        let first = listener.accept().await.unwrap();
        let _ = first.recv_msg::<ZdsHello>().await.unwrap();
        assert_eq!(ask(&first, add("a"), true).await, "");
        assert_eq!(ask(&first, add("b"), true).await, "");
        assert_eq!(ask(&first, snapshot(), false).await, "");
        let e = ask(
            &first,
            req(Payload::Keep(KeepWorkload { uid: "a".into() })),
            false,
        )
        .await;
        assert!(e.contains("after the snapshot"), "{e}");
        // The client hung up ...
        assert!(matches!(first.recv().await, Err(ZdsError::Closed)));
        // ... and stopped nothing.
        assert_eq!(
            calls(),
            [
                "start a ns/pod-a",
                "start b ns/pod-b",
                "retain [\"a\", \"b\"]"
            ]
        );

        // A protocol violation of another kind (bytes that do not decode): the same.
        let second = listener.accept().await.unwrap();
        let _ = second.recv_msg::<ZdsHello>().await.unwrap();
        second.send(&[0xff, 0xff, 0xff], None).await.unwrap();
        assert!(matches!(second.recv().await, Err(ZdsError::Closed)));
        assert_eq!(calls().len(), 3, "{:?}", calls());

        // Reconnected: the node agent's new snapshot lists a only; b is drained now, by the snapshot.
        let third = listener.accept().await.unwrap();
        let _ = third.recv_msg::<ZdsHello>().await.unwrap();
        assert_eq!(
            ask(
                &third,
                req(Payload::Keep(KeepWorkload { uid: "a".into() })),
                false
            )
            .await,
            ""
        );
        assert_eq!(ask(&third, snapshot(), false).await, "");
        assert_eq!(
            calls(),
            [
                "start a ns/pod-a",
                "start b ns/pod-b",
                "retain [\"a\", \"b\"]",
                "retain [\"a\"]"
            ]
        );
        trigger.drain(Duration::from_secs(1)).await;
        client.await.unwrap();
    }

    #[tokio::test]
    async fn undecodable_bytes_end_the_connection() {
        let (agent, _rec, task) = start().await;
        agent.send(&[0xff, 0xff, 0xff], None).await.unwrap();
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, InpodError::Zds(ZdsError::Decode(_))), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_start_is_nacked_and_retried_on_the_same_connection() {
        let (agent, rec, task) = start().await;
        *rec.fail_starts.lock().unwrap() = 1;
        let e = ask(&agent, add("a"), true).await;
        assert!(e.starts_with("failure to start proxy: boom"), "{e}");
        // The connection stays; after the retry interval the proxy starts.
        tokio::time::sleep(START_RETRY + Duration::from_millis(100)).await;
        assert_eq!(
            ask(&agent, req(Payload::SnapshotSent(SnapshotSent {})), false).await,
            ""
        );
        assert_eq!(
            *rec.calls.lock().unwrap(),
            vec!["start a ns/pod-a", "start a ns/pod-a", "retain [\"a\"]"]
        );
        drop(agent);
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn snapshot_releases_readiness() {
        let (agent, zt) = ZdsSocket::pair().unwrap();
        let readiness = ambit_core::readiness::Readiness::new();
        let block = readiness.register_task("inpod snapshot");
        let rec = Arc::new(Recorder::default());
        let task = tokio::spawn(async move {
            let mut ready = Some(block);
            serve(&zt, &*rec, &mut ready).await
        });
        let _ = agent.recv_msg::<ZdsHello>().await.unwrap();
        assert!(!readiness.is_ready());
        assert_eq!(
            ask(&agent, req(Payload::SnapshotSent(SnapshotSent {})), false).await,
            ""
        );
        assert!(readiness.is_ready());
        drop(agent);
        task.await.unwrap().unwrap();
    }
}
