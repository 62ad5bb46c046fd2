//! Faults survived (issue 15): a ztunnel restarted under load, hitless. On the local mesh (one node, client and
//! server both on it, so every request crosses the node's ztunnel twice: the client's outbound and the server's
//! HBONE inbound), a client makes sequential requests, each on a new connection, while `ambit local restart ztunnel`
//! starts a new ztunnel beside the old one, the node agent hands it the pods, and the old one drains. STRICT mTLS
//! in the namespace, so a request that went around ztunnel would fail rather than pass.
//!
//! Asserted: no request fails; the ztunnel's pid changes each time and the old process is gone; the new one serves
//! the pods (requests keep succeeding after the old exited).

use ambit_e2e::e2e_test;
use ambit_e2e::load::RequestLoop;
use ambit_e2e::local::{LocalMesh, run_strict_demo};
use anyhow::{Context, Result, ensure};

const NS: &str = "demo";
/// Requests that must succeed after each step.
const PER_PHASE: u64 = 10;
/// Rolling restarts in a run.
const ROUNDS: u64 = 4;

fn restart(mesh: &LocalMesh) -> Result<()> {
    let out = mesh.ambit_cli(&["local", "restart", "ztunnel", "--node", "node-1"])?;
    ensure!(
        out.status.success(),
        "ambit local restart ztunnel: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn scenario(mesh: &LocalMesh) -> Result<()> {
    let load = RequestLoop::default();
    // The Service VIP, not its name: what is asserted is new connections. (A DNS query over UDP that sits in the
    // old process's socket when it closes is lost, and the client's resolver asks again after its timeout — 5 s for
    // glibc, longer than curl is given here; see docs/RELIABILITY.md.)
    let url = format!("http://{}/", mesh.vip(NS, "server")?);
    let result = std::thread::scope(|s| {
        s.spawn(|| load.run(mesh, NS, "deploy/client", &url));
        let steps = || -> Result<()> {
            load.more(PER_PHASE, "before the restart")?;
            for round in 1..=ROUNDS {
                let before = mesh.pids("ztunnel")?;
                ensure!(
                    before.len() == 1,
                    "ztunnels before round {round}: {before:?}"
                );
                restart(mesh).with_context(|| format!("round {round}"))?;
                let after = mesh.pids("ztunnel")?;
                ensure!(
                    after.len() == 1 && after != before,
                    "round {round}: ztunnel pids {before:?} before, {after:?} after (the old one must be gone)"
                );
                load.more(PER_PHASE, &format!("after restart {round}"))?;
            }
            Ok(())
        };
        let r = steps();
        load.stop();
        r
    });
    result?;
    let (ok, failed, last) = load.totals();
    eprintln!("ztunnel restarts: {ok} requests, {failed} failed");
    // Zero. Two races cost a request in about one restart of ten before they were fixed: the old process's pods
    // were cut unsignalled when its ZDS client let go of them first (their connections closed at once, "Empty
    // reply" or a reset), and a CONNECT the pool sent on a connection its draining peer had just told to go away
    // failed instead of moving to another connection (core/tests/hbone.rs). Without either fix a few runs of
    // this test fail.
    ensure!(
        failed == 0,
        "{failed} of {} requests failed across {ROUNDS} ztunnel restarts; first errors:\n{last}",
        ok + failed
    );
    Ok(())
}

#[test]
fn a_ztunnel_restarted_under_load_loses_no_request() {
    e2e_test("local-faults-ztunnel-restart", |dir| {
        run_strict_demo(dir, &[], scenario)
    });
}
