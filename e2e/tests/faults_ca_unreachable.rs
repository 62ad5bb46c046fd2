//! Faults survived (issue 15): the CA unreachable for longer than a certificate lives. The local mesh's ztunnel
//! holds 12-second certificates (`SECRET_TTL=12s`); the controller, which is the CA, is frozen (SIGSTOP: its
//! connections stay open and nothing answers) while a client makes sequential requests through the mesh (a new
//! connection per request, STRICT mTLS), then thawed.
//!
//! Asserted: while the certificates held are still valid, requests keep succeeding; once one expires unrenewed,
//! ztunnel says so in an error log naming the identity, counts it in `workload_certificates{state="expired"}`, and
//! refuses the traffic (fail closed) — also on the pooled HBONE connection that was set up while it was valid;
//! once the CA answers again, certificates are renewed and requests succeed.

use std::time::{Duration, Instant};

use ambit_e2e::e2e_test;
use ambit_e2e::load::RequestLoop;
use ambit_e2e::local::{LocalMesh, NET_NS, run_strict_demo};
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const NS: &str = "demo";
const TTL: Duration = Duration::from_secs(12);
const EXPIRED_LOG: &str = "workload certificate expired and the CA has not renewed it";

fn controller(mesh: &LocalMesh) -> Result<Pid> {
    match mesh.pids("controller")?.as_slice() {
        [pid] => Ok(Pid::from_raw(*pid)),
        pids => bail!("controller processes: {pids:?}"),
    }
}

/// The ztunnel log lines reporting an expired certificate.
fn expiry_lines(mesh: &LocalMesh) -> Result<Vec<String>> {
    let log = std::fs::read_to_string(mesh.state_dir().join("logs/ztunnel-node-1.log"))
        .context("read the ztunnel log")?;
    Ok(log
        .lines()
        .filter(|l| l.contains(EXPIRED_LOG))
        .map(str::to_owned)
        .collect())
}

fn expired_gauge(mesh: &LocalMesh) -> Result<u64> {
    let url = format!("http://{}:15020/metrics", mesh.node_ip("node-1")?);
    let text = mesh.get_in(NET_NS, &url)?;
    text.lines()
        .find_map(|l| l.strip_prefix("workload_certificates{state=\"expired\"} "))
        .with_context(|| format!("no workload_certificates{{state=\"expired\"}} in {url}"))?
        .trim()
        .parse()
        .context("workload_certificates value")
}

fn scenario(mesh: &LocalMesh) -> Result<()> {
    let load = RequestLoop::default();
    let url = format!("http://{}/", mesh.vip(NS, "server")?);
    let ca = controller(mesh)?;
    let result = std::thread::scope(|s| {
        s.spawn(|| load.run(mesh, NS, "deploy/client", &url));
        let steps = || -> Result<()> {
            load.more(10, "before the CA stops")?;
            ensure!(
                expired_gauge(mesh)? == 0,
                "a certificate expired before the fault"
            );
            kill(ca, Signal::SIGSTOP).context("kill -STOP the controller")?;
            let stopped = Instant::now();
            // The certificates held were issued at most half a lifetime ago: still valid for a while.
            load.more(10, "with the CA stopped, while the certificates are valid")?;
            let (_, failed_valid, errors) = load.totals();
            ensure!(
                failed_valid == 0,
                "{failed_valid} requests failed while the certificates were still valid:\n{errors}"
            );
            let lines = poll("a certificate reported expired", TTL * 4, || {
                let lines = expiry_lines(mesh)?;
                Ok((!lines.is_empty()).then_some(lines))
            })?;
            eprintln!(
                "expired {:?} after the CA stopped: {}",
                stopped.elapsed(),
                lines[0]
            );
            ensure!(
                lines[0].contains("identity=spiffe://cluster.local/ns/demo/sa/"),
                "the log names the identity: {}",
                lines[0]
            );
            ensure!(expired_gauge(mesh)? >= 1, "the expiry is counted");
            // Fail closed: from now on nothing gets through (one request may have been in flight).
            let (ok_at_expiry, failed_at_expiry, _) = load.totals();
            poll(
                "requests refused after the expiry",
                Duration::from_secs(30),
                || Ok((load.totals().1 >= failed_at_expiry + 5).then_some(())),
            )?;
            let ok_after = load.totals().0;
            ensure!(
                ok_after <= ok_at_expiry + 1,
                "{} requests succeeded after a certificate on their path expired",
                ok_after - ok_at_expiry
            );
            kill(ca, Signal::SIGCONT).context("kill -CONT the controller")?;
            let thawed = Instant::now();
            // Renewal waits for the current retry backoff (at most a few seconds after this short an outage).
            poll(
                "requests succeeding after the CA returned",
                Duration::from_secs(60),
                || Ok((load.totals().0 >= ok_after + 10).then_some(())),
            )?;
            eprintln!("recovered {:?} after the CA returned", thawed.elapsed());
            ensure!(
                expired_gauge(mesh)? == 0,
                "no certificate is expired any more"
            );
            Ok(())
        };
        let r = steps();
        // Never leave the controller stopped, whatever failed.
        let _ = kill(ca, Signal::SIGCONT);
        load.stop();
        r
    });
    let (ok, failed, _) = load.totals();
    eprintln!("CA unreachable: {ok} requests succeeded, {failed} refused");
    result
}

#[test]
fn an_unreachable_ca_serves_valid_certificates_then_fails_closed() {
    e2e_test("local-faults-ca-unreachable", |dir| {
        let ttl = format!("{}s", TTL.as_secs());
        run_strict_demo(dir, &[("SECRET_TTL", &ttl)], scenario)
    });
}
