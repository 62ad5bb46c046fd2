//! What is reported about one request when its response ends: Istio's request metrics (through the series the
//! connection has cached) and one `access` log event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::Response;
use tracing::info;

use super::body::{Finish, RespBody};
use super::{Conn, Proxy, flags};
use crate::balance::limits::RequestGuard;
use crate::metrics::{Report, RequestLabels};
use crate::state::{ActiveRequest, Service, Snapshot, Workload};

/// Series kept per connection at most.
pub(super) const SERIES_PER_CONN: usize = 16;

/// What, besides the connection, decides a request's labels. Workloads and services are compared by identity
/// (the `Arc`s are held, so an address cannot be reused by another object while cached).
pub struct SeriesKey {
    pub(super) destination: Option<Arc<Workload>>,
    pub(super) service: Option<Arc<Service>>,
    pub(super) protocol: &'static str,
    pub(super) code: u16,
    pub(super) flags: &'static str,
    pub(super) grpc_status: Option<String>,
}

impl SeriesKey {
    pub(super) fn same(&self, other: &SeriesKey) -> bool {
        fn ptr<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        ptr(&self.destination, &other.destination)
            && ptr(&self.service, &other.service)
            && self.protocol == other.protocol
            && self.code == other.code
            && self.flags == other.flags
            && self.grpc_status == other.grpc_status
    }
}

pub(super) fn finish_synthetic(mut resp: Response<RespBody>, log: AccessLog) -> Response<RespBody> {
    let grpc_status = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    resp.body_mut()
        .set_finish(Box::new(Finished { log, grpc_status }));
    resp
}

/// What is reported about one request when its response ends.
pub(super) struct AccessLog {
    pub(super) proxy: Arc<Proxy>,
    pub(super) conn: Arc<Conn>,
    pub(super) snap: Arc<Snapshot>,
    pub(super) start: Instant,
    pub(super) method: String,
    pub(super) path: String,
    pub(super) authority: String,
    pub(super) request_id: String,
    pub(super) protocol: &'static str,
    pub(super) route: Option<String>,
    pub(super) service: Option<Arc<Service>>,
    pub(super) destination: Option<Arc<Workload>>,
    pub(super) upstream: Option<SocketAddr>,
    pub(super) code: u16,
    pub(super) flags: &'static str,
    pub(super) request_bytes: Arc<AtomicU64>,
    pub(super) _active: Option<ActiveRequest>,
    /// The backend's circuit-breaker slot, held until the response ends.
    pub(super) _guard: Option<RequestGuard>,
}

pub(super) struct Finished {
    pub(super) log: AccessLog,
    pub(super) grpc_status: Option<String>,
}

impl Finish for Finished {
    fn finish(self: Box<Self>, response_bytes: u64, grpc_status: Option<String>, complete: bool) {
        let l = &self.log;
        let flags = if complete || l.flags != flags::NONE {
            l.flags
        } else {
            flags::DOWNSTREAM_TERMINATION
        };
        let grpc_status = grpc_status.or_else(|| self.grpc_status.clone());
        let duration = l.start.elapsed();
        let req_bytes = l.request_bytes.load(Ordering::Relaxed);
        let key = SeriesKey {
            destination: l.destination.clone(),
            service: l.service.clone(),
            protocol: l.protocol,
            code: l.code,
            flags,
            grpc_status: grpc_status.clone(),
        };
        let cached = l
            .conn
            .series
            .lock()
            .ok()
            .and_then(|c| c.iter().find(|(k, _)| k.same(&key)).map(|(_, s)| s.clone()));
        let series = match cached {
            Some(s) => s,
            None => {
                let labels = RequestLabels::new(&Report {
                    source: l.conn.source.as_deref(),
                    source_principal: l.conn.source_principal.as_ref().map(ToString::to_string),
                    destination: l.destination.as_deref(),
                    service: l.service.as_deref(),
                    protocol: l.protocol,
                    code: l.code,
                    grpc_status: grpc_status.clone(),
                    flags,
                });
                let s = l.proxy.metrics.series(&labels);
                if let Ok(mut c) = l.conn.series.lock()
                    && c.len() < SERIES_PER_CONN
                {
                    c.push((key, s.clone()));
                }
                s
            }
        };
        series.record(duration.as_secs_f64() * 1000.0, req_bytes, response_bytes);
        let _ = &l.snap;
        info!(target: "access", protocol = l.protocol,
            src.addr = ?l.conn.source_addr,
            src.identity = ?l.conn.source_principal.as_ref().map(ToString::to_string),
            src.workload = ?l.conn.source.as_ref().map(|w| w.name.as_str()),
            method = %l.method, path = %l.path, authority = %l.authority,
            route = ?l.route,
            dst.service = ?l.service.as_ref().map(|s| s.hostname.as_str()),
            dst.workload = ?l.destination.as_ref().map(|w| w.name.as_str()),
            dst.addr = ?l.upstream,
            status = l.code, grpc_status = ?grpc_status, flags,
            request_id = %l.request_id,
            bytes_recv = req_bytes, bytes_sent = response_bytes,
            duration_ms = duration.as_millis() as u64,
            "request complete");
    }
}
