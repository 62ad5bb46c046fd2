//! The policy parts of a VirtualService rule: `retries` → RetryPolicy, `fault` → FaultInjection (gRPC status
//! names → numbers, and the HTTP status Envoy answers non-gRPC clients with), `corsPolicy` → CorsPolicy.

use ambit_proto::waypoint::{
    CorsPolicy, FaultAbort, FaultDelay, FaultInjection, MatchType, RetryPolicy,
    StringMatch as PbStringMatch,
};

use super::super::istio_hosts::Messages;
use super::convert::{duration, percent, string_match};
use crate::sources::istio::{VsCorsPolicy, VsFault, VsRetries};

/// Envoy's `retry_on` conditions the waypoint implements.
pub const RETRY_ON: [&str; 13] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
    "unavailable",
    "internal",
];

/// Istio's retry conditions when `retries` sets `attempts` but no `retryOn` (`DefaultRetryPolicy`).
pub const DEFAULT_RETRY_ON: [&str; 5] = [
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
    "retriable-status-codes",
];

/// gRPC status names (`google.rpc.Code`) with their numbers and the HTTP status Envoy maps each to.
const GRPC_CODES: [(&str, u32, u32); 17] = [
    ("OK", 0, 200),
    ("CANCELLED", 1, 499),
    ("UNKNOWN", 2, 500),
    ("INVALID_ARGUMENT", 3, 400),
    ("DEADLINE_EXCEEDED", 4, 504),
    ("NOT_FOUND", 5, 404),
    ("ALREADY_EXISTS", 6, 409),
    ("PERMISSION_DENIED", 7, 403),
    ("RESOURCE_EXHAUSTED", 8, 429),
    ("FAILED_PRECONDITION", 9, 400),
    ("ABORTED", 10, 409),
    ("OUT_OF_RANGE", 11, 400),
    ("UNIMPLEMENTED", 12, 501),
    ("INTERNAL", 13, 500),
    ("UNAVAILABLE", 14, 503),
    ("DATA_LOSS", 15, 500),
    ("UNAUTHENTICATED", 16, 401),
];

/// The retry policy and the per-try timeout. Absent: `(None, None)` (the waypoint's default, Istio's).
pub(super) fn retries(
    m: &mut Messages,
    f: &str,
    r: Option<&VsRetries>,
) -> (Option<RetryPolicy>, Option<u64>) {
    let Some(r) = r else { return (None, None) };
    m.unsupported(f, &r.unknown, &["retryRemoteLocalities"]);
    let attempts = r.attempts.unwrap_or(0);
    if !(0..=i64::from(u32::MAX)).contains(&attempts) {
        m.error(
            &format!("{f}.attempts"),
            format!("{attempts} is negative or too large"),
        );
    }
    let mut policy = RetryPolicy {
        attempts: u32::try_from(attempts).unwrap_or(0),
        ..Default::default()
    };
    match r.retry_on.as_deref() {
        None if policy.attempts > 0 => {
            policy.retry_on = DEFAULT_RETRY_ON.iter().map(|s| (*s).to_owned()).collect();
            policy.codes = vec![503];
        }
        None => {}
        Some(list) => {
            for cond in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                if let Ok(code) = cond.parse::<u32>() {
                    if !(100..=599).contains(&code) {
                        m.error(
                            &format!("{f}.retryOn"),
                            format!("status code {code} is not between 100 and 599"),
                        );
                    }
                    policy.codes.push(code);
                } else if RETRY_ON.contains(&cond) {
                    if !policy.retry_on.iter().any(|c| c == cond) {
                        policy.retry_on.push(cond.to_owned());
                    }
                } else {
                    m.error(
                        &format!("{f}.retryOn"),
                        format!("unknown condition {cond:?}"),
                    );
                }
            }
            if !policy.codes.is_empty()
                && !policy
                    .retry_on
                    .iter()
                    .any(|c| c == "retriable-status-codes")
            {
                policy.retry_on.push("retriable-status-codes".to_owned());
            }
        }
    }
    let per_try = duration(
        m,
        &format!("{f}.perTryTimeout"),
        r.per_try_timeout.as_deref(),
    );
    // Without retries there is no per-try timeout (Envoy keeps it in the retry policy).
    (Some(policy), per_try.filter(|_| attempts > 0))
}

fn grpc_status(m: &mut Messages, f: &str, v: &serde_yaml::Value) -> Option<(u32, u32)> {
    let found = match v {
        serde_yaml::Value::String(s) => GRPC_CODES.iter().find(|(n, _, _)| n == s),
        serde_yaml::Value::Number(n) => GRPC_CODES
            .iter()
            .find(|(_, c, _)| Some(u64::from(*c)) == n.as_u64()),
        _ => None,
    };
    match found {
        Some((_, code, http)) => Some((*code, *http)),
        None => {
            m.error(f, format!("unknown gRPC status {}", yaml_text(v)));
            None
        }
    }
}

fn yaml_text(v: &serde_yaml::Value) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

pub(in crate::compute) fn fault(m: &mut Messages, f: &str, x: &VsFault) -> FaultInjection {
    let delay = x.delay.as_ref().map(|d| {
        let fd = format!("{f}.delay");
        m.unsupported_strict(&fd, &d.unknown, &[]);
        let ms = match &d.fixed_delay {
            Some(s) => duration(m, &format!("{fd}.fixedDelay"), Some(s)).unwrap_or(0),
            None => {
                m.error(&format!("{fd}.fixedDelay"), "required");
                0
            }
        };
        FaultDelay {
            fixed_delay_ms: ms,
            percent: percent(m, &format!("{fd}.percentage"), d.percentage.as_ref()),
        }
    });
    let abort = x.abort.as_ref().map(|a| {
        let fa = format!("{f}.abort");
        m.unsupported_strict(&fa, &a.unknown, &[]);
        let mut out = FaultAbort {
            percent: percent(m, &format!("{fa}.percentage"), a.percentage.as_ref()),
            ..Default::default()
        };
        match (&a.http_status, &a.grpc_status) {
            (Some(_), Some(_)) => m.error(&fa, "httpStatus and grpcStatus are mutually exclusive"),
            (None, None) => m.error(&fa, "one of httpStatus, grpcStatus is required"),
            (Some(s), None) => {
                if !(200..=599).contains(s) {
                    m.error(
                        &format!("{fa}.httpStatus"),
                        format!("{s} is not between 200 and 599"),
                    );
                }
                out.http_status = u32::try_from(*s).unwrap_or(0);
            }
            (None, Some(g)) => {
                if let Some((code, http)) = grpc_status(m, &format!("{fa}.grpcStatus"), g) {
                    out.grpc_status = Some(code);
                    out.http_status = http;
                }
            }
        }
        out
    });
    if delay.is_none() && abort.is_none() {
        m.error(f, "one of delay, abort is required");
    }
    FaultInjection { delay, abort }
}

pub(super) fn cors(m: &mut Messages, f: &str, c: &VsCorsPolicy) -> CorsPolicy {
    m.unsupported_strict(f, &c.unknown, &["allowOrigin"]);
    let mut origins: Vec<PbStringMatch> = c
        .allow_origins
        .iter()
        .enumerate()
        .filter_map(|(k, s)| {
            let (t, value) = string_match(m, &format!("{f}.allowOrigins[{k}]"), s, false)?;
            Some(PbStringMatch {
                r#type: t as i32,
                value,
            })
        })
        .collect();
    // The deprecated `allowOrigin: [exact, ...]`.
    if let Some(serde_yaml::Value::Sequence(list)) = c.unknown.get("allowOrigin") {
        origins.extend(
            list.iter()
                .filter_map(|v| v.as_str())
                .map(|s| PbStringMatch {
                    r#type: if s == "*" {
                        MatchType::RegularExpression
                    } else {
                        MatchType::Exact
                    } as i32,
                    value: if s == "*" {
                        ".*".to_owned()
                    } else {
                        s.to_owned()
                    },
                }),
        );
    }
    let max_age_s =
        duration(m, &format!("{f}.maxAge"), c.max_age.as_deref()).map_or(0, |ms| ms / 1000);
    let ignore = match c.unmatched_preflights.as_deref() {
        None | Some("UNSPECIFIED" | "FORWARD") => false,
        Some("IGNORE") => true,
        Some(other) => {
            m.error(
                &format!("{f}.unmatchedPreflights"),
                format!("unknown value {other:?} (FORWARD or IGNORE)"),
            );
            false
        }
    };
    CorsPolicy {
        allow_origins: origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age_s,
        allow_credentials: c.allow_credentials,
        ignore_unmatched_preflights: ignore,
    }
}
