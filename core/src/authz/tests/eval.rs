//! Evaluation order, AUDIT, CUSTOM, dry-run, the target index and explanations.

use serde_json::json;

use super::{Ctx, policy};
use crate::authz::*;

fn set(policies: Vec<serde_json::Value>) -> PolicySet {
    PolicySet::new(policies.into_iter().map(policy).collect())
}

fn allow_get() -> serde_json::Value {
    json!({"name": "allow-get", "rules": [{"to": [{"methods": ["GET"]}]}]})
}

fn deny_post() -> serde_json::Value {
    json!({"name": "deny-post", "action": "DENY", "rules": [{"to": [{"methods": ["POST"]}]}]})
}

/// evaluate and explain agree, always.
fn decide<'p>(s: &'p PolicySet, req: &Request<'_>) -> Decision<'p> {
    let d = s.evaluate(req);
    assert_eq!(
        s.explain(req).decision,
        d,
        "explain disagrees with evaluate"
    );
    d
}

#[test]
fn no_policies_allow() {
    let ctx = Ctx::new();
    let s = set(vec![]);
    let d = decide(&s, &ctx.request());
    assert!(d.allowed);
    assert_eq!((d.reason, d.by), (Reason::NoAllowPolicies, None));
}

#[test]
fn allow_policies_must_match() {
    let ctx = Ctx::new();
    let s = set(vec![allow_get()]);
    let mut req = ctx.request();
    let d = decide(&s, &req);
    assert!(d.allowed);
    assert_eq!(d.reason, Reason::AllowMatched);
    assert_eq!(d.by.map(|b| b.name), Some("foo/allow-get"));
    assert_eq!(d.rule, Some(0));
    req.method = "POST";
    let d = decide(&s, &req);
    assert!(!d.allowed);
    assert_eq!((d.reason, d.by), (Reason::NoAllowMatched, None));
}

#[test]
fn deny_wins_over_allow() {
    let ctx = Ctx::new();
    let s = set(vec![
        json!({"name": "allow-all", "rules": [{}]}),
        deny_post(),
    ]);
    let mut req = ctx.request();
    assert!(decide(&s, &req).allowed);
    req.method = "POST";
    let d = decide(&s, &req);
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::DenyMatched);
    assert_eq!(
        d.by.map(|b| (b.name, b.action)),
        Some(("foo/deny-post", Action::Deny))
    );
}

#[test]
fn deny_only_allows_the_rest() {
    let ctx = Ctx::new();
    let s = set(vec![deny_post()]);
    let d = decide(&s, &ctx.request());
    assert!(d.allowed);
    assert_eq!(d.reason, Reason::NoAllowPolicies);
}

#[test]
fn empty_rules_match_nothing_and_an_empty_rule_everything() {
    let ctx = Ctx::new();
    // ALLOW with no rules: allow-nothing.
    let s = set(vec![json!({"name": "allow-nothing"})]);
    let d = decide(&s, &ctx.request());
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::NoAllowMatched);
    // DENY with no rules: denies nothing.
    assert!(
        decide(
            &set(vec![json!({"name": "d", "action": "DENY"})]),
            &ctx.request()
        )
        .allowed
    );
    // DENY with `rules: [{}]`: deny-all.
    let s = set(vec![
        json!({"name": "deny-all", "action": "DENY", "rules": [{}]}),
    ]);
    let d = decide(&s, &ctx.request());
    assert!(!d.allowed);
    assert_eq!(d.rule, Some(0));
}

#[test]
fn custom_is_asked_first_and_reported() {
    let ctx = Ctx::new();
    let s = set(vec![
        json!({"name": "ext", "action": "CUSTOM", "provider": {"name": "opa", "service": "opa.foo.svc.cluster.local", "port": 9191, "grpc": true},
               "rules": [{"to": [{"paths": ["/info*"]}]}]}),
        deny_post(),
    ]);
    let mut req = ctx.request();
    let d = decide(&s, &req);
    assert!(d.allowed);
    let c = d
        .custom
        .map(|c| (c.policy.name, c.rule, c.provider.name.as_str()));
    assert_eq!(c, Some(("foo/ext", 0, "opa")));
    // CUSTOM does not hide a DENY; the waypoint asks the provider, then applies `allowed`.
    req.method = "POST";
    let d = decide(&s, &req);
    assert!(!d.allowed && d.custom.is_some());
    req.path = "/other";
    assert!(decide(&s, &req).custom.is_none());
}

#[test]
fn audit_is_reported_and_never_decides() {
    let ctx = Ctx::new();
    let s = set(vec![
        json!({"name": "audit-get", "action": "AUDIT", "rules": [{"to": [{"methods": ["GET"]}]}]}),
        json!({"name": "audit-post", "action": "AUDIT", "rules": [{"to": [{"methods": ["POST"]}]}]}),
    ]);
    let d = decide(&s, &ctx.request());
    assert!(d.allowed);
    assert_eq!(d.reason, Reason::NoAllowPolicies);
    assert_eq!(
        d.audited.iter().map(|a| a.name).collect::<Vec<_>>(),
        ["foo/audit-get"]
    );
}

#[test]
fn dry_run_is_reported_and_never_enforced() {
    let ctx = Ctx::new();
    let mut req = ctx.request();
    let dry_deny = json!({"name": "dry-deny", "action": "DENY", "dryRun": true, "rules": [{"to": [{"methods": ["POST"]}]}]});
    let dry_allow =
        json!({"name": "dry-allow", "dryRun": true, "rules": [{"to": [{"paths": ["/data"]}]}]});
    let s = set(vec![dry_deny, dry_allow]);
    // Dry-run ALLOW applies and does not match: would deny, but allowed.
    let d = decide(&s, &req);
    assert!(d.allowed && d.dry_run_would_deny && d.dry_run_by.is_none());
    req.path = "/data";
    let d = decide(&s, &req);
    assert!(d.allowed && !d.dry_run_would_deny);
    req.method = "POST";
    let d = decide(&s, &req);
    assert!(d.allowed && d.dry_run_would_deny);
    assert_eq!(d.dry_run_by.map(|p| p.name), Some("foo/dry-deny"));
    // An enforced ALLOW next to a dry-run DENY still decides alone.
    let s = set(vec![
        allow_get(),
        json!({"name": "dry-deny", "action": "DENY", "dryRun": true, "rules": [{}]}),
    ]);
    let d = decide(&s, &ctx.request());
    assert!(d.allowed && d.dry_run_would_deny);
    assert_eq!(d.by.map(|b| b.name), Some("foo/allow-get"));
}

#[test]
fn targets_select_policies() {
    let ctx = Ctx::new();
    let deny_all = |name: &str, target: serde_json::Value| json!({"name": name, "action": "DENY", "rules": [{}], "targets": [target]});
    let cases = [
        (json!({"kind": "GATEWAY", "name": "waypoint"}), true),
        (
            json!({"kind": "GATEWAY", "name": "waypoint", "namespace": "bar"}),
            false,
        ),
        (json!({"kind": "GATEWAY", "name": "other"}), false),
        (
            json!({"kind": "GATEWAY_CLASS", "name": "istio-waypoint"}),
            true,
        ),
        (
            json!({"kind": "GATEWAY_CLASS", "name": "other-class"}),
            false,
        ),
        (
            json!({"kind": "SERVICE", "name": "httpbin.foo.svc.cluster.local"}),
            true,
        ),
        (
            json!({"kind": "SERVICE", "name": "httpbin.foo.svc.cluster.local", "port": 8000}),
            true,
        ),
        (
            json!({"kind": "SERVICE", "name": "httpbin.foo.svc.cluster.local", "port": 9000}),
            false,
        ),
        (
            json!({"kind": "SERVICE", "name": "other.foo.svc.cluster.local"}),
            false,
        ),
    ];
    for (target, applies) in cases {
        let s = set(vec![deny_all("d", target.clone())]);
        assert_eq!(!decide(&s, &ctx.request()).allowed, applies, "{target}");
    }
    // A request to no service sees only the gateway and class policies.
    let s = set(vec![deny_all(
        "d",
        json!({"kind": "SERVICE", "name": "httpbin.foo.svc.cluster.local"}),
    )]);
    let mut req = ctx.request();
    req.service = None;
    assert!(decide(&s, &req).allowed);
}

#[test]
fn a_policy_with_several_matching_targets_is_visited_once() {
    let ctx = Ctx::new();
    let s = set(vec![
        json!({"name": "audit", "action": "AUDIT", "rules": [{}], "targets": [
        {"kind": "GATEWAY", "name": "waypoint"},
        {"kind": "SERVICE", "name": "httpbin.foo.svc.cluster.local"},
        {"kind": "GATEWAY_CLASS", "name": "istio-waypoint"}]}),
    ]);
    let d = decide(&s, &ctx.request());
    assert_eq!(d.audited.len(), 1);
    assert_eq!(s.explain(&ctx.request()).policies.len(), 1);
    let r = ctx.request();
    assert_eq!(
        s.for_request(r.gateway, r.gateway_class, r.service, 8000)
            .count(),
        1
    );
}

#[test]
fn a_request_visits_only_its_targets_policies() {
    let ctx = Ctx::new();
    let mut policies: Vec<Policy> = (0..1000)
        .map(|i| {
            let action = ["ALLOW", "DENY", "AUDIT"][i % 3];
            policy(json!({
                "name": format!("p{i}"), "action": action,
                "targets": [{"kind": "SERVICE", "name": format!("svc-{i}.foo.svc.cluster.local")}],
                "rules": [{"to": [{"paths": ["/admin*"]}]}, {"from": [{"namespaces": ["other"]}]}],
            }))
        })
        .collect();
    policies.push(policy(json!({"name": "gw-deny", "action": "DENY",
        "targets": [{"kind": "GATEWAY", "name": "waypoint"}], "rules": [{"to": [{"methods": ["TRACE"]}]}]})));
    let s = PolicySet::new(policies);
    assert_eq!(s.len(), 1001);
    let mut req = ctx.request();
    for (svc, want) in [
        ("svc-7.foo.svc.cluster.local", 2),
        ("svc-999.foo.svc.cluster.local", 2),
        ("nope", 1),
    ] {
        req.service = Some(svc);
        let mut visited = Vec::new();
        let d = s.decide(&req, |p| {
            visited.push(p.name.as_str());
            p.first_match(&req)
        });
        assert_eq!(visited.len(), want, "{svc}: {visited:?}");
        assert!(visited.contains(&"foo/gw-deny"));
        assert_eq!(d, s.evaluate(&req));
    }
    // svc-7 has an ALLOW policy (7 % 3 == 1 is DENY; 999 % 3 == 0 is ALLOW) that does not match GET /info.
    req.service = Some("svc-999.foo.svc.cluster.local");
    assert!(!s.evaluate(&req).allowed);
    req.service = Some("svc-7.foo.svc.cluster.local");
    assert!(s.evaluate(&req).allowed);
}

#[test]
fn explanation_text_names_the_failing_field() {
    let ctx = Ctx::new();
    let s = set(vec![allow_get(), deny_post()]);
    let mut req = ctx.request();
    req.method = "POST";
    let e = s.explain(&req);
    assert_eq!(
        e.to_string(),
        "decision: DENY: DENY foo/deny-post rule 0\n\
         foo/deny-post (DENY): rule 0 matched\n  rule 0: matched\n\
         foo/allow-get (ALLOW): no rule matched\n  rule 0: to[0].operation.methods: \"POST\" not in [\"GET\"]\n"
    );
}

#[test]
fn explanation_of_or_lists_and_conditions() {
    let ctx = Ctx::new();
    let s = set(vec![json!({"name": "allow", "rules": [
        {"from": [{"namespaces": ["bar"]}, {"notPrincipals": ["*/sa/sleep"]}]},
        {"when": [{"key": "request.headers[x-user]", "values": ["alice"]}]},
        {"when": [{"key": "request.auth.claims[groups]", "notValues": ["ops"]}]},
        {"to": [{"hosts": ["other.foo"]}]},
    ]})]);
    let req = ctx.request();
    let e = s.explain(&req);
    let reasons: Vec<_> = e.policies[0]
        .rules
        .iter()
        .map(|r| r.reason.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        reasons,
        [
            "from[0].source.namespaces: \"foo\" not in [\"bar\"]; \
             from[1].source.notPrincipals: \"cluster.local/ns/foo/sa/sleep\" matches \"*/sa/sleep\"",
            "when[0] request.headers[x-user]: \"bob\" not in [\"alice\"]",
            "when[0] request.auth.claims[groups]: [\"dev\", \"ops\"] matches notValues [\"ops\"]",
            "to[0].operation.hosts: \"HTTPBin.foo:8000\" not in [\"other.foo\"]",
        ]
    );
    assert!(!e.decision.allowed);
    assert!(
        e.to_string()
            .starts_with("decision: DENY: ALLOW policies apply, none matched\n")
    );
}

#[test]
fn explanation_serializes_to_json() {
    let ctx = Ctx::new();
    let s = set(vec![allow_get(), json!({"name": "empty"})]);
    let e = s.explain(&ctx.request());
    let v = match serde_json::to_value(&e) {
        Ok(v) => v,
        Err(err) => panic!("{err}"),
    };
    assert_eq!(v["decision"]["allowed"], json!(true));
    assert_eq!(v["decision"]["reason"], json!("allow_matched"));
    assert_eq!(
        v["decision"]["by"],
        json!({"name": "foo/allow-get", "action": "ALLOW"})
    );
    assert_eq!(v["policies"][0]["name"], json!("foo/allow-get"));
    assert_eq!(
        v["policies"][0]["rules"][0],
        json!({"index": 0, "matched": true})
    );
    assert_eq!(v["policies"][1]["matchedRule"], json!(null));
    assert!(
        e.to_string()
            .contains("foo/empty (ALLOW): no rules, matches nothing\n")
    );
}

#[test]
fn explain_lists_dry_run_custom_and_audit_too() {
    let ctx = Ctx::new();
    let s = set(vec![
        json!({"name": "a", "action": "AUDIT", "dryRun": true, "rules": [{}]}),
        json!({"name": "c", "action": "CUSTOM", "provider": {"name": "x"}, "dryRun": true, "rules": [{}]}),
    ]);
    let d = decide(&s, &ctx.request());
    assert!(d.custom.is_none() && d.audited.is_empty() && !d.dry_run_would_deny);
    let e = s.explain(&ctx.request());
    let names: Vec<_> = e.policies.iter().map(|p| (p.name, p.dry_run)).collect();
    assert_eq!(names, [("foo/a", true), ("foo/c", true)]);
}
