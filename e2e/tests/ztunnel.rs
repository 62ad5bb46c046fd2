//! Two pods, each with its own dedicated-mode ztunnel behind upstream's redirect rule: traffic is captured,
//! crosses the wire only as mTLS to 15008, is reported in both ztunnels' metrics, and obeys b's local policies.
//! Needs root and the ztunnel binary (`AMBIT_ZTUNNEL_BIN`, default: `ztunnel` of the same cargo build).

use std::time::Duration;

use ambit_e2e::capture::Capture;
use ambit_e2e::localconfig::Policy;
use ambit_e2e::pcap;
use ambit_e2e::prom;
use ambit_e2e::topology::{A_IP, B_IP, Pod, poll};
use ambit_e2e::{Mode, TwoPods, TwoPodsOptions, e2e_test};
use anyhow::{Result, ensure};

const HTTP_BIN: &str = env!("CARGO_BIN_EXE_e2e-http");
const OPENED: &str = "istio_tcp_connections_opened_total";
const A_PRINCIPAL: &str = "cluster.local/ns/default/sa/a";
const WAIT: Duration = Duration::from_secs(15);

/// Waits until `pod`'s ztunnel counts at least one opened connection with `labels`.
fn wait_opened(pod: &Pod, labels: &[(&str, &str)]) -> Result<f64> {
    poll(
        &format!("{OPENED}{labels:?} >= 1 on ztunnel {}", pod.name()),
        WAIT,
        || {
            let n = prom::sum(&pod.metrics()?, OPENED, labels);
            Ok((n >= 1.0).then_some(n))
        },
    )
}

/// `/config_dump`'s `policies` mention a policy `name` (as a `name` value or a `<namespace>/<name>` key or value).
fn has_policy(dump: &serde_json::Value, name: &str) -> bool {
    fn mentions(v: &serde_json::Value, name: &str) -> bool {
        let hit = |s: &str| s == name || s.ends_with(&format!("/{name}"));
        match v {
            serde_json::Value::String(s) => hit(s),
            serde_json::Value::Array(items) => items.iter().any(|i| mentions(i, name)),
            serde_json::Value::Object(map) => map.iter().any(|(k, v)| hit(k) || mentions(v, name)),
            _ => false,
        }
    }
    dump.get("policies").is_some_and(|p| mentions(p, name))
}

#[test]
fn curl_through_ztunnels_is_mtls_on_15008() {
    e2e_test("through_ztunnel", |dir| {
        let pods = TwoPods::start(dir, &TwoPodsOptions::new(Mode::Ztunnel).with_http(HTTP_BIN))?;
        let capture = Capture::start(pods.a().ns(), pods.a().interface(), dir.path(), "veth-a")?;
        let r = pods.a().curl(&pods.b_url())?;
        let segments = capture.stop()?;

        ensure!(
            r.ok(),
            "curl a -> http://{B_IP}:8080/ through the ztunnels failed: {r:?}"
        );
        ensure!(r.body.starts_with("hello "), "unexpected body {:?}", r.body);

        let wire = pcap::summarise(&segments, A_IP, B_IP, &[b"GET /", b"hello "]);
        wire.check_only_hbone()?;

        let spiffe_a = format!("spiffe://{A_PRINCIPAL}");
        wait_opened(
            pods.b(),
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", &spiffe_a),
            ],
        )?;
        wait_opened(pods.a(), &[("reporter", "source")])?;
        Ok(())
    });
}

#[test]
fn deny_policy_reload_blocks_then_allows_again() {
    e2e_test("deny_policy", |dir| {
        let pods = TwoPods::start(dir, &TwoPodsOptions::new(Mode::Ztunnel).with_http(HTTP_BIN))?;
        let url = pods.b_url();
        let before = pods.a().curl(&url)?;
        ensure!(before.ok(), "curl before any policy failed: {before:?}");

        pods.b()
            .set_policies(&[Policy::deny_principal("deny-a", A_PRINCIPAL)])?;
        pods.b()
            .wait_config("policy deny-a in b's /config_dump", WAIT, |d| {
                has_policy(d, "deny-a")
            })?;
        let denied = pods.a().curl(&url)?;
        ensure!(
            !denied.ok() && !denied.body.contains("hello"),
            "curl should be denied by b's policy: {denied:?}"
        );

        pods.b().set_policies(&[])?;
        pods.b()
            .wait_config("policy deny-a gone from b's /config_dump", WAIT, |d| {
                !has_policy(d, "deny-a")
            })?;
        let after = pods.a().curl(&url)?;
        ensure!(
            after.ok(),
            "curl after removing the policy failed: {after:?}"
        );
        Ok(())
    });
}
