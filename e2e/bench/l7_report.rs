//! `ambit-bench-l7`'s results and report: what each run measured, the medians and ratios over rounds, and the
//! Markdown written next to the JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ambit_e2e::three_pods::L7Mode;
use ambit_e2e::tools::WrkResult;
use serde::Serialize;

/// What one process group (the ztunnels, or the proxy in the waypoint pod) cost per completed request.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PerRequest {
    pub cpu_us: f64,
    /// `None` when only the CPU time was read (from schedstat, with nothing attached).
    pub context_switches: Option<f64>,
    pub syscalls: Option<f64>,
}

/// One wrk run at one connection count.
#[derive(Debug, Serialize)]
pub struct Run {
    pub connections: u32,
    pub wrk: WrkResult,
    pub non_2xx: u64,
    pub socket_errors: u64,
    /// CPU per request from schedstat over the wrk run (nothing attached).
    pub ztunnels_cpu_us: Option<f64>,
    pub proxy_cpu_us: Option<f64>,
    /// From the separate `perf stat` run.
    pub ztunnels_perf: Option<PerRequest>,
    pub proxy_perf: Option<PerRequest>,
}

#[derive(Debug, Serialize)]
pub struct ModeResult {
    pub mode: &'static str,
    pub round: usize,
    pub runs: Vec<Run>,
    /// Sum of `VmRSS` of the waypoint pod's proxy processes, before any load and after the last wrk run.
    pub proxy_rss_rest_kib: Option<u64>,
    pub proxy_rss_after_kib: Option<u64>,
    /// `istio_requests_total` summed over the waypoint's metrics after the runs (waypoint modes).
    pub waypoint_requests_total: Option<f64>,
    /// WARN/ERROR lines in the proxy's log.
    pub proxy_log_problems: usize,
    /// Size of the response body the client got (the smoke test's).
    pub body_bytes: usize,
    /// Configs, logs, wrk and perf outputs of this pod set.
    pub dir: String,
}

/// One mode at one connection count: per-round ratios to direct and the medians.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub mode: &'static str,
    pub connections: u32,
    pub ratio_per_round: Vec<f64>,
    pub ratio_median: f64,
    pub requests_per_sec_median: f64,
    pub p50_ms_median: f64,
    pub p99_ms_median: f64,
    pub non_2xx_total: u64,
    pub socket_errors_total: u64,
    pub proxy_cpu_us_median: Option<f64>,
    pub proxy_perf_cpu_us_median: Option<f64>,
    pub ztunnels_cpu_us_median: Option<f64>,
}

/// What the route policies cost the waypoint: `mode`'s waypoint CPU per request against `l7-bare`'s, at one
/// connection count. Ratios are taken within each round (the two pod sets ran minutes apart at most), then the
/// median over rounds.
#[derive(Debug, Serialize)]
pub struct PolicyCost {
    pub mode: &'static str,
    pub connections: u32,
    /// schedstat CPU µs per request, `mode` / `l7-bare`, per round and their median.
    pub cpu_ratio_per_round: Vec<f64>,
    pub cpu_ratio_median: f64,
    /// The same from the `perf stat` runs.
    pub perf_cpu_ratio_median: Option<f64>,
    /// Requests/s, `mode` / `l7-bare`, median over rounds.
    pub rps_ratio_median: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub timestamp: u64,
    pub kernel: String,
    pub cpus: usize,
    pub duration_secs: u64,
    pub count_secs: u64,
    pub rounds: usize,
    pub connections: Vec<u32>,
    pub skipped: Vec<String>,
    pub waypoint_log_filter: String,
    pub ztunnel_env: Vec<(String, String)>,
    pub waypoint_env: Vec<(String, String)>,
    pub proxy_workers: u32,
    /// Response body size (bytes) e2e-http sent (`hello <client address>\\n`).
    pub response_body_bytes: usize,
    pub wrk_command: String,
    pub results: Vec<ModeResult>,
    pub summary: Vec<Summary>,
    /// `l7` and `l7-policies` against `l7-bare` (empty unless `l7-bare` and one of them ran).
    pub policy_cost: Vec<PolicyCost>,
}

pub use ambit_e2e::tools::median;

pub fn median_of(v: Vec<f64>) -> Option<f64> {
    (!v.is_empty()).then(|| median(v))
}

pub fn summarize(results: &[ModeResult], modes: &[L7Mode], connections: &[u32]) -> Vec<Summary> {
    // (mode, round, connections) → run
    let mut runs: BTreeMap<(&str, usize, u32), &Run> = BTreeMap::new();
    for m in results {
        for r in &m.runs {
            runs.insert((m.mode, m.round, r.connections), r);
        }
    }
    let mut out = Vec::new();
    for mode in modes {
        let name = mode.as_str();
        for &c in connections {
            let mine: Vec<(usize, &Run)> = runs
                .iter()
                .filter(|((m, _, cc), _)| *m == name && *cc == c)
                .map(|((_, round, _), r)| (*round, *r))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let ratio_per_round: Vec<f64> = mine
                .iter()
                .filter_map(|(round, r)| {
                    let d = runs.get(&(L7Mode::Direct.as_str(), *round, c))?;
                    Some(r.wrk.requests_per_sec / d.wrk.requests_per_sec)
                })
                .collect();
            let col = |f: &dyn Fn(&Run) -> Option<f64>| -> Vec<f64> {
                mine.iter().filter_map(|(_, r)| f(r)).collect()
            };
            out.push(Summary {
                mode: name,
                connections: c,
                ratio_median: median(ratio_per_round.clone()),
                ratio_per_round,
                requests_per_sec_median: median(col(&|r| Some(r.wrk.requests_per_sec))),
                p50_ms_median: median(col(&|r| Some(r.wrk.p50_ms))),
                p99_ms_median: median(col(&|r| Some(r.wrk.p99_ms))),
                non_2xx_total: mine.iter().map(|(_, r)| r.non_2xx).sum(),
                socket_errors_total: mine.iter().map(|(_, r)| r.socket_errors).sum(),
                proxy_cpu_us_median: median_of(col(&|r| r.proxy_cpu_us)),
                proxy_perf_cpu_us_median: median_of(col(&|r| r.proxy_perf.map(|p| p.cpu_us))),
                ztunnels_cpu_us_median: median_of(col(&|r| r.ztunnels_cpu_us)),
            });
        }
    }
    out
}

/// `l7` and `l7-policies` against `l7-bare`, per connection count, from the runs of the same rounds.
pub fn policy_costs(results: &[ModeResult], connections: &[u32]) -> Vec<PolicyCost> {
    let find = |mode: L7Mode, round: usize, c: u32| {
        results
            .iter()
            .find(|m| m.mode == mode.as_str() && m.round == round)?
            .runs
            .iter()
            .find(|r| r.connections == c)
    };
    let rounds: Vec<usize> = {
        let mut v: Vec<usize> = results.iter().map(|m| m.round).collect();
        v.dedup();
        v
    };
    let mut out = Vec::new();
    for mode in [
        L7Mode::L7,
        L7Mode::L7Policies,
        L7Mode::L7Authz10,
        L7Mode::L7Authz1000,
    ] {
        for &c in connections {
            let pairs: Vec<(&Run, &Run)> = rounds
                .iter()
                .filter_map(|&round| Some((find(mode, round, c)?, find(L7Mode::L7Bare, round, c)?)))
                .collect();
            let ratio = |f: &dyn Fn(&Run) -> Option<f64>| -> Vec<f64> {
                pairs
                    .iter()
                    .filter_map(|(m, b)| Some(f(m)? / f(b)?))
                    .collect()
            };
            let cpu = ratio(&|r| r.proxy_cpu_us);
            if cpu.is_empty() {
                continue;
            }
            out.push(PolicyCost {
                mode: mode.as_str(),
                connections: c,
                cpu_ratio_median: median(cpu.clone()),
                cpu_ratio_per_round: cpu,
                perf_cpu_ratio_median: median_of(ratio(&|r| r.proxy_perf.map(|p| p.cpu_us))),
                rps_ratio_median: median(ratio(&|r| Some(r.wrk.requests_per_sec))),
            });
        }
    }
    out
}

pub fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(String::new, |v| format!("{v:.digits$}"))
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# L7 benchmark: direct, ztunnel pair, ztunnel + waypoint, nginx, HAProxy\n"
    );
    let _ = writeln!(
        s,
        "Kernel {}, {} CPUs, {} round(s) of {} s per measurement (perf counts over {} s), modes alternating with \
         fresh pods. `{}`, {} byte response body (`e2e-http`). Waypoint `RUST_LOG={}`; nginx/HAProxy {} workers/threads.{}\n",
        r.kernel,
        r.cpus,
        r.rounds,
        r.duration_secs,
        r.count_secs,
        r.wrk_command,
        r.response_body_bytes,
        r.waypoint_log_filter,
        r.proxy_workers,
        if r.skipped.is_empty() {
            String::new()
        } else {
            format!(" **Skipped:** {}.", r.skipped.join("; "))
        }
    );
    let _ = writeln!(
        s,
        "| mode | -c | req/s (median) | / direct (median) | / direct per round | p50 ms | p99 ms | non-2xx | socket errors | proxy µs CPU / req | (under perf) | ztunnels µs CPU / req |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for x in &r.summary {
        let rounds: Vec<String> = x
            .ratio_per_round
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {:.3} | {:.3} | {} | {} | {} | {} | {} |",
            x.mode,
            x.connections,
            x.requests_per_sec_median,
            if x.ratio_median.is_nan() {
                String::new()
            } else {
                format!("**{:.2}×**", x.ratio_median)
            },
            rounds.join(", "),
            x.p50_ms_median,
            x.p99_ms_median,
            x.non_2xx_total,
            x.socket_errors_total,
            opt(x.proxy_cpu_us_median, 1),
            opt(x.proxy_perf_cpu_us_median, 1),
            opt(x.ztunnels_cpu_us_median, 1),
        );
    }
    if !r.policy_cost.is_empty() {
        let _ = writeln!(
            s,
            "\nWhat the route policies cost the waypoint on the success path: its CPU µs per request (schedstat, \
             median over rounds) against `l7-bare` (a route with `retry: {{attempts: 0}}`, no BackendPolicy), the \
             ratio taken within each round. `l7`: no route, Istio's default retry policy; `l7-policies`: `{}` and \
             a BackendPolicy `{}`. Goal: `l7-policies` / `l7-bare` < 1.10.\n",
            ambit_e2e::three_pods::POLICIES_ROUTE_FIELDS,
            ambit_e2e::three_pods::POLICIES_BACKEND_POLICY
        );
        let _ = writeln!(
            s,
            "| mode | -c | waypoint µs / req | l7-bare µs / req | CPU / l7-bare (median) | per round | under perf | req/s / l7-bare |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---|---:|---:|");
        let cpu_of = |mode: &str, c: u32| {
            r.summary
                .iter()
                .find(|x| x.mode == mode && x.connections == c)
                .and_then(|x| x.proxy_cpu_us_median)
        };
        for p in &r.policy_cost {
            let rounds: Vec<String> = p
                .cpu_ratio_per_round
                .iter()
                .map(|v| format!("{v:.3}"))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | **{:.3}** | {} | {} | {:.3} |",
                p.mode,
                p.connections,
                opt(cpu_of(p.mode, p.connections), 1),
                opt(cpu_of(L7Mode::L7Bare.as_str(), p.connections), 1),
                p.cpu_ratio_median,
                rounds.join(", "),
                opt(p.perf_cpu_ratio_median, 3),
                p.rps_ratio_median,
            );
        }
    }
    let _ = writeln!(
        s,
        "\nPer round (proxy = the process in the waypoint pod: Ambit's waypoint, nginx's master and workers, or \
         HAProxy; RSS summed over its processes):\n"
    );
    let _ = writeln!(
        s,
        "| round | mode | -c | req/s | p50 ms | p99 ms | non-2xx | proxy µs / req | perf: proxy µs / cs / syscalls per req | perf: ztunnels µs / cs / syscalls per req | proxy RSS rest → after (MiB) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|");
    let triple = |p: Option<PerRequest>| {
        p.map_or_else(String::new, |p| {
            format!(
                "{:.1} / {} / {}",
                p.cpu_us,
                opt(p.context_switches, 2),
                opt(p.syscalls, 1)
            )
        })
    };
    for m in &r.results {
        let rss = match (m.proxy_rss_rest_kib, m.proxy_rss_after_kib) {
            (Some(a), Some(b)) => format!("{:.1} → {:.1}", a as f64 / 1024.0, b as f64 / 1024.0),
            _ => String::new(),
        };
        for run in &m.runs {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {} | {} | {} | {} | {} |",
                m.round,
                m.mode,
                run.connections,
                run.wrk.requests_per_sec,
                run.wrk.p50_ms,
                run.wrk.p99_ms,
                run.non_2xx,
                opt(run.proxy_cpu_us, 1),
                triple(run.proxy_perf),
                triple(run.ztunnels_perf),
                rss
            );
        }
    }
    let waypoint: Vec<&ModeResult> = r.results.iter().filter(|m| m.mode == "l7").collect();
    if !waypoint.is_empty() {
        let rest: Vec<f64> = waypoint
            .iter()
            .filter_map(|m| m.proxy_rss_rest_kib)
            .map(|k| k as f64 / 1024.0)
            .collect();
        let after: Vec<f64> = waypoint
            .iter()
            .filter_map(|m| m.proxy_rss_after_kib)
            .map(|k| k as f64 / 1024.0)
            .collect();
        let _ = writeln!(
            s,
            "\nAmbit waypoint (`l7`): RSS at rest {} MiB, after load {} MiB (median of rounds; goal < 20 MB at \
             rest). Goals: ≤ 50 µs CPU per request (Istio's Envoy waypoint: ~250 µs), requests/s ≥ nginx's in the \
             same place.",
            opt(median_of(rest), 1),
            opt(median_of(after), 1)
        );
    }
    for m in &r.results {
        if let Some(n) = m.waypoint_requests_total {
            let _ = writeln!(
                s,
                "\nround {} {}: the waypoint counted {n:.0} requests (`istio_requests_total`); {} WARN/ERROR log lines.",
                m.round, m.mode, m.proxy_log_problems
            );
        }
    }
    s
}
