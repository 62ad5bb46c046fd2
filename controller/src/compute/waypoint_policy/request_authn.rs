//! RequestAuthentication (`security.istio.io` v1/v1beta1) → `ambit.waypoint.RequestAuthentication`
//! (`<ns>/<name>`).
//!
//! Only `targetRef(s)` attach one to a waypoint (spec §2.5, Istio's `waypoint-jwt.yaml.tmpl`): a `selector`, even
//! one matching waypoint pods, and a namespace-wide policy are ignored, and the status says so
//! (`WaypointAccepted=False, TargetNotFound`); `selector` together with `targetRefs` is `Invalid` (istiod's
//! `validateOneOfSelectorType`). Targets resolve as for AuthorizationPolicy ([`super::targets`]).
//!
//! Each `jwtRules` entry is validated (istiod's `validateJwtRule`, stricter where the waypoint needs it) and
//! dropped when invalid, which fails closed: tokens of that issuer are then rejected (401), not accepted
//! unchecked. Messages carry the path: `jwtRules[0].issuer: required`; `jwtRules[0].jwks: not valid JSON (…)` or
//! `must be a JSON Web Key Set (an object with a "keys" array)`; `jwtRules[0].jwksUri: "ftp://x" must be an
//! http(s) URL or a file:// path`; neither `jwks` nor `jwksUri` (OpenID discovery from the issuer is not
//! supported); empty audiences, parameter and cookie names; header names (`fromHeaders[k].name`,
//! `outputPayloadToHeader`, `outputClaimToHeaders[k].header`) that are not HTTP header names; an empty claim.
//! Fields the schema has no room for (`timeout`, ...) are reported as ignored.

use ambit_proto::waypoint::{self as pb};

use super::authz::Converted;
use super::targets::{TargetOutcome, istio_refs, istio_target};
use super::{Ctx, invalid_condition, reason, waypoint_condition};
use crate::sources::RequestAuthentication;
use crate::sources::types::JwtRuleSpec;

pub fn convert(
    ctx: &Ctx<'_>,
    ns: &str,
    name: &str,
    ra: &RequestAuthentication,
) -> Converted<pb::RequestAuthentication> {
    let spec = &ra.spec;
    let refs = istio_refs(spec.target_ref.as_ref(), &spec.target_refs);
    if refs.is_empty() {
        let what = if spec.selector.is_some() {
            "selector: ignored by waypoints"
        } else {
            "no targetRefs"
        };
        return Converted {
            policy: None,
            condition: super::super::status::condition(
                super::WAYPOINT_ACCEPTED,
                false,
                reason::TARGET_NOT_FOUND,
                &format!(
                    "{what}: a waypoint applies a RequestAuthentication only through targetRefs (a Gateway or Service), as in Istio; no waypoint applies this policy"
                ),
            ),
        };
    }
    if spec.selector.is_some() {
        return Converted {
            policy: None,
            condition: invalid_condition(&[
                "selector: only one of targetRefs or selector can be set".to_owned(),
            ]),
        };
    }
    let outcomes: Vec<TargetOutcome> = refs
        .iter()
        .map(|(path, t)| istio_target(ctx, ns, path, t))
        .collect();
    let targets: Vec<pb::PolicyTarget> = outcomes.iter().flat_map(|o| o.targets.clone()).collect();
    let mut problems = Vec::new();
    let mut rules = Vec::new();
    for (i, r) in spec.jwt_rules.iter().enumerate() {
        let path = format!("jwtRules[{i}]");
        let mut errors = Vec::new();
        let rule = jwt_rule(r, &path, &mut errors, &mut problems);
        if errors.is_empty() {
            rules.push(rule);
        } else {
            problems.extend(errors);
            problems.push(format!(
                "{path}: dropped (tokens from its issuer are rejected)"
            ));
        }
    }
    let condition = waypoint_condition(&outcomes, &problems);
    let policy = (!targets.is_empty()).then(|| pb::RequestAuthentication {
        name: format!("{ns}/{name}"),
        namespace: ns.to_owned(),
        targets,
        jwt_rules: rules,
    });
    Converted { policy, condition }
}

fn header_name(name: &str) -> bool {
    !name.is_empty() && http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

/// Validates a JWKS document: JSON, an object with a `keys` array.
pub fn check_jwks(jwks: &str) -> Result<(), String> {
    match serde_json::from_str::<serde_json::Value>(jwks) {
        Err(e) => Err(format!("not valid JSON ({e})")),
        Ok(v) if v.get("keys").is_some_and(serde_json::Value::is_array) => Ok(()),
        Ok(_) => Err("must be a JSON Web Key Set (an object with a \"keys\" array)".to_owned()),
    }
}

fn check_jwks_uri(uri: &str) -> Result<(), String> {
    let ok = ["https://", "http://"].iter().any(|p| {
        uri.strip_prefix(p)
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
    }) || uri
        .strip_prefix("file://")
        .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{uri:?} must be an http(s) URL or a file:// path (file:///path/to/jwks.json)"
        ))
    }
}

/// One rule: blocking problems go to `errors`, notes (ignored fields) to `notes`.
fn jwt_rule(
    r: &JwtRuleSpec,
    path: &str,
    errors: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> pb::JwtRule {
    if r.issuer.is_empty() {
        errors.push(format!("{path}.issuer: required"));
    }
    for (k, a) in r.audiences.iter().enumerate() {
        if a.is_empty() {
            errors.push(format!("{path}.audiences[{k}]: must be a non-empty string"));
        }
    }
    if !r.jwks.is_empty()
        && let Err(e) = check_jwks(&r.jwks)
    {
        errors.push(format!("{path}.jwks: {e}"));
    }
    if !r.jwks_uri.is_empty()
        && let Err(e) = check_jwks_uri(&r.jwks_uri)
    {
        errors.push(format!("{path}.jwksUri: {e}"));
    }
    if r.jwks.is_empty() && r.jwks_uri.is_empty() {
        errors.push(format!(
            "{path}: one of jwks or jwksUri is required (OpenID discovery from the issuer is not supported)"
        ));
    }
    for (k, h) in r.from_headers.iter().enumerate() {
        if !header_name(&h.name) {
            errors.push(format!(
                "{path}.fromHeaders[{k}].name: {:?} is not a header name",
                h.name
            ));
        }
    }
    for (k, p) in r.from_params.iter().enumerate() {
        if p.is_empty() {
            errors.push(format!(
                "{path}.fromParams[{k}]: must be a non-empty string"
            ));
        }
    }
    for (k, c) in r.from_cookies.iter().enumerate() {
        if c.is_empty() {
            errors.push(format!(
                "{path}.fromCookies[{k}]: must be a non-empty string"
            ));
        }
    }
    if !r.output_payload_to_header.is_empty() && !header_name(&r.output_payload_to_header) {
        errors.push(format!(
            "{path}.outputPayloadToHeader: {:?} is not a header name",
            r.output_payload_to_header
        ));
    }
    for (k, c) in r.output_claim_to_headers.iter().enumerate() {
        if !header_name(&c.header) {
            errors.push(format!(
                "{path}.outputClaimToHeaders[{k}].header: {:?} is not a header name",
                c.header
            ));
        }
        if c.claim.is_empty() {
            errors.push(format!(
                "{path}.outputClaimToHeaders[{k}].claim: must be a non-empty string"
            ));
        }
    }
    for k in r.unknown.keys() {
        notes.push(format!("{path}.{k}: not supported, ignored"));
    }
    pb::JwtRule {
        issuer: r.issuer.clone(),
        audiences: r.audiences.clone(),
        jwks: r.jwks.clone(),
        jwks_uri: r.jwks_uri.clone(),
        from_headers: r
            .from_headers
            .iter()
            .map(|h| pb::JwtHeader {
                name: h.name.clone(),
                prefix: h.prefix.clone(),
            })
            .collect(),
        from_params: r.from_params.clone(),
        from_cookies: r.from_cookies.clone(),
        output_payload_to_header: r.output_payload_to_header.clone(),
        output_claim_to_headers: r
            .output_claim_to_headers
            .iter()
            .map(|c| pb::ClaimToHeader {
                header: c.header.clone(),
                claim: c.claim.clone(),
            })
            .collect(),
        forward_original_token: r.forward_original_token,
        jwks_refresh_ms: 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> (pb::JwtRule, Vec<String>, Vec<String>) {
        let r: JwtRuleSpec = serde_yaml::from_str(yaml).unwrap();
        let (mut errors, mut notes) = (Vec::new(), Vec::new());
        let out = jwt_rule(&r, "jwtRules[0]", &mut errors, &mut notes);
        (out, errors, notes)
    }

    #[test]
    fn converts_every_field() {
        let (r, errors, notes) = check(
            r#"
issuer: https://issuer.example
audiences: [a, b]
jwksUri: https://issuer.example/keys
fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
fromParams: [token]
fromCookies: [session]
outputPayloadToHeader: x-jwt-payload
outputClaimToHeaders: [{header: x-sub, claim: sub}]
forwardOriginalToken: true
timeout: 5s
"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(notes, vec!["jwtRules[0].timeout: not supported, ignored"]);
        assert_eq!(r.audiences, vec!["a", "b"]);
        assert_eq!(r.from_headers[0].prefix, "Bearer ");
        assert_eq!(r.output_claim_to_headers[0].claim, "sub");
        assert!(r.forward_original_token);
        assert_eq!(r.jwks_uri, "https://issuer.example/keys");
    }

    #[test]
    fn validation_messages() {
        let cases = [
            ("jwksUri: https://x/k", "jwtRules[0].issuer: required"),
            (
                "issuer: i\njwks: '{'",
                "jwtRules[0].jwks: not valid JSON (EOF while parsing an object at line 1 column 1)",
            ),
            (
                "issuer: i\njwks: '{\"k\": 1}'",
                "jwtRules[0].jwks: must be a JSON Web Key Set (an object with a \"keys\" array)",
            ),
            (
                "issuer: i\njwksUri: ftp://x/k",
                "jwtRules[0].jwksUri: \"ftp://x/k\" must be an http(s) URL or a file:// path (file:///path/to/jwks.json)",
            ),
            (
                "issuer: i",
                "jwtRules[0]: one of jwks or jwksUri is required (OpenID discovery from the issuer is not supported)",
            ),
            (
                "issuer: i\njwks: '{\"keys\": []}'\nfromHeaders: [{name: \"a b\"}]",
                "jwtRules[0].fromHeaders[0].name: \"a b\" is not a header name",
            ),
            (
                "issuer: i\njwks: '{\"keys\": []}'\noutputClaimToHeaders: [{header: x, claim: \"\"}]",
                "jwtRules[0].outputClaimToHeaders[0].claim: must be a non-empty string",
            ),
        ];
        for (yaml, want) in cases {
            let (_, errors, _) = check(yaml);
            assert_eq!(errors.first().map(String::as_str), Some(want), "{yaml}");
        }
        for ok in ["file:///etc/jwks.json", "http://keys.local:8080/jwks"] {
            assert_eq!(check_jwks_uri(ok), Ok(()), "{ok}");
        }
    }
}
