//! HTTPRoute `rules[].retry` (GEP-1731: `attempts`, `codes`, `backoff`) → `Route.retry`.
//!
//! - **Conditions.** GEP-1731 says an implementation SHOULD retry, once a `retry` stanza is present, when no
//!   connection could be made or the backend refused the request before processing it (HTTP/2 `REFUSED_STREAM`,
//!   gRPC `UNAVAILABLE`), and SHOULD NOT retry by default when the request may have been processed (a reset after
//!   it was sent). So the policy is `connect-failure`, `refused-stream` and `unavailable`, plus
//!   `retriable-status-codes` with `codes` when there are codes.
//! - **`attempts` absent**: GEP-1731 leaves the count to the implementation ("including none"). Ambit uses 2,
//!   Istio's default count, so that adding `retry: {codes: [...]}` to a rule does not change how often it is
//!   retried on connection failures. `attempts: 0` turns retries off, as the GEP requires (and as a rule without
//!   `retry` cannot: it gets the waypoint's default policy).
//! - **`backoff`** is the base interval of the waypoint's jittered exponential backoff (`backoff_base_ms`; the cap
//!   is the waypoint's default, 10 × base). Unset, or `0s`: the waypoint's 25 ms.
//! - **Validation.** `attempts` must be 0 or more, each code 400-599 (the CRD's bounds), `backoff` a Gateway API
//!   duration. Anything else makes the rule invalid: its messages (`rules[0].retry.codes[1]: 700 is not an HTTP
//!   status between 400 and 599`) go to the route's status and the rule is dropped (see [`super`]). Duplicate
//!   codes (the CRD's `listType=set` refuses them) are merged.

use ambit_proto::waypoint::RetryPolicy;

use super::super::istio_hosts::Messages;
use crate::sources::routes::{HttpRouteRetry, parse_duration};

/// Retries when `attempts` is not set.
pub const DEFAULT_ATTEMPTS: u32 = 2;

/// Conditions every HTTPRoute retry policy retries on (besides its codes).
pub const CONNECTION_ERRORS: [&str; 3] = ["connect-failure", "refused-stream", "unavailable"];

/// The rule's retry policy (`None` without a `retry` stanza), or the validation errors of the stanza at `field`
/// (`rules[0].retry`).
pub fn retry(field: &str, r: Option<&HttpRouteRetry>) -> Result<Option<RetryPolicy>, Vec<String>> {
    let Some(r) = r else { return Ok(None) };
    let mut m = Messages::default();
    let attempts = match r.attempts {
        None => DEFAULT_ATTEMPTS,
        Some(a) if a < 0 => {
            m.error(&format!("{field}.attempts"), format!("{a} is negative"));
            0
        }
        Some(a) => u32::try_from(a).unwrap_or_else(|_| {
            m.error(&format!("{field}.attempts"), format!("{a} is too large"));
            0
        }),
    };
    let mut codes = Vec::new();
    for (k, &c) in r.codes.iter().enumerate() {
        match u32::try_from(c) {
            Ok(code) if (400..=599).contains(&code) => {
                if !codes.contains(&code) {
                    codes.push(code);
                }
            }
            _ => m.error(
                &format!("{field}.codes[{k}]"),
                format!("{c} is not an HTTP status between 400 and 599"),
            ),
        }
    }
    let backoff_base_ms = match r.backoff.as_deref() {
        None => 0,
        Some(s) => parse_duration(s).unwrap_or_else(|| {
            m.error(
                &format!("{field}.backoff"),
                format!("{s:?} is not a Gateway API duration (like 100ms, 1s, 1m30s)"),
            );
            0
        }),
    };
    if !m.errors.is_empty() {
        return Err(m.errors);
    }
    if attempts == 0 {
        return Ok(Some(RetryPolicy::default()));
    }
    let mut retry_on: Vec<String> = CONNECTION_ERRORS.iter().map(|s| (*s).to_owned()).collect();
    if !codes.is_empty() {
        retry_on.push("retriable-status-codes".to_owned());
    }
    Ok(Some(RetryPolicy {
        attempts,
        retry_on,
        codes,
        backoff_base_ms,
        backoff_max_ms: 0,
    }))
}
