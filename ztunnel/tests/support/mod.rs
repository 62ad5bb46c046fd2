//! What the ztunnel integration tests share: a dedicated-mode ztunnel "in" a pod on a loopback address with
//! local config and a local CA directory, readiness, an echo application, SOCKS5 and HTTP helpers, an mTLS HBONE
//! client with a certificate from the same CA, and for the root-only tests a network namespace of their own with
//! iptables DNAT rules.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::hbone::{self, H2Config, HboneClient, HboneError, PoolKey};
use ambit_core::tls::{TlsBackend, TlsConnector, WorkloadCert};
use ambit_ztunnel::app::{self, Running};
use ambit_ztunnel::config::{Config, LocalXds, ProxyMode, WorkloadInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Generous: the machine is small and shared.
pub const WAIT: Duration = Duration::from_secs(30);

/// A dedicated-mode ztunnel for the pod `default/<name>` (service account `name`) at `ip`: config from `xds`,
/// certificates from the local CA in `ca_dir`, HBONE on `ip:15008`, SOCKS5 on, every other listener on a free port,
/// no packet mark.
pub fn pod_config(ip: IpAddr, name: &str, xds: LocalXds, ca_dir: &Path) -> Config {
    let mut cfg = Config::for_tests();
    cfg.proxy_mode = ProxyMode::Dedicated;
    cfg.proxy_workload_info = Some(WorkloadInfo {
        namespace: "default".into(),
        name: name.into(),
        service_account: name.into(),
    });
    cfg.local_xds = Some(xds);
    cfg.xds_address = None;
    cfg.ca_address = None;
    cfg.fake_ca = false;
    cfg.local_ca_dir = Some(ca_dir.to_path_buf());
    cfg.socks5_enabled = true;
    cfg.outbound_addr = SocketAddr::new(ip, 0);
    cfg.inbound_addr = SocketAddr::new(ip, 0);
    cfg.hbone_addr = SocketAddr::new(ip, 15008);
    cfg.socks5_addr = SocketAddr::new(ip, 0);
    cfg.admin_addr = "127.0.0.1:0".parse().unwrap();
    cfg.stats_addr = SocketAddr::new(ip, 0);
    cfg.readiness_addr = SocketAddr::new(ip, 0);
    cfg.packet_mark = None;
    cfg
}

/// Starts a ztunnel with `cfg` (installing the TLS provider first), logging nowhere.
pub async fn start(cfg: Config) -> Running {
    ambit_core::tls::install_default_provider();
    app::start(cfg, ambit_core::logging::LogHandle::noop(), None)
        .await
        .unwrap()
}

/// Waits until `r` is ready ([`WAIT`] at most).
pub async fn wait_ready(r: &Running) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !r.readiness.is_ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready: {:?}",
            r.readiness.pending()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An echo application listening on `addr` (port 0: a free one); its address.
pub async fn echo(addr: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind(addr).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends `payload` and expects it back within [`WAIT`].
pub async fn round_trip(s: &mut (impl AsyncRead + AsyncWrite + Unpin), payload: &[u8]) {
    s.write_all(payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .expect("echo timed out")
        .expect("echo failed");
    assert_eq!(back, payload);
}

/// The SOCKS5 exchange (no authentication, CONNECT to the IPv4 `dst`) on a connection to a ztunnel's SOCKS5
/// listener; asserts that the reply is a success.
pub async fn socks5_handshake(s: &mut TcpStream, dst: SocketAddr) -> std::io::Result<()> {
    s.write_all(&[5, 1, 0]).await?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await?;
    let IpAddr::V4(v4) = dst.ip() else {
        panic!("v4 only")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.octets());
    req.extend_from_slice(&dst.port().to_be_bytes());
    s.write_all(&req).await?;
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).await?;
    assert_eq!(rep[1], 0, "socks5 reply");
    Ok(())
}

/// The whole HTTP/1.1 response (head and body) to `GET path`.
/// The admin `/config_dump` at `addr`, as JSON.
pub async fn config_dump(addr: SocketAddr) -> serde_json::Value {
    let out = http_get(addr, "/config_dump").await;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"))
}

pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

// ----- an HBONE client -----

/// Dials the pool key's address (from `src` when given, else any local address) and does the mTLS handshake with
/// `cert`.
pub struct DirectConnector {
    pub cert: Arc<WorkloadCert>,
    pub src: Option<IpAddr>,
}

#[async_trait::async_trait]
impl hbone::Connect for DirectConnector {
    type Io = ambit_core::tls::ClientTlsStream<TcpStream>;
    async fn connect(&self, key: &PoolKey) -> Result<Self::Io, HboneError> {
        let t = |e: std::io::Error| HboneError::Transport(e.to_string());
        let tcp = match self.src {
            Some(src) => {
                let sock = TcpSocket::new_v4().map_err(t)?;
                sock.bind(SocketAddr::new(src, 0)).map_err(t)?;
                sock.connect(key.dst).await.map_err(t)?
            }
            None => TcpStream::connect(key.dst).await.map_err(t)?,
        };
        let c = TlsConnector::new(self.cert.clone(), TlsBackend::default())
            .map_err(|e| HboneError::Tls(e.to_string()))?;
        c.connect(tcp, &key.dst_identities)
            .await
            .map_err(|e| HboneError::Tls(e.to_string()))
    }
}

/// An HBONE client with its own certificate for `id` from the CA in `ca_dir`.
pub fn hbone_client(
    ca_dir: &Path,
    id: &Identity,
) -> (HboneClient<DirectConnector>, Arc<WorkloadCert>) {
    let ca = LocalCa::load_or_create(ca_dir, "cluster.local").unwrap();
    let cert = Arc::new(ca.issue_workload(id, Duration::from_secs(3600)).unwrap());
    let client = HboneClient::new(
        Arc::new(H2Config::default()),
        DirectConnector {
            cert: cert.clone(),
            src: None,
        },
    );
    (client, cert)
}

/// An HBONE CONNECT request for `authority` (`ip:port`).
pub fn connect_request(authority: &str) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .body(())
        .unwrap()
}

// ----- root only: a network namespace of the test's own -----

/// Whether the effective uid is 0 (from `/proc/self/status`: `Uid: real effective saved fs`).
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// Runs `cmd`; panics with its standard error when it fails.
pub fn run(cmd: &[&str]) {
    let out = std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `test` (named `name`) on a thread of its own in a new network namespace with loopback up, on a two-worker
/// runtime; a panic in it fails the caller. Not root: says loudly that `name` SKIPPED and runs nothing.
/// Namespaces are per thread: every thread the runtime (and a ztunnel started in it) spawns from that one inherits
/// the namespace.
pub fn as_root_in_own_netns<F>(name: &str, test: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    if !is_root() {
        eprintln!("SKIPPED: {name} needs root (netns + iptables)");
        return;
    }
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        run(&["ip", "link", "set", "lo", "up"]);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(test());
    })
    .join()
    .unwrap();
}

/// An iptables rule (nat OUTPUT) that sends locally originated TCP to `dst` (from `src` only, when given) to `to`.
pub fn dnat(src: Option<IpAddr>, dst: SocketAddr, to: SocketAddr) {
    let (src, dst_ip, dst_port, to) = (
        src.map(|s| s.to_string()),
        dst.ip().to_string(),
        dst.port().to_string(),
        to.to_string(),
    );
    let mut cmd = vec!["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp"];
    if let Some(src) = &src {
        cmd.extend(["-s", src]);
    }
    cmd.extend(["-d", &dst_ip, "--dport", &dst_port]);
    cmd.extend(["-j", "DNAT", "--to-destination", &to]);
    run(&cmd);
}
