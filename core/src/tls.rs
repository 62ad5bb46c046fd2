//! Mutual TLS between workloads (HBONE, spec 1.2): TLS 1.3 only, AES-GCM suites only, ALPN `h2`, no SNI, no
//! resumption, SPIFFE identities checked instead of host names.
//!
//! A [`WorkloadCert`] holds one identity's key, chain and roots, parsed once; [`TlsAcceptor`] and [`TlsConnector`]
//! use the TLS configuration cached inside it. The backend (rustls, or BoringSSL with the `tls-boring` feature) is
//! chosen at run time with [`TlsBackend`].

mod crl;
mod policy;
mod revocation;
mod stream;
#[cfg(feature = "tls-boring")]
mod with_boring;
mod with_rustls;
mod workload;

use std::str::FromStr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::identity::Identity;

pub use crl::{CrlError, CrlStore, DEFAULT_CRL_POLL};
pub use policy::{CompliancePolicy, TlsPolicy};
pub use revocation::{RevocationWatch, Revoked, until_revoked};
pub use stream::{ClientTlsStream, ServerTlsStream};
pub use workload::{CertSummary, WorkloadCert};

pub(crate) use workload::{der_to_pem, parse_pem_certs, spiffe_identities};

/// The only ALPN protocol either side offers or accepts.
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA answered with fewer than two elements (leaf + root bundle).
    #[error("no root certificate present")]
    NoRootCertificate,
    #[error("leaf certificate has no SPIFFE URI SAN")]
    NoSpiffeIdentity,
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    #[error("invalid private key: {0}")]
    InvalidKey(String),
    /// Building the TLS configuration from a certificate failed.
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("unknown TLS backend {0:?} (expected \"rustls\" or \"boring\")")]
    UnknownBackend(String),
    #[error("TLS backend {0} is not compiled in")]
    BackendUnavailable(&'static str),
    #[error("unknown COMPLIANCE_POLICY {0:?} (expected \"\" or \"pqc\")")]
    UnknownCompliancePolicy(String),
    /// A combination of settings this build cannot honour.
    #[error("unsupported TLS setting: {0}")]
    Unsupported(String),
    #[error("generating a certificate request: {0}")]
    Csr(String),
    /// We refused the peer's certificate during the handshake.
    #[error("peer certificate rejected: {0}")]
    PeerRejected(#[from] PeerCheckError),
    /// The handshake failed for another reason (the peer refused us, no common version or suite, I/O).
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
}

impl TlsError {
    /// Whether the failure is about the peer's certificate or identity (as opposed to local config or I/O).
    pub fn is_peer_rejected(&self) -> bool {
        matches!(self, TlsError::PeerRejected(_))
    }
}

/// Why we refused the peer's certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerCheckError {
    #[error("certificate chain does not verify to our roots: {0}")]
    Untrusted(String),
    #[error("peer leaf has no SPIFFE URI SAN")]
    NoSpiffeIdentity,
    #[error("peer identities {got:?} include none of the expected {expected:?}")]
    UnexpectedIdentity {
        expected: Vec<String>,
        got: Vec<String>,
    },
    #[error("peer trust domains {got:?} differ from ours ({expected})")]
    TrustDomainMismatch { expected: String, got: Vec<String> },
    #[error("peer presented no certificate")]
    NoCertificate,
    #[error("peer certificate (or one of its issuers) is revoked by the configured CRL")]
    Revoked,
}

/// Which TLS library runs the handshakes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TlsBackend {
    #[default]
    Rustls,
    #[cfg(feature = "tls-boring")]
    Boring,
}

impl TlsBackend {
    /// Every backend compiled into this binary.
    pub fn all() -> &'static [TlsBackend] {
        &[
            TlsBackend::Rustls,
            #[cfg(feature = "tls-boring")]
            TlsBackend::Boring,
        ]
    }

    pub fn name(self) -> &'static str {
        match self {
            TlsBackend::Rustls => "rustls",
            #[cfg(feature = "tls-boring")]
            TlsBackend::Boring => "boring",
        }
    }
}

impl std::fmt::Display for TlsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TlsBackend {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rustls" => Ok(TlsBackend::Rustls),
            #[cfg(feature = "tls-boring")]
            "boring" | "boringssl" => Ok(TlsBackend::Boring),
            #[cfg(not(feature = "tls-boring"))]
            "boring" | "boringssl" => Err(TlsError::BackendUnavailable("boring")),
            other => Err(TlsError::UnknownBackend(other.to_owned())),
        }
    }
}

/// Installs aws-lc-rs as rustls' process-wide default provider (used by tonic and other rustls users). Idempotent.
pub fn install_default_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A fresh ECDSA P-256 key and a PKCS#10 request for `identity` (empty subject, one URI SAN): spec 3.2.
/// Returns `(PKCS#8 key PEM, CSR PEM)`.
pub fn generate_csr(identity: &Identity) -> Result<(String, String), TlsError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::Csr(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = rcgen::string::Ia5String::try_from(identity.to_string())
        .map_err(|e| TlsError::Csr(e.to_string()))?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| TlsError::Csr(e.to_string()))?;
    let csr_pem = csr.pem().map_err(|e| TlsError::Csr(e.to_string()))?;
    Ok((key.serialize_pem(), csr_pem))
}

/// Server side of workload mTLS for one identity (one per listener).
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: AcceptorInner,
}

#[derive(Clone)]
enum AcceptorInner {
    Rustls(tokio_rustls::TlsAcceptor, Arc<with_rustls::Configs>),
    #[cfg(feature = "tls-boring")]
    Boring(Arc<with_boring::Contexts>),
}

impl TlsAcceptor {
    /// Cheap: uses the configuration cached in `cert` (built on first use), under the process policy
    /// ([`TlsPolicy::install`]).
    pub fn new(cert: Arc<WorkloadCert>, backend: TlsBackend) -> Result<Self, TlsError> {
        Self::with_policy(cert, backend, TlsPolicy::process())
    }

    /// Like [`TlsAcceptor::new`] with an explicit policy.
    pub fn with_policy(
        cert: Arc<WorkloadCert>,
        backend: TlsBackend,
        policy: &TlsPolicy,
    ) -> Result<Self, TlsError> {
        policy.check_backend(backend)?;
        let inner = match backend {
            TlsBackend::Rustls => {
                let configs = with_rustls::configs(&cert, policy)?;
                AcceptorInner::Rustls(
                    tokio_rustls::TlsAcceptor::from(configs.server.clone()),
                    configs,
                )
            }
            #[cfg(feature = "tls-boring")]
            TlsBackend::Boring => AcceptorInner::Boring(with_boring::contexts(&cert, policy)?),
        };
        Ok(TlsAcceptor { inner })
    }

    /// Runs the server handshake. The client must present a certificate chaining to our roots whose SPIFFE SAN
    /// has our trust domain.
    pub async fn accept<IO>(&self, io: IO) -> Result<ServerTlsStream<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match &self.inner {
            AcceptorInner::Rustls(acceptor, configs) => {
                with_rustls::accept(acceptor, configs, io).await
            }
            #[cfg(feature = "tls-boring")]
            AcceptorInner::Boring(ctx) => with_boring::accept(ctx, io).await,
        }
    }
}

/// Client side of workload mTLS for one source identity.
#[derive(Clone)]
pub struct TlsConnector {
    inner: ConnectorInner,
}

#[derive(Clone)]
enum ConnectorInner {
    Rustls(Arc<with_rustls::Configs>),
    #[cfg(feature = "tls-boring")]
    Boring(Arc<with_boring::Contexts>),
}

impl TlsConnector {
    /// Cheap: uses the configuration cached in `cert` (built on first use), under the process policy
    /// ([`TlsPolicy::install`]).
    pub fn new(cert: Arc<WorkloadCert>, backend: TlsBackend) -> Result<Self, TlsError> {
        Self::with_policy(cert, backend, TlsPolicy::process())
    }

    /// Like [`TlsConnector::new`] with an explicit policy.
    pub fn with_policy(
        cert: Arc<WorkloadCert>,
        backend: TlsBackend,
        policy: &TlsPolicy,
    ) -> Result<Self, TlsError> {
        policy.check_backend(backend)?;
        let inner = match backend {
            TlsBackend::Rustls => ConnectorInner::Rustls(with_rustls::configs(&cert, policy)?),
            #[cfg(feature = "tls-boring")]
            TlsBackend::Boring => ConnectorInner::Boring(with_boring::contexts(&cert, policy)?),
        };
        Ok(TlsConnector { inner })
    }

    /// Runs the client handshake; the server leaf must carry one of `expected` as a SPIFFE URI SAN. No SNI is sent
    /// and host names are not checked.
    pub async fn connect<IO>(
        &self,
        io: IO,
        expected: &[Identity],
    ) -> Result<ClientTlsStream<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match &self.inner {
            ConnectorInner::Rustls(configs) => with_rustls::connect(configs, io, expected).await,
            #[cfg(feature = "tls-boring")]
            ConnectorInner::Boring(ctx) => with_boring::connect(ctx, io, expected).await,
        }
    }
}

/// Checks the peer leaf's SPIFFE SANs against the expected identities (client side).
pub(crate) fn check_expected(
    leaf_der: &[u8],
    expected: &[Identity],
) -> Result<Identity, PeerCheckError> {
    let ids = spiffe_identities(leaf_der).map_err(PeerCheckError::Untrusted)?;
    let first = ids
        .first()
        .cloned()
        .ok_or(PeerCheckError::NoSpiffeIdentity)?;
    if ids.iter().any(|id| expected.contains(id)) {
        Ok(first)
    } else {
        Err(PeerCheckError::UnexpectedIdentity {
            expected: expected.iter().map(ToString::to_string).collect(),
            got: ids.iter().map(ToString::to_string).collect(),
        })
    }
}

/// Checks that one of the peer leaf's SPIFFE SANs is in `trust_domain` (server side).
pub(crate) fn check_trust_domain(
    leaf_der: &[u8],
    trust_domain: &str,
) -> Result<Identity, PeerCheckError> {
    let ids = spiffe_identities(leaf_der).map_err(PeerCheckError::Untrusted)?;
    let first = ids
        .first()
        .cloned()
        .ok_or(PeerCheckError::NoSpiffeIdentity)?;
    if ids.iter().any(|id| id.trust_domain == trust_domain) {
        Ok(first)
    } else {
        Err(PeerCheckError::TrustDomainMismatch {
            expected: trust_domain.to_owned(),
            got: ids.iter().map(|id| id.trust_domain.clone()).collect(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn backend_from_str() {
        assert_eq!("rustls".parse::<TlsBackend>().unwrap(), TlsBackend::Rustls);
        assert_eq!(
            " RUSTLS ".parse::<TlsBackend>().unwrap(),
            TlsBackend::Rustls
        );
        assert!(matches!(
            "openssl".parse::<TlsBackend>(),
            Err(TlsError::UnknownBackend(_))
        ));
        #[cfg(feature = "tls-boring")]
        assert_eq!("boring".parse::<TlsBackend>().unwrap(), TlsBackend::Boring);
        #[cfg(not(feature = "tls-boring"))]
        assert!(matches!(
            "boring".parse::<TlsBackend>(),
            Err(TlsError::BackendUnavailable(_))
        ));
        assert_eq!(TlsBackend::default(), TlsBackend::Rustls);
    }

    #[test]
    fn csr_has_one_uri_san_and_empty_subject() {
        let id = Identity::new("cluster.local", "ns1", "sa1");
        let (key_pem, csr_pem) = generate_csr(&id).unwrap();
        assert!(key_pem.contains("BEGIN PRIVATE KEY"));
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
        assert_eq!(parsed.params.distinguished_name.iter().count(), 0);
        assert_eq!(parsed.params.subject_alt_names.len(), 1);
        match &parsed.params.subject_alt_names[0] {
            rcgen::SanType::URI(uri) => assert_eq!(uri.as_str(), id.to_string()),
            other => panic!("unexpected SAN {other:?}"),
        }
    }

    #[test]
    fn istio_chain_needs_a_root() {
        let err = WorkloadCert::from_istio_chain(&["x".to_owned()], "k").unwrap_err();
        assert_eq!(err.to_string(), "no root certificate present");
        assert!(matches!(
            WorkloadCert::from_istio_chain(&[], "k"),
            Err(TlsError::NoRootCertificate)
        ));
    }
}
