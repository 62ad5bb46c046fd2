//! Circuit breaking (DestinationRule `trafficPolicy.connectionPool`): caps on what one backend may have open at
//! once, shared by all workers.
//!
//! As in Envoy, a limit is a counter checked when something starts: connections (`tcp.maxConnections`), requests
//! waiting for a connection (`http.http1MaxPendingRequests`), requests in flight (`http.http2MaxRequests`) and
//! retries in flight (`http.maxRetries`). Past a limit the acquire fails at once — the caller answers 503 with flag
//! `UO` (upstream overflow), or for a retry simply does not retry and returns the last answer, as Envoy does
//! (`upstream_rq_retry_overflow`). Nothing waits in a queue. Each acquire returns a guard that gives the slot back
//! when dropped, so an error path or a cancelled request cannot leak one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ambit_proto::waypoint as pb;

/// One backend's limits (`None`: unlimited, Istio's default of 2³²−1), plus the connection settings of
/// `connectionPool` that are not counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: Option<u32>,
    pub max_pending: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
    /// `http.maxRequestsPerConnection`: close an upstream connection after this many requests.
    pub max_requests_per_connection: Option<u32>,
    /// `http.idleTimeout`: close an idle upstream connection after this long (`None`: the waypoint's default).
    pub idle_timeout: Option<Duration>,
    /// `tcp.connectTimeout` (`None`: the waypoint's default).
    pub connect_timeout: Option<Duration>,
}

impl Limits {
    /// From the proto: 0 in any field means unlimited (or the default).
    pub fn from_proto(p: &pb::ConnectionPool) -> Result<Self, String> {
        let limit = |v: u32| (v != 0).then_some(v);
        let ms = |v: u64| (v != 0).then(|| Duration::from_millis(v));
        Ok(Limits {
            max_connections: limit(p.max_connections),
            max_pending: limit(p.http1_max_pending_requests),
            max_requests: limit(p.http2_max_requests),
            max_retries: limit(p.max_retries),
            max_requests_per_connection: limit(p.max_requests_per_connection),
            idle_timeout: ms(p.idle_timeout_ms),
            connect_timeout: ms(p.connect_timeout_ms),
        })
    }

    /// Whether no counter is limited (the caller may skip the counters).
    pub fn unlimited(&self) -> bool {
        self.max_connections.is_none()
            && self.max_pending.is_none()
            && self.max_requests.is_none()
            && self.max_retries.is_none()
    }
}

/// What is open at one backend now. One per backend, shared (`Arc`) by all workers; the counts keep going when a
/// new config snapshot keeps the backend, like the endpoint counters.
#[derive(Debug, Default)]
pub struct Counters {
    connections: AtomicU32,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// Which counter a guard holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Connection,
    Pending,
    Request,
    Retry,
}

/// A held slot; dropping it gives the slot back.
#[derive(Debug)]
#[must_use = "the slot is released when the guard drops"]
pub struct Guard {
    counters: Arc<Counters>,
    kind: Kind,
}

/// A request in flight (`http2MaxRequests`).
pub type RequestGuard = Guard;
/// A retry in flight (`maxRetries`).
pub type RetryGuard = Guard;
/// An open upstream connection (`maxConnections`).
pub type ConnectionGuard = Guard;
/// A request waiting for a connection (`http1MaxPendingRequests`).
pub type PendingGuard = Guard;

impl Counters {
    pub fn try_request(self: &Arc<Self>, limits: &Limits) -> Option<RequestGuard> {
        self.acquire(Kind::Request, limits.max_requests)
    }

    pub fn try_retry(self: &Arc<Self>, limits: &Limits) -> Option<RetryGuard> {
        self.acquire(Kind::Retry, limits.max_retries)
    }

    pub fn try_connection(self: &Arc<Self>, limits: &Limits) -> Option<ConnectionGuard> {
        self.acquire(Kind::Connection, limits.max_connections)
    }

    pub fn try_pending(self: &Arc<Self>, limits: &Limits) -> Option<PendingGuard> {
        self.acquire(Kind::Pending, limits.max_pending)
    }

    /// (connections, pending, requests, retries) open now, for metrics and `/debug`.
    pub fn open(&self) -> (u32, u32, u32, u32) {
        (
            self.connections.load(Ordering::Relaxed),
            self.pending.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        )
    }

    fn counter(&self, kind: Kind) -> &AtomicU32 {
        match kind {
            Kind::Connection => &self.connections,
            Kind::Pending => &self.pending,
            Kind::Request => &self.requests,
            Kind::Retry => &self.retries,
        }
    }

    /// Takes a slot unless `max` are taken. A compare-and-swap loop, so the count never passes `max` even for a
    /// moment (an add-then-check would let a racing reader see `max + 1`).
    fn acquire(self: &Arc<Self>, kind: Kind, max: Option<u32>) -> Option<Guard> {
        let max = max.unwrap_or(u32::MAX);
        self.counter(kind)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Guard {
            counters: self.clone(),
            kind,
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.counters
            .counter(self.kind)
            .fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn limits(n: u32) -> Limits {
        Limits {
            max_connections: Some(n),
            max_pending: Some(n),
            max_requests: Some(n),
            max_retries: Some(n),
            ..Default::default()
        }
    }

    type Acquire = fn(&Arc<Counters>, &Limits) -> Option<Guard>;

    fn kinds() -> [(&'static str, Acquire); 4] {
        [
            ("request", |c, l| c.try_request(l)),
            ("retry", |c, l| c.try_retry(l)),
            ("connection", |c, l| c.try_connection(l)),
            ("pending", |c, l| c.try_pending(l)),
        ]
    }

    #[test]
    fn overflow_fails_at_once_and_release_lets_the_next_in() {
        for (name, acquire) in kinds() {
            let c = Arc::new(Counters::default());
            let l = limits(3);
            let mut held: Vec<Guard> = (0..3).filter_map(|_| acquire(&c, &l)).collect();
            assert_eq!(held.len(), 3, "{name}");
            assert!(acquire(&c, &l).is_none(), "{name}: the 4th must fail");
            held.pop();
            let again = acquire(&c, &l);
            assert!(again.is_some(), "{name}: a released slot is reusable");
            assert!(acquire(&c, &l).is_none(), "{name}");
            drop(held);
            drop(again);
            let open = c.open();
            assert_eq!(open, (0, 0, 0, 0), "{name}");
        }
    }

    #[test]
    fn counters_are_independent_and_unlimited_by_default() {
        let c = Arc::new(Counters::default());
        let l = Limits {
            max_requests: Some(1),
            ..Default::default()
        };
        let _r = c.try_request(&l);
        assert!(c.try_request(&l).is_none());
        let retries: Vec<Guard> = (0..1000).filter_map(|_| c.try_retry(&l)).collect();
        assert_eq!(retries.len(), 1000);
        assert_eq!(c.open(), (0, 0, 1, 1000));
        assert!(Limits::default().unlimited());
        assert!(!l.unlimited());
    }

    #[test]
    fn zero_limit_admits_nothing_when_set() {
        // Only from code, not from the proto (where 0 means unlimited).
        let c = Arc::new(Counters::default());
        assert!(c.try_request(&limits(0)).is_none());
    }

    #[test]
    fn concurrent_acquires_never_pass_the_limit() {
        let c = Arc::new(Counters::default());
        let l = limits(5);
        let over = Arc::new(AtomicBool::new(false));
        let admitted = Arc::new(AtomicU32::new(0));
        let inside = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, l, over) = (c.clone(), l.clone(), over.clone());
                let (admitted, inside) = (admitted.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..5_000 {
                        if let Some(g) = c.try_request(&l) {
                            // Holders counted inside the guard's lifetime: never more than the limit.
                            if inside.fetch_add(1, Ordering::SeqCst) >= 5 {
                                over.store(true, Ordering::Relaxed);
                            }
                            admitted.fetch_add(1, Ordering::Relaxed);
                            std::thread::yield_now();
                            inside.fetch_sub(1, Ordering::SeqCst);
                            drop(g);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
        assert!(!over.load(Ordering::Relaxed));
        assert!(admitted.load(Ordering::Relaxed) > 0);
        assert_eq!(c.open(), (0, 0, 0, 0));
    }

    #[test]
    fn from_proto() {
        let l = Limits::from_proto(&pb::ConnectionPool {
            max_connections: 1,
            http1_max_pending_requests: 2,
            http2_max_requests: 3,
            max_requests_per_connection: 4,
            max_retries: 5,
            idle_timeout_ms: 6000,
            connect_timeout_ms: 0,
        });
        assert_eq!(
            l,
            Ok(Limits {
                max_connections: Some(1),
                max_pending: Some(2),
                max_requests: Some(3),
                max_retries: Some(5),
                max_requests_per_connection: Some(4),
                idle_timeout: Some(Duration::from_secs(6)),
                connect_timeout: None,
            })
        );
        assert_eq!(
            Limits::from_proto(&pb::ConnectionPool::default()),
            Ok(Limits::default())
        );
    }
}
