//! `COMPLIANCE_POLICY=pqc`: handshakes agree on X25519MLKEM768, and a peer that offers only classical key exchange
//! is refused, on the server and the client side, for every compiled-in backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::tls::{
    self, CompliancePolicy, TlsAcceptor, TlsBackend, TlsConnector, TlsError, TlsPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const TTL: Duration = Duration::from_secs(3600);
const PQ: &str = "X25519MLKEM768";

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "demo", sa)
}

fn pqc() -> TlsPolicy {
    TlsPolicy {
        compliance: CompliancePolicy::Pqc,
        ..TlsPolicy::default()
    }
}

/// A workload chain and its key as PEM, for the hand-built classical-only peers.
fn chain_and_key(ca: &LocalCa, identity: &Identity) -> (Vec<CertificateDer<'static>>, String) {
    let (key, csr) = tls::generate_csr(identity).unwrap();
    let chain = ca.sign_csr(&csr, identity, TTL).unwrap();
    let leaf_and_intermediates = &chain[..chain.len() - 1];
    let ders = leaf_and_intermediates
        .iter()
        .flat_map(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()).map(Result::unwrap))
        .collect();
    (ders, key)
}

/// aws-lc-rs offering only classical groups (X25519, P-256, P-384).
fn classical_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::kx_group;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(p)
}

#[tokio::test]
async fn pqc_peers_agree_on_x25519mlkem768() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let server = Arc::new(ca.issue_workload(&id("server"), TTL).unwrap());
    let client = Arc::new(ca.issue_workload(&id("client"), TTL).unwrap());
    for sb in TlsBackend::all() {
        for cb in TlsBackend::all() {
            let acceptor = TlsAcceptor::with_policy(server.clone(), *sb, &pqc()).unwrap();
            let connector = TlsConnector::with_policy(client.clone(), *cb, &pqc()).unwrap();
            let (a, b) = tokio::io::duplex(64 * 1024);
            let s = tokio::spawn(async move { acceptor.accept(a).await });
            let c = tokio::spawn(async move { connector.connect(b, &[id("server")]).await });
            let (s, c) = tokio::join!(s, c);
            let (s, c) = (s.unwrap(), c.unwrap());
            let s = s.unwrap_or_else(|e| panic!("{sb}->{cb} server: {e}"));
            let c = c.unwrap_or_else(|e| panic!("{sb}->{cb} client: {e}"));
            assert_eq!(s.key_exchange_group(), Some(PQ), "{sb}<-{cb} server");
            assert_eq!(c.key_exchange_group(), Some(PQ), "{sb}<-{cb} client");
        }
    }
}

#[tokio::test]
async fn default_policy_still_talks_to_classical_peers() {
    // The control for the refusals below: without the policy, the same classical-only client gets through the key
    // exchange (and then fails only because it sends no client certificate, which is a different error).
    let ca = LocalCa::generate("cluster.local").unwrap();
    let server = Arc::new(ca.issue_workload(&id("server"), TTL).unwrap());
    for backend in TlsBackend::all() {
        let acceptor =
            TlsAcceptor::with_policy(server.clone(), *backend, &TlsPolicy::default()).unwrap();
        let err = classical_client_against(acceptor).await;
        // rustls reports it as a peer rejection; BoringSSL as PEER_DID_NOT_RETURN_A_CERTIFICATE.
        assert!(
            matches!(err, TlsError::PeerRejected(_)) || mentions_certificate(&err),
            "{backend}: expected the missing client certificate to be the failure, got {err:?}"
        );
    }
}

fn mentions_certificate(err: &TlsError) -> bool {
    err.to_string().to_ascii_lowercase().contains("certificate")
}

/// Runs a classical-only rustls client (no client certificate) against `acceptor`; returns the server's error.
async fn classical_client_against(acceptor: TlsAcceptor) -> TlsError {
    let mut config = rustls::ClientConfig::builder_with_provider(classical_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let (a, b) = tokio::io::duplex(64 * 1024);
    let s = tokio::spawn(async move { acceptor.accept(a).await });
    let c = tokio::spawn(async move {
        let name = ServerName::try_from("server.example").unwrap();
        connector.connect(name, b).await
    });
    let (s, c) = tokio::join!(s, c);
    let s = s.unwrap();
    // The client's own result depends on when the server's alert lands; only the server's verdict matters.
    drop(c.unwrap());
    s.expect_err("the classical-only client must be refused")
}

/// The classical client takes any server certificate, so the only way the server can fail the handshake after key
/// exchange is the missing client certificate.
#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        classical_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn pqc_server_refuses_classical_client() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let server = Arc::new(ca.issue_workload(&id("server"), TTL).unwrap());
    for backend in TlsBackend::all() {
        let acceptor = TlsAcceptor::with_policy(server.clone(), *backend, &pqc()).unwrap();
        let err = classical_client_against(acceptor).await;
        // Refused at key exchange, before any certificate is looked at.
        assert!(
            matches!(err, TlsError::Handshake(_)) && !mentions_certificate(&err),
            "{backend}: expected a key exchange failure, got {err:?}"
        );
    }
}

#[tokio::test]
async fn pqc_client_refuses_classical_server() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let client = Arc::new(ca.issue_workload(&id("client"), TTL).unwrap());
    let (chain, key) = chain_and_key(&ca, &id("server"));
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(classical_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    for backend in TlsBackend::all() {
        // Control: the default policy connects to this server.
        for (policy, should_connect) in [(TlsPolicy::default(), true), (pqc(), false)] {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            let connector = TlsConnector::with_policy(client.clone(), *backend, &policy).unwrap();
            let (a, b) = tokio::io::duplex(64 * 1024);
            let s = tokio::spawn(async move { acceptor.accept(a).await });
            let c = tokio::spawn(async move { connector.connect(b, &[id("server")]).await });
            let (s, c) = tokio::join!(s, c);
            let (s, c) = (s.unwrap(), c.unwrap());
            if should_connect {
                let c = c.unwrap_or_else(|e| panic!("{backend} default policy: {e}"));
                assert_ne!(c.key_exchange_group(), Some(PQ));
                s.unwrap();
            } else {
                let err = c.expect_err("a pqc client must not connect to a classical-only server");
                assert!(
                    matches!(err, TlsError::Handshake(_)),
                    "{backend}: expected a handshake failure, got {err:?}"
                );
                assert!(s.is_err());
            }
        }
    }
}

#[test]
fn unknown_compliance_policy_is_an_error() {
    for bad in ["fips", "pq", "pqc2"] {
        let e = bad.parse::<CompliancePolicy>().unwrap_err();
        assert!(
            matches!(&e, TlsError::UnknownCompliancePolicy(v) if v == bad),
            "{bad}: {e:?}"
        );
    }
    assert_eq!(
        "pqc".parse::<CompliancePolicy>().unwrap(),
        CompliancePolicy::Pqc
    );
    assert_eq!(
        "".parse::<CompliancePolicy>().unwrap(),
        CompliancePolicy::Default
    );
}
