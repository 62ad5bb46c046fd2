//! CSRs at the CA: the controller reads the requested SPIFFE identity (`csr_identity`) and the signer verifies
//! the request's signature and issues a leaf (`LocalCa::sign_csr`).

use std::cell::OnceCell;
use std::time::Duration;

use ambit_controller::ca::service::csr_identity;
use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use base64::Engine;

thread_local! {
    static CA: OnceCell<Option<LocalCa>> = const { OnceCell::new() };
}

/// PEM around DER, as a client sends the CSR.
pub fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE REQUEST-----\n");
    out
}

/// Input: a DER CSR (wrapped in PEM here), or PEM text when it starts with `-----BEGIN`.
pub fn ca_csr(data: &[u8]) {
    let text = if data.starts_with(b"-----BEGIN") {
        String::from_utf8_lossy(data).into_owned()
    } else {
        pem(data)
    };
    let requested = csr_identity(&text);
    let fallback = Identity::new("cluster.local", "demo", "sleep");
    let identity = match &requested {
        Ok(Some(id)) => id.clone(),
        _ => fallback,
    };
    CA.with(|ca| {
        let ca = ca.get_or_init(|| LocalCa::generate("cluster.local").ok());
        let Some(ca) = ca else {
            panic!("ca_csr target: no CA");
        };
        if let Ok(chain) = ca.sign_csr(&text, &identity, Duration::from_secs(3600)) {
            assert!(chain.len() >= 2, "a chain without a root");
        }
    });
}
