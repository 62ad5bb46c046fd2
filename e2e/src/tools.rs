//! Readers for the output of `iperf3 -J` and `wrk --latency`.

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// Receiver-side throughput of an `iperf3 -c ... -J` run, in bits per second.
pub fn iperf3_bits_per_second(json: &str) -> Result<f64> {
    let v: serde_json::Value =
        serde_json::from_str(json).context("iperf3 -J output is not JSON")?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {err}");
    }
    v.pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .context("iperf3 -J output has no end.sum_received.bits_per_second")
}

/// What `wrk --latency` reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Socket errors plus non-2xx/3xx responses.
    pub errors: u64,
}

/// Parses wrk's human-readable report (needs `--latency` for the percentiles).
pub fn parse_wrk(text: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut seen_rps = false;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => {
                r.requests_per_sec = v
                    .parse()
                    .with_context(|| format!("wrk: bad Requests/sec {v:?}"))?;
                seen_rps = true;
            }
            (Some("50%"), Some(v)) => r.p50_ms = duration_ms(v)?,
            (Some("90%"), Some(v)) => r.p90_ms = duration_ms(v)?,
            (Some("99%"), Some(v)) => r.p99_ms = duration_ms(v)?,
            (Some(n), Some("requests")) => r.requests = n.parse().unwrap_or_default(),
            (Some("Non-2xx"), _) => {
                r.errors += line
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            }
            (Some("Socket"), Some("errors:")) => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                r.errors += line
                    .split(',')
                    .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if !seen_rps {
        bail!("wrk output has no Requests/sec line:\n{text}");
    }
    Ok(r)
}

/// `101.00us`, `1.23ms`, `2.00s`, `1.50m` → milliseconds.
fn duration_ms(v: &str) -> Result<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num: f64 = num
        .parse()
        .with_context(|| format!("wrk: bad duration {v:?}"))?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => bail!("wrk: unknown duration unit in {v:?}"),
    };
    Ok(num * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://10.77.0.3:8080/
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   106.52us   41.10us   1.80ms   83.34%
    Req/Sec    36.66k     2.55k   42.09k    67.50%
  Latency Distribution
     50%  101.00us
     75%  118.00us
     90%    1.39ms
     99%    2.01s
  729609 requests in 10.10s, 78.63MB read
  Socket errors: connect 0, read 2, write 1, timeout 0
  Non-2xx or 3xx responses: 4
Requests/sec:  72239.40
Transfer/sec:      7.79MB
";

    #[test]
    fn parses_wrk() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests_per_sec, 72239.40);
        assert!((r.p50_ms - 0.101).abs() < 1e-9);
        assert!((r.p90_ms - 1.39).abs() < 1e-9);
        assert!((r.p99_ms - 2010.0).abs() < 1e-9);
        assert_eq!(r.requests, 729609);
        assert_eq!(r.errors, 7);
    }

    #[test]
    fn wrk_without_summary_is_an_error() {
        assert!(parse_wrk("unable to connect to 10.77.0.3:8080 Connection refused").is_err());
    }

    #[test]
    fn parses_iperf3() {
        let json = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":9.5e9},"sum_received":{"bits_per_second":9.4e9}}}"#;
        assert_eq!(iperf3_bits_per_second(json).unwrap(), 9.4e9);
        let err = iperf3_bits_per_second(
            r#"{"start":{},"end":{},"error":"unable to connect to server"}"#,
        );
        assert!(err.unwrap_err().to_string().contains("unable to connect"));
    }
}

/// What `perf stat -x,` counted for the ztunnels during a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct PerfCounts {
    /// CPU time, milliseconds.
    pub task_clock_ms: f64,
    pub context_switches: f64,
    pub syscalls: f64,
}

/// Parses `perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter` output (CSV: value, unit, event, …).
pub fn parse_perf_stat(text: &str) -> PerfCounts {
    let mut c = PerfCounts::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let Ok(v) = f[0].trim().parse::<f64>() else {
            continue;
        };
        match f[2].trim() {
            e if e.starts_with("task-clock") => c.task_clock_ms = v,
            e if e.starts_with("context-switches") => c.context_switches = v,
            e if e.starts_with("raw_syscalls:sys_enter") => c.syscalls = v,
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod perf_tests {
    use super::*;

    #[test]
    fn perf_csv() {
        let text = "# started on x\n\n8123.45,msec,task-clock,8123450000,100.00,1.6,CPUs utilized\n\
                    41234,,context-switches,8123450000,100.00,5.076,K/sec\n\
                    987654,,raw_syscalls:sys_enter,8123450000,100.00,,\n<not counted>,,cycles,0,0.00,,\n";
        let c = parse_perf_stat(text);
        assert_eq!(c.task_clock_ms, 8123.45);
        assert_eq!(c.context_switches, 41234.0);
        assert_eq!(c.syscalls, 987654.0);
    }
}

/// Writes a benchmark's report as `<stem>-<timestamp>.{json,md}` and `<stem>-latest.{json,md}` in `out`.
pub fn write_report(
    out: &std::path::Path,
    stem: &str,
    timestamp: u64,
    json: &str,
    md: &str,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    for name in [format!("{stem}-{timestamp}"), format!("{stem}-latest")] {
        std::fs::write(out.join(format!("{name}.json")), json)?;
        std::fs::write(out.join(format!("{name}.md")), md)?;
    }
    println!("results: {}/{stem}-{timestamp}.{{json,md}}", out.display());
    Ok(())
}

/// CPU time (ns) the processes `pids` have used so far: the sum over their threads of
/// `/proc/<pid>/task/<tid>/schedstat`'s first field. Processes that are gone count 0.
pub fn cpu_ns(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            total += std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// The summed `VmRSS` (KiB) of the processes `pids`; `None` when none could be read.
pub fn rss_sum(pids: &[u32]) -> Option<u64> {
    let v: Vec<u64> = pids
        .iter()
        .filter_map(|&p| crate::three_pods::rss_kib(p))
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

/// The open file descriptors of `pids` together (entries of `/proc/<pid>/fd`); `None` if none could be read.
pub fn fd_sum(pids: &[u32]) -> Option<u64> {
    let v: Vec<u64> = pids
        .iter()
        .filter_map(|&p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
        .map(|d| d.count() as u64)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

/// The median of `v` (the mean of the middle two for an even count); NaN for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
