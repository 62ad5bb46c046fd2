//! Bad peer certificates, both directions, every backend: expired, not yet valid, self-signed, without a SPIFFE
//! URI SAN (none, malformed), several SPIFFE SANs, and no certificate at all. Each gets its own refusal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ambit_core::Identity;
use ambit_core::tls::{
    self, ClientTlsStream, PeerCheckError, ServerTlsStream, TlsAcceptor, TlsBackend, TlsConnector,
    TlsError, WorkloadCert,
};
use rcgen::SanType;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::DuplexStream;

mod support;

use support::{LeafSpec, TestCa, id, self_signed_leaf, test_ca};

type Outcome = (
    Result<ServerTlsStream<DuplexStream>, TlsError>,
    Result<ClientTlsStream<DuplexStream>, TlsError>,
);

async fn handshake(
    server: Arc<WorkloadCert>,
    client: Arc<WorkloadCert>,
    expected: Identity,
    backend: TlsBackend,
) -> Outcome {
    let acceptor = TlsAcceptor::new(server, backend).unwrap();
    let connector = TlsConnector::new(client, backend).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move { acceptor.accept(a).await });
    let client = tokio::spawn(async move { connector.connect(b, &[expected]).await });
    let (s, c) = tokio::join!(server, client);
    (s.unwrap(), c.unwrap())
}

fn expired() -> (time::Duration, time::Duration) {
    (-time::Duration::hours(2), -time::Duration::hours(1))
}

fn not_yet_valid() -> (time::Duration, time::Duration) {
    (time::Duration::hours(1), time::Duration::hours(2))
}

fn spec_for(identity: &Identity, (from, until): (time::Duration, time::Duration)) -> LeafSpec {
    let mut spec = LeafSpec::for_identity(identity);
    spec.valid_from = from;
    spec.valid_until = until;
    spec
}

/// The refusal of a chain that does not verify; the message must say why, not only that it failed.
fn assert_untrusted<T: std::fmt::Debug>(r: &Result<T, TlsError>, why: &[&str], what: &str) {
    match r {
        Err(TlsError::PeerRejected(PeerCheckError::Untrusted(msg))) => {
            let lower = msg.to_lowercase();
            assert!(
                why.iter().any(|w| lower.contains(w)),
                "{what}: refused as untrusted but the reason {msg:?} names none of {why:?}"
            );
        }
        other => panic!("{what}: expected an untrusted-chain refusal, got {other:?}"),
    }
}

const EXPIRED_WORDS: &[&str] = &["expired"];
const NOT_YET_WORDS: &[&str] = &["notvalidyet", "not yet valid", "not valid yet"];
const UNKNOWN_ISSUER_WORDS: &[&str] = &[
    "unknownissuer",
    "unable to get",
    "self-signed",
    "self signed",
];

async fn server_refuses_client_leaf(ca: &TestCa, spec: LeafSpec, why: &[&str], what: &str) {
    let server = ca.issue("server");
    let client = ca.leaf(&spec).workload_cert(&ca.root_pem);
    for backend in TlsBackend::all() {
        let (s, c) = handshake(server.clone(), client.clone(), id("server"), *backend).await;
        assert_untrusted(&s, why, &format!("{backend}: server, client leaf {what}"));
        assert!(c.is_err() || s.is_err(), "{backend}: {what}");
    }
}

async fn client_refuses_server_leaf(ca: &TestCa, spec: LeafSpec, why: &[&str], what: &str) {
    let server = ca.leaf(&spec).workload_cert(&ca.root_pem);
    let client = ca.issue("client");
    for backend in TlsBackend::all() {
        let (_s, c) = handshake(server.clone(), client.clone(), id("server"), *backend).await;
        assert_untrusted(&c, why, &format!("{backend}: client, server leaf {what}"));
    }
}

#[tokio::test]
async fn expired_peer_leaf_is_refused_both_ways() {
    let ca = test_ca(false);
    server_refuses_client_leaf(
        &ca,
        spec_for(&id("client"), expired()),
        EXPIRED_WORDS,
        "expired",
    )
    .await;
    client_refuses_server_leaf(
        &ca,
        spec_for(&id("server"), expired()),
        EXPIRED_WORDS,
        "expired",
    )
    .await;
}

#[tokio::test]
async fn not_yet_valid_peer_leaf_is_refused_both_ways() {
    let ca = test_ca(false);
    let what = "not yet valid";
    server_refuses_client_leaf(
        &ca,
        spec_for(&id("client"), not_yet_valid()),
        NOT_YET_WORDS,
        what,
    )
    .await;
    client_refuses_server_leaf(
        &ca,
        spec_for(&id("server"), not_yet_valid()),
        NOT_YET_WORDS,
        what,
    )
    .await;
}

#[tokio::test]
async fn expired_leaf_under_an_intermediate_is_refused() {
    let ca = test_ca(true);
    server_refuses_client_leaf(
        &ca,
        spec_for(&id("client"), expired()),
        EXPIRED_WORDS,
        "expired, intermediate",
    )
    .await;
    // The good leaf under the same intermediate connects, so the refusal above is the expiry's.
    let (s, c) = handshake(
        ca.issue("server"),
        ca.issue("client"),
        id("server"),
        TlsBackend::Rustls,
    )
    .await;
    assert_eq!(s.unwrap().peer_identity(), Some(id("client")));
    c.unwrap();
}

#[tokio::test]
async fn self_signed_peer_leaf_is_refused_both_ways() {
    let ca = test_ca(false);
    // The self-signed holder trusts the real root, so only its own chain is wrong.
    let client =
        self_signed_leaf(&LeafSpec::for_identity(&id("client"))).workload_cert(&ca.root_pem);
    let server =
        self_signed_leaf(&LeafSpec::for_identity(&id("server"))).workload_cert(&ca.root_pem);
    for backend in TlsBackend::all() {
        let (s, _c) = handshake(ca.issue("server"), client.clone(), id("server"), *backend).await;
        assert_untrusted(
            &s,
            UNKNOWN_ISSUER_WORDS,
            &format!("{backend}: self-signed client"),
        );
        let (_s, c) = handshake(server.clone(), ca.issue("client"), id("server"), *backend).await;
        assert_untrusted(
            &c,
            UNKNOWN_ISSUER_WORDS,
            &format!("{backend}: self-signed server"),
        );
    }
}

fn key_of(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn certs_of(pems: &[String]) -> Vec<CertificateDer<'static>> {
    pems.iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).unwrap())
        .collect()
}

/// Accepts every server certificate.
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::CryptoProvider::get_default()
            .map(|p| p.signature_verification_algorithms.supported_schemes())
            .unwrap_or_default()
    }
}

/// Our acceptor against a plain rustls client presenting `leaf` (None: no certificate); the server's result.
async fn accept_raw_client(
    ca: &TestCa,
    leaf: Option<&support::Leaf>,
    backend: TlsBackend,
) -> Result<ServerTlsStream<DuplexStream>, TlsError> {
    tls::install_default_provider();
    // The client takes any server certificate: what is tested is the server's view of the client's.
    let builder = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
    let mut config = match leaf {
        Some(leaf) => builder
            .with_client_auth_cert(certs_of(&leaf.chain), key_of(&leaf.key_pem))
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::new(ca.issue("server"), backend).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move { acceptor.accept(a).await });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("server.invalid").unwrap();
    let client = tokio::spawn(async move {
        // The client's view is not what is tested; it only has to send its certificate.
        let _ = connector.connect(name, b).await;
    });
    let s = server.await.unwrap();
    client.await.unwrap();
    s
}

/// Our connector against a plain rustls server presenting `leaf`; the client's result.
async fn connect_raw_server(
    ca: &TestCa,
    leaf: &support::Leaf,
    backend: TlsBackend,
) -> Result<ClientTlsStream<DuplexStream>, TlsError> {
    tls::install_default_provider();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs_of(&leaf.chain), key_of(&leaf.key_pem))
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let connector = TlsConnector::new(ca.issue("client"), backend).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let _ = acceptor.accept(a).await;
    });
    let c = connector.connect(b, &[id("server")]).await;
    server.await.unwrap();
    c
}

fn dns_only() -> LeafSpec {
    let mut spec = LeafSpec::with_uris(&[]);
    spec.sans = vec![SanType::DnsName(
        "server.demo.svc.cluster.local".try_into().unwrap(),
    )];
    spec
}

/// URIs that are not workload identities: wrong scheme, no `ns`/`sa` path, an empty trust domain.
const NOT_IDENTITIES: &[&str] = &[
    "https://cluster.local/ns/demo/sa/client",
    "spiffe://cluster.local/workload/client",
    "spiffe:///ns/demo/sa/client",
];

#[tokio::test]
async fn peer_leaf_without_a_spiffe_identity_is_refused_both_ways() {
    let ca = test_ca(false);
    let mut specs = vec![("a DNS SAN only".to_owned(), dns_only())];
    for uri in NOT_IDENTITIES {
        specs.push((
            format!("URI SAN {uri}"),
            LeafSpec::with_uris(&[(*uri).to_owned()]),
        ));
    }
    for (what, spec) in &specs {
        let leaf = ca.leaf(spec);
        for backend in TlsBackend::all() {
            let s = accept_raw_client(&ca, Some(&leaf), *backend).await;
            assert!(
                matches!(
                    s,
                    Err(TlsError::PeerRejected(PeerCheckError::NoSpiffeIdentity))
                ),
                "{backend}: server, client leaf with {what}: {s:?}"
            );
            let c = connect_raw_server(&ca, &leaf, *backend).await;
            assert!(
                matches!(
                    c,
                    Err(TlsError::PeerRejected(PeerCheckError::NoSpiffeIdentity))
                ),
                "{backend}: client, server leaf with {what}: {c:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_workload_cert_without_a_spiffe_identity_is_not_loaded() {
    let ca = test_ca(false);
    let leaf = ca.leaf(&dns_only());
    let mut chain = leaf.chain.clone();
    chain.push(ca.root_pem.clone());
    let err = WorkloadCert::from_istio_chain(&chain, &leaf.key_pem).unwrap_err();
    assert!(matches!(err, TlsError::NoSpiffeIdentity), "{err:?}");
}

#[tokio::test]
async fn several_spiffe_sans_the_first_is_the_identity_any_may_match() {
    let ca = test_ca(false);
    let uris = [id("first").to_string(), id("second").to_string()];
    let two = ca.leaf(&LeafSpec::with_uris(&uris));
    for backend in TlsBackend::all() {
        // Server side: the identity policy sees is the first SAN.
        let s = accept_raw_client(&ca, Some(&two), *backend).await.unwrap();
        assert_eq!(s.peer_identity(), Some(id("first")), "{backend}");
        // Client side: expecting the second is satisfied, and the identity reported is still the first.
        let connector = TlsConnector::new(ca.issue("client"), *backend).unwrap();
        let acceptor = TlsAcceptor::new(two.workload_cert(&ca.root_pem), *backend).unwrap();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move { acceptor.accept(a).await });
        let c = connector.connect(b, &[id("second")]).await.unwrap();
        assert_eq!(c.peer_identity(), Some(id("first")), "{backend}");
        server.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn client_without_certificate_is_refused_as_such() {
    let ca = test_ca(false);
    for backend in TlsBackend::all() {
        let s = accept_raw_client(&ca, None, *backend).await;
        assert!(
            matches!(
                s,
                Err(TlsError::PeerRejected(PeerCheckError::NoCertificate))
            ),
            "{backend}: {s:?}"
        );
    }
}
