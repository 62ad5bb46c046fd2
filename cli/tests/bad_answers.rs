//! `ambit` against inputs that exist but are wrong: a kubeconfig that is there and malformed (`ambit precheck` is
//! the command that talks to Kubernetes; `waypoint`, `analyze` and `zc` read the local mesh and must not care), and
//! a ztunnel admin port that is reachable but answers garbage, nothing, or an HTTP error. Each must be one line
//! `error: ...` naming the file or address and what was wrong, exit 1, no panic.
//!
//! The admin-port tests play the ztunnel with a tiny TCP server on 127.0.0.1 inside a network namespace of their own
//! (the local mesh reaches a ztunnel's admin port from inside its node's namespace), so they need root and `ip`;
//! skipped loudly without them unless `AMBIT_E2E_REQUIRED=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::netns::Netns;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const AMBIT: &str = env!("CARGO_BIN_EXE_ambit");

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `ambit args` with no kubeconfig of the host's in sight: `HOME` is `home`, and neither `KUBECONFIG` nor the
/// in-cluster variables are set unless `env` sets them.
fn ambit(home: &Path, args: &[&str], env: &[(&str, &Path)]) -> Out {
    let mut cmd = Command::new(AMBIT);
    cmd.args(args)
        .env("HOME", home)
        .env("RUST_BACKTRACE", "1")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Exit 1, nothing on stdout, and stderr one line `error: ...` holding every one of `wanted`; no panic.
fn assert_one_line_error(what: &str, out: &Out, wanted: &[&str]) {
    assert_eq!(
        out.code, 1,
        "{what}: exit code\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("backtrace"),
        "{what}: a panic: {}",
        out.stderr
    );
    assert_eq!(out.stdout, "", "{what}: stdout");
    let err = out.stderr.trim_end();
    assert_eq!(err.lines().count(), 1, "{what}: not one line: {err}");
    assert!(err.starts_with("error: "), "{what}: {err}");
    for w in wanted {
        assert!(err.contains(w), "{what}: no {w:?} in: {err}");
    }
}

/// A kubeconfig that is fine but for what each case breaks.
fn kubeconfig(current_context: &str, context_cluster: &str, server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\n{current_context}\
         clusters:\n- name: c\n  cluster:\n    server: {server}\n\
         users:\n- name: u\n  user:\n    token: abc\n\
         contexts:\n- name: ctx\n  context:\n    cluster: {context_cluster}\n    user: u\n"
    )
}

/// Each malformed kubeconfig, and what its message must say.
fn malformed() -> Vec<(&'static str, String, Vec<&'static str>)> {
    let fine = "current-context: ctx\n";
    let url = "\"https://127.0.0.1:1\"";
    vec![
        (
            "garbage",
            "this: is: not: yaml: [\n\t{{{\n".to_owned(),
            vec![
                "failed to parse kubeconfig YAML",
                "line 1 column",
                "fix it, or pass another with --kubeconfig",
            ],
        ),
        (
            "a-list",
            "[1, 2, 3]\n".to_owned(),
            vec!["failed to parse kubeconfig YAML", "expected mapping"],
        ),
        (
            "clusters-not-a-list",
            "apiVersion: v1\nkind: Config\nclusters: oops\n".to_owned(),
            vec!["failed to parse kubeconfig YAML", "line 3"],
        ),
        ("empty", String::new(), vec!["it sets no current-context"]),
        (
            "no-current-context",
            kubeconfig("", "c", url),
            vec!["it sets no current-context", "pass --context"],
        ),
        (
            "current-context-missing",
            kubeconfig("current-context: gone\n", "c", url),
            vec!["it has no context \"gone\""],
        ),
        (
            "context-names-missing-cluster",
            kubeconfig(fine, "nope", url),
            vec!["its context names cluster \"nope\", which it does not define"],
        ),
        (
            "server-not-a-url",
            kubeconfig(fine, "c", "\"not a url at all\""),
            vec!["failed to parse cluster url"],
        ),
        (
            "server-bad-authority",
            kubeconfig(fine, "c", "\"https://[::1\""),
            vec!["failed to parse cluster url"],
        ),
    ]
}

#[test]
fn precheck_with_a_malformed_kubeconfig_says_which_file_and_what() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, wanted) in malformed() {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let shown = path.display().to_string();
        let prefix = format!("error: kubeconfig {shown}: ");
        let out = ambit(dir.path(), &["precheck", "--kubeconfig", &shown], &[]);
        assert_one_line_error(name, &out, &wanted);
        assert!(out.stderr.starts_with(&prefix), "{name}: {}", out.stderr);

        // The same file through KUBECONFIG: named, and marked as coming from there.
        let out = ambit(dir.path(), &["precheck"], &[("KUBECONFIG", &path)]);
        assert_one_line_error(&format!("KUBECONFIG={name}"), &out, &wanted);
        assert!(
            out.stderr
                .starts_with(&format!("error: kubeconfig {shown} (KUBECONFIG): ")),
            "KUBECONFIG={name}: {}",
            out.stderr
        );
        // A broken kubeconfig is not "no cluster": no falling back to the in-cluster account, no advice to set
        // the KUBECONFIG that is set.
        assert!(
            !out.stderr.contains("no cluster to check"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn precheck_with_a_context_of_a_malformed_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config");
    let url = "\"https://127.0.0.1:1\"";
    std::fs::write(&path, kubeconfig("", "c", url)).unwrap();
    let shown = path.display().to_string();
    let out = ambit(
        dir.path(),
        &["precheck", "--kubeconfig", &shown, "--context", "gone"],
        &[],
    );
    assert_one_line_error(
        "--context gone",
        &out,
        &[
            &format!("kubeconfig {shown}: "),
            "it has no context \"gone\"",
        ],
    );
    std::fs::write(&path, "this: is: not: yaml: [").unwrap();
    let out = ambit(
        dir.path(),
        &["precheck", "--context", "ctx"],
        &[("KUBECONFIG", &path)],
    );
    assert_one_line_error(
        "KUBECONFIG garbage, --context ctx",
        &out,
        &[
            &format!("kubeconfig {shown} (KUBECONFIG): "),
            "failed to parse kubeconfig YAML",
        ],
    );
    // A directory where the file should be: it cannot be read, and the message says so.
    let out = ambit(
        dir.path(),
        &[
            "precheck",
            "--kubeconfig",
            &dir.path().display().to_string(),
        ],
        &[],
    );
    assert_one_line_error(
        "a directory",
        &out,
        &[
            &format!("cannot read the kubeconfig {}", dir.path().display()),
            "Is a directory",
        ],
    );
}

#[test]
fn precheck_with_no_kubeconfig_at_all_is_no_cluster() {
    // Neither KUBECONFIG nor ~/.kube/config nor in a pod: nothing to check, and what to do.
    let home = tempfile::tempdir().unwrap();
    let out = ambit(home.path(), &["precheck"], &[]);
    assert_one_line_error(
        "no kubeconfig",
        &out,
        &[
            "error: no cluster to check (no kubeconfig at ~/.kube/config",
            "and not in a cluster",
            "pass --kubeconfig",
        ],
    );
    // ~/.kube/config is there and broken: named, not "no cluster".
    std::fs::create_dir(home.path().join(".kube")).unwrap();
    std::fs::write(home.path().join(".kube/config"), "{{{ not yaml").unwrap();
    let out = ambit(home.path(), &["precheck"], &[]);
    assert_one_line_error(
        "broken ~/.kube/config",
        &out,
        &[
            "error: kubeconfig ~/.kube/config: ",
            "failed to parse kubeconfig YAML",
        ],
    );
}

#[test]
fn local_mesh_commands_do_not_read_the_kubeconfig() {
    // `waypoint`, `analyze` and `zc` work on the local mesh: a broken KUBECONFIG changes nothing in what they say.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, "this: is: not: yaml: [").unwrap();
    let no_mesh = dir.path().join("no-mesh").display().to_string();
    for args in [
        vec!["waypoint", "list", "--local-dir", &no_mesh],
        vec!["analyze", "-A", "--local-dir", &no_mesh],
        vec!["zc", "workload", "--local-dir", &no_mesh],
    ] {
        let out = ambit(dir.path(), &args, &[("KUBECONFIG", &kubeconfig)]);
        assert_one_line_error(&args.join(" "), &out, &["no-mesh/state.json"]);
        assert!(
            !out.stderr.to_lowercase().contains("kubeconfig"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

// The admin port: a fake ztunnel in a network namespace.

fn skip_or_fail(why: &str) {
    let required = std::env::var("AMBIT_E2E_REQUIRED")
        .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    assert!(
        !required,
        "bad_answers: {why} (AMBIT_E2E_REQUIRED=1, so not skipping)"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED bad_answers: {why}");
}

/// Why these tests cannot run here, if they cannot.
fn cannot_run() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (a network namespace for the fake ztunnel)".into());
    }
    let ip = Command::new("ip").arg("-V").stdout(Stdio::null()).status();
    if !ip.is_ok_and(|s| s.success()) {
        return Some("needs `ip` (iproute2)".into());
    }
    None
}

/// What the fake ztunnel does with each request.
#[derive(Clone)]
enum Answer {
    /// Reads the request, writes these bytes, closes.
    Bytes(Vec<u8>),
    /// Reads the request and holds the connection open, saying nothing.
    Silent,
}

fn http(status: &str, body: &str) -> Answer {
    Answer::Bytes(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// A server on 127.0.0.1 inside `netns` answering every connection with `answer`; its port. It runs until the
/// test process ends.
fn fake_ztunnel(netns: &Netns, answer: Answer) -> u16 {
    let ns = std::fs::File::open(netns.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(listener.local_addr().unwrap().port()).unwrap();
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || serve(conn, &answer));
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

fn serve(mut conn: TcpStream, answer: &Answer) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    match answer {
        Answer::Bytes(bytes) => {
            let _ = conn.write_all(bytes);
        }
        Answer::Silent => std::thread::sleep(Duration::from_secs(10)),
    }
}

/// A local mesh of one node, `node-1`, whose namespace is `netns`, run by this process (so it counts as running).
fn mesh(dir: &Path, netns: &Netns) {
    let state = serde_json::json!({
        "manifests": "/nowhere", "supervisor_pid": std::process::id(), "ready": true,
        "services": {}, "errors": [],
        "nodes": [{"name": "node-1", "ip": "10.244.0.11", "netns": netns.0}],
        "pods": {}
    });
    std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
}

fn zc(dir: &Path, port: u16, args: &[&str]) -> Out {
    let mut all = vec!["zc"];
    all.extend_from_slice(args);
    let port = port.to_string();
    let local_dir = dir.display().to_string();
    all.extend_from_slice(&["--proxy-admin-port", &port, "--local-dir", &local_dir]);
    ambit(dir, &all, &[])
}

#[test]
fn zc_against_an_admin_port_that_is_not_a_ztunnels() {
    if let Some(why) = cannot_run() {
        return skip_or_fail(&why);
    }
    let netns = Netns::new(format!("ambit-bad-notadmin-{}", std::process::id()));
    let dir = tempfile::tempdir().unwrap();
    mesh(dir.path(), &netns);
    let who =
        "ztunnel ztunnel-node-1.istio-system on node node-1 accepted the connection at 127.0.0.1";
    let cases = [
        (
            "not HTTP",
            Answer::Bytes(b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
            "but its answer is not HTTP (it starts \"SSH-2.0-OpenSSH_9.6\\r\\n\")",
        ),
        (
            "a status line that is not one",
            Answer::Bytes(b"HTTP/1.1 OK\r\n\r\n{}".to_vec()),
            "but its answer is not HTTP (it starts \"HTTP/1.1 OK",
        ),
        (
            "headers never ended",
            Answer::Bytes(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n".to_vec()),
            "but its HTTP answer ends before the end of its headers (it starts \"HTTP/1.1 200 OK\\r\\ncontent-type: applicati…\")",
        ),
        (
            "closed at once",
            Answer::Bytes(Vec::new()),
            "but it closed the connection without an answer",
        ),
        ("silent", Answer::Silent, "but it sent nothing within 3 s"),
    ];
    for (what, answer, why) in cases {
        let port = fake_ztunnel(&netns, answer);
        let addr = format!("127.0.0.1:{port}");
        for args in [&["workload"][..], &["certificates"], &["log"]] {
            let out = zc(dir.path(), port, args);
            assert_one_line_error(
                &format!("{what}: zc {args:?}"),
                &out,
                &[&format!("{who}:{port} {why}"), "is --proxy-admin-port"],
            );
            // It did answer, in its way: not the message for a port where nothing listens.
            assert!(!out.stderr.contains("did not answer"), "{}", out.stderr);
            assert!(out.stderr.contains(&addr), "{}", out.stderr);
        }
    }
}

#[test]
fn zc_against_an_admin_port_that_answers_an_http_error_or_no_dump() {
    if let Some(why) = cannot_run() {
        return skip_or_fail(&why);
    }
    let netns = Netns::new(format!("ambit-bad-errors-{}", std::process::id()));
    let dir = tempfile::tempdir().unwrap();
    mesh(dir.path(), &netns);
    let z = "ztunnel-node-1.istio-system";
    // (what, answer, `zc workload`'s message, `zc log`'s; `{z}` and `{port}` filled in)
    let cases = [
        (
            "500",
            http(
                "500 Internal Server Error",
                "the dump failed\nsecond line\n",
            ),
            "{z} answered 500 to GET /config_dump at 127.0.0.1:{port}: the dump failed",
            Some(
                "{z}: the ztunnel answered 500 to POST /logging at 127.0.0.1:{port}: the dump failed",
            ),
        ),
        (
            "404, empty",
            http("404 Not Found", ""),
            "{z} answered 404 to GET /config_dump at 127.0.0.1:{port}: (empty body)",
            Some(
                "{z}: the ztunnel answered 404 to POST /logging at 127.0.0.1:{port}: (empty body)",
            ),
        ),
        (
            "200, HTML",
            http("200 OK", "<html><body>hello</body></html>"),
            "{z}'s /config_dump at 127.0.0.1:{port} is not a ztunnel config_dump: not JSON",
            None,
        ),
        (
            "200, JSON cut short",
            http("200 OK", "{\"workloads\": [{\"name\": \"a"),
            "{z}'s /config_dump at 127.0.0.1:{port} is not a ztunnel config_dump: not JSON (EOF",
            None,
        ),
        (
            "200, other JSON",
            http("200 OK", "{\"hello\": 1}"),
            "{z}'s /config_dump at 127.0.0.1:{port} is not a ztunnel config_dump: it has none of the sections",
            None,
        ),
        (
            "200, a list",
            http("200 OK", "[1, 2]"),
            "{z}'s /config_dump at 127.0.0.1:{port} is not a ztunnel config_dump: the top level is",
            None,
        ),
    ];
    for (what, answer, dump_error, log_error) in cases {
        let port = fake_ztunnel(&netns, answer);
        let fill = |s: &str| {
            format!(
                "error: {}",
                s.replace("{z}", z).replace("{port}", &port.to_string())
            )
        };
        for args in [&["workload"][..], &["all", "-o", "json"], &["certificates"]] {
            let out = zc(dir.path(), port, args);
            assert_one_line_error(&format!("{what}: zc {args:?}"), &out, &[&fill(dump_error)]);
        }
        let out = zc(dir.path(), port, &["log"]);
        match log_error {
            Some(e) => assert_one_line_error(&format!("{what}: zc log"), &out, &[&fill(e)]),
            // `/logging` answered 200: its body is the level, shown as it is.
            None => {
                assert_eq!(out.code, 0, "{what}: zc log: {}", out.stderr);
                assert!(out.stdout.starts_with(&format!("{z}:\n")), "{}", out.stdout);
            }
        }
    }
}

#[test]
fn a_long_error_body_is_cut_in_the_message() {
    if let Some(why) = cannot_run() {
        return skip_or_fail(&why);
    }
    let netns = Netns::new(format!("ambit-bad-long-{}", std::process::id()));
    let dir = tempfile::tempdir().unwrap();
    mesh(dir.path(), &netns);
    let body = "x".repeat(100_000);
    let port = fake_ztunnel(&netns, http("503 Service Unavailable", &body));
    for args in [&["workload"][..], &["log"]] {
        let out = zc(dir.path(), port, args);
        assert_one_line_error(
            &format!("zc {args:?}"),
            &out,
            &["answered 503", &format!("127.0.0.1:{port}: xxx")],
        );
        assert!(out.stderr.len() < 500, "{} bytes", out.stderr.len());
        assert!(out.stderr.trim_end().ends_with("x…"), "{}", out.stderr);
    }
}
