//! `CRL_PATH` in a running ztunnel, at its HBONE port 15008: a missing or unparsable file is a start error and an
//! empty one is accepted; a client certificate from the mesh CA is served until the file is rewritten to revoke
//! it, after which the CRL watcher inside the ztunnel makes every new connection of that client fail in TLS while
//! another client is still served; a rewrite that lifts the revocation lets it back in. The same ztunnel (no
//! compliance policy) refuses TLS 1.2-only clients and serves classical-only key exchange (the control for
//! `pqc.rs`).
//!
//! The TLS policy is process-wide and installed once, so this binary starts exactly one ztunnel with a CRL
//! (127.0.121.3); the start errors (127.0.123.3) fail before anything is installed or bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
mod tls_clients;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::hbone::{H2Config, HboneClient, HboneError};
use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
};
use rustls::AlertDescription;
use support::{echo, round_trip};
use time::OffsetDateTime;
use tls_clients::{MeshCert, Server, TLS12, TLS13, groups};

/// Longer than several CRL polls (every 5 s) on a loaded machine.
const RELOAD_WAIT: Duration = Duration::from_secs(60);

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
    let s = tls_clients::server(121, |cfg| cfg.crl_path = Some(crl.clone())).await;
    let target = echo(SocketAddr::new(s.ip, 0)).await;
    protocol_and_groups(&s, target).await;
    revocation(&s, &crl, target).await;
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

    // Served while the CRL is empty; this connection (and its pool) stays open across the revocation.
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
    let started = tokio::time::Instant::now();
    loop {
        let r = tls_clients::connect_with(s, revoked.cert.clone(), target).await;
        if refused(&r) {
            eprintln!(
                "revoked client refused {:?} after the rewrite: {}",
                started.elapsed(),
                r.err().unwrap()
            );
            break;
        }
        assert!(
            started.elapsed() < RELOAD_WAIT,
            "a new connection of the revoked client is still served {RELOAD_WAIT:?} after the rewrite"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

    // Revocation is checked at the handshake only (a CRL change closes no connection): the HBONE connection the
    // revoked client opened before the rewrite stays open, its stream still carries data, and a new CONNECT on
    // that same pooled connection is served — no new handshake, so no new check.
    round_trip(&mut before, b"after the revocation").await;
    let (mut new_stream, _) = tokio::time::timeout(
        support::WAIT,
        before_pool.connect(s.pool_key(), support::connect_request(&target.to_string())),
    )
    .await
    .expect("a new CONNECT on the open connection is answered")
    .expect("a new CONNECT on the connection opened before the revocation is served");
    round_trip(&mut new_stream, b"new stream, old connection").await;
    assert_eq!(
        before_pool.connections(),
        1,
        "the new stream went over the connection opened before the revocation"
    );
    drop(new_stream);
    drop(before);

    // Lifting the revocation lets the client in again.
    write_atomically(crl, &crl_pem(&ca, 2, &[]));
    let started = tokio::time::Instant::now();
    loop {
        match tls_clients::connect_with(s, revoked.cert.clone(), target).await {
            Ok(mut st) => {
                round_trip(&mut st, b"served again").await;
                break;
            }
            Err(e) => assert!(
                started.elapsed() < RELOAD_WAIT,
                "still refused {RELOAD_WAIT:?} after the revocation was lifted: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
