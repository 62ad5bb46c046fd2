//! Revocation of a live connection's peer. The CRL is checked at the handshake; a connection set up before a CRL
//! update that revokes its peer (leaf or intermediate) must not live on, so each connection made under a CRL keeps
//! its peer's chain and re-checks it whenever a new set comes into force, as upstream ztunnel does. The check runs
//! at the connection's start time: the chain was valid then, so only revocation can change the answer (a peer
//! leaf that expired since must not hide its revocation behind an expiry error).

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::crl::CrlStore;

/// One connection's peer, re-checked against each new CRL set. Taken from the TLS stream before it is handed to
/// HTTP/2 ([`super::ServerTlsStream::take_revocation`], [`super::ClientTlsStream::take_revocation`]).
pub struct RevocationWatch {
    crl: Arc<CrlStore>,
    changes: tokio::sync::watch::Receiver<u64>,
    /// Leaf first.
    chain: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    usage: webpki::KeyUsage,
    established: UnixTime,
}

impl std::fmt::Debug for RevocationWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationWatch")
            .field("chain", &self.chain.len())
            .finish()
    }
}

impl RevocationWatch {
    pub(super) fn new(
        crl: Arc<CrlStore>,
        chain: &[CertificateDer<'_>],
        roots: Arc<RootCertStore>,
        usage: webpki::KeyUsage,
    ) -> Option<Box<Self>> {
        if chain.is_empty() {
            return None;
        }
        let changes = crl.subscribe();
        Some(Box::new(RevocationWatch {
            crl,
            changes,
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
            roots,
            usage,
            established: UnixTime::now(),
        }))
    }

    /// Resolves once a CRL set that revokes the peer comes into force; never, if none does.
    pub async fn revoked(&mut self) {
        loop {
            if self.changes.changed().await.is_err() {
                // The store is gone: nothing will change any more.
                return std::future::pending().await;
            }
            if self.is_revoked() {
                return;
            }
        }
    }

    /// Whether the CRLs in force revoke the peer's chain now.
    pub fn is_revoked(&self) -> bool {
        let Some((leaf, intermediates)) = self.chain.split_first() else {
            return false;
        };
        matches!(
            super::with_rustls::check_revocation(
                Some(&self.crl),
                &self.roots,
                leaf,
                intermediates,
                self.established,
                self.usage,
            ),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked
            ))
        )
    }
}

/// What [`until_revoked`] says when the peer's certificate was revoked while the connection lived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the peer's certificate was revoked by a CRL update; connection closed")]
pub struct Revoked;

/// Runs `conn` (whatever serves or drives a connection) to its end, or until a CRL update revokes the peer `watch`
/// follows: then `conn` is dropped, which tears the connection down (its streams fail), and `Err(Revoked)` is
/// returned. Without a watch (no CRL in force), just `conn`.
pub async fn until_revoked<F: std::future::Future>(
    conn: F,
    watch: Option<Box<RevocationWatch>>,
) -> Result<F::Output, Revoked> {
    match watch {
        None => Ok(conn.await),
        Some(mut watch) => tokio::select! {
            out = conn => Ok(out),
            () = watch.revoked() => Err(Revoked),
        },
    }
}
