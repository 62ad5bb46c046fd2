//! The data-plane worker threads, and which of them runs a new connection.
//!
//! Every worker is a current-thread runtime with its own listeners (`SO_REUSEPORT`) and its own HBONE pool, so a
//! connection lives on one thread. The kernel spreads new connections over the listeners by a hash of their
//! addresses, which at light load wakes every worker for a share of the traffic: each then sleeps and wakes for
//! its few connections, and on a small node those wake-ups cost more than the proxying itself (measured in
//! docs/PERFORMANCE.md). So the workers are filled in order instead: a connection goes to the first worker whose
//! thread used less than `AMBIT_WORKER_SPILL_PERCENT` (70 %) of a CPU over the last sample, and only when every
//! worker is past that to the least busy one. A connection accepted on another worker is handed over once, before
//! any byte is read, and then stays where it is; at light load everything runs on worker 0, under heavy load new
//! connections spread.
//!
//! Each worker measures its own thread's CPU time every [`SAMPLE_EVERY`] (ten wake-ups a second per worker, not
//! per connection).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ambit_core::drain::DrainWatcher;
use nix::time::{ClockId, clock_gettime};
use tokio::runtime::Handle;

/// How often each worker measures its thread's CPU use.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The data-plane runtimes and how busy each one's thread is.
pub struct Workers {
    handles: Vec<Handle>,
    /// Smoothed CPU use of each worker's thread, per mille of one CPU.
    load: Vec<AtomicU32>,
    /// A worker at least this busy (per mille) takes no new connections while another is below it; `None`: every
    /// connection stays where it was accepted.
    spill_at: Option<u32>,
}

impl Workers {
    /// `spill_percent`: see [`Workers::pick`]; `None` turns the choice off.
    pub fn new(handles: Vec<Handle>, spill_percent: Option<u32>) -> Arc<Workers> {
        let load = handles.iter().map(|_| AtomicU32::new(0)).collect();
        Arc::new(Workers {
            handles,
            load,
            spill_at: spill_percent.map(|p| p.min(100) * 10),
        })
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    pub fn handle(&self, i: usize) -> &Handle {
        &self.handles[i]
    }

    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// The last measured CPU use of worker `i`'s thread, per mille.
    pub fn load(&self, i: usize) -> u32 {
        self.load[i].load(Ordering::Relaxed)
    }

    /// Sets worker `i`'s measured load (tests).
    #[doc(hidden)]
    pub fn set_load(&self, i: usize, per_mille: u32) {
        self.load[i].store(per_mille, Ordering::Relaxed);
    }

    /// The worker that should run a connection just accepted on worker `on`: the first one not busier than the
    /// spill threshold (so 100 % never spills: a thread cannot be busier than one CPU), else the least busy (`on` itself on a tie, which saves the hand-over). With the choice off, `on`.
    pub fn pick(&self, on: usize) -> usize {
        if self.handles.len() < 2 {
            return on;
        }
        let Some(spill_at) = self.spill_at else {
            return on;
        };
        let n = self.handles.len();
        if let Some(first) = (0..n).find(|&i| self.load(i) <= spill_at) {
            return first;
        }
        // Everyone is past the threshold: the least busy, preferring the accepting worker on a tie.
        (0..n)
            .min_by_key(|&i| (self.load(i), i != on))
            .unwrap_or(on)
    }

    /// Starts one sampler per worker (only with more than one: a single worker never hands anything over). Each
    /// ends when `drain` is signalled.
    pub fn start_sampling(self: &Arc<Self>, drain: &DrainWatcher) {
        if self.handles.len() < 2 || self.spill_at.is_none() {
            return;
        }
        for (i, h) in self.handles.iter().enumerate() {
            let this = self.clone();
            let mut drain = drain.clone();
            h.spawn(async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last = (Instant::now(), thread_cpu());
                loop {
                    tokio::select! {
                        _ = drain.signaled() => return,
                        _ = tick.tick() => {}
                    }
                    let now = (Instant::now(), thread_cpu());
                    let wall = now.0.duration_since(last.0).as_nanos();
                    if let (Some(cpu1), Some(cpu0)) = (now.1, last.1)
                        && wall > 0
                    {
                        let used = cpu1.saturating_sub(cpu0).as_nanos();
                        let sample = u32::try_from(used.saturating_mul(1000) / wall)
                            .unwrap_or(u32::MAX)
                            .min(1000);
                        // Half the old value, half the new: one busy or idle sample moves it only halfway.
                        let old = this.load[i].load(Ordering::Relaxed);
                        this.load[i].store((old + sample) / 2, Ordering::Relaxed);
                    }
                    last = now;
                }
            });
        }
    }
}

/// CPU time used by the calling thread so far.
fn thread_cpu() -> Option<Duration> {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` workers (all on one runtime: `pick` only looks at the loads).
    fn workers(n: usize) -> Arc<Workers> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        Workers::new((0..n).map(|_| rt.handle().clone()).collect(), Some(70))
    }

    #[test]
    fn fills_workers_in_order() {
        let w = workers(3);
        // Idle: everything on worker 0, wherever it was accepted.
        assert_eq!((w.pick(0), w.pick(1), w.pick(2)), (0, 0, 0));
        // At the threshold: still worker 0. Past it: the next one takes new connections.
        w.set_load(0, 700);
        assert_eq!(w.pick(1), 0);
        w.set_load(0, 710);
        assert_eq!((w.pick(0), w.pick(2)), (1, 1));
        w.set_load(1, 900);
        assert_eq!(w.pick(1), 2);
        // Everyone busy: the least busy, and the accepting worker itself on a tie.
        w.set_load(2, 800);
        assert_eq!((w.pick(0), w.pick(1)), (0, 0));
        w.set_load(0, 950);
        assert_eq!(w.pick(1), 2);
        w.set_load(1, 800);
        assert_eq!((w.pick(1), w.pick(2), w.pick(0)), (1, 2, 1));
    }

    #[test]
    fn a_threshold_of_100_percent_never_spills() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let w = Workers::new(vec![rt.handle().clone(), rt.handle().clone()], Some(100));
        // A saturated worker (samples are capped at one CPU) keeps taking connections.
        w.set_load(0, 1000);
        assert_eq!((w.pick(0), w.pick(1)), (0, 0));
    }

    #[test]
    fn off_keeps_every_connection_where_it_was_accepted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let w = Workers::new(vec![rt.handle().clone(), rt.handle().clone()], None);
        w.set_load(0, 1000);
        assert_eq!((w.pick(0), w.pick(1)), (0, 1));
        w.set_load(0, 0);
        assert_eq!(w.pick(1), 1);
    }

    #[test]
    fn one_worker_keeps_everything() {
        let w = workers(1);
        w.set_load(0, 1000);
        assert_eq!(w.pick(0), 0);
    }

    #[test]
    fn sampling_measures_a_busy_thread() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let busy = rt.handle().clone();
        let idle_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let idle = idle_rt.handle().clone();
        let t_busy = std::thread::spawn(move || {
            rt.block_on(async {
                // Spin (yielding to the sampler) for a while.
                let end = Instant::now() + Duration::from_millis(800);
                while Instant::now() < end {
                    tokio::task::yield_now().await;
                }
            })
        });
        let t_idle = std::thread::spawn(move || {
            idle_rt.block_on(async { tokio::time::sleep(Duration::from_millis(800)).await })
        });
        let w = Workers::new(vec![busy, idle], Some(70));
        let (trigger, drain) = ambit_core::drain::new();
        w.start_sampling(&drain);
        drop(drain);
        t_busy.join().unwrap();
        t_idle.join().unwrap();
        // The machine may be busy with other tests: only the order and a lower bound are certain.
        assert!(w.load(0) >= 100, "busy worker measured at {}‰", w.load(0));
        assert!(
            w.load(1) < w.load(0) / 2,
            "idle worker measured at {}‰, busy at {}‰",
            w.load(1),
            w.load(0)
        );
        drop(trigger);
    }
}
