//! JSON Web Key Sets (RFC 7517): parsing, and choosing the key that verifies a token (Envoy `jwt_verify_lib`'s
//! rules: a token `kid` selects keys with that `kid` or none; a key `alg` must equal the token's).

use std::fmt;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::JwtError;
use super::token::{B64URL, Parsed};

/// Why a JWKS document was refused: where (`keys[1].crv`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksError {
    /// Empty for the document itself.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "invalid JWKS: {}", self.reason)
        } else {
            write!(f, "invalid JWKS: {}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for JwksError {}

/// A public key's material, as the JWK gave it (big-endian, leading zeros of RSA values kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyMaterial {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// `crv: P-256` (ES256) or `P-384` (ES384): the uncompressed point `04 || x || y`.
    Ec {
        alg: Algorithm,
        point: Vec<u8>,
    },
    /// `kty: OKP`, `crv: Ed25519`.
    Ed25519 {
        x: Vec<u8>,
    },
}

impl KeyMaterial {
    fn can_verify(&self, alg: Algorithm) -> bool {
        match self {
            KeyMaterial::Rsa { .. } => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyMaterial::Ec { alg: curve_alg, .. } => *curve_alg == alg,
            KeyMaterial::Ed25519 { .. } => alg == Algorithm::EdDSA,
        }
    }
}

#[derive(Clone)]
pub struct JwksKey {
    pub kid: Option<String>,
    pub alg: Option<Algorithm>,
    pub material: KeyMaterial,
    decoding: DecodingKey,
}

impl PartialEq for JwksKey {
    fn eq(&self, other: &Self) -> bool {
        self.kid == other.kid && self.alg == other.alg && self.material == other.material
    }
}

impl fmt::Debug for JwksKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.material {
            KeyMaterial::Rsa { n, .. } => format!("RSA-{}", significant_bits(n)),
            KeyMaterial::Ec { alg, .. } => format!("EC-{alg:?}"),
            KeyMaterial::Ed25519 { .. } => "Ed25519".to_string(),
        };
        f.debug_struct("JwksKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &kind)
            .finish()
    }
}

/// A parsed key set. Keys with `use` other than `sig` (encryption keys published alongside) are left out.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Jwks {
    pub keys: Vec<JwksKey>,
}

impl Jwks {
    pub fn parse(json: &str) -> Result<Jwks, JwksError> {
        let doc = |reason: &str| JwksError {
            path: String::new(),
            reason: reason.to_string(),
        };
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| doc(&format!("not JSON: {e}")))?;
        let keys = value.get("keys").ok_or_else(|| doc("no [keys] field"))?;
        let keys = keys
            .as_array()
            .ok_or_else(|| doc("[keys] is not an array"))?;
        let mut out = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            if let Some(key) = parse_key(key).map_err(|(field, reason)| JwksError {
                path: if field.is_empty() {
                    format!("keys[{i}]")
                } else {
                    format!("keys[{i}].{field}")
                },
                reason,
            })? {
                out.push(key);
            }
        }
        if out.is_empty() {
            return Err(doc("no signing key"));
        }
        Ok(Jwks { keys: out })
    }

    /// Verifies the token's signature with the first suitable key; [`JwtError::KidAlgMismatch`] when no key has
    /// the token's `kid`/`alg`, [`JwtError::VerificationFail`] when keys were tried and none verified.
    pub(super) fn verify(&self, token: &Parsed) -> Result<(), JwtError> {
        let mut matched = false;
        for key in &self.keys {
            if let (Some(want), Some(have)) = (&token.kid, &key.kid)
                && want != have
            {
                continue;
            }
            if key.alg.is_some_and(|alg| alg != token.alg) {
                continue;
            }
            matched = true;
            if !key.material.can_verify(token.alg) {
                continue;
            }
            // The aws-lc-rs provider explicitly: the crate's process default panics if a second backend feature
            // is ever unified into the build.
            let provider = &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;
            let Ok(verifier) = (provider.verifier_factory)(&token.alg, &key.decoding) else {
                continue;
            };
            if verifier
                .verify(token.signing_input.as_bytes(), &token.signature)
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(if matched {
            JwtError::VerificationFail
        } else {
            JwtError::KidAlgMismatch
        })
    }
}

type KeyError = (&'static str, String);

fn parse_key(key: &serde_json::Value) -> Result<Option<JwksKey>, KeyError> {
    if !key.is_object() {
        return Err(("", "not an object".to_string()));
    }
    let string = |field: &'static str| -> Result<Option<&str>, KeyError> {
        match key.get(field) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err((field, "not a string".to_string())),
        }
    };
    let bytes = |field: &'static str| -> Result<Vec<u8>, KeyError> {
        let s = string(field)?.ok_or((field, "missing".to_string()))?;
        let b = B64URL
            .decode(s)
            .map_err(|_| (field, "not base64url".to_string()))?;
        if b.is_empty() {
            return Err((field, "empty".to_string()));
        }
        Ok(b)
    };
    if string("use")?.is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let kid = string("kid")?.map(str::to_string);
    let alg = match string("alg")? {
        None => None,
        Some(name) => Some(
            name.parse::<Algorithm>()
                .map_err(|_| ("alg", format!("{name:?} is not supported")))?,
        ),
    };
    let kty = string("kty")?.ok_or(("kty", "missing".to_string()))?;
    let material = match kty {
        "RSA" => {
            let n = bytes("n")?;
            let e = bytes("e")?;
            let bits = significant_bits(&n);
            if bits < 2048 {
                return Err((
                    "n",
                    format!("a {bits}-bit RSA modulus; at least 2048 bits are required"),
                ));
            }
            KeyMaterial::Rsa { n, e }
        }
        "EC" => {
            let crv = string("crv")?.ok_or(("crv", "missing".to_string()))?;
            let (curve_alg, len) = match crv {
                "P-256" => (Algorithm::ES256, 32),
                "P-384" => (Algorithm::ES384, 48),
                other => return Err(("crv", format!("{other:?} is not supported (P-256, P-384)"))),
            };
            let x = bytes("x")?;
            let y = bytes("y")?;
            if x.len() != len || y.len() != len {
                return Err(("x", format!("x and y must be {len} bytes for {crv}")));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            KeyMaterial::Ec {
                alg: curve_alg,
                point,
            }
        }
        "OKP" => {
            let crv = string("crv")?.ok_or(("crv", "missing".to_string()))?;
            if crv != "Ed25519" {
                return Err(("crv", format!("{crv:?} is not supported (Ed25519)")));
            }
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err(("x", "an Ed25519 key is 32 bytes".to_string()));
            }
            KeyMaterial::Ed25519 { x }
        }
        "oct" => {
            return Err((
                "kty",
                "symmetric (\"oct\") keys are not supported".to_string(),
            ));
        }
        other => return Err(("kty", format!("unknown key type {other:?}"))),
    };
    if let Some(alg) = alg
        && !material.can_verify(alg)
    {
        return Err(("alg", format!("{alg:?} does not fit a {kty} key")));
    }
    let decoding = match &material {
        KeyMaterial::Rsa { n, e } => DecodingKey::from_rsa_raw_components(n, e),
        KeyMaterial::Ec { point, .. } => DecodingKey::from_ec_der(point),
        KeyMaterial::Ed25519 { x } => DecodingKey::from_ed_der(x),
    };
    Ok(Some(JwksKey {
        kid,
        alg,
        material,
        decoding,
    }))
}

fn significant_bits(n: &[u8]) -> usize {
    let Some(first) = n.iter().position(|b| *b != 0) else {
        return 0;
    };
    let lead = n.get(first).map_or(0, |b| 8 - b.leading_zeros() as usize);
    (n.len() - first - 1) * 8 + lead
}
