//! The BoringSSL backend (cargo feature `tls-boring`): the same policy as the rustls one.
//!
//! BoringSSL does not let TLS 1.3 suites be chosen one by one; the FIPS 202205 compliance policy limits them to
//! AES-128-GCM and AES-256-GCM (and key exchange to P-256/P-384, which every rustls peer offers).
//!
//! `COMPLIANCE_POLICY=pqc` keeps that policy (suites, signature algorithms, versions) and then replaces its groups
//! with X25519MLKEM768 alone. FIPS 202205 itself does not list X25519MLKEM768 (BoringSSL's newer FIPS 202609 policy
//! does, next to ML-KEM-1024, P-256 and P-384, but the `boring` crate does not expose it); a FIPS-validated
//! BoringSSL module older than ML-KEM support would refuse the group. CRLs are not supported by this backend:
//! [`super::TlsPolicy::check_backend`] refuses them at start.

use std::sync::{Arc, Mutex};

use boring::pkey::PKey;
use boring::ssl::{
    AlpnError, CompliancePolicy as BoringPolicy, Ssl, SslContext, SslContextBuilder, SslMethod,
    SslOptions, SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use boring::x509::X509;
use boring::x509::store::X509StoreBuilder;
use tokio::io::{AsyncRead, AsyncWrite};

use super::policy::{CompliancePolicy, TlsPolicy};
use super::stream::Inner;
use super::{ClientTlsStream, PeerCheckError, ServerTlsStream, TlsError, WorkloadCert};
use crate::identity::Identity;

/// `h2` in the wire format of the ALPN extension.
const ALPN_WIRE: &[u8] = b"\x02h2";

/// The cached contexts of one workload certificate.
pub(crate) struct Contexts {
    server: SslContext,
    client: SslContext,
    trust_domain: String,
}

/// The contexts of `cert` under `policy`, built on first use.
pub(crate) fn contexts(cert: &WorkloadCert, policy: &TlsPolicy) -> Result<Arc<Contexts>, TlsError> {
    cert.boring.get_or_build(policy, || {
        Ok(Contexts {
            server: build(cert, true, policy.compliance)?,
            client: build(cert, false, policy.compliance)?,
            trust_domain: cert.identity().trust_domain.clone(),
        })
    })
}

fn cfg(what: &str) -> impl Fn(boring::error::ErrorStack) -> TlsError + '_ {
    move |e| TlsError::Config(format!("boring {what}: {e}"))
}

fn build(
    cert: &WorkloadCert,
    server: bool,
    compliance: CompliancePolicy,
) -> Result<SslContext, TlsError> {
    let mut b = SslContextBuilder::new(SslMethod::tls()).map_err(cfg("context"))?;
    // The policy first: it sets its own version range, which we then narrow to TLS 1.3.
    b.set_compliance_policy(BoringPolicy::FIPS_202205)
        .map_err(cfg("compliance policy"))?;
    b.set_min_proto_version(Some(SslVersion::TLS1_3))
        .map_err(cfg("min version"))?;
    b.set_max_proto_version(Some(SslVersion::TLS1_3))
        .map_err(cfg("max version"))?;
    if compliance == CompliancePolicy::Pqc {
        b.set_curves_list("X25519MLKEM768")
            .map_err(cfg("pqc key exchange groups"))?;
    }

    let mut chain = cert.chain_der().iter();
    let leaf = chain
        .next()
        .ok_or_else(|| TlsError::InvalidCertificate("empty chain".into()))?;
    let leaf = X509::from_der(leaf).map_err(cfg("leaf"))?;
    b.set_certificate(&leaf).map_err(cfg("leaf"))?;
    for intermediate in chain {
        b.add_extra_chain_cert(X509::from_der(intermediate).map_err(cfg("intermediate"))?)
            .map_err(cfg("intermediate"))?;
    }
    let key =
        PKey::private_key_from_pkcs8(cert.key_der().secret_pkcs8_der()).map_err(cfg("key"))?;
    b.set_private_key(&key).map_err(cfg("key"))?;
    b.check_private_key()
        .map_err(|e| TlsError::InvalidKey(format!("boring: {e}")))?;

    let mut store = X509StoreBuilder::new().map_err(cfg("store"))?;
    for root in cert.roots_der() {
        store
            .add_cert(X509::from_der(root).map_err(cfg("root"))?)
            .map_err(cfg("root"))?;
    }
    b.set_cert_store(store.build());

    b.set_session_cache_mode(SslSessionCacheMode::OFF);
    b.set_options(SslOptions::NO_TICKET);
    if server {
        b.set_alpn_select_callback(|_, offered| {
            // Only called when the client offers ALPN; one without h2 is refused.
            boring::ssl::select_next_proto(ALPN_WIRE, offered).ok_or(AlpnError::ALERT_FATAL)
        });
    } else {
        b.set_alpn_protos(ALPN_WIRE).map_err(cfg("alpn"))?;
    }
    Ok(b.build())
}

/// Where a verify callback leaves the reason it refused the peer.
type Slot = Arc<Mutex<Option<PeerCheckError>>>;

/// Verification mode and callback for one connection: chain to our roots (BoringSSL, with the purpose of the
/// side), then `check` on the leaf.
fn set_verify(
    ssl: &mut Ssl,
    slot: Slot,
    check: impl Fn(&[u8]) -> Result<Identity, PeerCheckError> + Send + Sync + 'static,
) {
    let record = move |slot: &Slot, e: PeerCheckError| {
        let mut guard = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.get_or_insert(e);
    };
    ssl.set_verify_callback(
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        move |preverified, ctx| {
            if !preverified {
                let reason = match ctx.verify_result() {
                    Err(e) => e.error_string().to_owned(),
                    Ok(()) => "rejected".to_owned(),
                };
                record(&slot, PeerCheckError::Untrusted(reason));
                return false;
            }
            if ctx.error_depth() != 0 {
                return true;
            }
            let der = match ctx.current_cert().map(|c| c.to_der()) {
                Some(Ok(der)) => der,
                _ => {
                    record(&slot, PeerCheckError::NoCertificate);
                    return false;
                }
            };
            match check(&der) {
                Ok(_) => true,
                Err(e) => {
                    record(&slot, e);
                    false
                }
            }
        },
    );
}

fn handshake_error<S>(slot: &Slot, e: tokio_boring::HandshakeError<S>) -> TlsError {
    let recorded = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    match recorded {
        Some(check) => TlsError::PeerRejected(check),
        // FAIL_IF_NO_PEER_CERT ends the handshake before the callback runs; the error stack's reason (a stable
        // BoringSSL name, reachable only through the message) is what says so.
        None if e.to_string().contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") => {
            TlsError::PeerRejected(PeerCheckError::NoCertificate)
        }
        None => TlsError::Handshake(format!("boring: {e}")),
    }
}

fn peer_and_alpn(ssl: &boring::ssl::SslRef) -> (Option<Identity>, Option<Vec<u8>>) {
    let peer = ssl
        .peer_certificate()
        .and_then(|c| c.to_der().ok())
        .and_then(|der| super::spiffe_identities(&der).ok())
        .and_then(|ids| ids.into_iter().next());
    (peer, ssl.selected_alpn_protocol().map(<[u8]>::to_vec))
}

pub(super) async fn accept<IO>(ctx: &Contexts, io: IO) -> Result<ServerTlsStream<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ssl = Ssl::new(&ctx.server).map_err(cfg("ssl"))?;
    let slot = Slot::default();
    let td = ctx.trust_domain.clone();
    set_verify(&mut ssl, slot.clone(), move |der| {
        super::check_trust_domain(der, &td)
    });
    let stream = tokio_boring::SslStreamBuilder::new(ssl, io)
        .accept()
        .await
        .map_err(|e| handshake_error(&slot, e))?;
    let (peer, alpn) = peer_and_alpn(stream.ssl());
    let group = stream.ssl().curve_name().map(str::to_owned);
    Ok(ServerTlsStream {
        inner: Inner::Boring(stream),
        peer,
        alpn,
        group,
        // CRLs are refused with this backend (`TlsPolicy::check_backend`).
        revocation: None,
    })
}

pub(super) async fn connect<IO>(
    ctx: &Contexts,
    io: IO,
    expected: &[Identity],
) -> Result<ClientTlsStream<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ssl = Ssl::new(&ctx.client).map_err(cfg("ssl"))?;
    let slot = Slot::default();
    let expected = expected.to_vec();
    set_verify(&mut ssl, slot.clone(), move |der| {
        super::check_expected(der, &expected)
    });
    // No set_hostname: no SNI is sent and no host name is checked.
    let stream = tokio_boring::SslStreamBuilder::new(ssl, io)
        .connect()
        .await
        .map_err(|e| handshake_error(&slot, e))?;
    let (peer, alpn) = peer_and_alpn(stream.ssl());
    let group = stream.ssl().curve_name().map(str::to_owned);
    Ok(ClientTlsStream {
        inner: Inner::Boring(stream),
        peer,
        alpn,
        group,
        // CRLs are refused with this backend (`TlsPolicy::check_backend`).
        revocation: None,
    })
}
