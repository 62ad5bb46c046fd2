//! `FAKE_CA=true`: one fixed, well-known, TEST-ONLY root, the same in every process, so that separately started
//! FAKE_CA proxies (two ztunnels, a ztunnel and a waypoint) verify each other's certificates. Upstream ztunnel's
//! `testing` feature does the same with its own checked-in test root.
//!
//! Why checked-in files rather than a root derived from a fixed seed: a derived root would need the same key *and*
//! the same certificate bytes in every process, and ECDSA signatures are randomised, so two processes would hold
//! different root certificates for one key (verifiable, but no longer byte-equal, which confuses anyone comparing
//! trust bundles). A checked-in PEM is byte-equal everywhere, can be inspected with `openssl x509`, and needs no
//! key-derivation code. Its key is public by design; the files say so in their first lines.
//!
//! The files were made once with OpenSSL 3.0 (P-256, valid 2025-01-01 to 2125-01-01, random serial):
//!
//! ```text
//! openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem
//! openssl req -new -key key.pem -config ca.cnf -out req.csr
//! openssl ca -batch -config ca.cnf -selfsign -keyfile key.pem -in req.csr -extensions root_ext \
//!     -startdate 20250101000000Z -enddate 21250101000000Z -notext -out cert.pem
//! ```
//!
//! with a `ca.cnf` whose `[dn]` is `O = Ambit FAKE_CA TEST ONLY`, `CN = Ambit FAKE_CA test root (public key
//! material, never trust)` and whose `[root_ext]` is `basicConstraints = critical, CA:TRUE`,
//! `keyUsage = critical, keyCertSign, cRLSign, digitalSignature`, `subjectKeyIdentifier = hash`. The comment
//! lines on top of each file were added by hand.

use super::{CaError, CaFiles, LocalCa};

const ROOT_CERT_FILE: &str = include_str!("fake-root-cert.test-only.pem");
const ROOT_KEY_FILE: &str = include_str!("fake-root-key.test-only.pem");

/// The file from its first `-----BEGIN` line on (the files start with comment lines).
fn pem_part(file: &'static str) -> &'static str {
    file.find("-----BEGIN").map_or(file, |at| &file[at..])
}

/// The FAKE_CA root certificate (PEM), the same in every build.
pub fn fake_root_pem() -> &'static str {
    pem_part(ROOT_CERT_FILE)
}

impl LocalCa {
    /// The FAKE_CA signer: the fixed TEST-ONLY root (see [`fake_root_pem`]) signing leaves directly. Its private
    /// key is public: for tests only.
    pub fn fake(trust_domain: &str) -> Result<Self, CaError> {
        let root = fake_root_pem().to_owned();
        Self::from_files(
            trust_domain,
            &CaFiles {
                root_cert: root.clone(),
                ca_cert: root.clone(),
                ca_key: pem_part(ROOT_KEY_FILE).to_owned(),
                cert_chain: root,
            },
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::Identity;
    use crate::tls::{self, WorkloadCert};

    #[test]
    fn the_files_are_labelled_and_parse() {
        for f in [ROOT_CERT_FILE, ROOT_KEY_FILE] {
            assert!(f.starts_with("# TEST ONLY."), "{f}");
        }
        assert_eq!(tls::parse_pem_certs(fake_root_pem()).unwrap().len(), 1);
        let der = &tls::parse_pem_certs(fake_root_pem()).unwrap()[0];
        let (_, x509) = x509_parser::parse_x509_certificate(der).unwrap();
        assert!(
            x509.subject().to_string().contains("TEST ONLY"),
            "{}",
            x509.subject()
        );
        assert!(x509.is_ca());
    }

    #[test]
    fn two_fake_cas_share_the_root_and_sign_with_its_key() {
        let a = LocalCa::fake("cluster.local").unwrap();
        let b = LocalCa::fake("cluster.local").unwrap();
        assert_eq!(a.root_pem(), b.root_pem());
        assert_eq!(a.root_pem(), fake_root_pem());
        // Leaves name the root as issuer (the handshake across two FAKE_CA signers is in tests/fake_ca.rs).
        let id = Identity::new("cluster.local", "ns", "sa");
        let (key, csr) = tls::generate_csr(&id).unwrap();
        let chain = a.sign_csr(&csr, &id, Duration::from_secs(600)).unwrap();
        assert_eq!(chain.len(), 2, "leaf and root");
        assert_eq!(chain[1], b.root_pem());
        let leaf = &tls::parse_pem_certs(&chain[0]).unwrap()[0];
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf).unwrap();
        let root = &tls::parse_pem_certs(fake_root_pem()).unwrap()[0];
        let (_, root) = x509_parser::parse_x509_certificate(root).unwrap();
        assert_eq!(leaf.issuer(), root.subject());
        let cert = WorkloadCert::from_istio_chain(&chain, &key).unwrap();
        assert_eq!(cert.identity(), &id);
        // Any trust domain: the root names none.
        assert!(LocalCa::fake("other.td").is_ok());
    }
}
