//! Faults survived (issue 15): the controller killed. Two dedicated-mode ztunnels configured by the real controller
//! (xDS and certificates over 15012, per-pod tokens, as in `controller.rs`) while a client in pod a makes sequential
//! HTTP requests to b through the mesh, each on a new connection. The controller is SIGKILLed: every request keeps
//! succeeding (the ztunnels keep their workloads, policies and certificates) and both ztunnels stay ready. It is
//! restarted on the same state directory (same CA root, same token key): each ztunnel reconnects with
//! `initial_resource_versions` and is sent nothing (no resource, no removal), where a cold start sent the full
//! set; then one namespace-wide policy is added and exactly that one Authorization resource is sent to each.
//! Zero failed requests over the whole run.
//!
//! The restarted controller debounces for longer than the first one, so a ztunnel that reconnects before the
//! controller has computed its first state would be told (without the fix in the controller's xDS connection, which
//! holds the answer to a client with `initial_resource_versions` until then) that everything it holds is gone; the
//! removal counters catch that.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ambit_e2e::netns::Netns;
use ambit_e2e::process::Process;
use ambit_e2e::prom;
use ambit_e2e::topology::{B_IP, Pod, READY_PORT, poll, sibling_binary, wait_listening};
use ambit_e2e::{Mode, TwoPods, TwoPodsOptions, e2e_test};
use ambit_proto::type_url::{ADDRESS, AUTHORIZATION};
use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const HTTP_BIN: &str = env!("CARGO_BIN_EXE_e2e-http");
const WAIT: Duration = Duration::from_secs(30);
const MONITORING_PORT: u16 = 15014;
/// Requests that must succeed in each phase (before the kill, while the controller is down, after the restart).
const REQUESTS_PER_PHASE: u64 = 10;

const MANIFESTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default, labels: {app: a}}
spec: {nodeName: node1, serviceAccountName: a}
status: {podIP: 10.77.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default, labels: {app: b}}
spec: {nodeName: node1, serviceAccountName: b}
status: {podIP: 10.77.0.3}
";

/// A namespace-wide policy (no selector, so no workload names it: it is one Authorization resource and changes no
/// Address) that denies an identity nobody has: present from the start, harmless to the load.
const DENY_NOBODY: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-nobody, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/nobody]}}]
";

/// The one change after the restart: another such policy.
const DENY_OTHER: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-other, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/other]}}]
";

fn controller_bin() -> Result<PathBuf> {
    sibling_binary("AMBIT_CONTROLLER_BIN", "controller")
        .context("controller binary not found: cargo build -p ambit-controller (or set AMBIT_CONTROLLER_BIN)")
}

/// `controller token --pod default/<pod>`, written where the ztunnel's AUTH_TOKEN points.
fn pod_token(bin: &Path, state: &Path, pod: &str, out: &Path) -> Result<()> {
    let o = std::process::Command::new(bin)
        .args(["token", "--pod", &format!("default/{pod}"), "--state-dir"])
        .arg(state)
        .output()
        .context("run controller token")?;
    ensure!(
        o.status.success(),
        "controller token: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::write(out, String::from_utf8_lossy(&o.stdout).trim()).context("write token")?;
    Ok(())
}

/// The client loop's results: successes so far, and every failure with curl's account of it.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Waits until `n` more requests succeeded than `since`.
    fn wait_more(&self, what: &str, since: u64, n: u64) -> Result<u64> {
        poll(&format!("{n} successful requests {what}"), WAIT, || {
            let now = self.ok();
            Ok((now >= since + n).then_some(now))
        })
    }
}

/// Sequential requests from a to b, each on a new connection, until `stop`.
fn client_loop(a: &Pod, url: &str, stop: &AtomicBool, tally: &Tally) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        match a.curl(url) {
            Ok(r) if r.ok() && r.body.starts_with("hello ") => {
                tally.ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) => {
                if let Ok(mut f) = tally.failures.lock() {
                    f.push(format!("request {n}: {r:?}"));
                }
            }
            Err(e) => {
                if let Ok(mut f) = tally.failures.lock() {
                    f.push(format!("request {n}: could not run curl: {e:#}"));
                }
            }
        }
    }
}

/// GET on the controller's monitoring port, from b's namespace (the controller listens on b's address).
fn monitoring_get(b: &Netns, path: &str) -> Result<String> {
    b.run(&[
        "curl",
        "-sSf",
        "--max-time",
        "5",
        &format!("http://{B_IP}:{MONITORING_PORT}{path}"),
    ])
}

fn monitoring_json(b: &Netns, path: &str) -> Result<Value> {
    serde_json::from_str(&monitoring_get(b, path)?).with_context(|| format!("{path} is not JSON"))
}

/// What one xDS connection of the controller reports for one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    /// Resources the controller believes the client holds.
    holds: u64,
    resources_sent: u64,
    removals_sent: u64,
    /// The last response sent was ACKed.
    acked: bool,
}

fn sent(conn: &Value, type_url: &str) -> Sent {
    let t = &conn["types"][type_url];
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    let nonce = t["sent_nonce"].as_str().unwrap_or_default();
    Sent {
        holds: n("resources"),
        resources_sent: n("resources_sent"),
        removals_sent: n("removals_sent"),
        acked: !nonce.is_empty() && t["acked_nonce"].as_str() == Some(nonce),
    }
}

/// The ztunnels' connections (by node id: `POD_NAME` is `ztunnel-<pod>`; not by peer address, since a ztunnel's
/// own control-plane connections are not marked and, once the redirect is in, go through the mesh), once both are open and the last response of
/// both types on each was ACKed and satisfies `done`.
fn ztunnel_connections(
    b: &Netns,
    what: &str,
    done: impl Fn(&[Sent; 2]) -> bool,
) -> Result<[[Sent; 2]; 2]> {
    poll(what, WAIT, || {
        let conns = monitoring_json(b, "/debug/connections")?;
        let mut out = [[None; 2]; 2];
        for c in conns
            .as_array()
            .context("/debug/connections is not a list")?
        {
            let node = c["node_id"].as_str().unwrap_or_default();
            let Some(pod) = ["a", "b"]
                .iter()
                .position(|p| node.contains(&format!("~ztunnel-{p}.default~")))
            else {
                continue;
            };
            if out[pod].iter().any(Option::is_some) {
                bail!("two xDS connections from node {node}: {conns}");
            }
            let s = [sent(c, ADDRESS), sent(c, AUTHORIZATION)];
            if s.iter().all(|s| s.acked) && done(&s) {
                out[pod] = [Some(s[0]), Some(s[1])];
            }
        }
        let take = |p: [Option<Sent>; 2]| Some([p[0]?, p[1]?]);
        Ok(take(out[0]).zip(take(out[1])).map(|(a, b)| [a, b]))
    })
}

/// The controller process started by the topology (not reachable through `TwoPods`): the process in b's namespace
/// running `bin` with `state` on its command line.
fn controller_pid(b: &Netns, bin: &Path, state: &Path) -> Result<i32> {
    let pids =
        ambit_e2e::netns::run(std::process::Command::new("ip").args(["netns", "pids", b.name()]))?;
    let bin = bin.to_string_lossy();
    let state = state.to_string_lossy();
    let mut found = Vec::new();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().map(String::as_str) == Some(&*bin) && args.iter().any(|a| *a == *state) {
            found.push(pid);
        }
    }
    match found.as_slice() {
        [pid] => Ok(*pid),
        other => bail!(
            "expected one controller process in {}, found {other:?}",
            b.name()
        ),
    }
}

/// Gone or a zombie (its parent, the topology, reaps it when dropped).
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

fn ztunnel_ready(pod: &Pod) -> Result<()> {
    pod.ns()
        .run(&[
            "curl",
            "-sSf",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{READY_PORT}/healthz/ready"),
        ])
        .map(drop)
        .with_context(|| format!("ztunnel {} not ready", pod.name()))
}

fn resources_sent_metric(b: &Netns, short_type: &str) -> Result<f64> {
    let samples = prom::parse(&monitoring_get(b, "/metrics")?);
    Ok(prom::sum(
        &samples,
        "pilot_xds_resources_sent_total",
        &[("type", short_type)],
    ))
}

struct Setup {
    bin: PathBuf,
    state: PathBuf,
    manifests: PathBuf,
    /// The controller's command line (without the debounce).
    args: Vec<String>,
}

#[test]
fn controller_killed_and_restarted_costs_no_request() {
    e2e_test("faults_controller", |dir| {
        let bin = controller_bin()?;
        let manifests = dir.join("manifests");
        let state = dir.join("state");
        std::fs::create_dir_all(&manifests)?;
        std::fs::write(manifests.join("pods.yaml"), MANIFESTS)?;
        std::fs::write(manifests.join("deny-nobody.yaml"), DENY_NOBODY)?;
        for pod in ["a", "b"] {
            pod_token(&bin, &state, pod, &dir.join(&format!("token-{pod}")))?;
        }
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let args = vec![
            s(&bin),
            "--manifests".into(),
            s(&manifests),
            "--state-dir".into(),
            s(&state),
            "--tls-san".into(),
            B_IP.to_string(),
            "--listen".into(),
            B_IP.to_string(),
        ];
        let mut opts = TwoPodsOptions::new(Mode::Ztunnel).with_http(HTTP_BIN);
        opts.control_plane = Some((args.clone(), 15012));
        let address = format!("https://{B_IP}:15012");
        let root = s(&state.join("root-cert.pem"));
        opts.ztunnel_env = [
            ("LOCAL_XDS_PATH", String::new()),
            ("LOCAL_CA_DIR", String::new()),
            ("XDS_ADDRESS", address.clone()),
            ("CA_ADDRESS", address),
            ("XDS_ROOT_CA", root.clone()),
            ("CA_ROOT_CA", root),
            ("AUTH_TOKEN", s(&dir.join("token-{pod}"))),
            // Only for the xDS node id (`ztunnel~<ip>~ztunnel-a.default~…`), by which the connections are told apart.
            ("POD_NAME", "ztunnel-{pod}".to_owned()),
            ("POD_NAMESPACE", "default".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let pods = TwoPods::start(dir, &opts)?;
        let setup = Setup {
            bin,
            state,
            manifests,
            args,
        };

        let stop = AtomicBool::new(false);
        let tally = Tally::default();
        let url = pods.b_url();
        let mut restarted: Option<Process> = None;
        let steps = std::thread::scope(|scope| {
            let client = scope.spawn(|| client_loop(pods.a(), &url, &stop, &tally));
            let steps = fault_steps(dir, &pods, &setup, &tally, &mut restarted);
            stop.store(true, Ordering::SeqCst);
            let joined = client.join();
            steps.and_then(|()| joined.map_err(|_| anyhow::anyhow!("the client loop panicked")))
        });
        let failures = tally.failures();
        eprintln!(
            "client loop: {} requests succeeded, {} failed",
            tally.ok(),
            failures.len()
        );
        ensure!(
            failures.is_empty(),
            "{} requests failed during the run (none may):\n{}",
            failures.len(),
            failures.join("\n")
        );
        steps?;
        drop(restarted);
        Ok(())
    });
}

/// Everything the client loop runs through. `restarted` receives the second controller (kept alive until the
/// client loop has stopped).
fn fault_steps(
    dir: &ambit_e2e::TestDir,
    pods: &TwoPods,
    setup: &Setup,
    tally: &Tally,
    restarted: &mut Option<Process>,
) -> Result<()> {
    let b = pods.b().ns();
    // Cold start: each ztunnel was sent every Address and Authorization resource the controller has.
    let computed = monitoring_json(b, "/debug/resources")?;
    let count = |k: &str| computed[k].as_object().map_or(0, |m| m.len() as u64);
    let (addresses, authorizations) = (count("addresses"), count("authorizations"));
    // Both pods, and deny-nobody besides what the controller always sends (the converted static STRICT policy).
    ensure!(
        addresses == 2
            && computed["authorizations"]
                .get("default/deny-nobody")
                .is_some(),
        "the controller computed {addresses} addresses (want 2) and no default/deny-nobody: {computed}"
    );
    let cold = ztunnel_connections(b, "both ztunnels connected and synced (cold start)", |s| {
        s[0].holds == addresses && s[1].holds == authorizations
    })?;
    for (pod, [addr, authz]) in ["a", "b"].iter().zip(cold) {
        eprintln!("cold start, ztunnel {pod}: Address {addr:?}, Authorization {authz:?}");
        ensure!(
            addr.resources_sent == addresses && authz.resources_sent == authorizations,
            "cold start: ztunnel {pod} was sent {} Address and {} Authorization resources, want the full set \
             ({addresses} and {authorizations})",
            addr.resources_sent,
            authz.resources_sent
        );
    }
    let before = tally.wait_more("before the kill", 0, REQUESTS_PER_PHASE)?;

    // SIGKILL: no drain, no goodbye; the ztunnels' streams just break.
    let pid = controller_pid(b, &setup.bin, &setup.state)?;
    kill(Pid::from_raw(pid), Signal::SIGKILL).context("kill -KILL the controller")?;
    poll("the controller to die", WAIT, || {
        Ok(is_dead(pid).then_some(()))
    })?;
    poll("15012 to stop listening", WAIT, || {
        let open = b.run(&["ss", "-Hltn", "sport = :15012"])?;
        Ok(open.trim().is_empty().then_some(()))
    })?;
    eprintln!("controller {pid} killed after {before} requests");

    // Down: the load goes on, an explicit new connection works, both ztunnels stay ready.
    let down = tally.wait_more("while the controller is down", before, REQUESTS_PER_PHASE)?;
    let fresh = pods.a().curl(&pods.b_url())?;
    ensure!(
        fresh.ok(),
        "a new connection while the controller is down failed: {fresh:?}"
    );
    for pod in [pods.a(), pods.b()] {
        ztunnel_ready(pod)?;
    }
    let dump = pods.b().config_dump()?;
    let certs = dump["certificates"].to_string();
    ensure!(
        certs.contains("spiffe://cluster.local/ns/default/sa/b"),
        "b's certificate while the controller is down: {certs}"
    );
    ensure!(
        is_dead(pid),
        "the controller came back by itself while it was meant to be down"
    );

    // Restart on the same state directory, debouncing longer than the first start, so that a ztunnel may reconnect
    // before the first state is computed (the window a restart must not wipe configs in).
    let mut args: Vec<&str> = setup.args.iter().map(String::as_str).collect();
    args.extend(["--debounce-ms", "1500"]);
    *restarted = Some(b.spawn(dir.path(), "control-plane-restarted", &args, &[])?);
    wait_listening(b, 15012, WAIT)?;
    let early = poll("the restarted controller's monitoring port", WAIT, || {
        let ready = monitoring_get(b, "/ready").is_ok();
        let conns = monitoring_json(b, "/debug/connections")?;
        Ok(Some((!ready).then(|| conns.as_array().map_or(0, Vec::len))))
    })?;
    eprintln!(
        "xDS connections before the restarted controller was ready: {}",
        early.map_or_else(
            || "none (it was ready at once)".to_owned(),
            |n| n.to_string()
        )
    );

    // Each ztunnel reconnected with what it holds and was sent nothing: no resource, no removal.
    let warm = ztunnel_connections(b, "both ztunnels reconnected and synced", |s| {
        s[0].holds == addresses && s[1].holds == authorizations
    })?;
    for (pod, [addr, authz]) in ["a", "b"].iter().zip(warm) {
        eprintln!("restart, ztunnel {pod}: Address {addr:?}, Authorization {authz:?}");
        ensure!(
            [addr, authz]
                .iter()
                .all(|s| s.resources_sent == 0 && s.removals_sent == 0),
            "after the restart, with nothing changed, ztunnel {pod} was sent {} Address and {} Authorization \
             resources and {} + {} removals; want none (it reconnected with initial_resource_versions)",
            addr.resources_sent,
            authz.resources_sent,
            addr.removals_sent,
            authz.removals_sent
        );
    }
    for t in ["wds", "wads"] {
        let n = resources_sent_metric(b, t)?;
        ensure!(
            n == 0.0,
            "pilot_xds_resources_sent_total{{type={t}}} = {n} after the restart"
        );
    }
    for pod in [pods.a(), pods.b()] {
        ztunnel_ready(pod)?;
    }
    let after = tally.wait_more("after the restart", down, REQUESTS_PER_PHASE)?;

    // One change: exactly that Authorization is sent to each ztunnel, and nothing else.
    std::fs::write(setup.manifests.join("deny-other.yaml"), DENY_OTHER)?;
    let changed = ztunnel_connections(b, "the new policy sent to both ztunnels", |s| {
        s[1].holds == authorizations + 1
    })?;
    for (pod, [addr, authz]) in ["a", "b"].iter().zip(changed) {
        eprintln!("policy added, ztunnel {pod}: Address {addr:?}, Authorization {authz:?}");
        ensure!(
            addr.resources_sent == 0
                && authz.resources_sent == 1
                && addr.removals_sent == 0
                && authz.removals_sent == 0,
            "one policy added: ztunnel {pod} was sent {} Address and {} Authorization resources ({} + {} \
             removals); want exactly the one Authorization",
            addr.resources_sent,
            authz.resources_sent,
            addr.removals_sent,
            authz.removals_sent
        );
    }
    pods.b()
        .wait_config("b's ztunnel holds deny-other", WAIT, |d| {
            d.to_string().contains("deny-other")
        })?;
    tally.wait_more("after the policy change", after, REQUESTS_PER_PHASE)?;
    Ok(())
}
