//! The gRPC channel to the control plane (xDS and CA share it, spec 2.1 and 3.1), and the Istio CA client.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::ca::IstioCertificateRequest;
use ambit_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::identity::Identity;
use crate::signer::{CsrSigner, SignError};

const DEFAULT_TOKEN_PATH: &str = "./var/run/secrets/tokens/istio-token";

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("control plane address {0:?}: {1}")]
    Address(String, String),
    #[error("root certificate: {0}")]
    RootCa(String),
    #[error("token: {0}")]
    Token(String),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Where the control plane's server certificate is verified against.
#[derive(Clone, Debug)]
pub enum RootCa {
    File(PathBuf),
    Pem(String),
    System,
}

impl RootCa {
    /// `XDS_ROOT_CA` / `CA_ROOT_CA`: an existing path, `SYSTEM`, or the PEM itself.
    pub fn from_env_value(s: &str) -> RootCa {
        if s == "SYSTEM" {
            RootCa::System
        } else if Path::new(s).exists() {
            RootCa::File(PathBuf::from(s))
        } else if s.contains("-----BEGIN") {
            RootCa::Pem(s.to_owned())
        } else {
            // A path that does not exist (yet): fail clearly when connecting rather than treat it as PEM.
            RootCa::File(PathBuf::from(s))
        }
    }
}

/// Where the bearer token comes from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    None,
    Literal(String),
    /// Re-read on every request (projected tokens rotate).
    File(PathBuf),
}

impl TokenSource {
    /// `AUTH_TOKEN`: an existing path, else the token itself; unset ⇒ the default token file if present.
    pub fn from_env(v: Option<&str>) -> TokenSource {
        match v {
            Some(v) if !v.is_empty() && Path::new(v).exists() => {
                TokenSource::File(PathBuf::from(v))
            }
            Some(v) if !v.is_empty() => TokenSource::Literal(v.to_owned()),
            _ if Path::new(DEFAULT_TOKEN_PATH).exists() => {
                TokenSource::File(PathBuf::from(DEFAULT_TOKEN_PATH))
            }
            _ => TokenSource::None,
        }
    }

    pub fn token(&self) -> Result<Option<String>, GrpcError> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::Literal(t) => Ok(Some(t.clone())),
            TokenSource::File(p) => {
                let t = std::fs::read_to_string(p)
                    .map_err(|e| GrpcError::Token(format!("{}: {e}", p.display())))?;
                if t.is_empty() {
                    return Err(GrpcError::Token(format!("{} is empty", p.display())));
                }
                Ok(Some(t))
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct ControlPlaneConfig {
    pub address: String,
    pub root_ca: RootCa,
    pub alt_hostname: Option<String>,
    pub token: TokenSource,
    pub cluster_id: String,
    pub extra_headers: Vec<(String, String)>,
}

/// Adds `authorization`, `clusterid` and the extra headers to every call.
#[derive(Clone)]
pub struct AuthInterceptor {
    token: Arc<TokenSource>,
    cluster_id: String,
    extra: Arc<Vec<(String, String)>>,
}

impl AuthInterceptor {
    pub fn new(cfg: &ControlPlaneConfig) -> Self {
        AuthInterceptor {
            token: Arc::new(cfg.token.clone()),
            cluster_id: cfg.cluster_id.clone(),
            extra: Arc::new(cfg.extra_headers.clone()),
        }
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let md = req.metadata_mut();
        // A token file that cannot be read (yet) is a local, transient problem: callers retry on Unavailable.
        let token = self
            .token
            .token()
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        if let Some(t) = token {
            // Spec 2.1 uses the file verbatim; a trailing line break cannot go into a header, so it is dropped.
            let t = t.trim_end_matches(['\n', '\r']);
            if t.is_empty() {
                return Err(tonic::Status::unavailable("token: empty"));
            }
            let v = format!("Bearer {t}");
            md.insert(
                "authorization",
                v.parse()
                    .map_err(|_| tonic::Status::internal("token is not a valid header"))?,
            );
        }
        if !self.cluster_id.is_empty()
            && let Ok(v) = self.cluster_id.parse()
        {
            md.insert("clusterid", v);
        }
        for (k, v) in self.extra.iter() {
            if let (Ok(k), Ok(v)) = (
                k.to_ascii_lowercase()
                    .parse::<tonic::metadata::AsciiMetadataKey>(),
                v.parse(),
            ) {
                md.insert(k, v);
            }
        }
        Ok(req)
    }
}

pub type AuthChannel = InterceptedService<Channel, AuthInterceptor>;

/// A lazily connecting channel. TLS is mandatory: `http://` is refused, a scheme-less address gets `https://`.
pub fn connect(cfg: &ControlPlaneConfig) -> Result<AuthChannel, GrpcError> {
    let addr = if cfg.address.contains("://") {
        cfg.address.clone()
    } else {
        format!("https://{}", cfg.address)
    };
    if !addr.starts_with("https://") {
        return Err(GrpcError::Address(
            cfg.address.clone(),
            "only https:// is supported (TLS is mandatory)".into(),
        ));
    }
    let uri: http::Uri = addr
        .parse()
        .map_err(|e| GrpcError::Address(cfg.address.clone(), format!("{e}")))?;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let mut tls = ClientTlsConfig::new().domain_name(cfg.alt_hostname.clone().unwrap_or(host));
    tls = match &cfg.root_ca {
        RootCa::System => tls.with_native_roots(),
        RootCa::Pem(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
        RootCa::File(p) => {
            let pem =
                std::fs::read(p).map_err(|e| GrpcError::RootCa(format!("{}: {e}", p.display())))?;
            tls.ca_certificate(Certificate::from_pem(pem))
        }
    };
    let channel = Endpoint::from_shared(addr)
        .map_err(|e| GrpcError::Address(cfg.address.clone(), e.to_string()))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .tcp_keepalive(Some(Duration::from_secs(300)))
        .tcp_keepalive_interval(Some(Duration::from_secs(75)))
        .tcp_keepalive_retries(Some(9))
        .connect_lazy();
    Ok(InterceptedService::new(channel, AuthInterceptor::new(cfg)))
}

/// How long one certificate request may wait for the CA's answer.
pub const CA_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `istio.v1.auth.IstioCertificateService` client.
pub struct IstioCaClient {
    client: IstioCertificateServiceClient<AuthChannel>,
    impersonate: bool,
}

impl IstioCaClient {
    /// `impersonate`: node (shared) mode asks for other identities with `ImpersonatedIdentity`.
    pub fn new(cfg: ControlPlaneConfig, impersonate: bool) -> Result<Self, GrpcError> {
        Ok(IstioCaClient {
            client: IstioCertificateServiceClient::new(connect(&cfg)?),
            impersonate,
        })
    }
}

fn first_uri_san(pem: &str) -> Option<String> {
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = der.parse_x509().ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
        _ => None,
    })
}

#[async_trait::async_trait]
impl CsrSigner for IstioCaClient {
    async fn sign(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<String>, SignError> {
        let metadata = self.impersonate.then(|| prost_types::Struct {
            fields: [(
                "ImpersonatedIdentity".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(identity.to_string())),
                },
            )]
            .into_iter()
            .collect(),
        });
        let req = IstioCertificateRequest {
            csr: csr_pem.to_owned(),
            validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            metadata,
        };
        // A CA that accepted the connection but does not answer (stopped, overloaded) must not hold the request
        // until the HTTP/2 keepalive gives up (40 s): the certificate manager retries, and a renewal is due.
        let resp = tokio::time::timeout(
            CA_REQUEST_TIMEOUT,
            self.client.clone().create_certificate(req),
        )
        .await
        .map_err(|_| {
            SignError::Unavailable(format!(
                "no answer from the CA in {} s",
                CA_REQUEST_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|s| match s.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                SignError::Unauthenticated(s.message().to_owned())
            }
            tonic::Code::InvalidArgument => SignError::Invalid(s.message().to_owned()),
            _ => SignError::Unavailable(format!("{}: {}", s.code(), s.message())),
        })?;
        let chain = resp.into_inner().cert_chain;
        if chain.len() < 2 {
            return Err(SignError::Invalid("no root certificate present".into()));
        }
        if self.impersonate {
            let san = first_uri_san(&chain[0]);
            if san.as_deref() != Some(identity.to_string().as_str()) {
                return Err(SignError::Invalid(format!(
                    "CA issued {san:?}, asked for {identity}"
                )));
            }
        }
        Ok(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let cfg = |a: &str| ControlPlaneConfig {
            address: a.into(),
            root_ca: RootCa::Pem("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into()),
            alt_hostname: None,
            token: TokenSource::None,
            cluster_id: "Kubernetes".into(),
            extra_headers: vec![],
        };
        assert!(matches!(
            connect(&cfg("http://istiod:15010")),
            Err(GrpcError::Address(..))
        ));
    }

    #[test]
    fn token_sources() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "abc").unwrap();
        let t = TokenSource::from_env(p.to_str());
        assert_eq!(t.token().unwrap().as_deref(), Some("abc"));
        std::fs::write(&p, "rotated").unwrap();
        assert_eq!(t.token().unwrap().as_deref(), Some("rotated"));
        std::fs::write(&p, "").unwrap();
        assert!(t.token().is_err());
        assert_eq!(
            TokenSource::from_env(Some("literal"))
                .token()
                .unwrap()
                .as_deref(),
            Some("literal")
        );
        assert!(matches!(RootCa::from_env_value("SYSTEM"), RootCa::System));
        assert!(matches!(
            RootCa::from_env_value("-----BEGIN CERTIFICATE-----x"),
            RootCa::Pem(_)
        ));
    }
}
