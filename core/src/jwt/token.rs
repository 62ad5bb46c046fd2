//! Parsing a compact JWS token and checking its registered claims, in `jwt_verify_lib`'s order and wording.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::Algorithm;

use super::{JwtError, MAX_TOKEN_BYTES, VerifiedJwt};

/// base64url, with or without padding (as `absl::WebSafeBase64Unescape` accepts).
pub(super) const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A token whose structure is valid; its signature and claims are not checked yet.
#[derive(Debug)]
pub(super) struct Parsed {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub audiences: Vec<String>,
    pub presenter: Option<String>,
    pub exp: u64,
    pub nbf: u64,
    pub claims: serde_json::Value,
    /// The payload segment as sent (base64url): what `outputPayloadToHeader` forwards.
    pub payload_b64: String,
    /// `<header>.<payload>`: what the signature covers.
    pub signing_input: String,
    pub signature: Vec<u8>,
}

impl Parsed {
    pub fn parse(token: &str) -> Result<Parsed, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::BadFormat);
        };
        let header = B64URL
            .decode(header_b64)
            .map_err(|_| JwtError::HeaderBadBase64)?;
        let header: serde_json::Value =
            serde_json::from_slice(&header).map_err(|_| JwtError::HeaderBadJson)?;
        if !header.is_object() {
            return Err(JwtError::HeaderBadJson);
        }
        let alg = header
            .get("alg")
            .and_then(|a| a.as_str())
            .ok_or(JwtError::HeaderBadAlg)?;
        let alg = supported_alg(alg).ok_or(JwtError::AlgNotSupported)?;
        let kid = match header.get("kid") {
            None => None,
            Some(serde_json::Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(JwtError::HeaderBadKid),
        };
        let payload = B64URL
            .decode(payload_b64)
            .map_err(|_| JwtError::PayloadBadBase64)?;
        let claims: serde_json::Value =
            serde_json::from_slice(&payload).map_err(|_| JwtError::PayloadBadJson)?;
        if !claims.is_object() {
            return Err(JwtError::PayloadBadJson);
        }
        let issuer = string_claim(&claims, "iss")?;
        let subject = string_claim(&claims, "sub")?;
        let presenter = string_claim(&claims, "azp")?;
        string_claim(&claims, "jti")?;
        time_claim(&claims, "iat")?;
        let nbf = time_claim(&claims, "nbf")?;
        let exp = time_claim(&claims, "exp")?;
        let audiences = match claims.get("aud") {
            None => Vec::new(),
            Some(serde_json::Value::String(aud)) => vec![aud.clone()],
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .map(|a| a.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or(JwtError::PayloadBadClaim("aud"))?,
            Some(_) => return Err(JwtError::PayloadBadClaim("aud")),
        };
        let signature = B64URL
            .decode(signature_b64)
            .map_err(|_| JwtError::SignatureBadBase64)?;
        let signing_input_len = header_b64.len() + 1 + payload_b64.len();
        Ok(Parsed {
            alg,
            kid,
            issuer,
            subject,
            audiences,
            presenter,
            exp,
            nbf,
            claims,
            payload_b64: payload_b64.to_string(),
            signing_input: token
                .get(..signing_input_len)
                .unwrap_or_default()
                .to_string(),
            signature,
        })
    }

    /// `jwt_verify_lib`'s `verifyTimeConstraint`: not yet valid if `now + skew < nbf`; expired if `exp` is set and
    /// `now > exp + skew`. A missing claim is 0 (no constraint).
    pub fn check_time(&self, now: u64, skew: u64) -> Result<(), JwtError> {
        if now.saturating_add(skew) < self.nbf {
            return Err(JwtError::NotYetValid);
        }
        if self.exp != 0 && now > self.exp.saturating_add(skew) {
            return Err(JwtError::Expired);
        }
        Ok(())
    }

    pub fn into_verified(self) -> VerifiedJwt {
        let issuer = self.issuer.unwrap_or_default();
        VerifiedJwt {
            principal: self.subject.as_ref().map(|sub| format!("{issuer}/{sub}")),
            issuer,
            audiences: self.audiences,
            presenter: self.presenter,
            claims: self.claims,
        }
    }
}

/// The algorithms we verify. `none` and HMAC (a shared secret in mesh config) are refused, as are ES512 and
/// Ed448, which the `jsonwebtoken` crate does not implement.
fn supported_alg(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

fn string_claim(
    claims: &serde_json::Value,
    name: &'static str,
) -> Result<Option<String>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(JwtError::PayloadBadClaim(name)),
    }
}

/// A NumericDate: a non-negative integer (a float without a fraction is accepted, as JSON has no integer type).
fn time_claim(claims: &serde_json::Value, name: &'static str) -> Result<u64, JwtError> {
    let Some(value) = claims.get(name) else {
        return Ok(0);
    };
    let bad = JwtError::PayloadBadClaim(name);
    let n = value.as_number().ok_or(bad.clone())?;
    if let Some(u) = n.as_u64() {
        return Ok(u);
    }
    match n.as_f64() {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 1.8e19 => Ok(f as u64),
        _ => Err(bad),
    }
}

/// Envoy's `CheckAudience`: allowed when no audience is configured, or when one of the token's audiences equals
/// one configured, both compared without an `http://`/`https://` scheme and a trailing `/`.
pub(super) fn audiences_allowed(configured: &[String], token: &[String]) -> bool {
    if configured.is_empty() {
        return true;
    }
    token.iter().any(|aud| {
        let aud = normalize_audience(aud);
        configured.iter().any(|c| normalize_audience(c) == aud)
    })
}

fn normalize_audience(aud: &str) -> &str {
    let aud = aud
        .strip_prefix("http://")
        .or_else(|| aud.strip_prefix("https://"))
        .unwrap_or(aud);
    aud.strip_suffix('/').unwrap_or(aud)
}
