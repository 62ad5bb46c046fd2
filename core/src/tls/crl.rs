//! Certificate revocation lists (`CRL_PATH`): loaded at start, re-read when the file changes, consulted by the
//! verifiers on every handshake, for the peer leaf and every intermediate of its chain.
//!
//! The file holds one DER CRL or any number of PEM `X509 CRL` blocks (several CAs may be concatenated). An empty
//! file, or a PEM file without CRL blocks, means "nothing revoked". A file that cannot be read or parsed at start
//! is an error; on a later reload the last good set stays in force and the failure is logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use webpki::{CertRevocationList, OwnedCertRevocationList};

/// How often [`CrlStore::watch`] looks at the file when the caller has no opinion.
pub const DEFAULT_CRL_POLL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    #[error("reading CRL file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("parsing CRL file {path}: {reason}")]
    Parse { path: String, reason: String },
}

/// The CRLs in force, parsed once per load.
pub(crate) struct CrlSet {
    pub(crate) crls: Vec<CertRevocationList<'static>>,
}

/// The CRLs of one file, swapped atomically when the file changes. Readers never block.
pub struct CrlStore {
    path: PathBuf,
    current: ArcSwap<CrlSet>,
    /// The file contents the current set was parsed from (or that last failed), to notice changes.
    last_seen: Mutex<Vec<u8>>,
    /// Bumped each time a new set comes into force, for connections that re-check their peer
    /// ([`super::RevocationWatch`]).
    changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for CrlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlStore")
            .field("path", &self.path)
            .field("crls", &self.current.load().crls.len())
            .finish()
    }
}

impl CrlStore {
    /// Reads and parses `path`; any failure is an error (a start-up error for the caller).
    pub fn load(path: impl Into<PathBuf>) -> Result<Arc<Self>, CrlError> {
        let path = path.into();
        let bytes = read(&path)?;
        let set = parse(&path, &bytes)?;
        Ok(Arc::new(CrlStore {
            path,
            current: ArcSwap::from_pointee(set),
            last_seen: Mutex::new(bytes),
            changes: tokio::sync::watch::Sender::new(0),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many CRLs are in force.
    pub fn len(&self) -> usize {
        self.current.load().crls.len()
    }

    /// Whether no CRL is in force (an empty file).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-reads the file. `Ok(true)` when it changed and the new set is now in force, `Ok(false)` when it is
    /// unchanged; on error the previous set stays in force (and the same bad contents are not reported again).
    pub fn reload(&self) -> Result<bool, CrlError> {
        let bytes = read(&self.path)?;
        let mut last = self
            .last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last == bytes {
            return Ok(false);
        }
        let parsed = parse(&self.path, &bytes);
        *last = bytes;
        drop(last);
        self.current.store(Arc::new(parsed?));
        self.changes.send_modify(|generation| *generation += 1);
        Ok(true)
    }

    /// Polls the file every `every` on the current tokio runtime until the store is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                match store.reload() {
                    Ok(true) => tracing::info!(
                        path = %store.path.display(),
                        crls = store.len(),
                        "reloaded CRL file"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        path = %store.path.display(),
                        error = %e,
                        "CRL reload failed; keeping the previous CRLs"
                    ),
                }
            }
        })
    }

    /// Wakes each time a new set comes into force.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn snapshot(&self) -> Arc<CrlSet> {
        self.current.load_full()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CrlError> {
    std::fs::read(path).map_err(|e| CrlError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn parse(path: &Path, bytes: &[u8]) -> Result<CrlSet, CrlError> {
    let err = |reason: String| CrlError::Parse {
        path: path.display().to_string(),
        reason,
    };
    let trimmed = bytes.trim_ascii_start();
    let ders: Vec<CertificateRevocationListDer<'static>> = if trimmed.is_empty() {
        Vec::new()
    } else if trimmed.starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("bad PEM: {e}")))?
    } else {
        vec![CertificateRevocationListDer::from(bytes.to_vec())]
    };
    let mut crls = Vec::with_capacity(ders.len());
    for (i, der) in ders.iter().enumerate() {
        let owned = OwnedCertRevocationList::from_der(der.as_ref())
            .map_err(|e| err(format!("CRL {}: {e}", i + 1)))?;
        crls.push(CertRevocationList::from(owned));
    }
    Ok(CrlSet { crls })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_nothing_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crl.pem");
        std::fs::write(&path, b"").unwrap();
        let store = CrlStore::load(&path).unwrap();
        assert!(store.is_empty());
        assert!(!store.reload().unwrap());
    }

    #[test]
    fn garbage_is_a_load_error_and_missing_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crl.pem");
        std::fs::write(
            &path,
            b"-----BEGIN X509 CRL-----\nnot base64!\n-----END X509 CRL-----\n",
        )
        .unwrap();
        assert!(matches!(CrlStore::load(&path), Err(CrlError::Parse { .. })));
        std::fs::write(&path, b"\x30\x03\x02\x01\x00").unwrap();
        assert!(matches!(CrlStore::load(&path), Err(CrlError::Parse { .. })));
        let missing = dir.path().join("absent.pem");
        let e = CrlStore::load(&missing).unwrap_err();
        assert!(matches!(e, CrlError::Read { .. }));
        assert!(e.to_string().contains("absent.pem"), "{e}");
    }

    #[test]
    fn bad_reload_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crl.pem");
        std::fs::write(&path, b"").unwrap();
        let store = CrlStore::load(&path).unwrap();
        std::fs::write(&path, b"\x30\x03\x02\x01\x00").unwrap();
        assert!(matches!(store.reload(), Err(CrlError::Parse { .. })));
        assert!(store.is_empty());
        // The same bad contents are not reported twice.
        assert!(!store.reload().unwrap());
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(store.reload(), Err(CrlError::Read { .. })));
    }
}
