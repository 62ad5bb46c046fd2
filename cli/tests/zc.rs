//! `ambit ztunnel-config` on saved dumps (`-f`): istioctl's tables for every section from an upstream ztunnel
//! dump and an Ambit one of the same mesh (`tests/fixtures/zc/`, golden files in `tests/golden/zc/`;
//! `UPDATE_GOLDEN=1` rewrites them), `-o json|yaml` and back, the filters, the pod argument, and bad input (one
//! line on stderr, a non-zero exit, never a panic). `tests/zc_live.rs` asks a running ztunnel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

const AMBIT: &str = env!("CARGO_BIN_EXE_ambit");
const UPSTREAM: &str = "upstream-config_dump.json";
const AMBIT_DUMP: &str = "ambit-config_dump.json";

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/zc")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `ambit <args>`, with a local-mesh directory that holds no mesh (so a mesh running on this machine is never
/// asked).
fn ambit(args: &[&str]) -> Out {
    ambit_stdin(args, None)
}

fn ambit_stdin(args: &[&str], stdin: Option<&[u8]>) -> Out {
    let nowhere = std::env::temp_dir().join("ambit-zc-tests-no-mesh");
    let mut child = Command::new(AMBIT)
        .args(args)
        .env("AMBIT_LOCAL_DIR", &nowhere)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `ambit zc <args> -f <fixture>`, which must succeed.
fn zc(dump: &str, args: &[&str]) -> Out {
    let file = fixture(dump);
    let mut all = vec!["zc"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-f", &file]);
    let out = ambit(&all);
    assert_eq!(out.code, 0, "ambit {all:?}: {out:?}");
    out
}

fn golden(name: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/zc")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(
        got,
        want,
        "{} differs (UPDATE_GOLDEN=1 rewrites it); got:\n{got}",
        path.display()
    );
}

/// A failed run: a non-zero exit, nothing on stdout, one `error: ` line on stderr containing `what`.
fn assert_one_line_error(out: &Out, what: &str) {
    assert_ne!(out.code, 0, "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {out:?}");
    assert!(lines[0].starts_with("error: "), "{out:?}");
    assert!(lines[0].contains(what), "{what:?} not in {:?}", lines[0]);
    assert!(out.stdout.is_empty(), "{out:?}");
}

/// The data rows' first two cells (`<namespace> <name>`) of a table.
fn names(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn workload_service_policy_tables_are_the_same_from_either_ztunnel() {
    for dump in [UPSTREAM, AMBIT_DUMP] {
        for (section, golden_file) in [
            ("workload", "workload.txt"),
            ("service", "service.txt"),
            ("policy", "policy.txt"),
        ] {
            let out = zc(dump, &[section]);
            golden(golden_file, &out.stdout);
        }
    }
    // The WAYPOINT column resolves names: a waypoint Service by hostname or VIP, a waypoint pod by IP, a weighted
    // canary, and a reference nothing in the dump answers to (NA, with a warning).
    let w = zc(UPSTREAM, &["workload"]);
    let row = |name: &str| {
        w.stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap()
            .split_whitespace()
            .nth(4)
            .unwrap()
            .to_owned()
    };
    assert_eq!(row("productpage-v1-"), "bookinfo/productpage-waypoint");
    assert_eq!(row("reviews-v1-"), "bookinfo/waypoint");
    assert_eq!(row("httpbin-"), "bookinfo/waypoint-7c9d8f6b4-abcde");
    assert_eq!(row("sleep-"), "None");
    assert_eq!(row("ratings-v1-"), "NA");
    assert!(
        w.stderr.contains(
            "warning: workload bookinfo/ratings-v1-6484c4d9bb-mdxm5: waypoint \
             bookinfo/gone-waypoint.bookinfo.svc.cluster.local is not in this ztunnel's config"
        ),
        "{w:?}"
    );
    let s = zc(AMBIT_DUMP, &["svc"]);
    assert!(
        s.stdout
            .contains("bookinfo/waypoint(90),bookinfo/productpage-waypoint(10) 1/1"),
        "{s:?}"
    );
    assert!(
        s.stdout
            .contains("reviews              10.96.0.11                bookinfo/waypoint")
    );
}

#[test]
fn certificate_tables() {
    // Upstream writes serials in decimal, Ambit in hex: both print in hex. The intermediate of the upstream dump
    // has no PEM, so its serial comes from the decimal field.
    golden(
        "certificate-upstream.txt",
        &zc(UPSTREAM, &["certificate"]).stdout,
    );
    golden("certificate-ambit.txt", &zc(AMBIT_DUMP, &["certs"]).stdout);
    let up = zc(UPSTREAM, &["cert"]).stdout;
    let ours = zc(AMBIT_DUMP, &["secret"]).stdout;
    let serials = |t: &str| -> Vec<String> {
        t.lines()
            .skip(1)
            .map(|l| l.split_whitespace().nth(4).unwrap().to_owned())
            .collect()
    };
    assert_eq!(serials(&up), serials(&ours));
    assert!(up.contains("1a7e0000000000000000000000000002"));
    // Expired leaf: VALID CERT false; "Unavailable: <why>" is shown as Unavailable.
    assert!(ours.contains("bookinfo-reviews         Leaf             Unavailable      false"));
}

#[test]
fn older_upstream_dumps_maps_and_legacy_chains() {
    // An older upstream layout: sections as maps, `port` instead of `hboneMtlsPort`, endpoints keyed
    // `uid:address`, the root at the end of `certChain` and no `rootCerts`, decimal serials without PEM.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.json");
    std::fs::write(
        &path,
        r#"{
          "workloads": {
            "/10.0.0.5": {"uid": "c//Pod/ns/app-1", "name": "app-1", "namespace": "ns", "workloadIps": ["10.0.0.5"],
                          "protocol": "HBONE", "node": "n1", "status": "Healthy",
                          "waypoint": {"destination": "/10.96.0.9", "port": 15008}},
            "/10.0.0.9": {"uid": "c//Pod/ns/wp-1", "name": "wp-1", "namespace": "ns", "workloadIps": ["10.0.0.9"],
                          "node": "n1", "status": "Healthy"}
          },
          "services": {
            "/10.96.0.9": {"name": "wp", "namespace": "ns", "hostname": "wp.ns.svc.cluster.local",
                           "vips": ["/10.96.0.9"],
                           "endpoints": {"c//Pod/ns/wp-1:/10.0.0.9": {"workloadUid": "c//Pod/ns/wp-1",
                                         "service": "ns/wp.ns.svc.cluster.local", "address": "/10.0.0.9"}}}
          },
          "policies": [],
          "certificates": [
            {"identity": "spiffe://cluster.local/ns/ns/sa/app", "state": "Available",
             "certChain": [
               {"pem": "", "serialNumber": "305554775863395697262503895661564044819",
                "validFrom": "2023-03-21T13:02:57Z", "expirationTime": "2099-03-22T13:04:57Z"},
               {"pem": "", "serialNumber": "183856113797057159350158029893417591233",
                "validFrom": "2022-03-21T13:04:49Z", "expirationTime": "2022-03-18T13:04:49Z"}]}
          ]
        }"#,
    )
    .unwrap();
    let file = path.to_string_lossy();
    let w = ambit(&["zc", "w", "-f", &file]);
    assert_eq!(
        w.stdout,
        "NAMESPACE POD NAME ADDRESS  NODE WAYPOINT PROTOCOL\n\
         ns        app-1    10.0.0.5 n1   ns/wp    HBONE\n\
         ns        wp-1     10.0.0.9 n1   None     TCP\n",
        "{w:?}"
    );
    let s = ambit(&["zc", "s", "-f", &file]);
    assert_eq!(
        s.stdout,
        "NAMESPACE SERVICE NAME SERVICE VIP WAYPOINT ENDPOINTS\n\
         ns        wp           10.96.0.9   None     1/1\n"
    );
    let c = ambit(&["zc", "cert", "-f", &file]);
    let rows: Vec<Vec<&str>> = c
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0][1..5],
        [
            "Leaf",
            "Available",
            "true",
            "e5dfb59150b2ba7f108d93dcec5aa613"
        ]
    );
    assert_eq!(
        rows[1][1..5],
        [
            "Root",
            "Available",
            "false",
            "8a516645c40ce76c2c0d27ab4e2461c1"
        ]
    );
}

#[test]
fn connections_tables() {
    golden(
        "connections-upstream.txt",
        &zc(UPSTREAM, &["connections"]).stdout,
    );
    // Names, not addresses, unless --raw.
    let named = zc(UPSTREAM, &["cons"]).stdout;
    assert!(
        named.contains("reviews.bookinfo.svc.cluster.local:9080"),
        "{named}"
    );
    let raw = zc(UPSTREAM, &["cons", "--raw"]).stdout;
    let outbound_row: Vec<&str> = raw
        .lines()
        .find(|l| l.contains("Outbound"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        outbound_row[2..5],
        ["10.244.1.5:51234", "10.244.1.9:15008", "10.96.0.11:9080"],
        "{raw}"
    );
    assert!(
        !raw.contains("reviews.bookinfo.svc.cluster.local:9080"),
        "{raw}"
    );
    let dirs = |t: &str| -> Vec<String> {
        t.lines()
            .skip(1)
            .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
            .collect()
    };
    let inbound = zc(UPSTREAM, &["cons", "--direction", "inbound"]).stdout;
    assert_eq!(dirs(&inbound), ["Inbound", "Inbound", "Inbound"]);
    let outbound = zc(UPSTREAM, &["cons", "--direction", "outbound"]).stdout;
    assert_eq!(dirs(&outbound), ["Outbound", "Outbound"]);
    let default_ns = zc(UPSTREAM, &["cons", "--workload-namespace", "default"]).stdout;
    assert!(
        default_ns
            .lines()
            .skip(1)
            .all(|l| l.starts_with("httpbin-")),
        "{default_ns}"
    );
    assert_eq!(default_ns.lines().count(), 3);

    // Ambit's ztunnel does not track connections: the header, and a warning that says so.
    let ours = zc(AMBIT_DUMP, &["connections"]);
    golden("connections-ambit.txt", &ours.stdout);
    assert_eq!(ours.stdout.lines().count(), 1);
    assert!(
        ours.stderr
            .contains("this ztunnel does not report connections"),
        "{ours:?}"
    );
}

#[test]
fn all_sections() {
    golden("all-upstream.txt", &zc(UPSTREAM, &["all"]).stdout);
    golden(
        "all-ambit-with-headers.txt",
        &zc(AMBIT_DUMP, &["all", "--with-headers"]).stdout,
    );
    let with = zc(AMBIT_DUMP, &["all", "--with-headers"]).stdout;
    let headers: Vec<&str> = with.lines().filter(|l| l.starts_with("------ ")).collect();
    assert_eq!(
        headers,
        [
            "------ WORKLOAD INFO ------",
            "------ SERVICE INFO ------",
            "------ POLICY INFO ------",
            "------ SECRET INFO ------",
            "------ CONNECTIONS INFO ------"
        ]
    );
    // `all` is the five tables, each after a blank line.
    let plain = zc(UPSTREAM, &["all"]).stdout;
    let mut want = String::new();
    for s in [
        "workload",
        "service",
        "policy",
        "certificate",
        "connections",
    ] {
        want.push('\n');
        want.push_str(&zc(UPSTREAM, &[s]).stdout);
    }
    assert_eq!(plain, want);
}

#[test]
fn json_and_yaml_round_trip() {
    for dump in [UPSTREAM, AMBIT_DUMP] {
        // `all -o json` is the whole dump with every section; read back, it gives the same tables.
        let full: Value = serde_json::from_str(&zc(dump, &["all", "-o", "json"]).stdout).unwrap();
        for s in [
            "workloads",
            "services",
            "policies",
            "certificates",
            "workloadState",
        ] {
            assert!(full.get(s).is_some_and(|v| !v.is_null()), "{dump}: {s}");
        }
        assert!(
            full.get("config").is_some(),
            "{dump}: the rest of the dump stays"
        );
        let dir = tempfile::tempdir().unwrap();
        for (format, name) in [("json", "dump.json"), ("yaml", "dump.yaml")] {
            let text = zc(dump, &["all", "-o", format]).stdout;
            let value: Value = if format == "json" {
                serde_json::from_str(&text).unwrap()
            } else {
                serde_yaml::from_str(&text).unwrap()
            };
            assert_eq!(value, full, "{dump} -o {format}");
            // Saved as JSON again, it reads back as a dump.
            let p = dir.path().join(name).with_extension("json");
            std::fs::write(&p, serde_json::to_vec(&value).unwrap()).unwrap();
            let again = ambit(&["zc", "all", "-f", &p.to_string_lossy()]);
            assert_eq!(again.stdout, zc(dump, &["all"]).stdout, "{dump} via {name}");
        }
        // Each section's JSON is its entries as the ztunnel wrote them, in the table's order; YAML says the same.
        for (section, rows) in [
            ("workload", 9),
            ("service", 9),
            ("policy", 4),
            ("certificate", 4),
        ] {
            let json: Value =
                serde_json::from_str(&zc(dump, &[section, "-o", "json"]).stdout).unwrap();
            let yaml: Value =
                serde_yaml::from_str(&zc(dump, &[section, "-o", "yaml"]).stdout).unwrap();
            assert_eq!(json, yaml, "{dump} {section}");
            assert_eq!(json.as_array().unwrap().len(), rows, "{dump} {section}");
        }
        let ws: Value = serde_json::from_str(&zc(dump, &["w", "-o", "json"]).stdout).unwrap();
        let table = zc(dump, &["w"]).stdout;
        let order: Vec<String> = ws
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                format!(
                    "{} {}",
                    w["namespace"].as_str().unwrap(),
                    w["name"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(order, names(&table));
        let cons: Value = serde_json::from_str(&zc(dump, &["cons", "-o", "json"]).stdout).unwrap();
        assert_eq!(
            cons.as_array().unwrap().len(),
            4,
            "{dump}: every proxied pod"
        );
    }
    // Nothing is lost or rewritten: upstream's list of services, Ambit's map, each as written.
    let up: Value = serde_json::from_str(&zc(UPSTREAM, &["w", "-o", "json"]).stdout).unwrap();
    assert!(up[0]["services"].is_array());
    let ours: Value = serde_json::from_str(&zc(AMBIT_DUMP, &["w", "-o", "json"]).stdout).unwrap();
    assert!(ours[0]["services"].is_object());
    // istioctl indents JSON by four spaces.
    assert!(
        zc(UPSTREAM, &["policy", "-o", "json"])
            .stdout
            .starts_with("[\n    {\n")
    );
}

#[test]
fn filters() {
    let rows = |args: &[&str]| names(&zc(UPSTREAM, args).stdout);
    assert_eq!(
        rows(&["w", "--workload-namespace", "default"]),
        [
            "default external-vm",
            "default httpbin-7447985f87-t8hv7",
            "default sleep-7656cf8794-lxcmx"
        ]
    );
    // Case does not matter, as in istioctl.
    assert_eq!(rows(&["w", "--workload-namespace", "DEFAULT"]).len(), 3);
    assert_eq!(
        rows(&["w", "--address", "10.244.1.12"]),
        ["default httpbin-7447985f87-t8hv7"]
    );
    assert!(rows(&["w", "--address", "10.9.9.9"]).is_empty());
    let node2 = rows(&["w", "--workload-node", "node-2"]);
    assert_eq!(node2.len(), 4, "{node2:?}");
    assert_eq!(
        rows(&[
            "w",
            "--workload-node",
            "node-2",
            "--workload-namespace",
            "default"
        ]),
        ["default sleep-7656cf8794-lxcmx"]
    );
    assert_eq!(
        rows(&["s", "--service-namespace", "default"]),
        [
            "default dual",
            "default httpbin",
            "default kubernetes",
            "default sleep"
        ]
    );
    assert_eq!(
        rows(&["p", "--policy-namespace", "istio-system"]),
        ["istio-system deny-9999"]
    );
    // The same filter in JSON.
    let json: Value = serde_json::from_str(
        &zc(
            UPSTREAM,
            &["pol", "--policy-namespace", "bookinfo", "-o", "json"],
        )
        .stdout,
    )
    .unwrap();
    let got: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["allow-nothing", "allow-waypoint"]);
    // Filters that match nothing still print the header.
    assert_eq!(
        zc(UPSTREAM, &["s", "--service-namespace", "nope"]).stdout,
        "NAMESPACE SERVICE NAME SERVICE VIP WAYPOINT ENDPOINTS\n"
    );
}

#[test]
fn stdin_and_closed_pipes() {
    let bytes = std::fs::read(fixture(UPSTREAM)).unwrap();
    let out = ambit_stdin(&["zc", "p", "-f", "-"], Some(&bytes));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("deny-9999"), "{out:?}");

    // `| head -1`: the reader goes away; ambit exits without a panic.
    let mut child = Command::new(AMBIT)
        .args(["zc", "all", "-o", "yaml", "-f", &fixture(UPSTREAM)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!first.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_dumps_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cases = [
        (
            write("truncated.json", "{\"workloads\": [{\"name\": "),
            "is not a ztunnel config_dump: not JSON",
        ),
        (
            write("list.json", "[]"),
            "the top level is a list, not a JSON object",
        ),
        (
            write("state.json", "{\"nodes\": [], \"pods\": {}}"),
            "it has none of the sections",
        ),
        (
            write("number.json", "{\"services\": 3}"),
            "services is a number, not a list or a map",
        ),
        (
            write(
                "ips.json",
                "{\"workloads\": [{\"name\": \"a\", \"workloadIps\": \"10.0.0.1\"}]}",
            ),
            "workloads[0]: invalid type",
        ),
        (write("empty.json", ""), "not JSON"),
    ];
    for (path, what) in &cases {
        let out = ambit(&["zc", "workload", "-f", &path.to_string_lossy()]);
        assert_one_line_error(&out, what);
        assert!(out.stderr.contains(&*path.to_string_lossy()), "{out:?}");
    }
    let missing = dir.path().join("missing.json");
    let out = ambit(&["zc", "all", "-f", &missing.to_string_lossy()]);
    assert_one_line_error(&out, "cannot read");
    assert!(out.stderr.contains("No such file or directory"), "{out:?}");
    // A directory is not a file either.
    let out = ambit(&["zc", "all", "-f", &dir.path().to_string_lossy()]);
    assert_one_line_error(&out, "cannot read");
}

#[test]
fn bad_usage_is_one_line_errors() {
    let f = fixture(UPSTREAM);
    let cases: [(&[&str], &str); 10] = [
        (&["zc", "nodes"], "unrecognized subcommand 'nodes'"),
        (
            &["zc", "w", "--bogus", "-f", &f],
            "unexpected argument '--bogus'",
        ),
        (
            &["zc", "w", "-o", "xml", "-f", &f],
            "invalid value 'xml' for '--output",
        ),
        (&["zc", "w", "--proxy-admin-port", "0"], "invalid value '0'"),
        (
            &["zc", "cons", "--direction", "sideways", "-f", &f],
            "invalid value 'sideways'",
        ),
        (
            &["zc", "w", "reviews-v1.bookinfo", "-f", &f],
            "at most one of --file, --node, or pod name",
        ),
        (
            &["zc", "w", "--node", "node-1", "-f", &f],
            "at most one of --file, --node, or pod name",
        ),
        (
            &["zc", "log", "--level", "loud"],
            "unrecognized logging level: loud",
        ),
        (
            &["zc", "log", "--level", "debug", "-r"],
            "--level cannot be combined with --reset",
        ),
        (
            &["zc", "log", "-o", "json"],
            "--output is not applicable for this command",
        ),
    ];
    for (args, what) in cases {
        let out = ambit(args);
        assert_one_line_error(&out, what);
    }
    // An argument that is not UTF-8 is an error like any other, not a panic.
    let out = Command::new(AMBIT)
        .args(["zc".as_ref(), std::ffi::OsStr::from_bytes(b"\xff")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: unrecognized subcommand"),
        "{stderr}"
    );
    // clap's usage errors point at the subcommand's help.
    let out = ambit(&["zc", "nodes"]);
    assert!(
        out.stderr.contains("(see `ambit ztunnel-config --help`)"),
        "{out:?}"
    );
    let out = ambit(&["zc", "w", "--bogus"]);
    assert!(
        out.stderr
            .contains("(see `ambit ztunnel-config workload --help`)"),
        "{out:?}"
    );
}

#[test]
fn without_a_mesh_or_a_file() {
    // AMBIT_LOCAL_DIR names a directory without a mesh: what to do instead, on one line.
    for args in [
        &["zc", "workload"][..],
        &["zc", "cert", "--node", "node-1"],
        &["zc", "w", "productpage-v1.bookinfo"],
        &["zc", "log"],
    ] {
        let out = ambit(args);
        assert_one_line_error(&out, "no local mesh is running");
        assert!(out.stderr.contains("ambit local up"), "{out:?}");
        assert!(out.stderr.contains("-f <config_dump.json>"), "{out:?}");
    }
}

/// A local-mesh state directory whose supervisor is this test process (so it counts as running), with two nodes
/// whose network namespaces do not exist.
fn fake_mesh() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let pod = |ns: &str, name: &str, node: &str| {
        serde_json::json!({
            "namespace": ns, "name": name, "uid": format!("uid-{name}"), "ip": "10.244.1.2", "node": node,
            "netns": "ambit-zc-test-missing", "veth": "v", "owner": null, "captured": true, "ready": true,
            "pid": null, "restarts": 0, "log": "/dev/null", "spec_hash": 0
        })
    };
    let state = serde_json::json!({
        "manifests": "/nowhere", "supervisor_pid": std::process::id(), "ready": true,
        "services": {}, "errors": [],
        "nodes": [
            {"name": "node-1", "ip": "10.244.0.11", "netns": "ambit-zc-test-missing-1"},
            {"name": "node-2", "ip": "10.244.0.12", "netns": "ambit-zc-test-missing-2"}
        ],
        "pods": {
            "bookinfo/reviews-v1-0": pod("bookinfo", "reviews-v1-0", "node-2"),
            "default/sleep-0": pod("default", "sleep-0", "node-1"),
            "other/sleep-0": pod("other", "sleep-0", "node-2")
        }
    });
    std::fs::write(dir.path().join("state.json"), state.to_string()).unwrap();
    dir
}

#[test]
fn the_pod_argument_picks_a_ztunnel() {
    let mesh = fake_mesh();
    let dir = mesh.path().to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let mut all = vec!["zc"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--local-dir", &dir]);
        ambit(&all)
    };
    // The ztunnel a pod argument resolves to is the one that is asked (and here, cannot answer). As root the
    // request is made; otherwise ambit says root is needed. Either way the message names the right node.
    let unreachable = |out: &Out, node: &str| {
        if nix_is_root() {
            assert_one_line_error(
                out,
                &format!("ztunnel-{node}.istio-system on node {node} did not answer"),
            );
        } else {
            assert_one_line_error(out, &format!("inside node {node}'s network namespace"));
        }
    };
    unreachable(&run(&["w", "reviews-v1-0.bookinfo"]), "node-2");
    unreachable(&run(&["w", "pod/reviews-v1-0", "-n", "bookinfo"]), "node-2");
    unreachable(&run(&["w", "sleep-0.default"]), "node-1");
    unreachable(&run(&["w", "ztunnel-node-2"]), "node-2");
    unreachable(&run(&["w", "ztunnel-node-2.istio-system"]), "node-2");
    unreachable(&run(&["w", "daemonset/ztunnel"]), "node-1");
    unreachable(&run(&["w", "--node", "node-2"]), "node-2");
    unreachable(&run(&["w"]), "node-1");
    unreachable(&run(&["cert", "ztunnel-node-2"]), "node-2");
    // Errors that need no ztunnel.
    assert_one_line_error(
        &run(&["w", "sleep-0"]),
        "pod sleep-0 is in several namespaces (default, other): pass sleep-0.<namespace>",
    );
    assert_one_line_error(
        &run(&["w", "nope.bookinfo"]),
        "nope.bookinfo (namespace bookinfo) not found",
    );
    assert_one_line_error(
        &run(&["w", "svc/reviews"]),
        "unsupported resource type \"svc\"",
    );
    assert_one_line_error(
        &run(&["w", "pod/a/b"]),
        "is not [<type>/]<name>[.<namespace>]",
    );
    assert_one_line_error(
        &run(&["w", "--node", "node-9"]),
        "no node \"node-9\" in the local mesh",
    );
    // Certificates and connections are one ztunnel's own: with two, say which.
    assert_one_line_error(&run(&["cert"]), "ztunnel pod name or --node must be set");
    assert_one_line_error(&run(&["cons"]), "ztunnel pod name or --node must be set");
}

fn nix_is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}
