//! VirtualService conversion tests over a bookinfo-like mesh: namespace `default` (ambient), waypoint `waypoint`
//! (ready), Services `reviews`, `ratings`, `details` bound to it, `productpage` not bound; pods `reviews-v1..v3`,
//! `ratings-v1`, `productpage-v1`, `details-v1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ambit_proto::waypoint::{MatchType, Route, RouteKind, RouteOrigin, parent_ref, path_modifier};

use crate::compute::test_support::compute_text;
use crate::compute::{ComputeConfig, Resources};

/// The same mesh as the `virtual-services` golden case.
pub const BOOKINFO: &str = include_str!("../../../tests/golden/virtual-services/in/bookinfo.yaml");

/// Computes the resources of `BOOKINFO` followed by `extra` documents.
pub fn compute_yaml(extra: &str) -> Resources {
    compute_text(
        &format!("{BOOKINFO}\n---\n{extra}"),
        &ComputeConfig::default(),
    )
}

fn route<'a>(r: &'a Resources, name: &str) -> &'a Route {
    r.routes.get(name).unwrap_or_else(|| {
        panic!(
            "no route {name}; have {:?}",
            r.routes.keys().collect::<Vec<_>>()
        )
    })
}

fn status<'a>(r: &'a Resources, key: &str) -> &'a serde_json::Value {
    r.status
        .get(key)
        .unwrap_or_else(|| panic!("no status {key}"))
}

/// `(type, status, reason)` of a condition.
fn cond(s: &serde_json::Value, kind: &str) -> (String, String) {
    let c = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap();
    (
        c["status"].as_str().unwrap().into(),
        c["reason"].as_str().unwrap().into(),
    )
}

fn messages(s: &serde_json::Value) -> Vec<String> {
    s["validationMessages"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["message"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A VirtualService on `reviews` in `default` with the given `http` rules (YAML flow list).
fn vs(name: &str, http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  hosts: [reviews.default.svc.cluster.local]\n  http:\n{http}\n"
    )
}

const HOST: &str = "reviews.default.svc.cluster.local";

#[test]
fn reviews_routes_jason_to_v2_and_everyone_else_to_v1() {
    let r = compute_yaml("");
    let jason = route(&r, "default/virtualservice/reviews/0");
    assert_eq!(jason.kind, RouteKind::Http as i32);
    assert_eq!(jason.origin, RouteOrigin::VirtualService as i32);
    assert_eq!(jason.rule_index, 0);
    assert_eq!(jason.route_name, "reviews");
    assert_eq!(jason.creation_timestamp, 1_704_067_210);
    assert_eq!(jason.parents.len(), 1);
    assert_eq!(jason.parents[0].kind, parent_ref::Kind::Service as i32);
    assert_eq!(jason.parents[0].name, HOST);
    assert_eq!(jason.parents[0].namespace, "default");
    assert_eq!(jason.parents[0].port, 0);
    let h = &jason.matches[0].headers[0];
    assert_eq!(
        (h.name.as_str(), h.value.as_str(), h.r#type),
        ("end-user", "jason", MatchType::Exact as i32)
    );
    assert!(jason.matches[0].path.is_none());
    let b = &jason.backends[0];
    assert_eq!(
        (b.hostname.as_str(), b.port, b.weight, b.subset.as_str()),
        (HOST, 9080, 100, "v2")
    );
    assert!(b.invalid.is_empty());
    assert!(jason.retry.is_none(), "no retries: the waypoint's default");
    let rest = route(&r, "default/virtualservice/reviews/1");
    assert!(rest.matches.is_empty());
    assert_eq!(rest.backends[0].subset, "v1");
    let s = status(&r, "virtualservice/default/reviews");
    assert_eq!(cond(s, "Accepted"), ("True".into(), "Accepted".into()));
    assert_eq!(cond(s, "Reconciled"), ("True".into(), "Applied".into()));
    assert!(messages(s).is_empty(), "{s}");
    // VS routes are scoped to the waypoint like any other route.
    let scope = &r.route_scopes[&("default".to_owned(), "waypoint".to_owned())];
    assert!(scope.contains("default/virtualservice/reviews/0"));
}

#[test]
fn ratings_delays_jason_by_seven_seconds() {
    let r = compute_yaml("");
    let f = route(&r, "default/virtualservice/ratings/0").fault.unwrap();
    let d = f.delay.unwrap();
    assert_eq!((d.fixed_delay_ms, d.percent), (7_000, Some(100.0)));
    assert!(f.abort.is_none());
    assert!(
        route(&r, "default/virtualservice/ratings/1")
            .fault
            .is_none()
    );
}

#[test]
fn gateway_api_routes_win_over_a_virtual_service_for_the_same_service() {
    let r = compute_yaml(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: details, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: details, port: 9080}]
  rules: [{backendRefs: [{name: details, port: 9080}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details-and-reviews, namespace: default}
spec:
  hosts: [details, reviews]
  http: [{route: [{destination: {host: details}}]}]
"#,
    );
    let vs = route(&r, "default/virtualservice/details-and-reviews/0");
    let parents: Vec<&str> = vs.parents.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(parents, vec![HOST], "details is Gateway API's");
    assert!(r.routes.contains_key("default/httproute/details/0"));
    let s = status(&r, "virtualservice/default/details-and-reviews");
    let c = s["conditions"][1]["message"].as_str().unwrap();
    assert!(
        c.contains(
            "not applied to details.default.svc.cluster.local: Gateway API routes are attached"
        ),
        "{c}"
    );
    assert!(c.contains("httproute default/details"), "{c}");
    // Only details: nothing applies, and the reason says why.
    let r = compute_yaml(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: details, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: details}]
  rules: [{backendRefs: [{name: details, port: 9080}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details, namespace: default}
spec:
  hosts: [details]
  http: [{route: [{destination: {host: details}}]}]
"#,
    );
    assert!(!r.routes.contains_key("default/virtualservice/details/0"));
    let s = status(&r, "virtualservice/default/details");
    assert_eq!(
        cond(s, "Reconciled"),
        ("False".into(), "OverriddenByGatewayAPI".into())
    );
}

#[test]
fn services_without_a_waypoint_and_ingress_only_services_are_not_applied() {
    let r = compute_yaml(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: productpage, namespace: default}
spec:
  hosts: [productpage]
  http: [{route: [{destination: {host: productpage, port: {number: 9080}}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ingress, namespace: default}
spec:
  hosts: [reviews]
  gateways: [istio-system/ingress]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nowhere, namespace: default}
spec:
  hosts: [missing.example.com]
  http: [{route: [{destination: {host: reviews}}]}]
"#,
    );
    for name in ["productpage", "ingress", "nowhere"] {
        assert!(
            !r.routes
                .keys()
                .any(|k| k.starts_with(&format!("default/virtualservice/{name}/"))),
            "{name}"
        );
    }
    let s = status(&r, "virtualservice/default/productpage");
    assert_eq!(cond(s, "Reconciled"), ("False".into(), "NotApplied".into()));
    assert!(
        s["conditions"][1]["message"]
            .as_str()
            .unwrap()
            .contains("is not bound to a waypoint")
    );
    let s = status(&r, "virtualservice/default/ingress");
    assert_eq!(cond(s, "Reconciled"), ("False".into(), "NotForMesh".into()));
    let s = status(&r, "virtualservice/default/nowhere");
    assert_eq!(
        messages(s),
        vec!["hosts[0]: no service missing.example.com (only Services are supported)"]
    );
}

#[test]
fn every_http_field_is_converted() {
    let r = compute_yaml(&vs(
        "all",
        r#"
  - name: everything
    match:
    - uri: {prefix: /api}
      method: {exact: GET}
      authority: {exact: reviews:9080}
      headers: {X-Version: {prefix: v}, x-present: {}}
      queryParams: {q: {regex: "a+"}}
      withoutHeaders: {x-skip: {exact: "1"}}
      sourceLabels: {app: productpage}
      sourceNamespace: default
      ignoreUriCase: true
      port: 9080
    - uri: {exact: /health}
      port: 9080
    route:
    - destination: {host: reviews, subset: v1, port: {number: 9080}}
      weight: 80
      headers: {request: {set: {x-a: "1"}}, response: {remove: [server]}}
    - destination: {host: ratings.default.svc.cluster.local, port: {number: 9080}}
      weight: 20
    rewrite: {authority: backend}
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "gateway-error,connect-failure,refused-stream,reset-before-request,503"}
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 50}}}
    mirror: {host: ratings}
    mirrorPercentage: {value: 25.5}
    corsPolicy:
      allowOrigins: [{exact: "https://a.example"}, {regex: "https://.*\\.b\\.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-a]
      exposeHeaders: [x-b]
      maxAge: 24h
      allowCredentials: true
      unmatchedPreflights: IGNORE
    headers: {request: {add: {x-req: "r"}}, response: {set: {x-resp: "s"}}}
  - match: [{uri: {prefix: /static}}]
    redirect: {uri: /new, authority: elsewhere, port: 8080, scheme: https}
  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {regex: "/v[0-9]+/.*"}}]
    directResponse: {status: 418, body: {string: teapot}}
"#,
    ));
    let s = status(&r, "virtualservice/default/all");
    assert_eq!(
        cond(s, "Accepted"),
        ("True".into(), "Accepted".into()),
        "{s}"
    );
    let a = route(&r, "default/virtualservice/all/0");
    assert_eq!(a.rule_name, "everything");
    assert_eq!(a.parents[0].port, 9080, "every match sets port 9080");
    let m = &a.matches[0];
    let p = m.path.as_ref().unwrap();
    assert_eq!(
        (p.r#type, p.value.as_str()),
        (MatchType::RegularExpression as i32, "/api.*")
    );
    assert_eq!(m.method, "GET");
    let hs: Vec<(&str, &str, i32)> = m
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_str(), h.r#type))
        .collect();
    assert_eq!(
        hs,
        vec![
            ("x-version", "v", MatchType::PathPrefix as i32),
            ("x-present", ".*", MatchType::RegularExpression as i32),
            ("host", "reviews:9080", MatchType::Exact as i32),
        ]
    );
    assert_eq!(m.query_params[0].value, "a+");
    assert_eq!(m.without_headers[0].name, "x-skip");
    assert_eq!(m.source_namespace, "default");
    assert_eq!(
        m.source_workloads.as_ref().unwrap().uids,
        vec!["Kubernetes//Pod/default/productpage-v1"]
    );
    assert!(m.ignore_path_case);
    assert_eq!(
        a.matches[1].path.as_ref().unwrap().r#type,
        MatchType::Exact as i32
    );
    assert_eq!(a.matches[1].source_workloads, None);
    // Filters: route headers, then rewrite, then mirror.
    assert_eq!(
        a.filters[0].request_header_modifier.as_ref().unwrap().add[0].name,
        "x-req"
    );
    assert_eq!(
        a.filters[1].response_header_modifier.as_ref().unwrap().set[0].value,
        "s"
    );
    assert_eq!(
        a.filters[2].url_rewrite.as_ref().unwrap().hostname,
        "backend"
    );
    let mirror = a.filters[3].request_mirror.as_ref().unwrap();
    assert_eq!(
        mirror.backend.as_ref().unwrap().hostname,
        "ratings.default.svc.cluster.local"
    );
    assert_eq!(
        mirror.backend.as_ref().unwrap().port,
        9080,
        "the service's only port"
    );
    assert_eq!(mirror.percent, Some(25.5));
    let b: Vec<(u32, &str)> = a
        .backends
        .iter()
        .map(|b| (b.weight, b.hostname.as_str()))
        .collect();
    assert_eq!(
        b,
        vec![(80, HOST), (20, "ratings.default.svc.cluster.local")]
    );
    assert_eq!(
        a.backends[0].filters[0]
            .request_header_modifier
            .as_ref()
            .unwrap()
            .set[0]
            .name,
        "x-a"
    );
    assert_eq!(
        a.backends[0].filters[1]
            .response_header_modifier
            .as_ref()
            .unwrap()
            .remove,
        vec!["server"]
    );
    let t = a.timeouts.unwrap();
    assert_eq!((t.request_ms, t.backend_request_ms), (1_500, 2_000));
    let retry = a.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 3);
    assert_eq!(
        retry.retry_on,
        vec![
            "gateway-error",
            "connect-failure",
            "refused-stream",
            "reset-before-request",
            "retriable-status-codes"
        ]
    );
    assert_eq!(retry.codes, vec![503]);
    let abort = a.fault.as_ref().unwrap().abort.unwrap();
    assert_eq!(
        (abort.grpc_status, abort.http_status, abort.percent),
        (Some(14), 503, Some(50.0))
    );
    let cors = a.cors.as_ref().unwrap();
    assert_eq!(cors.allow_origins[0].r#type, MatchType::Exact as i32);
    assert_eq!(
        cors.allow_origins[1].r#type,
        MatchType::RegularExpression as i32
    );
    assert_eq!(cors.allow_methods, vec!["GET", "POST"]);
    assert_eq!(
        (cors.allow_headers.len(), cors.expose_headers.len()),
        (1, 1)
    );
    assert_eq!(cors.max_age_s, 86_400);
    assert_eq!(cors.allow_credentials, Some(true));
    assert!(cors.ignore_unmatched_preflights);

    let redirect = route(&r, "default/virtualservice/all/1").filters[0]
        .request_redirect
        .clone()
        .unwrap();
    assert_eq!(redirect.status_code, 301, "Istio's default redirect code");
    assert_eq!(
        (
            redirect.hostname.as_str(),
            redirect.port,
            redirect.scheme.as_str()
        ),
        ("elsewhere", 8080, "https")
    );
    let path = redirect.path.unwrap();
    assert_eq!(
        (path.kind, path.value.as_str()),
        (path_modifier::Kind::ReplaceFullPath as i32, "/new")
    );
    assert!(
        route(&r, "default/virtualservice/all/1")
            .backends
            .is_empty()
    );

    // A prefix rewrite keeps the match a path prefix so the waypoint can replace it.
    let rw = route(&r, "default/virtualservice/all/2");
    assert_eq!(
        rw.matches[0].path.as_ref().unwrap().r#type,
        MatchType::PathPrefix as i32
    );
    let p = rw.filters[0]
        .url_rewrite
        .as_ref()
        .unwrap()
        .path
        .clone()
        .unwrap();
    assert_eq!(p.kind, path_modifier::Kind::ReplacePrefixMatch as i32);

    let dr = route(&r, "default/virtualservice/all/3")
        .direct_response
        .clone()
        .unwrap();
    assert_eq!((dr.status, dr.body.as_str()), (418, "teapot"));
}

#[test]
fn retries_absent_zero_and_default_conditions() {
    let r = compute_yaml(&vs(
        "retries",
        r#"
  - match: [{uri: {exact: /a}}]
    retries: {attempts: 0, perTryTimeout: 1s}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {exact: /b}}]
    retries: {attempts: 2}
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
"#,
    ));
    let off = route(&r, "default/virtualservice/retries/0");
    assert_eq!(
        off.retry.as_ref().map(|p| p.attempts),
        Some(0),
        "attempts 0 turns retries off"
    );
    assert!(off.timeouts.is_none(), "no per-try timeout without retries");
    let default_on = route(&r, "default/virtualservice/retries/1")
        .retry
        .clone()
        .unwrap();
    assert_eq!(default_on.retry_on, super::DEFAULT_RETRY_ON.to_vec());
    assert_eq!(default_on.codes, vec![503]);
    assert!(
        route(&r, "default/virtualservice/retries/2")
            .retry
            .is_none()
    );
}

#[test]
fn each_invalid_field_drops_its_rule_with_a_precise_message() {
    let cases: &[(&str, &str)] = &[
        (
            "retries: {attempts: 2, retryOn: \"5xx,5xxx\"}",
            "http[0].retries.retryOn: unknown condition \"5xxx\"",
        ),
        (
            "retries: {attempts: -1}",
            "http[0].retries.attempts: -1 is negative or too large",
        ),
        (
            "retries: {attempts: 1, perTryTimeout: soon}",
            "http[0].retries.perTryTimeout: invalid duration \"soon\"",
        ),
        (
            "timeout: \"10\"",
            "http[0].timeout: invalid duration \"10\"",
        ),
        (
            "fault: {abort: {httpStatus: 700}}",
            "http[0].fault.abort.httpStatus: 700 is not between 200 and 599",
        ),
        (
            "fault: {abort: {grpcStatus: NOPE}}",
            "http[0].fault.abort.grpcStatus: unknown gRPC status NOPE",
        ),
        (
            "fault: {abort: {percentage: {value: 10}}}",
            "http[0].fault.abort: one of httpStatus, grpcStatus is required",
        ),
        (
            "fault: {delay: {percentage: {value: 120}, fixedDelay: 1s}}",
            "http[0].fault.delay.percentage.value: 120 is not between 0 and 100",
        ),
        (
            "fault: {delay: {percentage: {value: 1}}}",
            "http[0].fault.delay.fixedDelay: required",
        ),
        (
            "fault: {}",
            "http[0].fault: one of delay, abort is required",
        ),
        (
            "match: [{uri: {exact: /a, prefix: /b}}]",
            "http[0].match[0].uri: exactly one of exact, prefix, regex may be set",
        ),
        (
            "match: [{uri: {regex: \"(\"}}]",
            "http[0].match[0].uri.regex: invalid regular expression \"(\"",
        ),
        (
            "match: [{method: {regex: \"GET|POST\"}}]",
            "http[0].match[0].method: only exact is supported",
        ),
        (
            "match: [{scheme: {exact: https}}]",
            "http[0].match[0].scheme: not supported",
        ),
        (
            "match: [{port: 70000}]",
            "http[0].match[0].port: not a port",
        ),
        (
            "corsPolicy: {unmatchedPreflights: DROP}",
            "http[0].corsPolicy.unmatchedPreflights: unknown value \"DROP\" (FORWARD or IGNORE)",
        ),
        (
            "corsPolicy: {maxAge: forever}",
            "http[0].corsPolicy.maxAge: invalid duration \"forever\"",
        ),
        (
            "mirrorPercentage: {value: 101}\n    mirror: {host: reviews}",
            "http[0].mirrorPercentage.value: 101 is not between 0 and 100",
        ),
        (
            "rewrite: {uri: relative}",
            "http[0].rewrite.uri: \"relative\" must start with '/'",
        ),
        ("delegate: {name: other}", "http[0].delegate: not supported"),
        (
            "redirect: {uri: /x}",
            "http[0]: route, redirect and directResponse are mutually exclusive",
        ),
        (
            "redirect: {redirectCode: 305}\n    rewrite: {uri: /x}",
            "http[0].redirect.redirectCode: 305 is not one of 301, 302, 303, 307, 308",
        ),
        (
            "directResponse: {status: 99}",
            "http[0].directResponse.status: 99 is not between 200 and 599",
        ),
    ];
    for (fields, want) in cases {
        // A `redirect`/`directResponse` case replaces the route so that only the field under test is wrong.
        let route_line = if fields.starts_with("redirect: {redirectCode")
            || fields.starts_with("directResponse")
        {
            ""
        } else {
            "\n    route: [{destination: {host: reviews}}]"
        };
        let http =
            format!("  - {fields}{route_line}\n  - route: [{{destination: {{host: reviews}}}}]");
        let r = compute_yaml(&vs("bad", &http));
        let s = status(&r, "virtualservice/default/bad");
        let msgs = messages(s);
        assert!(
            msgs.iter().any(|m| m.starts_with(want)),
            "{fields}: want {want:?}, got {msgs:?}"
        );
        assert!(
            !r.routes.contains_key("default/virtualservice/bad/0"),
            "{fields}: rule 0 is dropped"
        );
        assert!(
            r.routes.contains_key("default/virtualservice/bad/1"),
            "{fields}: rule 1 applies"
        );
        assert_eq!(
            cond(s, "Accepted"),
            ("True".into(), "PartiallyInvalid".into()),
            "{fields}"
        );
    }
    // Nothing valid left: Accepted=False.
    let r = compute_yaml(&vs(
        "worse",
        "  - {route: [{destination: {host: reviews}, weight: 0}, {destination: {host: reviews}, weight: 0}]}",
    ));
    let s = status(&r, "virtualservice/default/worse");
    assert_eq!(messages(s), vec!["http[0].route: the weights add up to 0"]);
    assert_eq!(cond(s, "Accepted"), ("False".into(), "Invalid".into()));
}

#[test]
fn unresolvable_backends_and_subsets_are_warnings_that_keep_the_rule() {
    let r = compute_yaml(&vs(
        "warn",
        "  - route: [{destination: {host: nope}, weight: 50}, {destination: {host: reviews, subset: v9}, weight: 50}]\n\
         \x20 - route: [{destination: {host: productpage}}]",
    ));
    let a = route(&r, "default/virtualservice/warn/0");
    assert_eq!(
        a.backends[0].invalid,
        "service nope.default.svc.cluster.local not found"
    );
    assert_eq!(a.backends[1].subset, "v9");
    let b = route(&r, "default/virtualservice/warn/1");
    assert_eq!(
        b.backends[0].invalid,
        "destination.port is required: service productpage.default.svc.cluster.local has 2 ports"
    );
    let msgs = messages(status(&r, "virtualservice/default/warn"));
    assert!(
        msgs.iter().any(|m| m.starts_with(
            "http[0].route[1].destination.subset: no DestinationRule defines subset \"v9\""
        )),
        "{msgs:?}"
    );
    assert_eq!(
        cond(status(&r, "virtualservice/default/warn"), "Accepted").1,
        "Accepted"
    );
}

#[test]
fn source_labels_resolve_to_pod_uids_in_any_namespace_or_the_source_namespace() {
    let r = compute_yaml(&vs(
        "src",
        "  - match: [{sourceLabels: {version: v1}}]\n    route: [{destination: {host: reviews}}]\n\
         \x20 - match: [{sourceLabels: {version: v1}, sourceNamespace: other}]\n    route: [{destination: {host: reviews}}]\n\
         \x20 - match: [{sourceLabels: {app: nobody}}]\n    route: [{destination: {host: reviews}}]",
    ));
    let uids = |i: usize| {
        route(&r, &format!("default/virtualservice/src/{i}")).matches[0]
            .source_workloads
            .clone()
            .unwrap()
            .uids
    };
    assert_eq!(
        uids(0),
        vec![
            "Kubernetes//Pod/default/productpage-v1",
            "Kubernetes//Pod/default/ratings-v1",
            "Kubernetes//Pod/default/reviews-v1",
            "Kubernetes//Pod/other/details-v1",
        ]
    );
    assert_eq!(uids(1), vec!["Kubernetes//Pod/other/details-v1"]);
    assert!(uids(2).is_empty(), "present and empty: no client matches");
}

#[test]
fn match_ports_become_parent_ports_and_tcp_rules_become_tcp_routes() {
    let r = compute_yaml(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ports, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{port: 9080, uri: {prefix: /}}, {port: 9081}]
    route: [{destination: {host: reviews}}]
  - match: [{port: 9080}, {uri: {exact: /x}}]
    route: [{destination: {host: reviews}}]
  tcp:
  - match: [{port: 9090}]
    route: [{destination: {host: reviews, port: {number: 9090}}, weight: 70}, {destination: {host: ratings}, weight: 30}]
"#,
    );
    let ports: Vec<u32> = route(&r, "default/virtualservice/ports/0")
        .parents
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, vec![9080, 9081]);
    assert_eq!(
        route(&r, "default/virtualservice/ports/0").matches[0]
            .path
            .as_ref()
            .unwrap()
            .r#type,
        MatchType::PathPrefix as i32
    );
    assert_eq!(
        route(&r, "default/virtualservice/ports/1").parents[0].port,
        0
    );
    let tcp = route(&r, "default/virtualservice/ports/tcp-0");
    assert_eq!(tcp.kind, RouteKind::Tcp as i32);
    assert_eq!(tcp.parents[0].port, 9090);
    let w: Vec<(u32, u32)> = tcp.backends.iter().map(|b| (b.weight, b.port)).collect();
    assert_eq!(w, vec![(70, 9090), (30, 9080)]);
    let msgs = messages(status(&r, "virtualservice/default/ports"));
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("http[0].match: matches set different ports")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("http[1].match: some matches set a port")),
        "{msgs:?}"
    );
}
