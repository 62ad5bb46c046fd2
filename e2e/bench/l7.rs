//! `ambit-bench-l7`: L7 benchmark on the `ThreePods` topology (client, waypoint, server pods on a bridge): HTTP
//! requests/s and latency direct, through the ztunnel pair (`l4`), through ztunnel → Ambit waypoint → ztunnel
//! (`l7`; `l7-bare` with a route that turns retries off, `l7-policies` with retries, timeouts, outlier detection
//! and a connection pool configured), through ztunnel → waypoint → plain server (`waypoint-plain`), and through
//! nginx or HAProxy in the waypoint's place (`nginx`, `haproxy`: plain HTTP, no mesh). Needs root and `wrk` (`perf`
//! for the counts, `nginx`/`haproxy` for those modes); run it through `scripts/bench-l7.sh` (release build).
//!
//! ```text
//! ambit-bench-l7 [--duration SECS] [--rounds N] [--connections 8,64] [--count-secs SECS] [--out DIR]
//!                [--modes direct,l4,l7,l7-bare,l7-policies,waypoint-plain,nginx,haproxy] [--ztunnel PATH] [--waypoint PATH]
//!                [--http PATH] [--proxy-workers N] [--ztunnel-env K=V]... [--waypoint-env K=V]...
//! ```
//! Each round measures every mode in turn with fresh pods, every connection count in turn. Requests/s and the
//! CPU time of the proxies (from `/proc/<pid>/task/*/schedstat`) come from a wrk run with nothing attached; CPU,
//! context switches and system calls per request also come from a separate `--count-secs` run under `perf stat`.
//! The proxy's RSS is read before the first and after the last wrk run. When `l7-bare` ran, the report also
//! compares the waypoint's CPU per request in `l7` and `l7-policies` with it, round by round (the policies' cost on
//! the success path). Writes `l7-<unix time>.{json,md}` (and `l7-latest.*`) into the output directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambit_e2e::runner::{E2eLock, check_tools};
use ambit_e2e::three_pods::{
    ECHO_HOST, L7Mode, ThreePods, ThreePodsOptions, WAYPOINT_ADMIN_PORT, WAYPOINT_STATS_PORT,
};
use ambit_e2e::tools::{self, WrkResult, cpu_ns, rss_sum};
use ambit_e2e::topology::{HTTP_BIN_ENV, ZTUNNEL_BIN_ENV, sibling_binary};
use ambit_e2e::{TestDir, is_root, prom};
use anyhow::{Context, Result, bail, ensure};

mod l7_report;
use l7_report::*;

const WAYPOINT_BIN_ENV: &str = "AMBIT_WAYPOINT_BIN";

const USAGE: &str = "ambit-bench-l7 [--duration SECS] [--rounds N] [--connections 8,64] [--count-secs SECS] \
[--out DIR] [--modes direct,l4,l7,l7-bare,l7-policies,waypoint-plain,nginx,haproxy] [--ztunnel PATH] [--waypoint PATH] [--http PATH] \
[--proxy-workers N] [--ztunnel-env K=V]... [--waypoint-env K=V]...";

struct Args {
    duration: u64,
    rounds: usize,
    connections: Vec<u32>,
    count_secs: u64,
    out: PathBuf,
    modes: Vec<L7Mode>,
    ztunnel: Option<PathBuf>,
    waypoint: Option<PathBuf>,
    http: Option<PathBuf>,
    proxy_workers: u32,
    ztunnel_env: Vec<(String, String)>,
    waypoint_env: Vec<(String, String)>,
}

fn key_value(kv: &str, flag: &str) -> Result<(String, String)> {
    let (k, v) = kv
        .split_once('=')
        .with_context(|| format!("{flag} {kv:?}: expected KEY=VALUE"))?;
    Ok((k.to_owned(), v.to_owned()))
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        duration: 10,
        rounds: 3,
        connections: vec![8, 64],
        count_secs: 5,
        out: PathBuf::from("target/bench"),
        modes: L7Mode::ALL.to_vec(),
        ztunnel: None,
        waypoint: None,
        http: None,
        proxy_workers: 2,
        ztunnel_env: Vec::new(),
        waypoint_env: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--duration" => args.duration = value()?.parse().context("--duration")?,
            "--rounds" => args.rounds = value()?.parse().context("--rounds")?,
            "--count-secs" => args.count_secs = value()?.parse().context("--count-secs")?,
            "--proxy-workers" => {
                args.proxy_workers = value()?.parse().context("--proxy-workers")?
            }
            "--connections" => {
                args.connections = value()?
                    .split(',')
                    .map(|c| c.trim().parse().context("--connections"))
                    .collect::<Result<_>>()?;
            }
            "--out" => args.out = PathBuf::from(value()?),
            "--ztunnel" => args.ztunnel = Some(PathBuf::from(value()?)),
            "--waypoint" => args.waypoint = Some(PathBuf::from(value()?)),
            "--http" => args.http = Some(PathBuf::from(value()?)),
            "--ztunnel-env" => args.ztunnel_env.push(key_value(&value()?, &flag)?),
            "--waypoint-env" => args.waypoint_env.push(key_value(&value()?, &flag)?),
            "--modes" => {
                args.modes = value()?
                    .split(',')
                    .map(|m| {
                        L7Mode::parse(m.trim()).with_context(|| {
                            let all: Vec<&str> = L7Mode::ALL.iter().map(|m| m.as_str()).collect();
                            format!("unknown mode {m:?} ({})", all.join(", "))
                        })
                    })
                    .collect::<Result<_>>()?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (usage: {USAGE})"),
        }
    }
    ensure!(args.duration > 0, "--duration must be positive");
    ensure!(args.rounds > 0, "--rounds must be positive");
    ensure!(args.proxy_workers > 0, "--proxy-workers must be positive");
    ensure!(
        !args.connections.is_empty() && args.connections.iter().all(|&c| c >= 2),
        "--connections: each at least 2 (wrk runs 2 threads)"
    );
    Ok(args)
}

fn wrk(pods: &ThreePods, connections: u32, secs: u64) -> Result<(String, WrkResult)> {
    let dur = format!("{secs}s");
    let c = connections.to_string();
    let url = pods.mode().url();
    let out =
        pods.client()
            .ns()
            .output(&["wrk", "-c", &c, "-t", "2", "-d", &dur, "--latency", &url])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let result = tools::parse_wrk(&text)
        .with_context(|| format!("wrk: {text}{}", String::from_utf8_lossy(&out.stderr).trim()))?;
    Ok((text, result))
}

/// wrk's "Non-2xx or 3xx responses: N" and the sum of its "Socket errors" line.
fn wrk_error_counts(text: &str) -> (u64, u64) {
    let mut non_2xx = 0;
    let mut socket = 0;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx += n.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            socket += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (non_2xx, socket)
}

fn start_perf(pids: &[u32], out: &Path) -> Option<Child> {
    if pids.is_empty() {
        return None;
    }
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    Command::new("perf")
        .args([
            "stat",
            "-x,",
            "-e",
            "task-clock,context-switches,raw_syscalls:sys_enter",
            "-p",
        ])
        .arg(list.join(","))
        .arg("-o")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

fn stop_perf(perf: Option<Child>, out: &Path, requests: u64) -> Option<PerRequest> {
    let mut perf = perf?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(perf.id()).ok()?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).ok()?;
    perf.wait().ok()?;
    let c = tools::parse_perf_stat(&std::fs::read_to_string(out).ok()?);
    (c.task_clock_ms > 0.0 && requests > 0).then(|| {
        let n = requests as f64;
        PerRequest {
            cpu_us: c.task_clock_ms * 1000.0 / n,
            context_switches: Some(c.context_switches / n),
            syscalls: Some(c.syscalls / n),
        }
    })
}

fn per_request_us(ns: u64, requests: u64) -> Option<f64> {
    (ns > 0 && requests > 0).then(|| ns as f64 / 1000.0 / requests as f64)
}

/// Counts the log lines of the proxy that report a problem.
fn log_problems(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.contains(" WARN ")
                || l.contains(" ERROR ")
                || l.contains("[error]")
                || l.contains("[crit]")
                || l.contains("[ALERT]")
        })
        .count()
}

fn measure(
    dir: &TestDir,
    mode: L7Mode,
    round: usize,
    args: &Args,
    opts: &ThreePodsOptions,
) -> Result<ModeResult> {
    let name = mode.as_str();
    let tag = format!("{name}-{round}");
    eprintln!("== round {round}, {name}: starting the pods");
    let opts = ThreePodsOptions {
        mode,
        ..opts.clone()
    };
    let pods = ThreePods::start(dir, &opts)?;
    let url = mode.url();
    let (status, body) = pods.client().curl(&url)?;
    ensure!(
        status == 200 && body.starts_with("hello"),
        "{tag}: curl {url} from the client failed before measuring: status {status}, body {body:?}"
    );
    if mode.waypoint() {
        check_waypoint_routes(&pods, dir, &tag)?;
    }
    let proxy_pids = pods.proxy_pids();
    let ztunnel_pids = pods.ztunnel_pids();
    let proxy_rss_rest_kib = rss_sum(&proxy_pids);

    let mut runs = Vec::new();
    for &c in &args.connections {
        eprintln!(
            "== round {round}, {name}: wrk -c {c} -t 2 -d {}s --latency {url}",
            args.duration
        );
        let (z0, p0) = (cpu_ns(&ztunnel_pids), cpu_ns(&proxy_pids));
        let (text, w) = wrk(&pods, c, args.duration).with_context(|| tag.clone())?;
        let (z1, p1) = (cpu_ns(&ztunnel_pids), cpu_ns(&proxy_pids));
        std::fs::write(dir.join(&format!("wrk-{tag}-c{c}.txt")), &text)
            .context("save wrk output")?;
        let (non_2xx, socket_errors) = wrk_error_counts(&text);
        if non_2xx > 0 || socket_errors > 0 {
            eprintln!(
                "warning: {tag} -c {c}: wrk reported {non_2xx} non-2xx/3xx responses and {socket_errors} socket errors"
            );
        }
        runs.push(Run {
            connections: c,
            non_2xx,
            socket_errors,
            ztunnels_cpu_us: per_request_us(z1.saturating_sub(z0), w.requests),
            proxy_cpu_us: per_request_us(p1.saturating_sub(p0), w.requests),
            wrk: w,
            ztunnels_perf: None,
            proxy_perf: None,
        });
    }
    if args.count_secs > 0 && mode != L7Mode::Direct {
        for run in &mut runs {
            let c = run.connections;
            eprintln!(
                "== round {round}, {name}: counting with perf stat, -c {c}, {}s",
                args.count_secs
            );
            let z_out = dir.join(&format!("perf-{tag}-c{c}-ztunnels.csv"));
            let p_out = dir.join(&format!("perf-{tag}-c{c}-proxy.csv"));
            let zp = start_perf(&ztunnel_pids, &z_out);
            let pp = start_perf(&proxy_pids, &p_out);
            // perf needs a moment to attach to every thread.
            std::thread::sleep(Duration::from_millis(200));
            let counted = wrk(&pods, c, args.count_secs);
            let requests = counted.as_ref().map_or(0, |(_, w)| w.requests);
            run.ztunnels_perf = stop_perf(zp, &z_out, requests);
            run.proxy_perf = stop_perf(pp, &p_out, requests);
            if let Err(e) = counted {
                eprintln!("warning: {tag} -c {c}: the counting run failed: {e:#}");
            }
        }
    }
    let proxy_rss_after_kib = rss_sum(&proxy_pids);
    let waypoint_requests_total = mode
        .waypoint()
        .then(|| {
            let text = pods
                .waypoint()
                .ns()
                .run(&[
                    "curl",
                    "-sSf",
                    "--max-time",
                    "5",
                    &format!("http://127.0.0.1:{WAYPOINT_STATS_PORT}/metrics"),
                ])
                .ok()?;
            Some(prom::sum(&prom::parse(&text), "istio_requests_total", &[]))
        })
        .flatten();
    let proxy_log_problems = pods.proxy().map_or(0, |p| log_problems(&p.output()));
    if proxy_log_problems > 0 {
        eprintln!(
            "warning: {tag}: {proxy_log_problems} WARN/ERROR lines in the proxy's log (in {})",
            dir.path().display()
        );
    }
    Ok(ModeResult {
        mode: name,
        round,
        runs,
        proxy_rss_rest_kib,
        proxy_rss_after_kib,
        waypoint_requests_total,
        proxy_log_problems,
        body_bytes: body.len(),
        dir: dir.path().display().to_string(),
    })
}

/// Saves the waypoint's `/config_dump` with the pod set and checks that `echo` has a route table exactly in the
/// modes that configure one (otherwise `l7-bare`/`l7-policies` would silently measure `l7`).
fn check_waypoint_routes(pods: &ThreePods, dir: &TestDir, tag: &str) -> Result<()> {
    let text = pods
        .waypoint()
        .ns()
        .run(&[
            "curl",
            "-sSf",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{WAYPOINT_ADMIN_PORT}/config_dump"),
        ])
        .with_context(|| format!("{tag}: the waypoint's /config_dump"))?;
    std::fs::write(dir.join(&format!("config-dump-{tag}.json")), &text)
        .context("save the config dump")?;
    let dump: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{tag}: /config_dump is not JSON"))?;
    let echo_routes = dump["routeTables"].as_array().map_or(0, |tables| {
        tables
            .iter()
            .filter(|t| t["service"].as_str() == Some(ECHO_HOST))
            .map(|t| t["rules"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
    });
    let want = usize::from(pods.mode().has_route());
    ensure!(
        echo_routes == want,
        "{tag}: the waypoint has {echo_routes} rule(s) for {ECHO_HOST}, expected {want} (see {})",
        dir.path().display()
    );
    Ok(())
}

fn binary(given: &Option<PathBuf>, env: &str, name: &str) -> Result<PathBuf> {
    match given {
        Some(p) => Ok(p.clone()),
        None => sibling_binary(env, name)
            .with_context(|| format!("{name} not found next to ambit-bench-l7; pass its path")),
    }
}

fn run() -> Result<()> {
    let mut args = parse_args()?;
    ensure!(
        is_root(),
        "ambit-bench-l7 needs root (network namespaces, iptables): sudo scripts/bench-l7.sh"
    );
    check_tools(&["ip", "iptables", "curl", "wrk", "ss"])?;
    let mut skipped = Vec::new();
    for (mode, tool, package) in [
        (L7Mode::Nginx, "nginx", "nginx-light"),
        (L7Mode::Haproxy, "haproxy", "haproxy"),
    ] {
        if args.modes.contains(&mode) && check_tools(&[tool]).is_err() {
            let why = format!(
                "{}: `{tool}` is not installed (apt-get install {package})",
                mode.as_str()
            );
            eprintln!("SKIPPING mode {why}");
            skipped.push(why);
            args.modes.retain(|m| *m != mode);
        }
    }
    if args.count_secs > 0 && check_tools(&["perf"]).is_err() {
        eprintln!(
            "no `perf`: the perf stat counts are skipped (CPU per request still comes from schedstat)"
        );
        args.count_secs = 0;
    }
    let needs_mesh = args
        .modes
        .iter()
        .any(|m| *m != L7Mode::Direct && *m != L7Mode::Nginx && *m != L7Mode::Haproxy);
    let ztunnel_bin = binary(&args.ztunnel, ZTUNNEL_BIN_ENV, "ztunnel");
    let waypoint_bin = binary(&args.waypoint, WAYPOINT_BIN_ENV, "waypoint");
    let opts = ThreePodsOptions {
        mode: L7Mode::Direct,
        ztunnel_bin: if needs_mesh {
            ztunnel_bin?
        } else {
            PathBuf::new()
        },
        waypoint_bin: if args.modes.iter().any(|m| m.waypoint()) {
            waypoint_bin?
        } else {
            PathBuf::new()
        },
        http_bin: binary(&args.http, HTTP_BIN_ENV, "e2e-http")?,
        ztunnel_env: args.ztunnel_env.clone(),
        waypoint_env: args.waypoint_env.clone(),
        proxy_workers: args.proxy_workers,
        ready_timeout: Duration::from_secs(30),
    };
    let _lock = E2eLock::acquire()?;

    let mut results = Vec::new();
    for round in 1..=args.rounds {
        for &mode in &args.modes {
            // A directory per pod set (kept), so every process's log survives.
            let dir = TestDir::new(&format!("bench-l7-{}-{round}", mode.as_str()))?;
            dir.keep();
            results.push(measure(&dir, mode, round, &args, &opts).inspect_err(|_| dir.report())?);
        }
    }
    let summary = summarize(&results, &args.modes, &args.connections);
    let policy_cost = policy_costs(&results, &args.connections);
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let waypoint_log_filter = args
        .waypoint_env
        .iter()
        .rev()
        .find(|(k, _)| k == "RUST_LOG")
        .map_or_else(|| "info,access=warn".to_owned(), |(_, v)| v.clone());
    let report = Report {
        timestamp,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        duration_secs: args.duration,
        count_secs: args.count_secs,
        rounds: args.rounds,
        connections: args.connections.clone(),
        skipped,
        waypoint_log_filter,
        ztunnel_env: args.ztunnel_env.clone(),
        waypoint_env: args.waypoint_env.clone(),
        proxy_workers: args.proxy_workers,
        response_body_bytes: results.first().map_or(0, |m: &ModeResult| m.body_bytes),
        wrk_command: format!(
            "wrk -c {} -t 2 -d {}s --latency",
            args.connections
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join("|"),
            args.duration
        ),
        results,
        summary,
        policy_cost,
    };
    let md = markdown(&report);
    println!("\n{md}");
    let json = serde_json::to_string_pretty(&report)?;
    tools::write_report(&args.out, "l7", timestamp, &json, &md)?;
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("ambit-bench-l7: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_errors() {
        let text = "  Socket errors: connect 0, read 2, write 1, timeout 3\n  Non-2xx or 3xx responses: 4\n";
        assert_eq!(wrk_error_counts(text), (4, 6));
        assert_eq!(wrk_error_counts("Requests/sec: 1\n"), (0, 0));
    }

    fn result(mode: L7Mode, round: usize, cpu_us: f64, rps: f64) -> ModeResult {
        ModeResult {
            mode: mode.as_str(),
            round,
            runs: vec![Run {
                connections: 64,
                wrk: WrkResult {
                    requests_per_sec: rps,
                    ..WrkResult::default()
                },
                non_2xx: 0,
                socket_errors: 0,
                ztunnels_cpu_us: None,
                proxy_cpu_us: Some(cpu_us),
                ztunnels_perf: None,
                proxy_perf: None,
            }],
            proxy_rss_rest_kib: None,
            proxy_rss_after_kib: None,
            waypoint_requests_total: None,
            proxy_log_problems: 0,
            body_bytes: 0,
            dir: String::new(),
        }
    }

    #[test]
    fn policy_cost_pairs_each_round_with_its_own_bare_run() {
        let results = [
            result(L7Mode::L7Bare, 1, 40.0, 1000.0),
            result(L7Mode::L7Policies, 1, 44.0, 900.0),
            result(L7Mode::L7Bare, 2, 20.0, 2000.0),
            result(L7Mode::L7Policies, 2, 21.0, 2000.0),
            result(L7Mode::L7Bare, 3, 30.0, 1500.0),
            result(L7Mode::L7Policies, 3, 36.0, 1500.0),
        ];
        let costs = policy_costs(&results, &[8, 64]);
        assert_eq!(
            costs.len(),
            1,
            "no l7 runs, no 8-connection runs: {costs:?}"
        );
        let c = &costs[0];
        assert_eq!((c.mode, c.connections), ("l7-policies", 64));
        assert_eq!(c.cpu_ratio_per_round, vec![1.1, 1.05, 1.2]);
        assert_eq!(c.cpu_ratio_median, 1.1);
        assert_eq!(c.rps_ratio_median, 1.0);
        assert_eq!(c.perf_cpu_ratio_median, None);
        // Without l7-bare there is nothing to compare with.
        assert!(policy_costs(&results[1..2], &[64]).is_empty());
    }
}
