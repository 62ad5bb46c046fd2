//! `hostnames` through conversion and route tables: which rule a request picks by its authority, for rules
//! attached through the waypoint Gateway (hostnames count) and through the Service (they do not).

use std::sync::Arc;

use ambit_proto::waypoint as pb;
use http::{HeaderMap, Method};

use super::*;

const SVC: &str = "svc.ns.svc.cluster.local";

fn route(name: &str, hostnames: &[&str], paths: &[&str]) -> pb::Route {
    pb::Route {
        name: format!("ns/httproute/{name}/0"),
        namespace: "ns".into(),
        route_name: name.into(),
        kind: pb::RouteKind::Http as i32,
        creation_timestamp: 1,
        parents: vec![pb::ParentRef {
            kind: pb::parent_ref::Kind::Gateway as i32,
            name: "waypoint".into(),
            namespace: "ns".into(),
            port: 0,
        }],
        hostnames: hostnames.iter().map(|h| (*h).to_owned()).collect(),
        matches: paths
            .iter()
            .map(|p| pb::RouteMatch {
                path: Some(pb::PathMatch {
                    r#type: pb::MatchType::PathPrefix as i32,
                    value: (*p).into(),
                }),
                ..Default::default()
            })
            .collect(),
        backends: vec![pb::BackendRef {
            hostname: format!("{name}.ns.svc.cluster.local"),
            port: 80,
            weight: 1,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A rule of route `name` with `hostnames`, one `PathPrefix` match per entry of `paths` (none: everything).
fn rule(name: &str, hostnames: &[&str], paths: &[&str]) -> Arc<Rule> {
    let r = route(name, hostnames, paths);
    Arc::new(rule_from_proto(&r.name, &r).expect("valid rule"))
}

fn gateway() -> Attachment {
    Attachment::Gateway {
        default: ServiceRef {
            hostname: SVC.into(),
            port: 80,
            subset: None,
        },
    }
}

/// The route a request with `authority` and `path` picks.
fn pick(table: &RouteTable, authority: &str, path: &str) -> Option<String> {
    let headers = HeaderMap::new();
    let view = RequestView {
        method: &Method::GET,
        path,
        query: None,
        headers: &headers,
        authority,
        source_namespace: None,
        source_uid: None,
    };
    table.select(&view).map(|(r, _)| r.route_name.clone())
}

#[test]
fn gateway_routes_match_by_host() {
    let table = RouteTable::new(
        &[
            rule("foo", &["foo.example.com"], &[]),
            rule("wild", &["*.example.com"], &[]),
            rule("echo", &["echo", "echo.ns"], &[]),
        ],
        gateway(),
    );
    let cases: [(&str, Option<&str>); 12] = [
        ("foo.example.com", Some("foo")),
        ("foo.example.com:8080", Some("foo")),
        ("FOO.Example.com", Some("foo")),
        ("foo.example.com.", Some("foo")),
        ("bar.example.com", Some("wild")),
        ("a.b.example.com:80", Some("wild")),
        ("echo", Some("echo")),
        ("echo.ns:80", Some("echo")),
        // The wildcard never matches the bare suffix; unclaimed hosts go to the service itself.
        ("example.com", Some(DEFAULT_RULE)),
        ("foo.example.org", Some(DEFAULT_RULE)),
        ("10.0.0.1:80", Some(DEFAULT_RULE)),
        ("", Some(DEFAULT_RULE)),
    ];
    for (authority, want) in cases {
        assert_eq!(pick(&table, authority, "/").as_deref(), want, "{authority}");
    }
}

#[test]
fn the_default_rule_forwards_to_the_service_unchanged() {
    let table = RouteTable::new(&[rule("foo", &["foo.example.com"], &[])], gateway());
    let headers = HeaderMap::new();
    let view = RequestView {
        method: &Method::POST,
        path: "/x",
        query: Some("a=b"),
        headers: &headers,
        authority: "other:80",
        source_namespace: None,
        source_uid: None,
    };
    let (r, _) = table.select(&view).expect("default rule");
    assert_eq!(r.name, DEFAULT_RULE);
    assert!(r.filters.is_empty() && r.retry.is_none() && r.direct_response.is_none());
    assert_eq!(r.backends.len(), 1);
    assert_eq!(
        r.backends[0].target,
        Ok(ServiceRef {
            hostname: SVC.into(),
            port: 80,
            subset: None
        })
    );
}

#[test]
fn the_most_specific_hostname_wins_before_path_precedence() {
    let table = RouteTable::new(
        &[
            // Longer path matches, but only through less specific hostnames.
            rule("any-host", &[], &["/a/b/c"]),
            rule("wild-short", &["*.example.com"], &["/a/b"]),
            rule("wild-long", &["*.foo.example.com"], &["/a"]),
            rule("exact", &["x.foo.example.com"], &["/a"]),
        ],
        gateway(),
    );
    let cases: [(&str, &str, Option<&str>); 8] = [
        ("x.foo.example.com", "/a/b/c", Some("exact")),
        ("y.foo.example.com", "/a/b/c", Some("wild-long")),
        ("y.example.com", "/a/b/c", Some("wild-short")),
        ("other.org", "/a/b/c", Some("any-host")),
        // The exact route does not match the path: the next most specific route that does wins.
        ("x.foo.example.com", "/z", None),
        ("y.example.com", "/a", None),
        ("y.example.com", "/a/b", Some("wild-short")),
        // A route without hostnames claims every host, so nothing falls back to the default rule.
        ("other.org", "/z", None),
    ];
    for (authority, path, want) in cases {
        assert_eq!(
            pick(&table, authority, path).as_deref(),
            want,
            "{authority} {path}"
        );
    }
}

#[test]
fn equally_specific_hosts_fall_back_to_match_precedence() {
    let table = RouteTable::new(
        &[
            rule("short", &["foo.example.com"], &["/a"]),
            rule("long", &["foo.example.com", "bar.example.com"], &["/a/b"]),
            rule("wild", &["*.example.com"], &["/a/b/c"]),
        ],
        gateway(),
    );
    assert_eq!(
        pick(&table, "foo.example.com", "/a/b/c").as_deref(),
        Some("long")
    );
    assert_eq!(
        pick(&table, "foo.example.com", "/a/x").as_deref(),
        Some("short")
    );
    assert_eq!(pick(&table, "bar.example.com", "/a/x"), None);
    assert_eq!(
        pick(&table, "baz.example.com", "/a/b/c").as_deref(),
        Some("wild")
    );
}

#[test]
fn service_attached_rules_ignore_hostnames() {
    // GAMMA: a Service parent binds by VIP, so a route's hostnames do not narrow it (MeshFrontendHostname).
    let table = RouteTable::new(
        &[
            rule("foo", &["foo.example.com"], &["/foo"]),
            rule("any", &[], &[]),
        ],
        Attachment::Service,
    );
    assert_eq!(
        pick(&table, "other.example.org", "/foo").as_deref(),
        Some("foo")
    );
    assert_eq!(
        pick(&table, "foo.example.com", "/bar").as_deref(),
        Some("any")
    );
    // And no default rule: an unmatched request is unmatched.
    let table = RouteTable::new(
        &[rule("foo", &["foo.example.com"], &["/foo"])],
        Attachment::Service,
    );
    assert_eq!(pick(&table, "other", "/bar"), None);
}

#[test]
fn conversion_validates_hostnames() {
    let r = rule("ok", &["foo.example.com", "*.example.com"], &[]);
    assert_eq!(
        r.hostnames,
        vec![
            Hostname::Exact("foo.example.com".into()),
            Hostname::Wildcard("example.com".into())
        ]
    );
    let cases = [
        (vec!["Foo.example.com"], "hostnames[0]"),
        (vec!["ok.example.com", "10.0.0.1"], "hostnames[1]"),
        (vec!["foo.*.com"], "hostnames[0]"),
        (vec!["*"], "hostnames[0]"),
        (vec![""], "hostnames[0]"),
    ];
    for (hostnames, field) in cases {
        let r = route("bad", &hostnames, &[]);
        let e = rule_from_proto(&r.name, &r).expect_err("invalid hostname");
        assert_eq!(e.field, field, "{hostnames:?}");
        assert!(e.to_string().starts_with(&format!("{field}: \"")), "{e}");
    }
    let mut tcp = route("tcp", &["foo.example.com"], &[]);
    tcp.kind = pb::RouteKind::Tcp as i32;
    let e = rule_from_proto(&tcp.name, &tcp).expect_err("tcp with hostnames");
    assert_eq!(e.field, "hostnames");
}
