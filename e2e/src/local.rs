//! Drives `ambit local` for the end-to-end tests: `up` on a manifest directory, commands inside pods, the state the
//! supervisor publishes, and `down` (also on drop, so a failed test leaves nothing running).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::topology::sibling_binary;

/// The local mesh's pod network namespace (where the bridge `br0` is).
pub const NET_NS: &str = "ambit-l-net";

/// A running local mesh.
#[derive(Debug)]
pub struct LocalMesh {
    bin: PathBuf,
    state_dir: PathBuf,
    pub manifests: PathBuf,
    up: bool,
    /// Set for `ambit local up` (the components' settings it hands on, as a chart's `env` would).
    env: Vec<(String, String)>,
}

/// The `ambit` binary of this build (next to the test executable) or `AMBIT_BIN`.
pub fn ambit_bin() -> Result<PathBuf> {
    sibling_binary("AMBIT_BIN", "ambit").context(
        "the ambit binary is not next to the test executable: build it first (cargo build --workspace --bins)",
    )
}

impl LocalMesh {
    /// `ambit local up -f <manifests>` with its state under `dir`; returns once the mesh is ready.
    pub fn up(dir: &Path, manifests: &Path, nodes: usize) -> Result<LocalMesh> {
        Self::up_with_env(dir, manifests, nodes, &[])
    }

    /// [`LocalMesh::up`] with `env` set for `ambit local up`.
    pub fn up_with_env(
        dir: &Path,
        manifests: &Path,
        nodes: usize,
        env: &[(&str, &str)],
    ) -> Result<LocalMesh> {
        let bin = ambit_bin()?;
        let state_dir = dir.join("local-state");
        let mut mesh = LocalMesh {
            bin,
            state_dir,
            manifests: manifests.to_owned(),
            up: false,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        mesh.start(nodes)?;
        Ok(mesh)
    }

    /// Runs `up` (again).
    pub fn start(&mut self, nodes: usize) -> Result<()> {
        let out = self
            .ambit()
            .args(["up", "--timeout", "90", "--nodes", &nodes.to_string(), "-f"])
            .arg(&self.manifests)
            .output()
            .context("run ambit local up")?;
        self.up = true;
        if !out.status.success() {
            bail!(
                "ambit local up failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn ambit(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("local").arg("--dir").arg(&self.state_dir);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// The pids of this mesh's running `binary` processes (`ztunnel`, `ambit-node-agent`, `ambit-controller`):
    /// `argv[0]` names the binary and the mesh's state directory is in its arguments or environment.
    pub fn pids(&self, binary: &str) -> Result<Vec<i32>> {
        let needle = self.state_dir.to_string_lossy().into_owned();
        let suffix = format!("/{binary}");
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let (Ok(cmdline), Ok(environ)) = (
                std::fs::read(format!("/proc/{pid}/cmdline")),
                std::fs::read(format!("/proc/{pid}/environ")),
            ) else {
                continue;
            };
            let argv0 =
                String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap_or_default())
                    .into_owned();
            let ours = String::from_utf8_lossy(&cmdline).contains(&needle)
                || String::from_utf8_lossy(&environ).contains(&needle);
            if (argv0 == binary || argv0.ends_with(&suffix)) && ours {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// The mesh's state directory (`ambit local --dir`, `AMBIT_LOCAL_DIR` for other commands).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `ambit <args>` against this mesh (`AMBIT_LOCAL_DIR` set to its state directory).
    pub fn ambit_cli(&self, args: &[&str]) -> Result<Output> {
        Command::new(&self.bin)
            .args(args)
            .env("AMBIT_LOCAL_DIR", &self.state_dir)
            .output()
            .with_context(|| format!("run ambit {args:?}"))
    }

    /// `state.json` as the supervisor wrote it.
    pub fn state(&self) -> Result<Value> {
        let text = std::fs::read_to_string(self.state_dir.join("state.json"))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The supervisor's process id.
    pub fn supervisor_pid(&self) -> Result<i32> {
        let pid = self.state()?["supervisor_pid"]
            .as_i64()
            .context("no supervisor pid")?;
        Ok(i32::try_from(pid)?)
    }

    /// The pods of a deployment (or the one pod named so): (name, ip, node, captured).
    pub fn pods(&self, namespace: &str, owner: &str) -> Result<Vec<PodInfo>> {
        let state = self.state()?;
        let pods = state["pods"].as_object().context("no pods")?;
        Ok(pods
            .values()
            .filter(|p| p["namespace"] == namespace)
            .filter(|p| p["owner"] == owner || p["name"] == owner)
            .map(|p| PodInfo {
                name: p["name"].as_str().unwrap_or_default().to_owned(),
                ip: p["ip"].as_str().unwrap_or_default().to_owned(),
                node: p["node"].as_str().unwrap_or_default().to_owned(),
                netns: p["netns"].as_str().unwrap_or_default().to_owned(),
                captured: p["captured"].as_bool().unwrap_or(false),
            })
            .collect())
    }

    /// The VIP of a service.
    pub fn vip(&self, namespace: &str, name: &str) -> Result<String> {
        let state = self.state()?;
        state["services"][format!("{namespace}/{name}")]["vip"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no VIP for {namespace}/{name}"))
    }

    /// The process id the supervisor recorded for a pod (its command, run in the pod's namespace).
    pub fn pod_pid(&self, namespace: &str, name: &str) -> Result<i32> {
        let state = self.state()?;
        let pid = state["pods"]
            .as_object()
            .context("no pods")?
            .values()
            .find(|p| p["namespace"] == namespace && p["name"] == name)
            .and_then(|p| p["pid"].as_i64())
            .with_context(|| format!("no pid for pod {namespace}/{name}"))?;
        Ok(i32::try_from(pid)?)
    }

    /// The address of a node (where its ztunnel's metrics are, from the pod network).
    pub fn node_ip(&self, node: &str) -> Result<String> {
        let state = self.state()?;
        state["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"] == node)
            .and_then(|n| n["ip"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("no node {node}"))
    }

    /// `ambit local exec -n <ns> <target> -- <argv…>`.
    pub fn exec(&self, namespace: &str, target: &str, argv: &[&str]) -> Result<Output> {
        self.ambit()
            .args(["exec", "-n", namespace, target, "--"])
            .args(argv)
            .output()
            .context("run ambit local exec")
    }

    /// `curl` from inside a pod: the body on success (HTTP 200), an error otherwise.
    pub fn curl(&self, namespace: &str, target: &str, url: &str) -> Result<String> {
        let out = self.exec(
            namespace,
            target,
            &["curl", "-sS", "--fail", "--max-time", "5", url],
        )?;
        if !out.status.success() {
            bail!(
                "curl {url} from {namespace}/{target}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `GET http://<addr><path>` from inside namespace `ns` (e.g. a node's ztunnel metrics).
    pub fn get_in(&self, ns: &str, url: &str) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "5", url])
            .output()?;
        if !out.status.success() {
            bail!(
                "GET {url} in {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ambit local get <kind> <name> -n <namespace> -o json`: the object with the status the controller computed.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Value> {
        let out = self
            .ambit()
            .args(["get", kind, name, "-n", namespace, "-o", "json"])
            .output()
            .context("run ambit local get")?;
        if !out.status.success() {
            bail!(
                "ambit local get {kind} {name} -n {namespace}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).context("ambit local get -o json printed no JSON")
    }

    /// `ambit local status`.
    pub fn status(&self) -> Result<String> {
        let out = self.ambit().arg("status").output()?;
        if !out.status.success() {
            bail!(
                "ambit local status: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ambit local down`.
    pub fn down(&mut self) -> Result<()> {
        self.up = false;
        let out = self.ambit().arg("down").output()?;
        if !out.status.success() {
            bail!("ambit local down: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The first pod of `owner` in `namespace` once there is one (waiting up to `timeout`).
    pub fn one_pod(&self, namespace: &str, owner: &str, timeout: Duration) -> Result<PodInfo> {
        crate::topology::poll(&format!("pod {namespace}/{owner}"), timeout, || {
            Ok(self.pods(namespace, owner)?.pop())
        })
    }

    /// The supervisor's and the components' logs, for failure reports.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.state_dir.join("logs"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files.insert(0, self.state_dir.join("supervisor.log"));
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("==== {} ====\n", f.display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        if self.up {
            let _ = self.down();
        }
    }
}

/// The fault tests' mesh: one node running [`DEMO_APPS`] under STRICT mTLS ([`STRICT_DEMO`]), its manifests in
/// `<dir>/manifests`, `env` set for `ambit local up`; then `scenario`, as [`run_on_mesh`].
pub fn run_strict_demo(
    dir: &crate::TestDir,
    env: &[(&str, &str)],
    scenario: impl FnOnce(&LocalMesh) -> Result<()>,
) -> Result<()> {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(manifests.join("apps.yaml"), DEMO_APPS)?;
    std::fs::write(manifests.join("strict.yaml"), STRICT_DEMO)?;
    run_on_mesh_with_env(dir.path(), &manifests, 1, env, scenario, |_| String::new())
}

/// A test's whole life on a local mesh: `ambit local up` on `manifests` with `nodes` nodes, `scenario`, on failure
/// the components' logs and whatever `report` adds (dumps), then `down` and the check that nothing is left.
pub fn run_on_mesh(
    dir: &Path,
    manifests: &Path,
    nodes: usize,
    scenario: impl FnOnce(&LocalMesh) -> Result<()>,
    report: impl FnOnce(&LocalMesh) -> String,
) -> Result<()> {
    run_on_mesh_with_env(dir, manifests, nodes, &[], scenario, report)
}

/// [`run_on_mesh`] with `env` set for `ambit local up`.
pub fn run_on_mesh_with_env(
    dir: &Path,
    manifests: &Path,
    nodes: usize,
    env: &[(&str, &str)],
    scenario: impl FnOnce(&LocalMesh) -> Result<()>,
    report: impl FnOnce(&LocalMesh) -> String,
) -> Result<()> {
    let mut mesh = LocalMesh::up_with_env(dir, manifests, nodes, env)?;
    let result = scenario(&mesh);
    if result.is_err() {
        eprintln!("{}", mesh.logs());
        eprintln!("{}", report(&mesh));
    }
    result?;
    mesh.down()?;
    let left = leftovers()?;
    anyhow::ensure!(left.is_empty(), "ambit local down left: {left:?}");
    Ok(())
}

#[derive(Clone, Debug)]
pub struct PodInfo {
    pub name: String,
    pub ip: String,
    pub node: String,
    /// The pod's network namespace.
    pub netns: String,
    pub captured: bool,
}

/// The `status` of condition `kind` (`"True"`, `"False"`, ...) in an object's `status.conditions`.
pub fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a str> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?["status"]
        .as_str()
}

/// What remains of a local mesh on this host: namespaces, `/etc/netns` entries and processes.
pub fn leftovers() -> Result<Vec<String>> {
    let mut found = Vec::new();
    let list =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output()?.stdout)
            .into_owned();
    for l in list.lines() {
        if l.starts_with("ambit-l-") {
            found.push(format!("namespace {l}"));
        }
    }
    if let Ok(d) = std::fs::read_dir("/etc/netns") {
        for e in d.flatten() {
            if e.file_name().to_string_lossy().starts_with("ambit-l-") {
                found.push(format!("/etc/netns/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    // Processes of a mesh: by the executable they run (so a compiler building `ztunnel` or a test binary named
    // `waypoint-<hash>` is not one), plus the supervisor by its arguments.
    const MESH_BINARIES: [&str; 4] = ["ztunnel", "waypoint", "ambit-node-agent", "controller"];
    for e in std::fs::read_dir("/proc")?.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let exe = std::fs::read_link(e.path().join("exe")).ok();
        let exe_name = exe
            .as_ref()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("");
        let args = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let supervisor =
            exe_name == "ambit" && args.contains("local --dir") && args.contains("--foreground");
        if MESH_BINARIES.contains(&exe_name) || supervisor {
            found.push(format!("process {pid} {}", args.trim()));
        }
    }
    Ok(found)
}

/// Waits a little for something eventually true (configuration propagates asynchronously).
pub const WAIT: Duration = Duration::from_secs(20);

/// One response of `ambit echo` (as the local-mesh tests read it): the pod that answered, the address the
/// request came from, and the request headers it received (names lower-case).
#[derive(Debug)]
pub struct Echo {
    pub pod: String,
    pub peer: String,
    pub headers: std::collections::BTreeMap<String, String>,
}

impl Echo {
    /// The IP of `peer` (IPv4 `ip:port`).
    pub fn peer_ip(&self) -> &str {
        self.peer.split(':').next().unwrap_or_default()
    }

    /// Splits the output of a `curl` of one or more URLs against `ambit echo` into its responses.
    pub fn parse_all(body: &str) -> Vec<Echo> {
        let mut out: Vec<Echo> = Vec::new();
        for line in body.lines() {
            if let Some(pod) = line.strip_prefix("pod=") {
                out.push(Echo {
                    pod: pod.to_owned(),
                    peer: String::new(),
                    headers: std::collections::BTreeMap::new(),
                });
            } else if let Some(last) = out.last_mut() {
                if let Some(peer) = line.strip_prefix("peer=") {
                    last.peer = peer.to_owned();
                } else if let Some((k, v)) =
                    line.strip_prefix("header ").and_then(|h| h.split_once('='))
                {
                    last.headers.insert(k.to_ascii_lowercase(), v.to_owned());
                }
            }
        }
        out
    }
}

/// STRICT mTLS in the demo namespace: a request that went around ztunnel would be refused rather than pass.
pub const STRICT_DEMO: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo}
spec: {mtls: {mode: STRICT}}
"#;

/// An ambient namespace `demo` with an echo `server` Deployment behind Service `server` (port 80) and a `client`
/// Deployment that sleeps: the fault tests' load runs from the client to the server.
pub const DEMO_APPS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: server, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server}}
    spec:
      serviceAccountName: server
      containers:
      - name: echo
        command: [ambit, echo, --http-port, "8080"]
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: demo}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      serviceAccountName: client
      containers: [{name: sleep, command: [sleep, infinity]}]
"#;
