//! Conversion errors and every field, wildcard form and `when` key, as tables.

mod eval;

use std::net::IpAddr;

use ambit_proto::waypoint as pb;
use http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::*;

/// A proto policy from its JSON form; `name`, `namespace` and a Service target are filled in when absent.
pub(super) fn proto(mut v: Value) -> pb::AuthorizationPolicy {
    if let Some(o) = v.as_object_mut() {
        o.entry("name").or_insert(json!("p"));
        o.entry("namespace").or_insert(json!("foo"));
        o.entry("targets")
            .or_insert(json!([{"kind": "SERVICE", "name": "httpbin.foo.svc.cluster.local"}]));
    }
    match serde_json::from_value(v) {
        Ok(p) => p,
        Err(e) => panic!("bad test policy: {e}"),
    }
}

pub(super) fn policy(v: Value) -> Policy {
    match Policy::from_proto(&proto(v)) {
        Ok(p) => p,
        Err(e) => panic!("policy rejected: {e}"),
    }
}

/// What the base request borrows.
pub(super) struct Ctx {
    pub headers: HeaderMap,
    pub claims: Value,
}

impl Ctx {
    pub fn new() -> Self {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("bob"));
        headers.insert("user-agent", HeaderValue::from_static("Mozilla/5.0"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let claims = json!({
            "iss": "https://issuer.example", "sub": "alice", "aud": ["aud-1", "aud-2"], "azp": "client-1",
            "groups": ["dev", "ops"], "nested": {"level": {"role": "admin"}}, "admin": true, "n": 42,
            "scope": "read"
        });
        Ctx { headers, claims }
    }

    /// `sleep` in `foo` calling `GET httpbin.foo:8000/info/x?q=1` with a JWT for alice.
    pub fn request(&self) -> Request<'_> {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        Request {
            gateway: ("foo", "waypoint"),
            gateway_class: "istio-waypoint",
            service: Some("httpbin.foo.svc.cluster.local"),
            source_principal: Some("spiffe://cluster.local/ns/foo/sa/sleep"),
            source_namespace: None,
            source_ip: ip("10.0.0.1"),
            remote_ip: ip("192.168.1.1"),
            destination_ip: ip("10.0.1.1"),
            destination_port: 8000,
            host: "HTTPBin.foo:8000",
            method: "GET",
            path: "/info/x?q=1",
            headers: &self.headers,
            sni: Some("httpbin.foo.svc.cluster.local"),
            auth: Some(RequestAuth {
                principal: "https://issuer.example/alice",
                claims: &self.claims,
            }),
        }
    }
}

type Edit = for<'a> fn(&mut Request<'a>);

fn same(_: &mut Request<'_>) {}
fn plaintext(r: &mut Request<'_>) {
    r.source_principal = None;
}
fn no_jwt(r: &mut Request<'_>) {
    r.auth = None;
}
fn post(r: &mut Request<'_>) {
    r.method = "POST";
}

/// Whether a policy with this one rule matches the base request after `edit`, with the same answer from the
/// quiet and the recording matcher.
fn rule_matches(rule: Value, edit: Edit) -> bool {
    let p = policy(json!({"rules": [rule]}));
    let ctx = Ctx::new();
    let mut req = ctx.request();
    edit(&mut req);
    let quiet = p.first_match(&req).is_some();
    let recorded = explain::PolicyExplanation::of(&p, &req)
        .matched_rule
        .is_some();
    assert_eq!(quiet, recorded, "quiet and recording matchers disagree");
    quiet
}

/// `table![name, rule, edit, matches; ...]`: one case a line.
macro_rules! table {
    ($($name:literal, $rule:expr, $edit:expr, $want:expr);* $(;)?) => {
        check(&[$(($name, $rule, $edit as Edit, $want)),*])
    };
}

fn check(cases: &[(&str, Value, Edit, bool)]) {
    for (name, rule, edit, want) in cases {
        assert_eq!(
            rule_matches(rule.clone(), *edit),
            *want,
            "case {name}: {rule}"
        );
    }
}

#[test]
fn source_fields_and_not_forms() {
    table![
        "principal exact", json!({"from": [{"principals": ["cluster.local/ns/foo/sa/sleep"]}]}), same, true;
        "principal with spiffe://", json!({"from": [{"principals": ["spiffe://cluster.local/ns/foo/sa/sleep"]}]}), same, true;
        "principal other", json!({"from": [{"principals": ["cluster.local/ns/foo/sa/other"]}]}), same, false;
        "principal prefix", json!({"from": [{"principals": ["cluster.local/ns/foo/*"]}]}), same, true;
        "principal suffix", json!({"from": [{"principals": ["*/sa/sleep"]}]}), same, true;
        "principal presence", json!({"from": [{"principals": ["*"]}]}), same, true;
        "principal presence, plaintext", json!({"from": [{"principals": ["*"]}]}), plaintext, false;
        "notPrincipals hit", json!({"from": [{"notPrincipals": ["*/sa/sleep"]}]}), same, false;
        "notPrincipals miss", json!({"from": [{"notPrincipals": ["*/sa/other"]}]}), same, true;
        "notPrincipals *, plaintext", json!({"from": [{"notPrincipals": ["*"]}]}), plaintext, true;
        "requestPrincipals exact", json!({"from": [{"requestPrincipals": ["https://issuer.example/alice"]}]}), same, true;
        "requestPrincipals prefix", json!({"from": [{"requestPrincipals": ["https://issuer.example/*"]}]}), same, true;
        "requestPrincipals *, no token", json!({"from": [{"requestPrincipals": ["*"]}]}), no_jwt, false;
        "notRequestPrincipals *", json!({"from": [{"notRequestPrincipals": ["*"]}]}), same, false;
        "notRequestPrincipals *, no token", json!({"from": [{"notRequestPrincipals": ["*"]}]}), no_jwt, true;
        "namespaces exact", json!({"from": [{"namespaces": ["foo"]}]}), same, true;
        "namespaces other", json!({"from": [{"namespaces": ["bar"]}]}), same, false;
        "namespaces prefix", json!({"from": [{"namespaces": ["f*"]}]}), same, true;
        "namespaces, plaintext", json!({"from": [{"namespaces": ["*"]}]}), plaintext, false;
        "notNamespaces hit", json!({"from": [{"notNamespaces": ["foo"]}]}), same, false;
        "notNamespaces miss", json!({"from": [{"notNamespaces": ["bar"]}]}), same, true;
        "serviceAccounts ns/sa", json!({"from": [{"serviceAccounts": ["foo/sleep"]}]}), same, true;
        "serviceAccounts bare (policy ns)", json!({"from": [{"serviceAccounts": ["sleep"]}]}), same, true;
        "serviceAccounts other ns", json!({"from": [{"serviceAccounts": ["bar/sleep"]}]}), same, false;
        "notServiceAccounts hit", json!({"from": [{"notServiceAccounts": ["foo/sleep"]}]}), same, false;
        "notServiceAccounts, plaintext", json!({"from": [{"notServiceAccounts": ["foo/sleep"]}]}), plaintext, true;
        "ipBlocks cidr", json!({"from": [{"ipBlocks": ["10.0.0.0/24"]}]}), same, true;
        "ipBlocks address", json!({"from": [{"ipBlocks": ["10.0.0.1"]}]}), same, true;
        "ipBlocks miss", json!({"from": [{"ipBlocks": ["10.0.9.0/24"]}]}), same, false;
        "ipBlocks is not remote", json!({"from": [{"ipBlocks": ["192.168.1.1"]}]}), same, false;
        "notIpBlocks hit", json!({"from": [{"notIpBlocks": ["10.0.0.0/8"]}]}), same, false;
        "notIpBlocks miss", json!({"from": [{"notIpBlocks": ["172.16.0.0/12"]}]}), same, true;
        "remoteIpBlocks", json!({"from": [{"remoteIpBlocks": ["192.168.0.0/16"]}]}), same, true;
        "remoteIpBlocks is not source", json!({"from": [{"remoteIpBlocks": ["10.0.0.1"]}]}), same, false;
        "notRemoteIpBlocks hit", json!({"from": [{"notRemoteIpBlocks": ["192.168.1.1"]}]}), same, false;
        "notRemoteIpBlocks miss", json!({"from": [{"notRemoteIpBlocks": ["10.0.0.0/8"]}]}), same, true;
        "fields ANDed", json!({"from": [{"namespaces": ["foo"], "ipBlocks": ["10.9.0.0/16"]}]}), same, false;
        "values ORed", json!({"from": [{"namespaces": ["bar", "foo"]}]}), same, true;
        "sources ORed", json!({"from": [{"namespaces": ["bar"]}, {"principals": ["*"]}]}), same, true;
    ];
}

#[test]
fn operation_fields_and_not_forms() {
    table![
        "hosts, port ignored, any case", json!({"to": [{"hosts": ["httpbin.foo"]}]}), same, true;
        "hosts other", json!({"to": [{"hosts": ["other.foo"]}]}), same, false;
        "hosts suffix", json!({"to": [{"hosts": ["*.FOO"]}]}), same, true;
        "hosts prefix", json!({"to": [{"hosts": ["httpbin.*"]}]}), same, true;
        "hosts with port wildcard", json!({"to": [{"hosts": ["httpbin.foo:*"]}]}), same, true;
        "hosts with other port", json!({"to": [{"hosts": ["httpbin.foo:9000"]}]}), same, false;
        "hosts presence", json!({"to": [{"hosts": ["*"]}]}), same, true;
        "notHosts hit", json!({"to": [{"notHosts": ["HTTPBIN.foo"]}]}), same, false;
        "notHosts miss", json!({"to": [{"notHosts": ["other"]}]}), same, true;
        "ports", json!({"to": [{"ports": ["8000"]}]}), same, true;
        "ports miss", json!({"to": [{"ports": ["80"]}]}), same, false;
        "notPorts hit", json!({"to": [{"notPorts": ["8000"]}]}), same, false;
        "notPorts miss", json!({"to": [{"notPorts": ["80", "443"]}]}), same, true;
        "methods", json!({"to": [{"methods": ["GET", "HEAD"]}]}), same, true;
        "methods are case-sensitive", json!({"to": [{"methods": ["get"]}]}), same, false;
        "methods POST", json!({"to": [{"methods": ["GET"]}]}), post, false;
        "notMethods hit", json!({"to": [{"notMethods": ["GET"]}]}), same, false;
        "notMethods miss", json!({"to": [{"notMethods": ["GET"]}]}), post, true;
        "paths exact ignores query", json!({"to": [{"paths": ["/info/x"]}]}), same, true;
        "paths exact with query never", json!({"to": [{"paths": ["/info/x?q=1"]}]}), same, false;
        "paths prefix", json!({"to": [{"paths": ["/info*"]}]}), same, true;
        "paths suffix", json!({"to": [{"paths": ["*/x"]}]}), same, true;
        "paths presence", json!({"to": [{"paths": ["*"]}]}), same, true;
        "paths are case-sensitive", json!({"to": [{"paths": ["/INFO/x"]}]}), same, false;
        "paths template {*}", json!({"to": [{"paths": ["/info/{*}"]}]}), same, true;
        "paths template {*} one segment", json!({"to": [{"paths": ["/{*}"]}]}), same, false;
        "paths template {**}", json!({"to": [{"paths": ["/{**}"]}]}), same, true;
        "paths template literal miss", json!({"to": [{"paths": ["/data/{**}"]}]}), same, false;
        "notPaths hit", json!({"to": [{"notPaths": ["/info*"]}]}), same, false;
        "notPaths miss", json!({"to": [{"notPaths": ["/admin*"]}]}), same, true;
        "operations ORed", json!({"to": [{"methods": ["POST"]}, {"paths": ["/info*"]}]}), same, true;
        "fields ANDed", json!({"to": [{"methods": ["GET"], "paths": ["/data"]}]}), same, false;
    ];
}

#[test]
fn when_keys() {
    let w = |key: &str, values: Value| json!({"when": [{"key": key, "values": values}]});
    let wn = |key: &str, values: Value| json!({"when": [{"key": key, "notValues": values}]});
    table![
        "header exact", w("request.headers[x-user]", json!(["bob"])), same, true;
        "header name any case", w("request.headers[X-User]", json!(["bob"])), same, true;
        "header prefix", w("request.headers[User-Agent]", json!(["Mozilla/*"])), same, true;
        "header absent", w("request.headers[x-none]", json!(["*"])), same, false;
        "header absent, notValues", wn("request.headers[x-none]", json!(["*"])), same, true;
        "header repeated, joined", w("request.headers[x-multi]", json!(["a,b"])), same, true;
        "header notValues hit", wn("request.headers[x-user]", json!(["b*"])), same, false;
        "auth.principal", w("request.auth.principal", json!(["https://issuer.example/alice"])), same, true;
        "auth.principal, no token", w("request.auth.principal", json!(["*"])), no_jwt, false;
        "auth.audiences any", w("request.auth.audiences", json!(["aud-2"])), same, true;
        "auth.audiences miss", w("request.auth.audiences", json!(["aud-3"])), same, false;
        "auth.presenter", w("request.auth.presenter", json!(["client-*"])), same, true;
        "claims string", w("request.auth.claims[iss]", json!(["https://issuer.example"])), same, true;
        "claims list any element", w("request.auth.claims[groups]", json!(["ops"])), same, true;
        "claims list miss", w("request.auth.claims[groups]", json!(["admin"])), same, false;
        "claims list notValues", wn("request.auth.claims[groups]", json!(["dev"])), same, false;
        "claims nested", w("request.auth.claims[nested][level][role]", json!(["admin"])), same, true;
        "claims nested too deep", w("request.auth.claims[nested][level][role][x]", json!(["*"])), same, false;
        "claims bool as JSON", w("request.auth.claims[admin]", json!(["true"])), same, true;
        "claims number as JSON", w("request.auth.claims[n]", json!(["42"])), same, true;
        "claims absent", w("request.auth.claims[missing]", json!(["*"])), same, false;
        "claims, no token", w("request.auth.claims[iss]", json!(["*"])), no_jwt, false;
        "source.ip", w("source.ip", json!(["10.0.0.0/16"])), same, true;
        "source.ip miss", w("source.ip", json!(["10.1.0.1"])), same, false;
        "source.ip notValues", wn("source.ip", json!(["10.0.0.1"])), same, false;
        "remote.ip", w("remote.ip", json!(["192.168.1.1"])), same, true;
        "destination.ip", w("destination.ip", json!(["10.0.1.0/24"])), same, true;
        "destination.ip miss", w("destination.ip", json!(["10.0.2.0/24"])), same, false;
        "destination.port", w("destination.port", json!(["8000"])), same, true;
        "destination.port notValues", wn("destination.port", json!(["8000"])), same, false;
        "source.namespace", w("source.namespace", json!(["foo"])), same, true;
        "source.namespace, plaintext", w("source.namespace", json!(["foo"])), plaintext, false;
        "source.principal", w("source.principal", json!(["cluster.local/ns/foo/sa/sleep"])), same, true;
        "source.principal suffix", w("source.principal", json!(["*sa/other"])), same, false;
        "connection.sni", w("connection.sni", json!(["*.foo.svc.cluster.local"])), same, true;
        "values and notValues", json!({"when": [{"key": "request.headers[x-user]", "values": ["*"], "notValues": ["bob"]}]}), same, false;
        "conditions ANDed", json!({"when": [{"key": "source.namespace", "values": ["foo"]}, {"key": "destination.port", "values": ["9"]}]}), same, false;
    ];
}

#[test]
fn empty_rule_matches_everything() {
    assert!(rule_matches(json!({}), same));
    assert!(rule_matches(json!({}), plaintext));
}

#[test]
fn conversion_errors_name_the_field() {
    let cases = [
        (
            json!({"rules": [{"to": [{"ports": ["80"]}, {"ports": ["http"]}]}]}),
            r#"rules[0].to[1].operation.ports[0]: "http" is not a port"#,
        ),
        (
            json!({"rules": [{"when": [{"key": "experimental.envoy.filters.x", "values": ["a"]}]}]}),
            r#"rules[0].when[0].key: "experimental.envoy.filters.x" is not supported"#,
        ),
        (
            json!({"rules": [{"when": [{"key": "request.host", "values": ["a"]}]}]}),
            r#"rules[0].when[0].key: unknown key "request.host""#,
        ),
        (
            json!({"rules": [{}, {"from": [{"ipBlocks": ["10.0.0.0/33"]}]}]}),
            r#"rules[1].from[0].source.ipBlocks[0]: "10.0.0.0/33" is not a CIDR or IP address"#,
        ),
        (
            json!({"rules": [{"when": [{"key": "source.ip", "notValues": ["nope"]}]}]}),
            r#"rules[0].when[0].notValues[0]: "nope" is not a CIDR or IP address"#,
        ),
        (
            json!({"rules": [{"when": [{"key": "destination.port", "values": ["70000"]}]}]}),
            r#"rules[0].when[0].values[0]: "70000" is not a port"#,
        ),
        (
            json!({"rules": [{"when": [{"key": "request.headers[x]"}]}]}),
            "rules[0].when[0]: needs values or notValues",
        ),
        (
            json!({"rules": [{"when": [{"key": "request.auth.claims", "values": ["a"]}]}]}),
            r#"rules[0].when[0].key: "request.auth.claims": the form is request.auth.claims[<name>] (nested: [a][b])"#,
        ),
        (
            json!({"rules": [{"when": [{"key": "request.headers[bad header]", "values": ["a"]}]}]}),
            r#"rules[0].when[0].key: "bad header" is not a header name"#,
        ),
        (
            json!({"rules": [{"from": [{}]}]}),
            "rules[0].from[0].source: must not be empty",
        ),
        (
            json!({"rules": [{"to": [{"methods": [""]}]}]}),
            "rules[0].to[0].operation.methods[0]: empty value",
        ),
        (
            json!({"rules": [{"to": [{"paths": ["/a/{**}/b"]}]}]}),
            r#"rules[0].to[0].operation.paths[0]: "/a/{**}/b": {**} must be the last segment"#,
        ),
        (
            json!({"rules": [{"from": [{"serviceAccounts": ["a/b/c"]}]}]}),
            r#"rules[0].from[0].source.serviceAccounts[0]: "a/b/c" is not a service account (<namespace>/<name>)"#,
        ),
        (
            json!({"action": "CUSTOM", "rules": [{}]}),
            "provider: a CUSTOM policy needs a provider",
        ),
        (
            json!({"targets": [{"kind": "ROUTE", "name": "foo/HTTPRoute/r"}]}),
            "targets[0].kind: ROUTE targets are for rate limits only",
        ),
        (
            json!({"targets": []}),
            "targets: a waypoint policy needs at least one target",
        ),
    ];
    for (v, want) in cases {
        match Policy::from_proto(&proto(v.clone())) {
            Ok(_) => panic!("accepted {v}"),
            Err(e) => assert_eq!(e.to_string(), want, "{v}"),
        }
    }
    let mut bad = proto(json!({}));
    bad.action = 9;
    assert_eq!(
        Policy::from_proto(&bad).map_err(|e| e.to_string()),
        Err("action: unknown action 9".to_owned())
    );
}

#[test]
fn conversion_keeps_names_and_targets() {
    let p = policy(json!({
        "name": "allow-get", "namespace": "foo", "action": "AUDIT", "dryRun": true,
        "targets": [
            {"kind": "GATEWAY", "name": "waypoint"},
            {"kind": "SERVICE", "name": "a.foo.svc.cluster.local", "port": 8080},
            {"kind": "GATEWAY_CLASS", "name": "istio-waypoint", "namespace": "istio-system"}],
    }));
    assert_eq!(p.name, "foo/allow-get");
    assert_eq!(p.action, Action::Audit);
    assert!(p.dry_run && p.rules.is_empty());
    assert_eq!(
        p.targets,
        vec![
            Target::Gateway {
                namespace: "foo".into(),
                name: "waypoint".into(),
                port: 0
            },
            Target::Service {
                hostname: "a.foo.svc.cluster.local".into(),
                port: 8080
            },
            Target::GatewayClass {
                name: "istio-waypoint".into(),
                port: 0
            },
        ]
    );
    assert_eq!(policy(json!({"name": "foo/x"})).name, "foo/x");
}

#[test]
fn request_attributes_from_the_principal() {
    let ctx = Ctx::new();
    let mut r = ctx.request();
    assert_eq!(r.principal(), Some("cluster.local/ns/foo/sa/sleep"));
    assert_eq!(r.namespace(), Some("foo"));
    assert_eq!(r.service_account(), Some(("foo", "sleep")));
    r.source_principal = Some("cluster.local/ns/bar/sa/x");
    assert_eq!(r.namespace(), Some("bar"));
    r.source_principal = Some("spiffe://weird");
    assert_eq!((r.namespace(), r.service_account()), (None, None));
    r.source_namespace = Some("given");
    assert_eq!(r.namespace(), Some("given"));
    assert_eq!(
        RequestAuth::principal_of(&ctx.claims).as_deref(),
        Some("https://issuer.example/alice")
    );
    assert_eq!(RequestAuth::principal_of(&json!({"iss": "i"})), None);
}

#[test]
fn hosts_ipv6_and_odd_authorities() {
    let m = HostMatch::parse("[::1]");
    assert!(m.matches("[::1]:8080") && m.matches("[::1]"));
    let m = HostMatch::parse("*.example.com");
    assert!(m.matches("A.Example.COM") && !m.matches("example.org"));
    // A short value never panics on slicing.
    assert!(!HostMatch::parse("*.very-long-suffix").matches("x"));
    assert!(!HostMatch::parse("very-long-prefix.*").matches("x"));
}
