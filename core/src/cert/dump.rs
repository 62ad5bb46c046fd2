//! The `certificates` section of the admin `config_dump` (spec 6.2).

use std::time::SystemTime;

use base64::Engine as _;
use serde::Serialize;

use crate::identity::Identity;
use crate::tls::{CertSummary, WorkloadCert};

/// One tracked identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertDump {
    pub identity: String,
    /// `Initializing`, `Available` or `Unavailable: <error>`.
    pub state: String,
    pub cert_chain: Vec<CertInfo>,
    pub root_certs: Vec<CertInfo>,
}

/// One certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    /// Base64 of the PEM text.
    pub pem: String,
    /// In decimal, as upstream ztunnel writes it (x509-parser's `BigUint`) and istioctl reads it.
    pub serial_number: String,
    /// RFC 3339, whole seconds, UTC.
    pub valid_from: String,
    pub expiration_time: String,
}

pub(super) fn dump_one(
    id: &Identity,
    cert: Option<&WorkloadCert>,
    error: Option<String>,
) -> CertDump {
    let state = match (cert, error) {
        (Some(c), _) if !c.is_expired() => "Available".to_owned(),
        (_, Some(err)) => format!("Unavailable: {err}"),
        (Some(_), None) => "Unavailable: certificate expired".to_owned(),
        (None, None) => "Initializing".to_owned(),
    };
    let (cert_chain, root_certs) = match cert {
        Some(c) => (
            c.chain_summaries().iter().map(info).collect(),
            c.root_summaries().iter().map(info).collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    CertDump {
        identity: id.to_string(),
        state,
        cert_chain,
        root_certs,
    }
}

fn info(c: &CertSummary) -> CertInfo {
    CertInfo {
        pem: base64::engine::general_purpose::STANDARD.encode(c.pem.as_bytes()),
        serial_number: decimal_serial(&c.serial_hex),
        valid_from: rfc3339(c.not_before),
        expiration_time: rfc3339(c.not_after),
    }
}

/// The serial number (lower-case hex, as the certificate summary keeps it) in decimal: the big-endian unsigned
/// integer of its bytes. Unreadable hex (not expected) is shown as it is rather than as a wrong number.
pub(crate) fn decimal_serial(hex_serial: &str) -> String {
    let padded;
    let digits = if hex_serial.len() % 2 == 1 {
        padded = format!("0{hex_serial}");
        &padded
    } else {
        hex_serial
    };
    match hex::decode(digits) {
        Ok(bytes) => x509_parser::num_bigint::BigUint::from_bytes_be(&bytes).to_string(),
        Err(_) => hex_serial.to_owned(),
    }
}

/// `2026-11-23T02:28:42Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    dt.format(&fmt).unwrap_or_default()
}
