//! `CreateCertificate`: who may get which identity.
//!
//! * a node token (`Subject::Node(n)`) gets the ztunnel's own identity, and through `ImpersonatedIdentity` only the
//!   identities (`namespace` + `serviceAccount`) of pods scheduled on node `n`;
//! * a pod token (`Subject::Pod`) gets that pod's identity and nothing else (the pod must exist);
//! * anything else, and any missing/forged/expired token, is `Unauthenticated`.
//!
//! The CSR's URI SAN, when present, must name the identity being granted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ambit_core::identity::Identity;
use ambit_core::signer::{CsrSigner, SignError};
use ambit_proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use ambit_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509CertificationRequest};

use super::{Authenticator, Subject};
use crate::index::Index;

pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Which identities run where, from the pods of the index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodDirectory {
    /// `(namespace, pod)` → service account.
    pub pods: BTreeMap<(String, String), String>,
    /// node → `(namespace, service account)` of its pods.
    pub by_node: BTreeMap<String, BTreeSet<(String, String)>>,
}

impl PodDirectory {
    pub fn from_index(index: &Index) -> Self {
        let mut d = PodDirectory::default();
        for ((ns, name), pod) in &index.pods {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            let spec = pod.spec.clone().unwrap_or_default();
            let sa = spec
                .service_account_name
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned());
            if let Some(node) = spec.node_name.filter(|n| !n.is_empty()) {
                d.by_node
                    .entry(node)
                    .or_default()
                    .insert((ns.clone(), sa.clone()));
            }
            d.pods.insert((ns.clone(), name.clone()), sa);
        }
        d
    }
}

#[derive(Clone, Default)]
pub struct CaMetrics {
    pub issued: Counter,
    pub refused: Counter,
}

impl CaMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = CaMetrics::default();
        registry.register(
            "citadel_server_success_cert_issuance_count",
            "Certificates issued",
            m.issued.clone(),
        );
        registry.register(
            "citadel_server_csr_refused_count",
            "Certificate requests refused",
            m.refused.clone(),
        );
        m
    }
}

pub struct CaService {
    signer: Arc<dyn CsrSigner>,
    auth: Arc<dyn Authenticator>,
    pods: watch::Receiver<Arc<PodDirectory>>,
    trust_domain: String,
    /// The identity a node's ztunnel gets for itself (`istio-system/ztunnel` by default).
    node_identity: Identity,
    max_ttl: Duration,
    metrics: CaMetrics,
}

impl CaService {
    pub fn new(
        signer: Arc<dyn CsrSigner>,
        auth: Arc<dyn Authenticator>,
        pods: watch::Receiver<Arc<PodDirectory>>,
        trust_domain: &str,
        metrics: CaMetrics,
    ) -> Self {
        CaService {
            signer,
            auth,
            pods,
            trust_domain: trust_domain.to_owned(),
            node_identity: Identity::new(trust_domain, "istio-system", "ztunnel"),
            max_ttl: Duration::from_secs(24 * 3600),
            metrics,
        }
    }

    pub fn into_service(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }

    /// Decides the identity to sign for `subject`, or refuses.
    fn authorize(
        &self,
        subject: &Subject,
        impersonated: Option<Identity>,
        csr_san: Option<Identity>,
    ) -> Result<Identity, Status> {
        let pods = self.pods.borrow().clone();
        let wanted = impersonated.clone().or(csr_san.clone());
        let granted = match subject {
            Subject::Node(node) => {
                let id = wanted.ok_or_else(|| Status::invalid_argument("no identity requested"))?;
                let on_node = pods.by_node.get(node).is_some_and(|set| {
                    set.contains(&(id.namespace.clone(), id.service_account.clone()))
                });
                if id == self.node_identity || (id.trust_domain == self.trust_domain && on_node) {
                    id
                } else {
                    return Err(Status::unauthenticated(format!(
                        "node {node} may not get {id}"
                    )));
                }
            }
            Subject::Pod { namespace, name } => {
                let sa = pods
                    .pods
                    .get(&(namespace.clone(), name.clone()))
                    .ok_or_else(|| {
                        Status::unauthenticated(format!("pod {namespace}/{name} does not exist"))
                    })?;
                let id = Identity::new(&self.trust_domain, namespace, sa);
                if impersonated.as_ref().is_some_and(|i| *i != id) {
                    return Err(Status::unauthenticated(format!(
                        "pod {namespace}/{name} may only get {id}"
                    )));
                }
                id
            }
        };
        if let Some(san) = csr_san
            && san != granted
        {
            return Err(Status::unauthenticated(format!(
                "CSR asks for {san}, caller may get {granted}"
            )));
        }
        Ok(granted)
    }
}

/// The first URI SAN of a PEM CSR that is a SPIFFE identity. Errors when the CSR does not parse.
pub fn csr_identity(csr_pem: &str) -> Result<Option<Identity>, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
        .map_err(|e| format!("CSR PEM: {e}"))?;
    let (_, csr) =
        X509CertificationRequest::from_der(&pem.contents).map_err(|e| format!("CSR: {e}"))?;
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                if let GeneralName::URI(uri) = name {
                    return uri.parse::<Identity>().map(Some).map_err(|e| e.to_string());
                }
            }
        }
    }
    Ok(None)
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let refused = |s: Status| {
            self.metrics.refused.inc();
            tracing::warn!(error = %s.message(), code = ?s.code(), "certificate request refused");
            s
        };
        let subject = self
            .auth
            .authenticate(request.metadata())
            .map_err(|e| refused(Status::unauthenticated(e.to_string())))?;
        let req = request.into_inner();
        let impersonated = match req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
        {
            Some(prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(s)),
            }) => Some(
                s.parse::<Identity>()
                    .map_err(|e| refused(Status::invalid_argument(e.to_string())))?,
            ),
            Some(_) => {
                return Err(refused(Status::invalid_argument(
                    "ImpersonatedIdentity must be a string",
                )));
            }
            None => None,
        };
        let san = csr_identity(&req.csr).map_err(|e| refused(Status::invalid_argument(e)))?;
        let identity = self
            .authorize(&subject, impersonated, san)
            .map_err(refused)?;
        let ttl = match u64::try_from(req.validity_duration) {
            Ok(s) if s > 0 => Duration::from_secs(s).min(self.max_ttl),
            _ => self.max_ttl,
        };
        let chain = self
            .signer
            .sign(&req.csr, &identity, ttl)
            .await
            .map_err(|e| {
                refused(match e {
                    SignError::Unauthenticated(m) => Status::unauthenticated(m),
                    SignError::Invalid(m) => Status::invalid_argument(m),
                    SignError::Unavailable(m) => Status::unavailable(m),
                })
            })?;
        self.metrics.issued.inc();
        tracing::info!(subject = ?subject, identity = %identity, ttl.secs = ttl.as_secs(), "certificate issued");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}
