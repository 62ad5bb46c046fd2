//! Service-account tokens: projected-style JWTs the server mints for pods (ES256, signed with the server's own
//! key, with the `kubernetes.io` claims of a real cluster's bound tokens), their validation, and `TokenReview`.

use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::meta;
use crate::resources::TypeKey;
use crate::store::Inner;

/// The issuer of minted tokens, and the audience the API server itself accepts (a cluster's default).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("invalid signing key: {0}")]
    Key(String),
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token audiences {token:?} are invalid for the target audiences {wanted:?}")]
    Audience {
        token: Vec<String>,
        wanted: Vec<String>,
    },
    #[error("pod {0} is gone or was replaced: the token is no longer bound to a live object")]
    PodGone(String),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjRef {
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KubernetesClaims {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjRef>,
    pub serviceaccount: ObjRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjRef>,
}

/// The claims of a minted token (the shape of a Kubernetes bound service-account token).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

/// What a pod's token is bound to.
#[derive(Clone, Debug, Default)]
pub struct PodToken {
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub node_name: Option<String>,
    pub node_uid: Option<String>,
    pub audiences: Vec<String>,
    pub ttl_seconds: i64,
}

/// Mints and checks tokens with one P-256 key.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    kid: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .finish()
    }
}

pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl TokenSigner {
    /// From a PKCS#8 DER P-256 private key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, TokenError> {
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| TokenError::Key(e.to_string()))?;
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.public_key().as_ref());
        let kid = B64.encode(&digest.as_ref()[..16]);
        Ok(TokenSigner { key, kid })
    }

    pub fn mint(&self, req: &PodToken, now: i64) -> Result<String, TokenError> {
        let mut jti = [0u8; 16];
        meta::random_bytes(&mut jti);
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: format!(
                "system:serviceaccount:{}:{}",
                req.namespace, req.service_account
            ),
            aud: req.audiences.clone(),
            exp: now + req.ttl_seconds.max(1),
            iat: now,
            nbf: now,
            jti: B64.encode(jti),
            kubernetes: KubernetesClaims {
                namespace: req.namespace.clone(),
                pod: (!req.pod_name.is_empty()).then(|| ObjRef {
                    name: req.pod_name.clone(),
                    uid: req.pod_uid.clone(),
                }),
                serviceaccount: ObjRef {
                    name: req.service_account.clone(),
                    uid: req.service_account_uid.clone(),
                },
                node: req.node_name.as_ref().map(|n| ObjRef {
                    name: n.clone(),
                    uid: req.node_uid.clone().unwrap_or_default(),
                }),
            },
        };
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let body = serde_json::to_vec(&claims).map_err(|_| TokenError::Malformed)?;
        let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(body));
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = self
            .key
            .sign(&rng, input.as_bytes())
            .map_err(|e| TokenError::Key(e.to_string()))?;
        Ok(format!("{input}.{}", B64.encode(sig.as_ref())))
    }

    /// Checks the signature and the validity window (no audience or binding check: see [`review`]).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err(TokenError::Signature);
        }
        let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
        let public = UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        );
        public
            .verify(format!("{h}.{p}").as_bytes(), &sig)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if now + 60 < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }

    /// A full check: signature, time, an audience in `wanted`, and the bound pod still existing with its uid.
    /// Returns the claims and the audiences that matched.
    pub fn authenticate(
        &self,
        token: &str,
        wanted: &[String],
        store: &Inner,
        now: i64,
    ) -> Result<(Claims, Vec<String>), TokenError> {
        let claims = self.verify(token, now)?;
        let matched: Vec<String> = claims
            .aud
            .iter()
            .filter(|a| wanted.contains(a))
            .cloned()
            .collect();
        if matched.is_empty() {
            return Err(TokenError::Audience {
                token: claims.aud.clone(),
                wanted: wanted.to_vec(),
            });
        }
        if let Some(pod) = &claims.kubernetes.pod {
            let live = store.find(&TypeKey::pods(), &claims.kubernetes.namespace, &pod.name);
            if live.is_none_or(|p| meta::uid(p) != pod.uid || meta::is_deleting(p)) {
                return Err(TokenError::PodGone(format!(
                    "{}/{}",
                    claims.kubernetes.namespace, pod.name
                )));
            }
        }
        Ok((claims, matched))
    }
}

/// The `user` of a TokenReview for valid claims: the service account, its groups, and the bound-object extras.
pub fn user_info(claims: &Claims) -> Value {
    let k = &claims.kubernetes;
    let mut extra = serde_json::Map::new();
    if let Some(pod) = &k.pod {
        extra.insert(
            "authentication.kubernetes.io/pod-name".into(),
            json!([pod.name]),
        );
        extra.insert(
            "authentication.kubernetes.io/pod-uid".into(),
            json!([pod.uid]),
        );
    }
    if let Some(node) = &k.node {
        extra.insert(
            "authentication.kubernetes.io/node-name".into(),
            json!([node.name]),
        );
        if !node.uid.is_empty() {
            extra.insert(
                "authentication.kubernetes.io/node-uid".into(),
                json!([node.uid]),
            );
        }
    }
    extra.insert(
        "authentication.kubernetes.io/credential-id".into(),
        json!([format!("JTI={}", claims.jti)]),
    );
    json!({
        "username": claims.sub,
        "uid": k.serviceaccount.uid,
        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", k.namespace), "system:authenticated"],
        "extra": extra,
    })
}

/// Answers a `TokenReview` (the request object, as sent): `status.authenticated`, `user`, `audiences`, `error`.
/// `admin_token` reviews as the local admin.
pub fn review(
    signer: &TokenSigner,
    admin_token: &str,
    request: &Value,
    store: &Inner,
    now: i64,
) -> Value {
    let token = request
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or("");
    let wanted: Vec<String> = request
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![ISSUER.to_owned()]);
    let status = if !token.is_empty() && crate::auth::constant_time_eq(token, admin_token) {
        json!({"authenticated": true, "audiences": wanted,
               "user": {"username": "admin", "groups": ["system:masters", "system:authenticated"]}})
    } else {
        match signer.authenticate(token, &wanted, store, now) {
            Ok((claims, matched)) => {
                json!({"authenticated": true, "user": user_info(&claims), "audiences": matched})
            }
            Err(e) => json!({"authenticated": false, "user": {}, "error": e.to_string()}),
        }
    };
    let mut out = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "metadata": {"creationTimestamp": null},
        "spec": request.get("spec").cloned().unwrap_or(json!({})),
        "status": status,
    });
    if let Some(name) = request.pointer("/metadata/name") {
        out["metadata"]["name"] = name.clone();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreConfig, WriteCtx};

    fn signer() -> TokenSigner {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        TokenSigner::from_pkcs8(&key.serialize_der()).unwrap()
    }

    fn req(pod_uid: &str) -> PodToken {
        PodToken {
            namespace: "demo".into(),
            service_account: "web".into(),
            pod_name: "web-0".into(),
            pod_uid: pod_uid.into(),
            node_name: Some("node-1".into()),
            audiences: vec!["istio-ca".into()],
            ttl_seconds: 3600,
            ..Default::default()
        }
    }

    #[test]
    fn minted_tokens_review_as_the_bound_service_account_until_the_pod_goes() {
        let store = Store::new(StoreConfig::default());
        let mut inner = store.lock();
        let pods = inner.registry.get(&TypeKey::pods()).cloned().unwrap();
        let ns = inner.registry.get(&TypeKey::namespaces()).cloned().unwrap();
        inner
            .create(
                &ns,
                "",
                json!({"metadata": {"name": "demo"}}),
                &WriteCtx::new("t"),
            )
            .unwrap();
        let pod = inner
            .create(
                &pods,
                "demo",
                json!({"metadata": {"name": "web-0"}, "spec": {}}),
                &WriteCtx::new("t"),
            )
            .unwrap();
        let s = signer();
        let now = unix_now();
        let token = s.mint(&req(meta::uid(&pod)), now).unwrap();
        let r = review(
            &s,
            "admintoken",
            &json!({"spec": {"token": token, "audiences": ["istio-ca"]}}),
            &inner,
            now,
        );
        assert_eq!(r["status"]["authenticated"], true, "{r}");
        assert_eq!(
            r["status"]["user"]["username"],
            "system:serviceaccount:demo:web"
        );
        assert_eq!(
            r["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"],
            json!(["web-0"])
        );
        assert_eq!(
            r["status"]["user"]["extra"]["authentication.kubernetes.io/node-name"],
            json!(["node-1"])
        );
        assert_eq!(r["status"]["audiences"], json!(["istio-ca"]));

        // Wrong audience, expired, tampered, and a pod that is gone: all refused.
        let r = review(
            &s,
            "admintoken",
            &json!({"spec": {"token": token, "audiences": ["other"]}}),
            &inner,
            now,
        );
        assert_eq!(r["status"]["authenticated"], false);
        assert!(r["status"]["error"].as_str().unwrap().contains("audiences"));
        assert_eq!(s.verify(&token, now + 7200), Err(TokenError::Expired));
        let mut tampered = token.clone();
        tampered.insert(tampered.len() - 5, 'A');
        assert!(s.verify(&tampered, now).is_err());
        assert_eq!(signer().verify(&token, now), Err(TokenError::Signature));
        let wrong_uid = s.mint(&req("not-the-uid"), now).unwrap();
        assert!(matches!(
            s.authenticate(&wrong_uid, &["istio-ca".into()], &inner, now),
            Err(TokenError::PodGone(_))
        ));
        let r = review(
            &s,
            "admintoken",
            &json!({"spec": {"token": "admintoken"}}),
            &inner,
            now,
        );
        assert_eq!(r["status"]["user"]["username"], "admin");
    }
}
