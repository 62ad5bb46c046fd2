//! `ambit-bench`'s results and report: what each pod set measured, the ratios to direct and (with `--compare`)
//! Ambit's ztunnel against the upstream binary, round by round and as medians, and the Markdown written next to
//! the JSON.

use std::fmt::Write as _;

use ambit_e2e::tools::WrkResult;
use serde::Serialize;

/// The report's name for the ztunnel pair run with Ambit's binary (the default or `--ztunnel`).
pub const AMBIT: &str = "ztunnel";
/// The report's name for the ztunnel pair run with the `--compare` binary.
pub const UPSTREAM: &str = "upstream";
/// The mesh modes compared with direct, in report order.
pub const MESH_MODES: [&str; 3] = [AMBIT, UPSTREAM, "relay"];

/// CPU time, context switches and system calls of both ztunnels, per completed request: counts, so much less
/// sensitive to a busy machine than requests/s.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PerRequest {
    pub cpu_us: f64,
    pub context_switches: f64,
    pub syscalls: f64,
}

#[derive(Debug, Serialize)]
pub struct ModeResult {
    pub mode: &'static str,
    pub round: usize,
    pub throughput_gbps: f64,
    /// `iperf3 -P <parallel>`, when `--parallel` asked for it.
    pub throughput_parallel_gbps: Option<f64>,
    /// Measured with nothing attached to the processes.
    pub wrk: WrkResult,
    /// The ztunnels' cost per wrk request (both together), from a separate, shorter wrk run with `perf stat`
    /// attached (tracing every system call slows the ztunnels down, so that run's requests/s are not reported).
    pub per_request: Option<PerRequest>,
    /// CPU time of both ztunnels (schedstat, nothing attached) per MB (10^6 bytes) iperf3 moved, one stream.
    pub ztunnels_cpu_us_per_mb: Option<f64>,
    /// Sum of both ztunnels' `VmRSS`: once ready, before any load, and after the last wrk run.
    pub ztunnels_rss_rest_kib: Option<u64>,
    pub ztunnels_rss_after_kib: Option<u64>,
    /// Both ztunnels' open file descriptors once ready and after the last wrk run (with `--new-connections`,
    /// after tens of thousands of connections opened and closed through them: what is left is the pooled HBONE
    /// connections and whatever leaked).
    pub ztunnels_fds_rest: Option<u64>,
    pub ztunnels_fds_after: Option<u64>,
    /// `--idle-connections N`: both ztunnels' RSS growth with N idle connections open through them, per connection.
    pub ztunnels_kib_per_idle_connection: Option<f64>,
    /// `--idle-connections N`: both ztunnels' open fds [`super::l4_idle::RELEASE_WAIT`] after the N connections
    /// closed, above what they held before they opened (what the HBONE pool still keeps of the burst).
    pub ztunnels_idle_fds_left: Option<i64>,
    /// `--churn N`: connections opened and closed through the pair, and what was left after them.
    pub churn: Option<super::l4_churn::ChurnResult>,
}

/// One mode against direct: per round, or the medians of the rounds (`round` 0).
#[derive(Debug, Serialize, PartialEq)]
pub struct Ratios {
    pub mode: &'static str,
    pub round: usize,
    pub throughput: f64,
    pub requests_per_sec: f64,
}

/// One figure of Ambit's ztunnel pair against the upstream binary's, in the same rounds.
#[derive(Debug, Serialize, PartialEq)]
pub struct Comparison {
    pub figure: &'static str,
    pub unit: &'static str,
    /// "higher" or "lower": which way is better.
    pub better: &'static str,
    pub per_round: Vec<RoundPair>,
    pub ambit_median: f64,
    pub upstream_median: f64,
    /// The median of the per-round ratios (not the ratio of the medians).
    pub ratio_median: f64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct RoundPair {
    pub round: usize,
    pub ambit: f64,
    pub upstream: f64,
    /// Ambit / upstream.
    pub ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub timestamp: u64,
    pub kernel: String,
    pub cpus: usize,
    /// `/proc/loadavg`'s 1, 5 and 15 minute averages, before the first and after the last round.
    pub load_before: Option<[f64; 3]>,
    pub load_after: Option<[f64; 3]>,
    pub duration_secs: u64,
    pub rounds: usize,
    pub ztunnel_bin: String,
    /// The `--compare` binary; `None`: Ambit was measured against direct only.
    pub upstream_bin: Option<String>,
    pub ztunnel_env: Vec<(String, String)>,
    pub wrk_command: String,
    pub iperf_command: String,
    pub results: Vec<ModeResult>,
    /// Every other mode / direct, per round (empty unless direct ran).
    pub round_ratios: Vec<Ratios>,
    /// The medians of `round_ratios`, per mode.
    pub ratios: Vec<Ratios>,
    /// Ambit / upstream per figure (empty without `--compare`).
    pub compare: Vec<Comparison>,
}

pub use ambit_e2e::tools::median;

/// `a / b` when both are finite and `b` is positive (a failed or missing measurement gives no ratio).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

fn kib_to_mib(k: Option<u64>) -> Option<f64> {
    k.map(|k| k as f64 / 1024.0)
}

/// A figure the comparison reports: its name, unit, which way is better and how to read it from a result.
struct Figure {
    name: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    read: fn(&ModeResult) -> Option<f64>,
}

const FIGURES: &[Figure] = &[
    Figure {
        name: "iperf3 throughput, 1 stream",
        unit: "Gbit/s",
        higher_is_better: true,
        read: |m| Some(m.throughput_gbps),
    },
    Figure {
        name: "iperf3 throughput, parallel streams",
        unit: "Gbit/s",
        higher_is_better: true,
        read: |m| m.throughput_parallel_gbps,
    },
    Figure {
        name: "wrk requests/s",
        unit: "req/s",
        higher_is_better: true,
        read: |m| Some(m.wrk.requests_per_sec),
    },
    Figure {
        name: "wrk p50 latency",
        unit: "ms",
        higher_is_better: false,
        read: |m| Some(m.wrk.p50_ms),
    },
    Figure {
        name: "wrk p99 latency",
        unit: "ms",
        higher_is_better: false,
        read: |m| Some(m.wrk.p99_ms),
    },
    Figure {
        name: "ztunnels' CPU per request (perf stat run)",
        unit: "µs",
        higher_is_better: false,
        read: |m| m.per_request.map(|p| p.cpu_us),
    },
    Figure {
        name: "ztunnels' context switches per request",
        unit: "count",
        higher_is_better: false,
        read: |m| m.per_request.map(|p| p.context_switches),
    },
    Figure {
        name: "ztunnels' system calls per request",
        unit: "count",
        higher_is_better: false,
        read: |m| m.per_request.map(|p| p.syscalls),
    },
    Figure {
        name: "ztunnels' CPU per MB, iperf3 1 stream (schedstat)",
        unit: "µs",
        higher_is_better: false,
        read: |m| m.ztunnels_cpu_us_per_mb,
    },
    Figure {
        name: "ztunnels' RSS at rest (both)",
        unit: "MiB",
        higher_is_better: false,
        read: |m| kib_to_mib(m.ztunnels_rss_rest_kib),
    },
    Figure {
        name: "ztunnels' RSS after load (both)",
        unit: "MiB",
        higher_is_better: false,
        read: |m| kib_to_mib(m.ztunnels_rss_after_kib),
    },
    Figure {
        name: "ztunnels' open fds after load (both)",
        unit: "count",
        higher_is_better: false,
        read: |m| m.ztunnels_fds_after.map(|n| n as f64),
    },
    Figure {
        name: "ztunnels' memory per idle connection (both)",
        unit: "KiB",
        higher_is_better: false,
        read: |m| m.ztunnels_kib_per_idle_connection,
    },
    Figure {
        name: "idle: fds left 10 s after the connections closed (both)",
        unit: "count",
        higher_is_better: false,
        read: |m| m.ztunnels_idle_fds_left.map(|n| n as f64),
    },
    Figure {
        name: "connections opened and closed (churn)",
        unit: "/s",
        higher_is_better: true,
        read: |m| m.churn.as_ref().map(|c| c.per_sec),
    },
    Figure {
        name: "churn: connections failed",
        unit: "count",
        higher_is_better: false,
        read: |m| m.churn.as_ref().map(|c| f64::from(c.failed)),
    },
    Figure {
        name: "churn: fds left above baseline (both)",
        unit: "count",
        higher_is_better: false,
        read: |m| {
            m.churn
                .as_ref()
                .and_then(|c| c.fds_leaked.map(|n| n as f64))
        },
    },
    Figure {
        name: "churn: tasks left above baseline (both)",
        unit: "count",
        higher_is_better: false,
        read: |m| {
            m.churn
                .as_ref()
                .and_then(|c| c.tasks_leaked.map(|t| t as f64))
        },
    },
];

fn rounds_of(results: &[ModeResult]) -> Vec<usize> {
    let mut v: Vec<usize> = results.iter().map(|m| m.round).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn find<'a>(results: &'a [ModeResult], mode: &str, round: usize) -> Option<&'a ModeResult> {
    results.iter().find(|m| m.mode == mode && m.round == round)
}

/// Every mesh mode against direct in the same round, and the medians over rounds per mode.
pub fn ratios_to_direct(results: &[ModeResult]) -> (Vec<Ratios>, Vec<Ratios>) {
    let mut per_round = Vec::new();
    for round in rounds_of(results) {
        let Some(d) = find(results, "direct", round) else {
            continue;
        };
        for mode in MESH_MODES {
            let Some(m) = find(results, mode, round) else {
                continue;
            };
            let (Some(throughput), Some(requests_per_sec)) = (
                ratio(m.throughput_gbps, d.throughput_gbps),
                ratio(m.wrk.requests_per_sec, d.wrk.requests_per_sec),
            ) else {
                continue;
            };
            per_round.push(Ratios {
                mode,
                round,
                throughput,
                requests_per_sec,
            });
        }
    }
    let medians = MESH_MODES
        .iter()
        .filter_map(|&mode| {
            let of: Vec<&Ratios> = per_round.iter().filter(|r| r.mode == mode).collect();
            (!of.is_empty()).then(|| Ratios {
                mode,
                round: 0,
                throughput: median(of.iter().map(|r| r.throughput).collect()),
                requests_per_sec: median(of.iter().map(|r| r.requests_per_sec).collect()),
            })
        })
        .collect();
    (per_round, medians)
}

/// Ambit's pair against upstream's, figure by figure: the ratio within each round in which both measured the
/// figure, and the median of those ratios. Figures neither round measured are left out.
pub fn compare(results: &[ModeResult]) -> Vec<Comparison> {
    let rounds = rounds_of(results);
    FIGURES
        .iter()
        .filter_map(|f| {
            let per_round: Vec<RoundPair> = rounds
                .iter()
                .filter_map(|&round| {
                    let ambit = (f.read)(find(results, AMBIT, round)?)?;
                    let upstream = (f.read)(find(results, UPSTREAM, round)?)?;
                    Some(RoundPair {
                        round,
                        ambit,
                        upstream,
                        ratio: ratio(ambit, upstream)?,
                    })
                })
                .collect();
            (!per_round.is_empty()).then(|| Comparison {
                figure: f.name,
                unit: f.unit,
                better: if f.higher_is_better {
                    "higher"
                } else {
                    "lower"
                },
                ambit_median: median(per_round.iter().map(|p| p.ambit).collect()),
                upstream_median: median(per_round.iter().map(|p| p.upstream).collect()),
                ratio_median: median(per_round.iter().map(|p| p.ratio).collect()),
                per_round,
            })
        })
        .collect()
}

/// Enough significant digits for values from 0.01 to 100 000.
fn num(v: f64) -> String {
    match v.abs() {
        a if a >= 1000.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        a if a >= 1.0 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(String::new, |v| format!("{v:.digits$}"))
}

fn load(l: Option<[f64; 3]>) -> String {
    l.map_or_else(
        || "?".to_owned(),
        |[a, b, c]| format!("{a:.2} / {b:.2} / {c:.2}"),
    )
}

fn comparison_section(s: &mut String, r: &Report) {
    let Some(upstream) = &r.upstream_bin else {
        let _ = writeln!(
            s,
            "> **NO UPSTREAM BINARY GIVEN.** This run measured Ambit's ztunnel against direct only: there is no \
             Ambit/upstream ratio in it. Pass `--compare <upstream ztunnel binary>` (an upstream build with its \
             `testing` feature, for `FAKE_CA`) to measure both in alternating rounds.\n"
        );
        return;
    };
    let _ = writeln!(
        s,
        "## Ambit / upstream, same run\n\nAmbit `{}` against upstream `{upstream}`, alternating with fresh pods \
         (each round: Ambit's pair, then upstream's). Ratio = Ambit / upstream within a round; the median is of \
         those ratios.\n",
        r.ztunnel_bin
    );
    if r.compare.is_empty() {
        let _ = writeln!(
            s,
            "**No figure was measured for both binaries in the same round.**\n"
        );
        return;
    }
    let _ = writeln!(
        s,
        "| figure | unit | better | Ambit (median) | upstream (median) | Ambit / upstream per round | **median ratio** |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---|---:|");
    for c in &r.compare {
        let rounds: Vec<String> = c
            .per_round
            .iter()
            .map(|p| {
                format!(
                    "{}: {} / {} = {:.2}",
                    p.round,
                    num(p.ambit),
                    num(p.upstream),
                    p.ratio
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | **{:.2}×** |",
            c.figure,
            c.unit,
            c.better,
            num(c.ambit_median),
            num(c.upstream_median),
            rounds.join("; "),
            c.ratio_median
        );
    }
    let _ = writeln!(s);
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let title = if r.upstream_bin.is_some() {
        "# L4 benchmark: direct, Ambit's ztunnel pair and upstream's, same run\n"
    } else {
        "# L4 benchmark: direct vs ztunnel pair\n"
    };
    let _ = writeln!(s, "{title}");
    let _ = writeln!(
        s,
        "Kernel {}, {} CPUs, load average (1/5/15 min) {} before, {} after. {} round(s) of {} s per measurement, \
         modes alternating with fresh pods. `{}`; `{}`.{}\n",
        r.kernel,
        r.cpus,
        load(r.load_before),
        load(r.load_after),
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
    comparison_section(&mut s, r);
    let _ = writeln!(
        s,
        "| round | mode | iperf3 Gbit/s | parallel Gbit/s | wrk req/s | p50 ms | p90 ms | p99 ms | errors | ztunnels µs CPU / req | context switches / req | syscalls / req | ztunnels µs CPU / MB | ztunnels RSS rest → after (MiB) |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
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
        let rss = match (
            kib_to_mib(m.ztunnels_rss_rest_kib),
            kib_to_mib(m.ztunnels_rss_after_kib),
        ) {
            (Some(a), Some(b)) => format!("{a:.1} → {b:.1}"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {counts} {} | {rss} |",
            m.round,
            m.mode,
            m.throughput_gbps,
            opt(m.throughput_parallel_gbps, 2),
            m.wrk.requests_per_sec,
            m.wrk.p50_ms,
            m.wrk.p90_ms,
            m.wrk.p99_ms,
            m.wrk.errors,
            opt(m.ztunnels_cpu_us_per_mb, 1),
        );
    }
    for mode in MESH_MODES {
        let rounds: Vec<&Ratios> = r.round_ratios.iter().filter(|x| x.mode == mode).collect();
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
            "\n{mode}/direct per round: throughput {}; requests/s {}.",
            list(|x| x.throughput),
            list(|x| x.requests_per_sec)
        );
    }
    for ratio in &r.ratios {
        let note = match ratio.mode {
            AMBIT if r.upstream_bin.is_none() => {
                " (no upstream binary in this run; upstream's published figures on this class of machine: 0.37×, \
                 0.30×)"
            }
            AMBIT => " (Ambit)",
            UPSTREAM => " (the `--compare` binary, same rounds)",
            "relay" => " (two plain TCP relays: what the extra hops alone cost here)",
            _ => "",
        };
        let _ = writeln!(
            s,
            "\n{}/direct (median of rounds): throughput **{:.2}×**, requests/s **{:.2}×**{note}.",
            ratio.mode, ratio.throughput, ratio.requests_per_sec
        );
    }
    churn_section(&mut s, r);
    s
}

/// `--churn N`: per round and mode, the rate and what the ztunnels held afterwards above their baseline.
fn churn_section(s: &mut String, r: &Report) {
    let rows: Vec<(&ModeResult, &super::l4_churn::ChurnResult)> = r
        .results
        .iter()
        .filter_map(|m| m.churn.as_ref().map(|c| (m, c)))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "
## Connections opened and closed (`--churn`)

| round | mode | connections | failed | per s | fds left | tasks left | listed in config_dump |\n|---|---|---:|---:|---:|---:|---:|---:|"
    );
    let n = |v: Option<i64>| v.map_or_else(String::new, |v| format!("{v:+}"));
    for (m, c) in &rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} |",
            m.round,
            m.mode,
            c.connections,
            c.failed,
            c.per_sec,
            n(c.fds_leaked),
            n(c.tasks_leaked),
            c.connections_listed
                .map_or_else(String::new, |v| v.to_string()),
        );
    }
    let ratios: Vec<f64> = rows
        .iter()
        .filter(|(m, _)| m.mode == AMBIT)
        .filter_map(|(m, c)| {
            let direct = rows
                .iter()
                .find(|(d, _)| d.mode == "direct" && d.round == m.round)?;
            ratio(c.per_sec, direct.1.per_sec)
        })
        .collect();
    if !ratios.is_empty() {
        let _ = writeln!(
            s,
            "\nztunnel/direct connections per second (median of rounds): **{:.2}×**.",
            median(ratios)
        );
    }
}

#[cfg(test)]
mod tests;
