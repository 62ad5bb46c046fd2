//! Leader election on one `coordination.k8s.io/v1` Lease, as istiod and client-go's `leaderelection` do it.
//!
//! Every replica serves xDS and signs certificates; only the holder of the Lease (default
//! `istio-system/ambit-controller`) writes status (and, later, deploys waypoints). istiod keeps one Lease per duty
//! (`istio-leader`, `istio-gateway-deployment-leader`, ...); Ambit keeps one for all of its leader-only duties, so
//! one replica does all the writing.
//!
//! A candidate reads the Lease every retry period and takes it when there is none (create), when it is free (no
//! `holderIdentity`) or expired (`renewTime + leaseDurationSeconds < now`), by a `replace` that carries the
//! `resourceVersion` it read: of two candidates one wins, the other gets 409 Conflict and waits. The leader renews
//! every retry period; when no renewal succeeded for the renew deadline (shorter than the lease duration, so it
//! stops before anyone may take over) it steps down. On drain the leader releases the Lease (no holder, a 1 s
//! duration) so a standby takes it at its next try instead of after the lease duration.
//!
//! Leadership is published on watch channels: [`LeaderElector::leading`] (`true` while leading) and
//! [`LeaderElector::paused`] (its negation, for [`crate::status_writer::StatusWriter::with_pause`]).
//!
//! Expiry is judged by comparing the holder's `renewTime` with this replica's clock (client-go instead times the
//! record from when it last saw it change, which tolerates clock skew); replicas are expected to run NTP.

use std::time::Duration;

use ::kube::Client;
use ::kube::api::{Api, ObjectMeta, PostParams};
use ambit_core::drain::DrainWatcher;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tokio::time::Instant;

/// The Lease of the status writer and the deployer.
pub const LEASE_NAME: &str = "ambit-controller";

/// The elector's settings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// This replica's `holderIdentity`: unique per process.
    pub identity: String,
    /// How long a Lease holds without renewal (`leaseDurationSeconds`; client-go's default 15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal (10 s).
    pub renew_deadline: Duration,
    /// How often a candidate tries and the leader renews (2 s).
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// client-go's proportions (15 s / 10 s / 2 s) scaled to `lease_duration`.
    pub fn new(namespace: String, identity: String, lease_duration: Duration) -> LeaderConfig {
        let lease_duration = lease_duration.max(Duration::from_secs(1));
        LeaderConfig {
            namespace,
            lease_name: LEASE_NAME.to_owned(),
            identity,
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: lease_duration * 2 / 15,
        }
    }
}

/// What to do with the Lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, held by us.
    Create,
    /// We hold it: renew (`renewTime` = now).
    Renew,
    /// Free or expired: take it over (`acquireTime` = now, one more transition).
    TakeOver,
    /// Another replica holds it and it has not expired.
    Wait { holder: String },
}

/// The pure decision: the Lease's `spec` as read (`None`: no Lease), our identity and the time.
pub fn decide(lease: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let expires_ms = spec.renew_time.as_ref().map(|t| {
        t.0.as_millisecond()
            .saturating_add(i64::from(spec.lease_duration_seconds.unwrap_or(0)) * 1000)
    });
    match expires_ms {
        Some(at) if at >= now.as_millisecond() => Decision::Wait {
            holder: holder.to_owned(),
        },
        _ => Decision::TakeOver,
    }
}

/// The spec to write for `decision` (not [`Decision::Wait`]), from the spec read.
pub fn next_spec(
    previous: Option<&LeaseSpec>,
    decision: &Decision,
    identity: &str,
    lease_duration: Duration,
    now: Timestamp,
) -> LeaseSpec {
    let mut spec = previous.cloned().unwrap_or_default();
    let seconds = i32::try_from(lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    match decision {
        Decision::Renew => {}
        Decision::Create => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(0);
        }
        Decision::TakeOver | Decision::Wait { .. } => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
    }
    spec.holder_identity = Some(identity.to_owned());
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(MicroTime(now));
    spec
}

/// The spec that gives the Lease up: no holder, expiring a second after now.
pub fn released_spec(previous: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        ..previous.clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("reading Lease {lease}: {source}")]
    Read {
        lease: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("writing Lease {lease}: {source}")]
    Write {
        lease: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("Lease {lease}: no answer within {timeout:?}")]
    Timeout { lease: String, timeout: Duration },
}

/// The outcome of one try.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold the Lease (created, renewed or taken over).
    Held,
    /// Another replica holds it.
    HeldBy(String),
    /// The Lease changed between our read and our write (409 Conflict): read it again at the next try.
    Conflict,
}

pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaderConfig,
    leading: watch::Sender<bool>,
    paused: watch::Sender<bool>,
}

impl LeaderElector {
    pub fn new(client: Client, cfg: LeaderConfig) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            leading: watch::channel(false).0,
            paused: watch::channel(true).0,
        }
    }

    /// `true` while this replica leads.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// `true` while this replica does not lead: the status writer's pause switch.
    pub fn paused(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    fn lease(&self) -> String {
        format!("{}/{}", self.cfg.namespace, self.cfg.lease_name)
    }

    fn publish(&self, leading: bool) {
        self.leading.send_replace(leading);
        self.paused.send_replace(!leading);
    }

    /// Runs until drained; then, if leading, steps down and releases the Lease.
    pub async fn run(self, mut drain: DrainWatcher) {
        let cfg = self.cfg.clone();
        tracing::info!(identity = %cfg.identity, lease = %self.lease(),
            lease_duration = ?cfg.lease_duration, renew_deadline = ?cfg.renew_deadline,
            retry_period = ?cfg.retry_period, "leader election");
        // When the last successful renewal was: `Some` while leading.
        let mut renewed: Option<Instant> = None;
        let mut last_holder: Option<String> = None;
        let mut last_error: Option<String> = None;
        loop {
            let budget = match renewed {
                Some(at) => (at + cfg.renew_deadline).saturating_duration_since(Instant::now()),
                None => cfg.renew_deadline,
            };
            // A renewal counts from before it was sent (its `renewTime` is from then), so the step-down at the
            // renew deadline comes before anyone may take the Lease over.
            let attempted = Instant::now();
            let outcome = tokio::select! {
                _ = drain.signaled() => break,
                r = tokio::time::timeout(budget, self.try_once()) => {
                    r.unwrap_or_else(|_| Err(LeaderError::Timeout { lease: self.lease(), timeout: budget }))
                }
            };
            let outcome_ok = outcome.is_ok();
            match outcome {
                Ok(Attempt::Held) => {
                    if renewed.is_none() {
                        tracing::info!(identity = %cfg.identity, lease = %self.lease(), "became leader");
                        self.publish(true);
                    }
                    renewed = Some(attempted);
                    last_holder = None;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if renewed.take().is_some() {
                        tracing::info!(identity = %cfg.identity, holder = %holder, "lost leadership");
                        self.publish(false);
                    }
                    if last_holder.as_deref() != Some(holder.as_str()) {
                        tracing::info!(holder = %holder, lease = %self.lease(), "standing by; the Lease is held");
                        last_holder = Some(holder);
                    }
                }
                // A leader keeps leading until the renew deadline; the next read says who holds it.
                Ok(Attempt::Conflict) => {
                    tracing::debug!(identity = %cfg.identity, "the Lease changed under us; reading it again");
                }
                Err(e) => {
                    // Reported when it changes; the same error again each retry period at debug.
                    let text = e.to_string();
                    if last_error.as_deref() == Some(text.as_str()) {
                        tracing::debug!(error = %text, "leader election: will retry");
                    } else {
                        tracing::warn!(error = %text, "leader election: will retry");
                        last_error = Some(text);
                    }
                }
            }
            if outcome_ok {
                last_error = None;
            }
            if let Some(at) = renewed
                && at.elapsed() >= cfg.renew_deadline
            {
                tracing::info!(identity = %cfg.identity, renew_deadline = ?cfg.renew_deadline,
                    "lost leadership: no renewal within the renew deadline");
                self.publish(false);
                renewed = None;
            }
            tokio::select! {
                _ = drain.signaled() => break,
                _ = tokio::time::sleep(cfg.retry_period) => {}
            }
        }
        if renewed.is_some() {
            self.publish(false);
            let timeout = cfg.retry_period.max(Duration::from_secs(1));
            match tokio::time::timeout(timeout, self.release()).await {
                Ok(Ok(true)) => {
                    tracing::info!(identity = %cfg.identity, lease = %self.lease(),
                        "lost leadership: released the Lease")
                }
                Ok(Ok(false)) => tracing::info!(identity = %cfg.identity, "lost leadership"),
                Ok(Err(e)) => tracing::warn!(error = %e, "releasing the Lease failed"),
                Err(_) => tracing::warn!(?timeout, "releasing the Lease timed out"),
            }
        }
    }

    /// The Lease as stored, if it exists.
    async fn read(&self) -> Result<Option<Lease>, LeaderError> {
        self.api
            .get_opt(&self.cfg.lease_name)
            .await
            .map_err(|source| LeaderError::Read {
                lease: self.lease(),
                source,
            })
    }

    /// Reads the Lease and creates, renews or takes it over as [`decide`] says.
    async fn try_once(&self) -> Result<Attempt, LeaderError> {
        let name = &self.cfg.lease_name;
        let current = self.read().await?;
        let now = Timestamp::now();
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let decision = decide(spec, &self.cfg.identity, now);
        if let Decision::Wait { holder } = decision {
            return Ok(Attempt::HeldBy(holder));
        }
        let lease = Lease {
            metadata: match &current {
                Some(l) => l.metadata.clone(),
                None => ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
            },
            spec: Some(next_spec(
                spec,
                &decision,
                &self.cfg.identity,
                self.cfg.lease_duration,
                now,
            )),
        };
        let pp = PostParams::default();
        let written = match decision {
            Decision::Create => self.api.create(&pp, &lease).await,
            _ => self.api.replace(name, &pp, &lease).await,
        };
        match written {
            Ok(_) => {
                if decision == Decision::TakeOver {
                    tracing::debug!(identity = %self.cfg.identity, "took over the Lease");
                }
                Ok(Attempt::Held)
            }
            // Someone else wrote it between our read and write (or created it first): they won this round.
            Err(::kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
            Err(source) => Err(LeaderError::Write {
                lease: self.lease(),
                source,
            }),
        }
    }

    /// Gives the Lease up if we still hold it; `false` when we did not.
    async fn release(&self) -> Result<bool, LeaderError> {
        let name = &self.cfg.lease_name;
        let current = self.read().await?;
        let Some(mut lease) = current else {
            return Ok(false);
        };
        let Some(spec) = lease.spec.as_ref() else {
            return Ok(false);
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(false);
        }
        lease.spec = Some(released_spec(spec, Timestamp::now()));
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(::kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(source) => Err(LeaderError::Write {
                lease: self.lease(),
                source,
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn held(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            renew_time: Some(MicroTime(at(renewed))),
            acquire_time: Some(MicroTime(at(0))),
            lease_duration_seconds: Some(duration),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn no_lease_is_created() {
        assert_eq!(decide(None, "me", at(0)), Decision::Create);
        let spec = next_spec(
            None,
            &Decision::Create,
            "me",
            Duration::from_secs(15),
            at(0),
        );
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(0))));
    }

    #[test]
    fn a_live_lease_of_another_is_waited_for() {
        let other = held("other", 10, 15);
        for now in [10, 20, 25] {
            assert_eq!(
                decide(Some(&other), "me", at(now)),
                Decision::Wait {
                    holder: "other".into()
                },
                "at {now}"
            );
        }
    }

    #[test]
    fn an_expired_lease_is_taken_over() {
        let other = held("other", 10, 15);
        assert_eq!(decide(Some(&other), "me", at(26)), Decision::TakeOver);
        let spec = next_spec(
            Some(&other),
            &Decision::TakeOver,
            "me",
            Duration::from_secs(3),
            at(26),
        );
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(26))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(26))));
        assert_eq!(spec.lease_duration_seconds, Some(3));
    }

    #[test]
    fn our_lease_is_renewed_even_when_expired() {
        let mine = held("me", 10, 15);
        for now in [11, 100] {
            assert_eq!(decide(Some(&mine), "me", at(now)), Decision::Renew);
        }
        let spec = next_spec(
            Some(&mine),
            &Decision::Renew,
            "me",
            Duration::from_secs(15),
            at(12),
        );
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))), "acquired once");
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.renew_time, Some(MicroTime(at(12))));
    }

    #[test]
    fn a_free_or_timeless_lease_is_taken_over() {
        let mut free = held("", 10, 15);
        assert_eq!(decide(Some(&free), "me", at(11)), Decision::TakeOver);
        free.holder_identity = None;
        assert_eq!(decide(Some(&free), "me", at(11)), Decision::TakeOver);
        let mut timeless = held("other", 10, 15);
        timeless.renew_time = None;
        assert_eq!(decide(Some(&timeless), "me", at(11)), Decision::TakeOver);
    }

    #[test]
    fn a_released_lease_is_free_at_once() {
        let mine = held("me", 10, 15);
        let released = released_spec(&mine, at(11));
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.lease_transitions, Some(3));
        assert_eq!(decide(Some(&released), "other", at(11)), Decision::TakeOver);
    }

    #[test]
    fn timings_follow_client_go() {
        let c = LeaderConfig::new("istio-system".into(), "me".into(), Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(2));
        assert_eq!(c.lease_name, "ambit-controller");
        let short = LeaderConfig::new("ns".into(), "me".into(), Duration::from_secs(3));
        assert_eq!(short.renew_deadline, Duration::from_secs(2));
        assert_eq!(short.retry_period, Duration::from_millis(400));
    }

    /// A fake API server holding one Lease: GET, POST (create) and PUT (replace, 409 on a stale
    /// `resourceVersion`); while `failing` it answers 500 to everything.
    #[derive(Clone, Default)]
    struct FakeLeases {
        lease: Arc<Mutex<Option<Value>>>,
        failing: Arc<AtomicBool>,
        /// The next PUT gets 409 Conflict.
        conflict_next: Arc<AtomicBool>,
    }

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt, Full};
    use serde_json::{Value, json};

    fn status(code: u16) -> (u16, Value) {
        (
            code,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "message": "fake",
                "reason": match code { 404 => "NotFound", 409 => "Conflict", _ => "InternalError" }}),
        )
    }

    impl FakeLeases {
        fn answer(&self, method: &http::Method, body: &[u8]) -> (u16, Value) {
            if self.failing.load(Ordering::SeqCst) {
                return status(500);
            }
            let mut lease = self.lease.lock().unwrap();
            let sent: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let rv = |v: &Value| {
                v["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            };
            match *method {
                http::Method::GET => match lease.as_ref() {
                    Some(l) => (200, l.clone()),
                    None => status(404),
                },
                http::Method::POST if lease.is_some() => status(409),
                http::Method::PUT if self.conflict_next.swap(false, Ordering::SeqCst) => {
                    status(409)
                }
                http::Method::PUT if lease.as_ref().map(rv) != Some(rv(&sent)) => status(409),
                http::Method::POST | http::Method::PUT => {
                    let next = lease
                        .as_ref()
                        .map(rv)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                        + 1;
                    let mut stored = sent;
                    stored["metadata"]["resourceVersion"] = json!(next.to_string());
                    *lease = Some(stored.clone());
                    (
                        if *method == http::Method::POST {
                            201
                        } else {
                            200
                        },
                        stored,
                    )
                }
                _ => status(405),
            }
        }

        fn holder(&self) -> Option<String> {
            let lease = self.lease.lock().unwrap();
            lease.as_ref()?["spec"]["holderIdentity"]
                .as_str()
                .map(str::to_owned)
        }

        /// Another replica writes the Lease, holding it from now.
        fn taken_by(&self, who: &str) {
            let mut lease = self.lease.lock().unwrap();
            if let Some(l) = lease.as_mut() {
                l["spec"]["holderIdentity"] = json!(who);
                l["spec"]["renewTime"] = json!(Timestamp::now().to_string());
                l["metadata"]["resourceVersion"] = json!("1000");
            }
        }

        async fn serve(self) -> Client {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let fake = self.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let fake = fake.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |req: http::Request<hyper::body::Incoming>| {
                                let fake = fake.clone();
                                async move {
                                    let method = req.method().clone();
                                    let body = req
                                        .into_body()
                                        .collect()
                                        .await
                                        .map(|b| b.to_bytes())
                                        .unwrap_or_default();
                                    let (code, v) = fake.answer(&method, &body);
                                    let mut resp = http::Response::new(Full::new(
                                        bytes::Bytes::from(v.to_string()),
                                    ));
                                    *resp.status_mut() = http::StatusCode::from_u16(code).unwrap();
                                    resp.headers_mut().insert(
                                        http::header::CONTENT_TYPE,
                                        "application/json".parse().unwrap(),
                                    );
                                    Ok::<_, std::convert::Infallible>(resp)
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
            Client::try_from(::kube::Config::new(
                format!("http://{addr}").parse().unwrap(),
            ))
            .unwrap()
        }
    }

    async fn until(what: &str, rx: &mut watch::Receiver<bool>, want: bool) {
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| *v == want))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap();
    }

    /// Acquire by create, keep leading over a lost race, step down when renewals fail past the renew deadline, lead again when the API answers,
    /// step down at once when another replica holds the Lease, and release it when drained while leading.
    #[tokio::test]
    async fn elector_acquires_steps_down_and_releases() {
        let fake = FakeLeases::default();
        let client = fake.clone().serve().await;
        let cfg = LeaderConfig::new("ns".into(), "me".into(), Duration::from_secs(1));
        let elector = LeaderElector::new(client.clone(), cfg.clone());
        let mut leading = elector.leading();
        let paused = elector.paused();
        let (trigger, drain) = ambit_core::drain::new();
        let task = tokio::spawn(elector.run(drain));

        until("leading", &mut leading, true).await;
        assert!(!*paused.borrow());
        assert_eq!(fake.holder().as_deref(), Some("me"));

        // A lost race while renewing (409) is retried, not a step-down.
        fake.conflict_next.store(true, Ordering::SeqCst);
        tokio::time::sleep(cfg.retry_period * 3).await;
        assert!(
            !fake.conflict_next.load(Ordering::SeqCst),
            "a conflict was served"
        );
        assert!(
            !leading.has_changed().unwrap() && *leading.borrow(),
            "still leading"
        );

        fake.failing.store(true, Ordering::SeqCst);
        until("stepping down on failed renewals", &mut leading, false).await;
        assert!(*paused.borrow());
        fake.failing.store(false, Ordering::SeqCst);
        until("leading again", &mut leading, true).await;

        fake.taken_by("other");
        until("stepping down for another holder", &mut leading, false).await;
        // The other holder's Lease is live: we stay standing by.
        tokio::time::sleep(cfg.retry_period * 2).await;
        assert!(!*leading.borrow());
        assert_eq!(fake.holder().as_deref(), Some("other"));

        // Let it expire: we take it over, then release it when drained.
        until("taking over the expired Lease", &mut leading, true).await;
        assert_eq!(fake.holder().as_deref(), Some("me"));
        trigger.drain(Duration::from_secs(2)).await;
        task.await.unwrap();
        assert!(!*leading.borrow());
        assert_eq!(fake.holder(), None, "released");
        let lease = fake.lease.lock().unwrap().clone().unwrap();
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 1);
        assert!(lease["spec"]["leaseTransitions"].as_i64() >= Some(1));
    }

    /// One elector against an API server that answers nothing in time: it never leads, never panics, and
    /// stops when drained.
    #[tokio::test]
    async fn unreachable_api_server_never_leads() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let config = ::kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let cfg = LeaderConfig::new("istio-system".into(), "me".into(), Duration::from_secs(1));
        let elector = LeaderElector::new(client, cfg);
        let leading = elector.leading();
        let paused = elector.paused();
        let (trigger, drain) = ambit_core::drain::new();
        let task = tokio::spawn(elector.run(drain));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!*leading.borrow());
        assert!(*paused.borrow());
        trigger.drain(Duration::from_secs(2)).await;
        task.await.unwrap();
    }
}
