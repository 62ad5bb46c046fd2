//! Shared mode against a node agent that misbehaves on ZDS, with ztunnel's real pod proxies: a protocol violation
//! ends the ZDS connection but not the pods' proxies already running (upstream keeps them and reconciles on the
//! next connection's snapshot), and a descriptor that is not a network namespace is refused for that pod alone.
//!
//! Root only (network namespaces for the node and its pods): skipped loudly otherwise. Each pod's listeners are
//! on 127.0.0.1:15001/15006/15008 inside its own namespace; a pod's proxy is running while its 15008 accepts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use ambit_core::zds::{ZdsError, ZdsListener, ZdsSocket};
use ambit_proto::zds::{
    AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, WorkloadInfo, WorkloadRequest,
    WorkloadResponse, ZdsHello, workload_request::Payload, workload_response,
};
use ambit_ztunnel::app::Running;
use ambit_ztunnel::config::{LocalXds, ProxyMode};
use support::{WAIT, as_root_in_own_netns, config_dump, http_get};

const HBONE: u16 = 15008;

/// A shared-mode ztunnel (in the test's namespace, the node's) whose node agent is at `uds`.
async fn ztunnel(uds: &Path, ca_dir: &Path) -> Running {
    let ip = "127.0.0.1".parse().unwrap();
    let mut cfg = support::pod_config(
        ip,
        "node",
        LocalXds::Inline("workloads: []\n".into()),
        ca_dir,
    );
    cfg.proxy_mode = ProxyMode::Shared;
    cfg.proxy_workload_info = None;
    cfg.inpod_uds = uds.to_path_buf();
    cfg.socks5_enabled = false;
    cfg.outbound_addr = "127.0.0.1:15001".parse().unwrap();
    cfg.inbound_addr = "127.0.0.1:15006".parse().unwrap();
    cfg.hbone_addr = SocketAddr::new(ip, HBONE);
    support::start(cfg).await
}

/// A new network namespace with loopback up, as a pod's sandbox; the namespace lives while the file is open.
fn pod_netns() -> File {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        support::run(&["ip", "link", "set", "lo", "up"]);
        File::open("/proc/thread-self/ns/net").unwrap()
    })
    .join()
    .unwrap()
}

/// Whether something accepts on 127.0.0.1:`port` inside `netns`.
fn accepts(netns: &File, port: u16) -> bool {
    let ns = netns.try_clone().unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::net::TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(1),
        )
        .is_ok()
    })
    .join()
    .unwrap()
}

/// Polls `f` until it holds ([`WAIT`] at most).
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: never");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn add(uid: &str) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(Payload::Add(AddWorkload {
            uid: uid.into(),
            workload_info: Some(WorkloadInfo {
                name: format!("pod-{uid}"),
                namespace: "default".into(),
                service_account: "sa".into(),
            }),
        })),
    }
}

fn req(p: Payload) -> WorkloadRequest {
    WorkloadRequest { payload: Some(p) }
}

fn snapshot() -> WorkloadRequest {
    req(Payload::SnapshotSent(SnapshotSent {}))
}

/// Sends `r` (with `fd`) and returns the ack's error text.
async fn ask(conn: &ZdsSocket, r: &WorkloadRequest, fd: Option<BorrowedFd<'_>>) -> String {
    conn.send_msg(r, fd).await.unwrap();
    let (resp, _) = tokio::time::timeout(WAIT, conn.recv_msg::<WorkloadResponse>())
        .await
        .expect("no ack")
        .unwrap();
    match resp.payload {
        Some(workload_response::Payload::Ack(a)) => a.error,
        other => panic!("not an ack: {other:?}"),
    }
}

/// The next connection from ztunnel, past its hello.
async fn accept(agent: &ZdsListener) -> ZdsSocket {
    let conn = tokio::time::timeout(WAIT, agent.accept())
        .await
        .expect("ztunnel did not (re)connect")
        .unwrap();
    let (hello, _) = conn.recv_msg::<ZdsHello>().await.unwrap();
    assert_eq!(hello.version, ambit_proto::zds::Version::V1 as i32);
    conn
}

/// `workloadState` of the admin `/config_dump`: uid → state.
async fn states(zt: &Running) -> Vec<(String, String)> {
    let dump = config_dump(zt.addresses.admin).await;
    let mut out: Vec<(String, String)> = dump["workloadState"]
        .as_object()
        .unwrap_or_else(|| panic!("no workloadState: {dump}"))
        .iter()
        .map(|(uid, s)| (uid.clone(), s["state"].as_str().unwrap_or("?").to_owned()))
        .collect();
    out.sort();
    out
}

fn st(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// The value of one metric line (`name value`).
async fn metric(zt: &Running, name: &str) -> u64 {
    let m = http_get(zt.addresses.stats, "/metrics").await;
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{m}"))
}

#[test]
fn a_protocol_violation_ends_the_connection_but_not_the_running_pods() {
    as_root_in_own_netns(
        "a_protocol_violation_ends_the_connection_but_not_the_running_pods",
        || async {
            let dir = tempfile::tempdir().unwrap();
            let uds = dir.path().join("ztunnel.sock");
            let agent = ZdsListener::bind(&uds).unwrap();
            let ca_dir = tempfile::tempdir().unwrap();
            let zt = ztunnel(&uds, ca_dir.path()).await;
            let (a, b) = (pod_netns(), pod_netns());

            let first = accept(&agent).await;
            assert_eq!(ask(&first, &add("a"), Some(a.as_fd())).await, "");
            assert_eq!(ask(&first, &add("b"), Some(b.as_fd())).await, "");
            assert_eq!(ask(&first, &snapshot(), None).await, "");
            assert!(accepts(&a, HBONE) && accepts(&b, HBONE));
            assert_eq!(states(&zt).await, st(&[("a", "Up"), ("b", "Up")]));

            // A descriptor with a DelWorkload: NACKed, and ztunnel hangs up.
            let del = req(Payload::Del(DelWorkload { uid: "a".into() }));
            let e = ask(&first, &del, Some(a.as_fd())).await;
            assert!(e.contains("other than AddWorkload"), "{e}");
            let closed = tokio::time::timeout(WAIT, first.recv()).await.unwrap();
            assert!(matches!(closed, Err(ZdsError::Closed)), "{closed:?}");
            // The pods' proxies run on, the Del that came with the violation not applied.
            assert_eq!(states(&zt).await, st(&[("a", "Up"), ("b", "Up")]));
            assert!(accepts(&a, HBONE) && accepts(&b, HBONE));
            assert_eq!(
                metric(&zt, "workload_manager_proxies_stopped_total").await,
                0
            );

            // Bytes that are no message: the same.
            let second = accept(&agent).await;
            second.send(&[0xff, 0xff, 0xff], None).await.unwrap();
            let closed = tokio::time::timeout(WAIT, second.recv()).await.unwrap();
            assert!(matches!(closed, Err(ZdsError::Closed)), "{closed:?}");
            assert_eq!(states(&zt).await, st(&[("a", "Up"), ("b", "Up")]));
            assert!(accepts(&a, HBONE) && accepts(&b, HBONE));

            // Reconnected, the node agent hands a over again (same namespace: kept, not restarted) and its
            // snapshot no longer lists b: b drains now, by the snapshot.
            let third = accept(&agent).await;
            assert_eq!(ask(&third, &add("a"), Some(a.as_fd())).await, "");
            assert_eq!(ask(&third, &snapshot(), None).await, "");
            assert_eq!(states(&zt).await, st(&[("a", "Up")]));
            assert_eq!(
                metric(&zt, "workload_manager_proxies_started_total").await,
                2
            );
            assert_eq!(
                metric(&zt, "workload_manager_proxies_stopped_total").await,
                1
            );
            assert!(accepts(&a, HBONE));
            eventually("b's proxy stops accepting", || !accepts(&b, HBONE)).await;
            drop(third);
            zt.drain().await;
        },
    );
}

/// Descriptors that are not a network namespace, with what they are.
fn not_network_namespaces(dir: &Path) -> Vec<(&'static str, File)> {
    let file = dir.join("regular-file");
    std::fs::write(&file, b"not a namespace").unwrap();
    let (pipe, _write_end) = nix::unistd::pipe().unwrap();
    let (socket, _) = std::os::unix::net::UnixStream::pair().unwrap();
    vec![
        ("a regular file", File::open(&file).unwrap()),
        ("a directory", File::open(dir).unwrap()),
        ("a pipe", File::from(pipe)),
        ("a socket", File::from(std::os::fd::OwnedFd::from(socket))),
        ("/dev/null", File::open("/dev/null").unwrap()),
        ("a UTS namespace", File::open("/proc/self/ns/uts").unwrap()),
    ]
}

#[test]
fn a_descriptor_that_is_not_a_network_namespace_is_refused_for_that_pod_alone() {
    as_root_in_own_netns(
        "a_descriptor_that_is_not_a_network_namespace_is_refused_for_that_pod_alone",
        || async {
            let dir = tempfile::tempdir().unwrap();
            let uds = dir.path().join("ztunnel.sock");
            let agent = ZdsListener::bind(&uds).unwrap();
            let ca_dir = tempfile::tempdir().unwrap();
            let zt = ztunnel(&uds, ca_dir.path()).await;
            let (a, b) = (pod_netns(), pod_netns());
            let conn = accept(&agent).await;
            assert_eq!(ask(&conn, &add("a"), Some(a.as_fd())).await, "");

            let bad = not_network_namespaces(dir.path());
            let mut expected = vec![("a".to_owned(), "Up".to_owned())];
            for (i, (what, fd)) in bad.iter().enumerate() {
                let uid = format!("bad-{i}");
                let e = ask(&conn, &add(&uid), Some(fd.as_fd())).await;
                // Refused, saying what the descriptor is (before, "bind 127.0.0.1:15001: Invalid argument": the
                // first socket's setns failing), Pending, and retried like any proxy that failed to start.
                assert!(
                    e.starts_with(
                        "failure to start proxy: the descriptor passed is not a network namespace (it is "
                    ),
                    "{what}: {e}"
                );
                expected.push((uid, "Pending".to_owned()));
            }
            // The connection goes on: another pod starts, the snapshot is taken.
            assert_eq!(ask(&conn, &add("b"), Some(b.as_fd())).await, "");
            let keep = req(Payload::Keep(KeepWorkload { uid: "a".into() }));
            assert_eq!(ask(&conn, &keep, None).await, "");
            assert_eq!(ask(&conn, &snapshot(), None).await, "");
            expected.push(("b".to_owned(), "Up".to_owned()));
            expected.sort();
            assert_eq!(states(&zt).await, expected);
            assert!(accepts(&a, HBONE) && accepts(&b, HBONE));
            assert_eq!(metric(&zt, "workload_manager_active_proxy_count").await, 2);
            assert_eq!(
                metric(&zt, "workload_manager_pending_proxy_count").await,
                bad.len() as u64
            );
            assert_eq!(
                metric(&zt, "workload_manager_proxies_started_total").await,
                2
            );

            // Deleting the refused pods clears them; the others are untouched.
            for i in 0..bad.len() {
                let del = req(Payload::Del(DelWorkload {
                    uid: format!("bad-{i}"),
                }));
                assert_eq!(ask(&conn, &del, None).await, "");
            }
            assert_eq!(states(&zt).await, st(&[("a", "Up"), ("b", "Up")]));
            assert_eq!(metric(&zt, "workload_manager_pending_proxy_count").await, 0);
            assert!(accepts(&a, HBONE) && accepts(&b, HBONE));
            drop(conn);
            zt.drain().await;
        },
    );
}
