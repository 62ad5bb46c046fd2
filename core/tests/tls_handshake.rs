//! Workload mTLS policy (spec 1.2), for every compiled-in backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::tls::{
    self, ClientTlsStream, PeerCheckError, ServerTlsStream, TlsAcceptor, TlsBackend, TlsConnector,
    TlsError, WorkloadCert,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const TTL: Duration = Duration::from_secs(3600);

fn id(td: &str, sa: &str) -> Identity {
    Identity::new(td, "demo", sa)
}

fn issue(ca: &LocalCa, identity: &Identity) -> Arc<WorkloadCert> {
    Arc::new(ca.issue_workload(identity, TTL).unwrap())
}

/// A certificate signed by `ca` whose root bundle also trusts `extra_roots`.
fn issue_with_roots(
    ca: &LocalCa,
    identity: &Identity,
    extra_roots: &[&LocalCa],
) -> Arc<WorkloadCert> {
    let (key, csr) = tls::generate_csr(identity).unwrap();
    let mut chain = ca.sign_csr(&csr, identity, TTL).unwrap();
    let bundle = chain.last_mut().unwrap();
    for other in extra_roots {
        bundle.push_str(&other.root_pem());
    }
    Arc::new(WorkloadCert::from_istio_chain(&chain, &key).unwrap())
}

type Outcome = (
    Result<ServerTlsStream<DuplexStream>, TlsError>,
    Result<ClientTlsStream<DuplexStream>, TlsError>,
);

async fn handshake(
    server: Arc<WorkloadCert>,
    client: Arc<WorkloadCert>,
    expected: &[Identity],
    server_backend: TlsBackend,
    client_backend: TlsBackend,
) -> Outcome {
    let acceptor = TlsAcceptor::new(server, server_backend).unwrap();
    let connector = TlsConnector::new(client, client_backend).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let expected = expected.to_vec();
    let server = tokio::spawn(async move { acceptor.accept(a).await });
    let client = tokio::spawn(async move { connector.connect(b, &expected).await });
    let (s, c) = tokio::join!(server, client);
    (s.unwrap(), c.unwrap())
}

/// Every (server, client) backend combination, so the backends are also checked against each other.
fn combos() -> Vec<(TlsBackend, TlsBackend)> {
    let mut out = Vec::new();
    for s in TlsBackend::all() {
        for c in TlsBackend::all() {
            out.push((*s, *c));
        }
    }
    out
}

#[tokio::test]
async fn matching_identities_connect_with_h2_and_carry_data() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let (server_id, client_id) = (id("cluster.local", "server"), id("cluster.local", "client"));
    let (server_cert, client_cert) = (issue(&ca, &server_id), issue(&ca, &client_id));
    for (sb, cb) in combos() {
        let other = id("cluster.local", "someone-else");
        let (s, c) = handshake(
            server_cert.clone(),
            client_cert.clone(),
            &[other, server_id.clone()],
            sb,
            cb,
        )
        .await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.peer_identity(), Some(client_id.clone()), "{sb}/{cb}");
        assert_eq!(c.peer_identity(), Some(server_id.clone()), "{sb}/{cb}");
        assert_eq!(s.alpn_protocol(), Some(&b"h2"[..]), "{sb}/{cb}");
        assert_eq!(c.alpn_protocol(), Some(&b"h2"[..]), "{sb}/{cb}");
        c.write_all(b"ping").await.unwrap();
        c.flush().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        s.write_all(b"pong").await.unwrap();
        s.flush().await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }
}

#[tokio::test]
async fn client_refuses_unexpected_server_identity() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let server_cert = issue(&ca, &id("cluster.local", "server"));
    let client_cert = issue(&ca, &id("cluster.local", "client"));
    for (sb, cb) in combos() {
        // Same name in another trust domain does not count either.
        let expected = [
            id("cluster.local", "not-the-server"),
            id("other.local", "server"),
        ];
        let (s, c) = handshake(server_cert.clone(), client_cert.clone(), &expected, sb, cb).await;
        match c {
            Err(TlsError::PeerRejected(PeerCheckError::UnexpectedIdentity { got, .. })) => {
                assert_eq!(
                    got,
                    vec!["spiffe://cluster.local/ns/demo/sa/server".to_owned()],
                    "{sb}/{cb}"
                )
            }
            other => panic!("{sb}/{cb}: expected an identity rejection, got {other:?}"),
        }
        assert!(
            s.is_err(),
            "{sb}/{cb}: the server must not see an established connection"
        );
    }
}

#[tokio::test]
async fn server_refuses_client_from_another_trust_domain_same_root() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let server_id = id("cluster.local", "server");
    let server_cert = issue(&ca, &server_id);
    // Same root, other trust domain in the SAN.
    let client_cert = issue(&ca, &id("other.local", "client"));
    for (sb, cb) in combos() {
        let (s, c) = handshake(
            server_cert.clone(),
            client_cert.clone(),
            std::slice::from_ref(&server_id),
            sb,
            cb,
        )
        .await;
        match s {
            Err(TlsError::PeerRejected(PeerCheckError::TrustDomainMismatch { expected, got })) => {
                assert_eq!(expected, "cluster.local");
                assert_eq!(got, vec!["other.local".to_owned()]);
            }
            other => panic!("{sb}/{cb}: expected a trust-domain rejection, got {other:?}"),
        }
        // The client may or may not notice before its handshake completes (TLS 1.3 client auth); it must not be
        // able to exchange data.
        if let Ok(mut c) = c {
            let mut buf = [0u8; 1];
            assert!(
                !matches!(c.read(&mut buf).await, Ok(n) if n > 0),
                "{sb}/{cb}"
            );
        }
    }
}

#[tokio::test]
async fn server_refuses_client_from_another_trust_domain_other_ca() {
    let ca1 = LocalCa::generate("cluster.local").unwrap();
    let ca2 = LocalCa::generate("other.local").unwrap();
    let server_id = id("cluster.local", "server");
    // Both sides trust both roots, so only the trust-domain check can refuse.
    let server_cert = issue_with_roots(&ca1, &server_id, &[&ca2]);
    let client_cert = issue_with_roots(&ca2, &id("other.local", "client"), &[&ca1]);
    for (sb, cb) in combos() {
        let (s, _c) = handshake(
            server_cert.clone(),
            client_cert.clone(),
            std::slice::from_ref(&server_id),
            sb,
            cb,
        )
        .await;
        assert!(
            matches!(
                s,
                Err(TlsError::PeerRejected(
                    PeerCheckError::TrustDomainMismatch { .. }
                ))
            ),
            "{sb}/{cb}: {s:?}"
        );
    }
}

#[tokio::test]
async fn server_refuses_client_from_untrusted_root() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let rogue = LocalCa::generate("cluster.local").unwrap();
    let server_id = id("cluster.local", "server");
    let server_cert = issue(&ca, &server_id);
    // The rogue client trusts the real root (so it accepts the server) but its own chain is from another root.
    let client_cert = issue_with_roots(&rogue, &id("cluster.local", "client"), &[&ca]);
    for (sb, cb) in combos() {
        let (s, _c) = handshake(
            server_cert.clone(),
            client_cert.clone(),
            std::slice::from_ref(&server_id),
            sb,
            cb,
        )
        .await;
        assert!(
            matches!(s, Err(TlsError::PeerRejected(PeerCheckError::Untrusted(_)))),
            "{sb}/{cb}: {s:?}"
        );
    }
}

#[tokio::test]
async fn client_refuses_server_from_untrusted_root() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let rogue = LocalCa::generate("cluster.local").unwrap();
    let server_id = id("cluster.local", "server");
    let server_cert = issue_with_roots(&rogue, &server_id, &[&ca]);
    let client_cert = issue(&ca, &id("cluster.local", "client"));
    for (sb, cb) in combos() {
        let (_s, c) = handshake(
            server_cert.clone(),
            client_cert.clone(),
            std::slice::from_ref(&server_id),
            sb,
            cb,
        )
        .await;
        assert!(
            matches!(c, Err(TlsError::PeerRejected(PeerCheckError::Untrusted(_)))),
            "{sb}/{cb}: {c:?}"
        );
    }
}

/// A plain rustls client restricted by `configure`, against our acceptor.
async fn raw_client_against(
    server: Arc<WorkloadCert>,
    backend: TlsBackend,
    config: rustls::ClientConfig,
) -> (
    Result<ServerTlsStream<DuplexStream>, TlsError>,
    std::io::Result<()>,
) {
    let acceptor = TlsAcceptor::new(server, backend).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move { acceptor.accept(a).await });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("server.invalid").unwrap();
    let client = tokio::spawn(async move { connector.connect(name, b).await.map(|_| ()) });
    let (s, c) = tokio::join!(server, client);
    (s.unwrap(), c.unwrap())
}

fn roots_of(ca: &LocalCa) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(ca.root_pem().as_bytes()).unwrap();
    roots.add(der).unwrap();
    roots
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    tls::install_default_provider();
    let ca = LocalCa::generate("cluster.local").unwrap();
    let server_cert = issue(&ca, &id("cluster.local", "server"));
    for backend in TlsBackend::all() {
        let config =
            rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
                .with_root_certificates(roots_of(&ca))
                .with_no_client_auth();
        let (s, c) = raw_client_against(server_cert.clone(), *backend, config).await;
        assert!(matches!(s, Err(TlsError::Handshake(_))), "{backend}: {s:?}");
        assert!(c.is_err(), "{backend}");
    }
}

#[tokio::test]
async fn client_offering_only_other_alpn_is_refused() {
    tls::install_default_provider();
    let ca = LocalCa::generate("cluster.local").unwrap();
    let server_cert = issue(&ca, &id("cluster.local", "server"));
    for backend in TlsBackend::all() {
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots_of(&ca))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let (s, _c) = raw_client_against(server_cert.clone(), *backend, config).await;
        assert!(s.is_err(), "{backend}: {s:?}");
    }
}

#[tokio::test]
async fn client_hello_has_no_sni_only_h2_and_no_chacha() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let client_cert = issue(&ca, &id("cluster.local", "client"));
    for backend in TlsBackend::all() {
        let connector = TlsConnector::new(client_cert.clone(), *backend).unwrap();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let client =
            tokio::spawn(
                async move { connector.connect(b, &[id("cluster.local", "server")]).await },
            );
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), a);
        let start = acceptor.await.unwrap();
        let hello = start.client_hello();
        assert_eq!(hello.server_name(), None, "{backend}: SNI must not be sent");
        let alpn: Vec<&[u8]> = hello.alpn().unwrap().collect();
        assert_eq!(alpn, vec![&b"h2"[..]], "{backend}");
        let suites = hello.cipher_suites();
        assert!(
            suites.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384),
            "{backend}: {suites:?}"
        );
        assert!(
            suites.contains(&rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
            "{backend}: {suites:?}"
        );
        assert!(
            !suites.contains(&rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
            "{backend}: {suites:?}"
        );
        drop(start);
        assert!(client.await.unwrap().is_err());
    }
}
