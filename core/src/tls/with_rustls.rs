//! The rustls backend: configs built once per [`WorkloadCert`], SPIFFE-aware verifiers.

use std::sync::{Arc, LazyLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, SupportedKxGroup, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, NamedGroup,
    OtherError, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::crl::CrlStore;
use super::policy::{CompliancePolicy, TlsPolicy};
use super::stream::Inner;
use super::{ALPN_H2, ClientTlsStream, PeerCheckError, ServerTlsStream, TlsError, WorkloadCert};
use crate::identity::Identity;

/// aws-lc-rs restricted to the workload policy: TLS 1.3 AES-256-GCM and AES-128-GCM only, the provider's default
/// key exchange groups (X25519 first, X25519MLKEM768 last: see [`CompliancePolicy::Default`]).
static PROVIDER: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| Arc::new(workload_provider()));

/// [`PROVIDER`] with key exchange limited to X25519MLKEM768 (`COMPLIANCE_POLICY=pqc`).
static PQC_PROVIDER: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| {
    let mut provider = workload_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768];
    Arc::new(provider)
});

fn workload_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    provider
}

fn provider(compliance: CompliancePolicy) -> Arc<CryptoProvider> {
    match compliance {
        CompliancePolicy::Default => PROVIDER.clone(),
        CompliancePolicy::Pqc => PQC_PROVIDER.clone(),
    }
}

/// Never sent (SNI is disabled) and never checked; rustls wants some name.
static DUMMY_NAME: LazyLock<ServerName<'static>> =
    LazyLock::new(|| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()));

/// The cached configs of one workload certificate.
pub(crate) struct Configs {
    pub(crate) server: Arc<ServerConfig>,
    /// Complete except for the per-connection identity verifier.
    client: ClientConfig,
    roots: Arc<RootCertStore>,
    crl: Option<Arc<CrlStore>>,
}

/// The configs of `cert` under `policy`, built on first use.
pub(crate) fn configs(cert: &WorkloadCert, policy: &TlsPolicy) -> Result<Arc<Configs>, TlsError> {
    cert.rustls.get_or_build(policy, || build(cert, policy))
}

fn build(cert: &WorkloadCert, policy: &TlsPolicy) -> Result<Configs, TlsError> {
    let provider = provider(policy.compliance);
    let mut roots = RootCertStore::empty();
    for root in cert.roots_der() {
        roots
            .add(root.clone())
            .map_err(|e| TlsError::InvalidCertificate(format!("unusable root: {e}")))?;
    }
    let roots = Arc::new(roots);
    let chain: Vec<CertificateDer<'static>> = cert.chain_der().to_vec();
    let key = || PrivateKeyDer::Pkcs8(cert.key_der().clone_key());

    let certified = rustls::sign::CertifiedKey::from_der(chain.clone(), key(), &provider).map_err(
        |e| match e {
            rustls::Error::InconsistentKeys(_) => {
                TlsError::InvalidKey("private key does not match the leaf".into())
            }
            other => TlsError::InvalidKey(other.to_string()),
        },
    )?;
    drop(certified);

    let webpki = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
    let verifier = Arc::new(TrustDomainVerifier {
        inner: webpki,
        trust_domain: cert.identity().trust_domain.clone(),
        roots: roots.clone(),
        crl: policy.crl.clone(),
    });
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key())
        .map_err(|e| TlsError::InvalidKey(e.to_string()))?;
    server.alpn_protocols = vec![ALPN_H2.to_vec()];
    server.session_storage = Arc::new(NoServerSessionStorage {});
    server.send_tls13_tickets = 0;

    let placeholder = Arc::new(IdentityVerifier {
        roots: roots.clone(),
        algs: algs(),
        expected: Vec::new(),
        crl: policy.crl.clone(),
    });
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(placeholder)
        .with_client_auth_cert(chain, key())
        .map_err(|e| TlsError::InvalidKey(e.to_string()))?;
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    client.enable_sni = false;
    client.resumption = Resumption::disabled();

    Ok(Configs {
        server: Arc::new(server),
        client,
        roots,
        crl: policy.crl.clone(),
    })
}

fn algs() -> WebPkiSupportedAlgorithms {
    PROVIDER.signature_verification_algorithms
}

pub(super) async fn accept<IO>(
    acceptor: &tokio_rustls::TlsAcceptor,
    configs: &Configs,
    io: IO,
) -> Result<ServerTlsStream<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stream = acceptor.accept(io).await.map_err(handshake_error)?;
    let (_, conn) = stream.get_ref();
    let peer = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| first_identity(leaf));
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let group = group_name(conn.negotiated_key_exchange_group());
    let revocation = revocation(
        configs,
        conn.peer_certificates(),
        webpki::KeyUsage::client_auth(),
    );
    Ok(ServerTlsStream {
        inner: Inner::Rustls(stream),
        peer,
        alpn,
        group,
        revocation,
    })
}

/// The watch on a connection's peer chain when a CRL is in force.
fn revocation(
    configs: &Configs,
    chain: Option<&[CertificateDer<'_>]>,
    usage: webpki::KeyUsage,
) -> Option<Box<super::RevocationWatch>> {
    let crl = configs.crl.clone()?;
    super::RevocationWatch::new(crl, chain?, configs.roots.clone(), usage)
}

pub(super) async fn connect<IO>(
    configs: &Configs,
    io: IO,
    expected: &[Identity],
) -> Result<ClientTlsStream<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The identity check needs this connection's expected list: clone the cached config (a few Arc clones) and
    // give it its own verifier, so a wrong server is refused inside the handshake, before our certificate is sent.
    let mut config = configs.client.clone();
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(IdentityVerifier {
            roots: configs.roots.clone(),
            algs: algs(),
            expected: expected.to_vec(),
            crl: configs.crl.clone(),
        }));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = connector
        .connect(DUMMY_NAME.clone(), io)
        .await
        .map_err(handshake_error)?;
    let (_, conn) = stream.get_ref();
    let peer = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| first_identity(leaf));
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let group = group_name(conn.negotiated_key_exchange_group());
    let revocation = revocation(
        configs,
        conn.peer_certificates(),
        webpki::KeyUsage::server_auth(),
    );
    Ok(ClientTlsStream {
        inner: Inner::Rustls(stream),
        peer,
        alpn,
        group,
        revocation,
    })
}

/// The IANA name of the key exchange group, as both backends spell it (`X25519MLKEM768`, `secp256r1`...).
fn group_name(group: Option<&'static dyn SupportedKxGroup>) -> Option<String> {
    group.map(|g| match g.name() {
        NamedGroup::X25519MLKEM768 => "X25519MLKEM768".to_owned(),
        NamedGroup::X25519 => "X25519".to_owned(),
        NamedGroup::secp256r1 => "P-256".to_owned(),
        NamedGroup::secp384r1 => "P-384".to_owned(),
        other => format!("{other:?}"),
    })
}

fn first_identity(leaf: &CertificateDer<'_>) -> Option<Identity> {
    super::spiffe_identities(leaf)
        .ok()
        .and_then(|ids| ids.into_iter().next())
}

/// Turns a tokio-rustls handshake error into a [`TlsError`] that says which check failed.
fn handshake_error(e: std::io::Error) -> TlsError {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return TlsError::Handshake(e.to_string());
    };
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<PeerCheckError>() {
                Some(check) => TlsError::PeerRejected(check.clone()),
                None => TlsError::PeerRejected(PeerCheckError::Untrusted(other.to_string())),
            }
        }
        rustls::Error::InvalidCertificate(CertificateError::Revoked) => {
            TlsError::PeerRejected(PeerCheckError::Revoked)
        }
        rustls::Error::InvalidCertificate(cert) => {
            TlsError::PeerRejected(PeerCheckError::Untrusted(format!("{cert:?}")))
        }
        rustls::Error::NoCertificatesPresented => {
            TlsError::PeerRejected(PeerCheckError::NoCertificate)
        }
        other => TlsError::Handshake(other.to_string()),
    }
}

fn reject(check: PeerCheckError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(check))))
}

/// Checks the chain against the CRLs in force (the leaf and every intermediate), after the ordinary chain check
/// passed. Like upstream: a certificate no CRL speaks for is accepted, and stale CRLs still count.
pub(super) fn check_revocation(
    crl: Option<&CrlStore>,
    roots: &RootCertStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<(), rustls::Error> {
    let Some(crl) = crl else { return Ok(()) };
    let set = crl.snapshot();
    let refs: Vec<&webpki::CertRevocationList<'_>> = set.crls.iter().collect();
    let Ok(builder) = webpki::RevocationOptionsBuilder::new(&refs) else {
        // No CRL in the file: nothing is revoked.
        return Ok(());
    };
    let revocation = builder
        .with_depth(webpki::RevocationCheckDepth::Chain)
        .with_status_policy(webpki::UnknownStatusPolicy::Allow)
        .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
        .build();
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| reject(PeerCheckError::Untrusted(e.to_string())))?;
    match cert.verify_for_usage(
        algs().all,
        &roots.roots,
        intermediates,
        now,
        usage,
        Some(revocation),
        None,
    ) {
        Ok(_) => Ok(()),
        // rustls's own variant, so the peer is told `certificate_revoked` (RFC 8446 6.2), not `certificate_unknown`;
        // `handshake_error` maps it back to `PeerCheckError::Revoked`.
        Err(webpki::Error::CertRevoked) => {
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        }
        Err(e) => Err(reject(PeerCheckError::Untrusted(e.to_string()))),
    }
}

/// Server side: webpki client-auth verification against our roots, the revocation check, then the trust-domain
/// check.
#[derive(Debug)]
struct TrustDomainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
    roots: Arc<RootCertStore>,
    crl: Option<Arc<CrlStore>>,
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Like upstream: no CA hints; the client always sends its workload chain.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_revocation(
            self.crl.as_deref(),
            &self.roots,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        super::check_trust_domain(end_entity, &self.trust_domain).map_err(reject)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client side: chain to our roots with serverAuth usage, the revocation check, no host name check, one SPIFFE
/// SAN must be expected.
#[derive(Debug)]
struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
    expected: Vec<Identity>,
    crl: Option<Arc<CrlStore>>,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        check_revocation(
            self.crl.as_deref(),
            &self.roots,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        super::check_expected(end_entity, &self.expected).map_err(reject)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
