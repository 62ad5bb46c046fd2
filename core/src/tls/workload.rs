//! [`WorkloadCert`]: one identity's key, chain and roots, parsed once when the CA answers.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::TlsError;
use super::policy::{PolicyCache, TlsPolicy};
use crate::identity::Identity;

/// What the admin dump and the certificate manager need to know about one certificate of a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    /// The certificate as PEM text.
    pub pem: String,
    /// The serial number in lower-case hex, without leading zero bytes.
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// One workload identity's certificate: key, leaf + intermediates, and the roots peers are verified against.
///
/// Everything is parsed once at construction; the TLS configurations of each backend are built on first use and
/// cached, so handshakes do no PEM or key parsing.
pub struct WorkloadCert {
    identity: Identity,
    chain_der: Vec<CertificateDer<'static>>,
    roots_der: Vec<CertificateDer<'static>>,
    chain: Vec<CertSummary>,
    roots: Vec<CertSummary>,
    key_der: PrivatePkcs8KeyDer<'static>,
    pub(super) rustls: PolicyCache<super::with_rustls::Configs>,
    #[cfg(feature = "tls-boring")]
    pub(super) boring: PolicyCache<super::with_boring::Contexts>,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial_hex())
            .field("chain_len", &self.chain_der.len())
            .field("roots_len", &self.roots_der.len())
            .finish_non_exhaustive()
    }
}

impl WorkloadCert {
    /// `chain` exactly as the Istio CA returns it: leaf PEM first, then intermediates, and last a root bundle
    /// that may hold several PEM certificates. `key_pem` is the PKCS#8 private key of the leaf.
    pub fn from_istio_chain(chain: &[String], key_pem: &str) -> Result<Self, TlsError> {
        let (root_bundle, leaf_and_intermediates) = match chain.split_last() {
            Some((roots, rest)) if !rest.is_empty() => (roots, rest),
            _ => return Err(TlsError::NoRootCertificate),
        };
        let mut chain_der = Vec::with_capacity(leaf_and_intermediates.len());
        for (i, pem) in leaf_and_intermediates.iter().enumerate() {
            let certs = parse_pem_certs(pem)?;
            // An element may hold more than one certificate (some CAs concatenate intermediates).
            if certs.is_empty() {
                return Err(TlsError::InvalidCertificate(format!(
                    "chain element {i} holds no PEM certificate"
                )));
            }
            chain_der.extend(certs);
        }
        let roots_der = parse_pem_certs(root_bundle)?;
        if roots_der.is_empty() {
            return Err(TlsError::NoRootCertificate);
        }
        let key_der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::InvalidKey(format!("expected a PKCS#8 PEM private key: {e}")))?;
        Self::from_der(chain_der, roots_der, key_der)
    }

    /// From already-decoded parts: `chain` is leaf + intermediates, `roots` the trust anchors.
    pub(crate) fn from_der(
        chain_der: Vec<CertificateDer<'static>>,
        roots_der: Vec<CertificateDer<'static>>,
        key_der: PrivatePkcs8KeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let leaf = chain_der
            .first()
            .ok_or_else(|| TlsError::InvalidCertificate("empty chain".into()))?;
        let identity = spiffe_identities(leaf)
            .map_err(TlsError::InvalidCertificate)?
            .into_iter()
            .next()
            .ok_or(TlsError::NoSpiffeIdentity)?;
        let chain = chain_der
            .iter()
            .map(summarize)
            .collect::<Result<Vec<_>, _>>()?;
        let roots = roots_der
            .iter()
            .map(summarize)
            .collect::<Result<Vec<_>, _>>()?;
        let cert = WorkloadCert {
            identity,
            chain_der,
            roots_der,
            chain,
            roots,
            key_der,
            rustls: PolicyCache::default(),
            #[cfg(feature = "tls-boring")]
            boring: PolicyCache::default(),
        };
        // Builds the default backend's configs now: this checks that the key matches the leaf and that the roots
        // are usable, so a bad response is refused when it arrives rather than at the first handshake.
        super::with_rustls::configs(&cert, TlsPolicy::process())?;
        Ok(cert)
    }

    /// The first SPIFFE URI SAN of the leaf.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn not_before(&self) -> SystemTime {
        self.leaf().not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.leaf().not_after
    }

    pub fn is_expired(&self) -> bool {
        SystemTime::now() >= self.not_after()
    }

    /// Leaf and intermediates, one PEM certificate per string.
    pub fn chain_pem(&self) -> Vec<String> {
        self.chain.iter().map(|c| c.pem.clone()).collect()
    }

    /// The trust roots, one PEM certificate per string.
    pub fn roots_pem(&self) -> Vec<String> {
        self.roots.iter().map(|c| c.pem.clone()).collect()
    }

    /// Serial number of the leaf in lower-case hex.
    pub fn serial_hex(&self) -> String {
        self.leaf().serial_hex.clone()
    }

    /// Leaf and intermediates with their serials and validity.
    pub fn chain_summaries(&self) -> &[CertSummary] {
        &self.chain
    }

    /// The roots with their serials and validity.
    pub fn root_summaries(&self) -> &[CertSummary] {
        &self.roots
    }

    pub(crate) fn chain_der(&self) -> &[CertificateDer<'static>] {
        &self.chain_der
    }

    pub(crate) fn roots_der(&self) -> &[CertificateDer<'static>] {
        &self.roots_der
    }

    pub(crate) fn key_der(&self) -> &PrivatePkcs8KeyDer<'static> {
        &self.key_der
    }

    fn leaf(&self) -> &CertSummary {
        // Construction guarantees a leaf; `chain` and `chain_der` have the same length.
        &self.chain[0]
    }
}

/// Every PEM `CERTIFICATE` block of `pem`, in order.
pub(crate) fn parse_pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::InvalidCertificate(format!("bad PEM: {e}")))
}

/// PEM text of one DER certificate (64-column base64, trailing newline).
pub(crate) fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The URI SANs of a certificate that parse as SPIFFE workload identities, in certificate order.
pub(crate) fn spiffe_identities(der: &[u8]) -> Result<Vec<Identity>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("cannot parse certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?;
    let Some(san) = san else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.parse::<Identity>().ok(),
            _ => None,
        })
        .collect())
}

fn summarize(der: &CertificateDer<'static>) -> Result<CertSummary, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::InvalidCertificate(format!("cannot parse certificate: {e}")))?;
    let validity = cert.validity();
    Ok(CertSummary {
        pem: der_to_pem(der),
        serial_hex: serial_hex(cert.raw_serial()),
        not_before: to_system_time(validity.not_before.timestamp()),
        not_after: to_system_time(validity.not_after.timestamp()),
    })
}

fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(&raw[start..])
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}
