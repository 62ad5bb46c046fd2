//! In-process: the waypoint's L7 policies — local rate limits (and, as they land, authorization and JWT
//! authentication) — over real HBONE from a source ztunnel's point of view. Nets 80–86 (`extauthz_grpc.rs` has
//! 87–88).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::faulty::{self, Mesh};

#[tokio::test]
async fn rate_limits_answer_429_past_the_bucket_and_count_it() {
    let mut m = Mesh::new(80);
    let api = m.service("api").endpoint("api", 10, "api");
    let other = m.service("other").endpoint("other", 11, "other");
    m.route("api", "").route("other", "");
    // 3 requests per minute per client identity on `api` (the service), and 2 per minute for /login on the
    // route's rule only.
    m.item(
        "rateLimits",
        "{name: demo/api, targets: [{kind: SERVICE, name: api.demo.svc.cluster.local}], \
         limits: [{key: CLIENT_IDENTITY, requests: 3, intervalMs: 60000}]}",
    );
    m.item(
        "rateLimits",
        "{name: demo/login, targets: [{kind: ROUTE, name: demo/httproute/other}], \
         limits: [{requests: 2, intervalMs: 60000, matches: [{path: {type: PathPrefix, value: /login}}]}]}",
    );
    let api = faulty::ok(api, "api").await;
    let _other = faulty::ok(other, "other").await;
    let w = m.start().await;

    for left in [2, 1, 0] {
        let a = w.get("api", "/", &[]).await;
        assert_eq!((a.status, a.served_by()), (200, "api"), "{a:?}");
        assert_eq!(a.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(
            a.header("x-ratelimit-remaining"),
            Some(left.to_string().as_str())
        );
    }
    let a = w.get("api", "/", &[]).await;
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(a.header("x-ratelimit-remaining"), Some("0"));
    let retry_after: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=20).contains(&retry_after),
        "one token per 20 s: {retry_after}"
    );
    assert_eq!(
        api.attempts(),
        3,
        "the limited request never reached the backend"
    );

    // The route-rule limit applies to its matches only.
    for _ in 0..5 {
        assert_eq!(w.get("other", "/home", &[]).await.status, 200);
    }
    assert_eq!(w.get("other", "/login", &[]).await.status, 200);
    assert_eq!(w.get("other", "/login", &[]).await.status, 200);
    assert_eq!(w.get("other", "/login", &[]).await.status, 429);

    assert_eq!(w.requests("api", Some(429), Some("RL")).await, 1.0);
    let metrics = w.metrics().await;
    assert!(
        metrics.contains("ambit_waypoint_rate_limited_total 2"),
        "{metrics}"
    );
}

/// An Ed25519 key, its JWKS, and tokens signed with it.
struct Issuer {
    key: aws_lc_rs::signature::Ed25519KeyPair,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Issuer {
    fn new() -> Issuer {
        Issuer {
            key: aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap(),
        }
    }

    fn jwks(&self) -> String {
        use aws_lc_rs::signature::KeyPair;
        serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA",
            "x": b64(self.key.public_key().as_ref())}]})
        .to_string()
    }

    fn token(&self, sub: &str, exp_from_now: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let header = b64(br#"{"alg":"EdDSA","kid":"k1","typ":"JWT"}"#);
        let payload = b64(
            serde_json::json!({"iss": "https://issuer.example", "sub": sub,
            "aud": "api", "exp": now + exp_from_now, "group": "admins"})
            .to_string()
            .as_bytes(),
        );
        let signed = format!("{header}.{payload}");
        let sig = self.key.sign(signed.as_bytes());
        format!("{signed}.{}", b64(sig.as_ref()))
    }
}

#[tokio::test]
async fn request_authentication_refuses_bad_tokens_and_lets_none_through() {
    let mut m = Mesh::new(81);
    let api = m.service("api").endpoint("api", 10, "api");
    m.route("api", "");
    let issuer = Issuer::new();
    let jwks = serde_json::to_string(&issuer.jwks()).unwrap();
    m.item(
        "requestAuthentications",
        &format!(
            "{{name: demo/jwt, targets: [{{kind: SERVICE, name: api.demo.svc.cluster.local}}], \
             jwtRules: [{{issuer: \"https://issuer.example\", audiences: [api], jwks: {jwks}}}]}}"
        ),
    );
    let api = faulty::ok(api, "api").await;
    let w = m.start().await;

    let good = format!("Bearer {}", issuer.token("alice", 3600));
    let a = w.get("api", "/", &[("authorization", &good)]).await;
    assert_eq!((a.status, a.served_by()), (200, "api"), "{a:?}");

    // No token is not an error by itself (an AuthorizationPolicy with requestPrincipals would refuse it).
    assert_eq!(w.get("api", "/", &[]).await.status, 200);

    let expired = format!("Bearer {}", issuer.token("alice", -3600));
    let a = w.get("api", "/", &[("authorization", &expired)]).await;
    assert_eq!(a.status, 401, "{a:?}");
    assert!(a.body.contains("Jwt is expired"), "{a:?}");
    assert!(a.header("www-authenticate").unwrap().starts_with("Bearer"));

    let other = Issuer::new();
    let forged = format!("Bearer {}", other.token("mallory", 3600));
    let a = w.get("api", "/", &[("authorization", &forged)]).await;
    assert_eq!(a.status, 401, "{a:?}");
    assert!(a.body.contains("Jwt verification fails"), "{a:?}");
    assert_eq!(
        api.attempts(),
        2,
        "refused requests never reach the backend"
    );
}

#[tokio::test]
async fn authorization_policies_allow_deny_and_need_request_principals() {
    let mut m = Mesh::new(82);
    let api = m.service("api").endpoint("api", 10, "api");
    let admin = m.service("admin").endpoint("admin", 11, "admin");
    m.route("api", "").route("admin", "");
    // api: GET only, for the client's identity; POST denied for everyone by a DENY policy with a header
    // condition, to check the evaluation order (DENY before ALLOW).
    m.item(
        "authorizationPolicies",
        "{name: demo/api-get, action: ALLOW, targets: [{kind: SERVICE, name: api.demo.svc.cluster.local}], \
         rules: [{from: [{principals: [cluster.local/ns/demo/sa/client]}], to: [{methods: [GET, POST]}]}]}",
    );
    m.item(
        "authorizationPolicies",
        "{name: demo/api-no-post, action: DENY, targets: [{kind: SERVICE, name: api.demo.svc.cluster.local}], \
         rules: [{to: [{methods: [POST]}], when: [{key: \"request.headers[x-env]\", values: [prod]}]}]}",
    );
    // admin: only tokens of alice (RequestAuthentication + requestPrincipals).
    let issuer = Issuer::new();
    let jwks = serde_json::to_string(&issuer.jwks()).unwrap();
    m.item(
        "requestAuthentications",
        &format!(
            "{{name: demo/jwt, targets: [{{kind: SERVICE, name: admin.demo.svc.cluster.local}}], \
             jwtRules: [{{issuer: \"https://issuer.example\", jwks: {jwks}}}]}}"
        ),
    );
    m.item(
        "authorizationPolicies",
        "{name: demo/admin-alice, action: ALLOW, targets: [{kind: SERVICE, name: admin.demo.svc.cluster.local}], \
         rules: [{from: [{requestPrincipals: [\"https://issuer.example/alice\"]}], \
                  when: [{key: \"request.auth.claims[group]\", values: [admins]}]}]}",
    );
    let api = faulty::ok(api, "api").await;
    let admin = faulty::ok(admin, "admin").await;
    let w = m.start().await;

    assert_eq!(w.get("api", "/", &[]).await.status, 200);
    let post = |h: &'static [(&'static str, &'static str)]| {
        w.send("api", "POST", "/", h, bytes::Bytes::from_static(b"x"))
    };
    assert_eq!(post(&[]).await.status, 200, "ALLOW lets POST through");
    let a = post(&[("x-env", "prod")]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (403, "RBAC: access denied"),
        "DENY wins"
    );
    assert_eq!(w.get("api", "/", &[("x-env", "prod")]).await.status, 200);
    let a = w.send("api", "DELETE", "/", &[], bytes::Bytes::new()).await;
    assert_eq!(a.status, 403, "an ALLOW policy that matches nothing denies");
    assert_eq!(api.attempts(), 3);

    // No token: no request principal, so the ALLOW matches nothing (403, not 401).
    assert_eq!(w.get("admin", "/", &[]).await.status, 403);
    let alice = format!("Bearer {}", issuer.token("alice", 3600));
    let a = w.get("admin", "/", &[("authorization", &alice)]).await;
    assert_eq!((a.status, a.served_by()), (200, "admin"), "{a:?}");
    let bob = format!("Bearer {}", issuer.token("bob", 3600));
    assert_eq!(
        w.get("admin", "/", &[("authorization", &bob)]).await.status,
        403
    );
    let bad = format!("Bearer {}", Issuer::new().token("alice", 3600));
    assert_eq!(
        w.get("admin", "/", &[("authorization", &bad)]).await.status,
        401
    );
    assert_eq!(admin.attempts(), 1);
    assert_eq!(w.requests("api", Some(403), None).await, 2.0);
}

#[tokio::test]
async fn a_gateway_class_default_deny_and_an_ext_authz_provider() {
    let mut m = Mesh::new(83);
    let api = m.service("api").endpoint("api", 10, "api");
    let ext = m.service("ext").endpoint("ext", 11, "ext");
    m.route("api", "");
    // The provider allows requests that carry `x-allow: yes` (and says who it is in `x-checked-by`), and
    // denies others with 401 and a header for the client.
    m.item(
        "authorizationPolicies",
        "{name: demo/ext, action: CUSTOM, targets: [{kind: SERVICE, name: api.demo.svc.cluster.local}], \
         rules: [{to: [{paths: [\"/private/*\"]}]}], \
         provider: {name: ext, service: ext.demo.svc.cluster.local, port: 80, timeoutMs: 2000, \
                    headersToUpstreamOnAllow: [x-checked-by], headersToDownstreamOnDeny: [x-why]}}",
    );
    let api = faulty::ok(api, "api").await;
    ext_authz_server(ext).await;
    let w = m.start().await;

    assert_eq!(
        w.get("api", "/public", &[]).await.status,
        200,
        "CUSTOM rule does not match"
    );
    let a = w.get("api", "/private/x", &[]).await;
    assert_eq!(
        (a.status, a.header("x-why")),
        (401, Some("no x-allow")),
        "{a:?}"
    );
    let a = w.get("api", "/private/x", &[("x-allow", "yes")]).await;
    assert_eq!((a.status, a.served_by()), (200, "api"), "{a:?}");
    assert_eq!(api.attempts(), 2);

    // A mesh-wide default deny on the waypoint's class: everything is refused.
    let mut m = Mesh::new(84);
    let api = m.service("api").endpoint("api", 10, "api");
    m.route("api", "");
    m.item(
        "authorizationPolicies",
        "{name: istio-system/deny-all, action: DENY, targets: [{kind: GATEWAY_CLASS, name: istio-waypoint}], \
         rules: [{}]}",
    );
    let api = faulty::ok(api, "api").await;
    let w = m.start().await;
    assert_eq!(w.get("api", "/", &[]).await.status, 403);
    assert_eq!(api.attempts(), 0);
}

/// An HTTP ext_authz provider: 200 with `x-checked-by: ext` when the request has `x-allow: yes`, else 401 with
/// `x-why`.
async fn ext_authz_server(addr: std::net::SocketAddr) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let allowed = req.headers().get("x-allow").is_some_and(|v| v == "yes");
                    let resp = if allowed {
                        http::Response::builder()
                            .status(200)
                            .header("x-checked-by", "ext")
                            .body(Full::new(bytes::Bytes::new()))
                    } else {
                        http::Response::builder()
                            .status(401)
                            .header("x-why", "no x-allow")
                            .body(Full::new(bytes::Bytes::from_static(b"denied by ext")))
                    };
                    Ok::<_, std::convert::Infallible>(resp.unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}

#[tokio::test]
async fn the_backend_learns_the_client_address_and_identity() {
    let mut m = Mesh::new(85);
    let api = m.service("api").endpoint("api", 10, "api");
    m.route("api", "");
    m.env("XFCC_INCLUDE_CLIENT_IDENTITY", "true");
    support::http_backend(api, "api").await;
    let w = m.start().await;
    // The client's own claims are replaced (XFCC) or extended (XFF).
    let a = w
        .get(
            "api",
            "/",
            &[
                (
                    "x-forwarded-client-cert",
                    "URI=spiffe://cluster.local/ns/demo/sa/admin",
                ),
                ("x-forwarded-for", "203.0.113.7"),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.header("x-echo-xfcc"),
        Some(
            "By=spiffe://cluster.local/ns/demo/sa/waypoint;URI=spiffe://cluster.local/ns/demo/sa/client"
        )
    );
    assert_eq!(a.header("x-echo-xff"), Some("203.0.113.7, 127.0.85.2"));

    // Without the Gateway's annotation no XFCC reaches the backend, whatever the client sent.
    let mut m = Mesh::new(86);
    let api = m.service("api").endpoint("api", 10, "api");
    m.route("api", "");
    support::http_backend(api, "api").await;
    let w = m.start().await;
    let a = w
        .get(
            "api",
            "/",
            &[("x-forwarded-client-cert", "URI=spiffe://evil")],
        )
        .await;
    assert_eq!(a.header("x-echo-xfcc"), Some(""));
    assert_eq!(a.header("x-echo-xff"), Some("127.0.86.2"));
}
