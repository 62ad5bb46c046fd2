//! `ambit-bench`: L4 benchmark, direct vs through a ztunnel pair, measured in the same run on the `TwoPods`
//! topology, and (`--compare PATH`) Ambit's ztunnel pair against another upstream-compatible ztunnel binary's in
//! the same rounds. Needs root, `iperf3` and `wrk`; run it through `scripts/bench.sh` (release build).
//!
//! ```text
//! ambit-bench [--duration SECS] [--rounds N] [--connections N] [--count-secs SECS] [--parallel N] [--idle-connections N] [--churn N] [--new-connections] [--out DIR]
//!             [--modes direct,ztunnel,relay] [--ztunnel PATH] [--compare PATH] [--http PATH]
//!             [--ztunnel-env KEY=VALUE]...
//! ```
//! Each round measures every mode in turn (fresh pods each time); with `--compare` the upstream binary's pair
//! (`upstream`) runs right after Ambit's (`ztunnel`) in every round, same topology, same environment. Requests/s
//! are measured with nothing attached to the processes, and the ztunnels' per-request counts come from a separate
//! `--count-secs` wrk run under `perf stat`; the ztunnels' CPU per MB comes from schedstat over the one-stream
//! iperf3 run and their RSS is read before and after the load. `relay` (HAProxy as a plain TCP relay in each pod,
//! needs `haproxy`) is a reference for what the two extra hops cost on this machine. Prints a table, every mode's
//! ratios to direct per round and their medians, Ambit / upstream per figure per round and the medians of those
//! ratios (or, without `--compare`, says loudly that there is no upstream figure), and writes
//! `l4-<unix time>.json` and `.md` (and `l4-latest.*`) into the output directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambit_e2e::runner::{E2eLock, check_tools};
use ambit_e2e::tools::{self, WrkResult, cpu_ns, fd_sum, rss_sum};
use ambit_e2e::topology::{
    B_IP, HTTP_BIN_ENV, HTTP_PORT, IPERF_PORT, default_ztunnel_bin, sibling_binary,
};
use ambit_e2e::{Mode, TestDir, TwoPods, TwoPodsOptions, is_root};
use anyhow::{Context, Result, bail, ensure};

mod l4_churn;
mod l4_idle;
mod l4_report;
use l4_report::*;

struct Args {
    duration: u64,
    /// wrk's connections (`-c`).
    connections: u32,
    /// `--new-connections`: every request on a new TCP connection (`-H 'Connection: close'`), so each one is a
    /// new connection through the ztunnels (an HBONE stream each; the mTLS connection between them is pooled).
    close: bool,
    rounds: usize,
    count_secs: u64,
    /// Streams of the second iperf3 run (`-P`); 0: no second run.
    parallel: u32,
    /// `--idle-connections N`: memory per idle connection with N open through each ztunnel pair; 0: not measured.
    idle: u32,
    /// `--churn N`: N connections opened and closed as fast as possible, then a leak check; 0: not run.
    churn: u32,
    out: PathBuf,
    modes: Vec<Mode>,
    ztunnel: Option<PathBuf>,
    /// The upstream-compatible ztunnel measured against ours (`--compare`).
    compare: Option<PathBuf>,
    http: Option<PathBuf>,
    ztunnel_env: Vec<(String, String)>,
}

const USAGE: &str = "ambit-bench [--duration SECS] [--rounds N] [--connections N] [--count-secs SECS] \
[--parallel N] [--idle-connections N] [--churn N] [--new-connections] [--out DIR] [--modes direct,ztunnel,relay] [--ztunnel PATH] [--compare PATH] [--http PATH] \
[--ztunnel-env KEY=VALUE]...";

/// What the bench gives both binaries besides `TwoPods`' own dedicated-mode settings (which include
/// `LOCAL_CA_DIR`, a CA directory shared by the two pods). Upstream ignores `LOCAL_CA_DIR` and, with empty
/// `CA_ADDRESS`, needs `FAKE_CA=true` (its `testing` feature: certificates from a fixed test root, so its two
/// ztunnels trust each other); Ambit takes `LOCAL_CA_DIR` over `FAKE_CA`, so one environment serves both.
/// Upstream's inbound keeps the client's source address whenever it can (as root, it can), so b's server would
/// answer 10.77.0.2 over the veth instead of through ztunnel b; `ENABLE_ORIG_SRC=false` is what upstream's own
/// dedicated-mode tests set, and Ambit's default in dedicated mode.
const BENCH_ZTUNNEL_ENV: [(&str, &str); 3] = [
    ("RUST_LOG", "warn"),
    ("FAKE_CA", "true"),
    ("ENABLE_ORIG_SRC", "false"),
];

/// A pod set to measure: the report's name for it, the topology mode and, for ztunnel pairs, the binary.
struct Target {
    name: &'static str,
    mode: Mode,
    ztunnel_bin: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        duration: 10,
        connections: 8,
        close: false,
        rounds: 3,
        count_secs: 5,
        parallel: 0,
        idle: 0,
        churn: 0,
        out: PathBuf::from("target/bench"),
        modes: vec![Mode::Direct, Mode::Ztunnel],
        ztunnel: None,
        compare: None,
        http: None,
        ztunnel_env: Vec::new(),
    };
    let mut modes_given = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--duration" => args.duration = value()?.parse().context("--duration")?,
            "--rounds" => args.rounds = value()?.parse().context("--rounds")?,
            "--connections" => args.connections = value()?.parse().context("--connections")?,
            "--new-connections" => args.close = true,
            "--count-secs" => args.count_secs = value()?.parse().context("--count-secs")?,
            "--parallel" => args.parallel = value()?.parse().context("--parallel")?,
            "--idle-connections" => args.idle = value()?.parse().context("--idle-connections")?,
            "--churn" => args.churn = value()?.parse().context("--churn")?,
            "--out" => args.out = PathBuf::from(value()?),
            "--ztunnel" => args.ztunnel = Some(PathBuf::from(value()?)),
            "--compare" => args.compare = Some(PathBuf::from(value()?)),
            "--http" => args.http = Some(PathBuf::from(value()?)),
            "--ztunnel-env" => {
                let kv = value()?;
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--ztunnel-env {kv:?}: expected KEY=VALUE"))?;
                args.ztunnel_env.push((k.to_owned(), v.to_owned()));
            }
            "--modes" => {
                modes_given = true;
                args.modes = value()?
                    .split(',')
                    .map(|m| match m.trim() {
                        "direct" => Ok(Mode::Direct),
                        "ztunnel" => Ok(Mode::Ztunnel),
                        "relay" => Ok(Mode::Relay),
                        other => bail!("unknown mode {other:?} (direct, ztunnel, relay)"),
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
    if !modes_given && check_tools(&["haproxy"]).is_ok() {
        // The reference comes along whenever it can.
        args.modes.push(Mode::Relay);
    }
    ensure!(args.duration > 0, "--duration must be positive");
    ensure!(args.rounds > 0, "--rounds must be positive");
    if let Some(up) = &args.compare {
        ensure!(
            up.is_file(),
            "--compare {}: no such binary (an upstream-compatible ztunnel)",
            up.display()
        );
        ensure!(
            args.modes.contains(&Mode::Ztunnel),
            "--compare needs the ztunnel mode in --modes (Ambit's pair is what upstream is compared with)"
        );
    }
    ensure!(
        args.connections >= 2,
        "--connections must be at least 2 (wrk runs 2 threads)"
    );
    Ok(args)
}

fn wrk(pods: &TwoPods, connections: u32, close: bool, secs: u64) -> Result<(String, WrkResult)> {
    let url = format!("http://{B_IP}:{HTTP_PORT}/");
    let dur = format!("{secs}s");
    let c = connections.to_string();
    let mut argv = vec!["wrk", "-c", &c, "-t", "2", "-d", &dur, "--latency"];
    if close {
        argv.extend(["-H", "Connection: close"]);
    }
    argv.push(&url);
    let out = pods.a().ns().output(&argv)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let result = tools::parse_wrk(&text).with_context(|| format!("wrk: {text}"))?;
    Ok((text, result))
}

/// Runs wrk with `perf stat` attached to both ztunnels and divides the counts by the requests completed.
fn count_per_request(
    dir: &TestDir,
    pods: &TwoPods,
    connections: u32,
    close: bool,
    secs: u64,
    tag: &str,
) -> Option<PerRequest> {
    let pids: Vec<String> = [pods.a().ztunnel_pid(), pods.b().ztunnel_pid()]
        .into_iter()
        .flatten()
        .map(|p| p.to_string())
        .collect();
    if pids.is_empty() || secs == 0 {
        return None;
    }
    let perf_out = dir.join(&format!("perf-{tag}.csv"));
    let mut perf = std::process::Command::new("perf")
        .args([
            "stat",
            "-x,",
            "-e",
            "task-clock,context-switches,raw_syscalls:sys_enter",
            "-p",
        ])
        .arg(pids.join(","))
        .arg("-o")
        .arg(&perf_out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let run = wrk(pods, connections, close, secs);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(perf.id()).ok()?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).ok()?;
    perf.wait().ok()?;
    let (_, w) = run.ok()?;
    let c = tools::parse_perf_stat(&std::fs::read_to_string(&perf_out).ok()?);
    (c.task_clock_ms > 0.0 && w.requests > 0).then(|| {
        let n = w.requests as f64;
        PerRequest {
            cpu_us: c.task_clock_ms * 1000.0 / n,
            context_switches: c.context_switches / n,
            syscalls: c.syscalls / n,
        }
    })
}

/// `/proc/loadavg`'s three averages.
fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|w| w.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// One iperf3 run from a to b with `streams` parallel streams: bits per second received.
fn iperf3(pods: &TwoPods, secs: u64, streams: u32, tag: &str) -> Result<f64> {
    let (b, port, secs, p) = (
        B_IP.to_string(),
        IPERF_PORT.to_string(),
        secs.to_string(),
        streams.to_string(),
    );
    let out = pods
        .a()
        .ns()
        .output(&["iperf3", "-c", &b, "-p", &port, "-t", &secs, "-P", &p, "-J"])?;
    tools::iperf3_bits_per_second(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("{tag}: iperf3: {}", String::from_utf8_lossy(&out.stderr)))
}

fn measure(
    dir: &TestDir,
    target: &Target,
    round: usize,
    args: &Args,
    http: &Path,
) -> Result<ModeResult> {
    let mode = target.mode;
    let name = target.name;
    let mut opts = TwoPodsOptions::new(mode).with_http(http).with_iperf();
    if let Some(z) = &target.ztunnel_bin {
        opts.ztunnel_bin = z.clone();
    }
    opts.ztunnel_env.extend(
        BENCH_ZTUNNEL_ENV
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    opts.ztunnel_env.extend(args.ztunnel_env.iter().cloned());
    let tag = format!("{name}-{round}");
    eprintln!("== round {round}, {name}: starting the pods");
    let pods = TwoPods::start(dir, &opts).with_context(|| tag.clone())?;
    let smoke = pods.a().curl(&pods.b_url())?;
    ensure!(
        smoke.ok(),
        "{tag}: curl a -> b failed before measuring: {smoke:?}"
    );
    let ztunnels: Vec<u32> = [pods.a().ztunnel_pid(), pods.b().ztunnel_pid()]
        .into_iter()
        .flatten()
        .collect();
    let ztunnels_rss_rest_kib = rss_sum(&ztunnels);
    let ztunnels_fds_rest = fd_sum(&ztunnels);

    let secs = args.duration;
    eprintln!("== round {round}, {name}: iperf3, 1 stream, {secs}s");
    let cpu0 = cpu_ns(&ztunnels);
    let bps = iperf3(&pods, secs, 1, &tag)?;
    let cpu = cpu_ns(&ztunnels).saturating_sub(cpu0);
    let megabytes = bps / 8.0 * secs as f64 / 1e6;
    let ztunnels_cpu_us_per_mb =
        (cpu > 0 && megabytes > 0.0).then(|| cpu as f64 / 1000.0 / megabytes);
    let throughput_parallel_gbps = if args.parallel > 1 {
        eprintln!(
            "== round {round}, {name}: iperf3, {} streams, {secs}s",
            args.parallel
        );
        Some(iperf3(&pods, secs, args.parallel, &tag)? / 1e9)
    } else {
        None
    };

    eprintln!(
        "== round {round}, {name}: wrk -c {} -t 2 -d {secs}s --latency",
        args.connections
    );
    let (text, wrk) =
        wrk(&pods, args.connections, args.close, secs).with_context(|| tag.clone())?;
    std::fs::write(dir.join(&format!("wrk-{tag}.txt")), &text).context("save wrk output")?;
    if wrk.errors > 0 {
        eprintln!("warning: {tag}: wrk reported {} errors", wrk.errors);
    }
    let per_request = if mode == Mode::Ztunnel && args.count_secs > 0 {
        eprintln!(
            "== round {round}, {name}: counting with perf stat, {}s",
            args.count_secs
        );
        count_per_request(
            dir,
            &pods,
            args.connections,
            args.close,
            args.count_secs,
            &tag,
        )
    } else {
        None
    };
    let ztunnels_rss_after_kib = rss_sum(&ztunnels);
    // The last connections' closes reach the ztunnels a moment after wrk has its answers.
    std::thread::sleep(Duration::from_millis(500));
    let ztunnels_fds_after = fd_sum(&ztunnels);
    if let (Some(a), Some(b)) = (ztunnels_fds_rest, ztunnels_fds_after) {
        eprintln!("   ztunnels' open fds: {a} at rest, {b} after the load");
    }
    let idle = if args.idle > 0 && !ztunnels.is_empty() {
        eprintln!("== round {round}, {name}: {} idle connections", args.idle);
        Some(l4_idle::run(dir, &pods, &ztunnels, args.idle).with_context(|| tag.clone())?)
    } else {
        None
    };
    let churn = if args.churn > 0 {
        eprintln!(
            "== round {round}, {name}: {} connections opened and closed",
            args.churn
        );
        Some(l4_churn::run(dir, &pods, &ztunnels, args.churn).with_context(|| tag.clone())?)
    } else {
        None
    };
    // Each pod set's ztunnel logs are overwritten by the next one's; keep them per mode and round.
    for pod in [pods.a(), pods.b()] {
        let log = pod.ztunnel_log();
        if !log.is_empty() {
            std::fs::write(dir.join(&format!("ztunnel-{tag}-{}.log", pod.name())), log)
                .context("save the ztunnel log")?;
        }
    }
    Ok(ModeResult {
        mode: name,
        round,
        throughput_gbps: bps / 1e9,
        throughput_parallel_gbps,
        wrk,
        per_request,
        ztunnels_cpu_us_per_mb,
        ztunnels_rss_rest_kib,
        ztunnels_rss_after_kib,
        ztunnels_fds_rest,
        ztunnels_fds_after,
        ztunnels_kib_per_idle_connection: idle.as_ref().map(|i| i.kib_per_connection),
        ztunnels_idle_fds_left: idle.and_then(|i| i.fds_left),
        churn,
    })
}

/// The pod sets of one round, in order: every `--modes` entry, with upstream's pair right after Ambit's.
fn targets(args: &Args) -> Vec<Target> {
    let mut out = Vec::new();
    for &mode in &args.modes {
        out.push(Target {
            name: mode.as_str(),
            mode,
            ztunnel_bin: (mode == Mode::Ztunnel)
                .then(|| args.ztunnel.clone())
                .flatten(),
        });
        if mode == Mode::Ztunnel
            && let Some(up) = &args.compare
        {
            out.push(Target {
                name: UPSTREAM,
                mode,
                ztunnel_bin: Some(up.clone()),
            });
        }
    }
    out
}

fn run() -> Result<()> {
    let args = parse_args()?;
    ensure!(
        is_root(),
        "ambit-bench needs root (network namespaces, iptables): sudo scripts/bench.sh"
    );
    check_tools(&["ip", "iptables", "curl", "iperf3", "wrk", "ss"])?;
    let http = match &args.http {
        Some(p) => p.clone(),
        None => sibling_binary(HTTP_BIN_ENV, "e2e-http")
            .context("e2e-http not found next to ambit-bench; pass --http")?,
    };
    if args.compare.is_none() {
        eprintln!(
            "ambit-bench: NO UPSTREAM BINARY GIVEN (--compare PATH): measuring Ambit against direct only, \
             no Ambit/upstream ratios"
        );
    }
    let _lock = E2eLock::acquire()?;
    let dir = TestDir::new("bench")?;
    dir.keep();
    eprintln!("raw outputs and logs: {}", dir.path().display());

    let targets = targets(&args);
    let load_before = load_average();
    let mut results = Vec::new();
    for round in 1..=args.rounds {
        for target in &targets {
            results.push(measure(&dir, target, round, &args, &http).inspect_err(|_| dir.report())?);
        }
    }
    let load_after = load_average();
    let (round_ratios, ratios) = ratios_to_direct(&results);
    let compare = compare(&results);
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let mut env: Vec<(String, String)> = BENCH_ZTUNNEL_ENV
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.extend(args.ztunnel_env.iter().cloned());
    let report = Report {
        timestamp,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_before,
        load_after,
        duration_secs: args.duration,
        rounds: args.rounds,
        ztunnel_env: env,
        ztunnel_bin: args
            .ztunnel
            .clone()
            .unwrap_or_else(default_ztunnel_bin)
            .display()
            .to_string(),
        upstream_bin: args.compare.as_ref().map(|p| p.display().to_string()),
        wrk_command: format!(
            "wrk -c {} -t 2 -d {}s --latency{}",
            args.connections,
            args.duration,
            if args.close {
                " -H 'Connection: close'"
            } else {
                ""
            }
        ),
        iperf_command: if args.parallel > 1 {
            format!(
                "iperf3 -c <b> -t {} -P 1 and -P {}",
                args.duration, args.parallel
            )
        } else {
            format!("iperf3 -c <b> -t {} (1 stream)", args.duration)
        },
        results,
        round_ratios,
        ratios,
        compare,
    };

    let md = markdown(&report);
    println!("\n{md}");
    let json = serde_json::to_string_pretty(&report)?;
    tools::write_report(&args.out, "l4", timestamp, &json, &md)?;
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("ambit-bench: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(modes: Vec<Mode>, compare: Option<&str>) -> Args {
        Args {
            duration: 1,
            connections: 8,
            close: false,
            rounds: 1,
            count_secs: 0,
            parallel: 0,
            idle: 0,
            churn: 0,
            out: PathBuf::new(),
            modes,
            ztunnel: Some(PathBuf::from("/ambit/ztunnel")),
            compare: compare.map(PathBuf::from),
            http: None,
            ztunnel_env: Vec::new(),
        }
    }

    #[test]
    fn upstream_runs_right_after_ambit_with_its_own_binary() {
        let t = targets(&args(
            vec![Mode::Direct, Mode::Ztunnel, Mode::Relay],
            Some("/up/ztunnel"),
        ));
        let names: Vec<&str> = t.iter().map(|t| t.name).collect();
        assert_eq!(names, ["direct", AMBIT, UPSTREAM, "relay"]);
        assert_eq!(t[1].ztunnel_bin, Some(PathBuf::from("/ambit/ztunnel")));
        assert_eq!(t[2].mode, Mode::Ztunnel);
        assert_eq!(t[2].ztunnel_bin, Some(PathBuf::from("/up/ztunnel")));
        assert_eq!(t[0].ztunnel_bin, None);
        assert_eq!(t[3].ztunnel_bin, None);
    }

    #[test]
    fn without_compare_there_is_no_upstream_pod_set() {
        let t = targets(&args(vec![Mode::Direct, Mode::Ztunnel], None));
        let names: Vec<&str> = t.iter().map(|t| t.name).collect();
        assert_eq!(names, ["direct", AMBIT]);
    }
}
