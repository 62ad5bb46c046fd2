//! `ambit waypoint`: `generate`'s YAML with each flag (golden files in `tests/golden/waypoint/`, `UPDATE_GOLDEN=1`
//! rewrites them), `list`'s and `status`' tables from fixed Gateways and status, and `apply`/`delete` on the local
//! mesh back end against a temporary manifest directory (what they write, and what the local runtime then reads),
//! with the controller's status replaced by fixed answers. No root needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::rc::Rc;

use ambit::waypoint::local::LocalMesh;
use ambit::waypoint::{WaypointArgs, WaypointError, execute, view};
use clap::Parser;
use serde_json::{Map, Value, json};

const AMBIT: &str = env!("CARGO_BIN_EXE_ambit");

fn golden(name: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/waypoint")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(got, want, "{name} differs from {}", path.display());
}

fn ambit(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(AMBIT)
        .args(args)
        .env("AMBIT_LOCAL_DIR", "/nonexistent/ambit-local")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generate_prints_istioctls_gateway() {
    // What `istioctl waypoint generate --for service -n default` prints.
    let (code, out, _) = ambit(&["waypoint", "generate", "--for", "service", "-n", "default"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  labels:\n    istio.io/waypoint-for: service\n  name: waypoint\n  namespace: default\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n"
    );
    for (file, args) in [
        ("generate-default.yaml", vec![]),
        ("generate-namespace.yaml", vec!["-n", "demo"]),
        ("generate-name.yaml", vec!["-n", "demo", "--name", "edge"]),
        ("generate-for-all.yaml", vec!["-n", "demo", "--for", "all"]),
        ("generate-for-workload.yaml", vec!["--for", "workload"]),
        ("generate-for-none.yaml", vec!["--for", "none"]),
        ("generate-revision.yaml", vec!["-n", "demo", "-r", "canary"]),
        ("generate-numeric-revision.yaml", vec!["-r", "116"]),
        (
            "generate-service-account.yaml",
            vec!["-n", "bookinfo", "--service-account", "bookinfo-reviews"],
        ),
        (
            "generate-everything.yaml",
            vec![
                "--name",
                "reviews-wp",
                "-n",
                "bookinfo",
                "--for",
                "workload",
                "-r",
                "v2",
                "--service-account",
                "bookinfo-reviews",
            ],
        ),
    ] {
        let mut argv = vec!["waypoint", "generate"];
        argv.extend(args);
        let (code, out, err) = ambit(&argv);
        assert_eq!(code, 0, "{file}: {err}");
        // It is a Gateway the local runtime reads as a waypoint.
        let v: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(v["spec"]["listeners"][0]["port"].as_u64(), Some(15008));
        golden(file, &out);
    }
}

#[test]
fn generate_rejects_what_istioctl_rejects() {
    let (code, out, err) = ambit(&["waypoint", "generate", "--name", "none"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: failed to create gateway: invalid name provided for waypoint, 'none' is a reserved value"), "{err}");
    let (code, _, err) = ambit(&["waypoint", "generate", "--for", "pods"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: failed to create gateway: invalid traffic type: pods. Valid options are: [all none service workload]\n"
    );
    let (code, _, err) = ambit(&["waypoint", "generate", "--service-account", "Bad_SA"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a valid Kubernetes name"), "{err}");
    let (code, _, err) = ambit(&["waypoint", "frobnicate"]);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    // Without a local mesh, the commands that need one say how to get one.
    let (code, _, err) = ambit(&["waypoint", "list"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("ambit local up"), "{err}");
}

fn condition(t: &str, s: &str, reason: &str, message: &str) -> Value {
    json!({"type": t, "status": s, "reason": reason, "message": message})
}

fn gateway(ns: &str, name: &str, labels: Value, conditions: Vec<Value>) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"gatewayClassName": "istio-waypoint"},
        "status": {"conditions": conditions},
    })
}

fn fixed_gateways() -> Vec<Value> {
    let programmed = condition("Programmed", "True", "Programmed", "Resource programmed");
    let pending = condition(
        "Programmed",
        "False",
        "Pending",
        "Waiting for a ready pod labelled gateway.networking.k8s.io/gateway-name=waypoint",
    );
    let accepted = condition("Accepted", "True", "Accepted", "Resource accepted");
    vec![
        gateway(
            "default",
            "waypoint",
            json!({}),
            vec![accepted.clone(), programmed.clone()],
        ),
        gateway(
            "bookinfo",
            "waypoint",
            json!({"istio.io/waypoint-for": "service", "istio.io/rev": "canary"}),
            vec![accepted, pending],
        ),
        gateway(
            "bookinfo",
            "reviews-waypoint",
            json!({"istio.io/waypoint-for": "workload"}),
            vec![programmed],
        ),
        // Not a waypoint: never listed.
        json!({"kind": "Gateway", "metadata": {"name": "ingress", "namespace": "default"},
               "spec": {"gatewayClassName": "istio"}}),
    ]
}

#[test]
fn list_renders_istioctls_columns() {
    let wps = view::waypoints(&fixed_gateways());
    assert_eq!(wps.len(), 3);
    let all = view::render_list(&wps, true, true);
    golden("list-all.txt", &all);
    assert!(
        all.starts_with(
            "NAMESPACE     NAME                 REVISION     TRAFFIC TYPE     PROGRAMMED\n"
        ),
        "{all}"
    );
    let one: Vec<_> = wps
        .iter()
        .filter(|w| w.namespace == "default")
        .cloned()
        .collect();
    let default = view::render_list(&one, false, true);
    assert_eq!(
        default,
        "NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\nwaypoint     default      none             True\n"
    );
    golden("list-default.txt", &default);
    assert_eq!(view::render_list(&[], false, true), "No waypoints found.\n");
    // Without the controller's status, PROGRAMMED is not a guess.
    let mut bare = one[0].clone();
    bare.conditions.clear();
    assert!(view::render_list(&[bare.clone()], false, false).contains("Unknown"));
    assert!(view::render_list(&[bare], false, true).ends_with("none             False\n"));
}

fn fixed_status() -> Map<String, Value> {
    let bound = |ok: bool, reason: &str, message: &str| json!({"conditions": [condition("istio.io/WaypointBound", if ok { "True" } else { "False" }, reason, message)]});
    let mut m = Map::new();
    m.insert(
        "service/bookinfo/productpage".into(),
        bound(
            false,
            "WaypointIsNotReady",
            "waypoint bookinfo/waypoint has no ready pod",
        ),
    );
    m.insert(
        "service/bookinfo/reviews".into(),
        bound(
            false,
            "UnsupportedTrafficType",
            "waypoint bookinfo/reviews-waypoint does not support service traffic",
        ),
    );
    m.insert(
        "pod/bookinfo/reviews-v1-abc-0".into(),
        bound(
            true,
            "WaypointAccepted",
            "Successfully attached to waypoint bookinfo/reviews-waypoint",
        ),
    );
    m.insert(
        "service/other/echo".into(),
        bound(
            false,
            "AttachmentDenied",
            "waypoint bookinfo/waypoint does not allow attachment from this namespace",
        ),
    );
    m.insert(
        "service/bookinfo/ratings".into(),
        bound(
            false,
            "WaypointIsNotReady",
            "waypoint bookinfo/gone not found",
        ),
    );
    m
}

#[test]
fn status_explains_why_a_waypoint_is_not_used() {
    let wps: Vec<_> = view::waypoints(&fixed_gateways())
        .into_iter()
        .filter(|w| w.namespace == "bookinfo")
        .collect();
    let bindings = view::bindings(&fixed_status());
    assert_eq!(bindings.len(), 5);
    let out = view::render_status(&wps, &bindings, false, true);
    golden("status-bookinfo.txt", &out);
    let mut lines = out.lines();
    assert_eq!(
        lines.next().unwrap(),
        "NAME                 STATUS     TYPE           REASON         MESSAGE"
    );
    assert!(
        out.contains("bookinfo/waypoint: not programmed (Pending: "),
        "{out}"
    );
    assert!(
        out.contains("bookinfo/waypoint: not used by Service other/echo: AttachmentDenied"),
        "{out}"
    );
    assert!(
        out.contains("bookinfo/reviews-waypoint: used by Pod bookinfo/reviews-v1-abc-0"),
        "{out}"
    );
    assert!(out.contains("bookinfo/reviews-waypoint: not used by Service bookinfo/reviews: UnsupportedTrafficType"), "{out}");
    assert!(
        out.contains("bookinfo/gone: no such waypoint Gateway, yet asked for by 1 object(s)"),
        "{out}"
    );
    // With NAMESPACE, as istioctl shows it when no namespace was given.
    let wide = view::render_status(&wps, &[], true, true);
    assert!(wide.starts_with("NAMESPACE     NAME "), "{wide}");
    assert_eq!(
        view::render_status(&[], &[], false, true),
        "No waypoints found.\n"
    );
}

/// A temporary manifest directory and the local mesh on it, whose controller answers `status` (or cannot be
/// reached when `None`).
fn mesh(
    files: &[(&str, &str)],
    status: Option<Rc<dyn Fn() -> Map<String, Value>>>,
) -> (tempfile::TempDir, LocalMesh) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let fetch: ambit::waypoint::local::StatusFetch = match status {
        Some(s) => Box::new(move |kind: &str, _ns: Option<&str>| {
            Ok(s()
                .into_iter()
                .filter(|(k, _)| k.starts_with(&format!("{kind}/")))
                .collect())
        }),
        None => Box::new(|_: &str, _: Option<&str>| Err("no controller in this test".to_owned())),
    };
    let m = LocalMesh::new(dir.path().to_owned(), fetch);
    (dir, m)
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: WaypointArgs,
}

fn run(m: &LocalMesh, argv: &[&str]) -> Result<String, WaypointError> {
    let cli = Cli::try_parse_from(std::iter::once("waypoint").chain(argv.iter().copied())).unwrap();
    execute(m, &cli.args).map(|o| o.stdout)
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

const USER_NS: &str = "# the demo namespace\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels:\n    istio.io/dataplane-mode: ambient\n---\n# echo, untouched\napiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo}\nspec: {selector: {app: echo}, ports: [{port: 80}]}\n";

#[test]
fn apply_writes_an_ambit_file_and_labels_the_namespace_in_place() {
    let (dir, m) = mesh(&[("app.yaml", USER_NS)], None);
    let out = run(&m, &["apply", "-n", "demo", "--enroll-namespace"]).unwrap();
    assert_eq!(
        out,
        "✅ waypoint demo/waypoint applied\n✅ namespace demo labeled with \"istio.io/use-waypoint: waypoint\"\n"
    );
    assert_eq!(
        files(dir.path()),
        ["ambit-waypoint-demo-waypoint.yaml", "app.yaml"]
    );
    // The Gateway file is what `generate -n demo` prints.
    let (_, generated, _) = ambit(&["waypoint", "generate", "-n", "demo"]);
    assert_eq!(
        read(dir.path(), "ambit-waypoint-demo-waypoint.yaml"),
        generated
    );
    // The Namespace document was rewritten in place; the Service document is byte for byte the same.
    let app = read(dir.path(), "app.yaml");
    assert!(
        app.ends_with(USER_NS.split_once("---\n").unwrap().1),
        "{app}"
    );
    assert_eq!(app.matches("kind: Namespace").count(), 1, "{app}");
    // What the local runtime reads: one namespace with both labels, and the waypoint Gateway.
    let desired = ambit::local::manifests::load(dir.path()).unwrap();
    let labels = &desired.namespaces["demo"];
    assert_eq!(labels["istio.io/dataplane-mode"], "ambient");
    assert_eq!(labels["istio.io/use-waypoint"], "waypoint");
    assert!(desired.errors.is_empty(), "{:?}", desired.errors);
    assert_eq!(desired.waypoint_gateways(), ["demo/waypoint"]);

    // Once enrolled, a second waypoint does not take over without --overwrite, and nothing is written.
    let before = read(dir.path(), "app.yaml");
    let out = run(
        &m,
        &[
            "apply",
            "-n",
            "demo",
            "--name",
            "other",
            "--enroll-namespace",
        ],
    )
    .unwrap();
    assert_eq!(
        out,
        "⚠️ Warning: namespace (demo) already has an enrolled Waypoint. Consider adding the `--overwrite` flag to your apply command.\n"
    );
    assert_eq!(files(dir.path()).len(), 2);
    let out = run(
        &m,
        &[
            "apply",
            "-n",
            "demo",
            "--name",
            "other",
            "--enroll-namespace",
            "--overwrite",
        ],
    )
    .unwrap();
    assert!(
        out.ends_with("labeled with \"istio.io/use-waypoint: other\"\n"),
        "{out}"
    );
    assert_ne!(read(dir.path(), "app.yaml"), before);
    let desired = ambit::local::manifests::load(dir.path()).unwrap();
    assert_eq!(desired.namespaces["demo"]["istio.io/use-waypoint"], "other");
}

#[test]
fn enrolling_an_undeclared_namespace_writes_an_ambit_namespace() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: shop}\nspec: {selector: {app: echo}, ports: [{port: 80}]}\n";
    let (dir, m) = mesh(&[("svc.yaml", svc)], None);
    let out = run(
        &m,
        &["apply", "-n", "shop", "--enroll-namespace", "--for", "all"],
    )
    .unwrap();
    // Not ambient: a warning, as istioctl's, and the waypoint is applied anyway.
    assert!(
        out.starts_with("⚠️ Warning: namespace is not enrolled in ambient."),
        "{out}"
    );
    assert!(out.contains("✅ waypoint shop/waypoint applied\n"), "{out}");
    assert_eq!(
        read(dir.path(), "ambit-namespace-shop.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  labels:\n    istio.io/use-waypoint: waypoint\n  name: shop\n"
    );
    assert_eq!(read(dir.path(), "svc.yaml"), svc);
    let gw = read(dir.path(), "ambit-waypoint-shop-waypoint.yaml");
    assert!(gw.contains("    istio.io/waypoint-for: all\n"), "{gw}");
    // A namespace nothing uses does not exist.
    let e = run(&m, &["apply", "-n", "nowhere"]).unwrap_err();
    assert!(
        e.to_string().starts_with("namespace: nowhere not found"),
        "{e}"
    );
    assert_eq!(files(dir.path()).len(), 3);
}

#[test]
fn apply_updates_a_users_own_gateway_in_place() {
    let user = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: waypoint\n  namespace: default\n  labels: {team: a}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n";
    let (dir, m) = mesh(&[("wp.yaml", user)], None);
    run(
        &m,
        &["apply", "--service-account", "sa1", "--name", "waypoint"],
    )
    .unwrap();
    assert_eq!(files(dir.path()), ["wp.yaml"]);
    let v: serde_yaml::Value = serde_yaml::from_str(&read(dir.path(), "wp.yaml")).unwrap();
    assert_eq!(v["metadata"]["labels"]["team"].as_str(), Some("a"));
    assert_eq!(
        v["metadata"]["annotations"]["istio.io/for-service-account"].as_str(),
        Some("sa1")
    );
    // Deleting it is the user's business: their file stays.
    let e = run(&m, &["delete", "waypoint"]).unwrap_err();
    assert!(e.to_string().contains("which ambit did not write"), "{e}");
    assert_eq!(files(dir.path()), ["wp.yaml"]);
}

#[test]
fn delete_removes_ambit_files_by_name_all_or_revision() {
    let (dir, m) = mesh(&[("app.yaml", USER_NS)], None);
    run(&m, &["apply", "-n", "demo"]).unwrap();
    run(&m, &["apply", "-n", "demo", "--name", "canary", "-r", "v2"]).unwrap();
    run(&m, &["apply", "-n", "demo", "--name", "third"]).unwrap();
    assert_eq!(files(dir.path()).len(), 4);
    let out = run(&m, &["delete", "-n", "demo", "waypoint", "missing"]).unwrap();
    assert_eq!(
        out,
        "waypoint demo/missing not found\nwaypoint demo/waypoint deleted\n"
    );
    let out = run(&m, &["delete", "-n", "demo", "-r", "v2"]).unwrap();
    assert_eq!(out, "waypoint demo/canary deleted\n");
    let out = run(&m, &["delete", "-n", "demo", "--all"]).unwrap();
    assert_eq!(out, "waypoint demo/third deleted\n");
    assert_eq!(files(dir.path()), ["app.yaml"]);
    assert_eq!(read(dir.path(), "app.yaml"), USER_NS);
    let e = run(&m, &["delete", "-n", "demo", "--all", "x"]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot specify waypoint names when deleting all waypoints"),
        "{e}"
    );
    let e = run(&m, &["delete", "-n", "demo"]).unwrap_err();
    assert!(
        e.to_string().starts_with("must specify a waypoint name"),
        "{e}"
    );
    let e = run(&m, &["apply", "-n", "demo", "--name", "none"]).unwrap_err();
    assert!(e.to_string().contains("'none' is a reserved value"), "{e}");
}

#[test]
fn wait_until_programmed_or_time_out() {
    let programmed = Rc::new(std::cell::Cell::new(false));
    let p = programmed.clone();
    let status: Rc<dyn Fn() -> Map<String, Value>> = Rc::new(move || {
        let c = if p.get() {
            condition("Programmed", "True", "Programmed", "Resource programmed")
        } else {
            condition("Programmed", "False", "Pending", "Waiting for a ready pod")
        };
        let mut m = Map::new();
        m.insert("gateway/demo/waypoint".into(), json!({"conditions": [c]}));
        m
    });
    let (_dir, m) = mesh(&[("app.yaml", USER_NS)], Some(status));
    let e = run(
        &m,
        &["apply", "-n", "demo", "-w", "--waypoint-timeout", "0s"],
    )
    .unwrap_err();
    assert!(
        e.to_string().starts_with("timed out while waiting for waypoint demo/waypoint after 0s: not programmed (Pending: Waiting for a ready pod)"),
        "{e}"
    );
    let list = run(&m, &["list", "-n", "demo"]).unwrap();
    assert!(
        list.ends_with("waypoint     default      none             False\n"),
        "{list}"
    );
    programmed.set(true);
    let out = run(&m, &["apply", "-n", "demo", "--wait", "--enroll-namespace"]).unwrap();
    assert_eq!(
        out,
        "✅ waypoint demo/waypoint is ready!\n✅ namespace demo labeled with \"istio.io/use-waypoint: waypoint\"\n",
        "the `applied` line went to stdout before the wait"
    );
    let st = run(&m, &["status", "-n", "demo", "-w"]).unwrap();
    // The only binding in the fixed status is none: a waypoint nothing uses says so.
    assert!(st.ends_with("demo/waypoint: nothing uses it: label a namespace, Service or pod istio.io/use-waypoint=waypoint\n"), "{st}");
    assert!(st.starts_with("NAME         STATUS     TYPE           REASON         MESSAGE\nwaypoint     True       Programmed     Programmed     Resource programmed\n"), "{st}");
    // Without a reachable controller, waiting says why it cannot.
    let (_dir2, blind) = mesh(&[("app.yaml", USER_NS)], None);
    let e = run(&blind, &["apply", "-n", "demo", "-w"]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot wait for the waypoint: no controller in this test"),
        "{e}"
    );
}

#[test]
fn timeouts_read_as_go_durations() {
    use ambit::waypoint::parse_duration;
    use std::time::Duration;
    assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
    for bad in ["", "s", "10x", "1m30"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
    let (code, _, err) = ambit(&["waypoint", "apply", "--waypoint-timeout", "soon"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid duration"), "{err}");
}

#[test]
fn status_includes_refusals_from_other_namespaces() {
    let status: Rc<dyn Fn() -> Map<String, Value>> = Rc::new(|| {
        let mut m = Map::new();
        m.insert(
            "gateway/demo/waypoint".into(),
            json!({"conditions": [condition("Programmed", "True", "Programmed", "Resource programmed")]}),
        );
        m.insert(
            "service/other/echo".into(),
            json!({"conditions": [condition("istio.io/WaypointBound", "False", "AttachmentDenied",
                "waypoint demo/waypoint does not allow attachment from this namespace")]}),
        );
        m.insert(
            "service/demo/echo".into(),
            json!({"conditions": [condition("istio.io/WaypointBound", "False", "WaypointIsNotReady",
                "waypoint elsewhere/wp not found")]}),
        );
        m
    });
    let (_dir, m) = mesh(&[("app.yaml", USER_NS)], Some(status));
    run(&m, &["apply", "-n", "demo"]).unwrap();
    let st = run(&m, &["status", "-n", "demo"]).unwrap();
    assert!(
        st.contains("demo/waypoint: not used by Service other/echo: AttachmentDenied"),
        "{st}"
    );
    // Asked for a waypoint of another namespace: that namespace's status shows it, not this one's.
    assert!(!st.contains("elsewhere/wp"), "{st}");
    let all = run(&m, &["status", "-A"]).unwrap();
    assert!(
        all.contains("elsewhere/wp: no such waypoint Gateway"),
        "{all}"
    );
    assert!(all.starts_with("NAMESPACE "), "{all}");
}
