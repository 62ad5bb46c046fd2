//! The real `kubectl` against the in-process server: what a person does with the local mesh.
//!
//! Finds `kubectl` as `$AMBIT_KUBECTL`, on `PATH`, or at `/usr/bin/kubectl` (Google's package or Debian's
//! `kubernetes-client`, which scripts/test.sh installs when none is present). Without one the test prints
//! SKIPPED, or fails when `AMBIT_E2E_REQUIRED=1`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn find_kubectl() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AMBIT_KUBECTL") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("kubectl"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin/kubectl")])
        .find(|p| p.is_file())
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args);
        c.env_remove("KUBECONFIG").kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(Duration::from_secs(20), self.command(args).output())
            .await
            .expect("kubectl finished in time")
            .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }
}

fn manifest(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/manifests")
        .join(name)
        .display()
        .to_string()
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
    line.expect("a watch line in time")
        .unwrap()
        .expect("the watch is still running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_apply_label_annotate_watch_delete() {
    let Some(bin) = find_kubectl() else {
        if std::env::var("AMBIT_E2E_REQUIRED").as_deref() == Ok("1") {
            panic!(
                "kubectl not found (AMBIT_KUBECTL, PATH, /usr/bin/kubectl) and AMBIT_E2E_REQUIRED=1"
            );
        }
        eprintln!(
            "SKIPPED: kubectl_get_apply_label_annotate_watch_delete: no kubectl on this machine"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = crate::common::start(Some(dir.path())).await;
    let k = Kubectl {
        bin,
        kubeconfig: dir.path().join("kubeconfig"),
        cache: dir.path().join("cache"),
    };
    let version = k.ok(&["version", "-o", "json"]).await;
    eprintln!(
        "kubectl: {}",
        version
            .lines()
            .find(|l| l.contains("gitVersion"))
            .unwrap_or("?")
            .trim()
    );

    // Client-side apply of a directory's worth of objects, then get across namespaces.
    let demo = manifest("demo.yaml");
    let out = k.ok(&["apply", "-f", &demo]).await;
    assert!(
        out.contains("namespace/demo created") && out.contains("pod/web created"),
        "{out}"
    );
    let out = k.ok(&["get", "pods", "-A"]).await;
    let row = out
        .lines()
        .find(|l| l.starts_with("demo"))
        .unwrap_or_else(|| panic!("no demo pod row in\n{out}"));
    assert!(row.contains("web") && row.contains("Pending"), "{out}");
    let out = k
        .ok(&[
            "get",
            "svc",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .await;
    assert!(out.starts_with("10.96."), "cluster IP allocated: {out}");

    // Enrollment as a user does it.
    let out = k
        .ok(&[
            "label",
            "namespace",
            "demo",
            "istio.io/dataplane-mode=ambient",
        ])
        .await;
    assert!(out.contains("labeled"), "{out}");
    let out = k
        .ok(&[
            "get",
            "ns",
            "demo",
            "-o",
            r"jsonpath={.metadata.labels.istio\.io/dataplane-mode}",
        ])
        .await;
    assert_eq!(out, "ambient");
    k.ok(&[
        "annotate",
        "pod",
        "web",
        "-n",
        "demo",
        "ambit.dev/note=hello",
    ])
    .await;
    let out = k
        .ok(&[
            "get",
            "pod",
            "web",
            "-n",
            "demo",
            "-o",
            r"jsonpath={.metadata.annotations.ambit\.dev/note}",
        ])
        .await;
    assert_eq!(out, "hello");

    // Re-applying a changed manifest patches (strategic merge for built-ins) and keeps the label kubectl added.
    let changed = dir.path().join("demo.yaml");
    std::fs::write(
        &changed,
        std::fs::read_to_string(&demo)
            .unwrap()
            .replace("web:1", "web:2"),
    )
    .unwrap();
    let out = k.ok(&["apply", "-f", changed.to_str().unwrap()]).await;
    assert!(
        out.contains("pod/web configured") && out.contains("namespace/demo unchanged"),
        "{out}"
    );
    let out = k
        .ok(&[
            "get",
            "pod",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.containers[0].image} {.metadata.annotations.ambit\\.dev/note}",
        ])
        .await;
    assert_eq!(out, "web:2 hello");

    // A CRD applied at run time, then a Gateway by server-side apply, and its status as the controller writes it.
    let out = k.ok(&["apply", "-f", &manifest("gateway-crd.yaml")]).await;
    assert!(out.contains("created"), "{out}");
    let out = k
        .ok(&["apply", "--server-side", "-f", &manifest("waypoint.yaml")])
        .await;
    assert!(out.contains("serverside-applied"), "{out}");
    let client = crate::common::client(&server).await;
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway"),
        "gateways",
    );
    let gws: Api<DynamicObject> = Api::namespaced_with(client, "demo", &ar);
    let status = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "waypoint"},
        "status": {"conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed", "message": "ok",
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    gws.patch_status(
        "waypoint",
        &PatchParams::apply("ambit-controller"),
        &Patch::Apply(status),
    )
    .await
    .unwrap();
    let yaml = k
        .ok(&["get", "gateway", "waypoint", "-n", "demo", "-o", "yaml"])
        .await;
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(
        v["spec"]["gatewayClassName"].as_str(),
        Some("ambit-waypoint"),
        "{yaml}"
    );
    assert_eq!(
        v["status"]["conditions"][0]["type"].as_str(),
        Some("Programmed"),
        "{yaml}"
    );
    assert_eq!(
        v["metadata"]["labels"]["istio.io/waypoint-for"].as_str(),
        Some("service")
    );
    let out = k.ok(&["get", "gtw", "-n", "demo"]).await;
    assert!(
        out.lines().any(|l| l.starts_with("waypoint")
            && l.contains("ambit-waypoint")
            && l.contains("True")),
        "{out}"
    );
    // Server-side apply again with a conflicting value owned by the client-side apply: refused, then forced.
    let (ok, _, err) = k.run(&["apply", "--server-side", "-f", &demo]).await;
    assert!(!ok && err.contains("conflict"), "{err}");
    k.ok(&["apply", "--server-side", "--force-conflicts", "-f", &demo])
        .await;

    // get -w sees a change as it happens.
    let mut watch = k
        .command(&["get", "pods", "-n", "demo", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    assert!(next_line(&mut lines).await.starts_with("NAME"));
    assert!(next_line(&mut lines).await.starts_with("web"));
    k.ok(&["label", "pod", "web", "-n", "demo", "watched=yes"])
        .await;
    assert!(
        next_line(&mut lines).await.starts_with("web"),
        "the label change shows up in the watch"
    );
    watch.kill().await.unwrap();

    // The `create` generators (protobuf bodies from kubectl >= 1.32).
    k.ok(&["create", "namespace", "extra"]).await;
    k.ok(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "extra",
        "--from-literal=mode=ambient",
    ])
    .await;
    let out = k
        .ok(&[
            "get",
            "configmap",
            "settings",
            "-n",
            "extra",
            "-o",
            "jsonpath={.data.mode}",
        ])
        .await;
    assert_eq!(out, "ambient");

    // Deletes: the pod, then the namespace with everything in it.
    let out = k.ok(&["delete", "pod", "web", "-n", "demo"]).await;
    assert!(out.contains("deleted"), "{out}");
    let (ok, _, err) = k.run(&["get", "pod", "web", "-n", "demo"]).await;
    assert!(!ok && err.contains("NotFound"), "{err}");
    k.ok(&["delete", "namespace", "demo"]).await;
    let (ok, _, err) = k.run(&["get", "gateway", "waypoint", "-n", "demo"]).await;
    assert!(!ok && err.contains("NotFound"), "{err}");
    let out = k.ok(&["get", "ns"]).await;
    assert!(!out.contains("demo") && out.contains("default"), "{out}");
    server.shutdown().await;
}
