//! The charts as a cluster receives them: the rendered manifests (`helm/golden/*.yaml`, which
//! `scripts/helm/test.sh` keeps identical to what the real Helm v4 engine renders) server-side applied by `kubectl`
//! to the `ambit-apiserver` binary, and the controller started the way a kubelet would start the rendered
//! Deployment — its command, args and env from the manifest, its volume mounts mapped to directories, the API
//! server reached through a kubeconfig instead of the in-cluster service account — until the rendered readiness
//! probe passes and it holds the leader Lease.
//!
//! Needs root only for the e2e gate (no network namespaces); `kubectl` and the binaries as the other Kubernetes
//! tests (`cargo build -p ambit-apiserver -p ambit-controller`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ambit_e2e::TestDir;
use ambit_e2e::kube::{ApiServer, binary, kubectl};
use ambit_e2e::process::Process;
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_yaml::Value;

const WAIT: Duration = Duration::from_secs(60);
const NAMESPACE: &str = "istio-system";
const POD_NAME: &str = "istiod-0";

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../helm/golden")
        .join(name)
}

fn documents(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(d)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Applies `file` server-side and checks the API server holds every object in it.
fn apply_rendered(kc: &Path, file: &Path) -> Result<usize> {
    let f = file.to_string_lossy();
    kubectl(
        kc,
        &["apply", "--server-side", "--field-manager=helm", "-f", &f],
        None,
    )
    .with_context(|| format!("server-side apply of {f}"))?;
    let want = documents(file)?.len();
    let names = kubectl(kc, &["get", "-f", &f, "-o", "name"], None)?;
    let got = names.lines().filter(|l| !l.trim().is_empty()).count();
    ensure!(
        got == want,
        "{f}: {want} objects rendered, the API server has {got}:\n{names}"
    );
    Ok(want)
}

/// The controller as the kubelet would run the rendered Deployment's container.
fn controller_from(deployment: &Value, dir: &TestDir, kc: &Path) -> Result<(Command, u16)> {
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let command: Vec<String> = serde_yaml::from_value(c["command"].clone())?;
    ensure!(
        command == ["controller"],
        "the Deployment runs {command:?}, not the controller"
    );
    let mut args: Vec<String> = serde_yaml::from_value(c["args"].clone())?;
    // Volume mounts: each mount path becomes a directory of the test (an emptyDir, as the chart declares them).
    let mounts: Vec<Value> = serde_yaml::from_value(c["volumeMounts"].clone()).unwrap_or_default();
    for m in &mounts {
        let (Some(path), Some(name)) = (m["mountPath"].as_str(), m["name"].as_str()) else {
            bail!("a volume mount without path or name: {m:?}");
        };
        let local = dir.join(&format!("volume-{name}"));
        std::fs::create_dir_all(&local)?;
        for a in args.iter_mut() {
            *a = a.replace(path, &local.to_string_lossy());
        }
    }
    let mut cmd = Command::new(binary(
        "AMBIT_CONTROLLER_BIN",
        "controller",
        "ambit-controller",
    )?);
    cmd.args(&args);
    let env: Vec<Value> = serde_yaml::from_value(c["env"].clone()).unwrap_or_default();
    for e in &env {
        let name = e["name"].as_str().context("an env entry without a name")?;
        let value = match (
            &e["value"],
            e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Value::String(v), _) => v.clone(),
            (_, Some("metadata.name")) => POD_NAME.to_owned(),
            (_, Some("metadata.namespace")) => NAMESPACE.to_owned(),
            other => bail!("env {name}: {other:?} is not something this test resolves"),
        };
        cmd.env(name, value);
    }
    // Outside a pod: the kubeconfig instead of the service account's token.
    cmd.env("KUBECONFIG", kc).env("NO_COLOR", "1");
    let probe = &c["readinessProbe"]["httpGet"];
    let port = probe["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .context("the controller's readiness probe has no numeric port")?;
    ensure!(
        probe["path"].as_str() == Some("/ready"),
        "the readiness probe's path: {probe:?}"
    );
    Ok((cmd, port))
}

fn ready(port: u16) -> Result<bool> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
        ])
        .arg(format!("http://127.0.0.1:{port}/ready"))
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout) == "200")
}

fn scenario(dir: &TestDir) -> Result<()> {
    let apiserver = ApiServer::start(dir.path())?;
    let kc = apiserver.kubeconfig();
    kubectl(kc, &["create", "namespace", NAMESPACE], None)?;
    // The umbrella chart carries every component; the customised values add the optional objects (PDB, ...).
    let mut applied = 0;
    for file in [
        "ambient-default.yaml",
        "ambient-istio-style.yaml",
        "ambient-custom.yaml",
    ] {
        applied += apply_rendered(kc, &golden(file))?;
    }
    ensure!(applied > 0, "nothing rendered");

    let docs = documents(&golden("ambient-default.yaml"))?;
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .context("no controller Deployment in the render")?;
    let (cmd, port) = controller_from(deployment, dir, kc)?;
    let controller = Process::spawn("controller", cmd, dir.path())?;
    poll("the rendered readiness probe", WAIT, || {
        if controller.output().contains("panicked") {
            bail!("the controller panicked: {}", controller.output());
        }
        Ok(ready(port)?.then_some(()))
    })
    .with_context(|| controller.output())?;
    poll("the leader Lease held by the pod", WAIT, || {
        let holder = kubectl(
            kc,
            &[
                "get",
                "lease",
                "ambit-controller",
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            None,
        )
        .unwrap_or_default();
        // `<POD_NAME>_<random>`, as client-go's leader election names a candidate.
        Ok(holder
            .trim()
            .strip_prefix(POD_NAME)
            .is_some_and(|rest| rest.starts_with('_'))
            .then_some(()))
    })
    .with_context(|| controller.output())?;
    Ok(())
}

#[test]
fn rendered_charts_apply_and_the_controller_comes_up() {
    ambit_e2e::e2e_test("helm_install", scenario);
}
