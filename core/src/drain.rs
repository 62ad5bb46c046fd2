//! Graceful shutdown. One [`DrainTrigger`] starts a drain; every listener and connection holds a
//! [`DrainWatcher`], stops taking new work when signalled, and finishes what it has. The trigger waits until every
//! watcher is dropped, or until the deadline, after which the holders are told to close at once.

use std::time::Duration;

use tokio::sync::watch;

/// What a watcher is being asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainMode {
    /// Running normally.
    Run,
    /// Stop accepting, finish in-flight work.
    Graceful,
    /// The deadline passed: close now.
    Immediate,
}

/// How long holders get to close after the drain turned immediate, before the trigger stops waiting for them.
pub const FORCED_GRACE: Duration = Duration::from_secs(1);

/// Starts the drain; owned by whoever decides the process stops.
pub struct DrainTrigger {
    tx: watch::Sender<DrainMode>,
}

/// Held by every listener and connection.
#[derive(Clone)]
pub struct DrainWatcher {
    rx: watch::Receiver<DrainMode>,
}

/// A new trigger and its first watcher.
pub fn new() -> (DrainTrigger, DrainWatcher) {
    let (tx, rx) = watch::channel(DrainMode::Run);
    (DrainTrigger { tx }, DrainWatcher { rx })
}

impl DrainTrigger {
    /// Signals a graceful drain, waits up to `deadline` for every watcher to go away, then signals immediate close
    /// and waits up to [`FORCED_GRACE`] more for the rest (a holder that never looks at its watcher must not hang
    /// the process's exit; it is logged and left behind). Returns whether the graceful phase finished in time.
    pub async fn drain(self, deadline: Duration) -> bool {
        let _ = self.tx.send(DrainMode::Graceful);
        let graceful = tokio::time::timeout(deadline, self.tx.closed())
            .await
            .is_ok();
        if !graceful {
            // Whoever still holds a watcher must now close at once.
            tracing::warn!(
                watchers = self.tx.receiver_count(),
                deadline_ms = deadline.as_millis() as u64,
                "drain deadline passed; closing what is left"
            );
            let _ = self.tx.send(DrainMode::Immediate);
            if tokio::time::timeout(FORCED_GRACE, self.tx.closed())
                .await
                .is_err()
            {
                tracing::error!(
                    watchers = self.tx.receiver_count(),
                    "drain: holders ignored the immediate close; giving up on them"
                );
            }
        }
        graceful
    }

    /// A watcher for this trigger (the trigger can hand them out after the first).
    pub fn watcher(&self) -> DrainWatcher {
        DrainWatcher {
            rx: self.tx.subscribe(),
        }
    }

    /// How many watchers are still alive.
    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }
}

impl DrainWatcher {
    /// Resolves once a drain was asked for (graceful or immediate).
    pub async fn signaled(&mut self) -> DrainMode {
        match self.rx.wait_for(|m| *m != DrainMode::Run).await {
            Ok(m) => *m,
            // The trigger is gone without draining: treat it as an immediate stop.
            Err(_) => DrainMode::Immediate,
        }
    }

    /// Resolves once the drain turned forceful.
    pub async fn forced(&mut self) {
        let _ = self.rx.wait_for(|m| *m == DrainMode::Immediate).await;
    }

    pub fn mode(&self) -> DrainMode {
        *self.rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn graceful_when_watchers_leave() {
        let (trigger, mut w) = new();
        let task = tokio::spawn(async move {
            assert_eq!(w.signaled().await, DrainMode::Graceful);
            drop(w);
        });
        assert!(trigger.drain(Duration::from_secs(5)).await);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn forced_after_deadline() {
        let (trigger, mut w) = new();
        let task = tokio::spawn(async move {
            w.signaled().await;
            // ignores the graceful phase, leaves only when forced
            w.forced().await;
            assert_eq!(w.mode(), DrainMode::Immediate);
        });
        assert!(!trigger.drain(Duration::from_secs(1)).await);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_that_never_looks_does_not_hang_the_drain() {
        let (trigger, w) = new();
        let start = tokio::time::Instant::now();
        assert!(!trigger.drain(Duration::from_secs(2)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(2) + FORCED_GRACE);
        // Still held: the drain gave up on it rather than waiting.
        assert_eq!(w.mode(), DrainMode::Immediate);
    }
}
