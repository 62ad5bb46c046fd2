//! The CA: `istio.v1.auth.IstioCertificateService/CreateCertificate`, authenticated with the controller's own
//! bearer tokens ([`token`]).

pub mod service;
pub mod token;

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ambit_core::signer::CsrSigner;

use tonic::metadata::MetadataMap;

pub use service::{CaMetrics, CaService, PodDirectory};
pub use token::{Subject, TokenAuthority, TokenError};

/// Authenticates a gRPC caller from its request metadata.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, metadata: &MetadataMap) -> Result<Subject, AuthError>;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token")]
    NoToken,
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// The token of an `authorization: Bearer <token>` header.
pub fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let v = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

impl Authenticator for TokenAuthority {
    fn authenticate(&self, metadata: &MetadataMap) -> Result<Subject, AuthError> {
        let token = bearer(metadata).ok_or(AuthError::NoToken)?;
        Ok(self.verify(token, SystemTime::now())?)
    }
}

/// What the controller needs from its certificate authority: signing workload CSRs, the root to publish, and
/// the serving certificate of the secure port.
pub trait Authority: CsrSigner {
    /// The root bundle (PEM), written to `<state-dir>/root-cert.pem`.
    fn root_pem(&self) -> String;
    /// A server certificate chain (leaf first) and its private key (PEM) for the given names and addresses.
    fn serving_cert(
        &self,
        dns: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<(Vec<String>, String), String>;
}

impl Authority for ambit_core::ca::LocalCa {
    fn root_pem(&self) -> String {
        ambit_core::ca::LocalCa::root_pem(self)
    }

    fn serving_cert(
        &self,
        dns: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<(Vec<String>, String), String> {
        self.issue_server_cert(dns, ips, ttl)
            .map_err(|e| e.to_string())
    }
}
