//! Hand-built rustls clients for the waypoint's HBONE port, with the key-exchange groups and protocol versions a
//! test chooses (what `ambit-core`'s own connector never offers), each holding a workload certificate of the
//! waypoint's CA: a probe that reports the server's verdict on the handshake, and an HBONE [`Connect`] over them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::hbone::{Connect, H2Config, HboneClient, HboneError, PoolKey};
use ambit_core::tls::WorkloadCert;
use rustls::crypto::SupportedKxGroup;
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    AlertDescription, ClientConfig, NamedGroup, ProtocolVersion, SupportedProtocolVersion,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Post-quantum first, then classical: what a current rustls peer offers.
pub fn pq_and_classical() -> Vec<&'static dyn SupportedKxGroup> {
    vec![
        kx_group::X25519MLKEM768,
        kx_group::X25519,
        kx_group::SECP256R1,
    ]
}

/// Classical key exchange only: X25519, P-256, P-384.
pub fn classical() -> Vec<&'static dyn SupportedKxGroup> {
    vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1]
}

pub const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
pub const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// A workload certificate issued by `ca`, kept as PEM so both ambit's connector and a hand-built client can use it.
pub struct ClientCert {
    /// `[leaf, intermediates…, root]`.
    pub chain: Vec<String>,
    pub key_pem: String,
}

impl ClientCert {
    pub fn issue(ca: &LocalCa, identity: &Identity) -> Self {
        let (key_pem, csr) = ambit_core::tls::generate_csr(identity).unwrap();
        let chain = ca
            .sign_csr(&csr, identity, Duration::from_secs(3600))
            .unwrap();
        ClientCert { chain, key_pem }
    }

    /// As ambit's connector holds it.
    pub fn workload(&self) -> Arc<WorkloadCert> {
        Arc::new(WorkloadCert::from_istio_chain(&self.chain, &self.key_pem).unwrap())
    }

    /// The leaf's serial number, big-endian bytes (as a CRL names it).
    pub fn serial(&self) -> Vec<u8> {
        let hex = self.workload().serial_hex();
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

    /// A client config presenting this certificate, offering `groups` and `versions`, ALPN `h2`, and taking any
    /// server certificate (the server is not what these clients test).
    pub fn client_config(
        &self,
        groups: Vec<&'static dyn SupportedKxGroup>,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.kx_groups = groups;
        let provider = Arc::new(provider);
        let chain: Vec<CertificateDer<'static>> = self.chain[..self.chain.len() - 1]
            .iter()
            .flat_map(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()).map(Result::unwrap))
            .collect();
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
            .with_client_auth_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

/// What the server made of a handshake.
#[derive(Debug)]
pub enum Verdict {
    /// The server went on to HTTP/2 (its SETTINGS frame arrived) over this group and version.
    Accepted {
        group: Option<NamedGroup>,
        version: Option<ProtocolVersion>,
    },
    /// The server refused with this TLS alert, during the handshake or at the client's first read after it.
    Alert(AlertDescription),
    /// Anything else: the connection ended without an alert, or another error.
    Other(String),
}

/// Handshakes with `addr` as `config` says and waits (up to 20 s) for the server's verdict: its first HTTP/2
/// bytes, or an alert. The client writes nothing itself, so the server has no unread data to reset the connection
/// over and its alert arrives intact.
pub async fn verdict(addr: SocketAddr, config: Arc<ClientConfig>) -> Verdict {
    let run = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::IpAddress(addr.ip().into());
        let mut tls = match tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
        {
            Ok(tls) => tls,
            Err(e) => return classify(&e),
        };
        let mut buf = [0u8; 64];
        match tls.read(&mut buf).await {
            Ok(0) => Verdict::Other("closed without an alert".into()),
            Ok(_) => {
                let (_, conn) = tls.get_ref();
                Verdict::Accepted {
                    group: conn.negotiated_key_exchange_group().map(|g| g.name()),
                    version: conn.protocol_version(),
                }
            }
            Err(e) => classify(&e),
        }
    };
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the waypoint gave no verdict on the handshake within 20 s")
}

fn classify(e: &std::io::Error) -> Verdict {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => Verdict::Alert(*alert),
        _ => Verdict::Other(e.to_string()),
    }
}

/// HBONE over a hand-built client; records the key-exchange group of every connection it dials.
pub struct RawConnector {
    pub config: Arc<ClientConfig>,
    pub groups: Arc<Mutex<Vec<Option<NamedGroup>>>>,
}

#[async_trait::async_trait]
impl Connect for RawConnector {
    type Io = tokio_rustls::client::TlsStream<TcpStream>;

    async fn connect(&self, key: &PoolKey) -> Result<Self::Io, HboneError> {
        let tcp = TcpStream::connect(key.dst)
            .await
            .map_err(|e| HboneError::Transport(e.to_string()))?;
        let name = ServerName::IpAddress(key.dst.ip().into());
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| HboneError::Tls(e.to_string()))?;
        let group = tls
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name());
        self.groups.lock().unwrap().push(group);
        Ok(tls)
    }
}

/// The first line of the answer to `GET /` at `authority`, over a new CONNECT stream of `client` as `source`'s
/// workload (the stream closes after it: `Connection: close`).
pub async fn first_line<C: Connect>(
    client: &HboneClient<C>,
    source: &super::Source,
    authority: &str,
) -> Result<String, HboneError> {
    let key = PoolKey {
        src_identity: source.me.clone(),
        dst_identities: vec![source.waypoint.clone()],
        dst: source.waypoint_addr,
        src_ip: source.client_addr.ip(),
    };
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .header("forwarded", format!("for=\"{}\"", source.client_addr))
        .body(())
        .unwrap();
    let (mut s, _) = tokio::time::timeout(Duration::from_secs(10), client.connect(key, req))
        .await
        .expect("a CONNECT is answered, not left hanging")?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .map_err(HboneError::Io)?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// [`first_line`] over a fresh connection of its own made by `connector`.
pub async fn first_line_on_new_connection<C: Connect>(
    connector: C,
    source: &super::Source,
    authority: &str,
) -> Result<String, HboneError> {
    let client = HboneClient::new(Arc::new(H2Config::default()), connector);
    first_line(&client, source, authority).await
}

#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
