//! The Prometheus (`/metrics`, `/stats/prometheus`) and readiness (`/healthz/ready`) servers.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::drain::DrainWatcher;
use crate::readiness::Readiness;

pub type Body = Full<Bytes>;

pub(crate) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// Serves HTTP/1.1 on `listener` with `handle` until drained.
pub(crate) async fn serve_http<H, F>(listener: TcpListener, mut drain: DrainWatcher, handle: H)
where
    H: Fn(Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let (stream, _) = tokio::select! {
            _ = drain.signaled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let f = handle(req);
                async move { Ok::<_, std::convert::Infallible>(f.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

const OPENMETRICS: &str = "application/openmetrics-text;charset=utf-8;version=1.0.0";
const PLAIN: &str = "text/plain; charset=utf-8";

/// Encodes `registry`, choosing the content type from the `Accept` header.
pub fn render(registry: &Registry, accept: Option<&str>) -> Response<Body> {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            PLAIN,
            "could not encode metrics",
        );
    }
    let openmetrics = accept.is_some_and(|a| a.contains("openmetrics"));
    text(
        StatusCode::OK,
        if openmetrics { OPENMETRICS } else { PLAIN },
        out,
    )
}

pub async fn serve_metrics(listener: TcpListener, registry: Arc<Registry>, drain: DrainWatcher) {
    serve_http(listener, drain, move |req| {
        let registry = registry.clone();
        async move {
            match req.uri().path() {
                "/metrics" | "/stats/prometheus" => {
                    let accept = req
                        .headers()
                        .get(http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok());
                    render(&registry, accept)
                }
                _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n"),
            }
        }
    })
    .await
}

pub async fn serve_readiness(listener: TcpListener, ready: Readiness, drain: DrainWatcher) {
    serve_http(listener, drain, move |req| {
        let ready = ready.clone();
        async move {
            if req.uri().path() != "/healthz/ready" {
                return text(StatusCode::NOT_FOUND, PLAIN, "not found\n");
            }
            if ready.is_ready() {
                text(StatusCode::OK, PLAIN, "ready\n")
            } else {
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    PLAIN,
                    format!("not ready, pending: {}\n", ready.pending().join(", ")),
                )
            }
        }
    })
    .await
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: String,
    tag: String,
}

/// `istio_build{component, tag} 1`.
pub fn register_build_info(registry: &mut Registry, component: &str) {
    let family = Family::<BuildLabels, Gauge>::default();
    family
        .get_or_create(&BuildLabels {
            component: component.to_owned(),
            tag: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .set(1);
    registry.register("istio_build", "Istio component build info", family);
}

/// `process_open_fds` and `process_max_fds` (the soft `RLIMIT_NOFILE`), read at every scrape, as upstream exports
/// them.
#[derive(Debug)]
struct ProcessFds;

impl prometheus_client::collector::Collector for ProcessFds {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        // The directory listing holds one descriptor of its own while it is read.
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let open = ConstGauge::new(dir.count().saturating_sub(1) as i64);
            open.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                open.metric_type(),
            )?)?;
        }
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            let max = ConstGauge::new(i64::try_from(soft).unwrap_or(i64::MAX));
            max.encode(encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of file descriptors",
                None,
                max.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Registers `process_open_fds` and `process_max_fds`.
pub fn register_process_metrics(registry: &mut Registry) {
    registry.register_collector(Box::new(ProcessFds));
}
