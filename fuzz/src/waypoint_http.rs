//! HTTP/1.1 bytes from a client through hyper (configured as the waypoint's inbound configures it) into the
//! waypoint's request handler `ambit_waypoint::http::handle`, on a connection addressed to the fuzz mesh's
//! `reviews` service. Nothing leaves the process: the only endpoint is unhealthy, so requests that route to a
//! backend are answered 503 (and the rest by routing, filters, authz, CORS, faults or direct responses).

use std::cell::OnceCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::hbone::H2Config;
use ambit_core::jwt::{FetchError, JwksCache, JwksFetcher};
use ambit_core::tls::TlsBackend;
use ambit_waypoint::config::Config;
use ambit_waypoint::http::{Conn, Proxy, handle};
use ambit_waypoint::inbound::sniff;
use ambit_waypoint::jwt::Authenticator;
use ambit_waypoint::metrics::Metrics;
use ambit_waypoint::state::{Store, Target};
use ambit_waypoint::upstream::{Connector, Upstream};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::block_on_within;
use crate::waypoint::{mesh_resources, self_info};

/// Key sets are never fetched here.
struct NoFetch;

#[async_trait::async_trait]
impl JwksFetcher for NoFetch {
    async fn fetch(&self, uri: &str) -> Result<String, FetchError> {
        Err(FetchError(format!("fuzzing: {uri} is not fetched")))
    }
}

thread_local! {
    static PROXY: OnceCell<Option<Arc<Proxy>>> = const { OnceCell::new() };
}

fn proxy() -> Arc<Proxy> {
    let p = PROXY.with(|p| p.get_or_init(build_proxy).clone());
    p.unwrap_or_else(|| panic!("waypoint_http: the fuzz waypoint could not be set up"))
}

fn build_proxy() -> Option<Arc<Proxy>> {
    let env: HashMap<String, String> = [
        ("POD_NAMESPACE", "demo"),
        ("POD_NAME", "waypoint-0"),
        ("SERVICE_ACCOUNT", "waypoint"),
        ("GATEWAY_NAME", "waypoint"),
        ("INSTANCE_IP", "10.244.1.9"),
        ("FAKE_CA", "true"),
        ("LOCAL_XDS_PATH", "/nonexistent/fuzz-mesh.yaml"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let cfg = Arc::new(Config::from_env(&env).ok()?);
    let signer = ambit_core::signer::choose(None, true, &cfg.trust_domain, None).ok()?;
    let certs = ambit_core::cert::CertManager::new(signer, Duration::from_secs(3600));
    let store = Store::new(self_info());
    store.update(mesh_resources(), vec![]);
    let mut registry = prometheus_client::registry::Registry::default();
    let connector = Connector {
        certs: certs.clone(),
        backend: TlsBackend::Rustls,
    };
    let me = cfg.identity();
    let upstream = Upstream::new(
        Arc::new(H2Config::default()),
        connector,
        me,
        std::net::IpAddr::from([10, 244, 1, 9]),
    );
    Some(Arc::new(Proxy {
        default_retry: cfg.default_retry().ok()?,
        cfg,
        certs,
        store,
        upstream,
        metrics: Arc::new(Metrics::new(&mut registry)),
        authenticator: Authenticator::new(JwksCache::new(Arc::new(NoFetch))),
    }))
}

/// Input: the bytes an HTTP/1.1 client sends on one connection (one or more pipelined requests).
pub fn waypoint_http(data: &[u8]) {
    let _ = sniff(data);
    if let Some(out) = exchange(data)
        && !out.is_empty()
    {
        assert!(
            out.starts_with(b"HTTP/1."),
            "the waypoint answered something that is not HTTP/1: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(64)])
        );
    }
}

/// What the waypoint writes back on the connection (`None` if it did not finish in time).
#[doc(hidden)]
pub fn exchange(data: &[u8]) -> Option<Vec<u8>> {
    let input = data.to_vec();
    block_on_within(Duration::from_secs(20), async move {
        let proxy = proxy();
        let snap = proxy.store.load();
        let service = snap
            .service("reviews.demo.svc.cluster.local")
            .cloned()
            .unwrap_or_else(|| panic!("the fuzz mesh has no reviews service"));
        let source = snap
            .workload_by_ip(std::net::IpAddr::from([10, 244, 1, 5]))
            .cloned();
        let conn = Arc::new(Conn::new(
            Target::Service {
                service,
                port: 9080,
            },
            Some(Identity::new("cluster.local", "demo", "sleep")),
            Some(SocketAddr::from(([10, 244, 1, 7], 40000))),
            source,
        ));
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let svc = service_fn(move |req| handle(proxy.clone(), conn.clone(), req));
        let serving = async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .max_buf_size(16 * 1024)
                // The harness closes its side after the input; the answers must still be written.
                .half_close(true)
                .serve_connection(TokioIo::new(server), svc)
                .with_upgrades()
                .await;
        };
        let peer = async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
            out
        };
        let ((), out) = tokio::join!(serving, peer);
        out
    })
}
