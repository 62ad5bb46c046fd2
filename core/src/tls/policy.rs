//! [`TlsPolicy`]: the process-wide knobs of workload mTLS that come from configuration: the compliance policy
//! (`COMPLIANCE_POLICY`) and the revocation lists (`CRL_PATH`).

use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use super::crl::CrlStore;
use super::{TlsBackend, TlsError};

/// `COMPLIANCE_POLICY`: which key exchange groups the handshakes may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CompliancePolicy {
    /// The backend's usual groups (rustls: X25519, P-256, P-384, then X25519MLKEM768 — rustls's order without its
    /// `prefer-post-quantum` feature, as upstream ztunnel builds it, so two default peers agree on X25519; boring:
    /// FIPS 202205's P-256 and P-384).
    #[default]
    Default,
    /// Post-quantum key exchange only: X25519MLKEM768. A peer that offers no such share cannot connect.
    Pqc,
}

impl std::fmt::Display for CompliancePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CompliancePolicy::Default => "default",
            CompliancePolicy::Pqc => "pqc",
        })
    }
}

impl FromStr for CompliancePolicy {
    type Err = TlsError;

    /// Like upstream, the empty string means no policy and `pqc` is the only other value.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "none" | "default" => Ok(CompliancePolicy::Default),
            "pqc" => Ok(CompliancePolicy::Pqc),
            _ => Err(TlsError::UnknownCompliancePolicy(s.to_owned())),
        }
    }
}

/// Settings every workload TLS configuration of the process shares. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct TlsPolicy {
    pub compliance: CompliancePolicy,
    /// When set, peers whose leaf or intermediate is revoked are refused, in both directions.
    pub crl: Option<Arc<CrlStore>>,
}

static PROCESS_POLICY: OnceLock<TlsPolicy> = OnceLock::new();
static NO_POLICY: TlsPolicy = TlsPolicy {
    compliance: CompliancePolicy::Default,
    crl: None,
};

impl TlsPolicy {
    /// Refuses combinations a backend cannot honour, so they fail at start rather than at the first handshake.
    pub fn check_backend(&self, backend: TlsBackend) -> Result<(), TlsError> {
        match backend {
            TlsBackend::Rustls => Ok(()),
            #[cfg(feature = "tls-boring")]
            TlsBackend::Boring if self.crl.is_some() => Err(TlsError::Unsupported(
                "CRL_PATH is not supported with TLS_BACKEND=boring; use the rustls backend".into(),
            )),
            #[cfg(feature = "tls-boring")]
            TlsBackend::Boring => Ok(()),
        }
    }

    /// Makes `self` the policy of [`super::TlsAcceptor::new`] and [`super::TlsConnector::new`] for the rest of the
    /// process. Call once at start, before any handshake; a second call is refused (the first policy stays).
    pub fn install(self) -> Result<(), TlsError> {
        PROCESS_POLICY
            .set(self)
            .map_err(|_| TlsError::Config("a TLS policy is already installed".into()))
    }

    /// `CRL_PATH` and `COMPLIANCE_POLICY` as both proxies read them at start: parsed, checked against `backend`
    /// and, when either is set, installed as the process policy with the CRL file polled every
    /// [`DEFAULT_CRL_POLL`](super::DEFAULT_CRL_POLL). Nothing is installed when neither is set, so several proxies
    /// with default settings can share a (test) process. Must run inside a Tokio runtime when a CRL is given.
    pub fn install_from_settings(
        crl_path: Option<&std::path::Path>,
        compliance: &str,
        backend: TlsBackend,
    ) -> anyhow::Result<()> {
        use anyhow::Context;
        let compliance: CompliancePolicy = compliance
            .parse()
            .map_err(|e| anyhow::anyhow!("COMPLIANCE_POLICY: {e}"))?;
        let crl = match crl_path {
            Some(path) => {
                let store = CrlStore::load(path).context("CRL_PATH")?;
                tracing::info!(path = %path.display(), crls = store.len(), "loaded CRL file");
                drop(store.watch(super::DEFAULT_CRL_POLL));
                Some(store)
            }
            None => None,
        };
        let policy = TlsPolicy { compliance, crl };
        policy.check_backend(backend)?;
        if compliance != CompliancePolicy::Default || policy.crl.is_some() {
            policy.install()?;
        }
        Ok(())
    }

    /// The installed policy, or the default one (no CRL, no compliance restriction).
    pub fn process() -> &'static TlsPolicy {
        PROCESS_POLICY.get().unwrap_or(&NO_POLICY)
    }

    /// Identifies the settings a built configuration depends on, for the per-certificate cache.
    pub(crate) fn cache_key(&self) -> PolicyKey {
        PolicyKey {
            compliance: self.compliance,
            crl: self
                .crl
                .as_ref()
                .map(|c| Arc::as_ptr(c) as usize)
                .unwrap_or(0),
        }
    }
}

/// See [`TlsPolicy::cache_key`]. The CRL store is identified by address; the cache entry holds an `Arc` to it, so
/// the address cannot be reused while the entry lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PolicyKey {
    compliance: CompliancePolicy,
    crl: usize,
}

/// Built configurations of one certificate, one per policy in use (normally exactly one).
pub(crate) struct PolicyCache<T> {
    /// The first policy's entry, read without a lock: every connection of a proxy uses the process policy, so
    /// this is the one a handshake finds.
    first: OnceLock<(PolicyKey, Arc<T>)>,
    /// Any other policy's (tests with explicit policies). Held only for a lookup or an insert, never across a
    /// build or an await.
    entries: Mutex<Vec<(PolicyKey, TlsPolicy, Arc<T>)>>,
}

impl<T> Default for PolicyCache<T> {
    fn default() -> Self {
        PolicyCache {
            first: OnceLock::new(),
            entries: Mutex::new(Vec::new()),
        }
    }
}

impl<T> PolicyCache<T> {
    /// The entry for `policy`, built with `build` on first use.
    pub(crate) fn get_or_build<E>(
        &self,
        policy: &TlsPolicy,
        build: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let key = policy.cache_key();
        if let Some((k, hit)) = self.first.get()
            && *k == key
        {
            return Ok(hit.clone());
        }
        if let Some(hit) = self.lookup(key) {
            return Ok(hit);
        }
        let built = Arc::new(build()?);
        // The first policy built takes the lock-free slot (the `Arc` of its CRL store stays alive in `entries`).
        if self.first.get().is_none() {
            let _ = self.first.set((key, built.clone()));
        }
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A concurrent builder may have won; either result is equivalent.
        if let Some((_, _, existing)) = entries.iter().find(|(k, _, _)| *k == key) {
            return Ok(existing.clone());
        }
        entries.push((key, policy.clone(), built.clone()));
        Ok(built)
    }

    fn lookup(&self, key: PolicyKey) -> Option<Arc<T>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, _, v)| v.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn compliance_from_str() {
        assert_eq!(
            "".parse::<CompliancePolicy>().unwrap(),
            CompliancePolicy::Default
        );
        assert_eq!(
            " PQC ".parse::<CompliancePolicy>().unwrap(),
            CompliancePolicy::Pqc
        );
        let e = "fips".parse::<CompliancePolicy>().unwrap_err();
        assert!(matches!(e, TlsError::UnknownCompliancePolicy(_)));
        assert!(e.to_string().contains("fips"), "{e}");
    }
}
