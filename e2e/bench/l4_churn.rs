//! `--churn N`: N connections opened and closed through the pair as fast as the machine allows (a byte there and
//! back on each, so each one exists end to end; 32 concurrent openers), then a leak check; in direct mode the same
//! churn is the baseline. The pod-b application is `l4_idle`'s holder
//! (it echoes and closes when its peer does). A first, short warm-up churn brings the ztunnels to their steady
//! state (the pooled HBONE connection, allocator arenas, per-worker state); after it both ztunnels' open fds and
//! alive tasks (`tokio_num_alive_tasks`, when the binary exports it) are the baseline. After the N connections the
//! same are read again, polling up to [`SETTLE`] for the last closes to land: anything above the baseline is a
//! leak, and so is a connection the ztunnels' `config_dump` still lists.

use std::time::{Duration, Instant};

use ambit_e2e::TestDir;
use ambit_e2e::TwoPods;
use ambit_e2e::tools::fd_sum;
use ambit_e2e::topology::B_IP;
use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

/// Concurrent openers in pod a.
const CONCURRENCY: u32 = 32;
/// How long the leak check waits for the ztunnels to let go of the last connections.
const SETTLE: Duration = Duration::from_secs(10);

/// `CONCURRENCY` threads open, use and close connections until N have been tried; prints `ok failed seconds`.
const CHURNER: &str = r#"
import socket, sys, threading, time
host, port, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
lock = threading.Lock()
left = [n]
ok = [0]
failed = [0]
first_error = []
def work():
    while True:
        with lock:
            if left[0] == 0:
                return
            left[0] -= 1
        try:
            s = socket.create_connection((host, port), timeout=10)
            s.sendall(b"x")
            good = s.recv(1) == b"x"
            s.close()
        except OSError as e:
            good = False
            if not first_error:
                first_error.append(repr(e))
        with lock:
            if good:
                ok[0] += 1
            else:
                failed[0] += 1
start = time.monotonic()
threads = [threading.Thread(target=work) for _ in range(c)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(ok[0], failed[0], time.monotonic() - start, flush=True)
if first_error:
    print("first error:", first_error[0], file=sys.stderr)
"#;

#[derive(Clone, Debug, Default, Serialize)]
pub struct ChurnResult {
    pub connections: u32,
    pub failed: u32,
    pub per_sec: f64,
    /// Open fds and alive tasks of both ztunnels above the post-warm-up baseline once settled (None: no ztunnels,
    /// the direct baseline).
    pub fds_leaked: Option<i64>,
    pub tasks_leaked: Option<i64>,
    /// Connections both ztunnels' `config_dump` still lists once settled (None: the dump lists none by design).
    pub connections_listed: Option<u64>,
}

fn churn(pods: &TwoPods, port: u16, n: u32) -> Result<(u32, u32, f64)> {
    let out = pods.a().ns().output(&[
        "python3",
        "-c",
        CHURNER,
        &B_IP.to_string(),
        &port.to_string(),
        &n.to_string(),
        &CONCURRENCY.to_string(),
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.split_whitespace();
    let (Some(ok), Some(failed), Some(secs)) = (f.next(), f.next(), f.next()) else {
        bail!(
            "the churner printed {text:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        eprintln!("   churner: {}", err.trim());
    }
    Ok((ok.parse()?, failed.parse()?, secs.parse()?))
}

fn alive_tasks(pods: &TwoPods) -> Option<i64> {
    let mut sum = 0.0;
    for pod in [pods.a(), pods.b()] {
        let samples = pod.metrics().ok()?;
        sum += samples
            .iter()
            .find(|s| s.name == "tokio_num_alive_tasks")?
            .value;
    }
    Some(sum as i64)
}

/// Connections listed under any `connections` key of both ztunnels' `config_dump` (None if neither has one).
fn listed_connections(pods: &TwoPods) -> Option<u64> {
    fn count(v: &serde_json::Value, found: &mut Option<u64>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "connections" {
                        let n = match v {
                            serde_json::Value::Array(a) => a.len() as u64,
                            serde_json::Value::Object(o) => o
                                .values()
                                .map(|x| x.as_array().map_or(0, |a| a.len() as u64))
                                .sum(),
                            _ => 0,
                        };
                        *found = Some(found.unwrap_or(0) + n);
                    } else {
                        count(v, found);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| count(x, found)),
            _ => {}
        }
    }
    let mut found = None;
    for pod in [pods.a(), pods.b()] {
        if let Ok(dump) = pod.config_dump() {
            count(&dump, &mut found);
        }
    }
    found
}

pub fn run(dir: &TestDir, pods: &TwoPods, ztunnels: &[u32], n: u32) -> Result<ChurnResult> {
    // Each closed connection leaves a TIME_WAIT socket on the side that closed first for a minute; with the
    // default port range (28,232 ports) and no reuse, tens of thousands of connections exhaust the ephemeral ports
    // of the pods' namespaces (direct as well: 1,183 of 50,000 failed at 506/s), which measures the kernel, not
    // the proxies. Both pods get the whole range and TIME_WAIT reuse for outgoing connections, as a load test host
    // would.
    for pod in [pods.a(), pods.b()] {
        for setting in [
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ] {
            let out = pod.ns().output(&["sysctl", "-qw", setting])?;
            ensure!(
                out.status.success(),
                "sysctl {setting} in {}: {}",
                pod.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _holder = super::l4_idle::start_holder(dir, pods)?;
    let port = super::l4_idle::HOLD_PORT;
    let (_, warm_failed, _) = churn(pods, port, 2_000.min(n)).context("warm-up churn")?;
    std::thread::sleep(Duration::from_secs(1));
    let fds0 = fd_sum(ztunnels).map(|n| n as i64);
    let tasks0 = alive_tasks(pods);
    let started = Instant::now();
    let (ok, failed, secs) = churn(pods, port, n)?;
    let per_sec = f64::from(ok) / secs;
    eprintln!(
        "   {ok} connections opened and closed in {secs:.1}s ({per_sec:.0}/s), {failed} failed \
         (warm-up: {warm_failed} failed)"
    );
    let Some(fds0) = fds0 else {
        return Ok(ChurnResult {
            connections: ok,
            failed,
            per_sec,
            ..ChurnResult::default()
        });
    };
    // Settled: back at (or below) the baseline, or SETTLE is over and what is left is the leak.
    let deadline = started + Duration::from_secs_f64(secs) + SETTLE;
    let (fds_leaked, tasks_leaked) = loop {
        let fds = fd_sum(ztunnels).context("ztunnels' fds")? as i64 - fds0;
        let tasks = alive_tasks(pods).zip(tasks0).map(|(t, t0)| t - t0);
        if (fds <= 0 && tasks.is_none_or(|t| t <= 0)) || Instant::now() > deadline {
            break (fds, tasks);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let connections_listed = listed_connections(pods);
    eprintln!(
        "   after: fds {fds_leaked:+} and alive tasks {} against the baseline ({fds0} fds, {} tasks); \
         config_dump lists {} connections",
        tasks_leaked.map_or("n/a".into(), |t| format!("{t:+}")),
        tasks0.map_or("n/a".into(), |t| t.to_string()),
        connections_listed.map_or("no".into(), |c| c.to_string()),
    );
    Ok(ChurnResult {
        connections: ok,
        failed,
        per_sec,
        fds_leaked: Some(fds_leaked),
        tasks_leaked,
        connections_listed,
    })
}
