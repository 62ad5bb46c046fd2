//! Route conversion tests: the HTTPRoute `retry` conversion as a pure table, and retries, dropped rules and the
//! FaultInjection extension filter through the whole computation over the VirtualService tests' bookinfo mesh
//! (namespace `default`, Services `reviews`, `ratings`, `details` on port 9080).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ambit_proto::waypoint::{DirectResponse, FaultAbort, FaultDelay, FaultInjection, RetryPolicy};
use serde_json::Value;

use super::retry::{CONNECTION_ERRORS, DEFAULT_ATTEMPTS, retry};
use crate::compute::Resources;
use crate::compute::virtual_service::tests::compute_yaml;
use crate::sources::routes::HttpRouteRetry;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn spec(attempts: Option<i64>, codes: &[i64], backoff: Option<&str>) -> HttpRouteRetry {
    HttpRouteRetry {
        attempts,
        codes: codes.to_vec(),
        backoff: backoff.map(str::to_owned),
    }
}

#[test]
fn retry_conversion() {
    let f = "rules[0].retry";
    assert_eq!(
        retry(f, None),
        Ok(None),
        "no stanza: the waypoint's default"
    );
    let with_codes = strings(&[
        "connect-failure",
        "refused-stream",
        "unavailable",
        "retriable-status-codes",
    ]);
    let cases = [
        (
            spec(Some(3), &[503, 500, 503], Some("100ms")),
            RetryPolicy {
                attempts: 3,
                retry_on: with_codes.clone(),
                codes: vec![503, 500],
                backoff_base_ms: 100,
                backoff_max_ms: 0,
            },
        ),
        // Attempts absent: Istio's count; no codes: connection errors only; no backoff: the waypoint's.
        (
            spec(None, &[], None),
            RetryPolicy {
                attempts: DEFAULT_ATTEMPTS,
                retry_on: strings(&CONNECTION_ERRORS),
                ..Default::default()
            },
        ),
        (
            spec(Some(1), &[400, 599], Some("1m30s")),
            RetryPolicy {
                attempts: 1,
                retry_on: with_codes,
                codes: vec![400, 599],
                backoff_base_ms: 90_000,
                backoff_max_ms: 0,
            },
        ),
        // Zero turns retries off, whatever else is set.
        (spec(Some(0), &[503], Some("1s")), RetryPolicy::default()),
    ];
    for (input, want) in cases {
        assert_eq!(retry(f, Some(&input)), Ok(Some(want)), "{input:?}");
    }
    assert_eq!(DEFAULT_ATTEMPTS, 2);
}

#[test]
fn retry_validation_messages() {
    let f = "rules[2].retry";
    let cases: [(HttpRouteRetry, &[&str]); 5] = [
        (
            spec(Some(-1), &[], None),
            &["rules[2].retry.attempts: -1 is negative"],
        ),
        (
            spec(Some(1 << 40), &[], None),
            &["rules[2].retry.attempts: 1099511627776 is too large"],
        ),
        (
            spec(None, &[500, 700, 399, -5], None),
            &[
                "rules[2].retry.codes[1]: 700 is not an HTTP status between 400 and 599",
                "rules[2].retry.codes[2]: 399 is not an HTTP status between 400 and 599",
                "rules[2].retry.codes[3]: -5 is not an HTTP status between 400 and 599",
            ],
        ),
        (
            spec(None, &[], Some("1.5s")),
            &[
                "rules[2].retry.backoff: \"1.5s\" is not a Gateway API duration (like 100ms, 1s, 1m30s)",
            ],
        ),
        // Every problem is reported, not just the first.
        (
            spec(Some(-2), &[200], Some("")),
            &[
                "rules[2].retry.attempts: -2 is negative",
                "rules[2].retry.codes[0]: 200 is not an HTTP status between 400 and 599",
                "rules[2].retry.backoff: \"\" is not a Gateway API duration (like 100ms, 1s, 1m30s)",
            ],
        ),
    ];
    for (input, want) in cases {
        assert_eq!(retry(f, Some(&input)), Err(strings(want)), "{input:?}");
    }
}

/// An HTTPRoute `r` in `default` for Service `reviews` with the given rules (YAML flow sequence items).
fn http_route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\n\
         spec:\n  parentRefs: [{{group: \"\", kind: Service, name: reviews, port: 9080}}]\n  rules:\n{rules}"
    )
}

const FAULTS: &str = r#"
apiVersion: ambit.dev/v1alpha1
kind: FaultInjection
metadata: {name: slow, namespace: default}
spec:
  delay: {fixedDelay: 5s, percentage: 10}
  abort: {httpStatus: 503, percentage: {value: 50}}
---
apiVersion: ambit.dev/v1alpha1
kind: FaultInjection
metadata: {name: grpc, namespace: default}
spec:
  abort: {grpcStatus: UNAVAILABLE}
---
apiVersion: ambit.dev/v1alpha1
kind: FaultInjection
metadata: {name: broken, namespace: default}
spec:
  abort: {httpStatus: 700, percentage: 150}
---
apiVersion: ambit.dev/v1alpha1
kind: FaultInjection
metadata: {name: elsewhere, namespace: other}
spec:
  abort: {httpStatus: 418}
"#;

fn compute(rules: &str) -> Resources {
    compute_yaml(&format!("{FAULTS}\n---\n{}", http_route(rules)))
}

fn parent_conditions(r: &Resources) -> Vec<(String, String, String, String)> {
    r.status["httproute/default/r"]["parents"][0]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("type"), s("status"), s("reason"), s("message"))
        })
        .collect()
}

fn condition(r: &Resources, kind: &str) -> (String, String, String) {
    parent_conditions(r)
        .into_iter()
        .find(|c| c.0 == kind)
        .map(|c| (c.1, c.2, c.3))
        .unwrap_or_else(|| panic!("no {kind} in {:?}", parent_conditions(r)))
}

fn owned(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.to_owned(), b.to_owned(), c.to_owned())
}

const BACKEND: &str = "backendRefs: [{name: reviews, port: 9080}]";

fn ext(group: &str, kind: &str, name: &str) -> String {
    format!("{{type: ExtensionRef, extensionRef: {{group: {group}, kind: {kind}, name: {name}}}}}")
}

#[test]
fn a_rule_with_an_invalid_retry_is_dropped_and_reported() {
    let r = compute(&format!(
        "  - {{retry: {{attempts: 3, codes: [503], backoff: 50ms}}, {BACKEND}}}\n  - {{retry: {{codes: [500, 700]}}, {BACKEND}}}\n"
    ));
    let rule0 = &r.routes["default/httproute/r/0"];
    assert_eq!(
        rule0
            .retry
            .as_ref()
            .map(|p| (p.attempts, p.codes.clone(), p.backoff_base_ms)),
        Some((3, vec![503], 50))
    );
    assert!(!r.routes.contains_key("default/httproute/r/1"));
    assert_eq!(
        condition(&r, "Accepted"),
        owned("True", "Accepted", "Route was valid")
    );
    assert_eq!(
        condition(&r, "PartiallyInvalid"),
        owned(
            "True",
            "UnsupportedValue",
            "Dropped Rule(s): rules[1].retry.codes[1]: 700 is not an HTTP status between 400 and 599"
        )
    );
}

#[test]
fn a_route_with_only_invalid_rules_is_not_accepted() {
    let r = compute(&format!("  - {{retry: {{attempts: -1}}, {BACKEND}}}\n"));
    assert!(
        r.routes
            .keys()
            .all(|k| !k.starts_with("default/httproute/r/"))
    );
    assert_eq!(
        condition(&r, "Accepted"),
        owned(
            "False",
            "UnsupportedValue",
            "All rules are invalid: rules[0].retry.attempts: -1 is negative"
        )
    );
    assert!(
        parent_conditions(&r)
            .iter()
            .all(|c| c.0 != "PartiallyInvalid")
    );
}

#[test]
fn a_valid_route_has_no_retry_unless_it_asks() {
    let r = compute(&format!("  - {{{BACKEND}}}\n"));
    assert_eq!(r.routes["default/httproute/r/0"].retry, None);
    assert_eq!(
        parent_conditions(&r).len(),
        2,
        "{:?}",
        parent_conditions(&r)
    );
}

#[test]
fn fault_injection_found() {
    let r = compute(&format!(
        "  - {{filters: [{}], {BACKEND}}}\n",
        ext("ambit.dev", "FaultInjection", "slow")
    ));
    let rule = &r.routes["default/httproute/r/0"];
    assert_eq!(
        rule.fault,
        Some(FaultInjection {
            delay: Some(FaultDelay {
                fixed_delay_ms: 5_000,
                percent: Some(10.0)
            }),
            abort: Some(FaultAbort {
                http_status: 503,
                grpc_status: None,
                percent: Some(50.0)
            }),
        })
    );
    assert_eq!(rule.direct_response, None);
    assert!(
        rule.filters.is_empty(),
        "the extension filter is not a waypoint filter"
    );
    assert_eq!(rule.backends[0].invalid, "");
    assert_eq!(condition(&r, "ResolvedRefs").0, "True");
    assert_eq!(
        r.status["faultinjection/default/slow"]["conditions"][0]["status"],
        "True"
    );
}

#[test]
fn fault_injection_on_a_grpc_route() {
    let r = compute_yaml(&format!(
        "{FAULTS}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g, namespace: default}}\n\
         spec:\n  parentRefs: [{{group: \"\", kind: Service, name: ratings, port: 9080}}]\n  rules:\n  - {{filters: [{}], {BACKEND}}}\n",
        ext("ambit.dev", "FaultInjection", "grpc")
    ));
    let abort = r.routes["default/grpcroute/g/0"]
        .fault
        .as_ref()
        .and_then(|f| f.abort);
    assert_eq!(
        abort,
        Some(FaultAbort {
            http_status: 503,
            grpc_status: Some(14),
            percent: None
        })
    );
}

#[test]
fn a_missing_fault_injection_makes_the_rule_answer_500() {
    // `elsewhere` exists, but in another namespace: references are local.
    for name in ["ghost", "elsewhere"] {
        let r = compute(&format!(
            "  - {{filters: [{}], {BACKEND}}}\n  - {{matches: [{{path: {{value: /ok}}}}], {BACKEND}}}\n",
            ext("ambit.dev", "FaultInjection", name)
        ));
        let message = format!("rules[0].filters[0]: FaultInjection default/{name} not found");
        let rule = &r.routes["default/httproute/r/0"];
        assert_eq!(
            rule.direct_response,
            Some(DirectResponse {
                status: 500,
                body: message.clone()
            })
        );
        assert_eq!(rule.fault, None);
        // The other rule is untouched.
        assert_eq!(r.routes["default/httproute/r/1"].direct_response, None);
        assert_eq!(
            condition(&r, "ResolvedRefs"),
            owned("False", "BackendNotFound", &message)
        );
        assert_eq!(condition(&r, "Accepted").0, "True");
    }
}

#[test]
fn an_invalid_fault_injection_makes_the_rule_answer_500_and_says_why() {
    let r = compute(&format!(
        "  - {{filters: [{}], {BACKEND}}}\n",
        ext("ambit.dev", "FaultInjection", "broken")
    ));
    let errors = "spec.abort.percentage.value: 150 is not between 0 and 100; \
                  spec.abort.httpStatus: 700 is not between 200 and 599";
    let message =
        format!("rules[0].filters[0]: FaultInjection default/broken is invalid: {errors}");
    assert_eq!(
        r.routes["default/httproute/r/0"]
            .direct_response
            .as_ref()
            .map(|d| d.status),
        Some(500)
    );
    assert_eq!(
        condition(&r, "ResolvedRefs"),
        owned("False", "UnsupportedValue", &message)
    );
    let s = &r.status["faultinjection/default/broken"];
    assert_eq!(s["conditions"][0]["status"], "False");
    assert_eq!(s["conditions"][0]["reason"], "Invalid");
    assert_eq!(s["conditions"][0]["message"], errors);
    assert_eq!(
        s["validationMessages"][1],
        serde_json::json!({"level": "Error", "message": "spec.abort.httpStatus: 700 is not between 200 and 599"})
    );
}

#[test]
fn other_extension_refs_are_skipped_as_before() {
    for (group, kind) in [
        ("ambit.dev", "RateLimit"),
        ("example.com", "FaultInjection"),
    ] {
        let r = compute(&format!(
            "  - {{filters: [{}], {BACKEND}}}\n",
            ext(group, kind, "slow")
        ));
        let rule = &r.routes["default/httproute/r/0"];
        assert_eq!(
            (&rule.fault, &rule.direct_response),
            (&None, &None),
            "{group}/{kind}"
        );
        assert!(rule.filters.is_empty());
        assert_eq!(condition(&r, "ResolvedRefs").0, "True");
    }
}

#[test]
fn two_fault_injections_in_a_rule_drop_it() {
    let r = compute(&format!(
        "  - {{filters: [{}, {{type: RequestHeaderModifier, requestHeaderModifier: {{add: [{{name: a, value: b}}]}}}}, {}], {BACKEND}}}\n  - {{{BACKEND}}}\n",
        ext("ambit.dev", "FaultInjection", "slow"),
        ext("ambit.dev", "FaultInjection", "grpc"),
    ));
    assert!(!r.routes.contains_key("default/httproute/r/0"));
    assert!(r.routes.contains_key("default/httproute/r/1"));
    assert_eq!(
        condition(&r, "PartiallyInvalid").2,
        "Dropped Rule(s): rules[0].filters[2]: only one FaultInjection filter per rule \
         (rules[0].filters[0] is the first)"
    );
}

#[test]
fn a_fault_injection_on_a_backend_marks_it_invalid() {
    let r = compute(&format!(
        "  - {{backendRefs: [{{name: reviews, port: 9080}}, {{name: ratings, port: 9080, filters: [{}]}}]}}\n",
        ext("ambit.dev", "FaultInjection", "slow")
    ));
    let rule = &r.routes["default/httproute/r/0"];
    let message =
        "rules[0].backendRefs[1].filters[0]: FaultInjection applies to rules, not to backends";
    assert_eq!(rule.backends[0].invalid, "");
    assert_eq!(rule.backends[1].invalid, message);
    assert_eq!(rule.fault, None);
    assert_eq!(
        condition(&r, "ResolvedRefs"),
        owned("False", "UnsupportedValue", message)
    );
}

#[test]
fn status_of_routes_without_policies_is_unchanged() {
    // Exactly Accepted and ResolvedRefs, as before this module knew about retries and faults.
    let r = compute(&format!("  - {{{BACKEND}}}\n"));
    let kinds: Vec<String> = parent_conditions(&r).into_iter().map(|c| c.0).collect();
    assert_eq!(kinds, ["Accepted", "ResolvedRefs"]);
    assert!(matches!(
        r.status.get("httproute/default/r"),
        Some(Value::Object(_))
    ));
}

#[test]
fn hostnames_are_sent_as_written() {
    let text = http_route(&format!("  - {{{BACKEND}}}\n")).replace(
        "  rules:",
        "  hostnames: [reviews.example.com, \"*.example.com\"]\n  rules:",
    );
    let r = compute_yaml(&text);
    assert_eq!(
        r.routes["default/httproute/r/0"].hostnames,
        strings(&["reviews.example.com", "*.example.com"])
    );
    assert_eq!(condition(&r, "Accepted").0, "True");
}

#[test]
fn a_route_with_an_invalid_hostname_is_not_accepted() {
    let text = http_route(&format!("  - {{{BACKEND}}}\n")).replace(
        "  rules:",
        "  hostnames: [ok.example.com, Reviews.example.com, 10.0.0.1]\n  rules:",
    );
    let r = compute_yaml(&text);
    assert!(
        !r.routes.keys().any(|k| k.contains("/httproute/")),
        "{:?}",
        r.routes.keys()
    );
    assert_eq!(
        condition(&r, "Accepted"),
        owned(
            "False",
            "UnsupportedValue",
            "Invalid hostnames: spec.hostnames[1]: \"Reviews.example.com\" is not a lower-case RFC 1123 hostname \
             (optionally prefixed by a single \"*.\" label); spec.hostnames[2]: \"10.0.0.1\" is an IP address; \
             hostnames are names"
        )
    );
}
