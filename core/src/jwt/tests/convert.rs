//! `RequestAuthentication` conversion and JWKS parsing errors.

use super::*;

fn err(p: pb::JwtRule) -> String {
    let policy = pb::RequestAuthentication {
        jwt_rules: vec![pb_rule(jwks(&[rsa().jwk(None)])), p],
        ..Default::default()
    };
    rules_from_proto(&policy).unwrap_err().to_string()
}

#[test]
fn field_path_errors() {
    let ok = || pb_rule(jwks(&[rsa().jwk(None)]));
    assert_eq!(
        err(pb::JwtRule {
            issuer: String::new(),
            ..ok()
        }),
        "jwtRules[1].issuer: empty"
    );
    assert!(
        err(pb::JwtRule {
            jwks: "{not json".to_string(),
            ..ok()
        })
        .starts_with("jwtRules[1].jwks: invalid JWKS: not JSON")
    );
    assert_eq!(
        err(pb::JwtRule {
            jwks: r#"{"keys":[{"kty":"XYZ"}]}"#.to_string(),
            ..ok()
        }),
        "jwtRules[1].jwks: invalid JWKS: keys[0].kty: unknown key type \"XYZ\""
    );
    assert_eq!(
        err(pb::JwtRule {
            jwks: r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.to_string(),
            ..ok()
        }),
        "jwtRules[1].jwks: invalid JWKS: keys[0].kty: symmetric (\"oct\") keys are not supported"
    );
    assert_eq!(
        err(pb::JwtRule {
            jwks: r#"{"foo":1}"#.to_string(),
            ..ok()
        }),
        "jwtRules[1].jwks: invalid JWKS: no [keys] field"
    );
    assert_eq!(
        err(pb::JwtRule {
            jwks: String::new(),
            ..ok()
        }),
        "jwtRules[1].jwksUri: neither jwks nor jwksUri is set"
    );
    assert_eq!(
        err(pb::JwtRule {
            jwks: String::new(),
            jwks_uri: "ftp://x/jwks".to_string(),
            ..ok()
        }),
        "jwtRules[1].jwksUri: \"ftp://x/jwks\": not an https://, http:// or file:// URI"
    );
    let bad_header = pb::JwtHeader {
        name: "bad header".to_string(),
        prefix: String::new(),
    };
    assert_eq!(
        err(pb::JwtRule {
            from_headers: vec![bad_header],
            ..ok()
        }),
        "jwtRules[1].fromHeaders[0].name: \"bad header\": not a header name"
    );
    assert_eq!(
        err(pb::JwtRule {
            from_params: vec![String::new()],
            ..ok()
        }),
        "jwtRules[1].fromParams[0]: empty"
    );
    assert_eq!(
        err(pb::JwtRule {
            from_cookies: vec!["a;b".to_string()],
            ..ok()
        }),
        "jwtRules[1].fromCookies[0]: \"a;b\": not a cookie name"
    );
    assert_eq!(
        err(pb::JwtRule {
            output_payload_to_header: "x y".to_string(),
            ..ok()
        }),
        "jwtRules[1].outputPayloadToHeader: \"x y\": not a header name"
    );
    let no_claim = pb::ClaimToHeader {
        header: "x-sub".to_string(),
        claim: String::new(),
    };
    assert_eq!(
        err(pb::JwtRule {
            output_claim_to_headers: vec![no_claim],
            ..ok()
        }),
        "jwtRules[1].outputClaimToHeaders[0].claim: empty"
    );
}

#[test]
fn defaults_and_uri_rules() {
    let r = rule(pb_rule(jwks(&[rsa().jwk(None)])));
    assert_eq!(r.locations, TokenLocation::defaults());
    assert!(!r.forward_original_token);
    let p = pb::JwtRule {
        issuer: ISSUER.to_string(),
        jwks_uri: "file:///etc/jwks.json".to_string(),
        ..Default::default()
    };
    assert_eq!(
        rule(p.clone()).keys,
        KeySource::Uri {
            uri: "file:///etc/jwks.json".to_string(),
            refresh: DEFAULT_JWKS_REFRESH
        }
    );
    let r = rule(pb::JwtRule {
        jwks_refresh_ms: 1500,
        ..p
    });
    assert_eq!(
        r.keys,
        KeySource::Uri {
            uri: "file:///etc/jwks.json".to_string(),
            refresh: Duration::from_millis(1500)
        }
    );
    // Inline keys win when the controller filled both.
    let both = pb::JwtRule {
        jwks_uri: "https://x/jwks".to_string(),
        ..pb_rule(jwks(&[rsa().jwk(None)]))
    };
    assert!(matches!(rule(both).keys, KeySource::Inline(_)));
}

#[test]
fn jwks_documents() {
    let parse_err = |keys: &[Value]| Jwks::parse(&jwks(keys)).unwrap_err().to_string();
    // Encryption keys are left out; a set with only those has no signing key.
    let mut enc = rsa().jwk(Some("enc"));
    enc["use"] = json!("enc");
    enc["alg"] = json!("RSA-OAEP");
    let set = Jwks::parse(&jwks(&[enc.clone(), ed25519().jwk(Some("sig"))])).unwrap();
    assert_eq!(set.keys.len(), 1);
    assert_eq!(set.keys[0].kid.as_deref(), Some("sig"));
    assert_eq!(parse_err(&[enc]), "invalid JWKS: no signing key");
    assert_eq!(parse_err(&[]), "invalid JWKS: no signing key");
    // A short RSA modulus.
    let small = json!({"kty": "RSA", "n": b64(&[0xff; 128]), "e": "AQAB"});
    assert_eq!(
        parse_err(&[small]),
        "invalid JWKS: keys[0].n: a 1024-bit RSA modulus; at least 2048 bits are required"
    );
    let mut no_e = rsa().jwk(None);
    no_e.as_object_mut().unwrap().remove("e");
    assert_eq!(parse_err(&[no_e]), "invalid JWKS: keys[0].e: missing");
    // EC: the curve must be supported and the coordinates its size.
    let mut p521 = ec256().jwk(None);
    p521["crv"] = json!("P-521");
    assert_eq!(
        parse_err(&[p521]),
        "invalid JWKS: keys[0].crv: \"P-521\" is not supported (P-256, P-384)"
    );
    let mut short = ec256().jwk(None);
    short["x"] = json!(b64(&[1; 31]));
    assert_eq!(
        parse_err(&[short]),
        "invalid JWKS: keys[0].x: x and y must be 32 bytes for P-256"
    );
    let mut x25519 = ed25519().jwk(None);
    x25519["crv"] = json!("X25519");
    assert_eq!(
        parse_err(&[x25519]),
        "invalid JWKS: keys[0].crv: \"X25519\" is not supported (Ed25519)"
    );
    // alg must fit the key type.
    let mut wrong = ec256().jwk(None);
    wrong["alg"] = json!("ES384");
    assert_eq!(
        parse_err(&[wrong]),
        "invalid JWKS: keys[0].alg: ES384 does not fit a EC key"
    );
    let mut unknown = rsa().jwk(None);
    unknown["alg"] = json!("RS1");
    assert_eq!(
        parse_err(&[unknown]),
        "invalid JWKS: keys[0].alg: \"RS1\" is not supported"
    );
    assert_eq!(
        parse_err(&[json!("key")]),
        "invalid JWKS: keys[0]: not an object"
    );
    assert_eq!(
        Jwks::parse(r#"{"keys":{}}"#).unwrap_err().to_string(),
        "invalid JWKS: [keys] is not an array"
    );
}
