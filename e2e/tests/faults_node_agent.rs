//! Faults survived (issue 15): the node agent restarted. On the local mesh (one node), a client makes sequential
//! requests to a Service through the mesh, each on a new connection, while the node's agent is
//! - SIGKILLed (the runtime restarts it): the pods' redirection stays in place and every request succeeds; the new
//!   agent takes the pods over again without releasing them;
//! - frozen (SIGSTOP) while a new pod is added, then killed: the pod cannot be captured while the agent is down,
//!   and the restarted agent captures it (its rules appear, its ztunnel holds it, it becomes ready).
//!
//! Zero failed requests over the whole run, and the server's ztunnel counted them as mesh connections (so the load
//! did not pass because the redirection silently went away).

use std::path::Path;
use std::time::Duration;

use ambit_e2e::e2e_test;
use ambit_e2e::load::RequestLoop;
use ambit_e2e::local::{DEMO_APPS, LocalMesh, NET_NS, WAIT, run_on_mesh};
use ambit_e2e::prom;
use ambit_e2e::redirection::Redirection;
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const NS: &str = "demo";
/// Requests that must succeed after each step.
const PER_PHASE: u64 = 10;

const LATE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: late, namespace: demo}
spec:
  selector: {matchLabels: {app: late}}
  template:
    metadata: {labels: {app: late}}
    spec:
      serviceAccountName: late
      containers:
      - name: echo
        command: [ambit, echo, --http-port, "8080"]
        ports: [{name: http, containerPort: 8080}]
"#;

/// The pid of the mesh's node agent.
fn node_agent_pid(mesh: &LocalMesh) -> Result<i32> {
    match mesh.pids("ambit-node-agent")?.as_slice() {
        [pid] => Ok(*pid),
        pids => bail!("node agent processes: {pids:?}"),
    }
}

/// A different agent process than `old` is running (the runtime restarted it).
fn restarted(mesh: &LocalMesh, old: i32) -> Result<i32> {
    poll("the node agent restarted", WAIT, || {
        Ok(node_agent_pid(mesh).ok().filter(|p| *p != old))
    })
}

/// Waits until the node agent's log (every run of it, appended) has `needle` `times` times.
fn wait_logged(state_dir: &Path, needle: &str, times: usize) -> Result<()> {
    let log = state_dir.join("logs/node-agent-node-1.log");
    poll(
        &format!("{times}x {needle:?} in {}", log.display()),
        WAIT,
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Ok((text.matches(needle).count() >= times).then_some(()))
        },
    )
}

fn server_connections(mesh: &LocalMesh) -> Result<f64> {
    let ip = mesh.node_ip("node-1")?;
    let metrics = mesh.get_in(NET_NS, &format!("http://{ip}:15020/metrics"))?;
    Ok(prom::sum(
        &prom::parse(&metrics),
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("destination_workload", "server"),
            ("source_workload", "client"),
        ],
    ))
}

fn scenario(mesh: &LocalMesh, manifests: &Path) -> Result<()> {
    let state_dir = mesh.state_dir().to_owned();
    let before = server_connections(mesh)?;
    let load = RequestLoop::default();
    let result = std::thread::scope(|s| {
        s.spawn(|| load.run(mesh, NS, "deploy/client", "http://server.demo/"));
        let steps = || -> Result<()> {
            load.more(PER_PHASE, "before any fault")?;

            // Killed: the runtime restarts it; the pods stay redirected throughout.
            let first = node_agent_pid(mesh)?;
            kill(Pid::from_raw(first), Signal::SIGKILL)?;
            let second = restarted(mesh, first)?;
            // The new agent has taken the pods over and handed them to ztunnel again (its ZDS snapshot).
            wait_logged(&state_dir, "snapshot sent", 2)?;
            load.more(PER_PHASE, "after the agent was killed and restarted")?;

            // Frozen while a pod is added, then killed: the restarted agent captures the new pod.
            kill(Pid::from_raw(second), Signal::SIGSTOP)?;
            std::fs::write(manifests.join("late.yaml"), LATE)?;
            let late = mesh.one_pod(NS, "late", WAIT)?;
            // The agent cannot act: the pod stays unredirected while it is down.
            std::thread::sleep(Duration::from_secs(2));
            ensure!(
                Redirection::read(&late.netns)?.absent(),
                "the late pod was captured with the agent frozen"
            );
            load.more(PER_PHASE, "with the agent frozen")?;
            kill(Pid::from_raw(second), Signal::SIGKILL)?;
            restarted(mesh, second)?;
            poll("the late pod captured by the restarted agent", WAIT, || {
                Ok(Redirection::read(&late.netns)?.installed().then_some(()))
            })?;
            poll("the late pod ready (its ztunnel holds it)", WAIT, || {
                let state = mesh.state()?;
                let ready = state["pods"]
                    .as_object()
                    .into_iter()
                    .flat_map(|m| m.values())
                    .any(|p| p["name"] == late.name.as_str() && p["ready"] == true);
                Ok(ready.then_some(()))
            })?;
            load.more(PER_PHASE, "after the second restart")?;
            Ok(())
        };
        let r = steps();
        load.stop();
        r
    });
    result?;
    let (ok, failed, last) = load.totals();
    ensure!(
        failed == 0,
        "{failed} of {} requests failed across the agent restarts; first errors:\n{last}",
        ok + failed
    );
    let through = server_connections(mesh)? - before;
    eprintln!(
        "node agent restarts: {ok} requests, {failed} failed, {through} mesh connections at the server"
    );
    ensure!(
        through >= ok as f64,
        "{ok} requests succeeded but the server's ztunnel counted {through} mesh connections: \
         some went around the mesh"
    );
    Ok(())
}

#[test]
fn node_agent_restarts_lose_no_request_and_capture_what_came_meanwhile() {
    e2e_test("local-faults-node-agent", |dir| {
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests)?;
        std::fs::write(manifests.join("apps.yaml"), DEMO_APPS)?;
        run_on_mesh(
            dir.path(),
            &manifests,
            1,
            |mesh| scenario(mesh, &manifests).context("node agent restarts"),
            |_| String::new(),
        )
    });
}
