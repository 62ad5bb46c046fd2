//! `ambit-bench`: L4 benchmark, direct vs through a ztunnel pair, measured in the same run on the `TwoPods`
//! topology. Needs root, `iperf3` and `wrk`; run it through `scripts/bench.sh` (release build).
//!
//! ```text
//! ambit-bench [--duration SECS] [--out DIR] [--modes direct,ztunnel] [--ztunnel PATH] [--http PATH]
//! ```
//! Prints a table and the ztunnel/direct ratios, and writes `l4-<unix time>.json` and `.md` (and `l4-latest.*`)
//! into the output directory.

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
    out: PathBuf,
    modes: Vec<Mode>,
    ztunnel: Option<PathBuf>,
    http: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        duration: 10,
        out: PathBuf::from("target/bench"),
        modes: vec![Mode::Direct, Mode::Ztunnel],
        ztunnel: None,
        http: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--duration" => args.duration = value()?.parse().context("--duration")?,
            "--out" => args.out = PathBuf::from(value()?),
            "--ztunnel" => args.ztunnel = Some(PathBuf::from(value()?)),
            "--http" => args.http = Some(PathBuf::from(value()?)),
            "--modes" => {
                args.modes = value()?
                    .split(',')
                    .map(|m| match m.trim() {
                        "direct" => Ok(Mode::Direct),
                        "ztunnel" => Ok(Mode::Ztunnel),
                        other => bail!("unknown mode {other:?} (direct, ztunnel)"),
                    })
                    .collect::<Result<_>>()?;
            }
            "-h" | "--help" => {
                println!(
                    "ambit-bench [--duration SECS] [--out DIR] [--modes direct,ztunnel] [--ztunnel PATH] [--http PATH]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    ensure!(args.duration > 0, "--duration must be positive");
    Ok(args)
}

#[derive(Debug, Serialize)]
struct ModeResult {
    mode: &'static str,
    throughput_gbps: f64,
    wrk: WrkResult,
    /// The ztunnels' cost per wrk request (both together), when `perf` could count it.
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

#[derive(Debug, Serialize)]
struct Ratios {
    throughput: f64,
    requests_per_sec: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    timestamp: u64,
    kernel: String,
    cpus: usize,
    duration_secs: u64,
    ztunnel_bin: String,
    wrk_command: String,
    iperf_command: String,
    results: Vec<ModeResult>,
    /// ztunnel / direct; absent unless both modes ran.
    ratios: Option<Ratios>,
}

fn measure(dir: &TestDir, mode: Mode, args: &Args, http: &PathBuf) -> Result<ModeResult> {
    let mut opts = TwoPodsOptions::new(mode).with_http(http).with_iperf();
    if let Some(z) = &args.ztunnel {
        opts.ztunnel_bin = z.clone();
    }
    opts.ztunnel_env.push(("RUST_LOG".into(), "warn".into()));
    eprintln!("== {}: starting the pods", mode.as_str());
    let pods = TwoPods::start(dir, &opts)?;
    let smoke = pods.a().curl(&pods.b_url())?;
    ensure!(
        smoke.ok(),
        "{}: curl a -> b failed before measuring: {smoke:?}",
        mode.as_str()
    );

    let secs = args.duration.to_string();
    eprintln!("== {}: iperf3, 1 stream, {secs}s", mode.as_str());
    let b = B_IP.to_string();
    let port = IPERF_PORT.to_string();
    let out = pods
        .a()
        .ns()
        .output(&["iperf3", "-c", &b, "-p", &port, "-t", &secs, "-J"])?;
    let bps = tools::iperf3_bits_per_second(&String::from_utf8_lossy(&out.stdout)).with_context(
        || {
            format!(
                "{}: iperf3: {}",
                mode.as_str(),
                String::from_utf8_lossy(&out.stderr)
            )
        },
    )?;

    eprintln!("== {}: wrk -c 8 -t 2 -d {secs}s --latency", mode.as_str());
    let url = format!("http://{B_IP}:{HTTP_PORT}/");
    let dur = format!("{secs}s");
    // Count what the ztunnels spend while wrk runs (perf attaches to both processes; absent perf, nothing).
    let pids: Vec<String> = [pods.a().ztunnel_pid(), pods.b().ztunnel_pid()]
        .into_iter()
        .flatten()
        .map(|p| p.to_string())
        .collect();
    let perf_out = dir.join(&format!("perf-{}.csv", mode.as_str()));
    let perf = if pids.is_empty() {
        None
    } else {
        std::process::Command::new("perf")
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
            .ok()
    };
    let out =
        pods.a()
            .ns()
            .output(&["wrk", "-c", "8", "-t", "2", "-d", &dur, "--latency", &url])?;
    let counts = perf.and_then(|mut p| {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(p.id()).ok()?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).ok()?;
        p.wait().ok()?;
        Some(tools::parse_perf_stat(
            &std::fs::read_to_string(&perf_out).ok()?,
        ))
    });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write(dir.join(&format!("wrk-{}.txt", mode.as_str())), &text)
        .context("save wrk output")?;
    let wrk = tools::parse_wrk(&text).with_context(|| format!("{}: wrk", mode.as_str()))?;
    if wrk.errors > 0 {
        eprintln!(
            "warning: {}: wrk reported {} errors",
            mode.as_str(),
            wrk.errors
        );
    }
    let per_request = counts
        .filter(|c| c.task_clock_ms > 0.0 && wrk.requests > 0)
        .map(|c| {
            let n = wrk.requests as f64;
            PerRequest {
                cpu_us: c.task_clock_ms * 1000.0 / n,
                context_switches: c.context_switches / n,
                syscalls: c.syscalls / n,
            }
        });
    Ok(ModeResult {
        mode: mode.as_str(),
        throughput_gbps: bps / 1e9,
        wrk,
        per_request,
    })
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# L4 benchmark: direct vs ztunnel pair\n");
    let _ = writeln!(
        s,
        "Kernel {}, {} CPUs, {} s per measurement. `{}`; `{}`.\n",
        r.kernel, r.cpus, r.duration_secs, r.iperf_command, r.wrk_command
    );
    let _ = writeln!(
        s,
        "| mode | iperf3 Gbit/s | wrk req/s | p50 ms | p90 ms | p99 ms | errors |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    for m in &r.results {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.0} | {:.3} | {:.3} | {:.3} | {} |",
            m.mode,
            m.throughput_gbps,
            m.wrk.requests_per_sec,
            m.wrk.p50_ms,
            m.wrk.p90_ms,
            m.wrk.p99_ms,
            m.wrk.errors
        );
    }
    for m in &r.results {
        if let Some(p) = &m.per_request {
            let _ = writeln!(
                s,
                "\n{}: both ztunnels per request: {:.1} µs CPU, {:.2} context switches, {:.1} system calls.",
                m.mode, p.cpu_us, p.context_switches, p.syscalls
            );
        }
    }
    if let Some(ratio) = &r.ratios {
        let _ = writeln!(
            s,
            "\nztunnel/direct: throughput **{:.2}×**, requests/s **{:.2}×** (upstream ztunnel on this class of machine: 0.37×, 0.30×; goal ≥ 0.5×).",
            ratio.throughput, ratio.requests_per_sec
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
    for &mode in &args.modes {
        results.push(measure(&dir, mode, &args, &http).inspect_err(|_| dir.report())?);
    }
    let find = |m: Mode| results.iter().find(|r| r.mode == m.as_str());
    let ratios = match (find(Mode::Direct), find(Mode::Ztunnel)) {
        (Some(d), Some(z)) => Some(Ratios {
            throughput: z.throughput_gbps / d.throughput_gbps,
            requests_per_sec: z.wrk.requests_per_sec / d.wrk.requests_per_sec,
        }),
        _ => None,
    };
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
        ztunnel_bin: args
            .ztunnel
            .clone()
            .unwrap_or_else(default_ztunnel_bin)
            .display()
            .to_string(),
        wrk_command: format!("wrk -c 8 -t 2 -d {}s --latency", args.duration),
        iperf_command: format!("iperf3 -c <b> -t {} (1 stream)", args.duration),
        results,
        ratios,
    };

    let md = markdown(&report);
    println!("\n{md}");
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    for stem in [format!("l4-{timestamp}"), "l4-latest".to_owned()] {
        std::fs::write(args.out.join(format!("{stem}.json")), &json)?;
        std::fs::write(args.out.join(format!("{stem}.md")), &md)?;
    }
    println!("results: {}/l4-{timestamp}.{{json,md}}", args.out.display());
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("ambit-bench: {e:#}");
        std::process::exit(1);
    }
}
