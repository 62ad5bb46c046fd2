//! The waypoint's own certificate comes from an Istio CA (`CA_ADDRESS`) that then goes away for longer than the
//! certificate lives (`SECRET_TTL=8s`): its connection stays open but no request is answered, as with a SIGSTOPped
//! istiod. While the certificate is still valid the waypoint keeps serving, on a pooled HBONE connection and on a new
//! one. Once it has expired unrenewed the waypoint fails closed: a new CONNECT stream on the pooled connection is
//! refused with 503, a new connection does not get through, and `/metrics` counts the certificate as expired. Once
//! the CA answers again the certificate is renewed and requests go through again. Addresses are 127.0.89.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::REVIEWS;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::cert::Priority;
use ambit_core::hbone::{H2Config, HboneClient, HboneError};
use ambit_proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use ambit_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use ambit_waypoint::app::Running;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::{ClientConnector, Source};
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

const NET: u8 = 89;

fn waypoint_id() -> Identity {
    Identity::new("cluster.local", "demo", "waypoint")
}

/// An Istio CA that signs for the waypoint with the test's local CA directory while `up` is true. While it is
/// false, each request is taken and left unanswered until it turns true again (or the caller gives up).
struct StoppableCa {
    ca: LocalCa,
    up: watch::Receiver<bool>,
    asked: Arc<AtomicUsize>,
    signed: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl IstioCertificateService for StoppableCa {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        if self.up.clone().wait_for(|up| *up).await.is_err() {
            return Err(tonic::Status::unavailable("the test ended"));
        }
        let req = request.into_inner();
        let ttl = Duration::from_secs(u64::try_from(req.validity_duration).unwrap());
        let cert_chain = self
            .ca
            .sign_csr(&req.csr, &waypoint_id(), ttl)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        self.signed.fetch_add(1, Ordering::SeqCst);
        Ok(tonic::Response::new(IstioCertificateResponse {
            cert_chain,
        }))
    }
}

struct CaHandle {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    asked: Arc<AtomicUsize>,
    signed: Arc<AtomicUsize>,
}

/// Serves a [`StoppableCa`] (up) over TLS on a loopback port; its TLS root is written to `root_file`.
async fn start_ca(ca_dir: &Path, root_file: &Path) -> CaHandle {
    let tls_ca = LocalCa::generate("cluster.local").unwrap();
    let (chain, key) = tls_ca
        .issue_server_cert(
            &[],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
        )
        .unwrap();
    std::fs::write(root_file, tls_ca.root_pem()).unwrap();
    let (up, up_rx) = watch::channel(true);
    let (asked, signed) = (Arc::default(), Arc::default());
    let svc = IstioCertificateServiceServer::new(StoppableCa {
        ca: LocalCa::load_or_create(ca_dir, "cluster.local").unwrap(),
        up: up_rx,
        asked: Arc::clone(&asked),
        signed: Arc::clone(&signed),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(chain.concat(), key));
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(svc)
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    CaHandle {
        addr,
        up,
        asked,
        signed,
    }
}

/// A source ztunnel with a pool of its own (so its first CONNECT opens a new HBONE connection).
fn new_source(ca_dir: &Path, waypoint: &Running) -> Source {
    Source {
        hbone: HboneClient::new(
            Arc::new(H2Config::default()),
            ClientConnector {
                certs: support::certs(ca_dir),
            },
        ),
        me: Identity::new("cluster.local", "demo", "client"),
        waypoint: waypoint_id(),
        waypoint_addr: waypoint.addresses.hbone,
        client_addr: format!("127.0.{NET}.2:40000").parse().unwrap(),
    }
}

/// `GET /` to reviews through the waypoint on `source`'s pool: `"<status> <body>"`, or why no stream was opened.
/// A client left hanging for 30 s fails the test.
async fn get(source: &Source) -> Result<String, HboneError> {
    let exchange = async {
        let stream = source.connect(REVIEWS).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri("/")
            .header("host", REVIEWS)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok(format!(
            "{status} {}",
            String::from_utf8_lossy(&body).trim()
        ))
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("the waypoint left the client hanging for 30 s")
}

/// `workload_certificates{state="<state>"}` on the waypoint's stats port.
async fn certificates(stats: SocketAddr, state: &str) -> i64 {
    let text = support::get_text(stats, "/metrics").await;
    let series = format!("workload_certificates{{state=\"{state}\"}} ");
    let value = text.lines().find_map(|l| l.strip_prefix(series.as_str()));
    value
        .unwrap_or_else(|| panic!("no {series}in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn is_503(r: &Result<String, HboneError>) -> bool {
    matches!(r, Err(HboneError::Status(s)) if s.as_u16() == 503)
}

#[tokio::test]
async fn serves_while_valid_fails_closed_once_expired_and_recovers_when_the_ca_is_back() {
    ambit_core::tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let root_file = dir.path().join("ca-root.pem");
    let config_file = dir.path().join("waypoint.yaml");
    std::fs::write(&config_file, support::reviews_world(NET)).unwrap();
    let ca = start_ca(&ca_dir, &root_file).await;
    support::http_backend(format!("127.0.{NET}.21:18081").parse().unwrap(), "backend").await;

    // The environment `support::start_waypoint` sets, but with `CA_ADDRESS` instead of `LOCAL_CA_DIR`: with both
    // set, the local CA directory wins (`ambit_core::signer::choose`). The mock CA asks for no token.
    let env: HashMap<String, String> = [
        ("CA_ADDRESS", format!("https://{}", ca.addr)),
        ("CA_ROOT_CA", root_file.to_str().unwrap().to_owned()),
        ("SECRET_TTL", "8s".to_owned()),
        ("LOCAL_XDS_PATH", config_file.to_str().unwrap().to_owned()),
        ("POD_NAMESPACE", "demo".to_owned()),
        ("GATEWAY_NAME", "waypoint".to_owned()),
        ("INSTANCE_IP", "127.0.0.1".to_owned()),
        ("WAYPOINT_HBONE_ADDR", "127.0.0.1:0".to_owned()),
        ("WAYPOINT_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("WAYPOINT_STATS_ADDR", "127.0.0.1:0".to_owned()),
        ("WAYPOINT_READINESS_ADDR", "127.0.0.1:0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let cfg = ambit_waypoint::config::Config::from_env(&env).unwrap();
    assert_eq!(cfg.identity(), waypoint_id());
    let waypoint = ambit_waypoint::app::start(cfg, ambit_core::logging::LogHandle::noop())
        .await
        .unwrap();
    let stats = waypoint.addresses.stats;
    let ready_by = Instant::now() + Duration::from_secs(15);
    while !waypoint.readiness.is_ready() {
        assert!(
            Instant::now() < ready_by,
            "not ready: {:?}",
            waypoint.readiness.pending()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t0 = Instant::now();
    let cert = waypoint
        .certs
        .fetch(&waypoint_id(), Priority::Background)
        .await
        .unwrap();
    let expires = cert.not_after();
    let expires_in = expires.duration_since(SystemTime::now()).unwrap();
    assert!(expires_in <= Duration::from_secs(8), "{expires_in:?}");
    assert_eq!(ca.signed.load(Ordering::SeqCst), 1);

    // The CA goes away: connections to it stay open, nothing is answered.
    ca.up.send_replace(false);
    let asked_before = ca.asked.load(Ordering::SeqCst);
    let pooled = new_source(&ca_dir, &waypoint);
    assert_eq!(get(&pooled).await.unwrap(), "200 backend");
    assert_eq!(pooled.hbone.connections(), 1);

    // 1. The renewal (due at half-life) hangs at the CA; the certificate is still valid and the waypoint serves.
    while ca.asked.load(Ordering::SeqCst) == asked_before {
        assert!(
            SystemTime::now() < expires,
            "the waypoint did not ask to renew its certificate before it expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let renewal_sent = t0.elapsed();
    assert_eq!(get(&pooled).await.unwrap(), "200 backend", "pooled");
    assert_eq!(pooled.hbone.connections(), 1);
    assert_eq!(
        get(&new_source(&ca_dir, &waypoint)).await.unwrap(),
        "200 backend",
        "new connection"
    );
    assert_eq!(certificates(stats, "valid").await, 1);
    assert_eq!(certificates(stats, "expired").await, 0);
    assert!(
        SystemTime::now() < expires,
        "too slow a machine: the certificate expired before the checks of its valid phase were done"
    );

    // 2. Expired, not renewed: fail closed.
    let expired_by = Instant::now() + expires_in + Duration::from_secs(10);
    while certificates(stats, "expired").await != 1 {
        assert!(
            Instant::now() < expired_by,
            "the expired certificate is not reported as expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expired_seen = t0.elapsed();
    assert!(SystemTime::now() >= expires);
    assert_eq!(certificates(stats, "valid").await, 0);
    let refused = get(&pooled).await;
    assert!(
        is_503(&refused),
        "a new stream on the pooled connection after expiry: {refused:?}"
    );
    assert_eq!(
        pooled.hbone.connections(),
        1,
        "the 503 came on the pooled connection"
    );
    let pooled_refused = t0.elapsed();
    let fresh_started = Instant::now();
    let fresh = get(&new_source(&ca_dir, &waypoint)).await;
    let fresh_failed_after = fresh_started.elapsed();
    assert!(fresh.is_err(), "a new connection after expiry: {fresh:?}");
    assert_eq!(
        ca.signed.load(Ordering::SeqCst),
        1,
        "nothing was renewed while the CA was away"
    );
    let outage = t0.elapsed();

    // 3. The CA answers again (a request still waiting, if any, is answered then): renewed, serving again.
    ca.up.send_replace(true);
    let back = Instant::now();
    let mut last = get(&pooled).await;
    while last.is_err() {
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "not serving 60 s after the CA came back: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = get(&pooled).await;
    }
    let recovered_after = back.elapsed();
    assert_eq!(last.unwrap(), "200 backend", "pooled");
    assert!(ca.signed.load(Ordering::SeqCst) >= 2);
    assert_eq!(
        get(&new_source(&ca_dir, &waypoint)).await.unwrap(),
        "200 backend",
        "new connection"
    );
    assert_eq!(certificates(stats, "expired").await, 0);
    assert_eq!(certificates(stats, "valid").await, 1);
    eprintln!(
        "from readiness: certificate valid for {expires_in:?}; renewal sent to the stopped CA at {renewal_sent:?}; \
         expiry seen at {expired_seen:?}; pooled stream refused at {pooled_refused:?}; new connection failed after \
         {fresh_failed_after:?} ({fresh:?}); CA away for {outage:?}; serving again {recovered_after:?} after it came \
         back"
    );
}
