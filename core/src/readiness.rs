//! Readiness as guards: each start-up task registers a [`BlockReady`]; the process is ready when all are dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Readiness {
    pending: Arc<Mutex<BTreeMap<u64, String>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

/// Holds readiness back until dropped.
pub struct BlockReady {
    id: u64,
    pending: Arc<Mutex<BTreeMap<u64, String>>>,
}

impl Readiness {
    pub fn new() -> Self {
        Readiness::default()
    }

    pub fn register_task(&self, name: &str) -> BlockReady {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, name.to_owned());
        }
        BlockReady {
            id,
            pending: self.pending.clone(),
        }
    }

    /// Names of the tasks still holding readiness back.
    pub fn pending(&self) -> Vec<String> {
        self.pending
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn is_ready(&self) -> bool {
        self.pending.lock().map(|p| p.is_empty()).unwrap_or(false)
    }
}

impl Drop for BlockReady {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_when_all_guards_drop() {
        let r = Readiness::new();
        assert!(r.is_ready());
        let a = r.register_task("proxy");
        let b = r.register_task("state manager");
        assert_eq!(
            r.pending(),
            vec!["proxy".to_owned(), "state manager".to_owned()]
        );
        drop(a);
        assert!(!r.is_ready());
        drop(b);
        assert!(r.is_ready());
    }
}
