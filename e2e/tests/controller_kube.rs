//! The controller in Kubernetes mode against the real parts: the `ambit-apiserver` binary, Debian's `kubectl`
//! applying and changing objects, and the `controller` binary watching through kube-rs. Everything is checked
//! through the controller's own `/debug/resources` (what it would push over xDS).
//!
//! A second scenario ([`status`]) checks the status the controller writes back by server-side apply (`kubectl get -o
//! json`), against what its `/debug/status` computes; a third ([`leader`]) runs two replicas and checks that only
//! the holder of the leader Lease writes status, and that a standby takes over when the leader dies or stops.
//!
//! Needs no root and no network namespaces; it needs the binaries (`cargo build -p ambit-controller -p
//! ambit-apiserver`, or `AMBIT_CONTROLLER_BIN` / `AMBIT_APISERVER_BIN`) and `kubectl` (`KUBECTL`, else on `PATH`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_e2e::TestDir;
use ambit_e2e::kube::{ApiServer, apply, binary, kubectl, label, set_pod_phase};
use ambit_e2e::process::Process;
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

#[path = "controller_kube/leader.rs"]
mod leader;
#[path = "controller_kube/status.rs"]
mod status;

const WAIT: Duration = Duration::from_secs(10);

/// Installed before the controller starts.
const AUTHZ_CRD: &str = "\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: authorizationpolicies.security.istio.io}
spec:
  group: security.istio.io
  scope: Namespaced
  names: {plural: authorizationpolicies, singular: authorizationpolicy, kind: AuthorizationPolicy, listKind: AuthorizationPolicyList}
  versions:
  - {name: v1, served: true, storage: true, subresources: {status: {}}, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}
  - {name: v1beta1, served: true, storage: false, subresources: {status: {}}, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}
";

/// The Gateway API kinds, with the status subresource, for the status and leader tests.
const GATEWAY_API_CRDS: &str = "\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gateways.gateway.networking.k8s.io}
spec:
  group: gateway.networking.k8s.io
  scope: Namespaced
  names: {plural: gateways, singular: gateway, kind: Gateway, listKind: GatewayList, shortNames: [gtw]}
  versions:
  - {name: v1, served: true, storage: true, subresources: {status: {}}, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: httproutes.gateway.networking.k8s.io}
spec:
  group: gateway.networking.k8s.io
  scope: Namespaced
  names: {plural: httproutes, singular: httproute, kind: HTTPRoute, listKind: HTTPRouteList}
  versions:
  - {name: v1, served: true, storage: true, subresources: {status: {}}, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}
";

/// Installed while the controller runs.
const SERVICE_ENTRY_CRD: &str = "\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: serviceentries.networking.istio.io}
spec:
  group: networking.istio.io
  scope: Namespaced
  names: {plural: serviceentries, singular: serviceentry, kind: ServiceEntry, listKind: ServiceEntryList, shortNames: [se]}
  versions:
  - {name: v1, served: true, storage: true, subresources: {status: {}}, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}
";

const WORKLOADS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, labels: {app: web}}
spec: {nodeName: node1, serviceAccountName: web, containers: [{name: app, image: web:1}]}
";

/// A valid policy next to one the controller cannot read (`rules` must be a list): the first applies.
const POLICIES: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: demo}
spec: {action: DENY, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: demo}
spec: {rules: not-a-list}
";

const SERVICE_ENTRY: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: demo}
spec:
  hosts: [ext.example.com]
  addresses: [240.240.7.7]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 192.0.2.10}]
";

/// A plain HTTP/1.1 GET: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    Ok((code, body.to_owned()))
}

/// Text without ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address a `<field>=<ip:port>` in the process's log names, once it is there.
fn logged_addr(p: &Process, field: &str) -> Result<Option<SocketAddr>> {
    let log = plain(&p.output());
    let needle = format!("{field}=");
    Ok(log
        .split_whitespace()
        .find_map(|w| w.strip_prefix(needle.as_str()))
        .and_then(|a| a.parse().ok()))
}

/// The workload `<ns>/<name>` in the controller's resources.
fn workload<'a>(resources: &'a Value, ns: &str, name: &str) -> Option<&'a Value> {
    resources["addresses"]
        .as_object()?
        .values()
        .filter_map(|a| a.get("workload"))
        .find(|w| w["namespace"] == ns && w["name"] == name)
}

struct Cluster {
    dir: TestDir,
    // Field order is drop order: the controller goes before the API server.
    controller: Option<Process>,
    apiserver: ApiServer,
}

impl Cluster {
    fn start(dir: TestDir) -> Result<Cluster> {
        let apiserver = ApiServer::start(dir.path())?;
        // The controller's own namespace, where its leader Lease lives (as in a cluster running istiod).
        kubectl(
            apiserver.kubeconfig(),
            &["create", "namespace", "istio-system"],
            None,
        )?;
        Ok(Cluster {
            dir,
            controller: None,
            apiserver,
        })
    }

    /// Starts the controller in Kubernetes mode; returns its monitoring address once it is ready.
    fn start_controller(&mut self) -> Result<SocketAddr> {
        self.start_controller_with(&[])
    }

    fn start_controller_with(&mut self, extra: &[&str]) -> Result<SocketAddr> {
        // A controller started before goes first, gracefully: it releases the leader Lease, so this one leads at
        // once (as in a rolling restart).
        if let Some(mut before) = self.controller.take() {
            before.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
        }
        let (controller, monitoring) = self.spawn_controller("controller", extra, &[])?;
        self.controller = Some(controller);
        Ok(monitoring)
    }

    /// A controller process in Kubernetes mode, its logs in `<name>.stdout`/`.stderr`, `env` added to its
    /// environment; returned with its monitoring address once it is ready.
    fn spawn_controller(
        &self,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<(Process, SocketAddr)> {
        let mut cmd = Command::new(binary(
            "AMBIT_CONTROLLER_BIN",
            "controller",
            "ambit-controller",
        )?);
        cmd.arg("--kubeconfig")
            .arg(self.apiserver.kubeconfig())
            .arg("--state-dir")
            .arg(self.dir.join("controller-state"))
            .args(["--listen", "127.0.0.1", "--tls-san", "localhost"])
            .args([
                "--xds-port",
                "0",
                "--secure-port",
                "0",
                "--monitoring-port",
                "0",
            ])
            .args(["--crd-retry-seconds", "1", "--debounce-ms", "20"])
            .args(extra)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info,kube=warn")
            .envs(env.iter().copied());
        let controller = Process::spawn(name, cmd, self.dir.path())?;
        let monitoring = poll("the controller's monitoring address", WAIT, || {
            logged_addr(&controller, "monitoring")
        })?;
        poll("the controller to be ready", WAIT, || {
            Ok((http_get(monitoring, "/ready")?.0 == 200).then_some(()))
        })?;
        Ok((controller, monitoring))
    }

    fn controller_log(&self) -> String {
        self.controller
            .as_ref()
            .map(|c| plain(&c.output()))
            .unwrap_or_default()
    }
}

/// Polls `/debug/resources` until `check` returns something.
fn until<T>(
    what: &str,
    monitoring: SocketAddr,
    mut check: impl FnMut(&Value) -> Option<T>,
) -> Result<T> {
    let mut last = Value::Null;
    poll(what, WAIT, || {
        let (code, body) = http_get(monitoring, "/debug/resources")?;
        ensure!(code == 200, "/debug/resources: {code} {body}");
        last = serde_json::from_str(&body)?;
        Ok(check(&last))
    })
    .with_context(|| format!("last /debug/resources: {last}"))
}

fn scenario(cluster: &mut Cluster) -> Result<()> {
    let kc = cluster.apiserver.kubeconfig().to_owned();
    let kc = kc.as_path();
    // Before the controller: one CRD, an ambient namespace and a pod whose IP is in its status.
    apply(kc, AUTHZ_CRD)?;
    apply(kc, WORKLOADS)?;
    set_pod_phase(kc, "demo", "web", "Running", "10.1.0.5")?;

    let started = Instant::now();
    let monitoring = cluster.start_controller()?;
    eprintln!("controller ready after {:?}", started.elapsed());
    let log = cluster.controller_log();
    ensure!(
        log.contains("ServiceEntry CRD not installed; watching for it"),
        "a missing CRD is reported, not fatal: {log}"
    );
    let (_, config) = http_get(monitoring, "/debug/config")?;
    let config: Value = serde_json::from_str(&config)?;
    ensure!(
        config["source"]["kubernetes"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://127.0.0.1:")),
        "the source at /debug/config: {}",
        config["source"]
    );

    // The pod is an HBONE workload with its status IP.
    let w = until("the pod as a captured workload", monitoring, |r| {
        workload(r, "demo", "web").cloned()
    })?;
    ensure!(w["tunnelProtocol"] == "HBONE", "captured: {w}");
    ensure!(
        w["addresses"].to_string().contains("10.1.0.5"),
        "pod IP: {w}"
    );
    ensure!(w["serviceAccount"] == "web" && w["node"] == "node1", "{w}");

    // Unlabelling the namespace takes the pod out of the mesh (it stays as a plain-text workload, as in istiod).
    label(kc, &["namespace", "demo"], "istio.io/dataplane-mode-")?;
    until("the pod no longer captured", monitoring, |r| {
        workload(r, "demo", "web")
            .filter(|w| w["tunnelProtocol"] != "HBONE")
            .map(|_| ())
    })?;
    label(
        kc,
        &["namespace", "demo"],
        "istio.io/dataplane-mode=ambient",
    )?;
    until("the pod captured again", monitoring, |r| {
        workload(r, "demo", "web")
            .filter(|w| w["tunnelProtocol"] == "HBONE")
            .map(|_| ())
    })?;

    // A policy applied now appears; the unreadable one next to it is reported by name and skipped.
    apply(kc, POLICIES)?;
    until("the AuthorizationPolicy", monitoring, |r| {
        r["authorizations"].get("demo/deny-all").map(|_| ())
    })?;
    poll("the invalid policy reported", WAIT, || {
        let log = cluster.controller_log();
        Ok(log
            .lines()
            .any(|l| l.contains("AuthorizationPolicy/demo/broken") && l.contains("invalid object"))
            .then_some(()))
    })?;

    // A CRD installed while the controller runs: its objects are picked up.
    let installed = Instant::now();
    apply(kc, SERVICE_ENTRY_CRD)?;
    poll("the ServiceEntry CRD served", WAIT, || {
        Ok(kubectl(kc, &["get", "serviceentries", "-A"], None)
            .is_ok()
            .then_some(()))
    })?;
    apply(kc, SERVICE_ENTRY)?;
    until("the ServiceEntry's service", monitoring, |r| {
        r["addresses"]
            .as_object()?
            .values()
            .filter_map(|a| a.get("service"))
            .find(|s| s["hostname"] == "ext.example.com")
            .map(|_| ())
    })?;
    eprintln!(
        "CRD installed -> ServiceEntry in the resources: {:?}",
        installed.elapsed()
    );

    // Deleting the pod removes the workload; deleting the policy removes it too.
    kubectl(
        kc,
        &["delete", "pod", "web", "-n", "demo", "--wait=false"],
        None,
    )?;
    kubectl(
        kc,
        &["delete", "authorizationpolicy", "deny-all", "-n", "demo"],
        None,
    )?;
    until("the workload and the policy gone", monitoring, |r| {
        (workload(r, "demo", "web").is_none() && r["authorizations"].get("demo/deny-all").is_none())
            .then_some(())
    })?;
    let log = cluster.controller_log();
    if log.contains("panicked") {
        bail!("the controller panicked: {log}");
    }
    Ok(())
}

#[test]
fn controller_watches_the_kubernetes_api() {
    let started = Instant::now();
    let dir = TestDir::new("controller-kube").expect("test directory");
    let report = dir.path().to_owned();
    let mut cluster = match Cluster::start(dir) {
        Ok(c) => c,
        Err(e) => panic!(
            "starting the API server (logs in {}): {e:#}",
            report.display()
        ),
    };
    let outcome = scenario(&mut cluster);
    // Stop the processes first so their logs are complete.
    cluster.controller.take();
    if let Err(e) = outcome {
        cluster.dir.report();
        panic!("controller_kube failed: {e:#}");
    }
    eprintln!("controller_kube: {:?}", started.elapsed());
}
