//! An in-process certificate authority: `FAKE_CA` (the fixed test-only root in `ca/fake.rs`), `LOCAL_CA_DIR`, the
//! controller's CA service and tests.
//!
//! Directory layout (the Istio plug-in CA layout): `root-cert.pem` (trust root), `ca-cert.pem` (signing cert),
//! `ca-key.pem` (its PKCS#8 key) and `cert-chain.pem` (signing cert, intermediates, root). A CA that
//! [`LocalCa::load_or_create`] creates signs with its root directly, so `ca-cert.pem` equals `root-cert.pem` and
//! `cert-chain.pem` holds just the root. Issued chains are `[leaf, intermediates…, root]`.

mod fake;
mod store;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::PrivatePkcs8KeyDer;
use time::OffsetDateTime;

use crate::identity::Identity;
use crate::signer::{CsrSigner, SignError};
use crate::tls::{self, WorkloadCert};

pub use fake::fake_root_pem;

/// Lifetime of a root this CA generates.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves are back-dated this much to tolerate clock skew.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation: {0}")]
    Generate(String),
    #[error("invalid certificate request: {0}")]
    InvalidCsr(String),
    #[error("CA directory {path}: {reason}")]
    Storage { path: String, reason: String },
    #[error("CA material: {0}")]
    Material(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A CA that signs in-process with a key it holds.
pub struct LocalCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// PEMs between the leaf and the root: the signing cert (when it is not the root) and its intermediates.
    intermediates: Vec<String>,
    root_pem: String,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("trust_domain", &self.trust_domain)
            .field("intermediates", &self.intermediates.len())
            .finish_non_exhaustive()
    }
}

/// The four files of the plug-in layout, as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CaFiles {
    pub(crate) root_cert: String,
    pub(crate) ca_cert: String,
    pub(crate) ca_key: String,
    pub(crate) cert_chain: String,
}

impl LocalCa {
    /// A fresh self-signed ECDSA P-256 root, in memory.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        Self::from_files(trust_domain, &generate_root_files(trust_domain)?)
    }

    /// Loads the CA from `dir`, creating it there first if `dir` is missing or empty. Safe when several processes
    /// do this at once: the CA is written to a temporary directory beside `dir` and renamed into place; a process
    /// that loses the race loads the winner's.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let files = store::load_or_create(dir, || generate_root_files(trust_domain))?;
        // A file's problem is reported with the directory it is in.
        Self::from_files(trust_domain, &files).map_err(|e| match e {
            CaError::Material(reason) => CaError::Storage {
                path: dir.display().to_string(),
                reason,
            },
            e => e,
        })
    }

    pub(crate) fn from_files(trust_domain: &str, files: &CaFiles) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(&files.ca_key)
            .map_err(|e| CaError::Material(format!("ca-key.pem: {e}")))?;
        let ca_der = one_cert(&files.ca_cert, "ca-cert.pem")?;
        let ca_public_key = x509_parser::parse_x509_certificate(&ca_der)
            .map(|(_, c)| c.public_key().subject_public_key.data.to_vec())
            .map_err(|e| CaError::Material(format!("ca-cert.pem: not a certificate: {e}")))?;
        if ca_public_key != key.public_key_raw() {
            return Err(CaError::Material(
                "ca-key.pem does not match ca-cert.pem (it is not the key of the signing certificate)"
                    .into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_pem(&files.ca_cert, key)
            .map_err(|e| CaError::Material(format!("ca-cert.pem: {e}")))?;
        let root_der = one_cert(&files.root_cert, "root-cert.pem")?;
        let root_pem = tls::der_to_pem(&root_der);
        // cert-chain.pem: signing cert, intermediates, root. Keep everything that is not the root, in order.
        let chain = certs(&files.cert_chain, "cert-chain.pem")?;
        if chain.is_empty() {
            return Err(CaError::Material(
                "cert-chain.pem holds no certificate".into(),
            ));
        }
        let mut intermediates: Vec<String> = chain
            .iter()
            .filter(|c| c.as_ref() != root_der.as_ref())
            .map(|c| tls::der_to_pem(c))
            .collect();
        if ca_der.as_ref() != root_der.as_ref()
            && intermediates.first().map(String::as_str) != Some(&tls::der_to_pem(&ca_der))
        {
            intermediates.insert(0, tls::der_to_pem(&ca_der));
        }
        Ok(LocalCa {
            trust_domain: trust_domain.to_owned(),
            issuer,
            intermediates,
            root_pem,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> String {
        self.root_pem.clone()
    }

    /// Verifies the request's signature and issues a workload leaf for `identity` (any SAN the request asks for is
    /// ignored). Returns `[leaf, intermediates…, root]`, one certificate per string.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<String>, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::InvalidCsr(e.to_string()))?;
        let request = CertificateSigningRequestParams {
            params: leaf_params(identity, ttl)?,
            public_key: csr.public_key,
        };
        let leaf = request
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        Ok(self.chain_with(leaf.pem()))
    }

    /// A certificate and key for a control-plane server verified by host name (e.g. the controller's 15012).
    /// Returns `(chain leaf..root PEMs, PKCS#8 key PEM)`.
    pub fn issue_server_cert(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<(Vec<String>, String), CaError> {
        let mut params = base_leaf_params(ttl)?;
        if let Some(first) = dns_names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        for name in dns_names {
            let name = rcgen::string::Ia5String::try_from(name.as_str())
                .map_err(|e| CaError::Generate(format!("DNS name {name:?}: {e}")))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let key = new_key()?;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        Ok((self.chain_with(leaf.pem()), key.serialize_pem()))
    }

    /// A workload certificate for `identity` with a key generated in-process.
    pub fn issue_workload(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<WorkloadCert, CaError> {
        self.sign_workload(leaf_params(identity, ttl)?)
    }

    /// A workload certificate for `identity` valid exactly over `[not_before, not_after]`, which may lie in the
    /// past or the future: for tests of how peers treat expired and not-yet-valid certificates.
    pub fn issue_workload_valid_between(
        &self,
        identity: &Identity,
        not_before: std::time::SystemTime,
        not_after: std::time::SystemTime,
    ) -> Result<WorkloadCert, CaError> {
        let mut params = leaf_params(identity, Duration::ZERO)?;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        self.sign_workload(params)
    }

    fn sign_workload(&self, params: CertificateParams) -> Result<WorkloadCert, CaError> {
        let key = new_key()?;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        let mut chain = vec![leaf.der().clone()];
        for pem in &self.intermediates {
            chain.extend(tls::parse_pem_certs(pem)?);
        }
        let roots = tls::parse_pem_certs(&self.root_pem)?;
        let key_der = PrivatePkcs8KeyDer::from(key.serialize_der());
        Ok(WorkloadCert::from_der(chain, roots, key_der)?)
    }

    fn chain_with(&self, leaf_pem: String) -> Vec<String> {
        let mut chain = Vec::with_capacity(self.intermediates.len() + 2);
        chain.push(leaf_pem);
        chain.extend(self.intermediates.iter().cloned());
        chain.push(self.root_pem.clone());
        chain
    }
}

#[async_trait::async_trait]
impl CsrSigner for LocalCa {
    async fn sign(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<String>, SignError> {
        if identity.trust_domain != self.trust_domain {
            return Err(SignError::Invalid(format!(
                "identity {identity} is not in this CA's trust domain {}",
                self.trust_domain
            )));
        }
        self.sign_csr(csr_pem, identity, ttl).map_err(|e| match e {
            CaError::InvalidCsr(m) => SignError::Invalid(m),
            other => SignError::Unavailable(other.to_string()),
        })
    }
}

fn new_key() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::Generate(e.to_string()))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and of full length once DER-encoded.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn base_leaf_params(ttl: Duration) -> Result<CertificateParams, CaError> {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.not_before = now - BACKDATE;
    params.not_after = now + ttl;
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn leaf_params(identity: &Identity, ttl: Duration) -> Result<CertificateParams, CaError> {
    let mut params = base_leaf_params(ttl)?;
    let uri = rcgen::string::Ia5String::try_from(identity.to_string())
        .map_err(|e| CaError::Generate(format!("identity {identity}: {e}")))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    Ok(params)
}

fn generate_root_files(trust_domain: &str) -> Result<CaFiles, CaError> {
    let key = new_key()?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, trust_domain);
    params
        .distinguished_name
        .push(DnType::CommonName, "Ambit root CA");
    params.not_before = now - BACKDATE;
    params.not_after = now + ROOT_LIFETIME;
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let root = params
        .self_signed(&key)
        .map_err(|e| CaError::Generate(e.to_string()))?;
    let pem = root.pem();
    Ok(CaFiles {
        root_cert: pem.clone(),
        ca_cert: pem.clone(),
        ca_key: key.serialize_pem(),
        cert_chain: pem,
    })
}

/// The first certificate of the file `what`.
fn one_cert(pem: &str, what: &str) -> Result<rustls_pki_types::CertificateDer<'static>, CaError> {
    certs(pem, what)?
        .into_iter()
        .next()
        .ok_or_else(|| CaError::Material(format!("{what} holds no certificate")))
}

/// Every certificate of the file `what`, each checked to be one (PEM whose body decodes is not yet a certificate).
fn certs(pem: &str, what: &str) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, CaError> {
    let certs = tls::parse_pem_certs(pem).map_err(|e| CaError::Material(format!("{what}: {e}")))?;
    for (i, der) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(der).map_err(|e| {
            CaError::Material(format!(
                "{what}: certificate {} is not a certificate: {e}",
                i + 1
            ))
        })?;
    }
    Ok(certs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn sign_csr_overrides_requested_san_and_returns_leaf_then_root() {
        let ca = LocalCa::generate("cluster.local").unwrap();
        let requested = Identity::new("cluster.local", "other", "attacker");
        let (key_pem, csr_pem) = tls::generate_csr(&requested).unwrap();
        let granted = Identity::new("cluster.local", "ns", "sa");
        let chain = ca
            .sign_csr(&csr_pem, &granted, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], ca.root_pem());
        let cert = WorkloadCert::from_istio_chain(&chain, &key_pem).unwrap();
        assert_eq!(cert.identity(), &granted);
        let lifetime = cert.not_after().duration_since(cert.not_before()).unwrap();
        assert_eq!(lifetime, Duration::from_secs(3600) + BACKDATE);
        assert_eq!(cert.roots_pem(), vec![ca.root_pem()]);
    }

    #[test]
    fn tampered_csr_is_refused() {
        let ca = LocalCa::generate("cluster.local").unwrap();
        let id = Identity::new("cluster.local", "ns", "sa");
        let (_, csr_pem) = tls::generate_csr(&id).unwrap();
        let mut der = tls::parse_pem_certs(&csr_pem.replace("CERTIFICATE REQUEST", "CERTIFICATE"))
            .unwrap()[0]
            .to_vec();
        // Flip a bit near the end: inside the signature.
        let n = der.len();
        der[n - 5] ^= 0x01;
        let tampered = tls::der_to_pem(&der).replace("CERTIFICATE", "CERTIFICATE REQUEST");
        assert!(matches!(
            ca.sign_csr(&tampered, &id, Duration::from_secs(60)),
            Err(CaError::InvalidCsr(_))
        ));
    }

    #[test]
    fn server_cert_has_names() {
        let ca = LocalCa::generate("cluster.local").unwrap();
        let (chain, key) = ca
            .issue_server_cert(
                &["ambit-controller.local".to_owned()],
                &["127.0.0.1".parse().unwrap()],
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(chain.len(), 2);
        assert!(key.contains("PRIVATE KEY"));
        let der = &tls::parse_pem_certs(&chain[0]).unwrap()[0];
        let (_, x509) = x509_parser::parse_x509_certificate(der).unwrap();
        let san = x509.subject_alternative_name().unwrap().unwrap();
        use x509_parser::extensions::GeneralName;
        let names = &san.value.general_names;
        assert!(
            names
                .iter()
                .any(|n| matches!(n, GeneralName::DNSName("ambit-controller.local"))),
            "{names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| matches!(n, GeneralName::IPAddress([127, 0, 0, 1]))),
            "{names:?}"
        );
    }
}
