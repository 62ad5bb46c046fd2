//! Exponential backoff with full jitter between retries.
//!
//! The n-th retry (1-based) waits a uniformly random time in `[0, min(max, base × 2^(n-1))]`: "full jitter", so
//! that clients that failed together do not retry together. The defaults are Envoy's (base 25 ms, max 10 × base =
//! 250 ms), which are also what Linkerd's policy controller sends (min 25 ms, max 250 ms, jitter 1.0).

use std::time::Duration;

use rand::Rng;

/// Envoy's default `base_interval`.
pub const DEFAULT_BASE: Duration = Duration::from_millis(25);
/// The default `max_interval` is this many times the base (Envoy's rule).
const DEFAULT_MAX_FACTOR: u32 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: DEFAULT_BASE,
            max: DEFAULT_BASE * DEFAULT_MAX_FACTOR,
        }
    }
}

impl Backoff {
    /// From the proto's `backoff_base_ms` / `backoff_max_ms`: 0 base means 25 ms, 0 max means 10 × base. A max
    /// below the base is an error (Envoy rejects it too).
    pub fn from_millis(base_ms: u64, max_ms: u64) -> Result<Self, String> {
        let base = if base_ms == 0 {
            DEFAULT_BASE
        } else {
            Duration::from_millis(base_ms)
        };
        let max = if max_ms == 0 {
            base.saturating_mul(DEFAULT_MAX_FACTOR)
        } else {
            Duration::from_millis(max_ms)
        };
        if max < base {
            return Err(format!(
                "backoff max {max_ms} ms is below the base {} ms",
                base.as_millis()
            ));
        }
        Ok(Backoff { base, max })
    }

    /// The upper bound of the wait before retry number `retry_no` (1 = the first retry; 0 is treated as 1).
    pub fn ceiling(&self, retry_no: u32) -> Duration {
        let exp = retry_no.saturating_sub(1).min(63);
        let factor = 1u64 << exp;
        let nanos = u64::try_from(self.base.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_mul(factor);
        Duration::from_nanos(nanos).min(self.max)
    }

    /// A random wait in `[0, ceiling(retry_no)]`.
    pub fn delay(&self, retry_no: u32, rng: &mut impl Rng) -> Duration {
        let cap = u64::try_from(self.ceiling(retry_no).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=cap))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_from_proto_zeroes() {
        assert_eq!(Backoff::from_millis(0, 0), Ok(Backoff::default()));
        assert_eq!(Backoff::default().max, ms(250));
        assert_eq!(
            Backoff::from_millis(100, 0),
            Ok(Backoff {
                base: ms(100),
                max: ms(1000)
            })
        );
        assert_eq!(
            Backoff::from_millis(10, 15),
            Ok(Backoff {
                base: ms(10),
                max: ms(15)
            })
        );
        let err = Backoff::from_millis(100, 50).unwrap_err();
        assert!(err.contains("below the base"), "{err}");
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::default();
        let table = [
            (0, 25),
            (1, 25),
            (2, 50),
            (3, 100),
            (4, 200),
            (5, 250),
            (6, 250),
            (64, 250),
            (u32::MAX, 250),
        ];
        for (n, want) in table {
            assert_eq!(b.ceiling(n), ms(want), "retry {n}");
        }
    }

    #[test]
    fn delay_within_bounds_and_jittered() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        for n in 1..=6 {
            let cap = b.ceiling(n);
            let draws: Vec<Duration> = (0..2000).map(|_| b.delay(n, &mut rng)).collect();
            assert!(draws.iter().all(|d| *d <= cap), "retry {n} above {cap:?}");
            // Full jitter: draws spread over the whole range, not bunched at the cap.
            let below_half = draws.iter().filter(|d| **d < cap / 2).count();
            assert!(
                (800..=1200).contains(&below_half),
                "retry {n}: {below_half} of 2000 below half the cap"
            );
            let mean = draws.iter().sum::<Duration>() / 2000;
            assert!(
                mean > cap * 4 / 10 && mean < cap * 6 / 10,
                "retry {n}: mean {mean:?}"
            );
        }
    }

    #[test]
    fn zero_base_never_waits() {
        let b = Backoff {
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(b.delay(3, &mut rng), Duration::ZERO);
    }
}
