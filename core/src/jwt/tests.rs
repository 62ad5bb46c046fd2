//! JWT tests: keys are generated with aws-lc-rs and tokens signed with it directly, so the verifier under test
//! (jsonwebtoken) never checks its own output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cache;
mod convert;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use ambit_proto::waypoint as pb;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::*;

pub(super) const NOW_SECS: u64 = 1_700_000_000;
pub(super) const ISSUER: &str = "https://issuer.example";

pub(super) fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

pub(super) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(super) enum Key {
    Rsa(RsaKeyPair),
    Ec256(EcdsaKeyPair),
    Ec384(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Key {
    fn rsa() -> Key {
        Key::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap())
    }

    /// The public JWK, with `kid` if given.
    pub(super) fn jwk(&self, kid: Option<&str>) -> Value {
        let mut jwk = match self {
            Key::Rsa(k) => {
                let c = PublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Key::Ec256(k) | Key::Ec384(k) => {
                let point = k.public_key().as_ref();
                let len = (point.len() - 1) / 2;
                let crv = if len == 32 { "P-256" } else { "P-384" };
                json!({"kty": "EC", "crv": crv, "x": b64(&point[1..=len]), "y": b64(&point[len + 1..])})
            }
            Key::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref())})
            }
        };
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    fn sign(&self, alg: &str, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Key::Rsa(k) => {
                let enc: &'static dyn sig::RsaEncoding = match alg {
                    "RS384" => &sig::RSA_PKCS1_SHA384,
                    "RS512" => &sig::RSA_PKCS1_SHA512,
                    "PS256" => &sig::RSA_PSS_SHA256,
                    "PS384" => &sig::RSA_PSS_SHA384,
                    "PS512" => &sig::RSA_PSS_SHA512,
                    _ => &sig::RSA_PKCS1_SHA256,
                };
                let mut out = vec![0; k.public_modulus_len()];
                k.sign(enc, &rng, msg, &mut out).unwrap();
                out
            }
            Key::Ec256(k) | Key::Ec384(k) => k.sign(&rng, msg).unwrap().as_ref().to_vec(),
            Key::Ed(k) => k.sign(msg).as_ref().to_vec(),
        }
    }
}

pub(super) fn rsa() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(Key::rsa)
}

pub(super) fn other_rsa() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(Key::rsa)
}

pub(super) fn ec256() -> Key {
    Key::Ec256(EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
}

pub(super) fn ec384() -> Key {
    Key::Ec384(EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap())
}

pub(super) fn ed25519() -> Key {
    Key::Ed(Ed25519KeyPair::generate().unwrap())
}

/// A compact token with this header and payload, signed by `key` (the header's `alg` picks the padding).
pub(super) fn token_with_header(header: Value, claims: Value, key: &Key) -> String {
    let alg = header["alg"].as_str().unwrap_or("RS256").to_string();
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = key.sign(&alg, input.as_bytes());
    format!("{input}.{}", b64(&signature))
}

pub(super) fn token(alg: &str, kid: Option<&str>, claims: Value, key: &Key) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    token_with_header(header, claims, key)
}

/// `iss`, `sub`, `aud: ["bookinfo"]`, valid for an hour around [`NOW_SECS`].
pub(super) fn claims() -> Value {
    json!({"iss": ISSUER, "sub": "alice", "aud": ["bookinfo"], "iat": NOW_SECS - 10, "exp": NOW_SECS + 3600})
}

pub(super) fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// A proto rule for `ISSUER` with these keys and nothing else set.
pub(super) fn pb_rule(jwks: String) -> pb::JwtRule {
    pb::JwtRule {
        issuer: ISSUER.to_string(),
        jwks,
        ..Default::default()
    }
}

pub(super) fn rule(pb: pb::JwtRule) -> JwtRule {
    JwtRule::from_proto(0, &pb).unwrap()
}

pub(super) fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

pub(super) fn run(rules: &[&JwtRule], headers: &HeaderMap, query: Option<&str>) -> Outcome {
    Authenticator::inline_only().authenticate(rules, headers, query, now())
}

pub(super) fn accepted(outcome: Outcome) -> Authenticated {
    match outcome {
        Outcome::Authenticated(a) => *a,
        other => panic!("expected Authenticated, got {other:?}"),
    }
}

pub(super) fn rejected(outcome: Outcome) -> JwtError {
    match outcome {
        Outcome::Rejected(e) => e,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

fn rsa_rule() -> JwtRule {
    rule(pb_rule(jwks(&[rsa().jwk(Some("k1"))])))
}

fn check(rule: &JwtRule, token: &str) -> Outcome {
    run(&[rule], &bearer(token), None)
}

#[test]
fn valid_tokens_for_every_algorithm() {
    let rsa_key = rsa();
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        let r = rule(pb_rule(jwks(&[rsa_key.jwk(Some("k1"))])));
        let a = accepted(check(&r, &token(alg, Some("k1"), claims(), rsa_key)));
        assert_eq!(
            a.jwt.principal.as_deref(),
            Some("https://issuer.example/alice"),
            "{alg}"
        );
    }
    for (alg, key) in [("ES256", ec256()), ("ES384", ec384()), ("EdDSA", ed25519())] {
        let r = rule(pb_rule(jwks(&[key.jwk(None)])));
        let a = accepted(check(&r, &token(alg, None, claims(), &key)));
        assert_eq!(a.jwt.issuer, ISSUER, "{alg}");
    }
}

#[test]
fn accepted_token_carries_identity_and_claims() {
    let mut c = claims();
    c["azp"] = json!("frontend");
    c["groups"] = json!(["admin"]);
    let a = accepted(check(
        &rsa_rule(),
        &token("RS256", Some("k1"), c.clone(), rsa()),
    ));
    assert_eq!(
        a.jwt.principal.as_deref(),
        Some("https://issuer.example/alice")
    );
    assert_eq!(a.jwt.audiences, vec!["bookinfo".to_string()]);
    assert_eq!(a.jwt.presenter.as_deref(), Some("frontend"));
    assert_eq!(a.jwt.claims, c);
    assert!(a.others.is_empty());
    // Default: the token is not forwarded.
    assert_eq!(
        a.edits,
        vec![HeaderEdit::Remove(http::header::AUTHORIZATION)]
    );
}

#[test]
fn time_constraints_with_sixty_seconds_of_skew() {
    let r = rsa_rule();
    let with = |field: &str, value: u64| {
        let mut c = claims();
        c[field] = json!(value);
        check(&r, &token("RS256", Some("k1"), c, rsa()))
    };
    assert_eq!(rejected(with("exp", NOW_SECS - 61)), JwtError::Expired);
    accepted(with("exp", NOW_SECS - 60));
    accepted(with("exp", NOW_SECS - 30));
    assert_eq!(rejected(with("nbf", NOW_SECS + 61)), JwtError::NotYetValid);
    accepted(with("nbf", NOW_SECS + 60));
    accepted(with("nbf", NOW_SECS));
    // No exp at all: no expiry.
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    accepted(check(&r, &token("RS256", Some("k1"), c, rsa())));
    // A string exp is malformed.
    let mut c = claims();
    c["exp"] = json!("tomorrow");
    let err = rejected(check(&r, &token("RS256", Some("k1"), c, rsa())));
    assert_eq!(
        err.to_string(),
        "Jwt payload [exp] field is not a positive 64 bit integer"
    );
}

#[test]
fn audiences() {
    let mut p = pb_rule(jwks(&[rsa().jwk(Some("k1"))]));
    p.audiences = vec!["https://bookinfo/".to_string(), "reviews".to_string()];
    let r = rule(p);
    accepted(check(&r, &token("RS256", Some("k1"), claims(), rsa())));
    let mut c = claims();
    c["aud"] = json!("ratings");
    let err = rejected(check(&r, &token("RS256", Some("k1"), c.clone(), rsa())));
    assert_eq!(err, JwtError::AudienceNotAllowed);
    assert_eq!(err.status(), http::StatusCode::FORBIDDEN);
    assert_eq!(err.to_string(), "Audiences in Jwt are not allowed");
    c["aud"] = json!("reviews");
    accepted(check(&r, &token("RS256", Some("k1"), c.clone(), rsa())));
    // No audience in the token while some are required.
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        rejected(check(&r, &token("RS256", Some("k1"), c, rsa()))),
        JwtError::AudienceNotAllowed
    );
}

#[test]
fn wrong_issuer_is_not_configured() {
    let mut c = claims();
    c["iss"] = json!("https://evil.example");
    let err = rejected(check(&rsa_rule(), &token("RS256", Some("k1"), c, rsa())));
    assert_eq!(err, JwtError::UnknownIssuer);
    assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
    assert_eq!(
        err.details(),
        "jwt_authn_access_denied{Jwt issuer is not configured}"
    );
}

#[test]
fn bad_signature_and_key_selection() {
    let r = rsa_rule();
    // Signed by another key under the configured kid.
    let err = rejected(check(
        &r,
        &token("RS256", Some("k1"), claims(), other_rsa()),
    ));
    assert_eq!(err.to_string(), "Jwt verification fails");
    // A tampered payload.
    let good = token("RS256", Some("k1"), claims(), rsa());
    let mut parts: Vec<&str> = good.split('.').collect();
    let mut c = claims();
    c["sub"] = json!("mallory");
    let forged = b64(c.to_string().as_bytes());
    parts[1] = &forged;
    assert_eq!(
        rejected(check(&r, &parts.join("."))),
        JwtError::VerificationFail
    );
    // Unknown kid: no key to try.
    let err = rejected(check(&r, &token("RS256", Some("k2"), claims(), rsa())));
    assert_eq!(err, JwtError::KidAlgMismatch);
    assert_eq!(
        err.to_string(),
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
    // No kid in the token: every key is tried.
    accepted(check(&r, &token("RS256", None, claims(), rsa())));
    // A key without kid is tried for a token with one; the right key among several is found.
    let ed = ed25519();
    let r2 = rule(pb_rule(jwks(&[
        other_rsa().jwk(Some("old")),
        ed.jwk(None),
        rsa().jwk(None),
    ])));
    accepted(check(&r2, &token("RS256", Some("new"), claims(), rsa())));
    accepted(check(&r2, &token("EdDSA", Some("new"), claims(), &ed)));
    // A key's alg must be the token's.
    let mut jwk = rsa().jwk(Some("k1"));
    jwk["alg"] = json!("PS256");
    let r3 = rule(pb_rule(jwks(&[jwk])));
    assert_eq!(
        rejected(check(&r3, &token("RS256", Some("k1"), claims(), rsa()))),
        JwtError::KidAlgMismatch
    );
    accepted(check(&r3, &token("PS256", Some("k1"), claims(), rsa())));
    // An EC token against RSA keys: keys matched, none could verify.
    let ec = ec256();
    assert_eq!(
        rejected(check(&r, &token("ES256", None, claims(), &ec))),
        JwtError::VerificationFail
    );
}

#[test]
fn unsupported_and_malformed_tokens() {
    let r = rsa_rule();
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    let err = rejected(check(&r, &unsigned));
    assert_eq!(err, JwtError::AlgNotSupported);
    assert_eq!(err.to_string(), "Jwt header [alg] is not supported");
    for alg in ["HS256", "ES512", "NONE"] {
        let t = token_with_header(json!({"alg": alg}), claims(), rsa());
        assert_eq!(rejected(check(&r, &t)), JwtError::AlgNotSupported, "{alg}");
    }
    let no_alg = token_with_header(json!({"typ": "JWT"}), claims(), rsa());
    assert_eq!(rejected(check(&r, &no_alg)), JwtError::HeaderBadAlg);
    let bad_kid = token_with_header(json!({"alg": "RS256", "kid": 7}), claims(), rsa());
    assert_eq!(rejected(check(&r, &bad_kid)), JwtError::HeaderBadKid);
    assert_eq!(rejected(check(&r, "a.b")), JwtError::BadFormat);
    assert_eq!(rejected(check(&r, "a.b.c.d")), JwtError::BadFormat);
    assert_eq!(rejected(check(&r, "!!.e30.AA")), JwtError::HeaderBadBase64);
    let header = b64(br#"{"alg":"RS256"}"#);
    assert_eq!(
        rejected(check(&r, &format!("{}.e30.AA", b64(b"[]")))),
        JwtError::HeaderBadJson
    );
    assert_eq!(
        rejected(check(&r, &format!("{header}.!!.AA"))),
        JwtError::PayloadBadBase64
    );
    assert_eq!(
        rejected(check(&r, &format!("{header}.{}.AA", b64(b"nope")))),
        JwtError::PayloadBadJson
    );
    assert_eq!(
        rejected(check(&r, &format!("{header}.e30.!!"))),
        JwtError::SignatureBadBase64
    );
    let bad_aud = format!("{header}.{}.AA", b64(br#"{"aud":[1]}"#));
    assert_eq!(
        rejected(check(&r, &bad_aud)).to_string(),
        "Jwt payload [aud] field is not a string or string list"
    );
    // A padded signature segment is accepted (the signed segments must stay as they were signed).
    let t = token("RS256", Some("k1"), claims(), rsa());
    let pad = (4 - t.rsplit('.').next().unwrap().len() % 4) % 4;
    assert!(pad > 0, "a 256-byte signature needs padding");
    accepted(check(&r, &format!("{t}{}", "=".repeat(pad))));
}

#[test]
fn oversized_token_is_rejected_before_decoding() {
    let mut c = claims();
    c["padding"] = json!("x".repeat(MAX_TOKEN_BYTES));
    let big = token("RS256", Some("k1"), c, rsa());
    assert_eq!(rejected(check(&rsa_rule(), &big)), JwtError::TooLarge);
    // Not even parsed: garbage of that size gives the same answer.
    assert_eq!(
        rejected(check(&rsa_rule(), &"a".repeat(MAX_TOKEN_BYTES + 1))),
        JwtError::TooLarge
    );
}

#[test]
fn no_token_is_not_an_error() {
    let r = rsa_rule();
    assert_eq!(run(&[&r], &HeaderMap::new(), None), Outcome::NoToken);
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
    );
    assert_eq!(run(&[&r], &h, Some("page=2")), Outcome::NoToken);
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer "),
    );
    assert_eq!(run(&[&r], &h, Some("access_token=")), Outcome::NoToken);
    assert_eq!(run(&[], &bearer("garbage"), None), Outcome::NoToken);
}

#[test]
fn token_locations() {
    let t = token("RS256", Some("k1"), claims(), rsa());
    // Default query parameter, percent-encoded.
    let r = rsa_rule();
    let a = accepted(run(
        &[&r],
        &HeaderMap::new(),
        Some(&format!("x=1&access_token={}", t.replace('.', "%2E"))),
    ));
    assert!(
        a.edits.is_empty(),
        "query tokens are not removed (as Envoy): {:?}",
        a.edits
    );

    // A custom header with a prefix: only that location, the default ones are gone.
    let mut p = pb_rule(jwks(&[rsa().jwk(Some("k1"))]));
    p.from_headers = vec![pb::JwtHeader {
        name: "x-jwt-assertion".to_string(),
        prefix: "Token ".to_string(),
    }];
    let r = rule(p);
    let mut h = HeaderMap::new();
    h.insert(
        "x-jwt-assertion",
        HeaderValue::from_str(&format!("Token {t}")).unwrap(),
    );
    let a = accepted(run(&[&r], &h, None));
    assert_eq!(
        a.edits,
        vec![HeaderEdit::Remove(http::HeaderName::from_static(
            "x-jwt-assertion"
        ))]
    );
    h.insert("x-jwt-assertion", HeaderValue::from_str(&t).unwrap());
    assert_eq!(
        run(&[&r], &h, None),
        Outcome::NoToken,
        "the prefix is required"
    );
    assert_eq!(
        run(&[&r], &bearer(&t), None),
        Outcome::NoToken,
        "defaults are replaced"
    );

    // A named query parameter.
    let mut p = pb_rule(jwks(&[rsa().jwk(Some("k1"))]));
    p.from_params = vec!["jwt".to_string()];
    let r = rule(p);
    accepted(run(&[&r], &HeaderMap::new(), Some(&format!("jwt={t}"))));
    assert_eq!(
        run(&[&r], &HeaderMap::new(), Some(&format!("access_token={t}"))),
        Outcome::NoToken
    );

    // A cookie.
    let mut p = pb_rule(jwks(&[rsa().jwk(Some("k1"))]));
    p.from_cookies = vec!["session".to_string()];
    let r = rule(p);
    let mut h = HeaderMap::new();
    h.insert(
        http::header::COOKIE,
        HeaderValue::from_str(&format!("theme=dark; session=\"{t}\"; x=y")).unwrap(),
    );
    let a = accepted(run(&[&r], &h, None));
    assert!(
        a.edits.is_empty(),
        "cookie tokens are not removed: {:?}",
        a.edits
    );
}

#[test]
fn two_rules_with_different_issuers() {
    let ed = ed25519();
    let a_rule = rsa_rule();
    let mut p = pb_rule(jwks(&[ed.jwk(None)]));
    p.issuer = "https://other.example".to_string();
    let b_rule = rule(p);
    let rules = [&a_rule, &b_rule];
    let a = accepted(run(
        &rules,
        &bearer(&token("RS256", Some("k1"), claims(), rsa())),
        None,
    ));
    assert_eq!(a.jwt.issuer, ISSUER);
    let mut c = claims();
    c["iss"] = json!("https://other.example");
    let a = accepted(run(
        &rules,
        &bearer(&token("EdDSA", None, c.clone(), &ed)),
        None,
    ));
    assert_eq!(
        a.jwt.principal.as_deref(),
        Some("https://other.example/alice")
    );
    // The right issuer with the other rule's key.
    let err = rejected(run(
        &rules,
        &bearer(&token("RS256", Some("k1"), c, rsa())),
        None,
    ));
    assert_eq!(
        err,
        JwtError::VerificationFail,
        "the specific failure wins over 'issuer is not configured'"
    );
    let mut c = claims();
    c["iss"] = json!("https://third.example");
    let err = rejected(run(
        &rules,
        &bearer(&token("RS256", Some("k1"), c, rsa())),
        None,
    ));
    assert_eq!(err, JwtError::UnknownIssuer);
}

#[test]
fn several_tokens() {
    let ed = ed25519();
    let mut pa = pb_rule(jwks(&[rsa().jwk(Some("k1"))]));
    pa.from_headers = vec![
        pb::JwtHeader {
            name: "x-a".to_string(),
            prefix: String::new(),
        },
        pb::JwtHeader {
            name: "x-a2".to_string(),
            prefix: String::new(),
        },
    ];
    let a_rule = rule(pa);
    let mut pb2 = pb_rule(jwks(&[ed.jwk(None)]));
    pb2.issuer = "https://other.example".to_string();
    pb2.from_headers = vec![pb::JwtHeader {
        name: "x-b".to_string(),
        prefix: String::new(),
    }];
    pb2.forward_original_token = true;
    let b_rule = rule(pb2);
    let mut b_claims = claims();
    b_claims["iss"] = json!("https://other.example");
    let good_a = token("RS256", Some("k1"), claims(), rsa());
    let good_b = token("EdDSA", None, b_claims, &ed);
    let mut expired = claims();
    expired["exp"] = json!(NOW_SECS - 3600);
    let expired_a = token("RS256", Some("k1"), expired, rsa());

    let headers = |pairs: &[(&'static str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    };
    // Both rules accept: the first rule's token is the principal; both rules' edits apply.
    let a = accepted(run(
        &[&a_rule, &b_rule],
        &headers(&[("x-a", &good_a), ("x-b", &good_b)]),
        None,
    ));
    assert_eq!(a.jwt.issuer, ISSUER);
    assert_eq!(a.others.len(), 1);
    assert_eq!(a.others[0].issuer, "https://other.example");
    assert_eq!(
        a.edits,
        vec![HeaderEdit::Remove(http::HeaderName::from_static("x-a"))]
    );
    // One rule accepts while the other's token is bad: accepted (Istio's outer OR of providers).
    let a = accepted(run(
        &[&a_rule, &b_rule],
        &headers(&[("x-a", "garbage"), ("x-b", &good_b)]),
        None,
    ));
    assert_eq!(a.jwt.issuer, "https://other.example");
    // Two tokens at one rule's locations: both must be valid.
    let err = rejected(run(
        &[&a_rule],
        &headers(&[("x-a", &good_a), ("x-a2", &expired_a)]),
        None,
    ));
    assert_eq!(err, JwtError::Expired);
    let a = accepted(run(
        &[&a_rule],
        &headers(&[("x-a", &good_a), ("x-a2", &good_a)]),
        None,
    ));
    assert_eq!(a.others.len(), 1);
}

#[test]
fn output_payload_and_claims_to_headers() {
    let mut p = pb_rule(jwks(&[rsa().jwk(Some("k1"))]));
    p.output_payload_to_header = "x-jwt-payload".to_string();
    p.forward_original_token = true;
    p.output_claim_to_headers = [
        ("x-sub", "sub"),
        ("x-admin", "admin"),
        ("x-level", "level"),
        ("x-ratio", "ratio"),
        ("x-email", "user.email"),
        ("x-dotted", "a.b"),
        ("x-user", "user"),
        ("x-groups", "groups"),
        ("x-missing", "nope"),
        ("x-null", "nothing"),
    ]
    .iter()
    .map(|(h, c)| pb::ClaimToHeader {
        header: h.to_string(),
        claim: c.to_string(),
    })
    .collect();
    let r = rule(p);
    let mut c = claims();
    c["admin"] = json!(true);
    c["level"] = json!(3);
    c["ratio"] = json!(0.5);
    c["user"] = json!({"email": "alice@example.com"});
    c["a.b"] = json!("literal");
    c["groups"] = json!(["dev", "ops"]);
    c["nothing"] = Value::Null;
    let t = token("RS256", Some("k1"), c.clone(), rsa());
    let a = accepted(check(&r, &t));
    let mut h = bearer(&t);
    h.insert("x-sub", HeaderValue::from_static("spoofed"));
    apply_edits(&a.edits, &mut h);
    let get = |name: &str| h.get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        get("authorization"),
        Some(format!("Bearer {t}")),
        "forwardOriginalToken keeps the token"
    );
    let payload = get("x-jwt-payload").unwrap();
    assert_eq!(
        payload,
        t.split('.').nth(1).unwrap(),
        "the token's own payload segment"
    );
    let decoded: Value = serde_json::from_slice(&token::B64URL.decode(&payload).unwrap()).unwrap();
    assert_eq!(decoded, c);
    assert_eq!(
        get("x-sub").as_deref(),
        Some("alice"),
        "the client's value is replaced"
    );
    assert_eq!(get("x-admin").as_deref(), Some("true"));
    assert_eq!(get("x-level").as_deref(), Some("3"));
    assert_eq!(get("x-ratio").as_deref(), Some("0.5"));
    assert_eq!(get("x-email").as_deref(), Some("alice@example.com"));
    assert_eq!(get("x-dotted").as_deref(), Some("literal"));
    let std_b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(
        get("x-user"),
        Some(std_b64.encode(r#"{"email":"alice@example.com"}"#))
    );
    assert_eq!(get("x-groups"), Some(std_b64.encode(r#"["dev","ops"]"#)));
    assert_eq!(get("x-missing"), None);
    assert_eq!(get("x-null"), None);
}

#[test]
fn forward_original_token() {
    let t = token("RS256", Some("k1"), claims(), rsa());
    let r = rsa_rule();
    let a = accepted(check(&r, &t));
    let mut h = bearer(&t);
    h.insert("x-other", HeaderValue::from_static("kept"));
    apply_edits(&a.edits, &mut h);
    assert!(h.get("authorization").is_none());
    assert!(h.get("x-other").is_some());

    let mut p = pb_rule(jwks(&[rsa().jwk(Some("k1"))]));
    p.forward_original_token = true;
    let a = accepted(check(&rule(p), &t));
    assert!(a.edits.is_empty());
}

#[test]
fn uri_rule_without_loaded_keys_fails_closed() {
    let p = pb::JwtRule {
        issuer: ISSUER.to_string(),
        jwks_uri: "https://issuer.example/jwks".to_string(),
        ..Default::default()
    };
    let r = rule(p);
    let err = rejected(check(&r, &token("RS256", Some("k1"), claims(), rsa())));
    assert_eq!(err.to_string(), "Jwks remote fetch is failed");
    // Cheaper checks come first: an expired token says so even before keys are available.
    let mut c = claims();
    c["exp"] = json!(NOW_SECS - 3600);
    assert_eq!(
        rejected(check(&r, &token("RS256", Some("k1"), c, rsa()))),
        JwtError::Expired
    );
}

#[test]
fn www_authenticate_value() {
    assert_eq!(
        www_authenticate("http://reviews/path"),
        "Bearer realm=\"http://reviews/path\", error=\"invalid_token\""
    );
}
