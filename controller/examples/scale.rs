//! Controller scale benchmark (not a test). Generates N pods / M services in one ambient namespace, then measures:
//! the time to compute every resource; the time to push the full state to K delta-ADS clients (real tonic clients
//! over loopback, wildcard on both types, ACKing); the time for one pod change to reach all K; and the process RSS.
//!
//!   cargo run --release -p ambit-controller --example scale -- --pods 10000 --services 1000 --clients 1,100,1000
//!
//! The clients run in the same process (their decoding counts against the same 2 cores), so the push times are an
//! upper bound of what the server alone needs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_controller::compute::{ComputeConfig, compute};
use ambit_controller::controller::Controller;
use ambit_controller::index::Index;
use ambit_controller::sources::{Document, Event, Object, parse_document};
use ambit_controller::xds::{XdsMetrics, XdsServer};
use ambit_proto::type_url::{ADDRESS, AUTHORIZATION};
use ambit_proto::xds::DeltaDiscoveryRequest;
use ambit_proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn object(yaml: &str) -> Object {
    match parse_document(serde_yaml::from_str(yaml).unwrap()).unwrap() {
        Document::Object(o) => o,
        other => panic!("not an object: {other:?}"),
    }
}

fn pod(i: usize, services: usize, version: &str) -> Object {
    let ip = format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
    object(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: scale, labels: {{app: svc-{s}, version: {version}}}}}\n\
         spec: {{nodeName: node-{n}, serviceAccountName: sa-{s}}}\nstatus: {{podIP: {ip}}}\n",
        s = i % services,
        n = i % 100,
    ))
}

fn generate(pods: usize, services: usize) -> Vec<Event> {
    let mut events = vec![Event::Apply(object(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: scale, labels: {istio.io/dataplane-mode: ambient}}\n",
    ))];
    for s in 0..services {
        let vip = format!(
            "172.{}.{}.{}",
            16 + ((s >> 16) & 0x0f),
            (s >> 8) & 0xff,
            s & 0xff
        );
        events.push(Event::Apply(object(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: scale}}\n\
             spec: {{clusterIP: {vip}, selector: {{app: svc-{s}}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
        ))));
    }
    for i in 0..pods {
        events.push(Event::Apply(pod(i, services, "v1")));
    }
    for p in 0..10 {
        events.push(Event::Apply(object(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-{p}, namespace: scale}}\n\
             spec: {{selector: {{matchLabels: {{app: svc-{p}}}}}, action: ALLOW, rules: [{{from: [{{source: {{namespaces: [scale]}}}}]}}]}}\n"
        ))));
    }
    events.push(Event::InitDone);
    events
}

/// One simulated ztunnel: subscribes to both types, ACKs everything, reports (a) when both types' first responses
/// arrived and (b) each later response that names `watch`.
async fn client(channel: Channel, full: mpsc::Sender<()>, change: mpsc::Sender<()>, watch: String) {
    let (tx, rx) = mpsc::channel(16);
    for t in [ADDRESS, AUTHORIZATION] {
        tx.send(DeltaDiscoveryRequest {
            type_url: t.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut stream = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(512 * 1024 * 1024)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (mut addr, mut authz) = (false, false);
    while let Ok(Some(resp)) = stream.message().await {
        let first = !(addr && authz);
        addr |= resp.type_url == ADDRESS;
        authz |= resp.type_url == AUTHORIZATION;
        if first && addr && authz {
            let _ = full.send(()).await;
        } else if !first && resp.resources.iter().any(|r| r.name == watch) {
            let _ = change.send(()).await;
        }
        let ack = DeltaDiscoveryRequest {
            type_url: resp.type_url,
            response_nonce: resp.nonce,
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return;
        }
    }
}

const USAGE: &str = "usage: scale [--pods N] [--services M] [--clients K1,K2,...]   (defaults: 10000, 1000, 1,100,1000)";

/// The benchmark's arguments, `None` for `--help`.
fn parse_args(
    args: impl Iterator<Item = String>,
) -> Result<Option<(usize, usize, Vec<usize>)>, String> {
    let (mut pods, mut services, mut clients) = (10_000, 1_000, vec![1usize, 100, 1000]);
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag} {v:?}: not a whole number"))
        };
        match flag.as_str() {
            "--pods" => pods = number(&value)?,
            "--services" => services = number(&value)?,
            "--clients" => clients = value.split(',').map(number).collect::<Result<_, _>>()?,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(Some((pods, services, clients)))
}

#[tokio::main]
async fn main() {
    let (pods, services, clients) = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("scale: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    println!(
        "# controller scale: {pods} pods, {services} services, 10 policies (RSS at start {:.0} MiB)",
        rss_mib()
    );

    // Compute alone.
    let events = generate(pods, services);
    let mut index = Index::default();
    for e in generate(pods, services) {
        index.apply(e);
    }
    let cfg = ComputeConfig::default();
    let t = Instant::now();
    let resources = compute(&index, &cfg);
    let compute_time = t.elapsed();
    println!(
        "compute: {} addresses, {} authorizations in {:.1} ms (RSS {:.0} MiB)",
        resources.addresses.len(),
        resources.authorizations.len(),
        compute_time.as_secs_f64() * 1e3,
        rss_mib()
    );
    drop((index, resources));

    // The controller and its xDS server, plaintext on loopback.
    let (controller, outputs) = Controller::new(cfg, 1, Duration::from_millis(10));
    let (_trigger, drain) = ambit_core::drain::new();
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    tokio::spawn(controller.run(ev_rx, drain.clone()));
    for e in events {
        ev_tx.send(e).await.unwrap();
    }
    let mut ready = outputs.ready.clone();
    ready.wait_for(|r| *r).await.unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let server = XdsServer::new(
        outputs.snapshot.clone(),
        Arc::new(XdsMetrics::new(&mut registry)),
        None,
        drain,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server.into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    println!("\n| clients | full state to all | one pod change to all | RSS after |");
    println!("|---:|---:|---:|---:|");
    for (version, k) in (2..).zip(clients) {
        // 100 streams per HTTP/2 connection, like a fleet of ztunnels behind a few connections' worth of load.
        let mut channels = Vec::new();
        for _ in 0..k.div_ceil(100) {
            channels.push(
                Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        let (full_tx, mut full_rx) = mpsc::channel(k);
        let (change_tx, mut change_rx) = mpsc::channel(k);
        let watch = "Kubernetes//Pod/scale/pod-0".to_owned();
        let t = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..k {
            let ch = channels[i / 100].clone();
            tasks.push(tokio::spawn(client(
                ch,
                full_tx.clone(),
                change_tx.clone(),
                watch.clone(),
            )));
        }
        for _ in 0..k {
            full_rx.recv().await.unwrap();
        }
        let full = t.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await; // let every ACK land
        let t = Instant::now();
        ev_tx
            .send(Event::Apply(pod(0, services, &format!("v{version}"))))
            .await
            .unwrap();
        for _ in 0..k {
            change_rx.recv().await.unwrap();
        }
        let change = t.elapsed();
        println!(
            "| {k} | {:.2} s | {:.1} ms | {:.0} MiB |",
            full.as_secs_f64(),
            change.as_secs_f64() * 1e3,
            rss_mib()
        );
        for t in tasks {
            t.abort();
        }
        drop(channels);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
