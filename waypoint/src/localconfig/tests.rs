//! The local config file: what parses into which resources, what is refused and how the error names it (unknown
//! keys, bad values, a missing file), and the watcher: a broken rewrite or a deleted file keeps the last good
//! configuration and says why in a WARN, a good rewrite replaces what the file gave before and nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::state::SelfInfo;

fn path() -> PathBuf {
    PathBuf::from("/etc/waypoint/local.yaml")
}

fn ok(text: &str) -> Vec<(String, Resource)> {
    parse(&path(), text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn err(text: &str) -> LocalConfigError {
    match parse(&path(), text) {
        Ok(r) => panic!("accepted ({} resources): {text}", r.len()),
        Err(e) => e,
    }
}

fn kind(r: &Resource) -> &'static str {
    match r {
        Resource::Service(_) => "service",
        Resource::Workload(_) => "workload",
        Resource::Rule(_) => "rule",
        Resource::Policy(_) => "policy",
        Resource::RateLimit(_) => "ratelimit",
        Resource::RequestAuthn(_) => "requestauthn",
        Resource::Authz(_) => "authz",
    }
}

fn names(rs: &[(String, Resource)]) -> Vec<(String, &'static str)> {
    rs.iter().map(|(n, r)| (n.clone(), kind(r))).collect()
}

const JWKS: &str = r#"'{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}'"#;

/// One of each section, with map keys that are data (workload `services`, subset `labels`) and enums by name.
fn full() -> String {
    format!(
        r#"
services:
- {{name: reviews, namespace: demo, hostname: reviews.demo.svc.cluster.local, vips: [10.96.0.20, "fd00::20"],
   ports: [{{port: 9080, targetPort: 18080, protocol: http1}}, {{port: 9090}}],
   waypoint: {{namespace: demo, hostname: waypoint.demo.svc.cluster.local}}}}
workloads:
- {{uid: reviews-v1, name: reviews-v1-0, namespace: demo, serviceAccount: reviews, ips: [10.244.1.5],
   tunnel: NONE, healthy: false, locality: {{region: r1, zone: z1}},
   services: {{demo/reviews.demo.svc.cluster.local: {{9080: 18080}}}}}}
routes:
- name: demo/httproute/reviews/0
  kind: HTTP
  parents: [{{kind: SERVICE, name: reviews.demo.svc.cluster.local, port: 9080}}]
  matches: [{{path: {{type: PathPrefix, value: /v1}}, headers: [{{type: Exact, name: x-user, value: a}}]}}]
  filters: [{{requestHeaderModifier: {{set: [{{name: x-added, value: "1"}}]}}}}]
  backends: [{{hostname: reviews.demo.svc.cluster.local, port: 9080, weight: 1}}]
backendPolicies:
- hostname: reviews.demo.svc.cluster.local
  source: demo/reviews
  policy: {{outlierDetection: {{consecutive5xxErrors: 5}}, loadBalancer: {{kind: ROUND_ROBIN}}}}
  subsets: [{{name: v1, labels: {{version: v1, "app.kubernetes.io/name": reviews}}, workloads: {{uids: [reviews-v1]}}}}]
rateLimits:
- {{name: demo/api, targets: [{{kind: SERVICE, name: reviews.demo.svc.cluster.local}}],
   limits: [{{key: HEADER, header: x-user, requests: 3, intervalMs: 60000}}]}}
requestAuthentications:
- {{name: demo/jwt, targets: [{{kind: SERVICE, name: reviews.demo.svc.cluster.local}}],
   jwtRules: [{{issuer: "https://issuer.example", jwks: {JWKS}, fromHeaders: [{{name: x-jwt, prefix: "Bearer "}}]}}]}}
authorizationPolicies:
- {{name: demo/allow, action: ALLOW, targets: [{{kind: SERVICE, name: reviews.demo.svc.cluster.local}}],
   rules: [{{from: [{{principals: [cluster.local/ns/demo/sa/client]}}], to: [{{methods: [GET]}}],
            when: [{{key: "request.headers[x-env]", values: [prod]}}]}}]}}
"#
    )
}

#[test]
fn a_full_file_gives_one_resource_per_item_under_its_store_name() {
    let rs = ok(&full());
    assert_eq!(
        names(&rs),
        [
            ("demo/reviews.demo.svc.cluster.local".into(), "service"),
            ("reviews-v1".into(), "workload"),
            ("demo/httproute/reviews/0".into(), "rule"),
            ("reviews.demo.svc.cluster.local".into(), "policy"),
            ("ratelimit/demo/api".into(), "ratelimit"),
            ("requestauthn/demo/jwt".into(), "requestauthn"),
            ("authz/demo/allow".into(), "authz"),
        ]
    );
    let Resource::Service(s) = &rs[0].1 else {
        unreachable!()
    };
    assert_eq!(
        s.vips,
        [
            "10.96.0.20".parse::<IpAddr>().unwrap(),
            "fd00::20".parse().unwrap()
        ]
    );
    assert_eq!(
        (s.ports[0].target_port, s.ports[0].protocol),
        (18080, AppProtocol::Http1)
    );
    // Defaults: no target port (named), protocol detected.
    assert_eq!(
        (s.ports[1].target_port, s.ports[1].protocol),
        (0, AppProtocol::Unknown)
    );
    let Resource::Workload(w) = &rs[1].1 else {
        unreachable!()
    };
    assert_eq!((w.tunnel, w.healthy), (Tunnel::None, false));
    assert_eq!(
        w.identity().to_string(),
        "spiffe://cluster.local/ns/demo/sa/reviews"
    );
    assert_eq!(
        w.services["demo/reviews.demo.svc.cluster.local"],
        [(9080, 18080)]
    );
    let Resource::Policy(p) = &rs[3].1 else {
        unreachable!()
    };
    assert_eq!(
        p.subsets[0]
            .labels
            .get("app.kubernetes.io/name")
            .map(String::as_str),
        Some("reviews")
    );
}

#[test]
fn workload_defaults_are_the_meshs() {
    let rs = ok("workloads:\n- {uid: w, name: w-0, namespace: demo, ips: [10.0.0.1]}\n");
    let Resource::Workload(w) = &rs[0].1 else {
        unreachable!()
    };
    assert_eq!(
        (
            w.service_account.as_str(),
            w.trust_domain.as_str(),
            w.tunnel,
            w.healthy
        ),
        ("default", "cluster.local", Tunnel::Hbone, true)
    );
}

#[test]
fn empty_files_are_an_empty_configuration() {
    for text in [
        "",
        "\n\n",
        "  \n",
        "# nothing yet\n",
        "# a\n\n  # b\n",
        "{}\n",
        "services: []\n",
        "---\n",
        "---\n# a document marker and nothing else\n",
        "services:\n",
    ] {
        assert!(ok(text).is_empty(), "{text:?}");
    }
}

/// Every key must be known: a misspelt one would drop what it meant to set (`routes[0].backend` would leave the
/// rule without backends). The error names the key.
#[test]
fn unknown_keys_are_refused_by_name() {
    let svc = "{name: a, namespace: demo, hostname: a.demo.svc.cluster.local";
    let wl = "{uid: w, name: w-0, namespace: demo, ips: [10.0.0.1]";
    let target = "targets: [{kind: SERVICE, name: a.demo.svc.cluster.local}]";
    let cases = [
        ("servics: []\n".to_owned(), "servics"),
        ("rateLimit: []\n".to_owned(), "rateLimit"),
        (format!("services:\n- {svc}, vip: [10.0.0.1]}}\n"), "vip"),
        (
            format!("services:\n- {svc}, ports: [{{port: 80, target_port: 8080}}]}}\n"),
            "target_port",
        ),
        (
            format!("services:\n- {svc}, waypoint: {{namespace: demo, name: w}}}}\n"),
            "name",
        ),
        (format!("workloads:\n- {wl}, serviceaccount: x}}\n"), "serviceaccount"),
        (format!("workloads:\n- {wl}, locality: {{zones: z}}}}\n"), "zones"),
        (
            "routes:\n- {name: demo/httproute/a/0, parents: [{name: a.demo.svc.cluster.local}], \
             backend: [{hostname: b.demo.svc.cluster.local, port: 80}]}\n"
                .to_owned(),
            "routes[0].backend",
        ),
        (
            "routes:\n- {name: demo/httproute/a/0, matches: [{path: {type: Exact, valeu: /x}}]}\n".to_owned(),
            "routes[0].matches[0].path.valeu",
        ),
        (
            "backendPolicies:\n- {hostname: a.demo.svc.cluster.local, \
             policy: {outlierDetecton: {consecutive5xxErrors: 5}}}\n"
                .to_owned(),
            "backendPolicies[0].policy.outlierDetecton",
        ),
        (
            "backendPolicies:\n- {hostname: a.demo.svc.cluster.local, subsets: [{name: v1, label: {v: '1'}}]}\n"
                .to_owned(),
            "backendPolicies[0].subsets[0].label",
        ),
        (
            format!("rateLimits:\n- {{name: demo/r, {target}, limits: [{{requests: 1, intervalMs: 1000, bursts: 5}}]}}\n"),
            "rateLimits[0].limits[0].bursts",
        ),
        (
            format!(
                "requestAuthentications:\n- {{name: demo/j, {target}, \
                 jwtRules: [{{issuer: i, jwksURI: 'https://x/keys'}}]}}\n"
            ),
            "requestAuthentications[0].jwtRules[0].jwksURI",
        ),
        (
            format!("authorizationPolicies:\n- {{name: demo/z, action: DENY, {target}, rule: [{{}}]}}\n"),
            "authorizationPolicies[0].rule",
        ),
    ];
    for (text, key) in cases {
        let e = err(&text);
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("parse {}: ", path().display()))
                && msg.contains(&format!("`{key}`")),
            "{text}→ {msg}"
        );
        // Serde's own message for the structs the module defines, the round-trip check's for the schema's.
        if key.contains('.') {
            assert!(
                matches!(&e, LocalConfigError::UnknownField(_, k) if k == key),
                "{text}→ {e:?}"
            );
        } else {
            assert!(
                matches!(&e, LocalConfigError::Parse(..)) && msg.contains("unknown field"),
                "{text}→ {e:?}"
            );
        }
    }
}

#[test]
fn bad_values_are_refused_naming_what_is_wrong() {
    let svc = "{name: a, namespace: demo, hostname: a.demo.svc.cluster.local";
    let wl = "{uid: w, name: w-0, namespace: demo";
    let target = "targets: [{kind: SERVICE, name: a.demo.svc.cluster.local}]";
    let route = "{name: demo/httproute/a/0, parents: [{name: a.demo.svc.cluster.local}]";
    let parse_errors = [
        // Wrong types.
        ("services: {a: 1}\n".to_owned(), "invalid type"),
        (
            format!("services:\n- {svc}, vips: 10.0.0.1}}\n"),
            "invalid type",
        ),
        (
            format!("services:\n- {svc}, ports: [{{port: http}}]}}\n"),
            "invalid",
        ),
        (
            format!("workloads:\n- {wl}, ips: [10.0.0.1], healthy: maybe}}\n"),
            "invalid",
        ),
        (
            format!("workloads:\n- {wl}, ips: [10.0.0.1], services: [a]}}\n"),
            "invalid type",
        ),
        (
            format!("routes:\n- {route}, backends: {{hostname: b}}}}\n"),
            "invalid type",
        ),
        // Missing required fields.
        (
            "services:\n- {name: a, namespace: demo}\n".to_owned(),
            "missing field `hostname`",
        ),
        (format!("workloads:\n- {wl}}}\n"), "missing field `ips`"),
        // Bad addresses and ports.
        (
            format!("services:\n- {svc}, vips: [10.0.0.300]}}\n"),
            "invalid IP address",
        ),
        (
            format!("workloads:\n- {wl}, ips: [nope]}}\n"),
            "invalid IP address",
        ),
        (
            format!("workloads:\n- {wl}, ips: [10.0.0.0/24]}}\n"),
            "invalid IP address",
        ),
        (
            format!("services:\n- {svc}, ports: [{{port: 70000}}]}}\n"),
            "70000",
        ),
        (
            format!("services:\n- {svc}, ports: [{{port: -1}}]}}\n"),
            "-1",
        ),
        (
            format!("workloads:\n- {wl}, ips: [10.0.0.1], services: {{demo/a: {{80: 65536}}}}}}\n"),
            "65536",
        ),
        // Enums.
        (
            format!("services:\n- {svc}, ports: [{{port: 80, protocol: http3}}]}}\n"),
            "http3",
        ),
        (
            format!("workloads:\n- {wl}, ips: [10.0.0.1], tunnel: GRE}}\n"),
            "GRE",
        ),
        (format!("routes:\n- {route}, kind: UDP}}\n"), "UDP"),
        (
            format!("routes:\n- {route}, matches: [{{path: {{type: Glob, value: /}}}}]}}\n"),
            "Glob",
        ),
        (
            format!(
                "authorizationPolicies:\n- {{name: demo/z, action: MAYBE, {target}, rules: [{{}}]}}\n"
            ),
            "MAYBE",
        ),
        (
            format!(
                "rateLimits:\n- {{name: demo/r, {target}, limits: [{{key: COOKIE, requests: 1, intervalMs: 1}}]}}\n"
            ),
            "COOKIE",
        ),
        // Not YAML.
        ("services: [ {name: broken\n".to_owned(), "line"),
        ("\tservices: []\n".to_owned(), "cannot start any token"),
    ];
    for (text, needle) in parse_errors {
        let e = err(&text);
        let msg = e.to_string();
        assert!(
            matches!(e, LocalConfigError::Parse(..)) && msg.contains(needle),
            "{text}→ {msg}"
        );
    }
    // Values that parse but do not convert: the error names the resource and the field.
    let convert_errors = [
        (
            format!(
                "routes:\n- {route}, matches: [{{path: {{type: RegularExpression, value: '('}}}}]}}\n"
            ),
            "route demo/httproute/a/0",
            "regular expression",
        ),
        (
            "backendPolicies:\n- {hostname: a.demo.svc.cluster.local, \
             policy: {outlierDetection: {maxEjectionPercent: 500}}}\n"
                .to_owned(),
            "policy a.demo.svc.cluster.local",
            "outlierDetection",
        ),
        (
            format!(
                "rateLimits:\n- {{name: demo/r, {target}, limits: [{{requests: 0, intervalMs: 1000}}]}}\n"
            ),
            "policy demo/r",
            "limits[0].requests",
        ),
        (
            "rateLimits:\n- {name: demo/r, limits: [{requests: 1, intervalMs: 1000}]}\n".to_owned(),
            "policy demo/r",
            "targets: empty",
        ),
        (
            format!(
                "rateLimits:\n- {{name: demo/r, {target}, \
                 limits: [{{key: HEADER, header: 'x y', requests: 1, intervalMs: 1000}}]}}\n"
            ),
            "policy demo/r",
            "limits[0].header",
        ),
        (
            format!(
                "requestAuthentications:\n- {{name: demo/j, {target}, jwtRules: [{{issuer: i, jwks: '{{'}}]}}\n"
            ),
            "policy demo/j",
            "jwtRules[0].jwks",
        ),
        (
            format!(
                "requestAuthentications:\n- {{name: demo/j, {target}, jwtRules: [{{issuer: i}}]}}\n"
            ),
            "policy demo/j",
            "neither jwks nor jwksUri",
        ),
        (
            format!(
                "requestAuthentications:\n- {{name: demo/j, {target}, jwtRules: [{{issuer: i, jwksUri: 'ftp://x/k'}}]}}\n"
            ),
            "policy demo/j",
            "jwtRules[0].jwksUri",
        ),
        (
            format!(
                "authorizationPolicies:\n- {{name: demo/z, {target}, \
                 rules: [{{when: [{{key: experimental.envoy.filters.x, values: ['1']}}]}}]}}\n"
            ),
            "policy demo/z",
            "experimental.envoy.filters.x",
        ),
    ];
    for (text, resource, needle) in convert_errors {
        let e = err(&text);
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                LocalConfigError::Route(..) | LocalConfigError::Policy(..)
            ) && msg.starts_with(&format!("{}: {resource}: ", path().display()))
                && msg.contains(needle),
            "{text}→ {msg}"
        );
    }
}

/// All or nothing: one bad item refuses the whole file, good items with it included.
#[test]
fn one_bad_item_refuses_the_whole_file() {
    let text = format!(
        "{}routes:\n- {{name: demo/httproute/bad/0, matches: [{{path: {{type: RegularExpression, value: '('}}}}]}}\n",
        "services:\n- {name: a, namespace: demo, hostname: a.demo.svc.cluster.local}\n"
    );
    assert!(
        matches!(err(&text), LocalConfigError::Route(_, name, _) if name == "demo/httproute/bad/0")
    );
}

#[test]
fn a_missing_or_unreadable_file_is_a_read_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.yaml");
    let e = load(&missing).err().expect("a missing file");
    assert!(
        matches!(&e, LocalConfigError::Read(p, io) if *p == missing && io.kind() == std::io::ErrorKind::NotFound),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with(&format!("read {}: ", missing.display())),
        "{e}"
    );
    // A directory in its place.
    let e = load(dir.path()).err().expect("a directory");
    assert!(
        matches!(&e, LocalConfigError::Read(p, _) if p == dir.path()),
        "{e:?}"
    );
    // Not UTF-8.
    let binary = dir.path().join("binary.yaml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, b'\n']).unwrap();
    assert!(matches!(load(&binary), Err(LocalConfigError::Read(p, _)) if p == binary));
}

/// Records every event's level, message and fields, for the watcher's WARNs.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    fn warnings(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("WARN "))
            .cloned()
            .collect()
    }

    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

impl tracing::Subscriber for Logs {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = format!("{} ", event.metadata().level());
        event.record(
            &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                line.push_str(&format!("{}={value:?} ", field.name()));
            },
        );
        self.0.lock().unwrap().push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn store() -> Store {
    Store::new(SelfInfo {
        gateway: ("demo".into(), "waypoint".into()),
        service_hostname: "waypoint.demo.svc.cluster.local".into(),
        ip: None,
    })
}

fn service_yaml(name: &str) -> String {
    format!(
        "services:\n- {{name: {name}, namespace: demo, hostname: {name}.demo.svc.cluster.local, vips: [10.96.0.1]}}\n"
    )
}

fn has(store: &Store, name: &str) -> bool {
    store
        .load()
        .service(&format!("{name}.demo.svc.cluster.local"))
        .is_some()
}

/// Lets the watcher poll a few times (the clock is paused: this takes no real time).
async fn polls() {
    tokio::time::sleep(POLL * 4).await;
}

#[tokio::test(start_paused = true)]
async fn the_watcher_keeps_the_last_good_config_through_bad_rewrites_and_a_deleted_file() {
    let logs = Logs::default();
    let _guard = tracing::dispatcher::set_default(&tracing::Dispatch::new(logs.clone()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("waypoint.yaml");
    std::fs::write(&file, service_yaml("a")).unwrap();
    let store = store();
    store.replace_all(load(&file).unwrap());
    // A resource from xDS, which a reload of the file must leave alone.
    store.update(parse(&file, &service_yaml("from-xds")).unwrap(), vec![]);
    let (trigger, drain) = ambit_core::drain::new();
    let task = tokio::spawn(watch(file.clone(), store.clone(), drain));
    polls().await;
    assert!(logs.warnings().is_empty(), "{:?}", logs.warnings());

    let shown = file.display().to_string();
    let bad: [(&str, String, &str); 4] = [
        ("broken YAML", "services: [ {name: broken\n".into(), "parse "),
        ("an unknown key", "servces: []\n".into(), "unknown field"),
        (
            "a bad value",
            "services:\n- {name: b, namespace: demo, hostname: b.demo.svc.cluster.local, ports: [{port: 70000}]}\n"
                .into(),
            "70000",
        ),
        (
            "a resource that does not convert",
            "routes:\n- {name: demo/httproute/x/0, matches: [{path: {type: RegularExpression, value: '('}}]}\n".into(),
            "route demo/httproute/x/0",
        ),
    ];
    for (what, text, needle) in bad {
        logs.clear();
        std::fs::write(&file, &text).unwrap();
        polls().await;
        assert!(
            has(&store, "a") && !has(&store, "b"),
            "{what}: the last good config stays"
        );
        let warnings = logs.warnings();
        assert_eq!(
            warnings.len(),
            1,
            "{what}: one WARN per change: {warnings:?}"
        );
        assert!(
            warnings[0].contains("local config not applied; keeping the previous one")
                && warnings[0].contains(&shown)
                && warnings[0].contains(needle),
            "{what}: {warnings:?}"
        );
    }

    // Deleted: kept too, and the WARN names the file and says why.
    logs.clear();
    std::fs::remove_file(&file).unwrap();
    polls().await;
    assert!(has(&store, "a"), "kept after the file is deleted");
    let warnings = logs.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(&format!("read {shown}")),
        "{warnings:?}"
    );

    // Back, with new content: it replaces what the file gave (a), and what xDS gave stays.
    logs.clear();
    std::fs::write(&file, service_yaml("b")).unwrap();
    polls().await;
    assert!(
        has(&store, "b") && !has(&store, "a"),
        "the good rewrite applied"
    );
    assert!(
        has(&store, "from-xds"),
        "a reload leaves xDS resources alone"
    );
    assert!(logs.warnings().is_empty(), "{:?}", logs.warnings());
    assert!(
        logs.0
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("INFO ") && l.contains("local config reloaded")),
        "the reload is logged"
    );

    // An empty file is a good one: it removes everything the file gave.
    std::fs::write(&file, "").unwrap();
    polls().await;
    assert!(!has(&store, "b") && has(&store, "from-xds"));

    // The watcher stops on drain.
    assert!(trigger.drain(Duration::from_secs(1)).await);
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the watcher stops on drain")
        .unwrap();
}

/// Rewriting the same bytes (a touch, or an atomic rename with the same content) applies nothing again.
#[tokio::test(start_paused = true)]
async fn the_watcher_applies_only_changed_contents() {
    let logs = Logs::default();
    let _guard = tracing::dispatcher::set_default(&tracing::Dispatch::new(logs.clone()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("waypoint.yaml");
    std::fs::write(&file, service_yaml("a")).unwrap();
    let store = store();
    store.replace_all(load(&file).unwrap());
    let (trigger, drain) = ambit_core::drain::new();
    let task = tokio::spawn(watch(file.clone(), store.clone(), drain));
    let tmp = dir.path().join("tmp.yaml");
    std::fs::write(&tmp, service_yaml("a")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    polls().await;
    assert!(
        !logs
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("local config")),
        "{:?}",
        logs.0.lock().unwrap()
    );
    assert!(has(&store, "a"));
    assert!(trigger.drain(Duration::from_secs(1)).await);
    task.await.unwrap();
}
