//! AuthorizationPolicy with `targetRef(s)` → `ambit.waypoint.AuthorizationPolicy` (`<ns>/<name>`).
//!
//! Every field is carried as written (the waypoint applies Istio's wildcards: exact, `prefix*`, `*suffix`, `*`),
//! after istiod's validation (`ValidateAuthorizationPolicy`, `security.ValidateAttribute`), with the field path in
//! each message (`rules[0].when[1].key: "experimental.envoy.filters.x" is not supported`):
//!
//! * whole policy (`Invalid`, not sent): `selector` together with `targetRefs`; an unknown `action`; `provider`
//!   with an action other than CUSTOM; CUSTOM without `provider.name`; DENY or CUSTOM without rules (it would never
//!   match; `rules: [{}]` matches everything).
//! * per field: `from.source` and `to.operation` must not be empty; values must not be empty strings; `ipBlocks`,
//!   `remoteIpBlocks` and the IP keys of `when` are CIDRs or addresses; ports are 1–65535; `serviceAccounts` are
//!   `ns/name` or `name` and cannot be combined with `namespaces` or `principals`; path templates (`{*}`, `{**}`)
//!   are whole segments and `{**}` is last; `when` keys are `request.headers[<name>]`, `request.auth.principal`,
//!   `request.auth.audiences`, `request.auth.presenter`, `request.auth.claims[<claim>]...`, `source.ip`,
//!   `remote.ip`, `source.namespace`, `source.principal`, `destination.ip`, `destination.port`,
//!   `connection.sni` (`experimental.envoy.filters.*` is not supported by the waypoint), with `values` or
//!   `notValues`; CUSTOM rules cannot use identities (`namespaces`, `principals`, `serviceAccounts`,
//!   `requestPrincipals`, their `not` forms, and the `source.namespace`, `source.principal`, `request.auth.*`
//!   keys), as istiod refuses them.
//!
//! An invalid field fails closed (see [`super`]): ALLOW/AUDIT drop the rule, DENY/CUSTOM drop the field (a
//! `from`/`to` entry left empty then matches any source/operation). `istio.io/dry-run: "true"` → `dry_run`.

use ambit_proto::waypoint::{self as pb, authorization_policy::Action};
use ipnet::IpNet;
use serde_json::Value;

use super::super::authz::DRY_RUN_ANNOTATION;
use super::mesh_config::Providers;
use super::targets::{TargetOutcome, istio_refs, istio_target};
use super::{Ctx, invalid_condition, waypoint_condition};
use crate::sources::AuthorizationPolicy;
use crate::sources::types::{AuthzCondition, AuthzRule, AuthzSource};

/// One converted policy: the resource (when one is sent) and its `WaypointAccepted` condition.
pub struct Converted<T> {
    pub policy: Option<T>,
    pub condition: Value,
}

/// Converts a policy; `None` when it has no `targetRef(s)` (ztunnel's, [`super::super::authz`]).
pub fn convert(
    ctx: &Ctx<'_>,
    providers: &Providers,
    ns: &str,
    name: &str,
    ap: &AuthorizationPolicy,
) -> Option<Converted<pb::AuthorizationPolicy>> {
    let spec = &ap.spec;
    let refs = istio_refs(spec.target_ref.as_ref(), &spec.target_refs);
    if refs.is_empty() {
        return None;
    }
    let mut fatal = Vec::new();
    if spec.selector.is_some() {
        fatal.push("selector: only one of targetRefs or selector can be set".to_owned());
    }
    let action_name = spec.action.as_deref().unwrap_or("ALLOW");
    let action = match action_name {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => Action::Custom,
        other => {
            fatal.push(format!(
                "action: unknown action {other:?} (ALLOW, DENY, AUDIT or CUSTOM)"
            ));
            Action::Allow
        }
    };
    let provider_name = spec
        .provider
        .as_ref()
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or_default();
    if spec.provider.is_some() && action != Action::Custom {
        fatal.push(format!(
            "provider: must not be set with a non-CUSTOM action, found {action_name}"
        ));
    }
    if matches!(action, Action::Deny | Action::Custom) && spec.rules.is_empty() {
        fatal.push(format!(
            "rules: {action_name} action without `rules` is meaningless as it will never be triggered, add an empty rule `{{}}` if you want it be triggered for every request"
        ));
    }
    if action == Action::Custom && provider_name.is_empty() && !spec.rules.is_empty() {
        fatal.push("provider.name: must not be empty".to_owned());
    }
    if !fatal.is_empty() {
        return Some(Converted {
            policy: None,
            condition: invalid_condition(&fatal),
        });
    }
    let outcomes: Vec<TargetOutcome> = refs
        .iter()
        .map(|(path, t)| istio_target(ctx, ns, path, t))
        .collect();
    let targets: Vec<pb::PolicyTarget> = outcomes.iter().flat_map(|o| o.targets.clone()).collect();
    let mut problems = Vec::new();
    let widen = matches!(action, Action::Deny | Action::Custom);
    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        let mut errors = Vec::new();
        let rule = convert_rule(
            r,
            &format!("rules[{i}]"),
            action == Action::Custom,
            &mut errors,
        );
        if errors.is_empty() {
            rules.push(rule);
        } else if widen {
            problems.extend(errors);
            problems.push(format!(
                "rules[{i}]: enforced without the invalid fields ({action_name} fails closed)"
            ));
            rules.push(rule);
        } else {
            problems.extend(errors);
            problems.push(format!(
                "rules[{i}]: dropped ({action_name} fails closed: it allows less)"
            ));
        }
    }
    let (mut action, mut provider, mut provider_failed) = (action, None, false);
    if action == Action::Custom {
        match providers.resolve(provider_name) {
            Ok(p) => provider = Some(p),
            Err(e) => {
                provider_failed = true;
                problems.push(format!(
                    "{e}; the policy denies every request it targets, as Istio does for a CUSTOM policy it cannot apply"
                ));
                action = Action::Deny;
                rules = vec![pb::AuthzRule::default()];
            }
        }
    }
    let mut condition = waypoint_condition(&outcomes, &problems);
    if provider_failed {
        // Enforced, but not as written: `Invalid` whatever the targets say.
        if let Some(o) = condition.as_object_mut() {
            o.insert("reason".into(), Value::from(super::reason::INVALID));
        }
    }
    let dry_run = ap
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN_ANNOTATION))
        .is_some_and(|v| v == "true");
    let policy = (!targets.is_empty()).then(|| pb::AuthorizationPolicy {
        name: format!("{ns}/{name}"),
        namespace: ns.to_owned(),
        targets,
        action: action as i32,
        rules,
        provider,
        dry_run,
    });
    Some(Converted { policy, condition })
}

/// One field's values, checked value by value; an error drops the whole field.
fn field(
    values: &[String],
    path: &str,
    check: impl Fn(&str) -> Result<(), String>,
    errors: &mut Vec<String>,
) -> Vec<String> {
    for (k, v) in values.iter().enumerate() {
        let result = if v.is_empty() {
            Err("empty value not allowed".to_owned())
        } else {
            check(v)
        };
        if let Err(e) = result {
            errors.push(format!("{path}[{k}]: {e}"));
            return Vec::new();
        }
    }
    values.to_vec()
}

fn any(_: &str) -> Result<(), String> {
    Ok(())
}

fn cidr(v: &str) -> Result<(), String> {
    if v.parse::<IpNet>().is_ok() || v.parse::<std::net::IpAddr>().is_ok() {
        Ok(())
    } else {
        Err(format!("{v:?} is not a CIDR or IP address"))
    }
}

fn port(v: &str) -> Result<(), String> {
    match v.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("{v:?} is not a port (1-65535)")),
    }
}

fn service_account(v: &str) -> Result<(), String> {
    let ok = match v.split_once('/') {
        Some((ns, sa)) => !ns.is_empty() && !sa.is_empty() && !sa.contains('/'),
        None => true,
    };
    if ok && !v.contains('*') {
        Ok(())
    } else {
        Err(format!(
            "{v:?} must be <namespace>/<service account> or <service account>, without wildcards"
        ))
    }
}

/// Istio's path templates: `{*}` (one segment) and `{**}` (the rest, last only), as whole segments; a path with
/// templates has no other wildcard.
fn path_template(v: &str) -> Result<(), String> {
    if !v.contains(['{', '}']) {
        return Ok(());
    }
    let segments: Vec<&str> = v.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, s) in segments.iter().enumerate() {
        match *s {
            "{*}" => {}
            "{**}" if i == last => {}
            "{**}" => return Err(format!("{v:?}: {{**}} must be the last segment")),
            s if s.contains(['{', '}', '*']) => {
                return Err(format!(
                    "{v:?}: a template must be a whole segment, {{*}} or {{**}}"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn header_name(name: &str) -> bool {
    http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

/// A `[a][b]...` suffix as its parts (each non-empty), or `None`.
fn bracketed(mut s: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let inner = s.strip_prefix('[')?;
        let end = inner.find(']')?;
        let part = &inner[..end];
        if part.is_empty() || part.contains('[') {
            return None;
        }
        out.push(part);
        s = &inner[end + 1..];
    }
    (!out.is_empty()).then_some(out)
}

/// What kind of value a `when` key takes, or why the key is refused.
enum KeyKind {
    Ip,
    Port,
    Text,
}

fn key_kind(key: &str, custom: bool) -> Result<KeyKind, String> {
    let kind = if let Some(rest) = key.strip_prefix("request.headers") {
        match bracketed(rest).as_deref() {
            Some([name]) if header_name(name) => KeyKind::Text,
            Some([name]) => return Err(format!("{name:?} is not a header name")),
            _ => return Err(format!("{key:?}: the form is request.headers[<name>]")),
        }
    } else if let Some(rest) = key.strip_prefix("request.auth.claims") {
        if bracketed(rest).is_none() {
            return Err(format!(
                "{key:?}: the form is request.auth.claims[<claim>] (nested: [<a>][<b>])"
            ));
        }
        KeyKind::Text
    } else {
        match key {
            "request.auth.principal"
            | "request.auth.audiences"
            | "request.auth.presenter"
            | "source.namespace"
            | "source.principal"
            | "connection.sni" => KeyKind::Text,
            "source.ip" | "remote.ip" | "destination.ip" => KeyKind::Ip,
            "destination.port" => KeyKind::Port,
            k if k.starts_with("experimental.envoy.filters.") => {
                return Err(format!("{k:?} is not supported"));
            }
            k => return Err(format!("unknown key {k:?}")),
        }
    };
    if custom
        && (key == "source.namespace"
            || key == "source.principal"
            || key.starts_with("request.auth."))
    {
        return Err(format!(
            "{key:?} is currently not supported with CUSTOM action"
        ));
    }
    Ok(kind)
}

fn condition(
    c: &AuthzCondition,
    path: &str,
    custom: bool,
    errors: &mut Vec<String>,
) -> Option<pb::Condition> {
    let kind = match key_kind(&c.key, custom) {
        Ok(k) if !c.key.is_empty() => k,
        Ok(_) => {
            errors.push(format!("{path}.key: must not be empty"));
            return None;
        }
        Err(e) => {
            errors.push(format!("{path}.key: {e}"));
            return None;
        }
    };
    if c.values.is_empty() && c.not_values.is_empty() {
        errors.push(format!(
            "{path}: at least one of `values` or `notValues` must be set for key {}",
            c.key
        ));
        return None;
    }
    let check = match kind {
        KeyKind::Ip => cidr,
        KeyKind::Port => port,
        KeyKind::Text => any,
    };
    let before = errors.len();
    let values = field(&c.values, &format!("{path}.values"), check, errors);
    let not_values = field(&c.not_values, &format!("{path}.notValues"), check, errors);
    (errors.len() == before).then(|| pb::Condition {
        key: c.key.clone(),
        values,
        not_values,
    })
}

fn source(s: &AuthzSource, path: &str, custom: bool, errors: &mut Vec<String>) -> pb::Source {
    let f = |values: &[String],
             name: &str,
             check: fn(&str) -> Result<(), String>,
             errors: &mut Vec<String>| {
        if custom
            && !values.is_empty()
            && matches!(
                name,
                "principals"
                    | "notPrincipals"
                    | "requestPrincipals"
                    | "notRequestPrincipals"
                    | "namespaces"
                    | "notNamespaces"
                    | "serviceAccounts"
                    | "notServiceAccounts"
            )
        {
            errors.push(format!(
                "{path}.{name}: currently not supported with CUSTOM action"
            ));
            return Vec::new();
        }
        field(values, &format!("{path}.{name}"), check, errors)
    };
    let mut out = pb::Source {
        principals: f(&s.principals, "principals", any, errors),
        not_principals: f(&s.not_principals, "notPrincipals", any, errors),
        request_principals: f(&s.request_principals, "requestPrincipals", any, errors),
        not_request_principals: f(
            &s.not_request_principals,
            "notRequestPrincipals",
            any,
            errors,
        ),
        namespaces: f(&s.namespaces, "namespaces", any, errors),
        not_namespaces: f(&s.not_namespaces, "notNamespaces", any, errors),
        service_accounts: f(
            &s.service_accounts,
            "serviceAccounts",
            service_account,
            errors,
        ),
        not_service_accounts: f(
            &s.not_service_accounts,
            "notServiceAccounts",
            service_account,
            errors,
        ),
        ip_blocks: f(&s.ip_blocks, "ipBlocks", cidr, errors),
        not_ip_blocks: f(&s.not_ip_blocks, "notIpBlocks", cidr, errors),
        remote_ip_blocks: f(&s.remote_ip_blocks, "remoteIpBlocks", cidr, errors),
        not_remote_ip_blocks: f(&s.not_remote_ip_blocks, "notRemoteIpBlocks", cidr, errors),
    };
    let identities =
        s.principals.len() + s.not_principals.len() + s.namespaces.len() + s.not_namespaces.len();
    if identities > 0 && !(s.service_accounts.is_empty() && s.not_service_accounts.is_empty()) {
        errors.push(format!(
            "{path}.serviceAccounts: cannot set serviceAccounts with namespaces or principals"
        ));
        out.service_accounts.clear();
        out.not_service_accounts.clear();
    }
    out
}

/// One rule; problems go to `errors` (the caller decides between dropping the rule and keeping it widened).
fn convert_rule(
    r: &AuthzRule,
    path: &str,
    custom: bool,
    errors: &mut Vec<String>,
) -> pb::AuthzRule {
    let mut from = Vec::new();
    let mut any_source = false;
    for (k, f) in r.from.iter().enumerate() {
        let p = format!("{path}.from[{k}].source");
        let s = source(&f.source, &p, custom, errors);
        if f.source == AuthzSource::default() {
            errors.push(format!("{p}: must not be empty"));
        }
        any_source |= s == pb::Source::default();
        from.push(s);
    }
    if any_source {
        // An entry left empty matches any source, so the whole `from` does.
        from.clear();
    }
    let mut to = Vec::new();
    let mut any_operation = false;
    for (k, t) in r.to.iter().enumerate() {
        let p = format!("{path}.to[{k}].operation");
        let op = &t.operation;
        let o = pb::Operation {
            hosts: field(&op.hosts, &format!("{p}.hosts"), any, errors),
            not_hosts: field(&op.not_hosts, &format!("{p}.notHosts"), any, errors),
            ports: field(&op.ports, &format!("{p}.ports"), port, errors),
            not_ports: field(&op.not_ports, &format!("{p}.notPorts"), port, errors),
            methods: field(&op.methods, &format!("{p}.methods"), any, errors),
            not_methods: field(&op.not_methods, &format!("{p}.notMethods"), any, errors),
            paths: field(&op.paths, &format!("{p}.paths"), path_template, errors),
            not_paths: field(
                &op.not_paths,
                &format!("{p}.notPaths"),
                path_template,
                errors,
            ),
        };
        if *op == Default::default() {
            errors.push(format!("{p}: must not be empty"));
        }
        any_operation |= o == pb::Operation::default();
        to.push(o);
    }
    if any_operation {
        to.clear();
    }
    let when = r
        .when
        .iter()
        .enumerate()
        .filter_map(|(k, c)| condition(c, &format!("{path}.when[{k}]"), custom, errors))
        .collect();
    pb::AuthzRule { from, to, when }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn rule(yaml: &str, custom: bool) -> (pb::AuthzRule, Vec<String>) {
        let r: AuthzRule = serde_yaml::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        let out = convert_rule(&r, "rules[0]", custom, &mut errors);
        (out, errors)
    }

    #[test]
    fn every_field_is_carried() {
        let (r, errors) = rule(
            r#"
from:
- source:
    principals: [cluster.local/ns/a/sa/b]
    notPrincipals: ["*/sa/evil"]
    requestPrincipals: ["https://issuer/*"]
    notRequestPrincipals: [x]
    ipBlocks: [10.0.0.0/8]
    notIpBlocks: [10.1.2.3]
    remoteIpBlocks: ["2001:db8::/32"]
    notRemoteIpBlocks: [1.2.3.4/32]
- source: {namespaces: [a], notNamespaces: [b]}
- source: {serviceAccounts: [a/b, c], notServiceAccounts: [d/e]}
to:
- operation:
    hosts: ["*.example.com"]
    notHosts: [a.example.com]
    ports: ["8080"]
    notPorts: ["9090"]
    methods: [GET]
    notMethods: [DELETE]
    paths: ["/api/{*}/x/{**}", "/p*"]
    notPaths: ["*/admin"]
when:
- {key: "request.headers[x-user]", values: [alice]}
- {key: "request.auth.claims[groups][admin]", notValues: ["no"]}
- {key: source.ip, values: [10.0.0.1]}
- {key: destination.port, values: ["80"]}
- {key: connection.sni, values: ["*.local"]}
"#,
            false,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(r.from.len(), 3);
        assert_eq!(r.from[0].not_principals, vec!["*/sa/evil"]);
        assert_eq!(r.from[0].remote_ip_blocks, vec!["2001:db8::/32"]);
        assert_eq!(r.from[1].not_namespaces, vec!["b"]);
        assert_eq!(r.from[2].service_accounts, vec!["a/b", "c"]);
        assert_eq!(r.to[0].paths, vec!["/api/{*}/x/{**}", "/p*"]);
        assert_eq!(r.to[0].not_ports, vec!["9090"]);
        assert_eq!(r.when.len(), 5);
        assert_eq!(r.when[1].key, "request.auth.claims[groups][admin]");
        assert_eq!(r.when[1].not_values, vec!["no"]);
    }

    #[test]
    fn validation_messages_name_the_field() {
        let cases = [
            (
                "when: [{key: experimental.envoy.filters.x, values: [a]}]",
                false,
                r#"rules[0].when[0].key: "experimental.envoy.filters.x" is not supported"#,
            ),
            (
                "when: [{key: request.colour, values: [a]}]",
                false,
                r#"rules[0].when[0].key: unknown key "request.colour""#,
            ),
            (
                "when: [{key: \"request.headers[a b]\", values: [a]}]",
                false,
                r#"rules[0].when[0].key: "a b" is not a header name"#,
            ),
            (
                "when: [{key: source.ip}]",
                false,
                "rules[0].when[0]: at least one of `values` or `notValues` must be set for key source.ip",
            ),
            (
                "when: [{key: destination.port, values: [\"http\"]}]",
                false,
                r#"rules[0].when[0].values[0]: "http" is not a port (1-65535)"#,
            ),
            (
                "from: [{source: {ipBlocks: [10.0.0.0/33]}}]",
                false,
                r#"rules[0].from[0].source.ipBlocks[0]: "10.0.0.0/33" is not a CIDR or IP address"#,
            ),
            (
                "from: [{source: {}}]",
                false,
                "rules[0].from[0].source: must not be empty",
            ),
            (
                "from: [{source: {namespaces: [a], serviceAccounts: [a/b]}}]",
                false,
                "rules[0].from[0].source.serviceAccounts: cannot set serviceAccounts with namespaces or principals",
            ),
            (
                "from: [{source: {serviceAccounts: [\"a/b/c\"]}}]",
                false,
                r#"rules[0].from[0].source.serviceAccounts[0]: "a/b/c" must be <namespace>/<service account> or <service account>, without wildcards"#,
            ),
            (
                "to: [{operation: {ports: [\"0\"]}}]",
                false,
                r#"rules[0].to[0].operation.ports[0]: "0" is not a port (1-65535)"#,
            ),
            (
                "to: [{operation: {paths: [\"/{**}/x\"]}}]",
                false,
                r#"rules[0].to[0].operation.paths[0]: "/{**}/x": {**} must be the last segment"#,
            ),
            (
                "to: [{operation: {paths: [\"/a{*}\"]}}]",
                false,
                r#"rules[0].to[0].operation.paths[0]: "/a{*}": a template must be a whole segment, {*} or {**}"#,
            ),
            (
                "to: [{operation: {methods: [\"\"]}}]",
                false,
                "rules[0].to[0].operation.methods[0]: empty value not allowed",
            ),
            (
                "from: [{source: {principals: [a]}}]",
                true,
                "rules[0].from[0].source.principals: currently not supported with CUSTOM action",
            ),
            (
                "when: [{key: request.auth.principal, values: [a]}]",
                true,
                r#"rules[0].when[0].key: "request.auth.principal" is currently not supported with CUSTOM action"#,
            ),
        ];
        for (yaml, custom, want) in cases {
            let (_, errors) = rule(yaml, custom);
            assert_eq!(errors.first().map(String::as_str), Some(want), "{yaml}");
        }
    }

    #[test]
    fn invalid_fields_are_dropped_so_an_emptied_entry_matches_anything() {
        let (r, errors) = rule(
            "from: [{source: {ipBlocks: [bad]}}, {source: {namespaces: [a]}}]\nto: [{operation: {methods: [GET], ports: [x]}}]\nwhen: [{key: bad, values: [a]}, {key: source.namespace, values: [a]}]",
            false,
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        // The first source lost its only field: any source.
        assert!(r.from.is_empty());
        assert_eq!(r.to[0].methods, vec!["GET"]);
        assert!(r.to[0].ports.is_empty());
        assert_eq!(r.when.len(), 1);
        assert_eq!(r.when[0].key, "source.namespace");
    }
}
