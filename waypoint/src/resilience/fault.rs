//! Fault injection (VirtualService `fault`, and HTTPRoute through Ambit's FaultInjection extension filter), as a
//! pure decision per request.
//!
//! Envoy's semantics: the delay and the abort are drawn independently, each with its own percentage (absent means
//! 100 %). A delayed request waits before any upstream request is made; an aborted one is answered by the waypoint
//! (after the delay, if both are drawn) and never reaches the upstream. Access logs flag them `DI` and `FI`.

use std::time::Duration;

use ambit_proto::waypoint as proto;
use rand::Rng;

/// A delay, injected into `percent` % of requests.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Delay {
    pub fixed: Duration,
    pub percent: f64,
}

/// The answer an abort gives instead of the upstream's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Abort {
    /// The HTTP status; gRPC requests get it too unless `grpc_status` is set.
    pub http_status: u16,
    /// For gRPC requests: a trailers-only response with this `grpc-status`.
    pub grpc_status: Option<u32>,
}

/// An abort, injected into `percent` % of requests.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct AbortFault {
    pub abort: Abort,
    pub percent: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Fault {
    pub delay: Option<Delay>,
    pub abort: Option<AbortFault>,
}

/// What to do to one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultDecision {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

/// The largest gRPC status code (`UNAUTHENTICATED`).
const MAX_GRPC_STATUS: u32 = 16;

fn percent(p: Option<f64>, what: &str) -> Result<f64, String> {
    match p {
        None => Ok(100.0),
        Some(p) if (0.0..=100.0).contains(&p) => Ok(p),
        Some(p) => Err(format!("fault {what} percent {p} is outside 0..=100")),
    }
}

impl Fault {
    pub fn from_proto(p: &proto::FaultInjection) -> Result<Self, String> {
        let delay = match &p.delay {
            None => None,
            Some(d) if d.fixed_delay_ms == 0 => {
                return Err("fault delay needs a fixed delay above 0 ms".into());
            }
            Some(d) => Some(Delay {
                fixed: Duration::from_millis(d.fixed_delay_ms),
                percent: percent(d.percent, "delay")?,
            }),
        };
        let abort = match &p.abort {
            None => None,
            Some(a) => {
                let http_status = u16::try_from(a.http_status)
                    .ok()
                    .filter(|s| (200..=599).contains(s))
                    .ok_or_else(|| {
                        format!(
                            "fault abort http status {} is outside 200..=599",
                            a.http_status
                        )
                    })?;
                if let Some(g) = a.grpc_status
                    && g > MAX_GRPC_STATUS
                {
                    return Err(format!(
                        "fault abort grpc status {g} is outside 0..={MAX_GRPC_STATUS}"
                    ));
                }
                Some(AbortFault {
                    abort: Abort {
                        http_status,
                        grpc_status: a.grpc_status,
                    },
                    percent: percent(a.percent, "abort")?,
                })
            }
        };
        Ok(Fault { delay, abort })
    }

    pub fn is_empty(&self) -> bool {
        self.delay.is_none() && self.abort.is_none()
    }

    /// Draws the delay and the abort for one request, independently.
    pub fn decide(&self, rng: &mut impl Rng) -> FaultDecision {
        FaultDecision {
            delay: self
                .delay
                .filter(|d| drawn(d.percent, rng))
                .map(|d| d.fixed),
            abort: self
                .abort
                .filter(|a| drawn(a.percent, rng))
                .map(|a| a.abort),
        }
    }
}

/// True in `percent` % of draws: always at 100, never at 0 (a draw is in `[0, 100)`).
fn drawn(percent: f64, rng: &mut impl Rng) -> bool {
    rng.random::<f64>() * 100.0 < percent
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn fault(delay_pct: Option<f64>, abort_pct: Option<f64>) -> Fault {
        Fault::from_proto(&proto::FaultInjection {
            delay: Some(proto::FaultDelay {
                fixed_delay_ms: 7000,
                percent: delay_pct,
            }),
            abort: Some(proto::FaultAbort {
                http_status: 418,
                grpc_status: None,
                percent: abort_pct,
            }),
        })
        .unwrap()
    }

    #[test]
    fn from_proto_defaults_and_errors() {
        let f = fault(None, Some(12.5));
        assert_eq!(
            f.delay,
            Some(Delay {
                fixed: Duration::from_secs(7),
                percent: 100.0
            })
        );
        assert_eq!(f.abort.map(|a| a.percent), Some(12.5));
        assert!(
            Fault::from_proto(&proto::FaultInjection::default())
                .unwrap()
                .is_empty()
        );

        let delay = |ms, pct| proto::FaultInjection {
            delay: Some(proto::FaultDelay {
                fixed_delay_ms: ms,
                percent: pct,
            }),
            abort: None,
        };
        let abort = |status, grpc, pct| proto::FaultInjection {
            delay: None,
            abort: Some(proto::FaultAbort {
                http_status: status,
                grpc_status: grpc,
                percent: pct,
            }),
        };
        let bad = [
            (delay(0, None), "above 0 ms"),
            (delay(10, Some(100.5)), "delay percent 100.5"),
            (delay(10, Some(-1.0)), "delay percent -1"),
            (delay(10, Some(f64::NAN)), "delay percent NaN"),
            (abort(0, None, None), "http status 0"),
            (abort(199, None, None), "http status 199"),
            (abort(600, None, None), "http status 600"),
            (abort(70000, None, None), "http status 70000"),
            (abort(503, Some(17), None), "grpc status 17"),
            (abort(503, None, Some(101.0)), "abort percent 101"),
        ];
        for (p, want) in bad {
            let err = Fault::from_proto(&p).unwrap_err();
            assert!(err.contains(want), "{p:?}: {err}");
        }
        let f = Fault::from_proto(&abort(200, Some(14), Some(0.0))).unwrap();
        assert_eq!(
            f.abort.map(|a| a.abort),
            Some(Abort {
                http_status: 200,
                grpc_status: Some(14)
            })
        );
    }

    #[test]
    fn always_and_never() {
        let mut rng = StdRng::seed_from_u64(1);
        let all = fault(None, Some(100.0));
        let none = fault(Some(0.0), Some(0.0));
        for _ in 0..10_000 {
            let d = all.decide(&mut rng);
            assert_eq!(d.delay, Some(Duration::from_secs(7)));
            assert_eq!(d.abort.map(|a| a.http_status), Some(418));
            assert_eq!(none.decide(&mut rng), FaultDecision::default());
        }
        assert_eq!(Fault::default().decide(&mut rng), FaultDecision::default());
    }

    /// Over N = 10 000 seeded draws each fault lands within ±2 percentage points of its percentage (about 4.5
    /// standard deviations at 50 %), and the two are independent: both happen in about delay% × abort% of draws.
    #[test]
    fn percentages_over_many_draws() {
        const N: u32 = 10_000;
        let table = [(50.0, 50.0), (10.0, 90.0), (1.0, 25.0), (33.3, 66.6)];
        for (seed, (dp, ap)) in table.into_iter().enumerate() {
            let f = fault(Some(dp), Some(ap));
            let mut rng = StdRng::seed_from_u64(seed as u64);
            let (mut delays, mut aborts, mut both) = (0u32, 0u32, 0u32);
            for _ in 0..N {
                let d = f.decide(&mut rng);
                delays += u32::from(d.delay.is_some());
                aborts += u32::from(d.abort.is_some());
                both += u32::from(d.delay.is_some() && d.abort.is_some());
            }
            let pct = |n: u32| f64::from(n) * 100.0 / f64::from(N);
            assert!(
                (pct(delays) - dp).abs() <= 2.0,
                "delay {dp}%: {}",
                pct(delays)
            );
            assert!(
                (pct(aborts) - ap).abs() <= 2.0,
                "abort {ap}%: {}",
                pct(aborts)
            );
            let joint = dp * ap / 100.0;
            assert!(
                (pct(both) - joint).abs() <= 2.0,
                "both {joint}%: {}",
                pct(both)
            );
        }
    }
}
