//! `jwtRules[]` entries: the domain type and its conversion from `ambit.waypoint.JwtRule`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::waypoint as pb;
use base64::Engine;
use http::{HeaderName, HeaderValue};

use super::HeaderEdit;
use super::jwks::Jwks;
use super::token::Parsed;

/// `jwks_refresh_ms: 0`: Istio's JWKS refresh interval (`PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`, 20 minutes).
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(20 * 60);

/// A conversion error: the field's path inside the `RequestAuthentication` and what is wrong with it, e.g.
/// `jwtRules[0].issuer: empty`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for RuleError {}

/// Where a rule reads tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenLocation {
    /// A request header; the value must start with `prefix` (e.g. `Bearer `), which is stripped.
    Header { name: HeaderName, prefix: String },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

impl TokenLocation {
    /// Envoy's defaults when a rule names no location: `Authorization: Bearer <token>`, then `?access_token=`.
    pub fn defaults() -> Vec<TokenLocation> {
        vec![
            TokenLocation::Header {
                name: http::header::AUTHORIZATION,
                prefix: "Bearer ".to_string(),
            },
            TokenLocation::Param("access_token".to_string()),
        ]
    }
}

/// Where a rule's keys come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// `jwks`, parsed at conversion.
    Inline(Arc<Jwks>),
    /// `jwksUri` (`https://`, `http://` or `file://`), kept by a [`super::JwksCache`].
    Uri { uri: String, refresh: Duration },
}

impl PartialEq for KeySource {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (KeySource::Inline(a), KeySource::Inline(b)) => a == b,
            (
                KeySource::Uri {
                    uri: a,
                    refresh: ra,
                },
                KeySource::Uri {
                    uri: b,
                    refresh: rb,
                },
            ) => a == b && ra == rb,
            _ => false,
        }
    }
}

/// `outputClaimToHeaders[]`: copy a claim (nested with `.`, e.g. `user.email`) into a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimToHeader {
    pub header: HeaderName,
    pub claim: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JwtRule {
    pub issuer: String,
    /// Empty: any audience.
    pub audiences: Vec<String>,
    pub keys: KeySource,
    /// Never empty (the defaults are filled in).
    pub locations: Vec<TokenLocation>,
    pub output_payload_to_header: Option<HeaderName>,
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    pub forward_original_token: bool,
}

/// Converts every `jwtRules[]` entry of a policy; the first error names its field.
pub fn rules_from_proto(policy: &pb::RequestAuthentication) -> Result<Vec<JwtRule>, RuleError> {
    policy
        .jwt_rules
        .iter()
        .enumerate()
        .map(|(i, rule)| JwtRule::from_proto(i, rule))
        .collect()
}

impl JwtRule {
    /// Converts `jwtRules[index]`.
    pub fn from_proto(index: usize, rule: &pb::JwtRule) -> Result<JwtRule, RuleError> {
        let at = |field: &str| format!("jwtRules[{index}].{field}");
        let err = |field: &str, reason: String| RuleError {
            path: at(field),
            reason,
        };
        if rule.issuer.is_empty() {
            return Err(err("issuer", "empty".to_string()));
        }
        let keys = if !rule.jwks.is_empty() {
            let jwks = Jwks::parse(&rule.jwks).map_err(|e| err("jwks", e.to_string()))?;
            KeySource::Inline(Arc::new(jwks))
        } else if !rule.jwks_uri.is_empty() {
            let uri = rule.jwks_uri.as_str();
            let supported = ["https://", "http://", "file://"];
            if !supported
                .iter()
                .any(|scheme| uri.starts_with(scheme) && uri.len() > scheme.len())
            {
                return Err(err(
                    "jwksUri",
                    format!("{uri:?}: not an https://, http:// or file:// URI"),
                ));
            }
            let refresh = match rule.jwks_refresh_ms {
                0 => DEFAULT_JWKS_REFRESH,
                ms => Duration::from_millis(ms),
            };
            KeySource::Uri {
                uri: uri.to_string(),
                refresh,
            }
        } else {
            // Istio falls back to OpenID discovery from the issuer; the controller does that and fills `jwksUri`.
            return Err(err(
                "jwksUri",
                "neither jwks nor jwksUri is set".to_string(),
            ));
        };
        let mut locations = Vec::new();
        for (i, h) in rule.from_headers.iter().enumerate() {
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                err(
                    &format!("fromHeaders[{i}].name"),
                    format!("{:?}: not a header name", h.name),
                )
            })?;
            locations.push(TokenLocation::Header {
                name,
                prefix: h.prefix.clone(),
            });
        }
        for (i, p) in rule.from_params.iter().enumerate() {
            if p.is_empty() {
                return Err(err(&format!("fromParams[{i}]"), "empty".to_string()));
            }
            locations.push(TokenLocation::Param(p.clone()));
        }
        for (i, c) in rule.from_cookies.iter().enumerate() {
            if c.is_empty() || c.contains([';', '=', ' ']) {
                return Err(err(
                    &format!("fromCookies[{i}]"),
                    format!("{c:?}: not a cookie name"),
                ));
            }
            locations.push(TokenLocation::Cookie(c.clone()));
        }
        if locations.is_empty() {
            locations = TokenLocation::defaults();
        }
        let output_payload_to_header = match rule.output_payload_to_header.as_str() {
            "" => None,
            name => Some(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                err(
                    "outputPayloadToHeader",
                    format!("{name:?}: not a header name"),
                )
            })?),
        };
        let mut output_claim_to_headers = Vec::new();
        for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
            let header = HeaderName::from_bytes(c.header.as_bytes()).map_err(|_| {
                err(
                    &format!("outputClaimToHeaders[{i}].header"),
                    format!("{:?}: not a header name", c.header),
                )
            })?;
            if c.claim.is_empty() {
                return Err(err(
                    &format!("outputClaimToHeaders[{i}].claim"),
                    "empty".to_string(),
                ));
            }
            output_claim_to_headers.push(ClaimToHeader {
                header,
                claim: c.claim.clone(),
            });
        }
        Ok(JwtRule {
            issuer: rule.issuer.clone(),
            audiences: rule.audiences.clone(),
            keys,
            locations,
            output_payload_to_header,
            output_claim_to_headers,
            forward_original_token: rule.forward_original_token,
        })
    }

    /// The edits for a token this rule verified, found at `locations[location]`.
    pub(super) fn edits(&self, location: usize, token: &Parsed) -> Vec<HeaderEdit> {
        let mut edits = Vec::new();
        if !self.forward_original_token {
            // Envoy removes header tokens only; query and cookie tokens stay (its `removeJwt` is a no-op there).
            if let Some(TokenLocation::Header { name, .. }) = self.locations.get(location) {
                edits.push(HeaderEdit::Remove(name.clone()));
            }
        }
        if let Some(name) = &self.output_payload_to_header {
            // Envoy forwards the token's own payload segment: base64url without padding.
            if let Ok(value) = HeaderValue::from_str(&token.payload_b64) {
                edits.push(HeaderEdit::Set(name.clone(), value));
            }
        }
        for c in &self.output_claim_to_headers {
            let Some(value) = claim_header_value(&token.claims, &c.claim) else {
                continue;
            };
            if let Ok(value) = HeaderValue::from_str(&value) {
                edits.push(HeaderEdit::Set(c.header.clone(), value));
            }
        }
        edits
    }
}

/// A claim as Envoy's `claim_to_headers` writes it: strings as they are, integral numbers without a fraction,
/// booleans as `true`/`false`, objects and lists as standard base64 of their JSON; absent or null: no header.
/// `a.b` reads the nested claim `{"a": {"b": …}}` (a top-level claim literally named `a.b` wins, as Istio reads
/// `request.auth.claims`).
pub fn claim_header_value(claims: &serde_json::Value, path: &str) -> Option<String> {
    let value = lookup_claim(claims, path)?;
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
            (_, _, Some(f)) => f.to_string(),
            _ => n.to_string(),
        }),
        serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
            let json = serde_json::to_string(value).ok()?;
            Some(base64::engine::general_purpose::STANDARD.encode(json))
        }
        serde_json::Value::Null => None,
    }
}

/// A claim by name, or by a `.`-separated path into nested objects.
pub fn lookup_claim<'a>(
    claims: &'a serde_json::Value,
    path: &str,
) -> Option<&'a serde_json::Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.')
        .try_fold(claims, |v, segment| v.get(segment))
}
