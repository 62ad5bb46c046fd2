//! The ZDS server (spec 4.1): hands this node's captured pods to its ztunnel.
//!
//! One ztunnel at a time; a new connection replaces the old one (a ztunnel upgrade: the new process connects while
//! the old still serves). The replaced connection is kept open but silent, so the old ztunnel keeps its pods'
//! listeners beside the new one's (both `SO_REUSEPORT`) until it is told to stop, rather than seeing a closed
//! connection, reconnecting and taking the pods back; when the newest ztunnel leaves, the kept one is closed too,
//! so it reconnects and gets a fresh snapshot. Per connection: `ZdsHello`, then the snapshot
//! (`AddWorkload` with the pod's namespace descriptor, or `KeepWorkload` when the namespace file cannot be opened),
//! `SnapshotSent`, then `AddWorkload`/`DelWorkload` as pods come and go. One message in flight; each waits at
//! most 5 s for its ack. The pods known survive reconnections: a new ztunnel gets them all in its snapshot.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use ambit_core::drain::DrainWatcher;
use ambit_core::zds::{ZdsError, ZdsListener, ZdsSocket};
use ambit_proto::zds::{
    AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadInfo, WorkloadRequest,
    WorkloadResponse, ZdsHello, workload_request::Payload, workload_response,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// A pod the node agent hands to ztunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// The pod's network-namespace file (`/var/run/netns/<x>` or `/proc/<pid>/ns/net`).
    pub netns: PathBuf,
}

/// What became of a request: acknowledged by ztunnel (`Ok`), refused (`Err(reason)`), or `Ok` with no ztunnel
/// connected (it gets the pod in its snapshot).
pub type Reply = Result<(), String>;

enum Event {
    Add(PodInfo, oneshot::Sender<Reply>),
    Remove(String, oneshot::Sender<Reply>),
}

/// Handle to a running server.
#[derive(Clone)]
pub struct ZdsServer {
    tx: mpsc::UnboundedSender<Event>,
}

impl ZdsServer {
    /// Listens on `path` and serves until `drain` fires.
    pub fn start(path: &std::path::Path, drain: DrainWatcher) -> std::io::Result<ZdsServer> {
        let listener = ZdsListener::bind(path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve(listener, rx, drain));
        Ok(ZdsServer { tx })
    }

    /// Registers a pod and, with a ztunnel connected, waits for its ack.
    pub async fn add(&self, pod: PodInfo) -> Reply {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Event::Add(pod, tx))
            .map_err(|_| "zds server stopped".to_owned())?;
        rx.await.map_err(|_| "zds server stopped".to_owned())?
    }

    /// Forgets a pod and, with a ztunnel connected, waits until ztunnel has stopped serving it.
    pub async fn remove(&self, uid: &str) -> Reply {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Event::Remove(uid.to_owned(), tx))
            .map_err(|_| "zds server stopped".to_owned())?;
        rx.await.map_err(|_| "zds server stopped".to_owned())?
    }
}

async fn serve(
    listener: ZdsListener,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut drain: DrainWatcher,
) {
    let mut pods: BTreeMap<String, PodInfo> = BTreeMap::new();
    let mut next: Option<ZdsSocket> = None;
    // The connection the current one replaced: open, not written to (see the module doc).
    let mut replaced: Option<ZdsSocket> = None;
    loop {
        let sock = match next.take() {
            Some(s) => s,
            None => loop {
                tokio::select! {
                    _ = drain.signaled() => return,
                    ev = events.recv() => match ev {
                        // Not connected: remember, and say so.
                        Some(Event::Add(p, reply)) => {
                            pods.insert(p.uid.clone(), p);
                            let _ = reply.send(Ok(()));
                        }
                        Some(Event::Remove(uid, reply)) => {
                            pods.remove(&uid);
                            let _ = reply.send(Ok(()));
                        }
                        None => return,
                    },
                    s = listener.accept() => match s {
                        Ok(s) => break s,
                        Err(e) => {
                            warn!(error = %e, "zds accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                }
            },
        };
        info!("ztunnel connected");
        match session(&sock, &listener, &mut pods, &mut events, &mut drain).await {
            Ok(Some(replacement)) => {
                info!(
                    "a new ztunnel connection replaces the current one; the old one is kept open until the new one leaves"
                );
                next = Some(replacement);
                // An older kept connection (a second upgrade before the first finished) is closed now.
                drop(replaced.replace(sock));
            }
            Ok(None) => {
                info!("ztunnel disconnected");
                drop(replaced.take());
            }
            Err(e) => {
                warn!(error = %e, "zds session ended");
                drop(replaced.take());
            }
        }
    }
}

/// One ztunnel connection. Returns a replacing connection when one arrives, `None` when ztunnel leaves.
async fn session(
    sock: &ZdsSocket,
    listener: &ZdsListener,
    pods: &mut BTreeMap<String, PodInfo>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    drain: &mut DrainWatcher,
) -> Result<Option<ZdsSocket>, ZdsError> {
    let (hello, _) = tokio::time::timeout(ACK_TIMEOUT, sock.recv_msg::<ZdsHello>())
        .await
        .map_err(|_| timeout("hello"))??;
    if hello.version != Version::V1 as i32 {
        warn!(
            version = hello.version,
            "ztunnel speaks an unknown ZDS version; trying V1 anyway"
        );
    }
    for pod in pods.values() {
        match open_netns(pod) {
            Some(fd) => {
                if let Err(e) = request(sock, add(pod), Some(&fd)).await? {
                    warn!(pod.name = %pod.name, error = %e, "ztunnel refused a pod of the snapshot");
                }
            }
            None => {
                let keep = Payload::Keep(KeepWorkload {
                    uid: pod.uid.clone(),
                });
                let _ = request(sock, keep, None).await?;
            }
        }
    }
    if let Err(e) = request(sock, Payload::SnapshotSent(SnapshotSent {}), None).await? {
        warn!(error = %e, "ztunnel refused the snapshot");
    }
    info!(pods = pods.len(), "snapshot sent");
    loop {
        tokio::select! {
            _ = drain.signaled() => return Ok(None),
            s = listener.accept() => {
                if let Ok(s) = s {
                    return Ok(Some(s));
                }
            }
            // ztunnel never speaks unprompted: readable means it hung up (or broke the protocol).
            r = sock.recv() => {
                return match r {
                    Err(ZdsError::Closed) => Ok(None),
                    Err(e) => Err(e),
                    Ok(_) => Err(ZdsError::Io(std::io::Error::other("unsolicited message from ztunnel"))),
                };
            }
            ev = events.recv() => match ev {
                None => return Ok(None),
                Some(Event::Add(pod, reply)) => {
                    pods.insert(pod.uid.clone(), pod.clone());
                    let result = match open_netns(&pod) {
                        Some(fd) => request(sock, add(&pod), Some(&fd)).await?,
                        None => Err(format!("cannot open {}", pod.netns.display())),
                    };
                    if let Err(e) = &result {
                        warn!(pod.name = %pod.name, error = %e, "ztunnel did not take the pod (it retries)");
                    }
                    let _ = reply.send(result);
                }
                Some(Event::Remove(uid, reply)) => {
                    let result = if pods.remove(&uid).is_some() {
                        request(sock, Payload::Del(DelWorkload { uid }), None).await?
                    } else {
                        Ok(())
                    };
                    let _ = reply.send(result);
                }
            },
        }
    }
}

fn timeout(what: &str) -> ZdsError {
    ZdsError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no {what} from ztunnel within {ACK_TIMEOUT:?}"),
    ))
}

fn add(pod: &PodInfo) -> Payload {
    Payload::Add(AddWorkload {
        uid: pod.uid.clone(),
        workload_info: Some(WorkloadInfo {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
        }),
    })
}

fn open_netns(pod: &PodInfo) -> Option<OwnedFd> {
    match std::fs::File::open(&pod.netns) {
        Ok(f) => Some(f.into()),
        Err(e) => {
            debug!(pod.name = %pod.name, netns = %pod.netns.display(), error = %e, "namespace not available");
            None
        }
    }
}

/// Sends one request and waits for its ack: `Ok(Ok(()))` accepted, `Ok(Err(reason))` NACKed.
async fn request(
    sock: &ZdsSocket,
    payload: Payload,
    fd: Option<&OwnedFd>,
) -> Result<Reply, ZdsError> {
    let req = WorkloadRequest {
        payload: Some(payload),
    };
    sock.send_msg(&req, fd.map(|f| f.as_fd())).await?;
    let (resp, _) = tokio::time::timeout(ACK_TIMEOUT, sock.recv_msg::<WorkloadResponse>())
        .await
        .map_err(|_| timeout("ack"))??;
    Ok(match resp.payload {
        Some(workload_response::Payload::Ack(a)) if a.error.is_empty() => Ok(()),
        Some(workload_response::Payload::Ack(a)) => Err(a.error),
        None => Err("response without an ack".into()),
    })
}
