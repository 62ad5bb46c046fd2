//! Request timeouts: the route's limits, the client's `grpc-timeout`, and which deadline applies to what.
//!
//! `request` bounds the whole request, retries and backoff included (HTTPRoute `timeouts.request`, VirtualService
//! `timeout`); `backend_request` bounds one attempt (HTTPRoute `timeouts.backendRequest`, VirtualService
//! `retries.perTryTimeout`). A gRPC client's `grpc-timeout` shortens the overall deadline but never lengthens the
//! route's: Envoy as Istio configures it lets the header replace the route timeout (`grpc_timeout_header_max: 0`),
//! which lets a client hold a backend longer than its operator allowed; Ambit takes the smaller of the two.

use std::time::Duration;

use ambit_proto::waypoint as proto;

/// The route's timeouts; `None` is no limit (the proto's 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub backend_request: Option<Duration>,
}

impl Timeouts {
    /// From the proto. A per-attempt limit longer than the overall one is accepted (Gateway API says
    /// implementations may reject it; the overall limit simply wins, see [`deadlines`]).
    pub fn from_proto(p: &proto::Timeouts) -> Result<Self, String> {
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        Ok(Timeouts {
            request: ms(p.request_ms),
            backend_request: ms(p.backend_request_ms),
        })
    }

    /// The deadlines for one request that carried `grpc_timeout` (parsed by [`parse_grpc_timeout`]).
    pub fn deadlines(&self, grpc_timeout: Option<Duration>) -> Deadlines {
        deadlines(self.request, self.backend_request, grpc_timeout)
    }
}

/// The limits for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deadlines {
    /// For the whole request, retries included: expiry is 504 `UT` (gRPC `DEADLINE_EXCEEDED`).
    pub overall: Option<Duration>,
    /// For each attempt: expiry is a retriable [`super::retry::Outcome::PerTryTimeout`].
    pub per_try: Option<Duration>,
}

/// `overall` = the smaller of the route's request timeout and the client's `grpc-timeout`; `per_try` = the
/// route's backend request timeout, never longer than `overall`.
pub fn deadlines(
    request: Option<Duration>,
    backend_request: Option<Duration>,
    grpc_timeout: Option<Duration>,
) -> Deadlines {
    let overall = min_some(request, grpc_timeout);
    Deadlines {
        overall,
        per_try: backend_request.map(|b| overall.map_or(b, |o| b.min(o))),
    }
}

fn min_some(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The gRPC spec's `TimeoutValue` is at most 8 digits.
const MAX_GRPC_VALUE: u64 = 99_999_999;

/// Units from the finest, with their length in nanoseconds.
const GRPC_UNITS: [(char, u128); 6] = [
    ('n', 1),
    ('u', 1_000),
    ('m', 1_000_000),
    ('S', 1_000_000_000),
    ('M', 60 * 1_000_000_000),
    ('H', 3600 * 1_000_000_000),
];

/// Parses a `grpc-timeout` header value: 1 to 8 ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
/// Anything else is `None`, and the request goes on as if it had no header (what gRPC servers do).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let split = v.len().checked_sub(1)?;
    let (digits, unit) = (v.get(..split)?, v.get(split..)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // At most 8 digits, so no unit overflows.
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value in the finest unit that fits in 8 digits, rounding up so that the
/// upstream never sees a shorter deadline than the waypoint keeps. Beyond 99 999 999 hours it saturates.
pub fn format_grpc_timeout(d: Duration) -> String {
    let nanos = d.as_nanos();
    for (unit, len) in GRPC_UNITS {
        let value = nanos.div_ceil(len);
        if value <= u128::from(MAX_GRPC_VALUE) {
            return format!("{value}{unit}");
        }
    }
    format!("{MAX_GRPC_VALUE}H")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn parse_table() {
        let table: &[(&str, Option<Duration>)] = &[
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("3S", Some(Duration::from_secs(3))),
            ("250m", ms(250)),
            ("1500u", Some(Duration::from_micros(1500))),
            ("7n", Some(Duration::from_nanos(7))),
            ("0S", Some(Duration::ZERO)),
            ("00000010m", ms(10)),
            ("99999999H", Some(Duration::from_secs(99_999_999 * 3600))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("123456789S", None),
            ("", None),
            ("S", None),
            ("10", None),
            ("10s", None),
            ("10x", None),
            ("-1S", None),
            ("+1S", None),
            (" 1S", None),
            ("1 S", None),
            ("1.5S", None),
            ("1é", None),
            ("é", None),
        ];
        for (v, want) in table {
            assert_eq!(parse_grpc_timeout(v), *want, "{v:?}");
        }
    }

    #[test]
    fn format_table() {
        let table: &[(Duration, &str)] = &[
            (Duration::ZERO, "0n"),
            (Duration::from_nanos(99_999_999), "99999999n"),
            (Duration::from_millis(100), "100000u"),
            (Duration::from_secs(1), "1000000u"),
            (Duration::from_secs(100), "100000m"),
            (Duration::from_nanos(100_000_000_001), "100001m"),
            (Duration::from_secs(100_000), "100000S"),
            (Duration::from_secs(100_000_000), "1666667M"),
            (Duration::from_secs(99_999_999 * 3600), "99999999H"),
            (Duration::MAX, "99999999H"),
        ];
        for (d, want) in table {
            assert_eq!(format_grpc_timeout(*d), *want, "{d:?}");
        }
    }

    #[test]
    fn format_then_parse_never_shortens() {
        for nanos in [1, 999, 1_000_001, 123_456_789_123, 7_200_000_000_001] {
            let d = Duration::from_nanos(nanos);
            let back = parse_grpc_timeout(&format_grpc_timeout(d)).unwrap();
            assert!(back >= d, "{d:?} came back as {back:?}");
        }
    }

    #[test]
    fn deadline_table() {
        // (request, backend_request, grpc-timeout) -> (overall, per_try)
        #[allow(clippy::type_complexity)]
        let table: &[(
            (Option<Duration>, Option<Duration>, Option<Duration>),
            (Option<Duration>, Option<Duration>),
        )] = &[
            ((None, None, None), (None, None)),
            ((ms(1000), None, None), (ms(1000), None)),
            ((None, ms(200), None), (None, ms(200))),
            ((ms(1000), ms(200), None), (ms(1000), ms(200))),
            ((ms(1000), ms(2000), None), (ms(1000), ms(1000))),
            ((ms(1000), None, ms(300)), (ms(300), None)),
            ((ms(1000), None, ms(3000)), (ms(1000), None)),
            ((None, None, ms(300)), (ms(300), None)),
            ((None, ms(500), ms(300)), (ms(300), ms(300))),
            ((ms(1000), ms(200), ms(300)), (ms(300), ms(200))),
            ((ms(1000), ms(200), ms(0)), (ms(0), ms(0))),
        ];
        for ((r, b, g), (overall, per_try)) in table {
            let got = deadlines(*r, *b, *g);
            assert_eq!(
                got,
                Deadlines {
                    overall: *overall,
                    per_try: *per_try
                },
                "request {r:?} backend {b:?} grpc {g:?}"
            );
        }
    }

    #[test]
    fn timeouts_from_proto() {
        let t = Timeouts::from_proto(&proto::Timeouts {
            request_ms: 0,
            backend_request_ms: 250,
        })
        .unwrap();
        assert_eq!(
            t,
            Timeouts {
                request: None,
                backend_request: ms(250)
            }
        );
        assert_eq!(
            t.deadlines(ms(100)),
            Deadlines {
                overall: ms(100),
                per_try: ms(100)
            }
        );
        assert_eq!(
            Timeouts::from_proto(&proto::Timeouts::default()).unwrap(),
            Timeouts::default()
        );
    }
}
