//! `ambit-bench`: L4 benchmark, direct vs through a ztunnel pair, measured in the same run on the `TwoPods`
//! topology. Needs root, `iperf3` and `wrk`; run it through `scripts/bench.sh` (release build).
//!
//! ```text
//! ambit-bench [--duration SECS] [--rounds N] [--connections N] [--count-secs SECS] [--out DIR]
//!             [--modes direct,ztunnel,relay] [--ztunnel PATH] [--http PATH] [--ztunnel-env KEY=VALUE]...
//! ```
//! Each round measures every mode in turn (fresh pods each time); requests/s are measured with nothing attached
//! to the processes, and the ztunnels' per-request counts come from a separate `--count-secs` wrk run under
//! `perf stat`. `relay` (HAProxy as a plain TCP relay in each pod, needs `haproxy`) is a reference for what the
//! two extra hops cost on this machine. Prints a table, every mode's ratios to direct per round and their medians,
//! and writes `l4-<unix time>.json` and `.md` (and `l4-latest.*`) into the output directory.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambit_e2e::runner::{E2eLock, check_tools};
use ambit_e2e::tools::{self, WrkResult};
use ambit_e2e::topology::{
    B_IP, HTTP_BIN_ENV, HTTP_PORT, IPERF_PORT, default_ztunnel_bin, sibling_binary,
};
use ambit_e2e::{Mode, TestDir, TwoPods, TwoPodsOptions, is_root};
use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

struct Args {
    duration: u64,
    /// wrk's connections (`-c`).
    connections: u32,
    rounds: usize,
    count_secs: u64,
    out: PathBuf,
    modes: Vec<Mode>,
    ztunnel: Option<PathBuf>,
    http: Option<PathBuf>,
    ztunnel_env: Vec<(String, String)>,
}

const USAGE: &str = "ambit-bench [--duration SECS] [--rounds N] [--connections N] [--count-secs SECS] [--out DIR] \
[--modes direct,ztunnel,relay] [--ztunnel PATH] [--http PATH] [--ztunnel-env KEY=VALUE]...";

fn parse_args() -> Result<Args> {
    let mut args = Args {
        duration: 10,
        connections: 8,
        rounds: 3,
        count_secs: 5,
        out: PathBuf::from("target/bench"),
        modes: vec![Mode::Direct, Mode::Ztunnel],
        ztunnel: None,
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
            "--count-secs" => args.count_secs = value()?.parse().context("--count-secs")?,
            "--out" => args.out = PathBuf::from(value()?),
            "--ztunnel" => args.ztunnel = Some(PathBuf::from(value()?)),
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
    ensure!(
        args.connections >= 2,
        "--connections must be at least 2 (wrk runs 2 threads)"
    );
    Ok(args)
}

#[derive(Debug, Serialize)]
struct ModeResult {
    mode: &'static str,
    round: usize,
    throughput_gbps: f64,
    /// Measured with nothing attached to the processes.
    wrk: WrkResult,
    /// The ztunnels' cost per wrk request (both together), from a separate, shorter wrk run with `perf stat`
    /// attached (tracing every system call slows the ztunnels down, so that run's requests/s are not reported).
    per_request: Option<PerRequest>,
}

/// CPU time, context switches and system calls of both ztunnels, per completed request: counts, so much less
/// sensitive to a busy machine than requests/s.
#[derive(Clone, Copy, Debug, Serialize)]
struct PerRequest {
    cpu_us: f64,
    context_switches: f64,
    syscalls: f64,
}

/// One mode against direct: per round, or the medians of the rounds (`round` 0).
#[derive(Debug, Serialize)]
struct Ratios {
    mode: &'static str,
    round: usize,
    throughput: f64,
    requests_per_sec: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    timestamp: u64,
    kernel: String,
    cpus: usize,
    duration_secs: u64,
    rounds: usize,
    ztunnel_bin: String,
    ztunnel_env: Vec<(String, String)>,
    wrk_command: String,
    iperf_command: String,
    results: Vec<ModeResult>,
    /// Every other mode / direct, per round (empty unless direct ran).
    round_ratios: Vec<Ratios>,
    /// The medians of `round_ratios`, per mode.
    ratios: Vec<Ratios>,
}

fn wrk(pods: &TwoPods, connections: u32, secs: u64) -> Result<(String, WrkResult)> {
    let url = format!("http://{B_IP}:{HTTP_PORT}/");
    let dur = format!("{secs}s");
    let c = connections.to_string();
    let out = pods
        .a()
        .ns()
        .output(&["wrk", "-c", &c, "-t", "2", "-d", &dur, "--latency", &url])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let result = tools::parse_wrk(&text).with_context(|| format!("wrk: {text}"))?;
    Ok((text, result))
}

/// Runs wrk with `perf stat` attached to both ztunnels and divides the counts by the requests completed.
fn count_per_request(
    dir: &TestDir,
    pods: &TwoPods,
    connections: u32,
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
    let run = wrk(pods, connections, secs);
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

fn measure(
    dir: &TestDir,
    mode: Mode,
    round: usize,
    args: &Args,
    http: &PathBuf,
) -> Result<ModeResult> {
    let mut opts = TwoPodsOptions::new(mode).with_http(http).with_iperf();
    if let Some(z) = &args.ztunnel {
        opts.ztunnel_bin = z.clone();
    }
    opts.ztunnel_env.push(("RUST_LOG".into(), "warn".into()));
    opts.ztunnel_env.extend(args.ztunnel_env.iter().cloned());
    let tag = format!("{}-{round}", mode.as_str());
    eprintln!("== round {round}, {}: starting the pods", mode.as_str());
    let pods = TwoPods::start(dir, &opts)?;
    let smoke = pods.a().curl(&pods.b_url())?;
    ensure!(
        smoke.ok(),
        "{tag}: curl a -> b failed before measuring: {smoke:?}"
    );

    let secs = args.duration.to_string();
    eprintln!(
        "== round {round}, {}: iperf3, 1 stream, {secs}s",
        mode.as_str()
    );
    let b = B_IP.to_string();
    let port = IPERF_PORT.to_string();
    let out = pods
        .a()
        .ns()
        .output(&["iperf3", "-c", &b, "-p", &port, "-t", &secs, "-J"])?;
    let bps = tools::iperf3_bits_per_second(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("{tag}: iperf3: {}", String::from_utf8_lossy(&out.stderr)))?;

    eprintln!(
        "== round {round}, {}: wrk -c {} -t 2 -d {secs}s --latency",
        mode.as_str(),
        args.connections
    );
    let (text, wrk) = wrk(&pods, args.connections, args.duration).with_context(|| tag.clone())?;
    std::fs::write(dir.join(&format!("wrk-{tag}.txt")), &text).context("save wrk output")?;
    if wrk.errors > 0 {
        eprintln!("warning: {tag}: wrk reported {} errors", wrk.errors);
    }
    let per_request = if mode == Mode::Ztunnel {
        eprintln!(
            "== round {round}, {}: counting with perf stat, {}s",
            mode.as_str(),
            args.count_secs
        );
        count_per_request(dir, &pods, args.connections, args.count_secs, &tag)
    } else {
        None
    };
    Ok(ModeResult {
        mode: mode.as_str(),
        round,
        throughput_gbps: bps / 1e9,
        wrk,
        per_request,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# L4 benchmark: direct vs ztunnel pair\n");
    let _ = writeln!(
        s,
        "Kernel {}, {} CPUs, {} round(s) of {} s per measurement, modes alternating. `{}`; `{}`.{}\n",
        r.kernel,
        r.cpus,
        r.rounds,
        r.duration_secs,
        r.iperf_command,
        r.wrk_command,
        if r.ztunnel_env.is_empty() {
            String::new()
        } else {
            let env: Vec<String> = r
                .ztunnel_env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!(" ztunnel environment: `{}`.", env.join(" "))
        }
    );
    let _ = writeln!(
        s,
        "| round | mode | iperf3 Gbit/s | wrk req/s | p50 ms | p90 ms | p99 ms | errors | ztunnels µs CPU / req | context switches / req | syscalls / req |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in &r.results {
        let counts = m.per_request.map_or_else(
            || "| | |".to_owned(),
            |p| {
                format!(
                    "{:.1} | {:.2} | {:.1} |",
                    p.cpu_us, p.context_switches, p.syscalls
                )
            },
        );
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {counts}",
            m.round,
            m.mode,
            m.throughput_gbps,
            m.wrk.requests_per_sec,
            m.wrk.p50_ms,
            m.wrk.p90_ms,
            m.wrk.p99_ms,
            m.wrk.errors
        );
    }
    for mode in [Mode::Ztunnel, Mode::Relay] {
        let name = mode.as_str();
        let rounds: Vec<&Ratios> = r.round_ratios.iter().filter(|x| x.mode == name).collect();
        if rounds.is_empty() {
            continue;
        }
        let list = |f: fn(&Ratios) -> f64| {
            rounds
                .iter()
                .map(|x| format!("{:.2}", f(x)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "\n{name}/direct per round: throughput {}; requests/s {}.",
            list(|x| x.throughput),
            list(|x| x.requests_per_sec)
        );
    }
    for ratio in &r.ratios {
        let note = match ratio.mode {
            "ztunnel" => " (upstream ztunnel on this class of machine: 0.37×, 0.30×; goal ≥ 0.5×)",
            "relay" => " (two plain TCP relays: what the extra hops alone cost here)",
            _ => "",
        };
        let _ = writeln!(
            s,
            "\n{}/direct (median of rounds): throughput **{:.2}×**, requests/s **{:.2}×**{note}.",
            ratio.mode, ratio.throughput, ratio.requests_per_sec
        );
    }
    s
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
    let _lock = E2eLock::acquire()?;
    let dir = TestDir::new("bench")?;
    dir.keep();
    eprintln!("raw outputs and logs: {}", dir.path().display());

    let mut results = Vec::new();
    let mut round_ratios = Vec::new();
    for round in 1..=args.rounds {
        let mut this = Vec::new();
        for &mode in &args.modes {
            this.push(measure(&dir, mode, round, &args, &http).inspect_err(|_| dir.report())?);
        }
        if let Some(d) = this.iter().find(|r| r.mode == Mode::Direct.as_str()) {
            for m in this.iter().filter(|r| r.mode != Mode::Direct.as_str()) {
                round_ratios.push(Ratios {
                    mode: m.mode,
                    round,
                    throughput: m.throughput_gbps / d.throughput_gbps,
                    requests_per_sec: m.wrk.requests_per_sec / d.wrk.requests_per_sec,
                });
            }
        }
        results.extend(this);
    }
    let ratios = [Mode::Ztunnel, Mode::Relay]
        .iter()
        .filter_map(|m| {
            let of: Vec<&Ratios> = round_ratios
                .iter()
                .filter(|r| r.mode == m.as_str())
                .collect();
            (!of.is_empty()).then(|| Ratios {
                mode: m.as_str(),
                round: 0,
                throughput: median(of.iter().map(|r| r.throughput).collect()),
                requests_per_sec: median(of.iter().map(|r| r.requests_per_sec).collect()),
            })
        })
        .collect();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let report = Report {
        timestamp,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        duration_secs: args.duration,
        rounds: args.rounds,
        ztunnel_env: args.ztunnel_env.clone(),
        ztunnel_bin: args
            .ztunnel
            .clone()
            .unwrap_or_else(default_ztunnel_bin)
            .display()
            .to_string(),
        wrk_command: format!(
            "wrk -c {} -t 2 -d {}s --latency",
            args.connections, args.duration
        ),
        iperf_command: format!("iperf3 -c <b> -t {} (1 stream)", args.duration),
        results,
        round_ratios,
        ratios,
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
