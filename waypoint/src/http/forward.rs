//! Sending one routed request to its backend: the attempt loop.
//!
//! Each attempt picks an endpoint (another one than the attempts before when the backend has one), takes a
//! request slot of the backend's circuit breaker (`UO` when full), and sends on a reused connection within the
//! per-try timeout. What came back — a response, a connect failure, a reset, a timeout — is recorded for outlier
//! detection and decided on by the route's retry policy ([`crate::resilience::retry::decide`]): a retry needs a
//! replayable body (kept up to `RETRY_BUFFER_BYTES`), a token from the backend's retry budget and a retry slot of
//! its circuit breaker, then waits out a jittered exponential backoff. The whole loop runs within the request's
//! overall deadline.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rand::SeedableRng;
use tokio::time::Instant;
use tracing::debug;

use super::Proxy;
use super::flags;
use crate::balance::limits::{RequestGuard, RetryGuard};
use crate::resilience::replay::ReplayBody;
use crate::resilience::retry::{Decision, Outcome, RetryPolicy, decide, retriable};
use crate::resilience::timeout::Deadlines;
use crate::state::{Backend, BackendShared, Picked};
use crate::upstream::{Pool, Release, ReqBody, UpstreamError};

/// Where a request goes: a backend (a service port, or a subset of it), or the workload it addressed.
pub enum Destination {
    Backend(Arc<Backend>),
    Workload(Picked, Arc<BackendShared>),
}

/// How to send.
pub struct Plan<'a> {
    pub retry: &'a RetryPolicy,
    pub deadlines: Deadlines,
    pub h2: bool,
    /// A WebSocket (or other) upgrade: sent once on a connection of its own.
    pub upgrade: bool,
    /// The consistent-hash key of the request, when the backend balances by one.
    pub hash: Option<u64>,
}

/// The response that ends the request, with what must live until its body has been read.
pub struct Sent {
    pub response: Response<Incoming>,
    pub release: Option<Release>,
    pub picked: Picked,
    pub guard: Option<RequestGuard>,
    /// `-`, or `URX` when the answer is a retriable failure that used up every retry.
    pub flags: &'static str,
    pub retries: u32,
}

/// A request that ends without a backend response.
pub struct Failed {
    pub status: StatusCode,
    pub flags: &'static str,
    pub message: &'static str,
    pub picked: Option<Picked>,
    pub retries: u32,
}

/// How a failed attempt ends the request when it is the last one.
fn failure(outcome: Outcome, exhausted: bool) -> (StatusCode, &'static str, &'static str) {
    const RESET: &str = "upstream connect error or disconnect/reset before headers";
    let (status, flag, message) = match outcome {
        Outcome::ConnectFailed => (
            StatusCode::SERVICE_UNAVAILABLE,
            flags::UPSTREAM_CONNECT_FAILURE,
            RESET,
        ),
        Outcome::PerTryTimeout => (
            StatusCode::GATEWAY_TIMEOUT,
            flags::UPSTREAM_TIMEOUT,
            "upstream request timeout",
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            flags::UPSTREAM_TERMINATION,
            RESET,
        ),
    };
    let flag = if exhausted {
        match flag {
            flags::UPSTREAM_CONNECT_FAILURE => "UF,URX",
            flags::UPSTREAM_TIMEOUT => "UT,URX",
            _ => "UC,URX",
        }
    } else {
        flag
    };
    (status, flag, message)
}

/// What one failed send means for the retry policy.
fn outcome_of(e: &UpstreamError) -> Outcome {
    if e.is_connect() {
        return Outcome::ConnectFailed;
    }
    if e.is_refused_stream() {
        return Outcome::RefusedStream;
    }
    Outcome::Reset {
        request_sent: !e.is_before_request(),
    }
}

fn grpc_status(resp: &Response<Incoming>) -> Option<u32> {
    resp.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Sends `parts` + `body` per `plan`, retrying as the policy allows.
pub async fn forward(
    proxy: &Arc<Proxy>,
    dest: &Destination,
    plan: Plan<'_>,
    parts: http::request::Parts,
    body: ReqBody,
) -> Result<Sent, Failed> {
    attempts(proxy, dest, &plan, parts, body).await
}

/// The request ran out of its overall time.
fn overall_timeout(retries: u32) -> Failed {
    Failed {
        status: StatusCode::GATEWAY_TIMEOUT,
        flags: flags::UPSTREAM_TIMEOUT,
        message: "upstream request timeout",
        picked: None,
        retries,
    }
}

async fn attempts(
    proxy: &Arc<Proxy>,
    dest: &Destination,
    plan: &Plan<'_>,
    parts: http::request::Parts,
    body: ReqBody,
) -> Result<Sent, Failed> {
    let shared = match dest {
        Destination::Backend(b) => b.shared(),
        Destination::Workload(_, s) => s,
    };
    let retry = if plan.upgrade {
        &RetryPolicy::none()
    } else {
        plan.retry
    };
    shared.budget.deposit();
    // One timer per attempt, at the nearer of the per-try and the overall deadline (nesting the two cost a second
    // timer registration per request).
    let overall = plan.deadlines.overall.map(|d| Instant::now() + d);
    // With retries possible the body goes through a bounded replay buffer (the first attempt reads the client's
    // body; `replay` is the handle later attempts are cloned from); otherwise it is sent as it is.
    let (replay, mut once) = if retry.attempts > 0 {
        let first = ReplayBody::new(body, proxy.cfg.retry_buffer_bytes);
        (first.try_clone(), Some(first.boxed_unsync()))
    } else {
        (None, Some(body))
    };
    let mut next_body: Option<ReqBody> = None;
    let mut tried: Vec<usize> = Vec::new();
    let mut _retry_guard: Option<RetryGuard> = None;
    let mut retries = 0u32;
    loop {
        // The endpoint: a new one each attempt while there are others.
        let (index, picked) = match dest {
            Destination::Backend(b) => match b.pick(plan.hash, &tried) {
                Some(p) => p,
                None => {
                    return Err(Failed {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        flags: flags::NO_HEALTHY_UPSTREAM,
                        message: "no healthy upstream",
                        picked: None,
                        retries,
                    });
                }
            },
            Destination::Workload(p, _) => (0, p.clone()),
        };
        let guard = match dest {
            Destination::Backend(b) => match b.try_request() {
                Some(g) => Some(g),
                None => return Err(overflow(picked, retries)),
            },
            Destination::Workload(..) => None,
        };
        let attempt_body = match next_body.take().or_else(|| once.take()) {
            Some(b) => b,
            None => return Err(not_sent(picked, retries)),
        };
        let req = Request::from_parts(parts.clone(), attempt_body);
        let pool = match dest {
            Destination::Backend(b) => Some(Pool {
                counters: &b.shared().counters,
                limits: &b.policy().pool,
            }),
            Destination::Workload(..) => None,
        };
        let deadline = match (plan.deadlines.per_try, overall) {
            (Some(p), Some(o)) => Some((Instant::now() + p).min(o)),
            (Some(p), None) => Some(Instant::now() + p),
            (None, o) => o,
        };
        let sent = send_one(proxy, &picked, plan, req, pool, deadline).await;
        if matches!(sent, Err(None)) && overall.is_some_and(|o| Instant::now() >= o) {
            return Err(overall_timeout(retries));
        }
        if let Err(Some(e)) = &sent
            && e.is_overflow()
        {
            return Err(overflow(picked, retries));
        }
        let outcome = match &sent {
            Ok((resp, _)) => Outcome::Response {
                status: resp.status().as_u16(),
                grpc_status: grpc_status(resp),
            },
            Err(Some(e)) => outcome_of(e),
            Err(None) => Outcome::PerTryTimeout,
        };
        if let Destination::Backend(b) = dest {
            b.record(index, &outcome);
        }
        // The body for a retry, if there may be one: the buffered bytes, then the rest of the client's body.
        // (Only built when the outcome is one to retry: the success path pays nothing for it.)
        // A body the previous attempt is still sending is not replayed (it could wait on a stalled server).
        next_body = if retries < retry.attempts && retriable(retry, &outcome) {
            replay
                .as_ref()
                .filter(|r| !r.is_streaming())
                .and_then(ReplayBody::try_clone)
                .map(BodyExt::boxed_unsync)
        } else {
            None
        };
        let decision = decide(retry, &outcome, retries, next_body.is_some());
        // A retry needs a budget token and, for a backend, a retry slot of its circuit breaker (held until
        // the retried attempt is over).
        let mut retry_now = false;
        if decision == Decision::Retry {
            if !shared.budget.try_withdraw() {
                proxy.metrics.retry_skipped("budget");
            } else {
                match dest {
                    Destination::Backend(b) => match b.try_retry() {
                        Some(g) => {
                            _retry_guard = Some(g);
                            retry_now = true;
                        }
                        None => proxy.metrics.retry_skipped("overflow"),
                    },
                    Destination::Workload(..) => retry_now = true,
                }
            }
        } else if decision == Decision::NotReplayable {
            proxy.metrics.retry_skipped("not_replayable");
        }
        if !retry_now {
            let exhausted = decision == Decision::Exhausted;
            return match sent {
                Ok((response, release)) => Ok(Sent {
                    response,
                    release,
                    picked,
                    guard,
                    flags: if exhausted { "URX" } else { flags::NONE },
                    retries,
                }),
                Err(e) => {
                    if let Some(e) = &e {
                        debug!(error = %e, "upstream failed");
                    }
                    let (status, flags, message) = failure(outcome, exhausted);
                    Err(Failed {
                        status,
                        flags,
                        message,
                        picked: Some(picked),
                        retries,
                    })
                }
            };
        }
        drop(sent);
        drop(guard);
        retries += 1;
        proxy.metrics.retry();
        tried.push(index);
        let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
        let wake = Instant::now() + retry.backoff.delay(retries, &mut rng);
        if overall.is_some_and(|o| wake >= o) {
            return Err(overall_timeout(retries));
        }
        tokio::time::sleep_until(wake).await;
    }
}

/// One attempt: `Err(None)` is the attempt's deadline passing.
async fn send_one(
    proxy: &Arc<Proxy>,
    picked: &Picked,
    plan: &Plan<'_>,
    req: Request<ReqBody>,
    pool: Option<Pool<'_>>,
    deadline: Option<Instant>,
) -> Result<(Response<Incoming>, Option<Release>), Option<UpstreamError>> {
    let send = async {
        if plan.upgrade {
            proxy
                .upstream
                .send_upgrade(&picked.workload, picked.addr, req)
                .await
                .map(|r| (r, None))
        } else {
            proxy
                .upstream
                .send(&picked.workload, picked.addr, plan.h2, req, pool)
                .await
        }
    };
    match deadline {
        Some(t) => match tokio::time::timeout_at(t, send).await {
            Ok(r) => r.map_err(Some),
            Err(_) => Err(None),
        },
        None => send.await.map_err(Some),
    }
}

/// The backend's circuit breaker is full: 503 `UO` at once.
fn overflow(picked: Picked, retries: u32) -> Failed {
    Failed {
        status: StatusCode::SERVICE_UNAVAILABLE,
        flags: flags::UPSTREAM_OVERFLOW,
        message: "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        picked: Some(picked),
        retries,
    }
}

/// The body could not be produced for an attempt (the replay buffer gave nothing): the request ends as a reset.
fn not_sent(picked: Picked, retries: u32) -> Failed {
    Failed {
        status: StatusCode::SERVICE_UNAVAILABLE,
        flags: flags::UPSTREAM_TERMINATION,
        message: "upstream connect error or disconnect/reset before headers",
        picked: Some(picked),
        retries,
    }
}
