//! Ambit's `RateLimitPolicy` (`ambit.dev/v1alpha1`) → `ambit.waypoint.RateLimitPolicy` (`<ns>/<name>`): local
//! token buckets at the waypoint. Buckets live in each waypoint replica (two replicas allow twice the rate); a
//! limited request gets 429 with `retry-after`.
//!
//! ```yaml
//! apiVersion: ambit.dev/v1alpha1
//! kind: RateLimitPolicy
//! metadata: {name: reviews-limit, namespace: default}
//! spec:
//!   targetRefs:                       # required, at least one; same namespace as the policy
//!   - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}   # every request of a waypoint
//!   - {group: "", kind: Service, name: reviews, sectionName: http}       # a Service (sectionName: a port name)
//!   - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: reviews, sectionName: writes}
//!                                     # a route (GRPCRoute too); sectionName: the rule with that `name`,
//!                                     # omitted: every rule of the route
//!   limits:                           # required, at least one; each is its own bucket set
//!   - key:                            # default {type: None}
//!       type: ClientIdentity          # None (one bucket) | ClientIdentity (SPIFFE id) | SourceIP | Header | Path
//!       header: x-user                # required with type Header (requests without it share one bucket)
//!     requests: 100                   # required, >= 1: tokens added per interval
//!     interval: 1m                    # Gateway API duration (1h, 1m, 10s, 500ms); default 1s
//!     burst: 150                      # bucket size; default (or 0) = requests
//!     matches:                        # optional, HTTPRoute matches (ORed); only matching requests count
//!     - {path: {type: PathPrefix, value: /api}, method: POST, headers: [{name: x-tier, value: free}]}
//! ```
//!
//! Targets resolve as in [`super::targets::rate_limit_target`]; status is `WaypointAccepted` with the same
//! reasons as AuthorizationPolicy. An invalid limit is dropped (`PartiallyInvalid`, with the field path:
//! `limits[0].requests: must be at least 1`, `limits[0].interval: "1 minute" is not a duration`,
//! `limits[0].key.type: unknown type "User" (None, ClientIdentity, SourceIP, Header or Path)`,
//! `limits[0].key.header: required with type Header`, `limits[0].matches[1].path.value: invalid regular
//! expression`); a policy with no valid limit or no resolvable target is not sent. Unknown fields are reported as
//! ignored.

use ambit_proto::waypoint::{self as pb, MatchType, rate_limit::Key};

use super::super::routes::http_route_match;
use super::authz::Converted;
use super::targets::{TargetOutcome, rate_limit_target};
use super::{Ctx, waypoint_condition};
use crate::sources::RateLimitPolicy;
use crate::sources::ambit::RateLimitSpec;
use crate::sources::routes::{HttpRouteMatch, parse_duration};

/// The default `interval`.
pub const DEFAULT_INTERVAL_MS: u64 = 1_000;

pub fn convert(
    ctx: &Ctx<'_>,
    ns: &str,
    name: &str,
    rl: &RateLimitPolicy,
) -> Converted<pb::RateLimitPolicy> {
    let spec = &rl.spec;
    let outcomes: Vec<TargetOutcome> = spec
        .target_refs
        .iter()
        .enumerate()
        .map(|(i, t)| rate_limit_target(ctx, ns, &format!("targetRefs[{i}]"), t))
        .collect();
    let targets: Vec<pb::PolicyTarget> = outcomes.iter().flat_map(|o| o.targets.clone()).collect();
    let mut problems: Vec<String> = spec
        .unknown
        .keys()
        .map(|k| format!("spec.{k}: unknown field, ignored"))
        .collect();
    let mut limits = Vec::new();
    for (i, l) in spec.limits.iter().enumerate() {
        let path = format!("limits[{i}]");
        match limit(l, &path, &mut problems) {
            Ok(l) => limits.push(l),
            Err(errors) => {
                problems.extend(errors);
                problems.push(format!("{path}: dropped"));
            }
        }
    }
    if spec.limits.is_empty() {
        problems.push("limits: at least one limit is required".to_owned());
    }
    let mut condition = waypoint_condition(&outcomes, &problems);
    if limits.is_empty()
        && let Some(o) = condition.as_object_mut()
    {
        o.insert("status".into(), "False".into());
        o.insert("reason".into(), super::reason::INVALID.into());
    }
    let policy = (!targets.is_empty() && !limits.is_empty()).then(|| pb::RateLimitPolicy {
        name: format!("{ns}/{name}"),
        namespace: ns.to_owned(),
        targets,
        limits,
    });
    Converted { policy, condition }
}

fn key(l: &RateLimitSpec, path: &str, errors: &mut Vec<String>) -> (Key, String) {
    let Some(k) = &l.key else {
        return (Key::None, String::new());
    };
    let kind = match k.kind.as_deref().unwrap_or("None") {
        "None" => Key::None,
        "ClientIdentity" => Key::ClientIdentity,
        "SourceIP" => Key::SourceIp,
        "Header" => Key::Header,
        "Path" => Key::Path,
        other => {
            errors.push(format!(
                "{path}.key.type: unknown type {other:?} (None, ClientIdentity, SourceIP, Header or Path)"
            ));
            Key::None
        }
    };
    let header = k.header.clone().unwrap_or_default();
    match (kind, header.is_empty()) {
        (Key::Header, true) => errors.push(format!("{path}.key.header: required with type Header")),
        (Key::Header, false) if http::HeaderName::from_bytes(header.as_bytes()).is_err() => {
            errors.push(format!(
                "{path}.key.header: {header:?} is not a header name"
            ));
        }
        (Key::Header, false) | (_, true) => {}
        (_, false) => errors.push(format!("{path}.key.header: only with type Header")),
    }
    for u in k.unknown.keys() {
        errors.push(format!("{path}.key.{u}: unknown field"));
    }
    (kind, header)
}

fn route_match(m: &HttpRouteMatch, path: &str, errors: &mut Vec<String>) -> pb::RouteMatch {
    let out = http_route_match(m);
    if let Some(p) = &m.path {
        match p.kind.as_deref() {
            None | Some("Exact" | "PathPrefix" | "RegularExpression") => {}
            Some(other) => errors.push(format!(
                "{path}.path.type: unknown type {other:?} (Exact, PathPrefix or RegularExpression)"
            )),
        }
    }
    if let Some(p) = &out.path {
        if p.r#type == MatchType::RegularExpression as i32 {
            if regex::Regex::new(&p.value).is_err() {
                errors.push(format!("{path}.path.value: invalid regular expression"));
            }
        } else if !p.value.starts_with('/') {
            errors.push(format!("{path}.path.value: must start with /"));
        }
    }
    for (field, values) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
        for (k, v) in values.iter().enumerate() {
            if v.name.is_empty() {
                errors.push(format!("{path}.{field}[{k}].name: required"));
            }
            if v.kind.as_deref() == Some("RegularExpression")
                && regex::Regex::new(&v.value).is_err()
            {
                errors.push(format!(
                    "{path}.{field}[{k}].value: invalid regular expression"
                ));
            }
        }
    }
    out
}

/// One limit, or every problem that makes it unusable.
fn limit(
    l: &RateLimitSpec,
    path: &str,
    notes: &mut Vec<String>,
) -> Result<pb::RateLimit, Vec<String>> {
    let mut errors = Vec::new();
    let (kind, header) = key(l, path, &mut errors);
    let requests = match l.requests {
        Some(n @ 1..) => u32::try_from(n).unwrap_or(u32::MAX),
        Some(n) => {
            errors.push(format!("{path}.requests: must be at least 1, found {n}"));
            0
        }
        None => {
            errors.push(format!("{path}.requests: required"));
            0
        }
    };
    let interval_ms = match l.interval.as_deref() {
        None => DEFAULT_INTERVAL_MS,
        Some(s) => match parse_duration(s) {
            Some(ms) if ms > 0 => ms,
            _ => {
                errors.push(format!(
                    "{path}.interval: {s:?} is not a duration (1h, 1m, 10s, 500ms; not zero)"
                ));
                0
            }
        },
    };
    let burst = match l.burst {
        None | Some(0) => 0,
        Some(n @ 1..) => u32::try_from(n).unwrap_or(u32::MAX),
        Some(n) => {
            errors.push(format!("{path}.burst: must not be negative, found {n}"));
            0
        }
    };
    let matches = l
        .matches
        .iter()
        .enumerate()
        .map(|(k, m)| route_match(m, &format!("{path}.matches[{k}]"), &mut errors))
        .collect();
    notes.extend(
        l.unknown
            .keys()
            .map(|k| format!("{path}.{k}: unknown field, ignored")),
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(pb::RateLimit {
        key: kind as i32,
        header,
        requests,
        interval_ms,
        burst,
        matches,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn one(yaml: &str) -> Result<pb::RateLimit, Vec<String>> {
        let l: RateLimitSpec = serde_yaml::from_str(yaml).unwrap();
        limit(&l, "limits[0]", &mut Vec::new())
    }

    #[test]
    fn converts_keys_defaults_and_matches() {
        let l = one("requests: 10").unwrap();
        assert_eq!(
            (l.key, l.requests, l.interval_ms, l.burst),
            (Key::None as i32, 10, 1000, 0)
        );
        let l = one(
            "key: {type: Header, header: x-user}\nrequests: 5\ninterval: 1m\nburst: 8\nmatches: [{path: {value: /api}, method: POST}]",
        )
        .unwrap();
        assert_eq!(l.key, Key::Header as i32);
        assert_eq!(l.header, "x-user");
        assert_eq!((l.interval_ms, l.burst), (60_000, 8));
        let p = l.matches[0].path.as_ref().unwrap();
        assert_eq!(
            (p.r#type, p.value.as_str()),
            (MatchType::PathPrefix as i32, "/api")
        );
        assert_eq!(l.matches[0].method, "POST");
        for (t, k) in [
            ("ClientIdentity", Key::ClientIdentity),
            ("SourceIP", Key::SourceIp),
            ("Path", Key::Path),
        ] {
            assert_eq!(
                one(&format!("key: {{type: {t}}}\nrequests: 1"))
                    .unwrap()
                    .key,
                k as i32
            );
        }
    }

    #[test]
    fn validation_messages() {
        let cases = [
            (
                "requests: 0",
                "limits[0].requests: must be at least 1, found 0",
            ),
            ("interval: 1s", "limits[0].requests: required"),
            (
                "requests: 1\ninterval: 1 minute",
                "limits[0].interval: \"1 minute\" is not a duration (1h, 1m, 10s, 500ms; not zero)",
            ),
            (
                "requests: 1\nkey: {type: User}",
                "limits[0].key.type: unknown type \"User\" (None, ClientIdentity, SourceIP, Header or Path)",
            ),
            (
                "requests: 1\nkey: {type: Header}",
                "limits[0].key.header: required with type Header",
            ),
            (
                "requests: 1\nkey: {type: Path, header: x}",
                "limits[0].key.header: only with type Header",
            ),
            (
                "requests: 1\nburst: -1",
                "limits[0].burst: must not be negative, found -1",
            ),
            (
                "requests: 1\nmatches: [{path: {type: RegularExpression, value: '('}}]",
                "limits[0].matches[0].path.value: invalid regular expression",
            ),
        ];
        for (yaml, want) in cases {
            let errors = one(yaml).unwrap_err();
            assert_eq!(errors.first().map(String::as_str), Some(want), "{yaml}");
        }
    }
}
