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
