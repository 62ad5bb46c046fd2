//! Outlier detection (DestinationRule `trafficPolicy.outlierDetection`): passive health checking that takes an
//! endpoint out of load balancing after consecutive errors, for longer each time it is taken out.
//!
//! Semantics follow Envoy's (which Istio configures), with the sweep done lazily instead of on a timer:
//!
//! - Two detectors: `consecutive5xxErrors` counts any 5xx (a connect failure or reset counts as 503, a timeout as
//!   504, as Envoy maps local-origin errors when it does not split them); `consecutiveGatewayErrors` counts 502,
//!   503 and 504 only, and any other response ends its streak. 0 turns a detector off.
//! - When a streak reaches its threshold the endpoint is ejected, unless that would eject more than
//!   `maxEjectionPercent` of the endpoints; one endpoint may always be ejected when none is (Envoy's architecture
//!   docs: "if no hosts have been ejected, Envoy will eject the host immediately").
//! - The ejection lasts `baseEjectionTime × multiplier`, capped at Envoy's `max_ejection_time` (300 s, or the base
//!   time when that is longer). The multiplier grows by one per ejection and shrinks by one for each `interval` the
//!   endpoint spends back in service (Envoy decrements it at each sweep that finds the host not ejected); here it
//!   is computed from the time since the ejection ended, so nothing runs between requests.
//! - An endpoint is back as soon as its ejection time is over (Envoy waits for the next sweep, up to one interval
//!   later), with its streaks reset.
//! - `minHealthPercent` (Envoy's panic threshold as Istio sets it): when fewer endpoints than that share are
//!   usable, the balancer ignores ejections and spreads over all of them ([`ignore_ejections`]).
//!
//! [`EndpointHealth`] is per endpoint, lock-free, and lives across config snapshots like the request counters.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use ambit_proto::waypoint as pb;
use tokio::time::Instant;

/// Istio's default `interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Istio's default `baseEjectionTime`.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Istio's default `maxEjectionPercent`.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// Envoy's default `max_ejection_time` (Istio does not set it).
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);

/// How one attempt to an endpoint ended, as outlier detection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this HTTP status (for gRPC, see [`Outcome::grpc`]).
    Status(u16),
    /// The connection (or the HBONE tunnel) to the endpoint could not be set up: counts as 503.
    ConnectFailure,
    /// The endpoint did not answer in time: counts as 504.
    Timeout,
    /// The endpoint reset the stream or closed the connection: counts as 503.
    Reset,
}

impl Outcome {
    /// A gRPC response's `grpc-status`, mapped to HTTP as Envoy does for outlier detection (so `UNAVAILABLE` is a
    /// 503 and `OK` a 200).
    pub fn grpc(code: u32) -> Outcome {
        Outcome::Status(match code {
            0 => 200,
            1 => 499,
            3 | 9 | 11 => 400,
            4 => 504,
            5 => 404,
            6 | 10 => 409,
            7 => 403,
            8 => 429,
            12 => 501,
            14 => 503,
            16 => 401,
            _ => 500, // UNKNOWN, INTERNAL, DATA_LOSS and codes from the future
        })
    }

    /// The HTTP status it counts as.
    pub fn status(self) -> u16 {
        match self {
            Outcome::Status(s) => s,
            Outcome::ConnectFailure | Outcome::Reset => 503,
            Outcome::Timeout => 504,
        }
    }
}

/// One backend's outlier detection settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    /// 0: off.
    pub consecutive_5xx: u32,
    /// 0: off.
    pub consecutive_gateway: u32,
    /// How long back in service takes one off the ejection multiplier.
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// 0-100.
    pub max_ejection_percent: u32,
    /// 0-100; 0: ejections always apply.
    pub min_health_percent: u32,
}

impl OutlierDetection {
    /// From the proto; 0 durations and percentages take Istio's defaults. (The controller fills Istio's default of
    /// 5 for `consecutive5xxErrors`; 0 here means that detector is off.)
    pub fn from_proto(p: &pb::OutlierDetection) -> Result<Self, String> {
        if p.max_ejection_percent > 100 {
            return Err(format!(
                "outlier detection: max_ejection_percent {} is over 100",
                p.max_ejection_percent
            ));
        }
        if p.min_health_percent > 100 {
            return Err(format!(
                "outlier detection: min_health_percent {} is over 100",
                p.min_health_percent
            ));
        }
        let ms = |v: u64, default: Duration| {
            if v == 0 {
                default
            } else {
                Duration::from_millis(v)
            }
        };
        Ok(OutlierDetection {
            consecutive_5xx: p.consecutive_5xx_errors,
            consecutive_gateway: p.consecutive_gateway_errors,
            interval: ms(p.interval_ms, DEFAULT_INTERVAL),
            base_ejection: ms(p.base_ejection_time_ms, DEFAULT_BASE_EJECTION),
            max_ejection: DEFAULT_MAX_EJECTION,
            max_ejection_percent: if p.max_ejection_percent == 0 {
                DEFAULT_MAX_EJECTION_PERCENT
            } else {
                p.max_ejection_percent
            },
            min_health_percent: p.min_health_percent,
        })
    }

    /// Whether any detector is on (when none is, the caller can skip [`OutlierDetection::record`]).
    pub fn enabled(&self) -> bool {
        self.consecutive_5xx > 0 || self.consecutive_gateway > 0
    }

    /// Records one attempt's outcome at endpoint `health` and ejects it when a streak reaches its threshold.
    /// Returns whether this call ejected it (for a log line and a counter).
    ///
    /// `ejected`: how many of the backend's `total` endpoints are ejected now; called only when a threshold is
    /// reached, so the common path does not count. Two endpoints crossing their thresholds at the same instant on
    /// two threads may both be ejected past the limit by one; that is accepted rather than taking a lock.
    pub fn record(
        &self,
        health: &EndpointHealth,
        outcome: Outcome,
        now: Instant,
        ejected: impl FnOnce() -> usize,
        total: usize,
    ) -> bool {
        if !self.enabled() || health.is_ejected(now) {
            // Answers from requests sent before the ejection do not count toward the next one.
            return false;
        }
        let status = outcome.status();
        if !(500..600).contains(&status) {
            health.reset_streaks();
            return false;
        }
        let errors = health
            .consecutive_5xx
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        let gateway = if matches!(status, 502..=504) {
            health
                .consecutive_gateway
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1)
        } else {
            reset(&health.consecutive_gateway);
            0
        };
        let tripped = (self.consecutive_5xx > 0 && errors >= self.consecutive_5xx)
            || (self.consecutive_gateway > 0 && gateway >= self.consecutive_gateway);
        tripped && self.eject(health, now, ejected, total)
    }

    fn eject(
        &self,
        health: &EndpointHealth,
        now: Instant,
        ejected: impl FnOnce() -> usize,
        total: usize,
    ) -> bool {
        let at = health.offset(now);
        let previous = health.ejected_until.load(Ordering::Acquire);
        if previous != 0 && at < previous {
            return false;
        }
        if !self.may_eject(ejected(), total) {
            return false;
        }
        let multiplier = self.multiplier_at(health, previous, at).saturating_add(1);
        let until = at
            .saturating_add(nanos(self.ejection_time(multiplier)))
            .max(1);
        if health
            .ejected_until
            .compare_exchange(previous, until, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another worker ejected it first.
            return false;
        }
        health.ejections.store(multiplier, Ordering::Release);
        health.reset_streaks();
        true
    }

    /// Whether one more endpoint may be ejected when `ejected` of `total` are: never past `maxEjectionPercent`,
    /// except that one may always be when none is.
    pub fn may_eject(&self, ejected: usize, total: usize) -> bool {
        ejected == 0
            || (ejected as u64 + 1) * 100 <= u64::from(self.max_ejection_percent) * total as u64
    }

    /// How long the `multiplier`-th ejection lasts: base × multiplier, at most `max(max_ejection, base)`.
    pub fn ejection_time(&self, multiplier: u32) -> Duration {
        let cap = self.max_ejection.max(self.base_ejection);
        self.base_ejection.saturating_mul(multiplier).min(cap)
    }

    /// The endpoint's ejection multiplier now: the stored one less one per whole `interval` since its last
    /// ejection ended (for `/debug` and the next ejection).
    pub fn multiplier(&self, health: &EndpointHealth, now: Instant) -> u32 {
        let until = health.ejected_until.load(Ordering::Acquire);
        self.multiplier_at(health, until, health.offset(now))
    }

    fn multiplier_at(&self, health: &EndpointHealth, until: u64, at: u64) -> u32 {
        let m = health.ejections.load(Ordering::Acquire);
        if m == 0 || until == 0 || at < until {
            return m;
        }
        let steps = (at - until) / nanos(self.interval).max(1);
        m.saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX))
    }

    /// [`ignore_ejections`] with this policy's `minHealthPercent`.
    pub fn ignore_ejections(&self, healthy: usize, total: usize) -> bool {
        ignore_ejections(healthy, total, self.min_health_percent)
    }
}

/// Whether the balancer should ignore ejections and spread over all endpoints: when fewer than
/// `min_health_percent` % of the `total` endpoints are `healthy` (usable and not ejected). Istio's
/// `minHealthPercent` ("outlier detection will be disabled and the proxy will load balance across all hosts");
/// 0 never ignores them.
pub fn ignore_ejections(healthy: usize, total: usize, min_health_percent: u32) -> bool {
    min_health_percent > 0
        && total > 0
        && (healthy as u64) * 100 < u64::from(min_health_percent) * total as u64
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Stores 0 unless it already is, so a success does not write to a cache line other workers read.
fn reset(a: &AtomicU32) {
    if a.load(Ordering::Relaxed) != 0 {
        a.store(0, Ordering::Relaxed);
    }
}

/// One endpoint's outlier state. Times are nanoseconds after `epoch` (the instant the state was created) so that
/// they fit an atomic.
#[derive(Debug)]
pub struct EndpointHealth {
    epoch: Instant,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// When the current or last ejection ends; 0: never ejected.
    ejected_until: AtomicU64,
    /// The multiplier of the last ejection.
    ejections: AtomicU32,
}

impl Default for EndpointHealth {
    fn default() -> Self {
        EndpointHealth {
            epoch: Instant::now(),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
        }
    }
}

impl EndpointHealth {
    /// Whether the endpoint is out of load balancing at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        until != 0 && self.offset(now) < until
    }

    /// When the current ejection ends, if the endpoint is ejected at `now`.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        let until = self.ejected_until.load(Ordering::Acquire);
        (until != 0 && self.offset(now) < until).then(|| self.epoch + Duration::from_nanos(until))
    }

    /// The current streaks (5xx, gateway errors), for `/debug`.
    pub fn streaks(&self) -> (u32, u32) {
        (
            self.consecutive_5xx.load(Ordering::Relaxed),
            self.consecutive_gateway.load(Ordering::Relaxed),
        )
    }

    fn reset_streaks(&self) {
        reset(&self.consecutive_5xx);
        reset(&self.consecutive_gateway);
    }

    fn offset(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn policy(c5xx: u32, gateway: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: c5xx,
            consecutive_gateway: gateway,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: DEFAULT_MAX_EJECTION,
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }

    /// Records `outcomes` in order; the index of each call that ejected.
    fn run(p: &OutlierDetection, h: &EndpointHealth, outcomes: &[Outcome]) -> Vec<usize> {
        let now = Instant::now();
        outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| p.record(h, **o, now, || 0, 10))
            .map(|(i, _)| i)
            .collect()
    }

    use Outcome::{ConnectFailure, Reset, Status, Timeout};

    #[tokio::test(start_paused = true)]
    async fn detectors() {
        let s500 = Status(500);
        let s503 = Status(503);
        let ok = Status(200);
        let cases: Vec<(OutlierDetection, Vec<Outcome>, Vec<usize>)> = vec![
            // Five 5xx in a row eject on the fifth.
            (policy(5, 0), vec![s500; 5], vec![4]),
            (policy(5, 0), vec![s500; 4], vec![]),
            // A success (or a 4xx) ends the streak.
            (
                policy(5, 0),
                vec![s500, s500, s500, s500, ok, s500, s500, s500, s500],
                vec![],
            ),
            (
                policy(3, 0),
                vec![s500, s500, Status(404), s500, s500, s500],
                vec![5],
            ),
            // Local-origin errors count as 5xx.
            (policy(3, 0), vec![ConnectFailure, Timeout, Reset], vec![2]),
            // Gateway errors: 502, 503, 504, connect failures; a 500 ends the gateway streak.
            (policy(0, 3), vec![Status(502), s503, Status(504)], vec![2]),
            (policy(0, 3), vec![s503, ConnectFailure, Timeout], vec![2]),
            (policy(0, 3), vec![s503, s503, s500, s503, s503], vec![]),
            // Both on: the 5xx detector still sees the 500.
            (policy(4, 3), vec![s503, s503, s500, s503], vec![3]),
            // Detectors off.
            (policy(0, 0), vec![s503; 20], vec![]),
            // Ejected: further errors do not count (the streak restarts after the ejection).
            (policy(2, 0), vec![s500, s500, s500, s500], vec![1]),
        ];
        for (p, outcomes, want) in cases {
            let h = EndpointHealth::default();
            assert_eq!(run(&p, &h, &outcomes), want, "{p:?} {outcomes:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_endpoint_comes_back_after_its_time() {
        let p = policy(1, 0);
        let h = EndpointHealth::default();
        let t0 = Instant::now();
        assert!(!h.is_ejected(t0));
        assert!(p.record(&h, Status(503), t0, || 0, 3));
        assert!(h.is_ejected(Instant::now()));
        assert_eq!(
            h.ejected_until(Instant::now()),
            Some(t0 + Duration::from_secs(30))
        );
        advance(Duration::from_millis(29_999)).await;
        assert!(h.is_ejected(Instant::now()));
        advance(Duration::from_millis(1)).await;
        assert!(!h.is_ejected(Instant::now()));
        assert_eq!(h.ejected_until(Instant::now()), None);
        assert_eq!(h.streaks(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_grows_then_decays() {
        let p = policy(1, 0);
        let h = EndpointHealth::default();
        // Fail again the moment it comes back: 30 s, 60 s, 90 s.
        for m in 1..=3u32 {
            assert!(p.record(&h, Status(500), Instant::now(), || 0, 3));
            assert_eq!(p.multiplier(&h, Instant::now()), m);
            let out = h.ejected_until(Instant::now()).map(|u| u - Instant::now());
            assert_eq!(out, Some(Duration::from_secs(30) * m));
            advance(Duration::from_secs(30) * m).await;
            assert!(!h.is_ejected(Instant::now()));
        }
        // Healthy for two intervals: the multiplier drops from 3 to 1, so the next ejection is 2 × 30 s.
        advance(Duration::from_secs(20)).await;
        assert_eq!(p.multiplier(&h, Instant::now()), 1);
        assert!(p.record(&h, Status(500), Instant::now(), || 0, 3));
        assert_eq!(
            h.ejected_until(Instant::now()).map(|u| u - Instant::now()),
            Some(Duration::from_secs(60))
        );
        // Long healthy: back to the base time.
        advance(Duration::from_secs(60 + 600)).await;
        assert_eq!(p.multiplier(&h, Instant::now()), 0);
        assert!(p.record(&h, Status(500), Instant::now(), || 0, 3));
        assert_eq!(
            h.ejected_until(Instant::now()).map(|u| u - Instant::now()),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn ejection_time_is_capped() {
        let mut p = policy(1, 0);
        let secs = |p: &OutlierDetection, m| p.ejection_time(m).as_secs();
        assert_eq!(
            (1..=12).map(|m| secs(&p, m)).collect::<Vec<_>>(),
            vec![30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
        );
        assert_eq!(secs(&p, u32::MAX), 300);
        // A base time longer than the cap is used as is.
        p.base_ejection = Duration::from_secs(600);
        assert_eq!((secs(&p, 1), secs(&p, 5)), (600, 600));
    }

    #[test]
    fn max_ejection_percent() {
        let cases = [
            // (max %, ejected, total, may eject)
            (10, 0, 10, true),
            (10, 1, 10, false),
            (20, 1, 10, true),
            (20, 2, 10, false),
            (50, 1, 3, false), // 2 of 3 would be 67 %
            (50, 1, 4, true),
            (10, 0, 1, true), // one may always be ejected
            (10, 0, 3, true),
            (100, 2, 3, true),
            (100, 3, 3, false),
        ];
        for (pct, ejected, total, want) in cases {
            let p = OutlierDetection {
                max_ejection_percent: pct,
                ..policy(1, 0)
            };
            assert_eq!(
                p.may_eject(ejected, total),
                want,
                "{pct}% {ejected}/{total}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn record_respects_max_ejection_percent() {
        let p = OutlierDetection {
            max_ejection_percent: 10,
            ..policy(1, 0)
        };
        let hosts: Vec<EndpointHealth> = (0..10).map(|_| EndpointHealth::default()).collect();
        let now = Instant::now();
        let ejected = || hosts.iter().filter(|h| h.is_ejected(now)).count();
        let results: Vec<bool> = hosts
            .iter()
            .map(|h| p.record(h, Status(500), now, ejected, hosts.len()))
            .collect();
        assert_eq!(results.iter().filter(|e| **e).count(), 1, "{results:?}");
        assert!(results[0]);
        // Once the first is back, another may go.
        advance(Duration::from_secs(30)).await;
        let now = Instant::now();
        let ejected = || hosts.iter().filter(|h| h.is_ejected(now)).count();
        assert!(p.record(&hosts[1], Status(500), now, ejected, 10));
    }

    #[test]
    fn ignore_ejections_below_min_health() {
        let cases = [
            (0, 10, 0, false),
            (9, 10, 90, false),
            (8, 10, 90, true),
            (0, 10, 1, true),
            (5, 10, 50, false),
            (0, 0, 50, false),
        ];
        for (healthy, total, pct, want) in cases {
            assert_eq!(
                ignore_ejections(healthy, total, pct),
                want,
                "{healthy}/{total} {pct}%"
            );
        }
    }

    #[test]
    fn grpc_status_mapping() {
        let cases = [
            (0, 200),
            (1, 499),
            (4, 504),
            (8, 429),
            (13, 500),
            (14, 503),
            (99, 500),
        ];
        for (code, http) in cases {
            assert_eq!(Outcome::grpc(code).status(), http, "{code}");
        }
    }

    #[test]
    fn from_proto() {
        let d = OutlierDetection::from_proto(&pb::OutlierDetection {
            consecutive_5xx_errors: 5,
            ..Default::default()
        });
        assert_eq!(
            d,
            Ok(OutlierDetection {
                consecutive_5xx: 5,
                consecutive_gateway: 0,
                interval: Duration::from_secs(10),
                base_ejection: Duration::from_secs(30),
                max_ejection: Duration::from_secs(300),
                max_ejection_percent: 10,
                min_health_percent: 0,
            })
        );
        let set = OutlierDetection::from_proto(&pb::OutlierDetection {
            consecutive_gateway_errors: 2,
            interval_ms: 1000,
            base_ejection_time_ms: 5000,
            max_ejection_percent: 100,
            min_health_percent: 50,
            ..Default::default()
        });
        assert_eq!(
            set.map(|d| (
                d.interval,
                d.base_ejection,
                d.max_ejection_percent,
                d.min_health_percent
            )),
            Ok((Duration::from_secs(1), Duration::from_secs(5), 100, 50))
        );
        let bad = [
            (
                pb::OutlierDetection {
                    max_ejection_percent: 101,
                    ..Default::default()
                },
                "outlier detection: max_ejection_percent 101 is over 100",
            ),
            (
                pb::OutlierDetection {
                    min_health_percent: 200,
                    ..Default::default()
                },
                "outlier detection: min_health_percent 200 is over 100",
            ),
        ];
        for (p, want) in bad {
            assert_eq!(OutlierDetection::from_proto(&p), Err(want.to_owned()));
        }
    }
}
