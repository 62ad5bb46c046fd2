//! The seam between the certificate manager and whoever signs: the Istio CA API over gRPC
//! (`grpc::IstioCaClient`) or an in-process CA (`ca::LocalCa`).

use std::time::Duration;

use crate::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The caller may not have this identity (bad token, impersonation refused).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The CA could not be reached or failed; worth retrying.
    #[error("CA unavailable: {0}")]
    Unavailable(String),
    /// The request itself is bad (malformed CSR, wrong SAN); retrying the same request will not help.
    #[error("invalid certificate request: {0}")]
    Invalid(String),
}

impl SignError {
    pub fn retryable(&self) -> bool {
        matches!(self, SignError::Unavailable(_))
    }
}

/// Signs a certificate request for one identity.
#[async_trait::async_trait]
pub trait CsrSigner: Send + Sync + 'static {
    /// `csr_pem` is a PKCS#10 request whose only URI SAN is `identity`. Returns the chain as the Istio CA does:
    /// the leaf PEM first, then intermediates, and the root bundle (one or more PEM certificates) last.
    async fn sign(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<String>, SignError>;
}

/// Why no signer could be set up.
#[derive(Debug, thiserror::Error)]
pub enum SignerSetupError {
    #[error("LOCAL_CA_DIR {0}: {1}")]
    LocalCa(std::path::PathBuf, crate::ca::CaError),
    #[error("FAKE_CA: {0}")]
    FakeCa(crate::ca::CaError),
    #[error("CA_ADDRESS: {0}")]
    Ca(crate::grpc::GrpcError),
    #[error("no certificate source: set CA_ADDRESS, FAKE_CA=true or LOCAL_CA_DIR")]
    None,
}

/// The certificate source both proxies honour, in this order: a local CA directory (`LOCAL_CA_DIR`), an
/// in-process CA with the fixed test-only root that every FAKE_CA process shares (`FAKE_CA`, see `ca/fake.rs`),
/// the Istio CA API (`CA_ADDRESS`; `impersonate` when one proxy asks for other workloads' identities, as a
/// shared-mode ztunnel does).
pub fn choose(
    local_ca_dir: Option<&std::path::Path>,
    fake_ca: bool,
    trust_domain: &str,
    ca: Option<(crate::grpc::ControlPlaneConfig, bool)>,
) -> Result<std::sync::Arc<dyn CsrSigner>, SignerSetupError> {
    use crate::ca::LocalCa;
    if let Some(dir) = local_ca_dir {
        let ca = LocalCa::load_or_create(dir, trust_domain)
            .map_err(|e| SignerSetupError::LocalCa(dir.into(), e))?;
        tracing::info!(dir = %dir.display(), "certificates from the local CA directory");
        return Ok(std::sync::Arc::new(ca));
    }
    if fake_ca {
        tracing::warn!(
            "FAKE_CA=true is for TESTS ONLY: certificates come from a fixed test root whose private key is public \
             (checked into Ambit's source), so anyone can mint any identity it trusts. Never use it in production; \
             set CA_ADDRESS or LOCAL_CA_DIR instead"
        );
        return Ok(std::sync::Arc::new(
            LocalCa::fake(trust_domain).map_err(SignerSetupError::FakeCa)?,
        ));
    }
    let (cp, impersonate) = ca.ok_or(SignerSetupError::None)?;
    let client = crate::grpc::IstioCaClient::new(cp, impersonate).map_err(SignerSetupError::Ca)?;
    Ok(std::sync::Arc::new(client))
}
