//! Misbehaving HTTP backends (HTTP/1.1 and h2c) for the resilience tests (fail N times then succeed, close the connection without
//! an answer, hang, answer slowly, refuse connections, always fail), each counting what it saw; and the small
//! world they sit in: a waypoint started from a YAML file built by [`Mesh`], and a client that times its requests.
//!
//! Every answer names its backend (`x-served-by` header and the body's first line) and the attempt it was
//! (`x-attempt`, counted per backend from 1), so a test can tell which endpoint served a request and how many
//! attempts reached it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_core::Identity;
use ambit_core::hbone::{H2Config, HboneClient};
use ambit_waypoint::app::{self, Running};
use ambit_waypoint::config::Config;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::{ClientConnector, Source};

/// How a backend answers its n-th request (n counted from 1 across all its connections).
#[derive(Clone, Copy, Debug)]
pub enum Misbehaviour {
    /// `status` for the first `failures` requests, then 200.
    FailThenOk { failures: usize, status: u16 },
    /// Reads the request and closes the connection without an answer, `resets` times; then 200.
    ResetThenOk { resets: usize },
    /// Reads the request and never answers.
    Hang,
    /// Reads the request, waits, then answers 200.
    Slow(Duration),
    /// Always this status.
    Always(u16),
}

/// What a backend saw.
#[derive(Default)]
pub struct Seen {
    /// Requests received (headers read), whatever became of them.
    pub attempts: Arc<AtomicUsize>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Each request's body length, in arrival order (a request whose body never fully arrived is not listed).
    bodies: Mutex<Vec<usize>>,
}

/// A running misbehaving backend.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub seen: Arc<Seen>,
}

impl Backend {
    /// Requests that reached this backend so far.
    pub fn attempts(&self) -> usize {
        self.seen.attempts.load(Ordering::SeqCst)
    }

    /// The most requests this backend was serving at once.
    pub fn max_in_flight(&self) -> usize {
        self.seen.max_in_flight.load(Ordering::SeqCst)
    }

    /// The body length of each request that arrived whole.
    pub fn bodies(&self) -> Vec<usize> {
        self.seen.bodies.lock().unwrap().clone()
    }
}

pub async fn fail_then_ok(
    addr: SocketAddr,
    name: &'static str,
    failures: usize,
    status: u16,
) -> Backend {
    serve(addr, name, Misbehaviour::FailThenOk { failures, status }).await
}

pub async fn reset_then_ok(addr: SocketAddr, name: &'static str, resets: usize) -> Backend {
    serve(addr, name, Misbehaviour::ResetThenOk { resets }).await
}

pub async fn hang(addr: SocketAddr, name: &'static str) -> Backend {
    serve(addr, name, Misbehaviour::Hang).await
}

pub async fn slow(addr: SocketAddr, name: &'static str, delay: Duration) -> Backend {
    serve(addr, name, Misbehaviour::Slow(delay)).await
}

pub async fn always(addr: SocketAddr, name: &'static str, status: u16) -> Backend {
    serve(addr, name, Misbehaviour::Always(status)).await
}

/// A healthy backend (200 to everything) with the same bookkeeping as the misbehaving ones.
pub async fn ok(addr: SocketAddr, name: &'static str) -> Backend {
    serve(addr, name, Misbehaviour::Always(200)).await
}

/// Nothing listens at `addr` (a loopback address no test binds): connections to it are refused. The handle's
/// counters stay at zero.
pub fn refuse(addr: SocketAddr, name: &'static str) -> Backend {
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
        "something listens at {addr}"
    );
    Backend {
        addr,
        name,
        seen: Arc::default(),
    }
}

/// Counts a request in flight for as long as it lives (a dropped or hung request included).
struct InFlight(Arc<Seen>);

impl InFlight {
    fn start(seen: &Arc<Seen>) -> InFlight {
        let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(seen.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub async fn serve(addr: SocketAddr, name: &'static str, how: Misbehaviour) -> Backend {
    let l = TcpListener::bind(addr).await.unwrap();
    let seen: Arc<Seen> = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                // Notified when a request is to be answered by closing the connection.
                let close = Arc::new(Notify::new());
                let c2 = close.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    let close = c2.clone();
                    async move { answer(req, name, how, seen, close).await }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = close.notified() => {} // dropping the connection closes the socket, no answer written
                }
            });
        }
    });
    Backend { addr, name, seen }
}

async fn answer(
    req: Request<Incoming>,
    name: &'static str,
    how: Misbehaviour,
    seen: Arc<Seen>,
    close: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = seen.attempts.fetch_add(1, Ordering::SeqCst) + 1;
    let _in_flight = InFlight::start(&seen);
    let len = req.into_body().collect().await.map(|b| b.to_bytes().len());
    if let Ok(len) = len {
        seen.bodies.lock().unwrap().push(len);
    }
    let status = match how {
        Misbehaviour::FailThenOk { failures, status } if n <= failures => status,
        Misbehaviour::FailThenOk { .. } => 200,
        Misbehaviour::ResetThenOk { resets } if n <= resets => {
            close.notify_one();
            match std::future::pending::<Infallible>().await {}
        }
        Misbehaviour::ResetThenOk { .. } => 200,
        Misbehaviour::Hang => match std::future::pending::<Infallible>().await {},
        Misbehaviour::Slow(d) => {
            tokio::time::sleep(d).await;
            200
        }
        Misbehaviour::Always(status) => status,
    };
    Ok(Response::builder()
        .status(status)
        .header("x-served-by", name)
        .header("x-attempt", n.to_string())
        .header("x-body-len", len.unwrap_or(0).to_string())
        .body(Full::new(Bytes::from(format!("{name}\n"))))
        .unwrap())
}

// ---------------------------------------------------------------------------------------------------------------
// The world: a waypoint configured from a YAML file, services on port 80 (HTTP/1.1) whose endpoints are plain
// workloads (`tunnel: NONE`) at `127.0.<net>.<host>:8080`, and a source that speaks HBONE to it.

pub const PORT: u16 = 8080;
/// The client workload's host octet.
const CLIENT: u8 = 2;

/// The YAML of one waypoint world. Services are `<name>.demo.svc.cluster.local:80`.
pub struct Mesh {
    pub net: u8,
    services: Vec<String>,
    workloads: Vec<String>,
    routes: Vec<String>,
    policies: Vec<String>,
    /// Other top-level lists of the file (`rateLimits`, …), by key.
    extra: Vec<(String, Vec<String>)>,
    /// More environment for the waypoint.
    env: Vec<(String, String)>,
    rule_index: HashMap<String, usize>,
}

pub fn host(name: &str) -> String {
    format!("{name}.demo.svc.cluster.local")
}

/// The CONNECT authority of a service.
pub fn authority(name: &str) -> String {
    format!("{}:80", host(name))
}

impl Mesh {
    pub fn new(net: u8) -> Mesh {
        Mesh {
            net,
            services: Vec::new(),
            workloads: vec![format!(
                "- {{uid: client, name: client-0, namespace: demo, serviceAccount: client, ips: [127.0.{net}.{CLIENT}], workloadName: client}}"
            )],
            routes: Vec::new(),
            policies: Vec::new(),
            extra: Vec::new(),
            env: Vec::new(),
            rule_index: HashMap::new(),
        }
    }

    /// Where the endpoint on `host` listens.
    pub fn addr(&self, host: u8) -> SocketAddr {
        format!("127.0.{}.{host}:{PORT}", self.net).parse().unwrap()
    }

    /// A service on port 80 → 8080 with the port protocol given (`http1`, `grpc`, …).
    pub fn service_with(&mut self, name: &str, protocol: &str) -> &mut Mesh {
        self.services.push(format!(
            "- {{name: {name}, namespace: demo, hostname: {}, ports: [{{port: 80, targetPort: {PORT}, protocol: {protocol}}}]}}",
            host(name)
        ));
        self
    }

    pub fn service(&mut self, name: &str) -> &mut Mesh {
        self.service_with(name, "http1")
    }

    /// A workload `uid` at `127.0.<net>.<host>`, an endpoint of `service`; returns where it must listen.
    pub fn endpoint(&mut self, uid: &str, host_octet: u8, service: &str) -> SocketAddr {
        let net = self.net;
        self.workloads.push(format!(
            "- {{uid: {uid}, name: {uid}-0, namespace: demo, serviceAccount: {service}, ips: [127.0.{net}.{host_octet}], tunnel: NONE, workloadName: {uid}, services: {{demo/{}: {{80: {PORT}}}}}}}",
            host(service)
        ));
        self.addr(host_octet)
    }

    /// A route rule attached to `service` (rules in the order added), `fields` a YAML flow-mapping body in the
    /// `ambit.waypoint.Route` schema (`retry: {attempts: 2}, matches: [...]`). Without `backends:` in `fields` the
    /// rule sends to the service itself.
    pub fn route(&mut self, service: &str, fields: &str) -> &mut Mesh {
        let i = self.rule_index.entry(service.to_owned()).or_insert(0);
        let idx = *i;
        *i += 1;
        let backends = if fields.contains("backends:") {
            String::new()
        } else {
            format!(
                ", backends: [{{hostname: {}, port: 80, weight: 1}}]",
                host(service)
            )
        };
        let sep = if fields.trim().is_empty() { "" } else { ", " };
        self.routes.push(format!(
            "- {{name: demo/httproute/{service}/{idx}, namespace: demo, routeName: {service}, ruleIndex: {idx}, parents: [{{kind: SERVICE, name: {}, port: 80}}]{backends}{sep}{fields}}}",
            host(service)
        ));
        self
    }

    /// A `BackendPolicy` for `service`, `fields` a YAML flow-mapping body (`policy: {...}, subsets: [...]`).
    pub fn policy(&mut self, service: &str, fields: &str) -> &mut Mesh {
        self.policies.push(format!(
            "- {{hostname: {}, source: demo/{service}, {fields}}}",
            host(service)
        ));
        self
    }

    /// An environment variable for the waypoint.
    pub fn env(&mut self, k: &str, v: &str) -> &mut Mesh {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    /// An item (a YAML flow mapping) of another top-level list of the file, e.g. `rateLimits`.
    pub fn item(&mut self, key: &str, item: &str) -> &mut Mesh {
        match self.extra.iter_mut().find(|(k, _)| k == key) {
            Some((_, items)) => items.push(format!("- {item}")),
            None => self.extra.push((key.to_owned(), vec![format!("- {item}")])),
        }
        self
    }

    pub fn yaml(&self) -> String {
        let mut out = String::new();
        let lists = [
            ("services", &self.services),
            ("workloads", &self.workloads),
            ("routes", &self.routes),
            ("backendPolicies", &self.policies),
        ];
        let extra = self.extra.iter().map(|(k, v)| (k.as_str(), v));
        for (key, items) in lists.into_iter().chain(extra) {
            if items.is_empty() {
                continue;
            }
            out.push_str(key);
            out.push_str(":\n");
            for i in items {
                out.push_str(i);
                out.push('\n');
            }
        }
        out
    }

    /// Starts a waypoint with this configuration and a source to talk to it.
    pub async fn start(&self) -> World {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let file = dir.path().join("waypoint.yaml");
        let yaml = self.yaml();
        std::fs::write(&file, &yaml).unwrap();
        let mut env: HashMap<String, String> = [
            ("LOCAL_CA_DIR", ca.to_str().unwrap()),
            ("LOCAL_XDS_PATH", file.to_str().unwrap()),
            ("POD_NAMESPACE", "demo"),
            ("GATEWAY_NAME", "waypoint"),
            ("INSTANCE_IP", "127.0.0.1"),
            ("WAYPOINT_HBONE_ADDR", "127.0.0.1:0"),
            ("WAYPOINT_ADMIN_ADDR", "127.0.0.1:0"),
            ("WAYPOINT_STATS_ADDR", "127.0.0.1:0"),
            ("WAYPOINT_READINESS_ADDR", "127.0.0.1:0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        env.extend(self.env.iter().cloned());
        let cfg = Config::from_env(&env).unwrap();
        let waypoint_id = cfg.identity();
        let waypoint = match app::start(cfg, ambit_core::logging::LogHandle::noop()).await {
            Ok(w) => w,
            Err(e) => panic!("waypoint did not start: {e:#}\nconfig:\n{yaml}"),
        };
        let certs = super::certs(&ca);
        let source = Source {
            hbone: HboneClient::new(Arc::new(H2Config::default()), ClientConnector { certs }),
            me: Identity::new("cluster.local", "demo", "client"),
            waypoint: waypoint_id,
            waypoint_addr: waypoint.addresses.hbone,
            client_addr: format!("127.0.{}.{CLIENT}:40000", self.net)
                .parse()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !waypoint.readiness.is_ready() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            waypoint.readiness.is_ready(),
            "pending: {:?}",
            waypoint.readiness.pending()
        );
        World {
            _dir: dir,
            waypoint,
            source,
        }
    }
}

pub struct World {
    _dir: tempfile::TempDir,
    pub waypoint: Running,
    pub source: Source,
}

/// One answer as the client saw it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
    pub elapsed: Duration,
}

impl Answer {
    /// The backend that served it (`x-served-by`), or "" for an answer the waypoint made.
    pub fn served_by(&self) -> &str {
        self.headers
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl World {
    /// GET `path` from `service` over a fresh CONNECT stream.
    pub async fn get(&self, service: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(service, "GET", path, headers, Bytes::new()).await
    }

    /// One HTTP/1.1 request over a fresh CONNECT stream, timed from before the CONNECT until the body's end.
    pub async fn send(
        &self,
        service: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Answer {
        let start = Instant::now();
        let authority = authority(service);
        let stream = self.source.connect(&authority).await.expect("CONNECT");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &authority);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = send
            .send_request(req.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            elapsed: start.elapsed(),
        }
    }

    /// The waypoint's `/metrics`.
    pub async fn metrics(&self) -> String {
        let tcp = tokio::net::TcpStream::connect(self.waypoint.addresses.stats)
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri("/metrics")
            .header("host", "x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
    }

    /// `istio_requests_total` for `service`, summed over the series with this code (`None`: any) and flags.
    pub async fn requests(&self, service: &str, code: Option<u16>, flags: Option<&str>) -> f64 {
        count_requests(&self.metrics().await, service, code, flags)
    }
}

/// `istio_requests_total` in a metrics text for `service`, summed over the series with this code and with `flag`
/// among their response flags (Envoy joins several with commas; `-` is none).
pub fn count_requests(metrics: &str, service: &str, code: Option<u16>, flag: Option<&str>) -> f64 {
    let service = format!("destination_service=\"{}\"", host(service));
    let code = code.map(|c| format!("response_code=\"{c}\""));
    let has_flag = |l: &str| {
        let Some(flag) = flag else { return true };
        let Some((_, rest)) = l.split_once("response_flags=\"") else {
            return false;
        };
        let value = rest.split('"').next().unwrap_or("");
        value.split(',').any(|f| f == flag)
    };
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains(&service)
                && code.as_ref().is_none_or(|c| l.contains(c.as_str()))
                && has_flag(l)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
