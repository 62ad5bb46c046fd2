//! Inbound behaviour of a whole ztunnel, and what it does with clients that stall in a handshake. Live inbound
//! connections are re-checked when authorization changes, and closed once denied: HBONE streams and plaintext
//! connections on 15006 on a policy change, and on a workload update (the policies that select a workload travel
//! with its Address, which may arrive after the policy).
//! PROXY-protocol application tunnels are dialled on loopback (`LOCALHOST_APP_TUNNEL`).
//!
//! One server ztunnel per test on 127.0.<net>.3 (dedicated mode, local config), a real mTLS HBONE client with a
//! certificate from the same local CA, and an echo application. The plaintext test needs `SO_ORIGINAL_DST`, so it
//! runs as root in a network namespace of its own with an iptables DNAT rule, and says loudly when it skipped; so
//! does the test of `SO_ORIGINAL_DST` itself (`proxy::socket::original_dst`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, SocketAddr};

use ambit_core::Identity;
use ambit_core::hbone::{self, HboneError, PoolKey};
use ambit_ztunnel::app::Running;
use ambit_ztunnel::config::{Config, LocalXds};
use ambit_ztunnel::localconfig;
use ambit_ztunnel::proxy::socket::{SocketFactory, original_dst};
use support::{WAIT, echo, round_trip};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;

const SERVER_UID: &str = "cluster1//v1/Pod/default/server";

fn world(net: u8, tunnel_port: Option<u16>) -> String {
    // With an application tunnel, the server is also the endpoint of a service (an IPv6 VIP listed first).
    let tunnel = tunnel_port
        .map(|p| {
            format!(
                "  applicationTunnel: {{protocol: PROXY, port: {p}}}\n  services: {{default/app.default.svc.cluster.local: {{80: 8080}}}}\nservices:\n- {{name: app, namespace: default, hostname: app.default.svc.cluster.local, vips: [\"/fd00:96::{net}\", /10.96.{net}.10], ports: {{80: 8080}}}}\n"
            )
        })
        .unwrap_or_default();
    format!(
        r#"
workloads:
- uid: {SERVER_UID}
  name: server
  namespace: default
  serviceAccount: server
  trustDomain: cluster.local
  clusterId: cluster1
  workloadIps: [127.0.{net}.3]
  protocol: HBONE
{tunnel}"#
    )
}

fn config(net: u8, tunnel_port: Option<u16>, ca_dir: &std::path::Path) -> Config {
    let ip: IpAddr = format!("127.0.{net}.3").parse().unwrap();
    let mut cfg = support::pod_config(
        ip,
        "server",
        LocalXds::Inline(world(net, tunnel_port)),
        ca_dir,
    );
    cfg.socks5_enabled = false;
    cfg
}

struct Server {
    zt: Running,
    ip: IpAddr,
    ca_dir: tempfile::TempDir,
}

async fn server(net: u8) -> Server {
    server_with(net, |_| {}).await
}

async fn server_with(net: u8, edit: impl FnOnce(&mut Config)) -> Server {
    let ca_dir = tempfile::tempdir().unwrap();
    let mut cfg = config(net, None, ca_dir.path());
    edit(&mut cfg);
    let zt = support::start(cfg).await;
    support::wait_ready(&zt).await;
    Server {
        zt,
        ip: format!("127.0.{net}.3").parse().unwrap(),
        ca_dir,
    }
}

/// Adds (or replaces) the policies of `yaml` (the local config format) through the state's writer.
fn add_policies(zt: &Running, yaml: &str) {
    for p in localconfig::parse(yaml).unwrap().policies {
        zt.state.insert_policy(p);
    }
}

/// A DENY of everything reaching the server workload, with or without a peer identity.
const DENY_ALL: &str = r#"
policies:
- name: deny-all
  namespace: default
  scope: Namespace
  action: Deny
  rules: [[]]
"#;

/// A DENY of the client identity that applies only to workloads that name it (WORKLOAD_SELECTOR scope).
const DENY_CLIENT_SELECTED: &str = r#"
policies:
- name: deny-client
  namespace: default
  scope: WorkloadSelector
  action: Deny
  rules:
  - - - principals: [{Exact: "cluster.local/ns/default/sa/client"}]
"#;

/// The connection is closed by the other side (EOF or reset), not left open.
async fn assert_closed(s: &mut (impl AsyncRead + AsyncWrite + Unpin)) {
    let _ = s.write_all(b"anyone?").await;
    let mut buf = [0u8; 16];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            // Bytes the echo sent back before the close was decided; keep reading until the end.
            Ok(Ok(_)) => continue,
            Err(_) => {
                panic!("the connection is still open after an authorization change denied it")
            }
        }
    }
}

// ----- an HBONE client -----

/// Opens an HBONE stream as `default/client` to `target` through the server's ztunnel.
async fn hbone_stream(s: &Server, target: SocketAddr) -> hbone::H2Stream {
    try_hbone_stream(s, target).await.expect("allowed stream")
}

async fn try_hbone_stream(s: &Server, target: SocketAddr) -> Result<hbone::H2Stream, HboneError> {
    try_hbone_stream_to(s, &target.to_string()).await
}

/// An HBONE stream to an authority given as text (a hostname and port, say).
async fn hbone_stream_to(s: &Server, authority: &str) -> hbone::H2Stream {
    try_hbone_stream_to(s, authority)
        .await
        .expect("allowed stream")
}

/// The pool key of a `default/client` stream to the server's HBONE port.
fn pool_key(s: &Server) -> PoolKey {
    PoolKey {
        src_identity: Identity::new("cluster.local", "default", "client"),
        dst_identities: vec![Identity::new("cluster.local", "default", "server")],
        dst: SocketAddr::new(s.ip, 15008),
        src_ip: "127.0.0.1".parse().unwrap(),
    }
}

async fn try_hbone_stream_to(s: &Server, authority: &str) -> Result<hbone::H2Stream, HboneError> {
    let key = pool_key(s);
    let (client, _) = support::hbone_client(s.ca_dir.path(), &key.src_identity);
    let req = support::connect_request(authority);
    let (stream, resp) = client.connect(key, req).await?;
    assert_eq!(resp.status, http::StatusCode::OK);
    Ok(stream)
}

// ----- the tests -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_stream_is_closed_when_a_policy_change_denies_it() {
    let s = server(81).await;
    let target = echo(SocketAddr::new(s.ip, 0)).await;
    let mut stream = hbone_stream(&s, target).await;
    round_trip(&mut stream, b"before").await;
    // A policy that does not apply to the server (scope WORKLOAD_SELECTOR, not named by it) changes nothing.
    add_policies(&s.zt, DENY_CLIENT_SELECTED);
    round_trip(&mut stream, b"still allowed").await;
    add_policies(&s.zt, DENY_ALL);
    assert_closed(&mut stream).await;
    s.zt.drain().await;
}

/// The policy arrives first and selects nothing yet; the server's Address naming it arrives later and closes the
/// live stream. A workload removed and added back (a new workload, as after a resync) is re-checked too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_stream_is_closed_when_a_workload_update_denies_it() {
    let s = server(82).await;
    let target = echo(SocketAddr::new(s.ip, 0)).await;
    add_policies(&s.zt, DENY_CLIENT_SELECTED);
    let original = s.zt.state.workload_by_uid(SERVER_UID).unwrap();
    let mut selected = original.as_ref().clone();
    selected.authorization_policies = vec!["default/deny-client".into()];

    // An update of the workload's policy list.
    let mut first = hbone_stream(&s, target).await;
    round_trip(&mut first, b"before").await;
    s.zt.state.insert_workload(selected.clone());
    assert_closed(&mut first).await;

    // Back to no policy: allowed again. Then removed and added back with the policy.
    s.zt.state.insert_workload(original.as_ref().clone());
    let mut second = hbone_stream(&s, target).await;
    round_trip(&mut second, b"allowed again").await;
    s.zt.state.remove_address(SERVER_UID);
    s.zt.state.insert_workload(selected);
    assert_closed(&mut second).await;
    s.zt.drain().await;
}

/// Plaintext inbound (15006) needs the connection's original destination, so a DNAT rule sends the client's
/// connection to the application's address to ztunnel's inbound listener, in a network namespace of this test's
/// own.
#[test]
fn plaintext_connection_is_closed_when_a_policy_change_denies_it() {
    support::as_root_in_own_netns(
        "plaintext_connection_is_closed_when_a_policy_change_denies_it",
        || plaintext_recheck(83),
    );
}

async fn plaintext_recheck(net: u8) {
    let s = server(net).await;
    let target = echo(SocketAddr::new(s.ip, 0)).await;
    let client_ip: IpAddr = format!("127.0.{net}.2").parse().unwrap();
    // Only the client's connections are redirected: ztunnel's own to the application go straight through.
    let inbound = s.zt.addresses.inbound;
    support::dnat(Some(client_ip), target, inbound);
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(client_ip, 0)).unwrap();
    let mut conn = sock.connect(target).await.unwrap();
    round_trip(&mut conn, b"before").await;
    let live = s.zt.connections.clone().unwrap();
    let d = live.dump();
    assert_eq!(
        d.inbound.len(),
        1,
        "the plaintext connection is live: {d:?}"
    );
    assert_eq!(d.inbound[0].actual_dst, target);
    add_policies(&s.zt, DENY_ALL);
    assert_closed(&mut conn).await;
    s.zt.drain().await;
}

/// `SO_ORIGINAL_DST` of a DNATed connection is the address the client dialled, and that of a connection that was
/// not redirected (conntrack on, as it is wherever redirection rules exist) is the address it reached. Needs root:
/// a network namespace of its own with an iptables DNAT rule.
#[test]
fn original_dst_is_the_address_dialled_before_redirection() {
    support::as_root_in_own_netns(
        "original_dst_is_the_address_dialled_before_redirection",
        || async {
            let f = SocketFactory::default();
            let l = f
                .listen("127.0.0.1:0".parse().unwrap(), false, false)
                .unwrap();
            let listening = l.local_addr().unwrap();
            let dialled: SocketAddr = "127.0.0.7:80".parse().unwrap();
            support::dnat(None, dialled, listening);
            let _redirected = f.connect(dialled, None).await.unwrap();
            let (s, _) = l.accept().await.unwrap();
            assert_eq!(s.local_addr().unwrap(), listening);
            assert_eq!(original_dst(&s).unwrap(), dialled);

            let _direct = f.connect(listening, None).await.unwrap();
            let (s, _) = l.accept().await.unwrap();
            assert_eq!(original_dst(&s).unwrap(), listening);
        },
    );
}

// ----- application tunnels -----

/// A PROXY v2 header as the application reads it (decoded here from the spec, independently of ztunnel's writer).
#[derive(Debug, PartialEq)]
struct ProxyHeader {
    src: SocketAddr,
    dst: SocketAddr,
    identity: Option<String>,
    hostname: Option<String>,
}

async fn read_proxy_header(s: &mut tokio::net::TcpStream) -> Result<ProxyHeader, String> {
    let mut fixed = [0u8; 16];
    s.read_exact(&mut fixed).await.map_err(|e| e.to_string())?;
    if fixed[..12] != *b"\r\n\r\n\0\r\nQUIT\n" || fixed[12] != 0x21 {
        return Err(format!("not a PROXY v2 PROXY header: {fixed:02x?}"));
    }
    let mut body = vec![0u8; usize::from(u16::from_be_bytes([fixed[14], fixed[15]]))];
    s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    let (src, dst, mut rest) = match fixed[13] {
        0x11 => {
            let ip = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&body[o..o + 4]).unwrap());
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            (
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
                &body[12..],
            )
        }
        0x21 => {
            let ip = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&body[o..o + 16]).unwrap());
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            (
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
                &body[36..],
            )
        }
        other => return Err(format!("family/transport {other:#x}")),
    };
    let (mut identity, mut hostname) = (None, None);
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        let value = String::from_utf8(rest[3..3 + len].to_vec()).map_err(|e| e.to_string())?;
        match rest[0] {
            0xD0 => identity = Some(value),
            0xD1 => hostname = Some(value),
            _ => {}
        }
        rest = &rest[3 + len..];
    }
    Ok(ProxyHeader {
        src,
        dst,
        identity,
        hostname,
    })
}

/// An application behind a PROXY tunnel: reads the header, hands it to the test, then echoes.
async fn proxy_app(
    addr: SocketAddr,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<ProxyHeader, String>>,
) {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let header = read_proxy_header(&mut s).await;
                let ok = header.is_ok();
                let _ = tx.send(header);
                if ok {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    (addr, rx)
}

/// A workload with a PROXY-protocol application tunnel is reached on loopback at the tunnel port by default
/// (upstream's `LOCALHOST_APP_TUNNEL=true`), and at its pod address with the setting off. The application here
/// listens on loopback only, so only the first can reach it. What it reads first is a PROXY v2 header: the HBONE
/// peer as source, the authority (or, for a hostname, the service's IPv4 VIP with the port asked for) as
/// destination, the client's SPIFFE identity and, for a hostname, the hostname.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_app_tunnel_is_dialled_on_loopback_with_a_proxy_v2_header() {
    for (net, localhost) in [(84, true), (85, false)] {
        let (app, mut headers) = proxy_app("127.0.0.1:0".parse().unwrap()).await;
        let s = server_with(net, |cfg| {
            cfg.localhost_app_tunnel = localhost;
            cfg.local_xds = Some(LocalXds::Inline(world(net, Some(app.port()))));
        })
        .await;
        // The client addresses the pod; nothing listens on the pod address at that port.
        let target = SocketAddr::new(s.ip, app.port());
        let live = s.zt.connections.clone().unwrap();
        if localhost {
            let identity = Some("spiffe://cluster.local/ns/default/sa/client".to_owned());
            let mut stream = hbone_stream(&s, target).await;
            round_trip(&mut stream, b"through the tunnel").await;
            let d = live.dump();
            assert_eq!(d.inbound.len(), 1, "{d:?}");
            assert_eq!(d.inbound[0].actual_dst, app, "dialled on loopback");
            let header = headers.recv().await.unwrap().unwrap();
            let want = ProxyHeader {
                src: d.inbound[0].src,
                dst: target,
                identity: identity.clone(),
                hostname: None,
            };
            assert_eq!(header, want);
            drop(stream);
            // By hostname: the service's IPv4 VIP (listed after an IPv6 one), the port asked for, the hostname.
            let host = "app.default.svc.cluster.local";
            let mut stream = hbone_stream_to(&s, &format!("{host}:80")).await;
            round_trip(&mut stream, b"by hostname").await;
            let header = headers.recv().await.unwrap().unwrap();
            assert_eq!(header.src.ip(), want.src.ip(), "{header:?}");
            let want = ProxyHeader {
                src: header.src,
                dst: format!("10.96.{net}.10:80").parse().unwrap(),
                identity,
                hostname: Some(host.to_owned()),
            };
            assert_eq!(header, want);
        } else {
            let r = try_hbone_stream(&s, target).await;
            assert!(
                matches!(r, Err(HboneError::Status(st)) if st == http::StatusCode::SERVICE_UNAVAILABLE),
                "with LOCALHOST_APP_TUNNEL=false the pod address is dialled (and refused here): {:?}",
                r.map(|_| ())
            );
        }
        s.zt.drain().await;
    }
}

/// Slowloris on the HBONE port: connections that stall in the TLS handshake (nothing sent, or half a record) or
/// after it (mTLS done, no HTTP/2 preface) are closed once the handshake timeout passes, and while they are held
/// a real stream still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_closed_and_do_not_hold_up_others() {
    let timeout = std::time::Duration::from_millis(800);
    let s = server_with(86, |c| c.handshake_timeout = timeout).await;
    let target = echo(SocketAddr::new(s.ip, 0)).await;
    let hbone = SocketAddr::new(s.ip, 15008);
    let mut stalled = Vec::new();
    for i in 0..60 {
        let mut c = tokio::net::TcpStream::connect(hbone).await.unwrap();
        if i % 2 == 1 {
            // The first 5 bytes of a TLS record announcing a 512-byte ClientHello that never comes.
            c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
        }
        stalled.push(c);
    }
    let client_id = Identity::new("cluster.local", "default", "client");
    let (_, cert) = support::hbone_client(s.ca_dir.path(), &client_id);
    let mut silent_after_tls = Vec::new();
    for _ in 0..10 {
        let tcp = tokio::net::TcpStream::connect(hbone).await.unwrap();
        let tls = ambit_core::tls::TlsConnector::new(cert.clone(), Default::default())
            .unwrap()
            .connect(tcp, &[Identity::new("cluster.local", "default", "server")])
            .await
            .expect("mTLS with the server's ztunnel");
        silent_after_tls.push(tls);
    }
    // Held open, they slow nothing else down.
    let mut stream = hbone_stream(&s, target).await;
    round_trip(&mut stream, b"served beside the stalled ones").await;
    let started = std::time::Instant::now();
    for c in &mut stalled {
        assert_closed_by_peer(c).await;
    }
    for c in &mut silent_after_tls {
        assert_closed_by_peer(c).await;
    }
    assert!(
        started.elapsed() >= timeout / 2,
        "closed before the handshake timeout, so not by it"
    );
    // The stream opened while they were held is untouched.
    round_trip(&mut stream, b"still served").await;
    s.zt.drain().await;
}

/// The peer closes the connection (EOF or reset) within [`WAIT`] without our sending anything.
async fn assert_closed_by_peer(s: &mut (impl AsyncRead + Unpin)) {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            // TLS session tickets or the server's HTTP/2 SETTINGS: read on to the end.
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a stalled connection is still open after {WAIT:?}"),
        }
    }
}

/// Slowloris on the SOCKS5 port: a client that connects and sends nothing, or only the greeting, is closed once
/// the handshake timeout passes, and a real SOCKS5 client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_socks5_clients_are_closed() {
    let timeout = std::time::Duration::from_millis(800);
    let s = server_with(87, |c| {
        c.socks5_enabled = true;
        c.handshake_timeout = timeout;
    })
    .await;
    let socks = s.zt.addresses.socks5.expect("socks5 listener");
    let mut stalled = Vec::new();
    for i in 0..20 {
        let mut c = tokio::net::TcpStream::connect(socks).await.unwrap();
        if i % 2 == 1 {
            // Version 5, one method, no authentication: then nothing.
            c.write_all(&[5, 1, 0]).await.unwrap();
        }
        stalled.push(c);
    }
    // Not a mesh address: SOCKS5 dials it directly; served beside the stalled clients.
    let outside = echo("127.0.87.9:0".parse().unwrap()).await;
    let mut c = tokio::net::TcpStream::connect(socks).await.unwrap();
    support::socks5_handshake(&mut c, outside).await.unwrap();
    round_trip(&mut c, b"served").await;
    for c in &mut stalled {
        assert_closed_by_peer(c).await;
    }
    round_trip(&mut c, b"still served").await;
    s.zt.drain().await;
}

// ----- bad client certificates at 15008 -----

/// A certificate for `sa` in `td` from the CA in `ca_dir` (the server ztunnel's), valid over
/// `[now + from, now + until]`.
fn cert_valid(
    ca_dir: &std::path::Path,
    td: &str,
    from: i64,
    until: i64,
) -> std::sync::Arc<ambit_core::tls::WorkloadCert> {
    let ca = ambit_core::ca::LocalCa::load_or_create(ca_dir, "cluster.local").unwrap();
    let at = |secs: i64| {
        let now = std::time::SystemTime::now();
        let d = std::time::Duration::from_secs(secs.unsigned_abs());
        if secs < 0 { now - d } else { now + d }
    };
    let id = Identity::new(td, "default", "client");
    std::sync::Arc::new(
        ca.issue_workload_valid_between(&id, at(from), at(until))
            .unwrap(),
    )
}

/// An HBONE CONNECT to `target` through the server, the client holding `cert`.
async fn connect_with(
    s: &Server,
    cert: std::sync::Arc<ambit_core::tls::WorkloadCert>,
    target: SocketAddr,
) -> Result<hbone::H2Stream, HboneError> {
    let client = hbone::HboneClient::new(
        std::sync::Arc::new(hbone::H2Config::default()),
        support::DirectConnector { cert, src: None },
    );
    let req = support::connect_request(&target.to_string());
    let (stream, resp) = tokio::time::timeout(WAIT, client.connect(pool_key(s), req))
        .await
        .expect("a refused client is answered, not left hanging")?;
    assert_eq!(resp.status, http::StatusCode::OK);
    Ok(stream)
}

/// A running ztunnel's 15008 refuses clients whose certificate is expired, not yet valid, from another trust
/// domain, or from a CA it does not trust — and keeps serving a good client after each. The reasons of each
/// refusal, per TLS backend, are pinned in `ambit-core`'s `tls_peer_certs` tests; this one shows the ztunnel's
/// listener uses that check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_certificates_are_refused_and_good_ones_still_served() {
    let s = server(89).await;
    let target = echo(SocketAddr::new(s.ip, 0)).await;
    let dir = s.ca_dir.path();
    let hour = 3600;
    let rogue_ca = ambit_core::ca::LocalCa::generate("cluster.local").unwrap();
    let rogue = {
        // Signed by a CA the server does not trust; the client itself trusts the server's root.
        let client_id = Identity::new("cluster.local", "default", "client");
        let (key, csr) = ambit_core::tls::generate_csr(&client_id).unwrap();
        let mut chain = rogue_ca
            .sign_csr(&csr, &client_id, std::time::Duration::from_secs(3600))
            .unwrap();
        let root = std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
        chain.last_mut().unwrap().push_str(&root);
        std::sync::Arc::new(ambit_core::tls::WorkloadCert::from_istio_chain(&chain, &key).unwrap())
    };
    let bad = [
        (
            "expired",
            cert_valid(dir, "cluster.local", -2 * hour, -hour),
        ),
        (
            "not yet valid",
            cert_valid(dir, "cluster.local", hour, 2 * hour),
        ),
        (
            "another trust domain",
            cert_valid(dir, "other.local", -hour, hour),
        ),
        ("an untrusted CA", rogue),
    ];
    let good = cert_valid(dir, "cluster.local", -hour, hour);
    for (what, cert) in bad {
        match connect_with(&s, cert, target).await {
            // Refused by TLS: an alert naming the reason or, when the client had already written (TLS 1.3
            // checks the client's certificate after the client finished), the connection closed under it; an
            // HTTP status would mean the stream got past TLS.
            Err(HboneError::Status(st)) => {
                panic!("a client certificate that is {what} got past TLS: status {st}")
            }
            Err(e) => eprintln!("client certificate {what}: refused ({e})"),
            Ok(_) => panic!("a client certificate that is {what} was accepted"),
        }
        let mut ok = connect_with(&s, good.clone(), target)
            .await
            .unwrap_or_else(|e| panic!("a good client after one {what} was refused: {e}"));
        round_trip(&mut ok, what.as_bytes()).await;
    }
    s.zt.drain().await;
}

/// Dedicated mode lists its live connections in `/config_dump` as shared mode does per pod (`workloadState`), so
/// a leak check can read them: one while a stream is open, none once it closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_lists_the_live_connections_in_dedicated_mode() {
    let s = server(90).await;
    let target = echo(SocketAddr::new(s.ip, 0)).await;
    let inbound = |dump: &serde_json::Value| {
        dump["workloadState"]["default/server"]["connections"]["inbound"]
            .as_array()
            .map(Vec::len)
    };
    let dump = support::config_dump(s.zt.addresses.admin).await;
    assert_eq!(
        dump["workloadState"]["default/server"]["state"], "Up",
        "{dump}"
    );
    assert_eq!(inbound(&dump), Some(0), "{dump}");
    let mut stream = hbone_stream(&s, target).await;
    round_trip(&mut stream, b"listed").await;
    let dump = support::config_dump(s.zt.addresses.admin).await;
    assert_eq!(inbound(&dump), Some(1), "{dump}");
    drop(stream);
    let mut left = None;
    for _ in 0..100 {
        left = inbound(&support::config_dump(s.zt.addresses.admin).await);
        if left == Some(0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(left, Some(0), "the closed stream is still listed");
    s.zt.drain().await;
}

// ----- bad CONNECTs at a running ztunnel -----

/// The server as the endpoint of `app` (port 80 only).
fn world_with_service(net: u8) -> String {
    format!(
        r#"
workloads:
- uid: {SERVER_UID}
  name: server
  namespace: default
  serviceAccount: server
  trustDomain: cluster.local
  clusterId: cluster1
  workloadIps: [127.0.{net}.3]
  protocol: HBONE
  services: {{default/app.default.svc.cluster.local: {{80: 8080}}}}
services:
- {{name: app, namespace: default, hostname: app.default.svc.cluster.local, vips: [/10.96.{net}.10], ports: {{80: 8080}}}}
"#
    )
}

/// What a running ztunnel answers to CONNECTs it cannot serve, and to bytes that are not TLS on 15008, with a good
/// stream served after each: a hostname it does not know and a port the service lacks (503), a header list over
/// the server's limit (431), a plaintext HTTP request (the connection is closed at once, not held until the
/// handshake timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connects_are_answered_and_the_next_stream_is_served() {
    let net = 94;
    let s = server_with(net, |cfg| {
        cfg.local_xds = Some(LocalXds::Inline(world_with_service(net)));
    })
    .await;
    let target = echo(SocketAddr::new(s.ip, 0)).await;
    let good = |what: &'static str| {
        let s = &s;
        async move {
            let mut ok = hbone_stream(s, target).await;
            round_trip(&mut ok, what.as_bytes()).await;
        }
    };
    good("before").await;
    for (authority, what) in [
        ("nope.default.svc.cluster.local:80", "an unknown hostname"),
        (
            "app.default.svc.cluster.local:81",
            "a port the service lacks",
        ),
    ] {
        match try_hbone_stream_to(&s, authority).await {
            Err(HboneError::Status(st)) => {
                assert_eq!(st, http::StatusCode::SERVICE_UNAVAILABLE, "{what}")
            }
            other => panic!("{what}: expected 503, got {:?}", other.map(|_| ())),
        }
        good(what).await;
    }

    // 80 KiB of headers: over the server's 64 KiB limit (the client's own limit does not apply to what it sends).
    let key = pool_key(&s);
    let (client, _) = support::hbone_client(s.ca_dir.path(), &key.src_identity);
    let mut req = support::connect_request(&target.to_string());
    for i in 0..20 {
        req.headers_mut().insert(
            http::HeaderName::try_from(format!("x-big-{i}")).unwrap(),
            http::HeaderValue::from_str(&"v".repeat(4096)).unwrap(),
        );
    }
    let r = tokio::time::timeout(support::WAIT, client.connect(key, req))
        .await
        .expect("an oversized CONNECT is answered, not left hanging");
    assert!(
        matches!(r, Err(HboneError::Status(st)) if st == http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        "an 80 KiB header list: {:?}",
        r.map(|_| ())
    );
    good("after oversized headers").await;

    // Plaintext HTTP on the HBONE port: closed at once (well before the 10 s handshake timeout).
    let mut plain = tokio::net::TcpStream::connect(SocketAddr::new(s.ip, 15008))
        .await
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let started = std::time::Instant::now();
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), plain.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            // A TLS alert may come first; then the close.
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a plaintext request on 15008 is still open after 5 s"),
        }
    }
    eprintln!("plaintext on 15008 closed after {:?}", started.elapsed());
    good("after plaintext").await;
    s.zt.drain().await;
}

/// On the wire, a running ztunnel's SOCKS5 port answers a failed request with the RFC 1928 reply code and closes;
/// a greeting it refuses gets `05 ff` and nothing more; a good client is served after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_failures_get_their_reply_code_on_the_wire() {
    let s = server_with(95, |c| c.socks5_enabled = true).await;
    let socks = s.zt.addresses.socks5.expect("socks5 listener");
    let answer = |bytes: &'static [u8]| async move {
        let mut c = tokio::net::TcpStream::connect(socks).await.unwrap();
        c.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, c.read_to_end(&mut out))
            .await
            .expect("closed after the answer")
            .unwrap();
        out
    };
    let method_ok = [5u8, 0];
    let reply = |code: u8| {
        let mut v = method_ok.to_vec();
        v.extend_from_slice(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]);
        v
    };
    assert_eq!(
        answer(&[5, 1, 2]).await,
        [5, 0xff],
        "username/password only"
    );
    assert_eq!(
        answer(&[5, 1, 0, 5, 2, 0, 1, 10, 0, 0, 1, 0, 80]).await,
        reply(7),
        "BIND"
    );
    assert_eq!(
        answer(&[5, 1, 0, 5, 1, 0, 9, 0, 0]).await,
        reply(8),
        "address type 9"
    );
    assert_eq!(
        answer(&[5, 1, 0, 5, 1, 0, 3, 0, 0, 80]).await,
        reply(4),
        "an empty name"
    );
    let outside = echo("127.0.95.9:0".parse().unwrap()).await;
    let mut c = tokio::net::TcpStream::connect(socks).await.unwrap();
    support::socks5_handshake(&mut c, outside).await.unwrap();
    round_trip(&mut c, b"served").await;
    s.zt.drain().await;
}
