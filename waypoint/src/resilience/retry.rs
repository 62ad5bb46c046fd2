//! Retry conditions and the retry decision, as a pure function of the policy and what one attempt produced.
//!
//! The conditions are Envoy's `retry_on` names (which Istio's VirtualService `retries.retryOn` passes through and
//! HTTPRoute's `retry.codes` maps to `retriable-status-codes`). What each one covers, following Envoy's router
//! documentation (`x-envoy-retry-on`, `x-envoy-retry-grpc-on`) and its retry state, where every stream reset —
//! connect failure and refused stream included — and every per-try timeout counts as "no response":
//!
//! | condition                | retries on                                                                     |
//! |--------------------------|--------------------------------------------------------------------------------|
//! | `5xx`                    | any 5xx response; no response at all (connect failure, refused stream, reset, per-try timeout) |
//! | `gateway-error`          | 502, 503, 504 responses; no response at all (as `5xx`: Envoy answers those itself with 503/504) |
//! | `reset`                  | no response at all (connect failure, refused stream, reset, per-try timeout)   |
//! | `reset-before-request`   | a connect failure, or a reset before the request was sent upstream             |
//! | `connect-failure`        | a failed connection                                                            |
//! | `refused-stream`         | an HTTP/2 `REFUSED_STREAM` reset                                               |
//! | `retriable-4xx`          | 409 responses                                                                  |
//! | `retriable-status-codes` | responses whose status is in the policy's `codes`                             |
//! | `cancelled` … `internal` | responses whose `grpc-status` is 1, 4, 8, 13 or 14 (headers or trailers-only) |
//!
//! The request method is not considered, as in Envoy: a policy that retries on `5xx` retries a POST. Only the
//! conditions that say the request never reached the application (`connect-failure`, `refused-stream`,
//! `reset-before-request`) are safe for every method, and Istio's default policy is built from those plus 503.
//! The retry budget ([`super::budget`]) and the body buffer ([`super::replay`]) are checked by the caller.

use std::fmt;

use ambit_proto::waypoint as proto;

use super::backoff::Backoff;

/// A set of retry conditions.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RetryOn(u16);

impl RetryOn {
    pub const NONE: RetryOn = RetryOn(0);
    pub const SERVER_ERROR: RetryOn = RetryOn(1 << 0);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    pub const RESET: RetryOn = RetryOn(1 << 2);
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 3);
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 4);
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 5);
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 6);
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 7);
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 8);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 9);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 10);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 11);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 12);

    /// Each condition with its Envoy name, in the order they are printed.
    const NAMES: [(RetryOn, &'static str); 13] = [
        (RetryOn::SERVER_ERROR, "5xx"),
        (RetryOn::GATEWAY_ERROR, "gateway-error"),
        (RetryOn::RESET, "reset"),
        (RetryOn::RESET_BEFORE_REQUEST, "reset-before-request"),
        (RetryOn::CONNECT_FAILURE, "connect-failure"),
        (RetryOn::REFUSED_STREAM, "refused-stream"),
        (RetryOn::RETRIABLE_4XX, "retriable-4xx"),
        (RetryOn::RETRIABLE_STATUS_CODES, "retriable-status-codes"),
        (RetryOn::GRPC_CANCELLED, "cancelled"),
        (RetryOn::GRPC_DEADLINE_EXCEEDED, "deadline-exceeded"),
        (RetryOn::GRPC_RESOURCE_EXHAUSTED, "resource-exhausted"),
        (RetryOn::GRPC_UNAVAILABLE, "unavailable"),
        (RetryOn::GRPC_INTERNAL, "internal"),
    ];

    pub const fn union(self, other: RetryOn) -> RetryOn {
        RetryOn(self.0 | other.0)
    }

    /// Whether any condition of `other` is in `self`.
    pub const fn intersects(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// One condition by its Envoy name.
    pub fn from_name(name: &str) -> Option<RetryOn> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(c, _)| *c)
    }

    /// Conditions from a list of names; an element may itself be a comma-separated list (Istio's `retryOn` is
    /// one string). Blanks around names and empty elements are ignored; an unknown name is an error.
    pub fn parse(names: &[String]) -> Result<RetryOn, String> {
        let (on, codes) = Self::parse_with_codes(names)?;
        match codes.first() {
            Some(code) => Err(format!(
                "unknown retry condition {code:?} (status codes belong in `codes`)"
            )),
            None => Ok(on),
        }
    }

    /// As [`RetryOn::parse`], but also accepts bare status codes (Istio's `retryOn: "connect-failure,503"`), which
    /// are returned separately and turn on `retriable-status-codes`.
    pub fn parse_with_codes(names: &[String]) -> Result<(RetryOn, Vec<u16>), String> {
        let mut on = RetryOn::NONE;
        let mut codes = Vec::new();
        for name in names.iter().flat_map(|s| s.split(',')).map(str::trim) {
            if name.is_empty() {
                continue;
            }
            if let Some(c) = Self::from_name(name) {
                on = on.union(c);
            } else if name.bytes().all(|b| b.is_ascii_digit()) {
                let code = name
                    .parse::<u32>()
                    .map_err(|_| format!("status code {name} is outside 200..=599"))?;
                codes.push(status_code(code)?);
                on = on.union(RetryOn::RETRIABLE_STATUS_CODES);
            } else {
                return Err(format!(
                    "unknown retry condition {name:?} (known: {})",
                    Self::NAMES.map(|(_, n)| n).join(", ")
                ));
            }
        }
        Ok((on, codes))
    }
}

impl fmt::Debug for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RetryOn({self})")
    }
}

/// The Envoy names, comma-separated.
impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (c, n) in Self::NAMES {
            if self.intersects(c) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(n)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl serde::Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A status code a policy may name: 200..=599 (informational codes are never a final answer).
fn status_code(code: u32) -> Result<u16, String> {
    match u16::try_from(code) {
        Ok(c) if (200..=599).contains(&c) => Ok(c),
        _ => Err(format!("status code {code} is outside 200..=599")),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub on: RetryOn,
    /// For `retriable-status-codes`.
    pub codes: Vec<u16>,
    pub backoff: Backoff,
}

impl RetryPolicy {
    /// Istio's default for routes that set none: 2 retries on
    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with code 503.
    pub fn istio_default() -> Self {
        RetryPolicy {
            attempts: 2,
            on: RetryOn::CONNECT_FAILURE
                .union(RetryOn::REFUSED_STREAM)
                .union(RetryOn::GRPC_UNAVAILABLE)
                .union(RetryOn::GRPC_CANCELLED)
                .union(RetryOn::RETRIABLE_STATUS_CODES),
            codes: vec![503],
            backoff: Backoff::default(),
        }
    }

    /// Never retry.
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 0,
            on: RetryOn::NONE,
            codes: Vec::new(),
            backoff: Backoff::default(),
        }
    }

    /// From the proto. `retry_on` may hold bare status codes (added to `codes`); an empty `retry_on` with `codes`
    /// means `retriable-status-codes` (HTTPRoute `retry.codes`). `retriable-status-codes` without codes is an error.
    pub fn from_proto(p: &proto::RetryPolicy) -> Result<Self, String> {
        let (mut on, mut codes) = RetryOn::parse_with_codes(&p.retry_on)?;
        for c in &p.codes {
            codes.push(status_code(*c)?);
        }
        codes.sort_unstable();
        codes.dedup();
        if on.is_empty() && !codes.is_empty() {
            on = RetryOn::RETRIABLE_STATUS_CODES;
        }
        if on.intersects(RetryOn::RETRIABLE_STATUS_CODES) && codes.is_empty() {
            return Err("retry condition retriable-status-codes needs at least one code".into());
        }
        Ok(RetryPolicy {
            attempts: p.attempts,
            on,
            codes,
            backoff: Backoff::from_millis(p.backoff_base_ms, p.backoff_max_ms)?,
        })
    }
}

/// What one attempt produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No connection to the endpoint could be made.
    ConnectFailed,
    /// The HTTP/2 stream was reset with `REFUSED_STREAM`: the server did not process it.
    RefusedStream,
    /// The connection or stream was reset (or closed) before a response arrived.
    Reset { request_sent: bool },
    /// No response within the per-try timeout.
    PerTryTimeout,
    /// A response arrived. `grpc_status` is the `grpc-status` of its headers (a trailers-only response).
    Response {
        status: u16,
        grpc_status: Option<u32>,
    },
}

/// What to do after one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try again (after the backoff, subject to the budget).
    Retry,
    /// The outcome is final: a success, or a failure the policy does not retry.
    Done,
    /// The policy would retry but the request body cannot be replayed (too large or still streaming).
    NotReplayable,
    /// The policy would retry but every retry has been used.
    Exhausted,
}

/// Whether `outcome` meets one of the policy's conditions.
pub fn retriable(policy: &RetryPolicy, outcome: &Outcome) -> bool {
    let on = policy.on;
    match *outcome {
        Outcome::ConnectFailed => on.intersects(
            RetryOn::SERVER_ERROR
                .union(RetryOn::GATEWAY_ERROR)
                .union(RetryOn::RESET)
                .union(RetryOn::RESET_BEFORE_REQUEST)
                .union(RetryOn::CONNECT_FAILURE),
        ),
        Outcome::RefusedStream => on.intersects(
            RetryOn::SERVER_ERROR
                .union(RetryOn::GATEWAY_ERROR)
                .union(RetryOn::RESET)
                .union(RetryOn::REFUSED_STREAM),
        ),
        Outcome::Reset { request_sent } => {
            on.intersects(
                RetryOn::SERVER_ERROR
                    .union(RetryOn::GATEWAY_ERROR)
                    .union(RetryOn::RESET),
            ) || (!request_sent && on.intersects(RetryOn::RESET_BEFORE_REQUEST))
        }
        Outcome::PerTryTimeout => on.intersects(
            RetryOn::SERVER_ERROR
                .union(RetryOn::GATEWAY_ERROR)
                .union(RetryOn::RESET),
        ),
        Outcome::Response {
            status,
            grpc_status,
        } => {
            (on.intersects(RetryOn::SERVER_ERROR) && (500..=599).contains(&status))
                || (on.intersects(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
                || (on.intersects(RetryOn::RETRIABLE_4XX) && status == 409)
                || (on.intersects(RetryOn::RETRIABLE_STATUS_CODES)
                    && policy.codes.contains(&status))
                || grpc_status.is_some_and(|g| on.intersects(grpc_condition(g)))
        }
    }
}

/// The condition a gRPC status code answers to.
fn grpc_condition(code: u32) -> RetryOn {
    match code {
        1 => RetryOn::GRPC_CANCELLED,
        4 => RetryOn::GRPC_DEADLINE_EXCEEDED,
        8 => RetryOn::GRPC_RESOURCE_EXHAUSTED,
        13 => RetryOn::GRPC_INTERNAL,
        14 => RetryOn::GRPC_UNAVAILABLE,
        _ => RetryOn::NONE,
    }
}

/// The decision after an attempt, given `retries_done` retries so far (0 after the first attempt) and whether the
/// request body can be sent again.
pub fn decide(
    policy: &RetryPolicy,
    outcome: &Outcome,
    retries_done: u32,
    replayable: bool,
) -> Decision {
    if policy.attempts == 0 || !retriable(policy, outcome) {
        Decision::Done
    } else if retries_done >= policy.attempts {
        Decision::Exhausted
    } else if !replayable {
        Decision::NotReplayable
    } else {
        Decision::Retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn policy(on: &str, codes: &[u16]) -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            on: RetryOn::parse(&strings(&[on])).unwrap(),
            codes: codes.to_vec(),
            backoff: Backoff::default(),
        }
    }

    fn resp(status: u16) -> Outcome {
        Outcome::Response {
            status,
            grpc_status: None,
        }
    }

    fn grpc(code: u32) -> Outcome {
        Outcome::Response {
            status: 200,
            grpc_status: Some(code),
        }
    }

    const SENT: Outcome = Outcome::Reset { request_sent: true };
    const UNSENT: Outcome = Outcome::Reset {
        request_sent: false,
    };

    #[test]
    fn parse_names_lists_and_errors() {
        let on = RetryOn::parse(&strings(&["5xx", " reset ,connect-failure", ""])).unwrap();
        assert_eq!(on.to_string(), "5xx,reset,connect-failure");
        assert_eq!(RetryOn::parse(&[]).unwrap(), RetryOn::NONE);
        let all = RetryOn::NAMES.map(|(_, n)| n).join(",");
        assert_eq!(
            RetryOn::parse(std::slice::from_ref(&all))
                .unwrap()
                .to_string(),
            all
        );
        let err = RetryOn::parse(&strings(&["5xx,bogus"])).unwrap_err();
        assert!(err.contains("\"bogus\""), "{err}");
        let err = RetryOn::parse(&strings(&["503"])).unwrap_err();
        assert!(err.contains("codes"), "{err}");
        let (on, codes) = RetryOn::parse_with_codes(&strings(&["connect-failure,503"])).unwrap();
        assert_eq!(on.to_string(), "connect-failure,retriable-status-codes");
        assert_eq!(codes, vec![503]);
        let err = RetryOn::parse_with_codes(&strings(&["99"])).unwrap_err();
        assert!(err.contains("200..=599"), "{err}");
    }

    /// Every condition against every kind of outcome.
    #[test]
    fn every_condition() {
        let outcomes: [(&str, Outcome); 13] = [
            ("connect", Outcome::ConnectFailed),
            ("refused", Outcome::RefusedStream),
            ("reset-sent", SENT),
            ("reset-unsent", UNSENT),
            ("per-try", Outcome::PerTryTimeout),
            ("200", resp(200)),
            ("409", resp(409)),
            ("429", resp(429)),
            ("500", resp(500)),
            ("502", resp(502)),
            ("503", resp(503)),
            ("504", resp(504)),
            ("grpc14", grpc(14)),
        ];
        #[rustfmt::skip]
        let table: &[(&str, &[u16], &[&str])] = &[
            ("5xx", &[], &["connect", "refused", "reset-sent", "reset-unsent", "per-try", "500", "502", "503", "504"]),
            ("gateway-error", &[], &["connect", "refused", "reset-sent", "reset-unsent", "per-try", "502", "503", "504"]),
            ("reset", &[], &["connect", "refused", "reset-sent", "reset-unsent", "per-try"]),
            ("reset-before-request", &[], &["connect", "reset-unsent"]),
            ("connect-failure", &[], &["connect"]),
            ("refused-stream", &[], &["refused"]),
            ("retriable-4xx", &[], &["409"]),
            ("retriable-status-codes", &[429, 503], &["429", "503"]),
            ("unavailable", &[], &["grpc14"]),
            ("", &[], &[]),
        ];
        for (on, codes, want) in table {
            let p = policy(on, codes);
            for (name, o) in &outcomes {
                let got = decide(&p, o, 0, true);
                let expect = if want.contains(name) {
                    Decision::Retry
                } else {
                    Decision::Done
                };
                assert_eq!(got, expect, "retry_on {on:?} outcome {name}");
            }
        }
    }

    #[test]
    fn grpc_conditions() {
        let table = [
            ("cancelled", 1),
            ("deadline-exceeded", 4),
            ("resource-exhausted", 8),
            ("internal", 13),
            ("unavailable", 14),
        ];
        for (on, code) in table {
            let p = policy(on, &[]);
            for other in 0..=16 {
                let want = if other == code {
                    Decision::Retry
                } else {
                    Decision::Done
                };
                assert_eq!(decide(&p, &grpc(other), 0, true), want, "{on} vs {other}");
            }
            // Conditions on gRPC status ignore the HTTP status and responses without one.
            assert_eq!(decide(&p, &resp(503), 0, true), Decision::Done, "{on}");
        }
        // HTTP conditions still see the HTTP status of a gRPC response.
        let p = policy("5xx", &[]);
        let o = Outcome::Response {
            status: 503,
            grpc_status: Some(0),
        };
        assert_eq!(decide(&p, &o, 0, true), Decision::Retry);
    }

    #[test]
    fn attempts_replay_and_order() {
        let p = policy("5xx", &[]);
        let o = resp(503);
        assert_eq!(decide(&p, &o, 0, true), Decision::Retry);
        assert_eq!(decide(&p, &o, 1, true), Decision::Retry);
        assert_eq!(decide(&p, &o, 2, true), Decision::Exhausted);
        assert_eq!(decide(&p, &o, 0, false), Decision::NotReplayable);
        // Used up wins over not replayable; a final outcome is Done whatever else holds.
        assert_eq!(decide(&p, &o, 2, false), Decision::Exhausted);
        assert_eq!(decide(&p, &resp(200), 5, false), Decision::Done);
        let mut zero = p.clone();
        zero.attempts = 0;
        assert_eq!(decide(&zero, &o, 0, true), Decision::Done);
        assert_eq!(
            decide(&RetryPolicy::none(), &Outcome::ConnectFailed, 0, true),
            Decision::Done
        );
    }

    #[test]
    fn istio_default_policy() {
        let p = RetryPolicy::istio_default();
        assert_eq!(p.attempts, 2);
        assert_eq!(
            p.on.to_string(),
            "connect-failure,refused-stream,retriable-status-codes,cancelled,unavailable"
        );
        let table = [
            (Outcome::ConnectFailed, Decision::Retry),
            (Outcome::RefusedStream, Decision::Retry),
            (resp(503), Decision::Retry),
            (grpc(14), Decision::Retry),
            (grpc(1), Decision::Retry),
            (resp(500), Decision::Done),
            (resp(502), Decision::Done),
            (SENT, Decision::Done),
            (UNSENT, Decision::Done),
            (Outcome::PerTryTimeout, Decision::Done),
            (grpc(4), Decision::Done),
        ];
        for (o, want) in table {
            assert_eq!(decide(&p, &o, 0, true), want, "{o:?}");
        }
    }

    #[test]
    fn from_proto_conversions() {
        let p = RetryPolicy::from_proto(&proto::RetryPolicy {
            attempts: 3,
            retry_on: strings(&[
                "gateway-error,connect-failure,refused-stream,reset-before-request",
            ]),
            codes: vec![],
            backoff_base_ms: 0,
            backoff_max_ms: 0,
        })
        .unwrap();
        assert_eq!(p.attempts, 3);
        assert_eq!(
            p.on.to_string(),
            "gateway-error,reset-before-request,connect-failure,refused-stream"
        );
        assert_eq!(p.backoff, Backoff::default());

        // HTTPRoute: codes alone mean retriable-status-codes; Istio: bare codes in retry_on join `codes`.
        let p = RetryPolicy::from_proto(&proto::RetryPolicy {
            attempts: 2,
            codes: vec![503, 500, 503],
            backoff_base_ms: 100,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.on, RetryOn::RETRIABLE_STATUS_CODES);
        assert_eq!(p.codes, vec![500, 503]);
        assert_eq!(p.backoff.max, std::time::Duration::from_millis(1000));
        let p = RetryPolicy::from_proto(&proto::RetryPolicy {
            attempts: 1,
            retry_on: strings(&["reset", "502"]),
            codes: vec![504],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.codes, vec![502, 504]);

        let bad: [(proto::RetryPolicy, &str); 4] = [
            (
                proto::RetryPolicy {
                    retry_on: strings(&["5xx,nope"]),
                    ..Default::default()
                },
                "\"nope\"",
            ),
            (
                proto::RetryPolicy {
                    codes: vec![700],
                    ..Default::default()
                },
                "700 is outside",
            ),
            (
                proto::RetryPolicy {
                    retry_on: strings(&["retriable-status-codes"]),
                    ..Default::default()
                },
                "at least one code",
            ),
            (
                proto::RetryPolicy {
                    retry_on: strings(&["5xx"]),
                    backoff_base_ms: 100,
                    backoff_max_ms: 10,
                    ..Default::default()
                },
                "below the base",
            ),
        ];
        for (p, want) in bad {
            let err = RetryPolicy::from_proto(&p).unwrap_err();
            assert!(err.contains(want), "{p:?}: {err}");
        }
    }
}
