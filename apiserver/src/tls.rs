//! The server's key material: a CA (kept in the data directory, so kubeconfigs stay valid across restarts), a
//! serving certificate issued by it at every start, the service-account token signing key, and the admin token.
//! rustls uses the aws-lc-rs provider explicitly: a process default would panic when both backends are built in.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating key material: {0}")]
    Generate(String),
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("{0}: unreadable key material: {1}")]
    Material(String, String),
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// Everything secret the server needs.
pub struct Pki {
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
    /// PKCS#8 DER of the token signing key.
    pub token_key_der: Vec<u8>,
    pub admin_token: String,
}

fn gen_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn new_key() -> Result<KeyPair, TlsError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)
}

fn new_ca() -> Result<(String, String), TlsError> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "ambit-apiserver-ca");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    let io = |err| TlsError::Io {
        path: path.display().to_string(),
        err,
    };
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// Reads `dir/name`, or creates it with `make` first. Without a directory, always `make`.
fn load_or_make(
    dir: Option<&Path>,
    name: &str,
    make: impl FnOnce() -> Result<String, TlsError>,
) -> Result<String, TlsError> {
    let Some(dir) = dir else {
        return make();
    };
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s),
        _ => {
            let s = make()?;
            write_private(&path, s.as_bytes())?;
            Ok(s)
        }
    }
}

pub fn random_token() -> String {
    let mut b = [0u8; 32];
    crate::meta::random_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Pki {
    /// Loads the CA, token key and admin token from `dir` (creating them on first use), and issues a serving
    /// certificate for localhost, the loopback addresses, the in-cluster `kubernetes` names and `hosts`.
    pub fn load_or_create(dir: Option<&Path>, hosts: &[String]) -> Result<Self, TlsError> {
        if let Some(d) = dir {
            fs::create_dir_all(d).map_err(|err| TlsError::Io {
                path: d.display().to_string(),
                err,
            })?;
        }
        let mut ca_key_pem = None;
        let ca_pem = load_or_make(dir, "ca.crt", || {
            let (cert, key) = new_ca()?;
            ca_key_pem = Some(key);
            Ok(cert)
        })?;
        let ca_key_pem = match ca_key_pem {
            Some(k) => {
                if let Some(d) = dir {
                    write_private(&d.join("ca.key"), k.as_bytes())?;
                }
                k
            }
            None => load_or_make(dir, "ca.key", || {
                Err(TlsError::Material("ca.key".into(), "missing".into()))
            })?,
        };
        let ca_key = KeyPair::from_pem(&ca_key_pem)
            .map_err(|e| TlsError::Material("ca.key".into(), e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
            .map_err(|e| TlsError::Material("ca.crt".into(), e.to_string()))?;
        let token_key_pem = load_or_make(dir, "sa.key", || Ok(new_key()?.serialize_pem()))?;
        let token_key = KeyPair::from_pem(&token_key_pem)
            .map_err(|e| TlsError::Material("sa.key".into(), e.to_string()))?;
        let admin_token = load_or_make(dir, "admin.token", || Ok(random_token()))?
            .trim()
            .to_owned();

        let mut names: Vec<String> = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        names.push("kubernetes.default.svc.cluster.local".into());
        names.extend(hosts.iter().cloned());
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "ambit-apiserver");
        params.distinguished_name = dn;
        params.subject_alt_names = Vec::new();
        for ip in ["127.0.0.1", "::1"] {
            if let Ok(ip) = ip.parse() {
                params.subject_alt_names.push(SanType::IpAddress(ip));
            }
        }
        for n in names {
            match n.parse() {
                Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
                Err(_) => params
                    .subject_alt_names
                    .push(SanType::DnsName(n.as_str().try_into().map_err(gen_err)?)),
            }
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365);
        let serving_key = new_key()?;
        let cert = params.signed_by(&serving_key, &issuer).map_err(gen_err)?;
        let ca_der = rustls_pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes()).map_err(
            |e: rustls_pki_types::pem::Error| TlsError::Material("ca.crt".into(), e.to_string()),
        )?;
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca_der];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(serving_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Pki {
            ca_pem,
            server_config: Arc::new(server_config),
            token_key_der: token_key.serialize_der(),
            admin_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_survives_a_reload_from_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(Some(dir.path()), &["node-1".into()]).unwrap();
        let b = Pki::load_or_create(Some(dir.path()), &[]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.admin_token, b.admin_token);
        assert_eq!(a.token_key_der, b.token_key_der);
        assert_eq!(a.admin_token.len(), 64);
        let c = Pki::load_or_create(None, &[]).unwrap();
        assert_ne!(a.ca_pem, c.ca_pem);
    }
}
