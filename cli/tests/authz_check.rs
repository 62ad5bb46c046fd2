//! `ambit authz check --manifests` on the quickstart (with its deny policy) and on bookinfo (L7 policies, JWT),
//! through `controller compute`: decisions, exit codes, and that the explanation names the deciding rule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

mod common;
use common::{controller, repo};

/// A directory with the YAML files of each `dirs` (relative to the repository).
fn fixture(dirs: &[&str]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for dir in dirs {
        for e in std::fs::read_dir(repo().join(dir)).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "yaml") {
                std::fs::copy(&p, d.path().join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    d
}

fn check(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(["authz", "check", "--manifests"])
        .arg(dir)
        .args(args)
        .env("AMBIT_CONTROLLER_BIN", controller())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.code().unwrap_or(-1),
        stdout + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn quickstart_deny_client() {
    let dir = fixture(&["examples/quickstart", "examples/quickstart/policies"]);
    let (code, out) = check(
        dir.path(),
        &["--from", "demo/client", "--to", "server.demo:80"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("destination ztunnel demo/server-compute-0"),
        "{out}"
    );
    assert!(out.contains(": DENY: demo/deny-client rule 0"), "{out}");
    assert!(
        out.contains("source ztunnel demo/client-compute-0: nothing enforced"),
        "{out}"
    );
    // Another identity is not denied.
    let (code, out) = check(
        dir.path(),
        &[
            "--from",
            "demo/other",
            "--to",
            "server.demo:9090",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        j["tiers"][1]["explanation"]["policies"][0]["name"],
        "demo/deny-client"
    );
    let why = j["tiers"][1]["explanation"]["policies"][0]["rules"][0]["reason"]
        .as_str()
        .unwrap();
    assert!(
        why.contains("principals") && why.contains("cluster.local/ns/demo/sa/other"),
        "{why}"
    );
    // Bad input: exit 2.
    let (code, _) = check(dir.path(), &["--from", "demo", "--to", "server.demo:80"]);
    assert_eq!(code, 2);
}

#[test]
fn bookinfo_l7_policies_and_jwt() {
    let dir = fixture(&["examples/bookinfo", "examples/bookinfo/security"]);
    let d = dir.path();
    let to = ["--to", "productpage.bookinfo:9080"];
    let (code, out) = check(d, &[&["--from", "bookinfo/sleep"][..], &to[..]].concat());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("waypoint bookinfo/waypoint: ALLOW: ALLOW bookinfo/productpage-viewer rule 0"),
        "{out}"
    );
    assert!(
        out.contains("peer: spiffe://cluster.local/ns/bookinfo/sa/waypoint"),
        "the destination sees the waypoint: {out}"
    );
    let post = [
        &[
            "--from",
            "bookinfo/sleep",
            "--method",
            "POST",
            "--path",
            "/api/v1/products",
        ][..],
        &to[..],
    ]
    .concat();
    let (code, out) = check(d, &post);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(r#"rule 1: when[0] request.headers[end-user]"#)
            || out.contains("rule 1: when[0]"),
        "{out}"
    );
    let (code, out) = check(
        d,
        &[&post[..], &["--header", "end-user=jason"][..]].concat(),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("productpage-viewer rule 1"), "{out}");
    let (code, out) = check(
        d,
        &[&["--from", "bookinfo/productpage"][..], &to[..]].concat(),
    );
    assert_eq!(code, 1, "{out}");
    // JWT at reviews: the test token verifies; none is refused by requestPrincipals; garbage gets 401.
    let jwt = std::fs::read_to_string(repo().join("examples/bookinfo/security/sleep.jwt")).unwrap();
    let reviews = [
        "--from",
        "bookinfo/productpage",
        "--to",
        "reviews.bookinfo:9080",
    ];
    let (code, out) = check(d, &[&reviews[..], &["--jwt", jwt.trim()][..]].concat());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ALLOW bookinfo/reviews-require-jwt rule 0"),
        "{out}"
    );
    let (code, out) = check(d, &reviews);
    assert_eq!(code, 1, "{out}");
    let (code, out) = check(d, &[&reviews[..], &["--jwt", "a.b.c"][..]].concat());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DENY: 401"), "{out}");
}

/// `ambit.dev/waypoint-required` on bookinfo: a direct call to productpage's pod is refused at its ztunnel by the
/// guard policy (named, with the hint), the call through the Service and its waypoint still passes; without the
/// label the same direct call is allowed.
#[test]
fn waypoint_required_refuses_direct_pod_calls() {
    let dir = fixture(&["examples/bookinfo"]);
    let d = dir.path();
    let pod = [
        "--from",
        "bookinfo/sleep",
        "--to",
        "pod/bookinfo/productpage-v1-compute-0:9080",
    ];
    let (code, out) = check(d, &pod);
    assert_eq!(code, 0, "default mode: direct calls pass\n{out}");
    let ns = std::fs::read_to_string(d.join("namespace.yaml")).unwrap();
    std::fs::write(
        d.join("namespace.yaml"),
        ns.replace(
            "istio.io/use-waypoint: waypoint",
            "istio.io/use-waypoint: waypoint\n    ambit.dev/waypoint-required: \"true\"",
        ),
    )
    .unwrap();
    let (code, out) = check(d, &pod);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("DENY: bookinfo/ambit_waypoint_required_bookinfo_waypoint_ports_9080 rule 0"),
        "{out}"
    );
    assert!(
        out.contains("ambit.dev/waypoint-required"),
        "no hint: {out}"
    );
    let (code, out) = check(
        d,
        &[
            "--from",
            "bookinfo/sleep",
            "--to",
            "productpage.bookinfo:9080",
        ],
    );
    assert_eq!(code, 0, "through the waypoint\n{out}");
}

/// A server on loopback answering every request with `body` (JSON), in a thread, until the test ends.
fn serve_json(body: String) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// `--jwt` against a RequestAuthentication whose keys are at a `jwksUri` (http, then file): fetched as the
/// waypoint fetches them, so the example token verifies; a URI that cannot be reached is named and the token
/// rejected.
#[test]
fn jwt_with_jwks_uri_keys() {
    let dir = fixture(&["examples/bookinfo", "examples/bookinfo/security"]);
    let d = dir.path();
    let ra_path = d.join("request-authentication-reviews.yaml");
    let ra = std::fs::read_to_string(&ra_path).unwrap();
    let line = ra
        .lines()
        .find(|l| l.trim_start().starts_with("jwks: '"))
        .unwrap()
        .to_owned();
    let keys = line
        .trim_start()
        .trim_start_matches("jwks: '")
        .trim_end_matches('\'')
        .to_owned();
    let indent = &line[..line.len() - line.trim_start().len()];
    let with_uri = |uri: &str| ra.replace(&line, &format!("{indent}jwksUri: {uri}"));
    let jwt = std::fs::read_to_string(repo().join("examples/bookinfo/security/sleep.jwt")).unwrap();
    let args = [
        "--from",
        "bookinfo/productpage",
        "--to",
        "reviews.bookinfo:9080",
        "--jwt",
        jwt.trim(),
    ];
    let port = serve_json(keys.clone());
    std::fs::write(&ra_path, with_uri(&format!("http://127.0.0.1:{port}/jwks"))).unwrap();
    let (code, out) = check(d, &args);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("keys loaded"), "{out}");
    assert!(
        out.contains("ALLOW bookinfo/reviews-require-jwt rule 0"),
        "{out}"
    );

    let file = d.join("keys.json.txt");
    std::fs::write(&file, &keys).unwrap();
    std::fs::write(&ra_path, with_uri(&format!("file://{}", file.display()))).unwrap();
    let (code, out) = check(d, &args);
    assert_eq!(code, 0, "{out}");

    std::fs::write(&ra_path, with_uri("http://127.0.0.1:1/jwks")).unwrap();
    let (code, out) = check(d, &args);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("could not be loaded here"), "{out}");
    assert!(out.contains("DENY: 401"), "{out}");
}
