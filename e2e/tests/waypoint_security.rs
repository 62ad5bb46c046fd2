//! L7 security at the waypoint, end to end (Istio's integration expectations, issue 10): `ambit local up` on
//! bookinfo plus a test ext_authz server (`e2e-ext-authz`) and the `istio` mesh ConfigMap naming it, then the
//! manifests of `examples/bookinfo/security/` applied live one case at a time (written into the watched directory,
//! removed after), with real `curl` from the `sleep` pod through its ztunnel, the namespace waypoint and the
//! backend's ztunnel. One mesh for every case; each case waits for its policy to take effect, checks its
//! `WaypointAccepted` status at the controller, asserts, removes it and waits until it no longer applies.
//!
//! * L7 AuthorizationPolicy (`TestAuthorizationL7`): GET from sleep's identity allowed, POST denied 403
//!   `RBAC: access denied`, POST under /api/ only with the header condition, another identity denied, other
//!   services untouched;
//! * RequestAuthentication + `requestPrincipals`: no token 403, an invalid (forged, expired, garbage, unknown
//!   issuer) token 401 with `www-authenticate`, a wrong audience 403, a valid token of another `sub` 403, the allowed
//!   `sub` 200 with its claim header (tokens signed here with Ed25519, JWKS `kty: OKP`), and the example's token;
//! * the mesh-wide GatewayClass default-deny in `istio-system`: every service behind the waypoint 403 (pod-addressed
//!   traffic, which skips the waypoint, still 200), then 200 again once removed;
//! * CUSTOM with an HTTP, then a gRPC, ext_authz provider on one path: `x-allow: yes` allowed (the provider's
//!   header reaches the backend), others denied with the provider's answer, other paths never asked;
//! * RateLimitPolicy, 5 a minute per `end-user`: 5 × 200 then 429 with `retry-after`, another user unaffected,
//!   counted in `ambit_waypoint_rate_limited_total`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambit_e2e::e2e_test;
use ambit_e2e::local::{LocalMesh, PodInfo, WAIT, condition, run_on_mesh};
use ambit_e2e::prom;
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, ensure};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use serde_json::{Value, json};

const NS: &str = "bookinfo";
const SLEEP: &str = "deploy/sleep";
const PRODUCTPAGE: &str = "http://productpage.bookinfo:9080";
const REVIEWS: &str = "http://reviews.bookinfo:9080/";
const RATINGS: &str = "http://ratings.bookinfo:9080";
const DETAILS: &str = "http://details.bookinfo:9080/";
/// The waypoint starts after the controller deploys it, then needs its certificate and config.
const WAYPOINT_UP: Duration = Duration::from_secs(60);
/// The controller's monitoring port, on the mesh bridge's gateway address.
const CONTROLLER_STATUS: &str = "http://10.244.0.1:15014/debug/status";
const DENIED: &str = "RBAC: access denied";
const ISSUER: &str = "testing@secure.istio.io";
const BOUND: &str = "bound to bookinfo/waypoint";

/// The test's ext_authz server and Istio's mesh config naming it as an HTTP provider.
const BACKENDS: &str = include_str!("waypoint_security/backends.yaml");
/// CUSTOM on one path of `ratings`.
const CUSTOM: &str = include_str!("waypoint_security/ratings-ext-authz.yaml");

#[path = "waypoint_security/client.rs"]
mod client;
use client::*;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo")
}

fn security(file: &str) -> Result<String> {
    let p = examples().join("security").join(file);
    std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))
}

/// A copy of `examples/bookinfo` plus the ext_authz server and the mesh config.
fn manifests(dir: &Path) -> Result<PathBuf> {
    let dst = dir.join("bookinfo");
    std::fs::create_dir_all(&dst)?;
    for e in std::fs::read_dir(examples()).context("read examples/bookinfo")? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "yaml") {
            std::fs::copy(&p, dst.join(p.file_name().context("file name")?))?;
        }
    }
    std::fs::write(
        dst.join("security-backends.yaml"),
        BACKENDS.replace("@EXT_AUTHZ@", env!("CARGO_BIN_EXE_e2e-ext-authz")),
    )?;
    Ok(dst)
}

#[test]
fn bookinfo_l7_security_through_the_waypoint() {
    e2e_test("local-waypoint-security", |dir| {
        let manifests = manifests(dir.path())?;
        run_on_mesh(dir.path(), &manifests, 2, scenario, dumps)
    });
}

/// The controller's policy statuses and the waypoint's `/config_dump` (for failure reports).
fn dumps(mesh: &LocalMesh) -> String {
    let mut out = String::new();
    for (kind, ns) in [
        ("authorizationpolicy", NS),
        ("authorizationpolicy", "istio-system"),
        ("requestauthentication", NS),
        ("ratelimitpolicy", NS),
    ] {
        match controller_status(mesh, kind, ns) {
            Ok(s) => out.push_str(&format!(
                "==== controller {kind} {ns} status ====\n{}\n",
                Value::Object(s)
            )),
            Err(e) => out.push_str(&format!("{kind} status: {e:#}\n")),
        }
    }
    match mesh.pods(NS, "waypoint") {
        Ok(p) if !p.is_empty() => {
            match mesh.get_in(&p[0].netns, "http://127.0.0.1:15000/config_dump") {
                Ok(d) => out.push_str(&format!("==== waypoint /config_dump ====\n{d}")),
                Err(e) => out.push_str(&format!("waypoint /config_dump: {e:#}")),
            }
        }
        other => out.push_str(&format!("no waypoint pod: {other:?}")),
    }
    out
}

fn scenario(mesh: &LocalMesh) -> Result<()> {
    let wp = poll("the waypoint pod", WAYPOINT_UP, || {
        Ok(mesh.pods(NS, "waypoint")?.pop())
    })?;
    for svc in ["productpage", "reviews", "ratings", "details"] {
        poll(&format!("Service {svc} WaypointBound=True"), WAIT, || {
            let s = mesh.get("service", NS, svc)?;
            Ok((condition(&s, "istio.io/WaypointBound") == Some("True")).then_some(()))
        })?;
    }
    // Clients' ztunnels learn of the binding asynchronously: wait for each service's first request through L7.
    for (app, url) in [
        ("productpage", PRODUCTPAGE),
        ("reviews", REVIEWS),
        ("ratings", RATINGS),
        ("details", DETAILS),
    ] {
        poll(
            &format!("a request to {app} through the waypoint"),
            WAIT,
            || Ok(expect_served(&[one(mesh, &[], url, &[])?], app).ok()),
        )?;
    }
    authorization_l7(mesh)?;
    request_authentication(mesh)?;
    default_deny(mesh)?;
    ext_authz(mesh)?;
    rate_limit(mesh, &wp)?;
    Ok(())
}

/// (1) `authorization-policy-productpage.yaml`: GET from sleep's identity is allowed, POST is not (403
/// `RBAC: access denied`), POST under /api/ only with `end-user: jason`; productpage's own identity is denied
/// even GET; reviews (not targeted) still serves everyone.
fn authorization_l7(mesh: &LocalMesh) -> Result<()> {
    const FILE: &str = "authorization-policy-productpage.yaml";
    apply(mesh, FILE, &security(FILE)?)?;
    expect_waypoint_accepted(mesh, "authorizationpolicy", NS, "productpage-viewer", BOUND)?;
    let post = ["-X", "POST"];
    let root = format!("{PRODUCTPAGE}/");
    poll("productpage-viewer in effect", WAIT, || {
        Ok(Some(one(mesh, &post, &root, &[])?).filter(Reply::denied))
    })?;

    expect_served(&curl(mesh, SLEEP, &[], &root, 5, &[])?, "productpage")?;
    expect_denied(
        &curl(mesh, SLEEP, &post, &root, 3, &[])?,
        "POST / from sleep",
    )?;

    // The header condition, on POST /api/*.
    let api = format!("{PRODUCTPAGE}/api/v1/products");
    let jason = ["-X", "POST", "-H", "end-user: jason"];
    expect_served(&curl(mesh, SLEEP, &jason, &api, 3, &[])?, "productpage")?;
    let other = ["-X", "POST", "-H", "end-user: someone"];
    expect_denied(
        &curl(mesh, SLEEP, &other, &api, 2, &[])?,
        "POST /api/ as someone",
    )?;
    expect_denied(
        &curl(mesh, SLEEP, &post, &api, 2, &[])?,
        "POST /api/ without end-user",
    )?;
    // The path condition: jason's POST outside /api/ matches no rule.
    expect_denied(
        &curl(mesh, SLEEP, &jason, &root, 2, &[])?,
        "POST / as jason",
    )?;

    // The principal: productpage's own pod (identity bookinfo-productpage) may not even GET it.
    let from_productpage = curl(mesh, "deploy/productpage-v1", &[], &root, 2, &[])?;
    expect_denied(&from_productpage, "GET / from productpage's identity")?;
    // A Service the policy does not target: everyone, every method.
    expect_served(&curl(mesh, SLEEP, &post, REVIEWS, 2, &[])?, "reviews")?;
    expect_served(
        &curl(mesh, "deploy/productpage-v1", &[], REVIEWS, 2, &[])?,
        "reviews",
    )?;

    // `ambit authz check --local` (the proxies' own engines on the running mesh's resources) says what the
    // waypoint just did, for the same requests: the decision and the deciding rule.
    let cases: [(&str, &[&str], &str, &str, bool); 5] = [
        (
            "bookinfo/sleep",
            &[],
            "/",
            "productpage-viewer rule 0",
            true,
        ),
        (
            "bookinfo/sleep",
            &["--method", "POST"],
            "/",
            "productpage-viewer",
            false,
        ),
        (
            "bookinfo/sleep",
            &["--method", "POST", "--header", "end-user=jason"],
            "/api/v1/products",
            "productpage-viewer rule 1",
            true,
        ),
        (
            "bookinfo/sleep",
            &["--method", "POST", "--header", "end-user=someone"],
            "/api/v1/products",
            "request.headers[end-user]",
            false,
        ),
        (
            "bookinfo/bookinfo-productpage",
            &[],
            "/",
            "principals",
            false,
        ),
    ];
    for (from, args, path, names, allowed) in cases {
        let out = std::process::Command::new(ambit_e2e::local::ambit_bin()?)
            .args(["authz", "check", "--local", "--from", from])
            .args(["--to", "productpage.bookinfo:9080", "--path", path])
            .args(args)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let want = if allowed { 0 } else { 1 };
        ensure!(
            out.status.code() == Some(want),
            "authz check {from} {args:?} {path}: exit {:?}, want {want} (the waypoint {}):\n{text}",
            out.status.code(),
            if allowed { "allowed it" } else { "denied it" }
        );
        ensure!(
            text.contains(names),
            "authz check {from} {args:?} {path}: no {names:?} in\n{text}"
        );
    }

    remove(mesh, FILE)?;
    poll("productpage-viewer removed", WAIT, || {
        Ok(expect_served(&[one(mesh, &post, &root, &[])?], "productpage").ok())
    })?;
    Ok(())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A compact EdDSA token with `kid` and `claims`, signed by `key`.
fn sign(key: &Ed25519KeyPair, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64(sig.as_ref()))
}

/// Valid for an hour, for audience `bookinfo`.
fn claims(iss: &str, sub: &str) -> Value {
    let now = now_secs();
    json!({"iss": iss, "sub": sub, "aud": ["bookinfo"], "iat": now, "exp": now + 3600})
}

/// (2) `request-authentication-reviews.yaml` with the test's own key added to its JWKS: no token passes
/// authentication and is refused by `requestPrincipals` (403); a token that does not verify gets 401 with
/// `www-authenticate`; a verified token of the wrong audience 403 (as Envoy answers); a verified token of another
/// `sub` 403; the allowed `sub` 200, with its `sub` in `x-jwt-sub` at the backend. The example's own
/// `sleep.jwt`/`jason.jwt` too.
fn request_authentication(mesh: &LocalMesh) -> Result<()> {
    const FILE: &str = "request-authentication-reviews.yaml";
    let key = Ed25519KeyPair::generate().context("generate an Ed25519 key")?;
    let forger = Ed25519KeyPair::generate().context("generate an Ed25519 key")?;
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "e2e",
        "x": b64(key.public_key().as_ref())});
    let example = security(FILE)?;
    let from = r#"jwks: '{"keys": ["#;
    ensure!(
        example.contains(from),
        "{FILE} changed shape (no inline jwks)"
    );
    apply(
        mesh,
        FILE,
        &example.replace(from, &format!("{from}{jwk}, ")),
    )?;
    expect_waypoint_accepted(mesh, "requestauthentication", NS, "reviews-jwt", BOUND)?;
    expect_waypoint_accepted(
        mesh,
        "authorizationpolicy",
        NS,
        "reviews-require-jwt",
        BOUND,
    )?;
    poll("reviews-require-jwt in effect", WAIT, || {
        Ok(Some(one(mesh, &[], REVIEWS, &[])?).filter(Reply::denied))
    })?;

    let bearer = |t: &str| format!("authorization: Bearer {t}");
    let req = |token: &str| -> Result<Reply> {
        one(
            mesh,
            &["-H", &bearer(token)],
            REVIEWS,
            &["www-authenticate"],
        )
    };
    expect_denied(&curl(mesh, SLEEP, &[], REVIEWS, 3, &[])?, "no token")?;

    let now = now_secs();
    let mut expired = claims(ISSUER, "sleep");
    expired["iat"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let invalid = [
        ("garbage", "not-a-jwt".to_owned()),
        ("forged", sign(&forger, "e2e", &claims(ISSUER, "sleep"))),
        ("expired", sign(&key, "e2e", &expired)),
        (
            "unknown issuer",
            sign(&key, "e2e", &claims("someone@else", "sleep")),
        ),
    ];
    for (what, token) in &invalid {
        let r = req(token)?;
        ensure!(
            r.code == 401 && r.header("www-authenticate").starts_with("Bearer "),
            "{what} token: want 401 with www-authenticate, got {} {:?} {:?}",
            r.code,
            r.headers,
            r.body
        );
    }
    let mut wrong_aud = claims(ISSUER, "sleep");
    wrong_aud["aud"] = json!(["other"]);
    let r = req(&sign(&key, "e2e", &wrong_aud))?;
    ensure!(
        r.code == 403 && !r.denied(),
        "wrong audience: want Envoy's 403 (audiences not allowed), got {} {:?}",
        r.code,
        r.body
    );
    // Verified, but not the allowed principal.
    let r = req(&sign(&key, "e2e", &claims(ISSUER, "jason")))?;
    ensure!(
        r.denied(),
        "sub jason: want 403 {DENIED:?}, got {} {:?}",
        r.code,
        r.body
    );
    // The allowed principal, on one connection.
    let token = sign(&key, "e2e", &claims(ISSUER, "sleep"));
    let ok = curl(mesh, SLEEP, &["-H", &bearer(&token)], REVIEWS, 3, &[])?;
    for e in expect_served(&ok, "reviews")? {
        ensure!(
            e.headers.get("x-jwt-sub").map(String::as_str) == Some("sleep"),
            "outputClaimToHeaders: the backend saw {:?}",
            e.headers
        );
    }
    // The example's pre-signed tokens (its own key, still in the JWKS).
    let example_token = |f: &str| -> Result<String> { Ok(security(f)?.trim().to_owned()) };
    expect_served(&[req(&example_token("sleep.jwt")?)?], "reviews")?;
    expect_denied(
        &[req(&example_token("jason.jwt")?)?],
        "the example's jason.jwt",
    )?;

    remove(mesh, FILE)?;
    poll("reviews-jwt removed", WAIT, || {
        Ok(expect_served(&[one(mesh, &[], REVIEWS, &[])?], "reviews").ok())
    })?;
    // And a token nothing verifies any more is just a header.
    expect_served(&[req("not-a-jwt")?], "reviews")?;
    Ok(())
}

/// (3) `waypoint-default-deny.yaml`: every service behind the waypoint answers 403 while it exists — from the
/// waypoint: the same pod addressed directly (which skips a service waypoint) still answers; an ALLOW policy of
/// one Service opens exactly what it allows again — and everything is 200 once the default-deny is removed.
fn default_deny(mesh: &LocalMesh) -> Result<()> {
    const FILE: &str = "waypoint-default-deny.yaml";
    apply(mesh, FILE, &security(FILE)?)?;
    expect_waypoint_accepted(
        mesh,
        "authorizationpolicy",
        "istio-system",
        "waypoint-default-deny",
        "bound to every waypoint of GatewayClass istio-waypoint",
    )?;
    let services = [
        ("productpage", format!("{PRODUCTPAGE}/")),
        ("reviews", REVIEWS.to_owned()),
        ("ratings", format!("{RATINGS}/")),
        ("details", DETAILS.to_owned()),
    ];
    poll("waypoint-default-deny in effect", WAIT, || {
        Ok(Some(one(mesh, &[], DETAILS, &[])?).filter(Reply::denied))
    })?;
    for (app, url) in &services {
        expect_denied(&curl(mesh, SLEEP, &[], url, 2, &[])?, app)?;
    }
    let pod = mesh
        .pods(NS, "details-v1")?
        .pop()
        .context("details-v1 pod")?;
    let direct = one(mesh, &[], &format!("http://{}:9080/", pod.ip), &[])?;
    ensure!(
        direct.code == 200 && direct.echo()?.pod == pod.name,
        "pod-addressed request under the waypoint default-deny: {} {}",
        direct.code,
        direct.body
    );

    // Istio's "default deny, then allow": the Service's own ALLOW policy lets its requests through again; what
    // it does not allow, and every other service, stays denied.
    const ALLOW: &str = "authorization-policy-productpage.yaml";
    apply(mesh, ALLOW, &security(ALLOW)?)?;
    let root = format!("{PRODUCTPAGE}/");
    poll("productpage-viewer over the default-deny", WAIT, || {
        Ok(expect_served(&[one(mesh, &[], &root, &[])?], "productpage").ok())
    })?;
    expect_served(&curl(mesh, SLEEP, &[], &root, 2, &[])?, "productpage")?;
    expect_denied(
        &curl(mesh, SLEEP, &["-X", "POST"], &root, 2, &[])?,
        "POST / under the default-deny",
    )?;
    expect_denied(&curl(mesh, SLEEP, &[], REVIEWS, 2, &[])?, "reviews")?;
    remove(mesh, ALLOW)?;
    poll(
        "productpage-viewer removed under the default-deny",
        WAIT,
        || Ok(Some(one(mesh, &[], &root, &[])?).filter(Reply::denied)),
    )?;

    remove(mesh, FILE)?;
    poll("waypoint-default-deny removed", WAIT, || {
        Ok(expect_served(&[one(mesh, &[], DETAILS, &[])?], "details").ok())
    })?;
    for (app, url) in &services {
        expect_served(&curl(mesh, SLEEP, &[], url, 2, &[])?, app)?;
    }
    Ok(())
}

/// (4) CUSTOM on `ratings` `/protected/*` with the `e2e-ext-authz` provider, over HTTP then over gRPC: `x-allow:
/// yes` passes and the provider's `x-ext-authz-check-result` (naming the path it was asked about) reaches the
/// backend; anything else gets the provider's 403 and its header; other paths are never sent to the provider.
/// Then a CUSTOM policy naming a provider that does not exist: `Invalid`, and it denies everything.
fn ext_authz(mesh: &LocalMesh) -> Result<()> {
    const FILE: &str = "ratings-ext-authz.yaml";
    const RESULT: &str = "x-ext-authz-check-result";
    let protected = format!("{RATINGS}/protected/a");
    // The HTTP provider is asked on its `pathPrefix` + path, the gRPC one is told the path.
    for (provider, checked) in [
        ("e2e-ext-authz", "/check/protected/a"),
        ("e2e-ext-authz-grpc", "/protected/a"),
    ] {
        let custom = CUSTOM.replace("name: e2e-ext-authz}", &format!("name: {provider}}}"));
        apply(mesh, FILE, &custom)?;
        expect_waypoint_accepted(mesh, "authorizationpolicy", NS, "ratings-ext-authz", BOUND)?;
        poll(
            &format!("ratings-ext-authz ({provider}) in effect"),
            WAIT,
            || Ok(Some(one(mesh, &[], &protected, &[])?).filter(|r| r.code == 403)),
        )?;

        let allowed = curl(mesh, SLEEP, &["-H", "x-allow: yes"], &protected, 3, &[])?;
        for e in expect_served(&allowed, "ratings")? {
            ensure!(
                e.headers.get(RESULT).map(String::as_str)
                    == Some(format!("allowed {checked}").as_str()),
                "{provider}: allowed request: the backend saw {RESULT} {:?}",
                e.headers.get(RESULT)
            );
        }
        for args in [&[][..], &["-H", "x-allow: no"][..]] {
            let r = one(mesh, args, &protected, &[RESULT])?;
            ensure!(
                r.code == 403
                    && r.body.trim() == "denied by e2e-ext-authz"
                    && r.header(RESULT) == format!("denied {checked}"),
                "{provider}: denied request {args:?}: want the provider's 403, got {} {:?} {:?}",
                r.code,
                r.headers,
                r.body
            );
        }
        // Not a path of the rule: the provider is not asked (no header), the request passes.
        for e in expect_served(
            &curl(mesh, SLEEP, &[], &format!("{RATINGS}/public"), 2, &[])?,
            "ratings",
        )? {
            ensure!(
                !e.headers.contains_key(RESULT),
                "/public was sent to the provider: {:?}",
                e.headers
            );
        }

        remove(mesh, FILE)?;
        poll("ratings-ext-authz removed", WAIT, || {
            Ok(expect_served(&[one(mesh, &[], &protected, &[])?], "ratings").ok())
        })?;
    }

    // A provider the mesh config does not have: the policy says why (`Invalid`) and denies everything it
    // targets, even what the real provider would allow (istiod's `rbacDefaultDenyAll`).
    let typo = CUSTOM
        .replace("name: e2e-ext-authz}", "name: e2e-ext-authx}")
        .replace(
            "rules: [{to: [{operation: {paths: [\"/protected/*\"]}}]}]",
            "rules: [{}]",
        );
    ensure!(
        typo.contains("e2e-ext-authx") && typo.contains("rules: [{}]"),
        "CUSTOM changed shape"
    );
    apply(mesh, FILE, &typo)?;
    let c = expect_waypoint_condition(
        mesh,
        "authorizationpolicy/bookinfo/ratings-ext-authz",
        "Invalid",
    )?;
    ensure!(
        c["message"].as_str().is_some_and(|m| m.contains(
            "provider.name: \"e2e-ext-authx\" is not an ext_authz extension provider of the mesh config"
        ) && m.contains("denies every request")),
        "unknown provider: {c}"
    );
    poll("the unknown provider in effect", WAIT, || {
        Ok(Some(one(mesh, &[], &format!("{RATINGS}/public"), &[])?).filter(Reply::denied))
    })?;
    expect_denied(
        &curl(mesh, SLEEP, &["-H", "x-allow: yes"], &protected, 2, &[])?,
        "CUSTOM with an unknown provider",
    )?;
    remove(mesh, FILE)?;
    poll("the unknown provider removed", WAIT, || {
        Ok(expect_served(&[one(mesh, &[], &protected, &[])?], "ratings").ok())
    })?;
    Ok(())
}

/// `ambit_waypoint_rate_limited_total` at the waypoint.
fn rate_limited(mesh: &LocalMesh, wp: &PodInfo) -> Result<f64> {
    let text = mesh.get_in(&wp.netns, "http://127.0.0.1:15020/metrics")?;
    Ok(prom::sum(
        &prom::parse(&text),
        "ambit_waypoint_rate_limited_total",
        &[],
    ))
}

/// (5) `rate-limit-details.yaml`, 5 requests a minute per `end-user`: jason's first 5 get 200 with
/// `x-ratelimit-remaining` counting down, the 6th 429 with `retry-after` (a token is back within 12 s), another
/// user still 200 (own bucket), and the waypoint counts one limited request. The wait for the policy uses users of
/// its own, so jason's bucket is untouched.
fn rate_limit(mesh: &LocalMesh, wp: &PodInfo) -> Result<()> {
    const FILE: &str = "rate-limit-details.yaml";
    const HEADERS: [&str; 3] = ["x-ratelimit-limit", "x-ratelimit-remaining", "retry-after"];
    apply(mesh, FILE, &security(FILE)?)?;
    expect_waypoint_accepted(mesh, "ratelimitpolicy", NS, "details-per-user", BOUND)?;
    let probe = AtomicUsize::new(0);
    poll("details-per-user in effect", WAIT, || {
        let user = format!("end-user: probe-{}", probe.fetch_add(1, Ordering::Relaxed));
        Ok(Some(one(mesh, &["-H", &user], DETAILS, &HEADERS)?)
            .filter(|r| r.header("x-ratelimit-limit") == "5"))
    })?;

    let before = rate_limited(mesh, wp)?;
    let jason = curl(
        mesh,
        SLEEP,
        &["-H", "end-user: jason"],
        DETAILS,
        6,
        &HEADERS,
    )?;
    let (ok, limited) = jason.split_at(5);
    expect_served(ok, "details")?;
    let remaining: Vec<&str> = ok
        .iter()
        .map(|r| r.header("x-ratelimit-remaining"))
        .collect();
    ensure!(
        remaining == ["4", "3", "2", "1", "0"],
        "x-ratelimit-remaining of jason's 5 allowed requests: {remaining:?}"
    );
    let r = &limited[0];
    let retry: u64 = r.header("retry-after").parse().unwrap_or(0);
    ensure!(
        r.code == 429 && (1..=12).contains(&retry) && r.header("x-ratelimit-remaining") == "0",
        "jason's 6th request: want 429 with retry-after 1..=12, got {} {:?} {:?}",
        r.code,
        r.headers,
        r.body
    );
    expect_served(
        &curl(mesh, SLEEP, &["-H", "end-user: someone"], DETAILS, 2, &[])?,
        "details",
    )?;
    let now = poll("the waypoint counted the limited request", WAIT, || {
        let now = rate_limited(mesh, wp)?;
        Ok((now > before).then_some(now))
    })?;
    ensure!(
        now - before == 1.0,
        "ambit_waypoint_rate_limited_total grew by {} for one 429",
        now - before
    );

    remove(mesh, FILE)?;
    poll("details-per-user removed", WAIT, || {
        Ok(
            Some(one(mesh, &["-H", "end-user: jason"], DETAILS, &HEADERS)?)
                .filter(|r| r.code == 200 && r.header("x-ratelimit-limit").is_empty()),
        )
    })?;
    Ok(())
}
