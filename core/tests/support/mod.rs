//! A test CA in the plug-in layout whose issuers the tests keep, so they can sign what `LocalCa` never would:
//! CRLs, expired or not-yet-valid leaves, leaves without a SPIFFE SAN.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::tls::WorkloadCert;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

pub const TTL: Duration = Duration::from_secs(3600);
pub const TD: &str = "cluster.local";

pub fn id(sa: &str) -> Identity {
    Identity::new(TD, "demo", sa)
}

/// A CA written in the plug-in layout, with the issuers kept.
pub struct TestCa {
    _dir: tempfile::TempDir,
    pub ca: LocalCa,
    pub root: Issuer<'static, KeyPair>,
    pub root_pem: String,
    /// Set when leaves are signed by an intermediate.
    pub intermediate: Option<(Issuer<'static, KeyPair>, SerialNumber)>,
    intermediate_pem: Option<String>,
}

fn ca_params(cn: &str, serial: u8) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::OrganizationName, TD);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(SerialNumber::from_slice(&[0x10, serial]));
    let now = OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(1);
    p
}

pub fn test_ca(with_intermediate: bool) -> TestCa {
    let dir = tempfile::tempdir().unwrap();
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("test root", 1);
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let root_pem = root_cert.pem();
    let root_key_pem = root_key.serialize_pem();
    let root = Issuer::new(root_params, root_key);
    let (ca_cert, ca_key, chain, intermediate, intermediate_pem) = if with_intermediate {
        let key = KeyPair::generate().unwrap();
        let params = ca_params("test intermediate", 2);
        let serial = params.serial_number.clone().unwrap();
        let cert = params.signed_by(&key, &root).unwrap();
        let pem = cert.pem();
        let key_pem = key.serialize_pem();
        let issuer = Issuer::new(params, key);
        (
            pem.clone(),
            key_pem,
            format!("{pem}{root_pem}"),
            Some((issuer, serial)),
            Some(pem),
        )
    } else {
        (root_pem.clone(), root_key_pem, root_pem.clone(), None, None)
    };
    let ca_dir = dir.path().join("ca");
    std::fs::create_dir(&ca_dir).unwrap();
    std::fs::write(ca_dir.join("root-cert.pem"), &root_pem).unwrap();
    std::fs::write(ca_dir.join("ca-cert.pem"), ca_cert).unwrap();
    std::fs::write(ca_dir.join("ca-key.pem"), ca_key).unwrap();
    std::fs::write(ca_dir.join("cert-chain.pem"), chain).unwrap();
    let ca = LocalCa::load_or_create(&ca_dir, TD).unwrap();
    TestCa {
        _dir: dir,
        ca,
        root,
        root_pem,
        intermediate,
        intermediate_pem,
    }
}

/// What a hand-made leaf says: its SANs and validity window, relative to now.
pub struct LeafSpec {
    pub sans: Vec<SanType>,
    pub valid_from: time::Duration,
    pub valid_until: time::Duration,
}

impl LeafSpec {
    /// A leaf for `identity`, valid from an hour ago to an hour from now.
    pub fn for_identity(identity: &Identity) -> Self {
        Self::with_uris(&[identity.to_string()])
    }

    pub fn with_uris(uris: &[String]) -> Self {
        LeafSpec {
            sans: uris
                .iter()
                .map(|u| SanType::URI(u.as_str().try_into().unwrap()))
                .collect(),
            valid_from: -time::Duration::hours(1),
            valid_until: time::Duration::hours(1),
        }
    }

    fn params(&self) -> CertificateParams {
        let now = OffsetDateTime::now_utc();
        let mut p = CertificateParams::default();
        p.subject_alt_names = self.sans.clone();
        p.not_before = now + self.valid_from;
        p.not_after = now + self.valid_until;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        p
    }
}

/// A leaf's chain (`[leaf, intermediate…]` PEMs, no root) and PKCS#8 key PEM.
pub struct Leaf {
    pub chain: Vec<String>,
    pub key_pem: String,
}

impl Leaf {
    /// As a workload certificate trusting `root_pem` (what a ztunnel would hold).
    pub fn workload_cert(&self, root_pem: &str) -> Arc<WorkloadCert> {
        let mut chain = self.chain.clone();
        chain.push(root_pem.to_owned());
        Arc::new(WorkloadCert::from_istio_chain(&chain, &self.key_pem).unwrap())
    }
}

impl TestCa {
    pub fn issue(&self, sa: &str) -> Arc<WorkloadCert> {
        Arc::new(self.ca.issue_workload(&id(sa), TTL).unwrap())
    }

    /// The issuer of the leaves (the intermediate when there is one).
    pub fn leaf_issuer(&self) -> &Issuer<'static, KeyPair> {
        self.intermediate.as_ref().map_or(&self.root, |(i, _)| i)
    }

    /// A leaf as `spec` says, signed by this CA.
    pub fn leaf(&self, spec: &LeafSpec) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = spec.params().signed_by(&key, self.leaf_issuer()).unwrap();
        let mut chain = vec![cert.pem()];
        chain.extend(self.intermediate_pem.clone());
        Leaf {
            chain,
            key_pem: key.serialize_pem(),
        }
    }
}

/// A self-signed leaf as `spec` says: no CA vouches for it.
pub fn self_signed_leaf(spec: &LeafSpec) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let cert = spec.params().self_signed(&key).unwrap();
    Leaf {
        chain: vec![cert.pem()],
        key_pem: key.serialize_pem(),
    }
}
