//! Route matching and precedence (Gateway API HTTPRoute/GRPCRoute semantics), conversion errors, weights.

use std::sync::Arc;

use ambit_proto::waypoint as pb;
use http::{HeaderMap, HeaderValue, Method};

use super::*;

fn exact(v: &str) -> pb::PathMatch {
    pb::PathMatch {
        r#type: pb::MatchType::Exact as i32,
        value: v.into(),
    }
}
fn prefix(v: &str) -> pb::PathMatch {
    pb::PathMatch {
        r#type: pb::MatchType::PathPrefix as i32,
        value: v.into(),
    }
}
fn regex(v: &str) -> pb::PathMatch {
    pb::PathMatch {
        r#type: pb::MatchType::RegularExpression as i32,
        value: v.into(),
    }
}
fn header(n: &str, v: &str) -> pb::HeaderMatch {
    pb::HeaderMatch {
        r#type: pb::MatchType::Exact as i32,
        name: n.into(),
        value: v.into(),
    }
}

/// A rule of route `ns/name` (created at `created`), rule index `i`, with `matches`.
fn rule(name: &str, created: i64, i: u32, matches: Vec<pb::RouteMatch>) -> Arc<Rule> {
    let r = pb::Route {
        name: format!("ns/httproute/{name}/{i}"),
        namespace: "ns".into(),
        route_name: name.into(),
        kind: pb::RouteKind::Http as i32,
        rule_index: i,
        creation_timestamp: created,
        parents: vec![pb::ParentRef {
            kind: 0,
            name: "svc.ns.svc.cluster.local".into(),
            namespace: "ns".into(),
            port: 0,
        }],
        matches,
        backends: vec![pb::BackendRef {
            hostname: "svc.ns.svc.cluster.local".into(),
            port: 80,
            weight: 1,
            ..Default::default()
        }],
        ..Default::default()
    };
    Arc::new(rule_from_proto(&r.name.clone(), &r).expect("valid rule"))
}

fn m(path: Option<pb::PathMatch>) -> pb::RouteMatch {
    pb::RouteMatch {
        path,
        ..Default::default()
    }
}

/// Which rule `table` picks for a request.
fn pick(table: &RouteTable, method: &str, uri: &str, headers: &[(&str, &str)]) -> Option<String> {
    let uri: http::Uri = uri.parse().expect("uri");
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let view = RequestView {
        method: &method,
        path: uri.path(),
        query: uri.query(),
        headers: &h,
        authority: "svc.ns.svc.cluster.local:80",
        source_namespace: Some("demo"),
        source_uid: Some("client-uid"),
    };
    table.select(&view).map(|(r, _)| r.route_name.clone())
}

#[test]
fn path_matches() {
    let cases: [(PathMatch, &str, bool); 12] = [
        (PathMatch::Prefix("/foo".into()), "/foo", true),
        (PathMatch::Prefix("/foo".into()), "/foo/", true),
        (PathMatch::Prefix("/foo".into()), "/foo/bar", true),
        (PathMatch::Prefix("/foo".into()), "/foobar", false),
        (PathMatch::Prefix("/foo".into()), "/fo", false),
        (PathMatch::Prefix(String::new()), "/anything", true),
        (PathMatch::Exact("/foo".into()), "/foo", true),
        (PathMatch::Exact("/foo".into()), "/foo/", false),
        (
            PathMatch::Regex(Regex::new("/v[0-9]+/.*").expect("re")),
            "/v2/x",
            true,
        ),
        (
            PathMatch::Regex(Regex::new("/v[0-9]+").expect("re")),
            "/v2/x",
            false,
        ),
        (
            PathMatch::Regex(Regex::new("/v[0-9]+").expect("re")),
            "/x/v2",
            false,
        ),
        (
            PathMatch::Regex(Regex::new("a|/b").expect("re")),
            "/b",
            true,
        ),
    ];
    for (pm, path, want) in cases {
        assert_eq!(pm.matches(path), want, "{pm:?} {path}");
    }
}

#[test]
fn precedence_between_routes_and_matches() {
    // Each route is named after what makes it win; all attach to the same service.
    let table = RouteTable::new(
        &[
            rule("catch-all", 1, 0, vec![]),
            rule("prefix-short", 1, 0, vec![m(Some(prefix("/a")))]),
            rule("prefix-long", 5, 0, vec![m(Some(prefix("/a/b")))]),
            rule("exact", 9, 0, vec![m(Some(exact("/a/b")))]),
            rule("regex", 1, 0, vec![m(Some(regex("/a/b/.*")))]),
            rule(
                "method",
                3,
                0,
                vec![pb::RouteMatch {
                    path: Some(prefix("/a")),
                    method: "POST".into(),
                    ..Default::default()
                }],
            ),
            rule(
                "headers-1",
                3,
                0,
                vec![pb::RouteMatch {
                    path: Some(prefix("/h")),
                    headers: vec![header("x", "1")],
                    ..Default::default()
                }],
            ),
            rule(
                "headers-2",
                4,
                0,
                vec![pb::RouteMatch {
                    path: Some(prefix("/h")),
                    headers: vec![header("x", "1"), header("y", "2")],
                    ..Default::default()
                }],
            ),
            rule(
                "query",
                3,
                0,
                vec![pb::RouteMatch {
                    path: Some(prefix("/q")),
                    query_params: vec![header("v", "two")],
                    ..Default::default()
                }],
            ),
        ],
        Attachment::Service,
    );
    let cases = [
        ("GET", "/a/b", vec![], "exact"),
        ("GET", "/a/b/c", vec![], "prefix-long"),
        ("GET", "/a/c", vec![], "prefix-short"),
        ("POST", "/a/c", vec![], "method"),
        ("GET", "/zzz", vec![], "catch-all"),
        ("GET", "/h", vec![("x", "1")], "headers-1"),
        ("GET", "/h", vec![("x", "1"), ("y", "2")], "headers-2"),
        ("GET", "/h", vec![("y", "2")], "catch-all"),
        ("GET", "/q?v=two", vec![], "query"),
        ("GET", "/q?w=1&v=two", vec![], "query"),
        ("GET", "/q?v=one", vec![], "catch-all"),
        ("GET", "/q?v=tw%6F", vec![], "query"),
    ];
    for (method, uri, headers, want) in cases {
        assert_eq!(
            pick(&table, method, uri, &headers).as_deref(),
            Some(want),
            "{method} {uri} {headers:?}"
        );
    }
}

#[test]
fn ties_oldest_then_name_then_rule_order() {
    let same = || vec![m(Some(prefix("/x")))];
    let older = RouteTable::new(
        &[
            rule("b-newer", 20, 0, same()),
            rule("z-older", 10, 0, same()),
        ],
        Attachment::Service,
    );
    assert_eq!(pick(&older, "GET", "/x", &[]).as_deref(), Some("z-older"));
    let by_name = RouteTable::new(
        &[rule("b", 10, 0, same()), rule("a", 10, 0, same())],
        Attachment::Service,
    );
    assert_eq!(pick(&by_name, "GET", "/x", &[]).as_deref(), Some("a"));
    let table = RouteTable::new(
        &[rule("r", 10, 1, same()), rule("r", 10, 0, same())],
        Attachment::Service,
    );
    let picked = table.select(&RequestView {
        method: &Method::GET,
        path: "/x",
        query: None,
        headers: &HeaderMap::new(),
        authority: "",
        source_namespace: None,
        source_uid: None,
    });
    assert_eq!(picked.map(|(r, _)| r.rule_index), Some(0));
}

#[test]
fn header_matching_is_case_insensitive_in_names_exact_in_values() {
    let table = RouteTable::new(
        &[rule(
            "h",
            1,
            0,
            vec![pb::RouteMatch {
                headers: vec![header("X-Version", "v2")],
                ..Default::default()
            }],
        )],
        Attachment::Service,
    );
    assert_eq!(
        pick(&table, "GET", "/", &[("x-version", "v2")]).as_deref(),
        Some("h")
    );
    assert_eq!(pick(&table, "GET", "/", &[("x-version", "V2")]), None);
    assert_eq!(
        pick(
            &table,
            "GET",
            "/",
            &[("x-version", "v1"), ("x-version", "v2")]
        )
        .as_deref(),
        Some("h")
    );
}

#[test]
fn grpc_precedence_and_matching() {
    let g = |name: &str, service: &str, method: &str| {
        let r = pb::Route {
            name: format!("ns/grpcroute/{name}/0"),
            namespace: "ns".into(),
            route_name: name.into(),
            kind: pb::RouteKind::Grpc as i32,
            parents: vec![pb::ParentRef {
                name: "svc".into(),
                ..Default::default()
            }],
            matches: vec![pb::RouteMatch {
                grpc_service: service.into(),
                grpc_method: method.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        Arc::new(rule_from_proto(&r.name.clone(), &r).expect("rule"))
    };
    let table = RouteTable::new(
        &[
            g("any", "", ""),
            g("service", "pkg.Echo", ""),
            g("method-only", "", "Ping"),
            g("both", "pkg.Echo", "Ping"),
        ],
        Attachment::Service,
    );
    assert_eq!(
        pick(&table, "POST", "/pkg.Echo/Ping", &[]).as_deref(),
        Some("both")
    );
    assert_eq!(
        pick(&table, "POST", "/pkg.Echo/Other", &[]).as_deref(),
        Some("service")
    );
    assert_eq!(
        pick(&table, "POST", "/pkg.Other/Ping", &[]).as_deref(),
        Some("method-only")
    );
    assert_eq!(pick(&table, "POST", "/x.Y/Z", &[]).as_deref(), Some("any"));
    // A rule without matches matches every method; a path that is not /service/method matches nothing.
    assert_eq!(pick(&table, "POST", "/", &[]), None);
}

#[test]
fn conversion_errors_name_the_field() {
    let base = || pb::Route {
        name: "ns/httproute/r/0".into(),
        parents: vec![pb::ParentRef {
            name: "svc".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let cases: Vec<(pb::Route, &str)> = vec![
        (
            pb::Route {
                parents: vec![],
                ..base()
            },
            "parents: a rule needs at least one parent",
        ),
        (
            pb::Route {
                matches: vec![m(Some(regex("(")))],
                ..base()
            },
            "matches[0].path: invalid regular expression",
        ),
        (
            pb::Route {
                matches: vec![m(Some(prefix("no-slash")))],
                ..base()
            },
            "matches[0].path: path \"no-slash\" must start with '/'",
        ),
        (
            pb::Route {
                matches: vec![pb::RouteMatch {
                    headers: vec![header("bad name", "x")],
                    ..Default::default()
                }],
                ..base()
            },
            "matches[0].headers[0]: invalid header name",
        ),
        (
            pb::Route {
                matches: vec![pb::RouteMatch {
                    method: "GE T".into(),
                    ..Default::default()
                }],
                ..base()
            },
            "matches[0].method: invalid method",
        ),
        (
            pb::Route {
                filters: vec![pb::Filter::default()],
                ..base()
            },
            "filters[0]: a filter sets exactly one of its fields",
        ),
        (
            pb::Route {
                filters: vec![pb::Filter {
                    request_redirect: Some(pb::RequestRedirect {
                        status_code: 200,
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..base()
            },
            "filters[0].statusCode: 200 is not a redirect status",
        ),
        (
            pb::Route {
                filters: vec![
                    pb::Filter {
                        request_redirect: Some(pb::RequestRedirect::default()),
                        ..Default::default()
                    },
                    pb::Filter {
                        url_rewrite: Some(pb::UrlRewrite::default()),
                        ..Default::default()
                    },
                ],
                ..base()
            },
            "filters: at most one of RequestRedirect and URLRewrite",
        ),
        (
            pb::Route {
                backends: vec![pb::BackendRef {
                    hostname: "a".into(),
                    port: 70000,
                    ..Default::default()
                }],
                ..base()
            },
            "backends[0].port: port 70000 out of range",
        ),
        (
            pb::Route {
                timeouts: Some(pb::Timeouts {
                    request_ms: 10,
                    backend_request_ms: 20,
                }),
                ..base()
            },
            "timeouts.backendRequest: must not be longer than timeouts.request",
        ),
        (
            pb::Route { kind: 7, ..base() },
            "kind: unknown route kind 7",
        ),
        (
            pb::Route {
                kind: pb::RouteKind::Tcp as i32,
                matches: vec![m(None)],
                ..base()
            },
            "matches: a TCP rule has no matches or filters",
        ),
    ];
    for (route, want) in cases {
        let got = rule_from_proto("x", &route).expect_err(want).to_string();
        assert!(got.starts_with(want), "got {got:?}, want {want:?}");
    }
    // An unresolvable backend is not an error: requests that pick it get 500.
    let r = pb::Route {
        backends: vec![pb::BackendRef {
            invalid: "service ns/gone not found".into(),
            weight: 1,
            ..Default::default()
        }],
        ..base()
    };
    let rule = rule_from_proto("x", &r).expect("converts");
    assert_eq!(
        rule.backends[0].target,
        Err("service ns/gone not found".to_owned())
    );
}

#[test]
fn weighted_choice() {
    let weights = [80u32, 0, 20];
    // Exhaustive over every roll: exactly the weights' shares.
    let mut counts = [0u32; 3];
    for roll in 0..100 {
        let i = pick_weighted(&weights, |w| *w, |_| roll).expect("some");
        counts[i] += 1;
    }
    assert_eq!(counts, [80, 0, 20]);
    assert_eq!(pick_weighted(&[0u32, 0], |w| *w, |_| 0), None);
    assert_eq!(pick_weighted::<u32>(&[], |w| *w, |_| 0), None);
    // An out-of-range roll is clamped, never panics.
    assert_eq!(pick_weighted(&[1u32, 1], |w| *w, |_| 99), Some(1));
}

#[test]
fn attachment() {
    let r = rule("r", 1, 0, vec![]);
    assert_eq!(
        r.attaches_to("svc.ns.svc.cluster.local", 80, ("ns", "waypoint")),
        Some(true)
    );
    assert_eq!(
        r.attaches_to("other.ns.svc.cluster.local", 80, ("ns", "waypoint")),
        None
    );
    let gw = pb::Route {
        name: "ns/httproute/g/0".into(),
        parents: vec![pb::ParentRef {
            kind: pb::parent_ref::Kind::Gateway as i32,
            name: "waypoint".into(),
            namespace: "ns".into(),
            port: 8080,
        }],
        ..Default::default()
    };
    let g = rule_from_proto("g", &gw).expect("rule");
    assert_eq!(
        g.attaches_to("any.ns.svc.cluster.local", 8080, ("ns", "waypoint")),
        Some(false)
    );
    assert_eq!(
        g.attaches_to("any.ns.svc.cluster.local", 80, ("ns", "waypoint")),
        None
    );
    assert_eq!(
        g.attaches_to("any.ns.svc.cluster.local", 8080, ("ns", "other")),
        None
    );
}

/// A VirtualService rule: like [`rule`], with `origin` VIRTUAL_SERVICE.
fn vs_rule(name: &str, created: i64, i: u32, matches: Vec<pb::RouteMatch>) -> Arc<Rule> {
    let mut r = (*rule(name, created, i, matches)).clone();
    r.origin = Origin::VirtualService;
    Arc::new(r)
}

#[test]
fn virtual_service_rules_keep_their_order() {
    // Gateway API would put the exact match first; a VirtualService's first matching entry wins.
    let table = RouteTable::new(
        &[
            vs_rule("vs", 10, 1, vec![m(Some(exact("/x")))]),
            vs_rule("vs", 10, 0, vec![m(Some(prefix("/")))]),
        ],
        Attachment::Service,
    );
    assert_eq!(
        table
            .select(&RequestView {
                method: &Method::GET,
                path: "/x",
                query: None,
                headers: &HeaderMap::new(),
                authority: "",
                source_namespace: None,
                source_uid: None,
            })
            .map(|(r, _)| r.rule_index),
        Some(0)
    );
    // The older VirtualService first; Gateway API rules before either.
    let table = RouteTable::new(
        &[
            vs_rule("new", 20, 0, vec![]),
            vs_rule("old", 10, 0, vec![]),
            rule("gw", 30, 0, vec![m(Some(exact("/only")))]),
        ],
        Attachment::Service,
    );
    assert_eq!(pick(&table, "GET", "/x", &[]).as_deref(), Some("old"));
    assert_eq!(pick(&table, "GET", "/only", &[]).as_deref(), Some("gw"));
}

#[test]
fn virtual_service_match_fields() {
    let prefix_header = pb::HeaderMatch {
        r#type: pb::MatchType::PathPrefix as i32,
        name: "end-user".into(),
        value: "jas".into(),
    };
    let rm = pb::RouteMatch {
        path: Some(exact("/Reviews")),
        headers: vec![prefix_header],
        without_headers: vec![header("x-canary", "no")],
        ignore_path_case: true,
        source_namespace: "demo".into(),
        ..Default::default()
    };
    let table = RouteTable::new(&[vs_rule("vs", 1, 0, vec![rm])], Attachment::Service);
    let hit = |path: &str, h: &[(&str, &str)]| pick(&table, "GET", path, h).is_some();
    assert!(hit("/reviews", &[("end-user", "jason")]));
    assert!(hit("/REVIEWS", &[("end-user", "jasmine")]));
    assert!(!hit("/reviews", &[("end-user", "bob")]));
    assert!(!hit(
        "/reviews",
        &[("end-user", "jason"), ("x-canary", "no")]
    ));
    assert!(hit(
        "/reviews",
        &[("end-user", "jason"), ("x-canary", "yes")]
    ));

    // Source namespace and workloads (pick() sends namespace "demo", uid "client-uid").
    let by_source = |ns: &str, uids: Option<Vec<&str>>| {
        let rm = pb::RouteMatch {
            source_namespace: ns.into(),
            source_workloads: uids.map(|u| pb::WorkloadSet {
                uids: u.into_iter().map(String::from).collect(),
            }),
            ..Default::default()
        };
        let t = RouteTable::new(&[vs_rule("vs", 1, 0, vec![rm])], Attachment::Service);
        pick(&t, "GET", "/", &[]).is_some()
    };
    assert!(by_source("demo", None));
    assert!(!by_source("other", None));
    assert!(by_source("", Some(vec!["client-uid"])));
    assert!(
        !by_source("", Some(vec![])),
        "present and empty selects no client"
    );
    assert!(!by_source("", Some(vec!["someone-else"])));
}

#[test]
fn a_host_match_reads_the_authority_of_an_http2_request() {
    let rm = pb::RouteMatch {
        headers: vec![pb::HeaderMatch {
            r#type: pb::MatchType::RegularExpression as i32,
            name: "host".into(),
            value: "svc\\.ns\\..*".into(),
        }],
        ..Default::default()
    };
    let table = RouteTable::new(&[vs_rule("vs", 1, 0, vec![rm])], Attachment::Service);
    // pick() has no Host header and the authority "svc.ns.svc.cluster.local:80".
    assert!(pick(&table, "GET", "/", &[]).is_some());
    assert!(pick(&table, "GET", "/", &[("host", "other")]).is_none());
}
