//! Which traffic a waypoint gets, end to end in `ambit local`: workload waypoints (`waypoint-for: workload` and a
//! pod's `istio.io/use-waypoint`), a per-service-account waypoint (`istio.io/for-service-account`) next to a
//! namespace waypoint, `use-waypoint: none` on a pod, waypoints that are invalid or stop being ready, what crosses
//! the pod network meanwhile, and the identity the destination ztunnel sees (with a DENY on it, applied live).
//!
//! The "went through L7" marker is upstream's (`TestServices`/`TestPodIP`): the `x-request-id` that `ambit echo`
//! echoes (the waypoint adds it, a direct path has none), plus the address the backend saw the request come from
//! and the waypoint's own `istio_requests_total`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use ambit_e2e::capture::Capture;
use ambit_e2e::e2e_test;
use ambit_e2e::local::{Echo, LocalMesh, NET_NS, PodInfo, WAIT, condition, run_on_mesh};
use ambit_e2e::pcap::{self, TcpSegment};
use ambit_e2e::prom;
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The client's namespace: a namespace waypoint for everything (`ns-wp`, `waypoint-for: all`) and a waypoint for
/// the pods running as `server-b` (`sa-wp`).
const WP: &str = "wp";
/// No namespace waypoint: a workload waypoint (`wl-wp`), an invalid Gateway (`broken`) and a service waypoint that
/// the test stops (`cold-wp`).
const WL: &str = "wl";
const CLIENT: &str = "deploy/client";
/// The waypoint starts after the controller deploys it, then needs its certificate and config.
const WAYPOINT_UP: Duration = Duration::from_secs(60);
/// Readiness is probed every 5 s once ready; then the controller recomputes and the client's ztunnel hears of it.
const UNREADY: Duration = Duration::from_secs(45);
/// In every request's path, and never to be seen in clear on the pod network.
const SECRET: &str = "secret-path-l7";

const NAMESPACES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: wp, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: ns-wp}}
---
apiVersion: v1
kind: Namespace
metadata: {name: wl, labels: {istio.io/dataplane-mode: ambient}}
"#;

const GATEWAYS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ns-wp, namespace: wp, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: sa-wp
  namespace: wp
  annotations: {istio.io/for-service-account: server-b}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wl-wp, namespace: wl, labels: {istio.io/waypoint-for: workload}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: broken, namespace: wl, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
  - {name: http, port: 80, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: cold-wp, namespace: wl, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#;

/// A Deployment of one `ambit echo` on 8080 running as service account `name`, with extra pod labels.
fn echo_deployment(ns: &str, name: &str, extra_labels: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}{extra_labels}}}}}
    spec:
      serviceAccountName: {name}
      containers:
      - name: echo
        command: [ambit, echo, --http-port, "8080"]
        ports: [{{name: http, containerPort: 8080}}]
"#
    )
}

/// A Service on port 80 for the pods labelled `app: <app>`, with extra labels.
fn service(ns: &str, name: &str, app: &str, labels: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}, labels: {{svc: {name}{labels}}}}}
spec:
  selector: {{app: {app}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
    )
}

/// The apps; `server_e_labels` are extra labels of the `server-e` Service.
fn apps_with(server_e_labels: &str) -> String {
    let client = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: wp}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      serviceAccountName: client
      containers: [{name: sleep, command: [sleep, infinity]}]
"#;
    // A bare pod that opts out of its namespace's `waypoint-for: all` waypoint.
    let opt_out = r#"
apiVersion: v1
kind: Pod
metadata:
  name: opt-out
  namespace: wp
  labels: {app: opt-out, tier: backend, istio.io/use-waypoint: none}
spec:
  serviceAccountName: opt-out
  containers:
  - name: echo
    command: [ambit, echo, --http-port, "8080"]
    ports: [{name: http, containerPort: 8080}]
"#;
    [
        client.to_owned(),
        echo_deployment(WP, "server-a", ", tier: backend"),
        service(WP, "server-a", "server-a", ""),
        echo_deployment(WP, "server-b", ""),
        service(WP, "server-b", "server-b", ""),
        opt_out.to_owned(),
        // The pods (through the Deployment's template) ask for the workload waypoint; their Service asks for none.
        echo_deployment(WL, "server-c", ", istio.io/use-waypoint: wl-wp"),
        service(WL, "server-c", "server-c", ""),
        echo_deployment(WL, "server-d", ""),
        service(
            WL,
            "server-d",
            "server-d",
            ", istio.io/use-waypoint: broken",
        ),
        service(
            WL,
            "server-e",
            "server-d",
            &format!(", istio.io/use-waypoint: cold-wp{server_e_labels}"),
        ),
    ]
    .join("---\n")
}

fn apps() -> String {
    apps_with("")
}

/// DENY the namespace waypoint's identity at the `tier: backend` pods (server-a and opt-out): enforced by their
/// ztunnel, which sees the waypoint, not the client, as the peer.
const DENY_WAYPOINT: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-waypoint, namespace: wp}
spec:
  selector: {matchLabels: {tier: backend}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/wp/sa/ns-wp"]}}]}]
"#;

fn write_manifests(dir: &Path) -> Result<std::path::PathBuf> {
    let m = dir.join("manifests");
    std::fs::create_dir_all(&m)?;
    std::fs::write(m.join("namespaces.yaml"), NAMESPACES)?;
    std::fs::write(m.join("gateways.yaml"), GATEWAYS)?;
    std::fs::write(m.join("apps.yaml"), apps())?;
    Ok(m)
}

trait Hops {
    fn through(&self, wp: &PodInfo) -> bool;
    fn direct_from(&self, client: &PodInfo) -> bool;
}

impl Hops for Echo {
    /// Through waypoint `wp`: L7 (an `x-request-id`) and the waypoint connected to the backend.
    fn through(&self, wp: &PodInfo) -> bool {
        self.headers.contains_key("x-request-id") && self.peer_ip() == wp.ip
    }

    /// Straight from `client`: no L7, and the client's own address.
    fn direct_from(&self, client: &PodInfo) -> bool {
        !self.headers.contains_key("x-request-id") && self.peer_ip() == client.ip
    }
}

fn echoes(body: &str) -> Vec<Echo> {
    Echo::parse_all(body)
}

/// `count` requests from the client to `base` + the secret path, in one curl (one connection); all must be 200.
fn curl_many(mesh: &LocalMesh, base: &str, count: usize) -> Result<Vec<Echo>> {
    let url = format!("{base}/{SECRET}");
    let mut argv = vec![
        "curl",
        "-sS",
        "--max-time",
        "20",
        "-w",
        "code=%{http_code}\n",
    ];
    argv.extend(std::iter::repeat_n(url.as_str(), count));
    let out = mesh.exec(WP, CLIENT, &argv)?;
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

/// The HTTP status of one request from the client (`000` when there was no response).
fn status_code(mesh: &LocalMesh, base: &str) -> Result<String> {
    let url = format!("{base}/{SECRET}");
    let out = mesh.exec(
        WP,
        CLIENT,
        &[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Requests to `base` that all went through `wp` and reached one of `backends`.
fn expect_through(
    mesh: &LocalMesh,
    base: &str,
    count: usize,
    wp: &PodInfo,
    backends: &[&PodInfo],
) -> Result<()> {
    for e in curl_many(mesh, base, count)? {
        ensure!(
            e.through(wp),
            "{base}: not through waypoint {} ({}): {e:?}",
            wp.name,
            wp.ip
        );
        ensure!(
            backends.iter().any(|b| b.name == e.pod),
            "{base} answered by {}",
            e.pod
        );
    }
    Ok(())
}

/// Requests to `base` that all went straight from the client to `backend`.
fn expect_direct(
    mesh: &LocalMesh,
    base: &str,
    count: usize,
    client: &PodInfo,
    backend: &PodInfo,
) -> Result<()> {
    for e in curl_many(mesh, base, count)? {
        ensure!(
            e.direct_from(client),
            "{base}: not direct from the client ({}): {e:?}",
            client.ip
        );
        ensure!(e.pod == backend.name, "{base} answered by {}", e.pod);
    }
    Ok(())
}

/// `istio_requests_total{reporter="waypoint"}` at a waypoint, summed over the samples with `labels`.
fn waypoint_requests(mesh: &LocalMesh, wp: &PodInfo, labels: &[(&str, &str)]) -> Result<f64> {
    let text = mesh.get_in(&wp.netns, "http://127.0.0.1:15020/metrics")?;
    let want = [&[("reporter", "waypoint")], labels].concat();
    Ok(prom::sum(
        &prom::parse(&text),
        "istio_requests_total",
        &want,
    ))
}

/// Waits until each waypoint has counted its expected number of requests since `before`, then requires the counts
/// exact.
fn expect_counts(
    mesh: &LocalMesh,
    what: &str,
    want: &[(&PodInfo, f64, f64)], // (waypoint, count before, expected increase)
) -> Result<()> {
    let now = poll(&format!("the waypoints counted {what}"), WAIT, || {
        let now: Vec<f64> = want
            .iter()
            .map(|(wp, _, _)| waypoint_requests(mesh, wp, &[]))
            .collect::<Result<_>>()?;
        Ok(want
            .iter()
            .zip(&now)
            .all(|((_, before, n), now)| now - before >= *n)
            .then_some(now))
    })?;
    for ((wp, before, n), now) in want.iter().zip(now) {
        ensure!(
            now - before == *n,
            "{what}: waypoint {} counted {} requests, want {n}",
            wp.name,
            now - before
        );
    }
    Ok(())
}

/// The `istio.io/WaypointBound` condition of an object: (status, reason, message).
fn waypoint_bound(
    mesh: &LocalMesh,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<(String, String, String)> {
    let obj = mesh.get(kind, ns, name)?;
    let c = obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "istio.io/WaypointBound")
        .with_context(|| format!("{kind} {ns}/{name} has no WaypointBound: {}", obj["status"]))?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    Ok((s("status"), s("reason"), s("message")))
}

fn wait_bound(
    mesh: &LocalMesh,
    (kind, ns, name): (&str, &str, &str),
    waypoint: &str,
    timeout: Duration,
) -> Result<()> {
    let (_, _, message) = poll(
        &format!("{kind} {ns}/{name} WaypointBound=True"),
        timeout,
        || {
            Ok(waypoint_bound(mesh, kind, ns, name)
                .ok()
                .filter(|(s, _, _)| s == "True"))
        },
    )?;
    ensure!(
        message.contains(&format!("{ns}/{waypoint}")),
        "{kind} {ns}/{name} bound, but not to {waypoint}: {message}"
    );
    Ok(())
}

/// A waypoint process stopped with SIGSTOP; continued when dropped, so a failing test leaves it running.
struct Frozen(Pid);

impl Frozen {
    fn freeze(pid: i32) -> Result<Frozen> {
        kill(Pid::from_raw(pid), Signal::SIGSTOP)?;
        Ok(Frozen(Pid::from_raw(pid)))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

#[test]
fn waypoint_binding_workload_service_account_opt_out_not_ready_wire_and_identity() {
    e2e_test("local-waypoint-binding", |dir| {
        let manifests = write_manifests(dir.path())?;
        run_on_mesh(
            dir.path(),
            &manifests,
            2,
            |mesh| scenario(mesh, dir.path()),
            dumps,
        )
    });
}

/// Every waypoint's `/config_dump` and the controller's status (for failure reports).
fn dumps(mesh: &LocalMesh) -> String {
    let mut out = String::new();
    for (ns, gw) in [(WP, "ns-wp"), (WP, "sa-wp"), (WL, "wl-wp"), (WL, "cold-wp")] {
        match mesh.pods(ns, gw) {
            Ok(p) if !p.is_empty() => {
                let d = mesh
                    .get_in(&p[0].netns, "http://127.0.0.1:15000/config_dump")
                    .unwrap_or_else(|e| format!("{e:#}"));
                out.push_str(&format!("==== waypoint {ns}/{gw} /config_dump ====\n{d}\n"));
            }
            other => out.push_str(&format!("no waypoint pod {ns}/{gw}: {other:?}\n")),
        }
    }
    let status = mesh
        .get_in(NET_NS, "http://127.0.0.1:15014/debug/status")
        .or_else(|_| mesh.get_in(NET_NS, "http://10.244.0.1:15014/debug/status"))
        .unwrap_or_else(|e| format!("{e:#}"));
    out.push_str(&format!("==== controller /debug/status ====\n{status}\n"));
    out
}

fn ip(a: &str) -> Ipv4Addr {
    a.parse().expect("an IPv4 pod address")
}

/// Streams (one direction of one connection) between pods that carry `needle` in clear.
fn plaintext_streams(segments: &[TcpSegment], pods: &[Ipv4Addr], needle: &[u8]) -> Vec<String> {
    let mut streams: BTreeMap<(SocketAddrV4, SocketAddrV4), Vec<u8>> = BTreeMap::new();
    for s in segments
        .iter()
        .filter(|s| pods.contains(s.src.ip()) && pods.contains(s.dst.ip()))
    {
        streams
            .entry((s.src, s.dst))
            .or_default()
            .extend_from_slice(&s.payload);
    }
    streams
        .iter()
        .filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle))
        .map(|((s, d), _)| format!("{s} -> {d}"))
        .collect()
}

fn scenario(mesh: &LocalMesh, dir: &Path) -> Result<()> {
    // Everything that follows crosses the pod network while tcpdump watches it (case 5), from the first request
    // on, so every HBONE connection's handshake is in the capture.
    let capture = Capture::start_in(NET_NS, "br0", dir, "pod-network")?;

    let client = mesh.one_pod(WP, "client", WAYPOINT_UP)?;
    let server_a = mesh.one_pod(WP, "server-a", WAYPOINT_UP)?;
    let server_b = mesh.one_pod(WP, "server-b", WAYPOINT_UP)?;
    let opt_out = mesh.one_pod(WP, "opt-out", WAYPOINT_UP)?;
    let server_c = mesh.one_pod(WL, "server-c", WAYPOINT_UP)?;
    let server_d = mesh.one_pod(WL, "server-d", WAYPOINT_UP)?;
    let ns_wp = mesh.one_pod(WP, "ns-wp", WAYPOINT_UP)?;
    let sa_wp = mesh.one_pod(WP, "sa-wp", WAYPOINT_UP)?;
    let wl_wp = mesh.one_pod(WL, "wl-wp", WAYPOINT_UP)?;
    let cold_wp = mesh.one_pod(WL, "cold-wp", WAYPOINT_UP)?;
    for p in [
        &client, &server_a, &server_b, &opt_out, &server_c, &server_d,
    ] {
        ensure!(p.captured, "{} is not captured", p.name);
    }
    ensure!(
        mesh.pods(WL, "broken")?.is_empty(),
        "the invalid Gateway was deployed"
    );

    // Bound, with the waypoint the status names (istiod's wording: "Successfully attached to waypoint ns/name").
    wait_bound(mesh, ("service", WP, "server-a"), "ns-wp", WAIT)?;
    wait_bound(mesh, ("service", WP, "server-b"), "sa-wp", WAIT)?;
    wait_bound(mesh, ("service", WL, "server-e"), "cold-wp", WAIT)?;
    wait_bound(mesh, ("pod", WP, &server_a.name), "ns-wp", WAIT)?;
    wait_bound(mesh, ("pod", WP, &server_b.name), "sa-wp", WAIT)?;
    wait_bound(mesh, ("pod", WL, &server_c.name), "wl-wp", WAIT)?;

    let svc_a = format!("http://{}", mesh.vip(WP, "server-a")?);
    let svc_b = "http://server-b.wp.svc.cluster.local".to_owned();
    let svc_c = "http://server-c.wl".to_owned();
    let svc_d = "http://server-d.wl".to_owned();
    let svc_e = "http://server-e.wl".to_owned();
    let pod_url = |p: &PodInfo| format!("http://{}:8080", p.ip);

    // Clients' ztunnels learn of bindings asynchronously: wait for the first request through each waypoint.
    for (url, wp) in [
        (svc_a.clone(), &ns_wp),
        (svc_b.clone(), &sa_wp),
        (pod_url(&server_c), &wl_wp),
        (svc_e.clone(), &cold_wp),
    ] {
        poll(&format!("{url} through {}", wp.name), WAIT, || {
            Ok(curl_many(mesh, &url, 1)?.pop().filter(|e| e.through(wp)))
        })?;
    }

    let count = |wp: &PodInfo| waypoint_requests(mesh, wp, &[]);

    // (2) The service-account waypoint takes both service- and pod-addressed traffic to the pods running as
    // server-b, ahead of the namespace waypoint, which keeps the Service whose pods run as server-a.
    let (ns0, sa0) = (count(&ns_wp)?, count(&sa_wp)?);
    expect_through(mesh, &svc_b, 5, &sa_wp, &[&server_b])?;
    expect_through(mesh, &pod_url(&server_b), 5, &sa_wp, &[&server_b])?;
    expect_through(mesh, &svc_a, 5, &ns_wp, &[&server_a])?;
    expect_counts(
        mesh,
        "server-b (10) and server-a (5)",
        &[(&sa_wp, sa0, 10.0), (&ns_wp, ns0, 5.0)],
    )?;
    let to_b = [
        ("destination_workload", "server-b"),
        ("source_principal", "spiffe://cluster.local/ns/wp/sa/client"),
        ("response_code", "200"),
    ];
    ensure!(
        waypoint_requests(mesh, &sa_wp, &to_b)? >= 10.0,
        "sa-wp has no request metric with {to_b:?}"
    );

    // (1) The workload waypoint takes pod-addressed traffic to server-c; its Service has no waypoint, so
    // service-addressed traffic to the same pod goes straight to it.
    let wl0 = count(&wl_wp)?;
    expect_through(mesh, &pod_url(&server_c), 3, &wl_wp, &[&server_c])?;
    expect_direct(mesh, &svc_c, 3, &client, &server_c)?;
    expect_counts(mesh, "server-c by pod IP (3)", &[(&wl_wp, wl0, 3.0)])?;

    // (3) `use-waypoint: none` on a pod opts it out of the namespace's `waypoint-for: all` waypoint (pod IP:
    // direct); a pod of the same namespace without it is reached by pod IP through the namespace waypoint.
    let ns0 = count(&ns_wp)?;
    expect_direct(mesh, &pod_url(&opt_out), 3, &client, &opt_out)?;
    expect_through(mesh, &pod_url(&server_a), 3, &ns_wp, &[&server_a])?;
    expect_counts(mesh, "server-a by pod IP (3)", &[(&ns_wp, ns0, 3.0)])?;
    let opt_out_obj = mesh.get("pod", WP, "opt-out")?;
    ensure!(
        condition(&opt_out_obj, "istio.io/WaypointBound") != Some("True"),
        "the opted-out pod is bound: {}",
        opt_out_obj["status"]
    );

    // (4) A Gateway with two listeners is refused (`UnsupportedProtocol`, on the listeners as istiod words it),
    // never deployed, and a Service asking for it is not bound (`WaypointIsNotReady`) and served directly.
    let broken = mesh.get("gateway", WL, "broken")?;
    let unsupported = broken["status"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["conditions"].as_array().into_iter().flatten())
        .any(|c| {
            c["type"] == "Accepted"
                && c["status"] == "False"
                && c["reason"] == "UnsupportedProtocol"
        });
    ensure!(
        unsupported,
        "Gateway wl/broken: no listener Accepted=False UnsupportedProtocol: {}",
        broken["status"]
    );
    ensure!(
        condition(&broken, "Accepted") == Some("False")
            && condition(&broken, "Programmed") != Some("True"),
        "Gateway wl/broken accepted or programmed: {}",
        broken["status"]
    );
    let (status, reason, message) = waypoint_bound(mesh, "service", WL, "server-d")?;
    ensure!(
        status == "False" && reason == "WaypointIsNotReady",
        "Service wl/server-d bound to the invalid Gateway: {status} {reason} {message}"
    );
    expect_direct(mesh, &svc_d, 3, &client, &server_d)?;

    // (5) On the wire: only mTLS to 15008 on every hop — client's ztunnel to each waypoint, each waypoint to the
    // server's ztunnel — and the client's ztunnel never reached a server behind a waypoint by itself.
    let segments = capture.stop()?;
    for (x, y) in [
        (&client, &ns_wp),
        (&ns_wp, &server_a),
        (&client, &sa_wp),
        (&sa_wp, &server_b),
        (&client, &wl_wp),
        (&wl_wp, &server_c),
        (&client, &opt_out),
        (&client, &server_d),
    ] {
        pcap::summarise(&segments, ip(&x.ip), ip(&y.ip), &[SECRET.as_bytes()])
            .check_only_hbone()
            .with_context(|| format!("wire between {} and {}", x.name, y.name))?;
    }
    for server in [&server_a, &server_b] {
        let s = pcap::summarise(&segments, ip(&client.ip), ip(&server.ip), &[]);
        ensure!(
            s.segments == 0,
            "{} segments straight between the client and {} (its traffic has a waypoint)",
            s.segments,
            server.name
        );
    }
    let pods: Vec<Ipv4Addr> = [
        &client, &server_a, &server_b, &opt_out, &server_c, &server_d, &ns_wp, &sa_wp, &wl_wp,
        &cold_wp,
    ]
    .iter()
    .map(|p| ip(&p.ip))
    .collect();
    let clear = plaintext_streams(&segments, &pods, SECRET.as_bytes());
    ensure!(
        clear.is_empty(),
        "{SECRET:?} in clear on the pod network: {clear:?}"
    );

    // (6) The destination ztunnel sees the waypoint's identity, never the client's, for server-a and server-b.
    let dest_metrics = |p: &PodInfo| -> Result<Vec<prom::Sample>> {
        let node = mesh.node_ip(&p.node)?;
        Ok(prom::parse(
            &mesh.get_in(NET_NS, &format!("http://{node}:15020/metrics"))?,
        ))
    };
    for (server, sa, wp) in [
        (&server_a, "server-a", "ns-wp"),
        (&server_b, "server-b", "sa-wp"),
    ] {
        let samples = dest_metrics(server)?;
        let server_principal = format!("spiffe://cluster.local/ns/wp/sa/{sa}");
        let from = |source: &str| {
            let source = format!("spiffe://cluster.local/ns/wp/sa/{source}");
            let want = [
                ("reporter", "destination"),
                ("destination_principal", server_principal.as_str()),
                ("source_principal", source.as_str()),
            ];
            prom::sum(&samples, "istio_tcp_connections_opened_total", &want)
        };
        ensure!(
            from(wp) >= 1.0,
            "{}'s ztunnel has no destination connection from {wp} to {server_principal}",
            server.name
        );
        ensure!(
            from("client") == 0.0,
            "{}'s ztunnel saw the client's identity though the traffic has a waypoint",
            server.name
        );
    }

    // A DENY on the namespace waypoint's identity, applied live at the `tier: backend` pods: whatever reaches
    // server-a through the waypoint is refused, while the opted-out pod (same label, direct from the client) and
    // server-b (through sa-wp) are still served.
    std::fs::write(mesh.manifests.join("deny-waypoint.yaml"), DENY_WAYPOINT)?;
    let code = poll("server-a refused behind the waypoint", WAIT, || {
        let c = status_code(mesh, &svc_a)?;
        Ok((c != "200").then_some(c))
    })?;
    ensure!(
        code.starts_with('5'),
        "a request the destination ztunnel refused came back as {code}, not a 5xx from the waypoint"
    );
    let by_ip = status_code(mesh, &pod_url(&server_a))?;
    ensure!(
        by_ip.starts_with('5'),
        "server-a by pod IP (through ns-wp) under the DENY: {by_ip}, not a 5xx from the waypoint"
    );
    expect_direct(mesh, &pod_url(&opt_out), 2, &client, &opt_out)?;
    expect_through(mesh, &svc_b, 2, &sa_wp, &[&server_b])?;

    // (4, continued) A valid waypoint that stops being ready: server-e was served through cold-wp; with the
    // waypoint's process stopped its readiness probe fails, the Service is no longer bound (`WaypointIsNotReady`)
    // and its traffic goes straight to the pod; continued, it binds again.
    let pid = mesh.pod_pid(WL, &cold_wp.name)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    ensure!(
        comm.trim() == "waypoint",
        "pod {} runs {comm:?} as pid {pid}, not the waypoint",
        cold_wp.name
    );
    let frozen = Frozen::freeze(pid)?;
    let (_, _, message) = poll("server-e WaypointIsNotReady", UNREADY, || {
        Ok(waypoint_bound(mesh, "service", WL, "server-e")
            .ok()
            .filter(|(s, r, _)| s == "False" && r == "WaypointIsNotReady"))
    })?;
    ensure!(
        message.contains("wl/cold-wp"),
        "WaypointIsNotReady does not name the waypoint: {message}"
    );
    poll("server-e served directly", WAIT, || {
        Ok(curl_many(mesh, &svc_e, 1)?
            .pop()
            .filter(|e| e.direct_from(&client) && e.pod == server_d.name))
    })?;
    drop(frozen);
    wait_bound(mesh, ("service", WL, "server-e"), "cold-wp", UNREADY)?;
    poll("server-e through cold-wp again", WAIT, || {
        Ok(curl_many(mesh, &svc_e, 1)?
            .pop()
            .filter(|e| e.through(&cold_wp)))
    })?;
    waypoint_required(mesh, &client, &server_d, &cold_wp)
}

/// (7) `ambit.dev/waypoint-required` on server-e's Service, applied live: the pod behind it was reachable by pod
/// IP straight from the client (Istio's behaviour, the default); now its ztunnel refuses every peer but cold-wp
/// on the Service's target port, so only the path through the waypoint works; and when the waypoint stops being
/// ready its Service's traffic fails closed instead of going direct.
fn waypoint_required(
    mesh: &LocalMesh,
    client: &PodInfo,
    server_d: &PodInfo,
    cold_wp: &PodInfo,
) -> Result<()> {
    let pod_url = format!("http://{}:8080", server_d.ip);
    let svc_e = "http://server-e.wl";
    expect_direct(mesh, &pod_url, 2, client, server_d)?;
    std::fs::write(
        mesh.manifests.join("apps.yaml"),
        apps_with(", ambit.dev/waypoint-required: \"true\""),
    )?;
    poll("direct call to server-d refused", WAIT, || {
        refused(mesh, &pod_url)
    })?;
    expect_through(mesh, svc_e, 3, cold_wp, &[server_d])?;
    let pid = mesh.pod_pid(WL, &cold_wp.name)?;
    let frozen = Frozen::freeze(pid)?;
    poll("server-e WaypointIsNotReady (required)", UNREADY, || {
        Ok(waypoint_bound(mesh, "service", WL, "server-e")
            .ok()
            .filter(|(s, r, _)| s == "False" && r == "WaypointIsNotReady"))
    })?;
    // The client's ztunnel now sends server-e's traffic straight to the pod, whose ztunnel refuses it.
    poll("server-e refused while its waypoint is down", WAIT, || {
        refused(mesh, svc_e)
    })?;
    drop(frozen);
    Ok(())
}

/// `Some` when a request from the client to `base` is refused: the connection is closed without an answer (curl
/// exits non-zero, and not with 28, a timeout, which a frozen waypoint would also give).
fn refused(mesh: &LocalMesh, base: &str) -> Result<Option<i32>> {
    let url = format!("{base}/{SECRET}");
    let out = mesh.exec(
        WP,
        CLIENT,
        &["curl", "-sS", "--max-time", "5", "-o", "/dev/null", &url],
    )?;
    let code = out.status.code().unwrap_or(-1);
    Ok((code != 0 && code != 28).then_some(code))
}
