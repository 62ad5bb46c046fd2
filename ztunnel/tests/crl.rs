//! `CRL_PATH` in a running ztunnel, at its HBONE port 15008: a missing or unparsable file is a start error and an
//! empty one is accepted; a client certificate from the mesh CA is served until the file is rewritten to revoke
//! it, after which the CRL watcher inside the ztunnel makes every new connection of that client fail in TLS while
//! another client is still served; a rewrite that lifts the revocation lets it back in. The same CRL holds on the
//! ztunnel's outbound side: an application connection (SOCKS5) to a peer workload whose ztunnel presents a revoked
//! certificate is closed after the ztunnel's own handshake refuses it (`certificate_revoked` at the peer, nothing
//! reaches the peer's application, `istio_tcp_connections_failed` with `TLS_FAILURE`), while a peer of the same CA
//! and identity whose certificate is not revoked is served, and the first is served once the revocation is lifted.
//! The same ztunnel (no compliance policy) refuses TLS 1.2-only clients and serves classical-only key exchange (the
//! control for `pqc.rs`).
//!
//! The TLS policy is process-wide and installed once, so this binary starts exactly one ztunnel with a CRL
//! (127.0.121.3; its stand-in peers listen on 127.0.121.4 and .5, port 15008); the start errors (127.0.123.3) fail
//! before anything is installed or bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
mod tls_clients;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::hbone::{self, H2Config, HboneClient, HboneError};
use ambit_core::tls::WorkloadCert;
use ambit_ztunnel::config::LocalXds;
use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
};
use rustls::{AlertDescription, ServerConfig};
use support::{WAIT, echo, round_trip};
use time::OffsetDateTime;
use tls_clients::{MeshCert, Server, TLS12, TLS13, groups};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Longer than several CRL polls (every 5 s) on a loaded machine.
const RELOAD_WAIT: Duration = Duration::from_secs(60);

/// The stand-in peers' workloads, both HBONE and of the service account `default/peer`: the certificate of the
/// first is revoked and then let in again, the second is never revoked.
const PEER_A: &str = "127.0.121.4";
const PEER_B: &str = "127.0.121.5";

/// The ztunnel's own pod `default/server` (127.0.121.3) and the two peer workloads `peer-a` and `peer-b`.
fn world() -> String {
    let workload = |name: &str, sa: &str, ip: &str| {
        format!(
            "\n- {{uid: cluster1//v1/Pod/default/{name}, name: {name}, namespace: default, serviceAccount: {sa},\n   \
             trustDomain: cluster.local, clusterId: cluster1, workloadIps: [{ip}], protocol: HBONE}}"
        )
    };
    format!(
        "workloads:{}{}{}\n",
        workload("server", "server", "127.0.121.3"),
        workload("peer-a", "peer", PEER_A),
        workload("peer-b", "peer", PEER_B),
    )
}

/// The mesh CA of the ztunnel's CA directory (it signs with its root: `ca-cert.pem` is `root-cert.pem`).
fn mesh_ca(ca_dir: &Path) -> Issuer<'static, KeyPair> {
    let key =
        KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca-key.pem")).unwrap()).unwrap();
    Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(ca_dir.join("ca-cert.pem")).unwrap(),
        key,
    )
    .unwrap()
}

/// A PEM CRL by `issuer` with number `number`, revoking `serials`.
fn crl_pem(issuer: &Issuer<'static, KeyPair>, number: u8, serials: &[Vec<u8>]) -> String {
    let now = OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        next_update: now + time::Duration::hours(1),
        crl_number: SerialNumber::from_slice(&[number]),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .unwrap()
    .pem()
    .unwrap()
}

/// Replaces the file in one step, as a Kubernetes volume update does.
fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A new HBONE connection of `cert` is refused — in TLS, never with an HTTP status.
fn refused(r: &Result<ambit_core::hbone::H2Stream, HboneError>) -> bool {
    match r {
        Ok(_) => false,
        Err(HboneError::Status(st)) => panic!("a revoked client got past TLS: status {st}"),
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unparsable_crl_file_is_a_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = tempfile::tempdir().unwrap();
    let unparsable = dir.path().join("garbage.pem");
    std::fs::write(
        &unparsable,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let der_garbage = dir.path().join("garbage.der");
    std::fs::write(&der_garbage, b"\x30\x03\x02\x01\x00").unwrap();
    let missing = dir.path().join("absent.pem");
    ambit_core::tls::install_default_provider();
    for path in [missing, unparsable, der_garbage] {
        let mut cfg = support::pod_config(
            "127.0.123.3".parse().unwrap(),
            "server",
            ambit_ztunnel::config::LocalXds::Inline("workloads: []".into()),
            ca_dir.path(),
        );
        cfg.crl_path = Some(path.clone());
        let r = ambit_ztunnel::app::start(cfg, ambit_core::logging::LogHandle::noop(), None).await;
        let e = match r {
            Ok(_) => panic!("{}: the ztunnel started", path.display()),
            Err(e) => format!("{e:#}"),
        };
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            e.contains("CRL_PATH") && e.contains(name),
            "{name}: the start error does not name both the setting and the file: {e}"
        );
        eprintln!("{name}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_ztunnel_enforces_and_reloads_its_crl_and_refuses_tls12_at_15008() {
    let crl_dir = tempfile::tempdir().unwrap();
    let crl = crl_dir.path().join("crl.pem");
    // An empty file: nothing revoked, and accepted at start.
    std::fs::write(&crl, "").unwrap();
    let s = tls_clients::server(121, |cfg| {
        cfg.crl_path = Some(crl.clone());
        cfg.local_xds = Some(LocalXds::Inline(world()));
    })
    .await;
    let target = echo(SocketAddr::new(s.ip, 0)).await;
    protocol_and_groups(&s, target).await;
    revocation(&s, &crl, target).await;
    outbound_revocation(&s, &crl, target).await;
    s.zt.drain().await;
}

/// Without a compliance policy: a TLS 1.2-only client is refused with a `protocol_version` alert (the same client
/// offering TLS 1.3 is served), and a client offering only classical groups is served.
async fn protocol_and_groups(s: &Server, target: SocketAddr) {
    let client = MeshCert::issue(s.ca_dir.path(), "client");
    let e =
        tls_clients::refused_in_tls(s, client.client_config(TLS12, groups::ALL), "TLS 1.2 only")
            .await;
    assert_eq!(
        e,
        rustls::Error::AlertReceived(AlertDescription::ProtocolVersion),
        "TLS 1.2 only"
    );
    let n = tls_clients::served_with(
        s,
        client.client_config(TLS13, groups::ALL),
        target,
        "the same client with TLS 1.3",
    )
    .await;
    assert_eq!(n.version, Some(rustls::ProtocolVersion::TLSv1_3));
    let n = tls_clients::served_with(
        s,
        client.client_config(TLS13, groups::CLASSICAL),
        target,
        "classical groups only, no compliance policy",
    )
    .await;
    assert_eq!(n.group, Some(rustls::NamedGroup::X25519));
}

async fn revocation(s: &Server, crl: &Path, target: SocketAddr) {
    let ca = mesh_ca(s.ca_dir.path());
    let revoked = MeshCert::issue(s.ca_dir.path(), "client");
    let other = MeshCert::issue(s.ca_dir.path(), "client");
    assert_ne!(revoked.serial(), other.serial());

    // Served while the CRL is empty; this connection (and its pool) is open when the revocation comes.
    let before_pool = HboneClient::new(
        Arc::new(H2Config::default()),
        support::DirectConnector {
            cert: revoked.cert.clone(),
            src: None,
        },
    );
    let (mut before, _) = before_pool
        .connect(s.pool_key(), support::connect_request(&target.to_string()))
        .await
        .expect("served before the revocation");
    round_trip(&mut before, b"before").await;

    write_atomically(crl, &crl_pem(&ca, 1, &[revoked.serial()]));
    let took = until_crl_says(s, &revoked.cert, target, false).await;
    eprintln!("revoked client refused {took:?} after the rewrite");
    // Refused in TLS: the client finished first (TLS 1.3), the server's alert ends the connection.
    let e = tls_clients::refused_in_tls(
        s,
        revoked.client_config(TLS13, groups::ALL),
        "revoked, bare TLS",
    )
    .await;
    assert!(
        matches!(
            e,
            rustls::Error::AlertReceived(AlertDescription::CertificateRevoked)
        ),
        "revoked, bare TLS: {e:?}"
    );
    eprintln!("revoked client, bare TLS: {e:?}");
    // Every new connection, not just one.
    for i in 0..3 {
        let r = tls_clients::connect_with(s, revoked.cert.clone(), target).await;
        assert!(
            refused(&r),
            "new connection {i} of the revoked client served"
        );
    }
    // Another certificate of the same identity, not revoked, is still served.
    let mut ok = tls_clients::connect_with(s, other.cert.clone(), target)
        .await
        .expect("a client that is not revoked is served");
    round_trip(&mut ok, b"not revoked").await;

    // The HBONE connection the revoked client opened before the rewrite: the ztunnel closes it once the CRL that
    // revokes its client is in force (as upstream, `CERT_REVOKED`). Its stream ends, and a new CONNECT through
    // that pool needs a new connection, which the CRL refuses.
    let ended = tokio::time::timeout(support::WAIT, async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = before.write_all(b"after the revocation").await;
        let mut buf = [0u8; 64];
        while let Ok(n) = before.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the revoked client's connection opened before the rewrite is still open"
    );
    let again = tokio::time::timeout(
        support::WAIT,
        before_pool.connect(s.pool_key(), support::connect_request(&target.to_string())),
    )
    .await
    .expect("a new CONNECT of the revoked client is answered");
    assert!(
        again.is_err(),
        "a new CONNECT of the revoked client was served after the revocation"
    );
    drop(before);

    // Lifting the revocation lets the client in again.
    write_atomically(crl, &crl_pem(&ca, 2, &[]));
    until_crl_says(s, &revoked.cert, target, true).await;
}

/// Polls with a new HBONE connection of `cert` to the server's 15008 (a fresh pool each time) until the CRL in
/// force serves it (`served`: echoing through it) or refuses it in TLS; how long that took. The watcher reads the
/// file every 5 s and announces nothing, so its verdict on a handshake is the event to wait for.
async fn until_crl_says(
    s: &Server,
    cert: &Arc<WorkloadCert>,
    target: SocketAddr,
    served: bool,
) -> Duration {
    let started = tokio::time::Instant::now();
    loop {
        let r = tls_clients::connect_with(s, cert.clone(), target).await;
        if refused(&r) != served {
            if let Ok(mut st) = r {
                round_trip(&mut st, b"served").await;
            }
            return started.elapsed();
        }
        assert!(
            started.elapsed() < RELOAD_WAIT,
            "{RELOAD_WAIT:?} after the rewrite a new connection is still {}: {:?}",
            if served { "refused" } else { "served" },
            r.err()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ----- the outbound side -----

/// What a stand-in peer saw of one connection from the ztunnel.
#[derive(Debug, PartialEq)]
enum PeerSaw {
    /// The TLS handshake: done, or the error the peer's side of it ended with.
    Handshake(Result<(), rustls::Error>),
    /// A CONNECT past the handshake, by its authority; its stream is then echoed (the peer's application).
    Connect(String),
}

/// A stand-in for the ztunnel of the workload at `ip`: TLS 1.3 on `ip:15008` presenting `cert` (it asks for no
/// client certificate: what is under test is the ztunnel's verdict on this one), then HBONE whose streams are
/// echoed. Reports each handshake and each CONNECT.
async fn fake_peer(ip: &str, cert: &MeshCert) -> mpsc::UnboundedReceiver<PeerSaw> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let ip: IpAddr = ip.parse().unwrap();
    let listener = tokio::net::TcpListener::bind((ip, 15008)).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        let e = e
                            .get_ref()
                            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                            .cloned()
                            .unwrap_or_else(|| rustls::Error::General(e.to_string()));
                        let _ = tx.send(PeerSaw::Handshake(Err(e)));
                        return;
                    }
                };
                let _ = tx.send(PeerSaw::Handshake(Ok(())));
                let (_trigger, drain) = ambit_core::drain::new();
                let cfg = Arc::new(H2Config::default());
                let _ = hbone::serve(tls, cfg, drain, move |parts, responder| {
                    let tx = tx.clone();
                    async move {
                        let authority = parts.uri.authority().map(|a| a.to_string());
                        let _ = tx.send(PeerSaw::Connect(authority.unwrap_or_default()));
                        let Ok(mut stream) = responder.accept(http::HeaderMap::new()) else {
                            return;
                        };
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                })
                .await;
            });
        }
    });
    rx
}

/// The next thing `peer` saw, within [`WAIT`].
async fn next(peer: &mut mpsc::UnboundedReceiver<PeerSaw>, what: &str) -> PeerSaw {
    tokio::time::timeout(WAIT, peer.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: the peer saw nothing within {WAIT:?}"))
        .unwrap()
}

/// An application connection through the ztunnel's SOCKS5 listener to `ip:8080`. The SOCKS5 reply is a success
/// whatever comes next (asserted by `socks5_handshake`): the ztunnel answers before it dials the peer.
async fn app_to(s: &Server, ip: &str) -> tokio::net::TcpStream {
    let socks = s.zt.addresses.socks5.expect("socks5 listener");
    let mut app = tokio::net::TcpStream::connect(socks).await.unwrap();
    let dst = SocketAddr::new(ip.parse().unwrap(), 8080);
    support::socks5_handshake(&mut app, dst).await.unwrap();
    app
}

/// The sum of the ztunnel's source-side `family` series whose labels include every one of `labels`.
async fn source_count(s: &Server, family: &str, labels: &[&str]) -> u64 {
    let metrics = support::http_get(s.zt.addresses.stats, "/metrics").await;
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{reporter=\"source\"")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// The ztunnel as a client: its handshake with a peer checks the peer's certificate against the same CRL. Peer A's
/// certificate is revoked: each application connection to it is closed (FIN, no data) after the ztunnel refused
/// the handshake — the peer reads `certificate_revoked` and no CONNECT — and counted as failed with `TLS_FAILURE`.
/// Peer B, of the same CA and identity, is served meanwhile; once the revocation is lifted peer A is served too.
async fn outbound_revocation(s: &Server, crl: &Path, target: SocketAddr) {
    let ca = mesh_ca(s.ca_dir.path());
    let a_cert = MeshCert::issue(s.ca_dir.path(), "peer");
    let b_cert = MeshCert::issue(s.ca_dir.path(), "peer");
    assert_ne!(a_cert.serial(), b_cert.serial());
    let mut a = fake_peer(PEER_A, &a_cert).await;
    let mut b = fake_peer(PEER_B, &b_cert).await;
    let a_failed = [
        "destination_workload=\"peer-a\"",
        "response_flags=\"TLS_FAILURE\"",
    ];

    // Revoked before the ztunnel ever dials either peer, so every handshake with A and B is under the new CRL (a
    // connection held across a revocation is the last step). The ztunnel has one CRL store for both directions: once it refuses A's certificate from a client at
    // its own 15008 (which dials no peer), the rewrite is in force for its outbound handshakes too.
    write_atomically(crl, &crl_pem(&ca, 3, &[a_cert.serial()]));
    let took = until_crl_says(s, &a_cert.cert, target, false).await;
    eprintln!("peer A's certificate refused at 15008 {took:?} after the rewrite");
    for i in 1..=2 {
        let what = format!("connection {i} to the revoked peer");
        let mut app = app_to(s, PEER_A).await;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(WAIT, app.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what}: still open after {WAIT:?}"));
        assert_eq!(
            read.expect("closed, not reset"),
            0,
            "{what}: data came back"
        );
        assert_eq!(
            next(&mut a, &what).await,
            PeerSaw::Handshake(Err(rustls::Error::AlertReceived(
                AlertDescription::CertificateRevoked
            ))),
            "{what}"
        );
        // Counted before the application connection closed.
        assert_eq!(
            source_count(s, "istio_tcp_connections_failed_total", &a_failed).await,
            i,
            "{what}"
        );
    }
    let mut app = app_to(s, PEER_B).await;
    round_trip(&mut app, b"peer B, not revoked").await;
    assert_eq!(next(&mut b, "peer B").await, PeerSaw::Handshake(Ok(())));
    assert_eq!(
        next(&mut b, "peer B").await,
        PeerSaw::Connect(format!("{PEER_B}:8080"))
    );
    drop(app);
    assert!(
        a.try_recv().is_err(),
        "nothing more reached the revoked peer: {:?}",
        a.try_recv()
    );

    // Lifted. The ztunnel holds no connection to peer A (none of its handshakes with A succeeded), so the next
    // application connection makes a new one, under the CRL in force.
    write_atomically(crl, &crl_pem(&ca, 4, &[]));
    until_crl_says(s, &a_cert.cert, target, true).await;
    let mut app = app_to(s, PEER_A).await;
    round_trip(&mut app, b"peer A, revocation lifted").await;
    assert_eq!(next(&mut a, "peer A").await, PeerSaw::Handshake(Ok(())));
    assert_eq!(
        next(&mut a, "peer A").await,
        PeerSaw::Connect(format!("{PEER_A}:8080"))
    );
    drop(app);
    assert_eq!(
        source_count(s, "istio_tcp_connections_failed_total", &a_failed).await,
        2,
        "no failure after the revocation was lifted"
    );
    assert_eq!(
        source_count(
            s,
            "istio_tcp_connections_failed_total",
            &["destination_workload=\"peer-b\""]
        )
        .await,
        0,
        "the peer that was never revoked"
    );

    // Revoked while the ztunnel holds a connection to it: the pooled HBONE connection is closed once the CRL is
    // in force (as upstream), so the application connection riding on it ends, and the next one is refused.
    let mut held = app_to(s, PEER_A).await;
    round_trip(&mut held, b"peer A, held across the revocation").await;
    // Over the pooled connection of the step before (or a new one).
    let mut seen = next(&mut a, "peer A").await;
    if seen == PeerSaw::Handshake(Ok(())) {
        seen = next(&mut a, "peer A").await;
    }
    assert_eq!(seen, PeerSaw::Connect(format!("{PEER_A}:8080")));
    write_atomically(crl, &crl_pem(&ca, 5, &[a_cert.serial()]));
    until_crl_says(s, &a_cert.cert, target, false).await;
    let ended = tokio::time::timeout(WAIT, async {
        let _ = held.write_all(b"after").await;
        let mut buf = [0u8; 64];
        while let Ok(n) = held.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the application connection over the revoked peer's HBONE connection is still open"
    );
    let mut app = app_to(s, PEER_A).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, app.read(&mut buf))
        .await
        .expect("a new connection to the revoked peer is still open");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "data came back from the revoked peer: {read:?}"
    );
    assert_eq!(
        next(&mut a, "peer A revoked again").await,
        PeerSaw::Handshake(Err(rustls::Error::AlertReceived(
            AlertDescription::CertificateRevoked
        ))),
        "a new handshake, not the old connection"
    );
}
