//! CA authorization tests: tokens, node/pod scoping, impersonation, over gRPC with a stand-in signer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ambit_controller::ca::{CaMetrics, CaService, PodDirectory, Subject, TokenAuthority};
use ambit_controller::index::Index;
use ambit_controller::sources::manifest::ManifestState;
use ambit_core::identity::Identity;
use ambit_core::signer::{CsrSigner, SignError};
use ambit_proto::ca::IstioCertificateRequest;
use ambit_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: p1, namespace: a}\nspec: {nodeName: n1, serviceAccountName: s1}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: p2, namespace: a}\nspec: {nodeName: n2, serviceAccountName: s2}\n";

/// Returns a fake chain naming the identity it was asked to sign.
struct EchoSigner;

#[async_trait::async_trait]
impl CsrSigner for EchoSigner {
    async fn sign(
        &self,
        _csr: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<String>, SignError> {
        Ok(vec![
            format!("leaf {identity} {}\n", ttl.as_secs()),
            "root\n".to_owned(),
        ])
    }
}

struct Ca {
    client: IstioCertificateServiceClient<tonic::transport::Channel>,
    tokens: Arc<TokenAuthority>,
}

async fn start() -> Ca {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pods.yaml"), PODS).unwrap();
    let mut idx = Index::default();
    for ev in ManifestState::default().rescan(&[dir.path().to_path_buf()]) {
        idx.apply(ev);
    }
    // The receiver keeps the last value after the sender is gone.
    let (_, rx) = watch::channel(Arc::new(PodDirectory::from_index(&idx)));
    let tokens = Arc::new(TokenAuthority::from_key(&[3; 32]));
    let svc = CaService::new(
        Arc::new(EchoSigner),
        tokens.clone(),
        rx,
        "cluster.local",
        CaMetrics::new(&mut Registry::default()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc.into_service())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let client = IstioCertificateServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Ca { client, tokens }
}

impl Ca {
    fn token(&self, sub: Subject) -> String {
        self.tokens
            .issue(sub, Duration::from_secs(600), SystemTime::now())
    }

    async fn ask(
        &mut self,
        token: Option<&str>,
        identity: &str,
        impersonate: bool,
    ) -> Result<Vec<String>, tonic::Code> {
        self.send(token, support::cert_request(identity, impersonate))
            .await
    }

    async fn send(
        &mut self,
        token: Option<&str>,
        request: IstioCertificateRequest,
    ) -> Result<Vec<String>, tonic::Code> {
        let mut req = tonic::Request::new(request);
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        self.client
            .create_certificate(req)
            .await
            .map(|r| r.into_inner().cert_chain)
            .map_err(|s| s.code())
    }
}

const S1: &str = "spiffe://cluster.local/ns/a/sa/s1";
const S2: &str = "spiffe://cluster.local/ns/a/sa/s2";

#[tokio::test]
async fn node_token_gets_its_own_pods_identities_only() {
    let mut ca = start().await;
    let n1 = ca.token(Subject::Node("n1".into()));
    let chain = ca.ask(Some(&n1), S1, true).await.unwrap();
    assert_eq!(
        chain,
        vec![format!("leaf {S1} 3600\n"), "root\n".to_owned()],
        "leaf first, root last"
    );
    assert_eq!(
        ca.ask(Some(&n1), S2, true).await,
        Err(tonic::Code::Unauthenticated),
        "s2 runs on n2"
    );
    assert_eq!(
        ca.ask(Some(&n1), "spiffe://other.td/ns/a/sa/s1", true)
            .await,
        Err(tonic::Code::Unauthenticated),
        "foreign trust domain"
    );
    // The node's ztunnel may get its own identity.
    assert!(
        ca.ask(
            Some(&n1),
            "spiffe://cluster.local/ns/istio-system/sa/ztunnel",
            false
        )
        .await
        .is_ok()
    );
    // The CSR must ask for the impersonated identity.
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: support::csr(S2),
        validity_duration: 60,
        metadata: Some(support::impersonating(S1)),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {n1}").parse().unwrap());
    assert_eq!(
        ca.client.create_certificate(req).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
}

#[tokio::test]
async fn pod_token_gets_that_pods_identity_only() {
    let mut ca = start().await;
    let p2 = ca.token(Subject::Pod {
        namespace: "a".into(),
        name: "p2".into(),
    });
    assert!(ca.ask(Some(&p2), S2, false).await.is_ok());
    assert!(ca.ask(Some(&p2), S2, true).await.is_ok());
    assert_eq!(
        ca.ask(Some(&p2), S1, false).await,
        Err(tonic::Code::Unauthenticated)
    );
    assert_eq!(
        ca.ask(Some(&p2), S1, true).await,
        Err(tonic::Code::Unauthenticated)
    );
    let ghost = ca.token(Subject::Pod {
        namespace: "a".into(),
        name: "ghost".into(),
    });
    assert_eq!(
        ca.ask(Some(&ghost), S1, false).await,
        Err(tonic::Code::Unauthenticated)
    );
}

#[tokio::test]
async fn missing_expired_and_forged_tokens_are_refused() {
    let mut ca = start().await;
    assert_eq!(
        ca.ask(None, S1, true).await,
        Err(tonic::Code::Unauthenticated)
    );
    let expired = ca.tokens.issue(
        Subject::Node("n1".into()),
        Duration::from_secs(60),
        SystemTime::now() - Duration::from_secs(3600),
    );
    assert_eq!(
        ca.ask(Some(&expired), S1, true).await,
        Err(tonic::Code::Unauthenticated)
    );
    let forged = TokenAuthority::from_key(&[9; 32]).issue(
        Subject::Node("n1".into()),
        Duration::from_secs(60),
        SystemTime::now(),
    );
    assert_eq!(
        ca.ask(Some(&forged), S1, true).await,
        Err(tonic::Code::Unauthenticated)
    );
}

/// Malformed requests from an authenticated caller: a CSR that is not PEM, PEM that is not a CSR, a CSR whose SAN is
/// not a SPIFFE id, an impersonated identity that does not parse or is not a string. Each is `InvalidArgument`
/// (never a signature), and the same caller's good request is served after them.
#[tokio::test]
async fn malformed_requests_are_invalid_arguments() {
    let mut ca = start().await;
    let n1 = ca.token(Subject::Node("n1".into()));
    let with_csr = |csr: String| IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: Some(support::impersonating(S1)),
    };
    let cases = [
        ("not PEM", with_csr("garbage".into())),
        (
            "PEM that is not a CSR",
            with_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
            ),
        ),
        (
            "a SAN that is not a SPIFFE id",
            with_csr(support::csr("https://cluster.local/ns/a/sa/s1")),
        ),
        ("an impersonated identity that does not parse", {
            let mut r = support::cert_request(S1, true);
            r.metadata = Some(support::impersonating("not-an-identity"));
            r
        }),
        ("an impersonated identity that is not a string", {
            let mut r = support::cert_request(S1, true);
            if let Some(m) = r.metadata.as_mut() {
                for v in m.fields.values_mut() {
                    v.kind = Some(prost_types::value::Kind::NumberValue(7.0));
                }
            }
            r
        }),
    ];
    for (what, req) in cases {
        assert_eq!(
            ca.send(Some(&n1), req).await,
            Err(tonic::Code::InvalidArgument),
            "{what}"
        );
    }
    assert!(ca.ask(Some(&n1), S1, true).await.is_ok());
}

/// A validity of zero, a negative one or one past the CA's limit is signed for the CA's maximum (24 h), as Istio
/// does; a shorter one is kept.
#[tokio::test]
async fn validity_out_of_range_is_the_maximum() {
    let mut ca = start().await;
    let n1 = ca.token(Subject::Node("n1".into()));
    for (asked, signed) in [(0, 86_400), (-5, 86_400), (10 * 86_400, 86_400), (600, 600)] {
        let mut req = support::cert_request(S1, true);
        req.validity_duration = asked;
        let chain = ca.send(Some(&n1), req).await.unwrap();
        assert_eq!(chain[0], format!("leaf {S1} {signed}\n"), "asked {asked}");
    }
}
