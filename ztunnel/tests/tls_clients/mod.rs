//! What `crl.rs` and `pqc.rs` share: one server ztunnel "in" the pod `default/server` on 127.0.<net>.3 (a second
//! HBONE workload, `default/peer`, on 127.0.<net>.4 for tests that stand in for it), mesh certificates from the
//! ztunnel's own local CA, and hand-built rustls clients for its 15008: protocol versions and key exchange groups
//! of the test's choice, the mesh client certificate, and any server certificate accepted (they test the server).
//! Those clients either run an HBONE CONNECT (recording the negotiated group) or report the TLS alert that refused
//! them.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::hbone::{self, H2Config, HboneClient, HboneError, PoolKey};
use ambit_core::tls::WorkloadCert;
use ambit_ztunnel::app::Running;
use ambit_ztunnel::config::{Config, LocalXds};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::SupportedKxGroup;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, NamedGroup, ProtocolVersion, SupportedProtocolVersion};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::support::{self, WAIT};

pub const TD: &str = "cluster.local";

pub fn id(sa: &str) -> Identity {
    Identity::new(TD, "default", sa)
}

fn world(net: u8) -> String {
    let workload = |name: &str, host: u8| {
        format!(
            r#"
- uid: cluster1//v1/Pod/default/{name}
  name: {name}
  namespace: default
  serviceAccount: {name}
  trustDomain: cluster.local
  clusterId: cluster1
  workloadIps: [127.0.{net}.{host}]
  protocol: HBONE
"#
        )
    };
    format!("workloads:{}{}", workload("server", 3), workload("peer", 4))
}

/// The server ztunnel and its CA directory.
pub struct Server {
    pub zt: Running,
    pub ip: IpAddr,
    pub ca_dir: tempfile::TempDir,
}

impl Server {
    pub fn hbone(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15008)
    }

    /// The pool key of a `default/client` connection to the server's 15008.
    pub fn pool_key(&self) -> PoolKey {
        PoolKey {
            src_identity: id("client"),
            dst_identities: vec![id("server")],
            dst: self.hbone(),
            src_ip: "127.0.0.1".parse().unwrap(),
        }
    }
}

/// Starts the server ztunnel (SOCKS5 on) with `edit` applied to its configuration, and waits until it is ready.
pub async fn server(net: u8, edit: impl FnOnce(&mut Config)) -> Server {
    let ca_dir = tempfile::tempdir().unwrap();
    let ip: IpAddr = format!("127.0.{net}.3").parse().unwrap();
    let mut cfg = support::pod_config(ip, "server", LocalXds::Inline(world(net)), ca_dir.path());
    edit(&mut cfg);
    let zt = support::start(cfg).await;
    support::wait_ready(&zt).await;
    Server { zt, ip, ca_dir }
}

// ----- mesh certificates -----

/// A certificate for `default/<sa>` from the CA in a ztunnel's CA directory, both as core's [`WorkloadCert`] and as
/// rustls parts (leaf first, no root; the PKCS#8 key).
pub struct MeshCert {
    pub cert: Arc<WorkloadCert>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl MeshCert {
    pub fn issue(ca_dir: &Path, sa: &str) -> Self {
        let ca = LocalCa::load_or_create(ca_dir, TD).unwrap();
        let identity = id(sa);
        let (key_pem, csr) = ambit_core::tls::generate_csr(&identity).unwrap();
        let istio_chain = ca
            .sign_csr(&csr, &identity, Duration::from_secs(3600))
            .unwrap();
        let cert = Arc::new(WorkloadCert::from_istio_chain(&istio_chain, &key_pem).unwrap());
        let chain = istio_chain[..istio_chain.len() - 1]
            .iter()
            .flat_map(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()).map(Result::unwrap))
            .collect();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        MeshCert { cert, chain, key }
    }

    /// The leaf's serial number as big-endian bytes.
    pub fn serial(&self) -> Vec<u8> {
        let hex = self.cert.serial_hex();
        let hex = if hex.len() % 2 == 1 {
            format!("0{hex}")
        } else {
            hex
        };
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A rustls client offering only `versions` and the key exchange `groups` (in that order), presenting this
    /// certificate, ALPN `h2`, no resumption.
    pub fn client_config(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        groups: &[&'static dyn SupportedKxGroup],
    ) -> Arc<ClientConfig> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.kx_groups = groups.to_vec();
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

pub mod groups {
    use rustls::crypto::SupportedKxGroup;
    use rustls::crypto::aws_lc_rs::kx_group;

    pub const PQ: &[&dyn SupportedKxGroup] = &[kx_group::X25519MLKEM768];
    pub const CLASSICAL: &[&dyn SupportedKxGroup] =
        &[kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    /// Both, classical first: a key share for X25519 only, X25519MLKEM768 merely listed.
    pub const CLASSICAL_FIRST_THEN_PQ: &[&dyn SupportedKxGroup] =
        &[kx_group::X25519, kx_group::X25519MLKEM768];
    /// Everything, X25519MLKEM768 first (key shares for it and X25519), then the classical ones.
    pub const ALL: &[&dyn SupportedKxGroup] = &[
        kx_group::X25519MLKEM768,
        kx_group::X25519,
        kx_group::SECP256R1,
        kx_group::SECP384R1,
    ];
}

pub const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
pub const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// The test clients check nothing of the server's certificate: what is under test is the server's verdict on them.
#[derive(Debug)]
pub struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("server.default.svc").unwrap()
}

// ----- HBONE over a hand-built client -----

/// What the handshake of a [`RawConnector`] agreed on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Negotiated {
    pub version: Option<ProtocolVersion>,
    pub group: Option<NamedGroup>,
}

/// Dials the pool key's address and does the handshake with a hand-built rustls client; records what it agreed on.
pub struct RawConnector {
    pub config: Arc<ClientConfig>,
    pub negotiated: Arc<Mutex<Option<Negotiated>>>,
}

#[async_trait::async_trait]
impl hbone::Connect for RawConnector {
    type Io = tokio_rustls::client::TlsStream<TcpStream>;
    async fn connect(&self, key: &PoolKey) -> Result<Self::Io, HboneError> {
        let tcp = TcpStream::connect(key.dst)
            .await
            .map_err(|e| HboneError::Transport(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(server_name(), tcp)
            .await
            .map_err(|e| HboneError::Tls(e.to_string()))?;
        let conn = tls.get_ref().1;
        *self.negotiated.lock().unwrap() = Some(Negotiated {
            version: conn.protocol_version(),
            group: conn.negotiated_key_exchange_group().map(|g| g.name()),
        });
        Ok(tls)
    }
}

/// An HBONE CONNECT to `target` through the server's 15008 with the hand-built client `config` on a connection of
/// its own; echoes a payload through it and returns what the handshake agreed on. Panics when not served.
pub async fn served_with(
    s: &Server,
    config: Arc<ClientConfig>,
    target: SocketAddr,
    what: &str,
) -> Negotiated {
    let negotiated = Arc::new(Mutex::new(None));
    let client = HboneClient::new(
        Arc::new(H2Config::default()),
        RawConnector {
            config,
            negotiated: negotiated.clone(),
        },
    );
    let req = support::connect_request(&target.to_string());
    let (mut stream, resp) = tokio::time::timeout(WAIT, client.connect(s.pool_key(), req))
        .await
        .unwrap_or_else(|_| panic!("{what}: CONNECT not answered within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: not served: {e}"));
    assert_eq!(resp.status, http::StatusCode::OK, "{what}");
    support::round_trip(&mut stream, what.as_bytes()).await;
    negotiated
        .lock()
        .unwrap()
        .expect("the handshake was recorded")
}

/// An HBONE CONNECT to `target` as a mesh client holding `cert` (core's connector, so the process TLS policy),
/// on a connection of its own: a fresh pool for every call.
pub async fn connect_with(
    s: &Server,
    cert: Arc<WorkloadCert>,
    target: SocketAddr,
) -> Result<hbone::H2Stream, HboneError> {
    let client = HboneClient::new(
        Arc::new(H2Config::default()),
        support::DirectConnector { cert, src: None },
    );
    let req = support::connect_request(&target.to_string());
    let (stream, resp) = tokio::time::timeout(WAIT, client.connect(s.pool_key(), req))
        .await
        .expect("a refused client is answered, not left hanging")?;
    assert_eq!(resp.status, http::StatusCode::OK);
    Ok(stream)
}

/// A bare TLS handshake with the server's 15008 using `config`, which the server must refuse: the rustls error the
/// client ends with, from the handshake itself or — TLS 1.3 checks the client's certificate after the client
/// finished — from the first read. Panics if the server sends data or closes without an alert.
pub async fn refused_in_tls(s: &Server, config: Arc<ClientConfig>, what: &str) -> rustls::Error {
    let tcp = TcpStream::connect(s.hbone()).await.unwrap();
    let handshake = tokio_rustls::TlsConnector::from(config).connect(server_name(), tcp);
    let mut tls = match tokio::time::timeout(WAIT, handshake)
        .await
        .unwrap_or_else(|_| panic!("{what}: handshake neither done nor refused in {WAIT:?}"))
    {
        Err(e) => return tls_error(e, what),
        Ok(tls) => tls,
    };
    let mut buf = [0u8; 256];
    match tokio::time::timeout(WAIT, tls.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: the connection is still open after {WAIT:?}"))
    {
        Ok(0) => panic!("{what}: closed without a TLS alert"),
        Ok(n) => panic!("{what}: the server sent {n} bytes of data to a client it should refuse"),
        Err(e) => tls_error(e, what),
    }
}

fn tls_error(e: std::io::Error, what: &str) -> rustls::Error {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap_or_else(|| panic!("{what}: not a TLS error: {e}"))
}
