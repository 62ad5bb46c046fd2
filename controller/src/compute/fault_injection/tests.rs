//! FaultInjection spec conversion and reference resolution, as pure functions.

use ambit_proto::waypoint::{FaultAbort, FaultDelay, FaultInjection as PbFault};

use super::*;
use crate::sources::ambit::FaultInjectionSpec;
use crate::sources::routes::{HttpRouteFilter, LocalObjectReference};

fn spec(yaml: &str) -> FaultInjectionSpec {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn converts_delay_and_abort_with_both_percentage_forms() {
    let cases = [
        (
            "{delay: {fixedDelay: 5s, percentage: 10}, abort: {httpStatus: 503, percentage: 50}}",
            PbFault {
                delay: Some(FaultDelay {
                    fixed_delay_ms: 5_000,
                    percent: Some(10.0),
                }),
                abort: Some(FaultAbort {
                    http_status: 503,
                    grpc_status: None,
                    percent: Some(50.0),
                }),
            },
        ),
        (
            "{delay: {fixedDelay: 1.5s, percentage: {value: 0.5}}}",
            PbFault {
                delay: Some(FaultDelay {
                    fixed_delay_ms: 1_500,
                    percent: Some(0.5),
                }),
                abort: None,
            },
        ),
        // No percentage: every request (the waypoint reads an absent percent as 100).
        (
            "{abort: {grpcStatus: UNAVAILABLE}}",
            PbFault {
                delay: None,
                abort: Some(FaultAbort {
                    http_status: 503,
                    grpc_status: Some(14),
                    percent: None,
                }),
            },
        ),
        (
            "{abort: {grpcStatus: 8, percentage: 100}}",
            PbFault {
                delay: None,
                abort: Some(FaultAbort {
                    http_status: 429,
                    grpc_status: Some(8),
                    percent: Some(100.0),
                }),
            },
        ),
        (
            "{abort: {httpStatus: 418, percentage: 0}}",
            PbFault {
                delay: None,
                abort: Some(FaultAbort {
                    http_status: 418,
                    grpc_status: None,
                    percent: Some(0.0),
                }),
            },
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(convert(&spec(yaml)), Ok(want), "{yaml}");
    }
}

#[test]
fn reports_every_invalid_field() {
    let cases: [(&str, &[&str]); 7] = [
        ("{}", &["spec: one of delay, abort is required"]),
        (
            "{delay: {percentage: 10}}",
            &["spec.delay.fixedDelay: required"],
        ),
        (
            "{delay: {fixedDelay: soon, percentage: -1}}",
            &[
                "spec.delay.fixedDelay: invalid duration \"soon\"",
                "spec.delay.percentage.value: -1 is not between 0 and 100",
            ],
        ),
        (
            "{abort: {httpStatus: 503, grpcStatus: UNAVAILABLE, percentage: 50}}",
            &["spec.abort: httpStatus and grpcStatus are mutually exclusive"],
        ),
        (
            "{abort: {percentage: 101}}",
            &[
                "spec.abort.percentage.value: 101 is not between 0 and 100",
                "spec.abort: one of httpStatus, grpcStatus is required",
            ],
        ),
        (
            "{abort: {grpcStatus: NOPE}}",
            &["spec.abort.grpcStatus: unknown gRPC status NOPE"],
        ),
        (
            "{abort: {httpStatus: 503, http2Error: x}, delya: {}}",
            &[
                "spec.delya: not supported",
                "spec.abort.http2Error: not supported",
            ],
        ),
    ];
    for (yaml, want) in cases {
        let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(convert(&spec(yaml)), Err(want), "{yaml}");
    }
}

fn filter(kind: &str, group: &str, ext_kind: &str, name: &str) -> HttpRouteFilter {
    HttpRouteFilter {
        kind: kind.to_owned(),
        extension_ref: Some(LocalObjectReference {
            group: group.to_owned(),
            kind: ext_kind.to_owned(),
            name: name.to_owned(),
        }),
        ..Default::default()
    }
}

fn faults() -> Faults {
    let mut f = Faults::new();
    f.insert(
        ("n".into(), "ok".into()),
        convert(&spec("{abort: {httpStatus: 503}}")),
    );
    f.insert(
        ("n".into(), "bad".into()),
        convert(&spec("{abort: {httpStatus: 1}}")),
    );
    f
}

#[test]
fn resolves_references_in_the_route_namespace() {
    let f = faults();
    let ok = filter("ExtensionRef", AMBIT_GROUP, FAULT_INJECTION_KIND, "ok");
    assert!(matches!(
        rule_fault("rules[0].filters", std::slice::from_ref(&ok), "n", &f),
        Ok(RuleFault::Fault(PbFault {
            abort: Some(FaultAbort {
                http_status: 503,
                ..
            }),
            ..
        }))
    ));
    // The same name from another namespace is not found.
    assert_eq!(
        rule_fault("rules[0].filters", std::slice::from_ref(&ok), "m", &f),
        Ok(RuleFault::Unresolved(
            "BackendNotFound",
            "rules[0].filters[0]: FaultInjection m/ok not found".into()
        ))
    );
    let bad = filter("ExtensionRef", AMBIT_GROUP, FAULT_INJECTION_KIND, "bad");
    assert_eq!(
        rule_fault(
            "rules[3].filters",
            &[HttpRouteFilter::default(), bad],
            "n",
            &f
        ),
        Ok(RuleFault::Unresolved(
            "UnsupportedValue",
            "rules[3].filters[1]: FaultInjection n/bad is invalid: \
             spec.abort.httpStatus: 1 is not between 200 and 599"
                .into()
        ))
    );
}

#[test]
fn only_ambit_fault_injection_extension_refs_count() {
    let f = faults();
    for other in [
        filter("ExtensionRef", AMBIT_GROUP, "Other", "ok"),
        filter("ExtensionRef", "example.com", FAULT_INJECTION_KIND, "ok"),
        // An extensionRef on a filter of another type is not an extension filter.
        filter(
            "RequestHeaderModifier",
            AMBIT_GROUP,
            FAULT_INJECTION_KIND,
            "ok",
        ),
    ] {
        assert_eq!(fault_ref(&other), None, "{other:?}");
        assert_eq!(
            rule_fault("rules[0].filters", &[other], "n", &f),
            Ok(RuleFault::None)
        );
    }
}

#[test]
fn two_fault_filters_are_an_error() {
    let ok = filter("ExtensionRef", AMBIT_GROUP, FAULT_INJECTION_KIND, "ok");
    assert_eq!(
        rule_fault("rules[1].filters", &[ok.clone(), ok], "n", &faults()),
        Err(
            "rules[1].filters[1]: only one FaultInjection filter per rule \
             (rules[1].filters[0] is the first)"
                .into()
        )
    );
}
