//! `IstioCaClient` against an in-process Istio CA server over TLS that records what it is sent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::grpc::{ControlPlaneConfig, IstioCaClient, RootCa, TokenSource};
use ambit_core::signer::{CsrSigner, SignError};
use ambit_proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use ambit_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// How the mock CA answers.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Signs the impersonated identity if asked, else `spiffe://cluster.local/ns/default/sa/caller`.
    Sign,
    /// Signs, but for another identity than asked.
    WrongIdentity,
    /// Only the leaf, no root.
    LeafOnly,
    Fail(tonic::Code),
}

const CALLER: &str = "spiffe://cluster.local/ns/default/sa/caller";
const OTHER: &str = "spiffe://cluster.local/ns/other/sa/other";

struct MockCa {
    ca: LocalCa,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<(MetadataMap, IstioCertificateRequest)>>>,
}

fn impersonated(req: &IstioCertificateRequest) -> Option<String> {
    let field = req.metadata.as_ref()?.fields.get("ImpersonatedIdentity")?;
    match &field.kind {
        Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

#[tonic::async_trait]
impl IstioCertificateService for MockCa {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let metadata = request.metadata().clone();
        let req = request.into_inner();
        self.seen.lock().unwrap().push((metadata, req.clone()));
        let mode = *self.mode.lock().unwrap();
        let asked = impersonated(&req).unwrap_or_else(|| CALLER.to_owned());
        let identity: Identity = match mode {
            Mode::Fail(code) => return Err(Status::new(code, "refused by the test")),
            Mode::WrongIdentity => OTHER.parse().unwrap(),
            Mode::Sign | Mode::LeafOnly => asked.parse().unwrap(),
        };
        let ttl = Duration::from_secs(u64::try_from(req.validity_duration).unwrap());
        let mut chain = self
            .ca
            .sign_csr(&req.csr, &identity, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if matches!(mode, Mode::LeafOnly) {
            chain.truncate(1);
        }
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}

struct Harness {
    cfg: ControlPlaneConfig,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<(MetadataMap, IstioCertificateRequest)>>>,
}

impl Harness {
    async fn start() -> Harness {
        ambit_core::tls::install_default_provider();
        let tls_ca = LocalCa::generate("cluster.local").unwrap();
        let (chain, key) = tls_ca
            .issue_server_cert(&["localhost".to_owned()], &[], Duration::from_secs(3600))
            .unwrap();
        let identity = tonic::transport::Identity::from_pem(chain.concat(), key);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(Mode::Sign));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc = IstioCertificateServiceServer::new(MockCa {
            ca: LocalCa::generate("cluster.local").unwrap(),
            mode: mode.clone(),
            seen: seen.clone(),
        });
        let router = tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(svc);
        tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
        let cfg = ControlPlaneConfig {
            address: format!("https://127.0.0.1:{port}"),
            root_ca: RootCa::Pem(tls_ca.root_pem()),
            alt_hostname: Some("localhost".into()),
            token: TokenSource::Literal("node-token".into()),
            cluster_id: "c1".into(),
            extra_headers: vec![("ca-extra".into(), "1".into())],
        };
        Harness { cfg, mode, seen }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn last(&self) -> (MetadataMap, IstioCertificateRequest) {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

async fn sign(client: &IstioCaClient, id: &str) -> Result<Vec<String>, SignError> {
    let identity: Identity = id.parse().unwrap();
    let (_key, csr) = ambit_core::tls::generate_csr(&identity).unwrap();
    client
        .sign(&csr, &identity, Duration::from_secs(3600))
        .await
}

fn first_uri_san(pem: &str) -> String {
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = der.parse_x509().unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .unwrap()
}

#[tokio::test]
async fn impersonating_client_sends_the_identity_and_checks_the_leaf() {
    let h = Harness::start().await;
    let client = IstioCaClient::new(h.cfg.clone(), true).unwrap();

    let chain = sign(&client, OTHER).await.unwrap();
    assert!(chain.len() >= 2);
    assert_eq!(first_uri_san(&chain[0]), OTHER);
    let (md, req) = h.last();
    assert_eq!(impersonated(&req).as_deref(), Some(OTHER));
    assert_eq!(req.validity_duration, 3600);
    assert!(req.csr.contains("BEGIN CERTIFICATE REQUEST"));
    assert_eq!(md.get("authorization").unwrap(), "Bearer node-token");
    assert_eq!(md.get("clusterid").unwrap(), "c1");
    assert_eq!(md.get("ca-extra").unwrap(), "1");

    // The CA signs someone else: refused.
    h.set(Mode::WrongIdentity);
    let err = sign(&client, CALLER).await.unwrap_err();
    assert!(matches!(err, SignError::Invalid(_)), "{err}");

    // No root in the response: refused.
    h.set(Mode::LeafOnly);
    let err = sign(&client, OTHER).await.unwrap_err();
    match err {
        SignError::Invalid(m) => assert_eq!(m, "no root certificate present"),
        e => panic!("expected Invalid, got {e}"),
    }
}

#[tokio::test]
async fn dedicated_client_sends_no_metadata() {
    let h = Harness::start().await;
    let client = IstioCaClient::new(h.cfg.clone(), false).unwrap();
    let chain = sign(&client, CALLER).await.unwrap();
    assert_eq!(first_uri_san(&chain[0]), CALLER);
    let (_, req) = h.last();
    assert!(req.metadata.is_none(), "{:?}", req.metadata);

    // Without impersonation the leaf's SAN is the CA's business (it signs the caller's own identity).
    h.set(Mode::WrongIdentity);
    assert!(sign(&client, CALLER).await.is_ok());
}

#[tokio::test]
async fn statuses_map_to_sign_errors() {
    let h = Harness::start().await;
    let client = IstioCaClient::new(h.cfg.clone(), true).unwrap();
    for (code, want_unauth) in [
        (tonic::Code::Unauthenticated, true),
        (tonic::Code::PermissionDenied, true),
        (tonic::Code::Unavailable, false),
        (tonic::Code::Internal, false),
    ] {
        h.set(Mode::Fail(code));
        let err = sign(&client, OTHER).await.unwrap_err();
        if want_unauth {
            assert!(
                matches!(err, SignError::Unauthenticated(_)),
                "{code:?}: {err}"
            );
            assert!(!err.retryable());
        } else {
            assert!(matches!(err, SignError::Unavailable(_)), "{code:?}: {err}");
            assert!(err.retryable());
        }
    }
}

#[tokio::test]
async fn unreachable_ca_is_unavailable() {
    ambit_core::tls::install_default_provider();
    // Bind and drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = ControlPlaneConfig {
        address: format!("127.0.0.1:{port}"),
        root_ca: RootCa::Pem(LocalCa::generate("cluster.local").unwrap().root_pem()),
        alt_hostname: None,
        token: TokenSource::None,
        cluster_id: "Kubernetes".into(),
        extra_headers: vec![],
    };
    let client = IstioCaClient::new(cfg, false).unwrap();
    let err = sign(&client, CALLER).await.unwrap_err();
    assert!(matches!(err, SignError::Unavailable(_)), "{err}");
}

#[tokio::test]
async fn missing_token_file_is_retryable_and_nothing_is_sent() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("istio-token");
    let mut cfg = h.cfg.clone();
    cfg.token = TokenSource::File(path.clone());
    let client = IstioCaClient::new(cfg, true).unwrap();
    let err = sign(&client, OTHER).await.unwrap_err();
    assert!(matches!(err, SignError::Unavailable(_)), "{err}");
    assert!(h.seen.lock().unwrap().is_empty());

    // The projected token appears (with a trailing newline, as hand-written files have): the next call carries it.
    std::fs::write(&path, "projected\n").unwrap();
    sign(&client, OTHER).await.unwrap();
    assert_eq!(h.last().0.get("authorization").unwrap(), "Bearer projected");
}
