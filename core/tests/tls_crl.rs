//! `CRL_PATH`: real mTLS handshakes refuse a revoked peer (leaf or intermediate) in both directions, accept the
//! others, and pick up a rewritten CRL file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::tls::{
    ClientTlsStream, CrlError, CrlStore, PeerCheckError, Revoked, ServerTlsStream, TlsAcceptor,
    TlsBackend, TlsConnector, TlsError, TlsPolicy, WorkloadCert, until_revoked,
};
use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, DuplexStream};

mod support;

use support::{id, test_ca};

fn serial(cert: &WorkloadCert) -> SerialNumber {
    SerialNumber::from_slice(&hex_decode(&cert.serial_hex()))
}

fn hex_decode(s: &str) -> Vec<u8> {
    let s = if s.len() % 2 == 1 {
        format!("0{s}")
    } else {
        s.to_owned()
    };
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A PEM CRL by `issuer` revoking `serials`.
fn crl_pem(issuer: &Issuer<'static, KeyPair>, number: u8, serials: &[SerialNumber]) -> String {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        next_update: now + time::Duration::hours(1),
        crl_number: SerialNumber::from_slice(&[number]),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: s.clone(),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(issuer).unwrap().pem().unwrap()
}

/// Replaces the file's contents in one step, like a Kubernetes volume update.
fn write_atomically(path: &Path, contents: &str) {
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn crl_policy(path: &Path) -> (TlsPolicy, Arc<CrlStore>) {
    let store = CrlStore::load(path).unwrap();
    let policy = TlsPolicy {
        crl: Some(store.clone()),
        ..TlsPolicy::default()
    };
    (policy, store)
}

type Outcome = (
    Result<ServerTlsStream<DuplexStream>, TlsError>,
    Result<ClientTlsStream<DuplexStream>, TlsError>,
);

async fn handshake(
    server: Arc<WorkloadCert>,
    server_policy: &TlsPolicy,
    client: Arc<WorkloadCert>,
    client_policy: &TlsPolicy,
    expected: Identity,
) -> Outcome {
    let acceptor = TlsAcceptor::with_policy(server, TlsBackend::Rustls, server_policy).unwrap();
    let connector = TlsConnector::with_policy(client, TlsBackend::Rustls, client_policy).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move { acceptor.accept(a).await });
    let client = tokio::spawn(async move { connector.connect(b, &[expected]).await });
    let (s, c) = tokio::join!(server, client);
    (s.unwrap(), c.unwrap())
}

fn assert_revoked<T: std::fmt::Debug>(r: &Result<T, TlsError>, what: &str) {
    match r {
        Err(TlsError::PeerRejected(PeerCheckError::Revoked)) => {}
        other => panic!("{what}: expected a revoked-peer rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn server_refuses_revoked_client_and_accepts_good_one() {
    let ca = test_ca(false);
    let server = ca.issue("server");
    let good = ca.issue("good");
    let revoked = ca.issue("revoked");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crl.pem");
    std::fs::write(&path, crl_pem(ca.leaf_issuer(), 1, &[serial(&revoked)])).unwrap();
    let (policy, store) = crl_policy(&path);
    assert_eq!(store.len(), 1);
    let plain = TlsPolicy::default();

    let (s, c) = handshake(server.clone(), &policy, good, &plain, id("server")).await;
    let s = s.expect("good client accepted");
    c.expect("good client connected");
    assert_eq!(s.peer_identity(), Some(id("good")));

    let (s, c) = handshake(server, &policy, revoked, &plain, id("server")).await;
    assert_revoked(&s, "server side");
    // TLS 1.3: the client may finish before the server has judged its certificate; then the server's alert ends
    // the connection at the first read.
    if let Ok(mut c) = c {
        let mut buf = [0u8; 16];
        let read = c.read(&mut buf).await;
        assert!(
            matches!(read, Err(_) | Ok(0)),
            "the revoked client must not get a usable connection: {read:?}"
        );
    }
}

#[tokio::test]
async fn client_refuses_revoked_server() {
    let ca = test_ca(false);
    let good_server = ca.issue("server");
    let revoked_server = ca.issue("server");
    let client = ca.issue("client");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crl.pem");
    std::fs::write(
        &path,
        crl_pem(ca.leaf_issuer(), 1, &[serial(&revoked_server)]),
    )
    .unwrap();
    let (policy, _) = crl_policy(&path);
    let plain = TlsPolicy::default();

    let (s, c) = handshake(good_server, &plain, client.clone(), &policy, id("server")).await;
    s.expect("server accepted");
    assert_eq!(c.expect("good server").peer_identity(), Some(id("server")));

    let (s, c) = handshake(revoked_server, &plain, client, &policy, id("server")).await;
    assert_revoked(&c, "client side");
    assert!(
        s.is_err(),
        "the client aborted, so the server has no connection"
    );
}

#[tokio::test]
async fn revoked_intermediate_refuses_every_leaf_under_it() {
    let ca = test_ca(true);
    let server = ca.issue("server");
    let client = ca.issue("client");
    let (_, intermediate_serial) = ca.intermediate.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crl.pem");
    // Two CRLs in one file: the root's, revoking the intermediate, and the intermediate's own (empty).
    let both = format!(
        "{}{}",
        crl_pem(&ca.root, 1, std::slice::from_ref(intermediate_serial)),
        crl_pem(ca.leaf_issuer(), 1, &[])
    );
    std::fs::write(&path, both).unwrap();
    let (policy, store) = crl_policy(&path);
    assert_eq!(store.len(), 2);

    let (s, _) = handshake(
        server.clone(),
        &policy,
        client.clone(),
        &TlsPolicy::default(),
        id("server"),
    )
    .await;
    assert_revoked(&s, "server side, revoked intermediate");
    let (_, c) = handshake(
        server.clone(),
        &TlsPolicy::default(),
        client.clone(),
        &policy,
        id("server"),
    )
    .await;
    assert_revoked(&c, "client side, revoked intermediate");

    // Without that revocation the same chains are fine.
    write_atomically(&path, &crl_pem(&ca.root, 2, &[]));
    assert!(store.reload().unwrap());
    let (s, c) = handshake(server, &policy, client, &policy, id("server")).await;
    s.expect("accepted once the intermediate is no longer revoked");
    c.expect("connected once the intermediate is no longer revoked");
}

#[tokio::test]
async fn rewritten_crl_is_picked_up_by_the_watcher() {
    let ca = test_ca(false);
    let server = ca.issue("server");
    let first = ca.issue("first");
    let second = ca.issue("second");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crl.pem");
    std::fs::write(&path, crl_pem(ca.leaf_issuer(), 1, &[serial(&first)])).unwrap();
    let (policy, store) = crl_policy(&path);
    let watcher = store.watch(Duration::from_millis(100));
    let plain = TlsPolicy::default();

    let (s, _) = handshake(server.clone(), &policy, first.clone(), &plain, id("server")).await;
    assert_revoked(&s, "first before the rewrite");

    // Now revoke `second` instead of `first`.
    write_atomically(&path, &crl_pem(ca.leaf_issuer(), 2, &[serial(&second)]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (s, _) = handshake(
            server.clone(),
            &policy,
            second.clone(),
            &plain,
            id("server"),
        )
        .await;
        if matches!(s, Err(TlsError::PeerRejected(PeerCheckError::Revoked))) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rewritten CRL was not picked up within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, _) = handshake(server.clone(), &policy, first.clone(), &plain, id("server")).await;
    s.expect("first is no longer revoked");

    // A broken rewrite keeps the last good CRL: `second` stays refused, `first` accepted.
    write_atomically(
        &path,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    );
    // Whoever reads the new contents first (the watcher or this call) fails to parse them; a second look at the
    // same contents reports "unchanged". It can never report a successful change.
    let r = store.reload();
    assert!(
        matches!(r, Err(CrlError::Parse { .. }) | Ok(false)),
        "broken CRL file: {r:?}"
    );
    assert_eq!(store.len(), 1, "the last good CRL stays in force");
    let (s, _) = handshake(server.clone(), &policy, second, &plain, id("server")).await;
    assert_revoked(&s, "second after a broken rewrite");
    let (s, _) = handshake(server, &policy, first, &plain, id("server")).await;
    s.expect("first after a broken rewrite");
    watcher.abort();
}

#[test]
fn unparsable_crl_is_a_load_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crl.pem");
    std::fs::write(
        &path,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let e = CrlStore::load(&path).unwrap_err();
    assert!(e.to_string().contains("crl.pem"), "{e}");
}

#[cfg(feature = "tls-boring")]
#[tokio::test]
async fn boring_with_crl_is_refused_up_front() {
    let ca = test_ca(false);
    let cert = ca.issue("server");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crl.pem");
    std::fs::write(&path, "").unwrap();
    let (policy, _) = crl_policy(&path);
    assert!(matches!(
        policy.check_backend(TlsBackend::Boring),
        Err(TlsError::Unsupported(_))
    ));
    assert!(matches!(
        TlsAcceptor::with_policy(cert.clone(), TlsBackend::Boring, &policy),
        Err(TlsError::Unsupported(_))
    ));
    assert!(matches!(
        TlsConnector::with_policy(cert, TlsBackend::Boring, &policy),
        Err(TlsError::Unsupported(_))
    ));
}

/// A connection set up before a CRL update that revokes its peer: the watch taken from each side of it fires once
/// that update is in force (for the side whose peer it revokes only), and [`until_revoked`] drops what it runs.
/// Updates that revoke someone else, or fail to parse, leave it waiting.
#[tokio::test]
async fn a_live_connection_learns_its_peer_was_revoked() {
    let ca = test_ca(false);
    let server = ca.issue("server");
    let client = ca.issue("client");
    let bystander = ca.issue("bystander");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crl.pem");
    std::fs::write(&path, "").unwrap();
    let (policy, store) = crl_policy(&path);

    let (s, c) = handshake(
        server.clone(),
        &policy,
        client.clone(),
        &policy,
        id("server"),
    )
    .await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
    let mut on_server = s
        .take_revocation()
        .expect("a watch under a CRL (server side)");
    let mut on_client = c
        .take_revocation()
        .expect("a watch under a CRL (client side)");
    assert!(s.take_revocation().is_none(), "taken once");
    let quiet = Duration::from_millis(200);

    // Someone else revoked, then a broken rewrite: neither side's peer.
    write_atomically(&path, &crl_pem(ca.leaf_issuer(), 1, &[serial(&bystander)]));
    assert!(store.reload().unwrap());
    write_atomically(
        &path,
        "-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n",
    );
    assert!(store.reload().is_err());
    assert!(
        tokio::time::timeout(quiet, on_server.revoked())
            .await
            .is_err()
    );
    assert!(
        tokio::time::timeout(quiet, on_client.revoked())
            .await
            .is_err()
    );
    assert!(!on_server.is_revoked() && !on_client.is_revoked());

    // The client revoked: the server's watch (on the client) fires, the client's (on the server) does not.
    write_atomically(
        &path,
        &crl_pem(ca.leaf_issuer(), 2, &[serial(&bystander), serial(&client)]),
    );
    assert!(store.reload().unwrap());
    tokio::time::timeout(Duration::from_secs(5), on_server.revoked())
        .await
        .expect("the server side learns its client was revoked");
    assert!(on_server.is_revoked());
    assert!(
        tokio::time::timeout(quiet, on_client.revoked())
            .await
            .is_err()
    );

    // until_revoked: a connection future that would run forever is dropped once the peer is revoked.
    write_atomically(&path, &crl_pem(ca.leaf_issuer(), 3, &[serial(&server)]));
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let guard = SetOnDrop(dropped.clone());
    let forever = async move {
        let _guard = guard;
        std::future::pending::<()>().await
    };
    let run = tokio::spawn(until_revoked(forever, Some(on_client)));
    tokio::task::yield_now().await;
    assert!(store.reload().unwrap());
    let out = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("until_revoked returns once the server is revoked")
        .unwrap();
    assert_eq!(out, Err(Revoked));
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));

    // Without a watch (no CRL in force), just the future.
    assert_eq!(until_revoked(async { 7 }, None).await, Ok(7));
}
