//! Bearer tokens the controller issues itself in manifest mode (`controller token --node <name>` /
//! `--pod <ns>/<name>`).
//!
//! Format: `ambit1.<claims>.<mac>` where `<claims>` is unpadded base64url of the JSON
//! `{"sub":{"node":"<name>"}|{"pod":{"namespace":"<ns>","name":"<name>"}},"iat":<unix s>,"exp":<unix s>}` and `<mac>`
//! is unpadded base64url of HMAC-SHA256 over `ambit1.<claims>` with a 32-byte key kept in
//! `<state-dir>/token-key` (created with mode 0600 on first use). A token is valid while `now < exp`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "ambit1";
pub const KEY_FILE: &str = "token-key";

/// Whom a token speaks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    /// A node's shared ztunnel: may obtain certificates for the pods scheduled on that node.
    Node(String),
    /// A dedicated-mode ztunnel serving exactly one pod: may obtain that pod's identity only.
    Pod { namespace: String, name: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Subject,
    iat: u64,
    exp: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("token key {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("token key {0} must hold at least 32 bytes")]
    TooShort(String),
}

/// Issues and verifies tokens.
pub struct TokenAuthority {
    key: hmac::Key,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TokenAuthority {
    pub fn from_key(key: &[u8]) -> Self {
        TokenAuthority {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// Loads `<dir>/token-key`, creating it (32 random bytes, mode 0600) when missing.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(KEY_FILE);
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(&path) {
            Ok(k) if k.len() >= 32 => Ok(Self::from_key(&k)),
            Ok(_) => Err(KeyError::TooShort(path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io)?;
                let key: [u8; 32] = rand::random();
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                f.write_all(&key).map_err(io)?;
                Ok(Self::from_key(&key))
            }
            Err(e) => Err(io(e)),
        }
    }

    pub fn issue(&self, sub: Subject, ttl: Duration, now: SystemTime) -> String {
        let claims = Claims {
            sub,
            iat: unix(now),
            exp: unix(now).saturating_add(ttl.as_secs()),
        };
        // Serializing this plain struct cannot fail.
        let json = serde_json::to_vec(&claims).unwrap_or_default();
        let signed = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(json));
        let tag = hmac::sign(&self.key, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Subject, TokenError> {
        let token = token.trim();
        let (signed, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (prefix, claims) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if prefix != PREFIX {
            return Err(TokenError::Malformed);
        }
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.key, signed.as_bytes(), &mac).map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if unix(now) >= claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(claims.sub)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_expiry_and_forgery() {
        let a = TokenAuthority::from_key(&[7; 32]);
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = a.issue(Subject::Node("n1".into()), Duration::from_secs(60), now);
        assert_eq!(a.verify(&t, now), Ok(Subject::Node("n1".into())));
        assert_eq!(
            a.verify(&t, now + Duration::from_secs(60)),
            Err(TokenError::Expired)
        );
        // Another key's token, or edited claims, do not verify.
        let other = TokenAuthority::from_key(&[8; 32]).issue(
            Subject::Node("n1".into()),
            Duration::from_secs(60),
            now,
        );
        assert_eq!(a.verify(&other, now), Err(TokenError::BadSignature));
        let (_, mac) = t.rsplit_once('.').unwrap();
        let forged_claims =
            URL_SAFE_NO_PAD.encode(br#"{"sub":{"node":"n2"},"iat":0,"exp":99999999999}"#);
        assert_eq!(
            a.verify(&format!("ambit1.{forged_claims}.{mac}"), now),
            Err(TokenError::BadSignature)
        );
        assert_eq!(a.verify("garbage", now), Err(TokenError::Malformed));
        let p = a.issue(
            Subject::Pod {
                namespace: "ns".into(),
                name: "p".into(),
            },
            Duration::from_secs(60),
            now,
        );
        assert_eq!(
            a.verify(&p, now),
            Ok(Subject::Pod {
                namespace: "ns".into(),
                name: "p".into()
            })
        );
    }

    #[test]
    fn key_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let t = TokenAuthority::load_or_create(dir.path()).unwrap().issue(
            Subject::Node("n".into()),
            Duration::from_secs(60),
            now,
        );
        let again = TokenAuthority::load_or_create(dir.path()).unwrap();
        assert!(again.verify(&t, now).is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
