//! The report's ratios and markdown on made-up results.

use super::*;

fn result(mode: &'static str, round: usize, gbps: f64, rps: f64, p99: f64) -> ModeResult {
    ModeResult {
        mode,
        round,
        throughput_gbps: gbps,
        throughput_parallel_gbps: None,
        wrk: WrkResult {
            requests_per_sec: rps,
            p99_ms: p99,
            ..WrkResult::default()
        },
        per_request: None,
        ztunnels_cpu_us_per_mb: None,
        ztunnels_rss_rest_kib: None,
        ztunnels_rss_after_kib: None,
        ztunnels_fds_rest: None,
        ztunnels_fds_after: None,
        ztunnels_kib_per_idle_connection: None,
        ztunnels_idle_fds_left: None,
        churn: None,
    }
}

fn report(results: Vec<ModeResult>, upstream_bin: Option<&str>) -> Report {
    let (round_ratios, ratios) = ratios_to_direct(&results);
    Report {
        timestamp: 0,
        kernel: "k".into(),
        cpus: 2,
        load_before: Some([1.5, 2.0, 2.5]),
        load_after: None,
        duration_secs: 3,
        rounds: 2,
        ztunnel_bin: "/ambit/ztunnel".into(),
        upstream_bin: upstream_bin.map(str::to_owned),
        ztunnel_env: Vec::new(),
        wrk_command: "wrk".into(),
        iperf_command: "iperf3".into(),
        compare: compare(&results),
        results,
        round_ratios,
        ratios,
    }
}

#[test]
fn median_of_odd_even_and_empty() {
    assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    assert!(median(Vec::new()).is_nan());
}

#[test]
fn ratio_refuses_missing_or_zero_denominators() {
    assert_eq!(ratio(3.0, 2.0), Some(1.5));
    assert_eq!(ratio(3.0, 0.0), None);
    assert_eq!(ratio(f64::NAN, 2.0), None);
    assert_eq!(ratio(1.0, f64::INFINITY), None);
}

#[test]
fn compare_pairs_each_round_and_takes_the_median_of_ratios() {
    let mut a3 = result(AMBIT, 3, 9.0, 900.0, 1.0);
    a3.ztunnels_rss_after_kib = Some(2048);
    let mut u3 = result(UPSTREAM, 3, 3.0, 1000.0, 4.0);
    u3.ztunnels_rss_after_kib = Some(4096);
    let results = vec![
        result(AMBIT, 1, 6.0, 1200.0, 1.0),
        result(UPSTREAM, 1, 4.0, 1000.0, 2.0),
        // Round 2's upstream run is missing: round 2 must not be paired with another round's.
        result(AMBIT, 2, 100.0, 100.0, 100.0),
        a3,
        u3,
    ];
    let c = compare(&results);
    let thr = c
        .iter()
        .find(|c| c.figure == "iperf3 throughput, 1 stream")
        .unwrap();
    let rounds: Vec<usize> = thr.per_round.iter().map(|p| p.round).collect();
    assert_eq!(rounds, vec![1, 3]);
    assert_eq!(thr.per_round[0].ratio, 1.5);
    assert_eq!(thr.per_round[1].ratio, 3.0);
    assert_eq!(thr.ratio_median, 2.25);
    // The median of the ratios, not the ratio of the medians (7.5 / 3.5 ≈ 2.14).
    assert_eq!((thr.ambit_median, thr.upstream_median), (7.5, 3.5));
    assert_eq!(thr.better, "higher");
    let p99 = c.iter().find(|c| c.figure == "wrk p99 latency").unwrap();
    assert_eq!(p99.better, "lower");
    assert_eq!(p99.ratio_median, (0.5 + 0.25) / 2.0);
    // RSS was read only in round 3; figures nobody measured are left out.
    let rss = c
        .iter()
        .find(|c| c.figure == "ztunnels' RSS after load (both)")
        .unwrap();
    assert_eq!(rss.per_round.len(), 1);
    assert_eq!((rss.ambit_median, rss.ratio_median), (2.0, 0.5));
    assert!(
        c.iter()
            .all(|c| c.figure != "iperf3 throughput, parallel streams")
    );
    assert!(c.iter().all(|c| !c.figure.contains("per request")));
}

#[test]
fn compare_is_empty_without_upstream_runs() {
    let results = vec![
        result("direct", 1, 20.0, 100_000.0, 2.0),
        result(AMBIT, 1, 6.0, 30_000.0, 1.0),
    ];
    assert!(compare(&results).is_empty());
}

#[test]
fn ratios_to_direct_include_upstream_and_skip_rounds_without_direct() {
    let results = vec![
        result("direct", 1, 20.0, 100_000.0, 2.0),
        result(AMBIT, 1, 8.0, 30_000.0, 1.0),
        result(UPSTREAM, 1, 5.0, 20_000.0, 1.0),
        result(AMBIT, 2, 1.0, 1.0, 1.0),
        result(UPSTREAM, 2, 1.0, 1.0, 1.0),
    ];
    let (per_round, medians) = ratios_to_direct(&results);
    assert_eq!(per_round.len(), 2, "{per_round:?}");
    assert_eq!(
        medians,
        vec![
            Ratios {
                mode: AMBIT,
                round: 0,
                throughput: 0.4,
                requests_per_sec: 0.3
            },
            Ratios {
                mode: UPSTREAM,
                round: 0,
                throughput: 0.25,
                requests_per_sec: 0.2
            },
        ]
    );
}

#[test]
fn markdown_has_a_churn_table_and_the_ratio_to_direct_only_when_churn_ran() {
    let churn = |per_sec: f64, fds: Option<i64>| {
        Some(super::super::l4_churn::ChurnResult {
            connections: 50_000,
            failed: 0,
            per_sec,
            fds_leaked: fds,
            tasks_leaked: fds,
            connections_listed: fds.map(|_| 0),
        })
    };
    let plain = markdown(&report(vec![result("direct", 1, 10.0, 1000.0, 1.0)], None));
    assert!(!plain.contains("--churn"), "{plain}");
    let mut d = result("direct", 1, 10.0, 1000.0, 1.0);
    d.churn = churn(8000.0, None);
    let mut z = result(AMBIT, 1, 4.0, 300.0, 1.0);
    z.churn = churn(3000.0, Some(0));
    let md = markdown(&report(vec![d, z], None));
    assert!(
        md.contains("| 1 | direct | 50000 | 0 | 8000 |  |  |  |"),
        "{md}"
    );
    assert!(
        md.contains("| 1 | ztunnel | 50000 | 0 | 3000 | +0 | +0 | 0 |"),
        "{md}"
    );
    assert!(
        md.contains("connections per second (median of rounds): **0.38×**"),
        "{md}"
    );
}

#[test]
fn markdown_says_loudly_when_no_upstream_was_given() {
    let md = markdown(&report(
        vec![
            result("direct", 1, 20.0, 100_000.0, 2.0),
            result(AMBIT, 1, 8.0, 30_000.0, 1.0),
        ],
        None,
    ));
    assert!(md.contains("**NO UPSTREAM BINARY GIVEN.**"), "{md}");
    assert!(!md.contains("Ambit / upstream"), "{md}");
    assert!(md.contains("ztunnel/direct (median of rounds): throughput **0.40×**"));
    assert!(md.contains("load average (1/5/15 min) 1.50 / 2.00 / 2.50 before, ? after"));
}

#[test]
fn markdown_lists_each_rounds_pair_and_the_median_ratio() {
    let md = markdown(&report(
        vec![
            result(AMBIT, 1, 6.0, 1200.0, 1.0),
            result(UPSTREAM, 1, 4.0, 1000.0, 2.0),
            result(AMBIT, 2, 9.0, 900.0, 1.0),
            result(UPSTREAM, 2, 3.0, 1000.0, 4.0),
        ],
        Some("/up/ztunnel"),
    ));
    assert!(!md.contains("NO UPSTREAM"), "{md}");
    assert!(md.contains("Ambit `/ambit/ztunnel` against upstream `/up/ztunnel`"));
    let line = md
        .lines()
        .find(|l| l.starts_with("| iperf3 throughput, 1 stream"))
        .unwrap();
    assert_eq!(
        line,
        "| iperf3 throughput, 1 stream | Gbit/s | higher | 7.50 | 3.50 | 1: 6.00 / 4.00 = 1.50; 2: 9.00 / 3.00 = 3.00 | **2.25×** |"
    );
    let rps = md
        .lines()
        .find(|l| l.starts_with("| wrk requests/s"))
        .unwrap();
    assert!(rps.ends_with("| **1.05×** |"), "{rps}");
}
