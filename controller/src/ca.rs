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

/// The token of an `authorization: Bearer <token>` header. Whitespace around the value, between the scheme and
/// the token (spaces or tabs) and after the token is ignored: token files are sent as they are, and a file edited
/// by hand may end in a blank. `None` for another scheme or an empty token.
pub fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let v = metadata.get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn header(v: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", v.parse().unwrap());
        m
    }

    #[test]
    fn bearer_ignores_surrounding_whitespace() {
        for v in [
            "Bearer tok",
            "bearer tok",
            "Bearer  tok ",
            "Bearer\ttok\t",
            " Bearer tok",
        ] {
            assert_eq!(bearer(&header(v)), Some("tok"), "{v:?}");
        }
        for v in ["Basic tok", "Bearer", "Bearer   ", "Bearertok"] {
            assert_eq!(bearer(&header(v)), None, "{v:?}");
        }
        assert_eq!(bearer(&MetadataMap::new()), None);
    }
}
