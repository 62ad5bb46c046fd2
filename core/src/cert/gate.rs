//! A counting semaphore whose waiters are served by priority (then arrival), with priorities that may rise while
//! waiting (a prefetch becomes urgent when a connection needs the certificate).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// How urgently a certificate is needed; higher is served first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Rotation of a certificate that is still valid.
    Background = 0,
    /// Prefetch for a workload that may soon have connections.
    Warmup = 1,
    /// A live connection is waiting.
    RealTime = 2,
}

impl Priority {
    pub(crate) fn from_u8(v: u8) -> Priority {
        match v {
            2 => Priority::RealTime,
            1 => Priority::Warmup,
            _ => Priority::Background,
        }
    }
}

/// A priority that can only go up, shared between an identity's worker and its callers.
#[derive(Debug, Default)]
pub(crate) struct SharedPriority(AtomicU8);

impl SharedPriority {
    pub(crate) fn new(p: Priority) -> Self {
        SharedPriority(AtomicU8::new(p as u8))
    }

    pub(crate) fn raise(&self, p: Priority) {
        self.0.fetch_max(p as u8, Ordering::Relaxed);
    }

    pub(crate) fn set(&self, p: Priority) {
        self.0.store(p as u8, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> Priority {
        Priority::from_u8(self.0.load(Ordering::Relaxed))
    }
}

pub(crate) struct Gate {
    state: Mutex<GateState>,
}

struct GateState {
    available: usize,
    next_seq: u64,
    waiters: Vec<Waiter>,
}

struct Waiter {
    seq: u64,
    priority: Arc<SharedPriority>,
    tx: oneshot::Sender<Permit>,
}

/// One slot; given back on drop.
pub(crate) struct Permit {
    gate: Option<Arc<Gate>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            Gate::release(&gate);
        }
    }
}

impl Gate {
    pub(crate) fn new(slots: usize) -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new(GateState {
                available: slots,
                next_seq: 0,
                waiters: Vec::new(),
            }),
        })
    }

    pub(crate) async fn acquire(self: &Arc<Self>, priority: Arc<SharedPriority>) -> Permit {
        let rx = {
            let mut state = self.lock();
            if state.available > 0 && state.waiters.is_empty() {
                state.available -= 1;
                return Permit {
                    gate: Some(self.clone()),
                };
            }
            let (tx, rx) = oneshot::channel();
            let seq = state.next_seq;
            state.next_seq += 1;
            state.waiters.push(Waiter { seq, priority, tx });
            rx
        };
        match rx.await {
            Ok(permit) => permit,
            // The gate never drops a waiter's sender without sending; this is unreachable, but be safe and wait
            // for a fresh slot the ordinary way.
            Err(_) => {
                Box::pin(self.acquire(Arc::new(SharedPriority::new(Priority::Background)))).await
            }
        }
    }

    /// Hands the slot to the most urgent live waiter, or returns it to the pool.
    fn release(self: &Arc<Self>) {
        let mut state = self.lock();
        loop {
            state.waiters.retain(|w| !w.tx.is_closed());
            let best = state
                .waiters
                .iter()
                .enumerate()
                .max_by(|(_, a), (_, b)| {
                    a.priority
                        .get()
                        .cmp(&b.priority.get())
                        .then(b.seq.cmp(&a.seq))
                })
                .map(|(i, _)| i);
            let Some(i) = best else {
                state.available += 1;
                return;
            };
            let waiter = state.waiters.swap_remove(i);
            match waiter.tx.send(Permit {
                gate: Some(self.clone()),
            }) {
                Ok(()) => return,
                Err(mut permit) => {
                    // The waiter went away between the check and the send: keep the slot, try the next one.
                    permit.gate = None;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // A panic while holding this short lock cannot leave the state inconsistent; keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[cfg(test)]
    fn available(&self) -> usize {
        self.lock().available
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_by_priority_then_arrival() {
        let gate = Gate::new(1);
        let held = gate
            .acquire(Arc::new(SharedPriority::new(Priority::Background)))
            .await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let warm_prio = Arc::new(SharedPriority::new(Priority::Background));
        for (name, prio) in [
            ("bg1", Arc::new(SharedPriority::new(Priority::Background))),
            ("warm", Arc::new(SharedPriority::new(Priority::Warmup))),
            ("bg2", Arc::new(SharedPriority::new(Priority::Background))),
            ("raised", warm_prio.clone()),
        ] {
            let gate = gate.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let _p = gate.acquire(prio).await;
                order.lock().unwrap().push(name);
            }));
            tokio::task::yield_now().await;
        }
        // Raised while waiting: now ahead of everyone.
        warm_prio.raise(Priority::RealTime);
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec!["raised", "warm", "bg1", "bg2"]);
        assert_eq!(gate.available(), 1);
    }
}
