//! Istio's VirtualService and DestinationRule through the waypoint, end to end: `ambit local up` on bookinfo with
//! the manifests of `examples/bookinfo/networking/` (Istio's sample names), then real `curl` from the `sleep` pod
//! through its ztunnel, the namespace waypoint and the backend's ztunnel. One mesh for every case (start-up is most
//! of the run time); the `ratings` VirtualService is rewritten live between the fault cases.
//!
//! * subsets: DestinationRule `reviews` v1/v2/v3 by `version`, VirtualService `reviews`: jason → v2, others → v1;
//! * delay: `ratings` `fixedDelay: 1s` for jason only, measured with curl's `%{time_total}`; flag `DI`;
//! * abort: `ratings` 418 for jason at 100 % (flag `FI`), then at 50 % over 100 requests;
//! * retries: Istio's `retries {attempts: 3, perTryTimeout: 2s, retryOn: gateway-error,connect-failure,
//!   refused-stream,reset-before-request}` against a backend that fails each request twice (`e2e-flaky`), one whose
//!   only endpoint refuses connections (`UF,URX`), and one with a dead and a live endpoint (always 200);
//! * gRPC: an abort with `grpcStatus: UNAVAILABLE` answers a gRPC request with `grpc-status: 14`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_e2e::e2e_test;
use ambit_e2e::local::{Echo, LocalMesh, NET_NS, PodInfo, WAIT, condition, run_on_mesh};
use ambit_e2e::prom;
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

const NS: &str = "bookinfo";
const SLEEP: &str = "deploy/sleep";
const REVIEWS: &str = "http://reviews.bookinfo:9080/";
const RATINGS: &str = "http://ratings.bookinfo:9080/";
const JASON: &str = "end-user: jason";
/// The waypoint starts after the controller deploys it, then needs its certificate and config.
const WAYPOINT_UP: Duration = Duration::from_secs(60);
/// `fixedDelay` of `virtual-service-ratings-test-delay.yaml`.
const DELAY_SECS: f64 = 1.0;
/// The controller's monitoring port, on the mesh bridge's gateway address.
const CONTROLLER_STATUS: &str = "http://10.244.0.1:15014/debug/status";
/// The file the `ratings` VirtualService is written to (rewritten per case).
const RATINGS_VS: &str = "ratings-vs.yaml";

/// Istio's retry case, as `virtual-service-ratings-retries.yaml` has it.
const RETRIES: &str = "    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: gateway-error,connect-failure,refused-stream,reset-before-request
";

/// Backends for the retry and gRPC cases (test-only, not part of the example): `flaky` fails each request twice
/// then answers (`@FLAKY@` is the `e2e-flaky` binary); `refused` is a pod that listens on nothing; `half` has one
/// such pod and one `ambit echo`; `grpc-fault` is a gRPC port on the ratings pods.
const BACKENDS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: flaky, namespace: bookinfo}
spec:
  replicas: 1
  selector: {matchLabels: {app: flaky}}
  template:
    metadata: {labels: {app: flaky}}
    spec:
      containers:
      - name: flaky
        command: ["@FLAKY@", "0.0.0.0:9080", "2"]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: refused, namespace: bookinfo}
spec:
  replicas: 1
  selector: {matchLabels: {app: refused}}
  template:
    metadata: {labels: {app: refused}}
    spec:
      containers:
      - {name: refused, command: ["sleep", "infinity"]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: half-dead, namespace: bookinfo}
spec:
  replicas: 1
  selector: {matchLabels: {app: half, version: dead}}
  template:
    metadata: {labels: {app: half, version: dead}}
    spec:
      containers:
      - {name: half, command: ["sleep", "infinity"]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: half-live, namespace: bookinfo}
spec:
  replicas: 1
  selector: {matchLabels: {app: half, version: live}}
  template:
    metadata: {labels: {app: half, version: live}}
    spec:
      containers:
      - {name: half, command: ["ambit", "echo", "--http-port", "9080"]}
---
apiVersion: v1
kind: Service
metadata: {name: flaky, namespace: bookinfo}
spec: {selector: {app: flaky}, ports: [{name: http, port: 9080, targetPort: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: refused, namespace: bookinfo}
spec: {selector: {app: refused}, ports: [{name: http, port: 9080, targetPort: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: half, namespace: bookinfo}
spec: {selector: {app: half}, ports: [{name: http, port: 9080, targetPort: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: grpc-fault, namespace: bookinfo}
spec: {selector: {app: ratings}, ports: [{name: grpc, port: 9080, targetPort: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: grpc-fault, namespace: bookinfo}
spec:
  hosts: [grpc-fault]
  http:
  - fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100.0}}}
    route: [{destination: {host: grpc-fault}}]
"#;

/// A VirtualService for `host` with [`RETRIES`] on its one route.
fn retry_vs(host: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {host}, namespace: bookinfo}}\n\
         spec:\n  hosts: [{host}]\n  http:\n  - route: [{{destination: {{host: {host}}}}}]\n{RETRIES}"
    )
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo")
}

fn networking(file: &str) -> Result<String> {
    let p = examples().join("networking").join(file);
    std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))
}

/// A copy of `examples/bookinfo` without its HTTPRoute (Gateway API routes win over a VirtualService for a
/// Service), plus the DestinationRules, `reviews` and `ratings` VirtualServices of `networking/` and the test's
/// backends.
fn manifests(dir: &Path) -> Result<PathBuf> {
    let src = examples();
    let dst = dir.join("bookinfo");
    std::fs::create_dir_all(&dst)?;
    for e in std::fs::read_dir(&src).with_context(|| format!("read {}", src.display()))? {
        let p = e?.path();
        let name = p.file_name().context("file name")?.to_owned();
        if p.extension().is_some_and(|x| x == "yaml") && name != "reviews-route.yaml" {
            std::fs::copy(&p, dst.join(name))?;
        }
    }
    for f in [
        "destination-rule-all.yaml",
        "virtual-service-reviews-test-v2.yaml",
    ] {
        std::fs::write(dst.join(f), networking(f)?)?;
    }
    std::fs::write(
        dst.join(RATINGS_VS),
        networking("virtual-service-ratings-test-delay.yaml")?,
    )?;
    let retries = networking("virtual-service-ratings-retries.yaml")?;
    ensure!(
        retries.contains(RETRIES),
        "virtual-service-ratings-retries.yaml no longer has Istio's retry case:\n{retries}"
    );
    let mut backends = BACKENDS.replace("@FLAKY@", env!("CARGO_BIN_EXE_e2e-flaky"));
    for host in ["flaky", "refused", "half"] {
        backends.push_str(&retry_vs(host));
    }
    std::fs::write(dst.join("resilience-backends.yaml"), backends)?;
    Ok(dst)
}

/// One response as curl reported it.
#[derive(Debug)]
struct Reply {
    code: u16,
    /// `%{time_total}`, seconds.
    secs: f64,
    body: String,
}

impl Reply {
    /// The pod that answered (`pod=` in the body of `ambit echo` and `e2e-flaky`).
    fn pod(&self) -> Option<&str> {
        self.body.lines().find_map(|l| l.strip_prefix("pod="))
    }
}

const MARK: &str = "##reply ";

/// `count` requests to `url` in one `curl` (one keep-alive connection), whatever their status.
fn curl(mesh: &LocalMesh, headers: &[&str], url: &str, count: usize) -> Result<Vec<Reply>> {
    let write_out = format!("\n{MARK}%{{http_code}} %{{time_total}}\n");
    let mut argv = vec!["curl", "-sS", "--max-time", "30", "-w", &write_out];
    for h in headers {
        argv.extend(["-H", h]);
    }
    argv.extend(std::iter::repeat_n(url, count));
    let out = mesh.exec(NS, SLEEP, &argv)?;
    ensure!(
        out.status.success(),
        "curl {url} x{count}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let mut replies = Vec::new();
    let mut body = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(m) = line.strip_prefix(MARK) else {
            body.push_str(line);
            body.push('\n');
            continue;
        };
        let (code, secs) = m.split_once(' ').context("curl -w output")?;
        replies.push(Reply {
            code: code.parse()?,
            secs: secs.parse()?,
            body: std::mem::take(&mut body),
        });
    }
    ensure!(
        replies.len() == count,
        "{} replies for {count} requests",
        replies.len()
    );
    Ok(replies)
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

/// Waits until the waypoint's count for `labels` has grown by `want` since `before`, then requires exactly that
/// (metrics are recorded as a response completes, possibly just after curl has it).
fn expect_counted(
    mesh: &LocalMesh,
    wp: &PodInfo,
    labels: &[(&str, &str)],
    before: f64,
    want: f64,
) -> Result<()> {
    let now = poll(
        &format!("the waypoint counted {want} {labels:?}"),
        WAIT,
        || {
            let now = waypoint_requests(mesh, wp, labels)?;
            Ok((now - before >= want).then_some(now))
        },
    )?;
    ensure!(
        now - before == want,
        "the waypoint counted {} requests with {labels:?}, want {want}",
        now - before
    );
    Ok(())
}

fn service_labels<'a>(service: &'a str, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut l = vec![("reporter", "waypoint"), ("destination_service", service)];
    l.extend_from_slice(more);
    l
}

/// The controller's computed status of `kind` objects in the namespace, by `<kind>/<ns>/<name>`.
fn controller_status(mesh: &LocalMesh, kind: &str) -> Result<serde_json::Map<String, Value>> {
    let text = mesh.get_in(
        NET_NS,
        &format!("{CONTROLLER_STATUS}?kind={kind}&namespace={NS}"),
    )?;
    match serde_json::from_str(&text)? {
        Value::Object(m) => Ok(m),
        other => bail!("{CONTROLLER_STATUS} for {kind}: {other}"),
    }
}

/// Every named object is `Accepted=True` (reason `Accepted`: nothing dropped) and `Reconciled=True` (applied to
/// a waypoint).
fn expect_applied(mesh: &LocalMesh, kind: &str, names: &[&str]) -> Result<()> {
    poll(
        &format!("{kind} {names:?} accepted and applied"),
        WAIT,
        || {
            let status = controller_status(mesh, kind)?;
            for n in names {
                let key = format!("{kind}/{NS}/{n}");
                let obj =
                    serde_json::json!({ "status": status.get(&key).cloned().unwrap_or_default() });
                let reason = obj["status"]["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Accepted"))
                    .map(|c| c["reason"].clone());
                if condition(&obj, "Accepted") != Some("True")
                    || reason != Some(Value::from("Accepted"))
                    || condition(&obj, "Reconciled") != Some("True")
                {
                    bail!("{key}: {}", obj["status"]);
                }
            }
            Ok(Some(()))
        },
    )
}

#[test]
fn bookinfo_virtual_service_and_destination_rule_through_the_waypoint() {
    e2e_test("local-waypoint-resilience", |dir| {
        let manifests = manifests(dir.path())?;
        run_on_mesh(
            dir.path(),
            &manifests,
            2,
            |mesh| scenario(mesh, dir.path()),
            dumps,
        )
    });
}

/// The waypoint's `/config_dump` and the controller's Istio statuses (for failure reports).
fn dumps(mesh: &LocalMesh) -> String {
    let mut out = String::new();
    for kind in ["virtualservice", "destinationrule"] {
        match controller_status(mesh, kind) {
            Ok(s) => out.push_str(&format!(
                "==== controller {kind} status ====\n{}\n",
                Value::Object(s)
            )),
            Err(e) => out.push_str(&format!("{kind} status: {e:#}\n")),
        }
    }
    match mesh.pods(NS, "waypoint") {
        Ok(p) if !p.is_empty() => {
            match mesh.get_in(&p[0].netns, "http://127.0.0.1:15000/config_dump") {
                Ok(d) => out.push_str(&format!("==== waypoint /config_dump ====\n{d}")),
                Err(e) => out.push_str(&format!("waypoint /config_dump: {e:#}")),
            }
        }
        other => out.push_str(&format!("no waypoint pod: {other:?}")),
    }
    out
}

fn scenario(mesh: &LocalMesh, dir: &Path) -> Result<()> {
    let wp = poll("the waypoint pod", WAYPOINT_UP, || {
        Ok(mesh.pods(NS, "waypoint")?.pop())
    })?;
    poll("Service ratings WaypointBound=True", WAIT, || {
        let svc = mesh.get("service", NS, "ratings")?;
        Ok((condition(&svc, "istio.io/WaypointBound") == Some("True")).then_some(()))
    })?;
    expect_applied(mesh, "destinationrule", &["reviews", "ratings"])?;
    expect_applied(
        mesh,
        "virtualservice",
        &[
            "reviews",
            "ratings",
            "flaky",
            "refused",
            "half",
            "grpc-fault",
        ],
    )?;
    subsets(mesh)?;
    delay(mesh, &wp)?;
    abort(mesh, &wp)?;
    retries(mesh, &wp)?;
    grpc_abort(mesh, &wp, dir)?;
    Ok(())
}

/// The reviews version (`v1`..`v3`) of each reviews pod.
fn reviews_versions(mesh: &LocalMesh) -> Result<BTreeMap<String, String>> {
    let mut pods = BTreeMap::new();
    for v in ["v1", "v2", "v3"] {
        for p in mesh.pods(NS, &format!("reviews-{v}"))? {
            pods.insert(p.name, v.to_owned());
        }
    }
    ensure!(pods.len() == 3, "one pod per reviews version: {pods:?}");
    Ok(pods)
}

/// The versions that answered `replies` (each must be a 200 from a reviews pod that went through L7).
fn versions(pods: &BTreeMap<String, String>, replies: &[Reply]) -> Result<BTreeMap<String, usize>> {
    let mut by = BTreeMap::new();
    for r in replies {
        ensure!(r.code == 200, "reviews answered {}: {}", r.code, r.body);
        let e = Echo::parse_all(&r.body).pop().context("no echo body")?;
        ensure!(
            e.headers.contains_key("x-request-id"),
            "a request to reviews skipped the waypoint: {e:?}"
        );
        let v = pods
            .get(&e.pod)
            .with_context(|| format!("{} is not a reviews pod", e.pod))?;
        *by.entry(v.clone()).or_default() += 1;
    }
    Ok(by)
}

/// (1) DestinationRule subsets + VirtualService `reviews`: jason → v2, everyone else → v1. Without the rules the
/// Service balances over three versions, so 20 requests all on one version by chance is (1/3)^19.
fn subsets(mesh: &LocalMesh) -> Result<()> {
    let pods = reviews_versions(mesh)?;
    let only = |by: &BTreeMap<String, usize>, v: &str| by.len() == 1 && by.contains_key(v);
    poll("VirtualService reviews in effect", WAIT, || {
        let j = versions(&pods, &curl(mesh, &[JASON], REVIEWS, 3)?)?;
        let o = versions(&pods, &curl(mesh, &[], REVIEWS, 3)?)?;
        Ok((only(&j, "v2") && only(&o, "v1")).then_some(()))
    })?;
    let jason = versions(&pods, &curl(mesh, &[JASON], REVIEWS, 20)?)?;
    ensure!(
        only(&jason, "v2"),
        "end-user: jason reached {jason:?}, want only v2"
    );
    let others = versions(&pods, &curl(mesh, &["end-user: someone"], REVIEWS, 20)?)?;
    ensure!(
        only(&others, "v1"),
        "other users reached {others:?}, want only v1"
    );
    Ok(())
}

/// The ratings pod's name.
fn ratings_pod(mesh: &LocalMesh) -> Result<String> {
    Ok(mesh
        .pods(NS, "ratings-v1")?
        .pop()
        .context("ratings-v1 pod")?
        .name)
}

/// (2) `fixedDelay: 1s` for jason: each of jason's requests takes at least the delay (the waypoint waits before
/// sending on; an upper bound only catches a hang), every other user's takes less than the delay (any delayed
/// request would take at least that long, so this is the most generous bound that still tells them apart), and
/// the waypoint counts exactly jason's requests with flag `DI`.
fn delay(mesh: &LocalMesh, wp: &PodInfo) -> Result<()> {
    let ratings = ratings_pod(mesh)?;
    poll("the ratings delay in effect", WAIT, || {
        Ok(curl(mesh, &[JASON], RATINGS, 1)?
            .pop()
            .filter(|r| r.code == 200 && r.secs >= DELAY_SECS))
    })?;
    let svc = "ratings.bookinfo.svc.cluster.local";
    let di = service_labels(svc, &[("response_flags", "DI"), ("response_code", "200")]);
    let before = waypoint_requests(mesh, wp, &di)?;
    let jason = curl(mesh, &[JASON], RATINGS, 3)?;
    for r in &jason {
        ensure!(
            r.code == 200 && r.pod() == Some(ratings.as_str()),
            "delayed request: {} {}",
            r.code,
            r.body
        );
        ensure!(
            (DELAY_SECS..DELAY_SECS + 10.0).contains(&r.secs),
            "jason's request took {:.3} s with a {DELAY_SECS} s delay",
            r.secs
        );
    }
    for r in curl(mesh, &["end-user: someone"], RATINGS, 10)? {
        ensure!(r.code == 200, "undelayed request: {} {}", r.code, r.body);
        ensure!(
            r.secs < DELAY_SECS,
            "another user's request took {:.3} s: delayed too",
            r.secs
        );
    }
    expect_counted(mesh, wp, &di, before, jason.len() as f64)
}

/// (3) Abort 418 for jason: at 100 % every one of jason's requests (flag `FI`, counted exactly), none of the
/// others'; at 50 % over 100 requests between 30 and 70. The count is binomial(100, 0.5): standard deviation 5,
/// so ±20 is 4 sd (a correct 50 % fails it about once in 16,000 runs) while 0 %, 100 % or a per-connection
/// choice (one curl is one connection) fail it every time.
fn abort(mesh: &LocalMesh, wp: &PodInfo) -> Result<()> {
    let path = mesh.manifests.join(RATINGS_VS);
    let full = networking("virtual-service-ratings-test-abort.yaml")?;
    std::fs::write(&path, &full)?;
    poll("the ratings abort in effect", WAIT, || {
        Ok(curl(mesh, &[JASON], RATINGS, 1)?
            .pop()
            .filter(|r| r.code == 418))
    })?;
    let svc = "ratings.bookinfo.svc.cluster.local";
    let fi = service_labels(svc, &[("response_flags", "FI"), ("response_code", "418")]);
    let before = waypoint_requests(mesh, wp, &fi)?;
    let jason = curl(mesh, &[JASON], RATINGS, 10)?;
    let codes: Vec<u16> = jason.iter().map(|r| r.code).collect();
    ensure!(
        codes.iter().all(|c| *c == 418),
        "abort at 100 %: jason got {codes:?}"
    );
    let ratings = ratings_pod(mesh)?;
    for r in curl(mesh, &["end-user: someone"], RATINGS, 10)? {
        ensure!(
            r.code == 200 && r.pod() == Some(ratings.as_str()),
            "another user got {} {}",
            r.code,
            r.body
        );
    }
    expect_counted(mesh, wp, &fi, before, 10.0)?;

    let half = full.replace("value: 100.0", "value: 50.0");
    ensure!(half != full, "the abort example changed shape");
    std::fs::write(&path, half)?;
    poll("the 50 % abort in effect", WAIT, || {
        Ok(curl(mesh, &[JASON], RATINGS, 5)?
            .into_iter()
            .find(|r| r.code == 200))
    })?;
    let before = waypoint_requests(mesh, wp, &fi)?;
    let replies = curl(mesh, &[JASON], RATINGS, 100)?;
    let aborted = replies.iter().filter(|r| r.code == 418).count();
    ensure!(
        replies
            .iter()
            .all(|r| r.code == 418 || (r.code == 200 && r.pod() == Some(ratings.as_str()))),
        "abort at 50 %: answers other than 418 and ratings' 200: {:?}",
        replies.iter().map(|r| r.code).collect::<Vec<_>>()
    );
    ensure!(
        (30..=70).contains(&aborted),
        "abort at 50 %: {aborted} of 100 requests aborted (want 30..=70)"
    );
    expect_counted(mesh, wp, &fi, before, aborted as f64)
}

/// (4) Istio's retry case. `flaky` fails every request twice: each answer is 200 from the third attempt
/// (`attempt=3`, the same request id seen three times), and the waypoint counts one 200 per request, no 503.
/// `refused` listens on nothing: 503 with `UF,URX` after the retries. `half` has a dead and a live endpoint:
/// every request succeeds from the live one (a retry goes to an endpoint not yet tried).
fn retries(mesh: &LocalMesh, wp: &PodInfo) -> Result<()> {
    let flaky_svc = "flaky.bookinfo.svc.cluster.local";
    let ok = service_labels(flaky_svc, &[("response_code", "200")]);
    let all = service_labels(flaky_svc, &[]);
    let (ok_before, all_before) = (
        waypoint_requests(mesh, wp, &ok)?,
        waypoint_requests(mesh, wp, &all)?,
    );
    let flaky = curl(mesh, &[], "http://flaky.bookinfo:9080/", 5)?;
    for r in &flaky {
        ensure!(
            r.code == 200 && r.body.contains("attempt=3\n"),
            "flaky backend through retries: {} {}",
            r.code,
            r.body
        );
    }
    expect_counted(mesh, wp, &ok, ok_before, 5.0)?;
    ensure!(
        waypoint_requests(mesh, wp, &all)? - all_before == 5.0,
        "the waypoint counted retries as requests, or a failure, for flaky"
    );

    let refused_svc = "refused.bookinfo.svc.cluster.local";
    let uf = service_labels(
        refused_svc,
        &[("response_code", "503"), ("response_flags", "UF,URX")],
    );
    let before = waypoint_requests(mesh, wp, &uf)?;
    for r in curl(mesh, &[], "http://refused.bookinfo:9080/", 3)? {
        ensure!(
            r.code == 503,
            "refused backend answered {}: {}",
            r.code,
            r.body
        );
    }
    expect_counted(mesh, wp, &uf, before, 3.0)?;

    let live = mesh
        .pods(NS, "half-live")?
        .pop()
        .context("half-live pod")?
        .name;
    let dead = mesh.pods(NS, "half-dead")?;
    ensure!(dead.len() == 1, "half-dead pods: {dead:?}");
    for r in curl(mesh, &[], "http://half.bookinfo:9080/", 20)? {
        ensure!(
            r.code == 200 && r.pod() == Some(live.as_str()),
            "one dead, one live endpoint: {} {}",
            r.code,
            r.body
        );
    }
    Ok(())
}

/// (5) A gRPC abort: `grpcStatus: UNAVAILABLE` answers a gRPC request trailers-only with `grpc-status: 14` (HTTP
/// 200, as gRPC requires), flag `FI`. The client is `grpcurl` when installed, else curl speaking gRPC's wire
/// format (HTTP/2 prior knowledge, `application/grpc`, one length-prefixed empty message) — the waypoint answers
/// without an upstream request, so no gRPC server is needed.
fn grpc_abort(mesh: &LocalMesh, wp: &PodInfo, dir: &Path) -> Result<()> {
    let svc = "grpc-fault.bookinfo.svc.cluster.local";
    let fi = service_labels(svc, &[("response_flags", "FI")]);
    let before = waypoint_requests(mesh, wp, &fi)?;
    let url = "http://grpc-fault.bookinfo:9080/grpc.health.v1.Health/Check";
    if which("grpcurl") {
        let out = mesh.exec(
            NS,
            SLEEP,
            &[
                "grpcurl",
                "-plaintext",
                "-max-time",
                "10",
                "grpc-fault.bookinfo:9080",
                "grpc.health.v1.Health/Check",
            ],
        )?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            !out.status.success() && text.contains("Unavailable"),
            "grpcurl through the gRPC abort: {text}"
        );
        // grpcurl may ask the reflection service first: at least one aborted call.
        return poll("the waypoint counted the gRPC abort", WAIT, || {
            Ok((waypoint_requests(mesh, wp, &fi)? > before).then_some(()))
        });
    } else {
        eprintln!(
            "NOTE grpcurl is not installed: checking the gRPC abort with curl speaking the gRPC wire format"
        );
        let frame = dir.join("empty.grpc");
        std::fs::write(&frame, [0u8; 5])?;
        let data = format!("@{}", frame.display());
        let out = mesh.exec(
            NS,
            SLEEP,
            &[
                "curl",
                "-sS",
                "--max-time",
                "10",
                "--http2-prior-knowledge",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                "--data-binary",
                &data,
                url,
            ],
        )?;
        let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        ensure!(
            out.status.success()
                && head.starts_with("http/2 200")
                && head.lines().any(|l| l.trim() == "grpc-status: 14")
                && head.contains("content-type: application/grpc"),
            "gRPC abort: {head}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    expect_counted(mesh, wp, &fi, before, 1.0)
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}
