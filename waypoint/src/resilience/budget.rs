//! A retry budget: retries may add at most a fixed share of a backend's load, so that when a backend fails,
//! retries cannot multiply its load into an outage.
//!
//! Every original request deposits (retries do not); every retry withdraws. A retry is allowed while the retries
//! in the last `ttl` would be at most `min_per_sec × ttl + ratio × requests in the last ttl`: the floor lets a
//! quiet backend still get retries, the ratio bounds them under load. This is the model of tower's `TpsBudget`,
//! which Linkerd uses; the defaults are Linkerd's (ratio 0.2, 10 retries/s floor, 10 s window).
//!
//! The window slides in [`SLOTS`] steps: it covers the current slot and the `SLOTS - 1` before it, so between
//! 90 % and 100 % of `ttl`. One budget is shared by every worker thread serving the backend; the state is a few
//! counters behind a mutex held for a handful of additions, never across I/O.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// How many steps the window slides in.
pub const SLOTS: usize = 10;

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// `min_per_sec × ttl`, in retries.
    reserve: f64,
    ttl: Duration,
    slot: Duration,
    start: Instant,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// The slot `now` falls in, counted from `start`.
    current: u64,
    deposits: [u64; SLOTS],
    withdrawals: [u64; SLOTS],
}

impl Window {
    /// Moves the window to `slot`, forgetting the slots that fell out of it.
    fn advance(&mut self, slot: u64) {
        if slot <= self.current {
            return;
        }
        let steps = slot - self.current;
        if steps >= SLOTS as u64 {
            self.deposits = [0; SLOTS];
            self.withdrawals = [0; SLOTS];
        } else {
            for s in self.current + 1..=slot {
                let i = index(s);
                self.deposits[i] = 0;
                self.withdrawals[i] = 0;
            }
        }
        self.current = slot;
    }
}

fn index(slot: u64) -> usize {
    // The remainder is below SLOTS, so it always fits.
    usize::try_from(slot % SLOTS as u64).unwrap_or(0)
}

impl Default for RetryBudget {
    /// Ratio 0.2, at least 10 retries per second, over 10 s.
    fn default() -> Self {
        RetryBudget::with_start(0.2, 10, Duration::from_secs(10), Instant::now())
    }
}

impl RetryBudget {
    /// A budget of `ratio` retries per request (0..=1000), plus `min_per_sec` retries per second, over a window of
    /// `ttl` (1 s..=60 s, Linkerd's limits).
    pub fn new(ratio: f64, min_per_sec: u32, ttl: Duration) -> Result<Self, String> {
        if !(0.0..=1000.0).contains(&ratio) {
            return Err(format!("retry budget ratio {ratio} is outside 0..=1000"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
            return Err(format!("retry budget ttl {ttl:?} is outside 1s..=60s"));
        }
        Ok(RetryBudget::with_start(
            ratio,
            min_per_sec,
            ttl,
            Instant::now(),
        ))
    }

    fn with_start(ratio: f64, min_per_sec: u32, ttl: Duration, start: Instant) -> Self {
        RetryBudget {
            ratio,
            reserve: f64::from(min_per_sec) * ttl.as_secs_f64(),
            ttl,
            slot: ttl / SLOTS as u32,
            start,
            window: Mutex::new(Window::default()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Records one original request.
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Takes one retry from the budget if it has room; `false` means the retry must not be made.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    fn deposit_at(&self, now: Instant) {
        let (mut w, i) = self.window_at(now);
        w.deposits[i] = w.deposits[i].saturating_add(1);
    }

    fn try_withdraw_at(&self, now: Instant) -> bool {
        let (mut w, i) = self.window_at(now);
        // Counts stay far below 2^53, so the conversions are exact.
        let deposits = w.deposits.iter().sum::<u64>() as f64;
        let withdrawals = w.withdrawals.iter().sum::<u64>() as f64;
        if withdrawals + 1.0 <= self.reserve + self.ratio * deposits {
            w.withdrawals[i] = w.withdrawals[i].saturating_add(1);
            true
        } else {
            false
        }
    }

    /// The window moved to `now`, and the index of the slot `now` falls in.
    fn window_at(&self, now: Instant) -> (MutexGuard<'_, Window>, usize) {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let slot = u64::try_from(elapsed / self.slot.as_nanos().max(1)).unwrap_or(u64::MAX);
        // A poisoned lock only means another thread panicked between two additions: the counters are still usable.
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.advance(slot);
        let i = index(w.current);
        (w, i)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// How many retries are allowed at `at` before the first refusal (stops at `limit`).
    fn drain(b: &RetryBudget, at: Instant, limit: u32) -> u32 {
        let mut n = 0;
        while n < limit && b.try_withdraw_at(at) {
            n += 1;
        }
        n
    }

    #[test]
    fn ratio_of_requests() {
        let t0 = Instant::now();
        let b = RetryBudget::with_start(0.2, 0, secs(10), t0);
        assert!(!b.try_withdraw_at(t0), "no requests, no floor: no retries");
        for _ in 0..100 {
            b.deposit_at(t0);
        }
        assert_eq!(drain(&b, t0, 1000), 20);
        assert!(!b.try_withdraw_at(t0));
        // Five more requests buy one more retry.
        for _ in 0..5 {
            b.deposit_at(t0);
        }
        assert_eq!(drain(&b, t0, 1000), 1);
    }

    #[test]
    fn default_floor_plus_ratio() {
        let t0 = Instant::now();
        let b = RetryBudget::with_start(0.2, 10, secs(10), t0);
        assert_eq!(drain(&b, t0, 1000), 100, "10/s over 10 s with no requests");
        let b = RetryBudget::with_start(0.2, 10, secs(10), t0);
        for _ in 0..100 {
            b.deposit_at(t0);
        }
        assert_eq!(drain(&b, t0, 1000), 120);
    }

    #[test]
    fn window_slides() {
        let t0 = Instant::now();
        let b = RetryBudget::with_start(0.5, 0, secs(10), t0);
        for _ in 0..10 {
            b.deposit_at(t0);
        }
        assert_eq!(drain(&b, t0, 100), 5);
        // Still inside the window: the spent retries still count, and so do the old deposits.
        for _ in 0..4 {
            b.deposit_at(t0 + secs(5));
        }
        assert_eq!(drain(&b, t0 + secs(5), 100), 2);
        // At 10 s the first slot has fallen out: its 10 deposits and 5 retries are forgotten.
        assert_eq!(drain(&b, t0 + secs(10), 100), 0);
        for _ in 0..2 {
            b.deposit_at(t0 + secs(10));
        }
        assert_eq!(drain(&b, t0 + secs(10), 100), 1);
        // Long after, everything is forgotten.
        assert_eq!(drain(&b, t0 + secs(100), 100), 0);
        for _ in 0..20 {
            b.deposit_at(t0 + secs(100));
        }
        assert_eq!(drain(&b, t0 + secs(100), 100), 10);
    }

    #[test]
    fn new_validates() {
        assert!(RetryBudget::new(0.2, 10, secs(10)).is_ok());
        let table = [
            (-0.1, secs(10), "ratio"),
            (f64::NAN, secs(10), "ratio"),
            (1001.0, secs(10), "ratio"),
            (0.2, Duration::from_millis(500), "ttl"),
            (0.2, secs(61), "ttl"),
        ];
        for (ratio, ttl, want) in table {
            let err = RetryBudget::new(ratio, 1, ttl).unwrap_err();
            assert!(err.contains(want), "{ratio} {ttl:?}: {err}");
        }
    }

    /// The public methods read tokio's clock, so the request path's tests can move time.
    #[tokio::test(start_paused = true)]
    async fn follows_tokio_clock() {
        let b = RetryBudget::new(1.0, 0, secs(10)).unwrap();
        b.deposit();
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
        tokio::time::advance(secs(11)).await;
        assert!(!b.try_withdraw(), "the deposit has expired");
        b.deposit();
        assert!(b.try_withdraw());
    }

    #[test]
    fn shared_across_threads() {
        let t0 = Instant::now();
        let b = Arc::new(RetryBudget::with_start(0.2, 0, secs(10), t0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut allowed = 0;
                    for _ in 0..250 {
                        b.deposit_at(t0);
                        if b.try_withdraw_at(t0) {
                            allowed += 1;
                        }
                    }
                    allowed
                })
            })
            .collect();
        let allowed: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        // 1000 requests at 0.2: exactly 200 retries, however the threads interleave.
        assert_eq!(allowed, 200);
    }
}
