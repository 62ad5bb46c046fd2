//! L7 through a waypoint, end to end: `ambit local up -f examples/bookinfo` (a namespace waypoint the controller
//! deploys and the local runtime runs, an HTTPRoute splitting `reviews` by header and weight), then real `curl`
//! from the `sleep` pod. Asserts on what the backends saw, on the waypoint's own metrics, and that pod-addressed
//! traffic skips a service waypoint (upstream's `TestPodIP`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_e2e::e2e_test;
use ambit_e2e::local::{Echo, LocalMesh, PodInfo, WAIT, condition, leftovers, run_on_mesh};
use ambit_e2e::prom;
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, ensure};

const NS: &str = "bookinfo";
const SLEEP: &str = "deploy/sleep";
const REVIEWS: &str = "http://reviews.bookinfo:9080/";
/// The waypoint starts after the controller deploys it, then needs its certificate and config.
const WAYPOINT_UP: Duration = Duration::from_secs(60);

/// A copy of `examples/bookinfo` the test may edit.
fn manifests(dir: &Path) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo");
    let dst = dir.join("bookinfo");
    std::fs::create_dir_all(&dst)?;
    for e in std::fs::read_dir(&src).with_context(|| format!("read {}", src.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "yaml") {
            std::fs::copy(&p, dst.join(p.file_name().context("file name")?))?;
        }
    }
    Ok(dst)
}

fn echoes(body: &str) -> Vec<Echo> {
    Echo::parse_all(body)
}

/// `curl` of `count` requests to `url` in one invocation (one keep-alive connection), each of which must answer
/// 200.
fn curl_many(mesh: &LocalMesh, headers: &[&str], url: &str, count: usize) -> Result<Vec<Echo>> {
    let mut argv = vec![
        "curl",
        "-sS",
        "--max-time",
        "30",
        "-w",
        "code=%{http_code}\n",
    ];
    for h in headers {
        argv.extend(["-H", h]);
    }
    argv.extend(std::iter::repeat_n(url, count));
    let out = mesh.exec(NS, SLEEP, &argv)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "curl {url} x{count}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let codes: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("code="))
        .collect();
    ensure!(
        codes.len() == count && codes.iter().all(|c| *c == "200"),
        "curl {url} x{count}: status codes {codes:?}"
    );
    let e = echoes(&stdout);
    ensure!(e.len() == count, "{} bodies for {count} requests", e.len());
    Ok(e)
}

/// The reviews version (`v1`..`v3`) whose pod answered.
fn version(pods: &BTreeMap<String, String>, e: &Echo) -> Result<String> {
    pods.get(&e.pod)
        .cloned()
        .with_context(|| format!("{} is not a reviews pod", e.pod))
}

#[test]
fn bookinfo_l7_through_the_namespace_waypoint() {
    e2e_test("local-waypoint", |dir| {
        let manifests = manifests(dir.path())?;
        run_on_mesh(dir.path(), &manifests, 2, scenario, waypoint_dump)
    });
}

/// The waypoint's `/config_dump` (for failure reports).
fn waypoint_dump(mesh: &LocalMesh) -> String {
    let wp = match mesh.pods(NS, "waypoint") {
        Ok(mut p) if !p.is_empty() => p.remove(0),
        other => return format!("no waypoint pod: {other:?}"),
    };
    match mesh.get_in(&wp.netns, "http://127.0.0.1:15000/config_dump") {
        Ok(d) => format!("==== waypoint {} /config_dump ====\n{d}", wp.name),
        Err(e) => format!("waypoint /config_dump: {e:#}"),
    }
}

/// `istio_requests_total` at the waypoint, summed over the samples with `labels`.
fn waypoint_requests(mesh: &LocalMesh, wp: &PodInfo, labels: &[(&str, &str)]) -> Result<f64> {
    let text = mesh.get_in(&wp.netns, "http://127.0.0.1:15020/metrics")?;
    Ok(prom::sum(
        &prom::parse(&text),
        "istio_requests_total",
        labels,
    ))
}

fn scenario(mesh: &LocalMesh) -> Result<()> {
    // The controller deployed the waypoint and the runtime runs it, uncaptured, next to the user's pods.
    let wp = poll("the waypoint pod", WAYPOINT_UP, || {
        Ok(mesh.pods(NS, "waypoint")?.pop())
    })?;
    ensure!(!wp.captured, "the waypoint pod is captured: {wp:?}");
    let status = mesh.status()?;
    ensure!(
        status.contains(&wp.name),
        "`ambit local status` does not show {}:\n{status}",
        wp.name
    );
    let deployed: Vec<String> = std::fs::read_dir(&mesh.manifests)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("waypoint-"))
        .collect();
    ensure!(
        deployed.is_empty(),
        "deployed objects written back to the user's directory: {deployed:?}"
    );

    // Ready, programmed and bound (`istioctl waypoint apply --wait` polls the same condition).
    poll("Gateway waypoint Programmed=True", WAYPOINT_UP, || {
        let gw = mesh.get("gateway", NS, "waypoint")?;
        Ok((condition(&gw, "Programmed") == Some("True")).then_some(()))
    })?;
    poll("Service reviews WaypointBound=True", WAIT, || {
        let svc = mesh.get("service", NS, "reviews")?;
        Ok((condition(&svc, "istio.io/WaypointBound") == Some("True")).then_some(()))
    })?;
    let route = mesh.get("httproute", NS, "reviews")?;
    let parent = &route["status"]["parents"][0];
    ensure!(
        parent["parentRef"]["name"] == "reviews"
            && parent["conditions"].as_array().is_some_and(|c| c
                .iter()
                .any(|c| c["type"] == "Accepted" && c["status"] == "True")),
        "HTTPRoute reviews not accepted by its Service parent: {}",
        route["status"]
    );
    // Clients' ztunnels learn of the binding asynchronously: wait for the first request that went through L7.
    poll("a request through the waypoint", WAIT, || {
        Ok(curl_many(mesh, &[], REVIEWS, 1)
            .ok()
            .filter(|e| e[0].headers.contains_key("x-request-id")))
    })?;

    let mut pods: BTreeMap<String, String> = BTreeMap::new();
    for v in ["v1", "v2", "v3"] {
        for p in mesh.pods(NS, &format!("reviews-{v}"))? {
            pods.insert(p.name, v.to_owned());
        }
    }
    ensure!(pods.len() == 3, "one pod per reviews version: {pods:?}");
    let sleep = mesh.pods(NS, "sleep")?.pop().context("sleep pod")?;
    let principal = "spiffe://cluster.local/ns/bookinfo/sa/sleep";
    let to_reviews = [
        ("reporter", "waypoint"),
        ("response_code", "200"),
        ("destination_service", "reviews.bookinfo.svc.cluster.local"),
        ("source_workload", "sleep"),
        ("source_principal", principal),
    ];
    let before = waypoint_requests(mesh, &wp, &to_reviews)?;

    // (a) The header rule: jason always gets v2.
    let jason = curl_many(mesh, &["end-user: jason"], REVIEWS, 10)?;
    for e in &jason {
        ensure!(
            version(&pods, e)? == "v2",
            "end-user: jason reached {}",
            e.pod
        );
    }

    // (b) The weighted rule, chosen per request (four connections of 50 requests each): v1 and v3 only, v3 about
    // 20 %. At n = 200 the binomial standard deviation of v3's share is sqrt(0.2 * 0.8 / 200) = 2.8 %, so
    // ±8 % is about 3 sd: a correct split fails this less than 1 time in 300 runs, and a 50/50 or per-connection
    // split fails it every time.
    let mut rest = Vec::new();
    for _ in 0..4 {
        rest.extend(curl_many(mesh, &[], REVIEWS, 50)?);
    }
    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    for e in &rest {
        *by_version.entry(version(&pods, e)?).or_default() += 1;
    }
    ensure!(
        !by_version.contains_key("v2"),
        "requests without the header reached v2: {by_version:?}"
    );
    let v3 = by_version.get("v3").copied().unwrap_or(0) as f64 / rest.len() as f64;
    ensure!(
        (0.12..=0.28).contains(&v3),
        "v3 got {:.1} % of 200 requests (want 20 ± 8 %): {by_version:?}",
        v3 * 100.0
    );

    // (c) Every request went through L7: the backend saw the x-request-id the waypoint added (each its own), and
    // the waypoint, not the client, connected to it.
    let mut ids = BTreeSet::new();
    for e in jason.iter().chain(&rest) {
        let id = e
            .headers
            .get("x-request-id")
            .filter(|id| !id.is_empty())
            .with_context(|| format!("{} saw no x-request-id: {e:?}", e.pod))?;
        ids.insert(id.clone());
        ensure!(
            e.peer.split(':').next() == Some(wp.ip.as_str()),
            "{} saw peer {}, not the waypoint {}",
            e.pod,
            e.peer,
            wp.ip
        );
    }
    ensure!(
        ids.len() == jason.len() + rest.len(),
        "x-request-ids repeat"
    );

    // (d) The waypoint's request metrics name the service and the client's workload and identity. Metrics are
    // recorded as a response completes, possibly just after curl has it: wait for the count, then require it
    // exact (no request counted twice).
    let sent = (jason.len() + rest.len()) as f64;
    let after = poll("the waypoint counted the requests", WAIT, || {
        let now = waypoint_requests(mesh, &wp, &to_reviews)?;
        Ok((now - before >= sent).then_some(now))
    })?;
    ensure!(
        after - before == sent,
        "the waypoint counted {} requests to reviews for {sent} sent",
        after - before
    );
    let to_v2 = [
        to_reviews.as_slice(),
        &[("destination_workload", "reviews-v2")],
    ]
    .concat();
    ensure!(
        waypoint_requests(mesh, &wp, &to_v2)? >= 10.0,
        "no waypoint metric with {to_v2:?}"
    );

    // (e) Pod-addressed traffic skips a service waypoint: straight to the pod (from the client's address, no
    // x-request-id), and the waypoint counts nothing. A service request sent after it is the marker that the
    // waypoint's count is up to date.
    let all_before = waypoint_requests(mesh, &wp, &[])?;
    let v1 = pods
        .iter()
        .find(|(_, v)| *v == "v1")
        .map(|(p, _)| p.clone())
        .context("reviews-v1 pod")?;
    let v1_ip = mesh
        .pods(NS, "reviews-v1")?
        .pop()
        .context("reviews-v1 pod")?
        .ip;
    for e in curl_many(mesh, &[], &format!("http://{v1_ip}:9080/"), 5)? {
        ensure!(e.pod == v1, "pod IP {v1_ip} answered by {}", e.pod);
        ensure!(
            !e.headers.contains_key("x-request-id"),
            "pod-addressed request went through L7: {e:?}"
        );
        ensure!(
            e.peer.split(':').next() == Some(sleep.ip.as_str()),
            "pod-addressed request arrived from {}, not the client {}",
            e.peer,
            sleep.ip
        );
    }
    curl_many(mesh, &[], REVIEWS, 1)?;
    let all_after = poll("the marker request counted", WAIT, || {
        let now = waypoint_requests(mesh, &wp, &[])?;
        Ok((now > all_before).then_some(now))
    })?;
    ensure!(
        all_after - all_before == 1.0,
        "the waypoint counted {} requests for 5 pod-addressed + 1 service request",
        all_after - all_before
    );

    // (g) HTTP/2 (h2c, prior knowledge) from a real load client: 100 requests over 2 connections, every one
    // answered 2xx and counted by the waypoint.
    let before = waypoint_requests(mesh, &wp, &[])?;
    let out = mesh.exec(NS, SLEEP, &["h2load", "-n", "100", "-c", "2", REVIEWS])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("100 succeeded, 0 failed") && text.contains("status codes: 100 2xx"),
        "h2load through the waypoint: {text}"
    );
    let after = poll("h2load's requests counted", WAIT, || {
        let now = waypoint_requests(mesh, &wp, &[])?;
        Ok((now >= before + 100.0).then_some(now))
    })?;
    ensure!(
        after - before == 100.0,
        "the waypoint counted {} of h2load's 100 requests",
        after - before
    );

    // (f) `istio.io/use-waypoint: none` on a Service opts it out of the namespace waypoint, applied live.
    let reviews = mesh.manifests.join("reviews.yaml");
    let text = std::fs::read_to_string(&reviews)?;
    let from = "kind: Service\nmetadata:\n  name: reviews-v1\n  namespace: bookinfo\n  labels:\n";
    ensure!(text.contains(from), "reviews.yaml changed shape");
    std::fs::write(
        &reviews,
        text.replace(from, &format!("{from}    istio.io/use-waypoint: none\n")),
    )?;
    poll("reviews-v1 served without the waypoint", WAIT, || {
        Ok(curl_many(mesh, &[], "http://reviews-v1.bookinfo:9080/", 1)?
            .pop()
            .filter(|e| {
                !e.headers.contains_key("x-request-id")
                    && e.peer.split(':').next() == Some(sleep.ip.as_str())
            }))
    })?;
    // The rest of the namespace still goes through it.
    let e = curl_many(mesh, &[], "http://reviews-v2.bookinfo:9080/", 1)?;
    ensure!(
        e[0].headers.contains_key("x-request-id"),
        "reviews-v2 lost its waypoint: {:?}",
        e[0]
    );
    Ok(())
}

/// A build without the waypoint: `up` on manifests with a waypoint Gateway refuses at once and says what to build,
/// leaving nothing behind.
#[test]
fn up_without_the_waypoint_binary_says_what_to_build() {
    e2e_test("local-no-waypoint", |dir| {
        let ambit = ambit_e2e::local::ambit_bin()?;
        let from = ambit.parent().context("ambit's directory")?;
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        // The same binaries, minus the waypoint (links, so `ambit` finds its siblings here).
        for name in ["ambit", "controller", "ztunnel", "ambit-node-agent"] {
            let (src, dst) = (from.join(name), bin.join(name));
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).with_context(|| format!("copy {}", src.display()))?;
            }
        }
        let manifests = manifests(dir.path())?;
        let out = std::process::Command::new(bin.join("ambit"))
            .args(["local", "--dir"])
            .arg(dir.path().join("state"))
            .args(["up", "--timeout", "30", "-f"])
            .arg(&manifests)
            // Not on PATH either.
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "up succeeded without a waypoint binary"
        );
        ensure!(
            stderr.contains("`waypoint` is neither next to")
                && stderr.contains("the waypoint Gateway bookinfo/waypoint")
                && stderr.contains("cargo build"),
            "unclear error: {stderr}"
        );
        let left = leftovers()?;
        ensure!(left.is_empty(), "a refused up left: {left:?}");
        Ok(())
    });
}
