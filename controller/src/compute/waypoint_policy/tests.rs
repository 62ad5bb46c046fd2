//! Whole-computation tests of the waypoint policies over the `waypoint-policies` golden mesh: targets and their
//! status, the fail-closed rules, providers from the mesh config, and scopes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ambit_proto::waypoint::{authorization_policy::Action, policy_target};
use serde_json::Value;

use crate::compute::test_support::compute_text;
use crate::compute::{ComputeConfig, Resources};

const MESH: &str = include_str!("../../../tests/golden/waypoint-policies/in/mesh.yaml");

/// The golden mesh (without its policies) plus `extra`.
fn compute_yaml(extra: &str) -> Resources {
    compute_text(&format!("{MESH}\n---\n{extra}"), &ComputeConfig::default())
}

/// `(status, reason, message)` of the one condition of `key`'s status.
fn cond(r: &Resources, key: &str) -> (String, String, String) {
    let c = &r
        .status
        .get(key)
        .unwrap_or_else(|| panic!("no status {key}"))["conditions"][0];
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    (s("status"), s("reason"), s("message"))
}

fn ap(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}\n"
    )
}

const ON_REVIEWS: &str = "  targetRefs: [{kind: Service, group: \"\", name: reviews}]";

#[test]
fn target_outcomes_have_istios_reasons() {
    let cases = [
        (ON_REVIEWS, "True", "Accepted", "bound to default/waypoint"),
        (
            "  targetRefs: [{kind: Service, group: \"\", name: productpage}]",
            "False",
            "AncestorNotBound",
            "Service default/productpage is not bound to a waypoint",
        ),
        (
            "  targetRefs: [{kind: Service, name: nope}]",
            "False",
            "TargetNotFound",
            "Service default/nope was not found",
        ),
        (
            "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: nope}]",
            "False",
            "TargetNotFound",
            "Gateway default/nope was not found",
        ),
        (
            "  targetRefs: [{kind: Deployment, group: apps, name: x}]",
            "False",
            "Invalid",
            "targetRefs[0]: targetRef must be to one of Gateway (gateway.networking.k8s.io), Service (core), \
             ServiceEntry (networking.istio.io) or GatewayClass (gateway.networking.k8s.io) but was apps/Deployment",
        ),
        (
            "  targetRefs: [{kind: Service, name: reviews, namespace: other}]",
            "False",
            "Invalid",
            "targetRefs[0].namespace: must not be set; cross namespace referencing is not supported",
        ),
        (
            "  targetRef: {kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}",
            "False",
            "Invalid",
            "targetRef: a GatewayClass target is only allowed in the root namespace (istio-system), for mesh-wide \
             waypoint defaults",
        ),
        (
            "  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: se}]",
            "False",
            "TargetNotFound",
            "ServiceEntry default/se was not found",
        ),
        (
            "  targetRefs: [{kind: Service, name: reviews}]\n  selector: {matchLabels: {a: b}}",
            "False",
            "Invalid",
            "selector: only one of targetRefs or selector can be set",
        ),
        (
            "  targetRefs: [{kind: Service, name: reviews}]\n  action: DENY",
            "False",
            "Invalid",
            "rules: DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` \
             if you want it be triggered for every request",
        ),
        (
            "  targetRefs: [{kind: Service, name: reviews}]\n  provider: {name: x}\n  rules: [{}]",
            "False",
            "Invalid",
            "provider: must not be set with a non-CUSTOM action, found ALLOW",
        ),
        (
            "  targetRefs: [{kind: Service, name: reviews}]\n  action: CUSTOM\n  rules: [{}]",
            "False",
            "Invalid",
            "provider.name: must not be empty",
        ),
    ];
    for (spec, status, reason, message) in cases {
        let r = compute_yaml(&ap("p", spec));
        assert_eq!(
            cond(&r, "authorizationpolicy/default/p"),
            (status.to_owned(), reason.to_owned(), message.to_owned()),
            "{spec}"
        );
        // Only targets that resolved are sent; a policy with none is not sent at all.
        let sent = r.waypoint_authorizations.contains_key("default/p");
        assert_eq!(
            sent,
            status == "True" || reason == "AncestorNotBound",
            "{spec}"
        );
        // Never a ztunnel condition for a targetRef policy.
        assert!(!r.authorizations.contains_key("default/p"));
    }
}

#[test]
fn invalid_rules_fail_closed() {
    let rules = "  rules:\n  - to: [{operation: {methods: [GET], ports: [\"99999\"]}}]\n  - to: [{operation: {paths: [/ok]}}]";
    // ALLOW: the invalid rule is dropped (it allows less).
    let r = compute_yaml(&ap("p", &format!("{ON_REVIEWS}\n{rules}")));
    let p = &r.waypoint_authorizations["default/p"];
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].to[0].paths, vec!["/ok"]);
    let (status, reason, message) = cond(&r, "authorizationpolicy/default/p");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "PartiallyInvalid")
    );
    assert!(
        message.ends_with(
            "rules[0].to[0].operation.ports[0]: \"99999\" is not a port (1-65535); rules[0]: dropped (ALLOW fails \
             closed: it allows less)"
        ),
        "{message}"
    );
    // DENY: the rule stays without the invalid field (it denies more).
    let r = compute_yaml(&ap("p", &format!("{ON_REVIEWS}\n  action: DENY\n{rules}")));
    let p = &r.waypoint_authorizations["default/p"];
    assert_eq!(p.action, Action::Deny as i32);
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.rules[0].to[0].methods, vec!["GET"]);
    assert!(p.rules[0].to[0].ports.is_empty());
}

#[test]
fn custom_resolves_the_provider_or_denies_everything() {
    let custom = |provider: &str| {
        compute_yaml(&ap(
            "p",
            &format!(
                "{ON_REVIEWS}\n  action: CUSTOM\n  provider: {{name: {provider}}}\n  rules: [{{to: [{{operation: {{paths: [/x]}}}}]}}]"
            ),
        ))
    };
    let r = custom("sample-ext-authz-http");
    let p = &r.waypoint_authorizations["default/p"];
    assert_eq!(p.action, Action::Custom as i32);
    let prov = p.provider.as_ref().unwrap();
    assert_eq!(
        (
            prov.service.as_str(),
            prov.port,
            prov.grpc,
            prov.fail_open,
            prov.timeout_ms
        ),
        (
            "ext-authz.default.svc.cluster.local",
            8000,
            false,
            true,
            600_000
        )
    );
    assert_eq!(prov.include_request_body_bytes, 4096);
    assert_eq!(p.rules[0].to[0].paths, vec!["/x"]);

    let r = custom("unknown");
    let p = &r.waypoint_authorizations["default/p"];
    assert_eq!(p.action, Action::Deny as i32);
    assert_eq!(
        p.rules,
        vec![Default::default()],
        "one empty rule: everything"
    );
    assert!(p.provider.is_none());
    let (status, reason, message) = cond(&r, "authorizationpolicy/default/p");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Invalid"));
    assert!(
        message.contains("\"unknown\" is not an ext_authz extension provider"),
        "{message}"
    );
    assert!(
        message.contains("denies every request it targets"),
        "{message}"
    );
}

#[test]
fn provider_errors_are_reported() {
    let mesh = |providers: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |-\n    extensionProviders:\n{providers}"
        )
    };
    let cases = [
        (
            "    - {name: p, envoyExtAuthzGrpc: {service: nope.default.svc.cluster.local, port: 9000}}",
            "service: \"nope.default.svc.cluster.local\": no Service nope.default.svc.cluster.local",
        ),
        (
            "    - {name: p, envoyExtAuthzGrpc: {service: default/ext-authz, port: 0}}",
            "port: must be in the range [1, 65535], found: 0",
        ),
        (
            "    - {name: p, envoyExtAuthzHttp: {service: default/ext-authz, port: 8000, pathPrefix: check}}",
            "pathPrefix: must begin with `/`, found: \"check\"",
        ),
        (
            "    - {name: p, envoyExtAuthzHttp: {service: default/ext-authz, port: 8000, headersToUpstreamOnAllow: [\"*\"]}}",
            "headersToUpstreamOnAllow: a single wildcard (\"*\") is not supported",
        ),
    ];
    for (providers, want) in cases {
        // The golden mesh has its own `istio` ConfigMap; this one replaces it (same key, later).
        let r = compute_yaml(&format!(
            "{}\n---\n{}",
            mesh(providers),
            ap(
                "p",
                &format!(
                    "{ON_REVIEWS}\n  action: CUSTOM\n  provider: {{name: p}}\n  rules: [{{}}]"
                )
            )
        ));
        let (_, _, message) = cond(&r, "authorizationpolicy/default/p");
        assert!(
            message.contains("found errors in provider \"p\""),
            "{message}"
        );
        assert!(message.contains(want), "{want}: {message}");
    }
}

#[test]
fn selector_policies_keep_ztunnel_accepted() {
    let r = compute_yaml(&ap(
        "l4",
        "  selector: {matchLabels: {app: reviews}}\n  rules: [{to: [{operation: {methods: [GET]}}]}]",
    ));
    let (status, reason, message) = cond(&r, "authorizationpolicy/default/l4");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "UnsupportedValue")
    );
    assert!(
        message.starts_with("ztunnel does not support HTTP attributes"),
        "{message}"
    );
    let conds = &r.status["authorizationpolicy/default/l4"]["conditions"];
    assert_eq!(conds.as_array().map(Vec::len), Some(1));
    assert_eq!(conds[0]["type"], Value::from("ZtunnelAccepted"));
    assert!(r.waypoint_authorizations.is_empty());
}

#[test]
fn scopes_follow_targets() {
    let r = compute_yaml(include_str!(
        "../../../tests/golden/waypoint-policies/in/policies.yaml"
    ));
    let key = |ns: &str, gw: &str| (ns.to_owned(), gw.to_owned());
    let other = &r.waypoint_authorization_scopes[&key("other", "other-wp")];
    // Only the mesh-wide default reaches the waypoint of another namespace.
    assert_eq!(
        other.iter().collect::<Vec<_>>(),
        vec!["istio-system/waypoint-default-deny"]
    );
    let ours = &r.waypoint_authorization_scopes[&key("default", "waypoint")];
    assert!(ours.contains("default/reviews-viewer") && ours.contains("default/no-admin"));
    assert!(
        !r.request_authentication_scopes
            .contains_key(&key("other", "other-wp"))
    );
    assert!(!r.rate_limit_scopes.contains_key(&key("other", "other-wp")));
    let rl = &r.rate_limits["default/reviews"];
    assert_eq!(rl.targets[0].kind, policy_target::Kind::Route as i32);
    assert_eq!(rl.targets[0].name, "default/httproute/reviews/1");
    let by_ip = &r.rate_limits["default/reviews-by-ip"];
    assert_eq!(
        by_ip.targets[0].port, 9080,
        "sectionName: the Service port named http"
    );
    assert_eq!(by_ip.limits.len(), 1, "the invalid limit is dropped");
    let ra = &r.request_authentications["default/jwt"];
    assert_eq!(ra.jwt_rules.len(), 1, "the invalid rule is dropped");
    assert!(
        !r.request_authentications
            .contains_key("default/jwt-selector")
    );
    assert!(r.waypoint_authorizations["default/no-admin"].dry_run);
}

#[test]
fn rate_limit_targets() {
    let rl = |targets: &str| {
        compute_yaml(&format!(
            "apiVersion: ambit.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: rl, namespace: default}}\nspec:\n  targetRefs: {targets}\n  limits: [{{requests: 1}}]\n"
        ))
    };
    let cases = [
        (
            "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: reviews, sectionName: nope}]",
            (
                "False",
                "TargetNotFound",
                "HTTPRoute default/reviews has no rule named \"nope\"",
            ),
        ),
        (
            "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: nope}]",
            (
                "False",
                "TargetNotFound",
                "HTTPRoute default/nope was not found",
            ),
        ),
        (
            "[{group: \"\", kind: Service, name: reviews, sectionName: grpc}]",
            (
                "False",
                "TargetNotFound",
                "Service default/reviews has no port named \"grpc\"",
            ),
        ),
        (
            "[{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]",
            ("True", "Accepted", "bound to default/waypoint"),
        ),
        (
            "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: reviews}]",
            ("True", "Accepted", "bound to default/waypoint"),
        ),
        (
            "[{group: apps, kind: Deployment, name: x}]",
            (
                "False",
                "Invalid",
                "targetRefs[0]: must be a Gateway, HTTPRoute or GRPCRoute (gateway.networking.k8s.io) or a Service \
                 (core), not apps/Deployment",
            ),
        ),
        (
            "[]",
            (
                "False",
                "Invalid",
                "targetRefs: at least one target is required",
            ),
        ),
    ];
    for (targets, (status, reason, message)) in cases {
        let r = rl(targets);
        assert_eq!(
            cond(&r, "ratelimitpolicy/default/rl"),
            (status.to_owned(), reason.to_owned(), message.to_owned()),
            "{targets}"
        );
        assert_eq!(
            r.rate_limits.contains_key("default/rl"),
            status == "True",
            "{targets}"
        );
    }
    let r = rl("[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: reviews}]");
    assert_eq!(
        r.rate_limits["default/rl"].targets[0].name,
        "default/httproute/reviews"
    );
}

#[test]
fn route_target_names_match_rules_and_routes() {
    use super::route_matches;
    assert!(route_matches("a/httproute/r", "a/httproute/r/0"));
    assert!(route_matches("a/httproute/r/1", "a/httproute/r/1"));
    assert!(!route_matches("a/httproute/r", "a/httproute/rr/0"));
    assert!(!route_matches("a/httproute/r", "a/httproute/r/0/x"));
    assert!(!route_matches("a/httproute/r", "a/httproute/r/"));
}

/// An AuthorizationPolicy on a ServiceEntry (the egress-waypoint case, `TestWaypointAsEgressGateway`): each host a
/// SERVICE target, accepted while the entry is bound to the waypoint, which then gets the policy.
#[test]
fn service_entry_targets() {
    let se = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: egress, namespace: default, labels: {istio.io/use-waypoint: waypoint}}
spec:
  hosts: [api.example.com, www.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
  addresses: [203.0.113.7]
---
"#;
    let spec = "  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: egress}]\n  rules: [{to: [{operation: {methods: [GET]}}]}]";
    let r = compute_yaml(&format!("{se}{}", ap("egress-get", spec)));
    assert_eq!(
        cond(&r, "authorizationpolicy/default/egress-get"),
        (
            "True".to_owned(),
            "Accepted".to_owned(),
            "bound to default/waypoint".to_owned()
        )
    );
    let p = &r.waypoint_authorizations["default/egress-get"];
    let hosts: Vec<&str> = p.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(hosts, ["api.example.com", "www.example.com"]);
    assert!(
        p.targets
            .iter()
            .all(|t| t.kind == policy_target::Kind::Service as i32)
    );
    let ours = &r.waypoint_authorization_scopes[&("default".to_owned(), "waypoint".to_owned())];
    assert!(ours.contains("default/egress-get"), "{ours:?}");
    let unbound = compute_yaml(&format!(
        "{}{}",
        se.replace(", labels: {istio.io/use-waypoint: waypoint}", ""),
        ap("egress-get", spec)
    ));
    assert_eq!(
        cond(&unbound, "authorizationpolicy/default/egress-get").1,
        "AncestorNotBound"
    );
}
