//! JWT request authentication: Istio's `RequestAuthentication` as the waypoint (and `ambit authz check --jwt`)
//! enforces it, with Envoy `jwt_authn`'s semantics and wording.
//!
//! - [`JwtRule`] is one `jwtRules[]` entry, converted from `ambit.waypoint.JwtRule` ([`rules_from_proto`]).
//! - [`Jwks`] is a parsed key set (RSA, EC P-256/P-384, Ed25519); [`JwksCache`] keeps remote (`http(s)://`, through
//!   an injected [`JwksFetcher`]) and `file://` key sets fresh, keeping the last good set when a refresh fails.
//! - [`Authenticator::authenticate`] finds the tokens, verifies them and says what to do: continue without a
//!   principal ([`Outcome::NoToken`]), continue with one ([`Outcome::Authenticated`], plus [`HeaderEdit`]s), or
//!   reject ([`Outcome::Rejected`]: 401, or 403 for a disallowed audience, as Envoy answers).
//!
//! Semantics (Istio's `policy_applier.go` builds `OR{P1, P2, …, AND{OR{P1, allow_missing}, …}}` of one Envoy provider
//! per rule): no token anywhere is not an error; otherwise the request is accepted when some rule found a token at
//! its own locations and every token found there verifies for that rule. When none does, the most telling failure
//! is reported (Envoy's "any" verifier ignores "missing" and "issuer is not configured" when another reason exists).

mod cache;
mod extract;
mod fetch;
mod jwks;
mod rule;
mod token;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

pub use cache::{FetchError, JwksCache, JwksFetcher, JwksState};
pub use fetch::HttpFetcher;
pub use jwks::{Jwks, JwksError, JwksKey, KeyMaterial};
pub use rule::{
    ClaimToHeader, DEFAULT_JWKS_REFRESH, JwtRule, KeySource, RuleError, TokenLocation,
    claim_header_value, lookup_claim, rules_from_proto,
};

/// Tokens larger than this are rejected before any decoding. Real tokens are 0.5–2 KiB; 8 KiB is the common
/// per-header-line limit of HTTP servers (nginx `large_client_header_buffers`, Apache `LimitRequestFieldSize`),
/// so no legitimate token is refused, and base64/JSON work on attacker input stays bounded per request.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// `exp`/`nbf` tolerance: Envoy's default `clock_skew_seconds` (60, since envoyproxy/envoy#13872).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why a token was refused. `Display` is Envoy's `jwt_verify_lib` status string (the local-reply body Envoy sends),
/// except [`JwtError::TooLarge`], which Envoy does not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwtError {
    TooLarge,
    BadFormat,
    HeaderBadBase64,
    HeaderBadJson,
    HeaderBadAlg,
    AlgNotSupported,
    HeaderBadKid,
    PayloadBadBase64,
    PayloadBadJson,
    /// A registered claim of the wrong type: `iss`, `sub`, `aud`, `exp`, `nbf`, `iat`.
    PayloadBadClaim(&'static str),
    SignatureBadBase64,
    UnknownIssuer,
    NotYetValid,
    Expired,
    AudienceNotAllowed,
    /// No key in the set has the token's `kid` (or its `alg`).
    KidAlgMismatch,
    VerificationFail,
    /// A `jwksUri` rule whose key set has not been fetched successfully yet.
    JwksFetchFail,
}

impl JwtError {
    /// Envoy's `jwt_authn` answer: 403 for a disallowed audience, 401 for everything else.
    pub fn status(&self) -> StatusCode {
        match self {
            JwtError::AudienceNotAllowed => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The response-code detail Envoy logs: `jwt_authn_access_denied{<message>}`.
    pub fn details(&self) -> String {
        format!("jwt_authn_access_denied{{{self}}}")
    }

    /// Less specific failures lose to more specific ones when several rules fail (see the module docs).
    fn is_weak(&self) -> bool {
        matches!(self, JwtError::UnknownIssuer)
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            JwtError::TooLarge => "Jwt is too large",
            JwtError::BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            JwtError::HeaderBadBase64 => "Jwt header is an invalid Base64url encoded",
            JwtError::HeaderBadJson => "Jwt header is an invalid JSON",
            JwtError::HeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            JwtError::AlgNotSupported => "Jwt header [alg] is not supported",
            JwtError::HeaderBadKid => "Jwt header [kid] field is not a string",
            JwtError::PayloadBadBase64 => "Jwt payload is an invalid Base64url encoded",
            JwtError::PayloadBadJson => "Jwt payload is an invalid JSON",
            JwtError::PayloadBadClaim(claim) => {
                return match *claim {
                    "aud" => f.write_str("Jwt payload [aud] field is not a string or string list"),
                    "iss" | "sub" | "jti" => {
                        write!(f, "Jwt payload [{claim}] field is not a string")
                    }
                    _ => write!(
                        f,
                        "Jwt payload [{claim}] field is not a positive 64 bit integer"
                    ),
                };
            }
            JwtError::SignatureBadBase64 => "Jwt signature is an invalid Base64url encoded",
            JwtError::UnknownIssuer => "Jwt issuer is not configured",
            JwtError::NotYetValid => "Jwt not yet valid",
            JwtError::Expired => "Jwt is expired",
            JwtError::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            JwtError::KidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            JwtError::VerificationFail => "Jwt verification fails",
            JwtError::JwksFetchFail => "Jwks remote fetch is failed",
        };
        f.write_str(s)
    }
}

impl std::error::Error for JwtError {}

/// The `www-authenticate` value Envoy sends with a 401/403 for a bad token.
pub fn www_authenticate(realm: &str) -> String {
    format!("Bearer realm=\"{realm}\", error=\"invalid_token\"")
}

/// One verified token.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedJwt {
    pub issuer: String,
    /// Istio's request principal `<iss>/<sub>`; None without a string `sub`.
    pub principal: Option<String>,
    /// `aud` as a list (a single string becomes one entry).
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// The whole payload.
    pub claims: serde_json::Value,
}

/// A change the waypoint makes to the request before sending it on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Remove the header the token came from (`forwardOriginalToken: false`).
    Remove(HeaderName),
    /// Replace any value the client sent with this one (`outputPayloadToHeader`, `outputClaimToHeaders`).
    Set(HeaderName, HeaderValue),
}

/// Applies edits in order: removals, then sets (so an output header can reuse a removed token header's name).
pub fn apply_edits(edits: &[HeaderEdit], headers: &mut HeaderMap) {
    for edit in edits {
        if let HeaderEdit::Remove(name) = edit {
            headers.remove(name);
        }
    }
    for edit in edits {
        if let HeaderEdit::Set(name, value) = edit {
            headers.insert(name.clone(), value.clone());
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Authenticated {
    /// The token of the first rule (in rule order) that accepted the request: its principal is the request's.
    /// (Istio: "if more than one token is presented, the output principal is nondeterministic"; ours is not.)
    pub jwt: VerifiedJwt,
    /// Tokens other accepting rules verified (usually empty).
    pub others: Vec<VerifiedJwt>,
    /// Edits from every accepting rule.
    pub edits: Vec<HeaderEdit>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// No rule found a token: continue without a request principal.
    NoToken,
    Authenticated(Box<Authenticated>),
    /// Answer `err.status()` with body `err.to_string()`.
    Rejected(JwtError),
}

/// Verifies requests against rules; remote key sets come from its [`JwksCache`].
#[derive(Clone, Default)]
pub struct Authenticator {
    cache: Option<JwksCache>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("cache", &self.cache.is_some())
            .finish()
    }
}

impl Authenticator {
    /// An authenticator for rules with `jwksUri`s kept in `cache` (see [`JwksCache::sync`]).
    pub fn new(cache: JwksCache) -> Self {
        Authenticator { cache: Some(cache) }
    }

    /// An authenticator for inline key sets only (a `jwksUri` rule then rejects every token it sees).
    pub fn inline_only() -> Self {
        Authenticator { cache: None }
    }

    /// Authenticates one request against every rule that applies to it (all policies' `jwtRules`, merged, as Istio
    /// merges them). `query` is the raw query string without `?`.
    pub fn authenticate(
        &self,
        rules: &[&JwtRule],
        headers: &HeaderMap,
        query: Option<&str>,
        now: SystemTime,
    ) -> Outcome {
        let found = extract::extract(rules, headers, query);
        if found.iter().all(Vec::is_empty) {
            return Outcome::NoToken;
        }
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut accepted: Vec<(VerifiedJwt, Vec<HeaderEdit>)> = Vec::new();
        let mut failure: Option<JwtError> = None;
        for (rule, tokens) in rules.iter().zip(&found) {
            if tokens.is_empty() {
                continue;
            }
            match self.verify_rule(rule, tokens, now) {
                Ok(mut verified) => accepted.append(&mut verified),
                Err(err) => {
                    let replace = match &failure {
                        None => true,
                        Some(prev) => prev.is_weak() || !err.is_weak(),
                    };
                    if replace {
                        failure = Some(err);
                    }
                }
            }
        }
        let mut accepted = accepted.into_iter();
        let Some((jwt, mut edits)) = accepted.next() else {
            return Outcome::Rejected(failure.unwrap_or(JwtError::UnknownIssuer));
        };
        let mut others = Vec::new();
        for (other, mut more) in accepted {
            others.push(other);
            edits.append(&mut more);
        }
        Outcome::Authenticated(Box::new(Authenticated { jwt, others, edits }))
    }

    /// Every token found at `rule`'s locations must verify for it (Envoy: "if a request has multiple tokens, all of
    /// them must be valid").
    fn verify_rule(
        &self,
        rule: &JwtRule,
        tokens: &[extract::Found],
        now: u64,
    ) -> Result<Vec<(VerifiedJwt, Vec<HeaderEdit>)>, JwtError> {
        let mut out = Vec::with_capacity(tokens.len());
        for found in tokens {
            let parsed = token::Parsed::parse(&found.token)?;
            if parsed.issuer.as_deref() != Some(rule.issuer.as_str()) {
                return Err(JwtError::UnknownIssuer);
            }
            parsed.check_time(now, CLOCK_SKEW.as_secs())?;
            if !token::audiences_allowed(&rule.audiences, &parsed.audiences) {
                return Err(JwtError::AudienceNotAllowed);
            }
            let keys = self.keys(rule).ok_or(JwtError::JwksFetchFail)?;
            keys.verify(&parsed)?;
            let edits = rule.edits(found.location, &parsed);
            out.push((parsed.into_verified(), edits));
        }
        Ok(out)
    }

    fn keys(&self, rule: &JwtRule) -> Option<Arc<Jwks>> {
        match &rule.keys {
            KeySource::Inline(keys) => Some(keys.clone()),
            KeySource::Uri { uri, .. } => self.cache.as_ref()?.current(uri),
        }
    }
}
