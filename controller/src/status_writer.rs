//! Writes the computed `status` (`/debug/status`) back to the Kubernetes API by server-side apply, field manager
//! `ambit-controller`, on the objects' `status` subresource. Kubernetes mode only.
//!
//! After each compute (coalesced by a short debounce) every object whose computed status or `metadata.generation`
//! differs from what was last written gets one apply patch. The first time an object is seen its current `status`
//! is read, so a restart neither rewrites an unchanged status nor resets `lastTransitionTime`. Conditions are
//! stamped as Kubernetes and Gateway API define them ([`stamp`]): `lastTransitionTime` changes only when a
//! condition's `status` flips, `observedGeneration` is the object's generation. A failed write is logged with the
//! object and retried later; a 404 (the object is gone) is not an error.
//!
//! The writer can be paused ([`StatusWriter::with_pause`]): the seam for leader election, where only the Lease
//! holder writes. Pod `istio.io/WaypointBound` is not written (Istio writes it on Services, ServiceEntries and
//! WorkloadEntries only; pod conditions have another shape).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::kube::Client;
use ::kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use ambit_core::drain::DrainWatcher;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::compute::Resources;
use crate::index::Index;
use crate::sources::kube::RESOURCES;

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "ambit-controller";

/// How long after a compute the writer waits for more before writing (coalescing bursts).
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How soon a failed write is tried again when nothing else changes.
const RETRY: Duration = Duration::from_secs(5);

/// `metadata.generation` of every object with a computed status, by the status key (`<kind>/<ns>/<name>`).
pub type Generations = BTreeMap<String, i64>;

/// The generations of the objects `status` has keys for (0 when the object does not say).
pub fn generations(index: &Index, status: &BTreeMap<String, Value>) -> Generations {
    let mut out = Generations::new();
    for key in status.keys() {
        let Some((kind, ns, name)) = split_key(key) else {
            continue;
        };
        let k = (ns.to_owned(), name.to_owned());
        let meta = match kind {
            "gateway" => index.gateways.get(&k).map(|o| &o.metadata),
            "httproute" => index.http_routes.get(&k).map(|o| &o.metadata),
            "grpcroute" => index.grpc_routes.get(&k).map(|o| &o.metadata),
            "tcproute" => index.tcp_routes.get(&k).map(|o| &o.metadata),
            "service" => index.services.get(&k).map(|o| &o.metadata),
            "authorizationpolicy" => index.authorization_policies.get(&k).map(|o| &o.metadata),
            "requestauthentication" => index.request_authentications.get(&k).map(|o| &o.metadata),
            "ratelimitpolicy" => index.rate_limit_policies.get(&k).map(|o| &o.metadata),
            "virtualservice" => index.virtual_services.get(&k).map(|o| &o.metadata),
            "destinationrule" => index.destination_rules.get(&k).map(|o| &o.metadata),
            "serviceentry" => index.service_entries.get(&k).map(|o| &o.metadata),
            "workloadentry" => index.workload_entries.get(&k).map(|o| &o.metadata),
            "faultinjection" => index.fault_injections.get(&k).map(|o| &o.metadata),
            _ => None,
        };
        if let Some(m) = meta {
            out.insert(key.clone(), m.generation.unwrap_or(0));
        }
    }
    out
}

/// `<kind>/<ns>/<name>` → its parts.
fn split_key(key: &str) -> Option<(&str, &str, &str)> {
    let (kind, rest) = key.split_once('/')?;
    let (ns, name) = rest.split_once('/')?;
    Some((kind, ns, name))
}

/// The API resource a status key's kind is written at; `None` for kinds that are not written (pods).
fn resource_of(kind: &str) -> Option<ApiResource> {
    if kind == "pod" {
        return None;
    }
    RESOURCES
        .iter()
        .find(|r| r.3.eq_ignore_ascii_case(kind))
        .map(|&(_, group, version, kind_name, plural)| {
            ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(group, version, kind_name),
                plural,
            )
        })
}

/// Istio's own kinds carry `observedGeneration` at the top of their status too (`IstioStatus`).
fn is_istio_kind(res: &ApiResource) -> bool {
    res.group.ends_with("istio.io") || res.group == "ambit.dev"
}

/// `desired` (a computed status, without times) with `observedGeneration` and `lastTransitionTime` on every
/// condition: the time of the matching condition of `previous` (the status as written before) when its `status` is
/// the same, else `now`. Conditions are matched by `type` within `status.conditions`, within the listener of the
/// same `name` (`status.listeners[].conditions`) and within the parent of the same `parentRef` and
/// `controllerName` (`status.parents[].conditions`).
pub fn stamp(desired: &Value, previous: Option<&Value>, generation: i64, now: &str) -> Value {
    let mut out = desired.clone();
    let prev = previous.unwrap_or(&Value::Null);
    stamp_conditions(&mut out, prev, generation, now);
    for (list, key) in [
        ("listeners", &["name"][..]),
        ("parents", &["parentRef", "controllerName"]),
    ] {
        let Some(items) = out.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        let before = prev.get(list).and_then(Value::as_array);
        for item in items {
            let matching = before
                .and_then(|b| {
                    b.iter()
                        .find(|p| key.iter().all(|k| p.get(*k) == item.get(*k)))
                })
                .unwrap_or(&Value::Null);
            stamp_conditions(item, matching, generation, now);
        }
    }
    out
}

fn stamp_conditions(holder: &mut Value, previous: &Value, generation: i64, now: &str) {
    let Some(conditions) = holder.get_mut("conditions").and_then(Value::as_array_mut) else {
        return;
    };
    let before = previous.get("conditions").and_then(Value::as_array);
    for c in conditions {
        let old = before.and_then(|b| b.iter().find(|o| o.get("type") == c.get("type")));
        let time = match old {
            Some(o) if o.get("status") == c.get("status") => o
                .get("lastTransitionTime")
                .cloned()
                .unwrap_or_else(|| Value::String(now.to_owned())),
            _ => Value::String(now.to_owned()),
        };
        if let Some(obj) = c.as_object_mut() {
            obj.insert("lastTransitionTime".into(), time);
            obj.insert("observedGeneration".into(), json!(generation));
        }
    }
}

/// Whether the fields of `ours` are all in `current` with the same values (other managers' fields may be there).
fn contained(ours: &Value, current: &Value) -> bool {
    match (ours, current) {
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .all(|(k, v)| b.get(k).is_some_and(|c| contained(v, c))),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| contained(x, y))
        }
        _ => ours == current,
    }
}

/// What was last written to one object.
#[derive(Clone, Debug, PartialEq)]
struct Written {
    desired: Value,
    generation: i64,
    /// `desired` as stamped and written; `None`: the object was not found (read again when something changes).
    stamped: Option<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("reading {key}: {source}")]
    Read {
        key: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("applying the status of {key}: {source}")]
    Apply {
        key: String,
        #[source]
        source: ::kube::Error,
    },
}

/// The status writer's inputs: the controller's published resources and generations.
pub struct StatusWriter {
    client: Client,
    resources: watch::Receiver<Arc<Resources>>,
    generations: watch::Receiver<Arc<Generations>>,
    paused: Option<watch::Receiver<bool>>,
    written: BTreeMap<String, Written>,
}

impl StatusWriter {
    pub fn new(
        client: Client,
        resources: watch::Receiver<Arc<Resources>>,
        generations: watch::Receiver<Arc<Generations>>,
    ) -> Self {
        StatusWriter {
            client,
            resources,
            generations,
            paused: None,
            written: BTreeMap::new(),
        }
    }

    /// Writes only while `paused` holds `false` (a leader elector's "not the leader"); on resuming, every
    /// object's current status is read again.
    pub fn with_pause(mut self, paused: watch::Receiver<bool>) -> Self {
        self.paused = Some(paused);
        self
    }

    fn is_paused(&self) -> bool {
        self.paused.as_ref().is_some_and(|p| *p.borrow())
    }

    /// Runs until drained or until the controller stops publishing.
    pub async fn run(mut self, mut drain: DrainWatcher) {
        let mut retry_at: Option<tokio::time::Instant> = None;
        // Stands in for a pause switch that is not there (or whose sender is gone): never changes.
        let (_never_tx, mut never) = watch::channel(false);
        loop {
            let mut pause_gone = false;
            let pause = match self.paused.as_mut() {
                Some(p) => p,
                None => &mut never,
            };
            tokio::select! {
                _ = drain.signaled() => return,
                r = self.resources.changed() => if r.is_err() { return },
                r = pause.changed() => pause_gone = r.is_err(),
                _ = sleep_until(retry_at) => {}
            }
            if pause_gone {
                // The switch's owner is gone: its last word stands.
                if self.is_paused() {
                    tracing::warn!(
                        "the status writer's pause switch went away while paused; not writing"
                    );
                    return;
                }
                self.paused = None;
            }
            // Coalesce what follows closely (a burst of computes, the generations published with the resources).
            tokio::select! {
                _ = drain.signaled() => return,
                _ = tokio::time::sleep(DEBOUNCE) => {}
            }
            if self.is_paused() {
                self.written.clear();
                retry_at = None;
                continue;
            }
            let failed = self.write_changed().await;
            retry_at = (failed > 0).then(|| tokio::time::Instant::now() + RETRY);
        }
    }

    /// One pass: writes every changed status; returns how many writes failed.
    async fn write_changed(&mut self) -> usize {
        let resources = self.resources.borrow_and_update().clone();
        let generations = self.generations.borrow_and_update().clone();
        // Objects whose status is no longer computed are forgotten (a later status starts from a fresh read).
        self.written.retain(|k, _| resources.status.contains_key(k));
        let mut failed = 0;
        for (key, desired) in &resources.status {
            let Some((kind, ns, name)) = split_key(key) else {
                continue;
            };
            let (Some(res), Some(&generation)) = (resource_of(kind), generations.get(key)) else {
                continue;
            };
            if self
                .written
                .get(key)
                .is_some_and(|w| &w.desired == desired && w.generation == generation)
            {
                continue;
            }
            match self.write(key, &res, ns, name, desired, generation).await {
                Ok(Some(w)) => {
                    self.written.insert(key.clone(), w);
                }
                Ok(None) => {
                    // Gone (its delete is on the way): not asked for again until its status changes.
                    self.written.insert(
                        key.clone(),
                        Written {
                            desired: desired.clone(),
                            generation,
                            stamped: None,
                        },
                    );
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(object = %key, error = %e, "writing status failed; will retry");
                }
            }
        }
        failed
    }

    /// Writes one object's status unless it already holds it; `None` when the object is gone.
    async fn write(
        &self,
        key: &str,
        res: &ApiResource,
        ns: &str,
        name: &str,
        desired: &Value,
        generation: i64,
    ) -> Result<Option<Written>, WriteError> {
        let api: Api<DynamicObject> = if ns.is_empty() {
            Api::all_with(self.client.clone(), res)
        } else {
            Api::namespaced_with(self.client.clone(), ns, res)
        };
        let (previous, current) = match self.written.get(key).and_then(|w| w.stamped.as_ref()) {
            Some(stamped) => (Some(stamped.clone()), None),
            None => {
                let obj = api.get_opt(name).await.map_err(|source| WriteError::Read {
                    key: key.to_owned(),
                    source,
                })?;
                let Some(obj) = obj else {
                    return Ok(None);
                };
                let status = obj.data.get("status").cloned().unwrap_or(Value::Null);
                (Some(status.clone()), Some(status))
            }
        };
        let now = k8s_openapi::jiff::Timestamp::now()
            .round(k8s_openapi::jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let mut stamped = stamp(desired, previous.as_ref(), generation, &now);
        if is_istio_kind(res)
            && let Some(o) = stamped.as_object_mut()
        {
            o.insert("observedGeneration".into(), json!(generation));
        }
        let written = Written {
            desired: desired.clone(),
            generation,
            stamped: Some(stamped.clone()),
        };
        if current.is_some_and(|c| contained(&stamped, &c)) {
            tracing::debug!(object = %key, "status already up to date");
            return Ok(Some(written));
        }
        let body = json!({
            "apiVersion": res.api_version,
            "kind": res.kind,
            "metadata": {"name": name, "namespace": (!ns.is_empty()).then_some(ns)},
            "status": stamped,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch_status(name, &params, &Patch::Apply(&body)).await {
            Ok(_) => {
                tracing::debug!(object = %key, generation, "status written");
                Ok(Some(written))
            }
            Err(::kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(source) => Err(WriteError::Apply {
                key: key.to_owned(),
                source,
            }),
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::compute::status::condition;

    const T0: &str = "2026-01-01T00:00:00Z";
    const T1: &str = "2026-01-02T00:00:00Z";

    fn gateway(accepted: bool, programmed: bool) -> Value {
        json!({
            "addresses": [{"type": "Hostname", "value": "wp.demo.svc.cluster.local"}],
            "conditions": [
                condition("Accepted", accepted, "Accepted", "Resource accepted"),
                condition("Programmed", programmed, "Programmed", "x"),
            ],
            "listeners": [{"name": "mesh", "conditions": [condition("Programmed", programmed, "Programmed", "x")]}],
        })
    }

    #[test]
    fn first_write_stamps_now_and_the_generation() {
        let s = stamp(&gateway(true, false), None, 3, T0);
        for c in s["conditions"].as_array().unwrap() {
            assert_eq!(c["lastTransitionTime"], T0);
            assert_eq!(c["observedGeneration"], 3);
        }
        assert_eq!(s["listeners"][0]["conditions"][0]["lastTransitionTime"], T0);
        assert_eq!(s["addresses"], gateway(true, false)["addresses"]);
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let first = stamp(&gateway(true, false), None, 1, T0);
        let second = stamp(&gateway(true, true), Some(&first), 2, T1);
        // Accepted stayed True: its time is kept; the generation is the new one.
        assert_eq!(second["conditions"][0]["lastTransitionTime"], T0);
        assert_eq!(second["conditions"][0]["observedGeneration"], 2);
        // Programmed flipped: now.
        assert_eq!(second["conditions"][1]["lastTransitionTime"], T1);
        assert_eq!(
            second["listeners"][0]["conditions"][0]["lastTransitionTime"],
            T1
        );
        // A changed message with the same status keeps the time.
        let mut msg = gateway(true, true);
        msg["conditions"][1]["message"] = json!("other");
        let third = stamp(&msg, Some(&second), 2, "2026-01-03T00:00:00Z");
        assert_eq!(third["conditions"][1]["lastTransitionTime"], T1);
        assert_eq!(third["conditions"][1]["message"], "other");
    }

    #[test]
    fn route_parents_are_matched_by_parent_ref() {
        let parent = |name: &str, ok: bool| {
            json!({"parentRef": {"group": "", "kind": "Service", "name": name},
                "controllerName": "istio.io/mesh-controller",
                "conditions": [condition("ResolvedRefs", ok, "ResolvedRefs", "")]})
        };
        let before = stamp(
            &json!({"parents": [parent("a", true), parent("b", true)]}),
            None,
            1,
            T0,
        );
        // The order changed and b's refs broke.
        let after = stamp(
            &json!({"parents": [parent("b", false), parent("a", true)]}),
            Some(&before),
            1,
            T1,
        );
        assert_eq!(
            after["parents"][0]["conditions"][0]["lastTransitionTime"],
            T1
        );
        assert_eq!(
            after["parents"][1]["conditions"][0]["lastTransitionTime"],
            T0
        );
    }

    #[test]
    fn a_status_read_back_with_other_fields_counts_as_written() {
        let ours = stamp(&gateway(true, true), None, 1, T0);
        let mut current = ours.clone();
        current["conditions"][0]["extra"] = json!("from another manager");
        current["other"] = json!(1);
        assert!(contained(&ours, &current));
        let flipped = stamp(&gateway(false, true), Some(&current), 1, T1);
        assert!(!contained(&flipped, &current));
        assert!(!contained(&ours, &Value::Null));
    }

    #[test]
    fn keys_map_to_the_resources_they_are_written_at() {
        let gw = resource_of("gateway").unwrap();
        assert_eq!(
            (gw.api_version.as_str(), gw.plural.as_str()),
            ("gateway.networking.k8s.io/v1", "gateways")
        );
        assert_eq!(resource_of("httproute").unwrap().kind, "HTTPRoute");
        assert_eq!(resource_of("service").unwrap().api_version, "v1");
        assert!(is_istio_kind(&resource_of("authorizationpolicy").unwrap()));
        assert!(!is_istio_kind(&gw));
        assert!(resource_of("pod").is_none());
        assert_eq!(
            split_key("gateway/demo/wp"),
            Some(("gateway", "demo", "wp"))
        );
    }

    /// A fake API server: records `METHOD path` of every request; `GET` answers the object (404 for `gone`),
    /// `PATCH` echoes it.
    async fn fake_api() -> (Client, Arc<std::sync::Mutex<Vec<String>>>) {
        use http_body_util::Full;
        use hyper::body::Bytes;
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = log.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let path = req.uri().path().to_owned();
                            seen.lock()
                                .unwrap()
                                .push(format!("{} {path}", req.method()));
                            let name = path.split('/').nth(7).unwrap_or_default().to_owned();
                            let (code, body) = if name == "gone" {
                                (
                                    404,
                                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "NotFound", "code": 404, "message": "not found"}),
                                )
                            } else {
                                (
                                    200,
                                    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                                "metadata": {"name": name, "namespace": "demo", "resourceVersion": "1"}}),
                                )
                            };
                            let resp = hyper::Response::builder()
                                .status(code)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body.to_string())))
                                .unwrap();
                            async move { Ok::<_, std::convert::Infallible>(resp) }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        let config = ::kube::Config::new(format!("http://{addr}").parse().unwrap());
        (Client::try_from(config).unwrap(), log)
    }

    /// Waits until the log has `n` entries, then takes them.
    async fn take(log: &std::sync::Mutex<Vec<String>>, n: usize) -> Vec<String> {
        for _ in 0..500 {
            if log.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::mem::take(&mut *log.lock().unwrap())
    }

    #[tokio::test]
    async fn writes_once_per_change_skips_gone_objects_and_waits_while_paused() {
        let (client, log) = fake_api().await;
        let status = |ok: bool| {
            let mut r = Resources::default();
            for name in ["wp", "gone"] {
                r.status.insert(
                    format!("gateway/demo/{name}"),
                    json!({"conditions": [condition("Accepted", ok, "Accepted", "")]}),
                );
            }
            // Not written: pods.
            r.status
                .insert("pod/demo/p".into(), json!({"conditions": []}));
            Arc::new(r)
        };
        let gens = |g: i64| {
            Arc::new(Generations::from([
                ("gateway/demo/wp".into(), g),
                ("gateway/demo/gone".into(), g),
                ("pod/demo/p".into(), g),
            ]))
        };
        let (res_tx, res_rx) = watch::channel(Arc::new(Resources::default()));
        let (gen_tx, gen_rx) = watch::channel(gens(1));
        let (pause_tx, pause_rx) = watch::channel(true);
        let (_trigger, drain) = ambit_core::drain::new();
        tokio::spawn(
            StatusWriter::new(client, res_rx, gen_rx)
                .with_pause(pause_rx)
                .run(drain),
        );
        let base = "/apis/gateway.networking.k8s.io/v1/namespaces/demo/gateways";
        // Paused: nothing is read or written.
        res_tx.send_replace(status(true));
        tokio::time::sleep(DEBOUNCE * 3).await;
        assert!(log.lock().unwrap().is_empty());
        // Resumed: each object is read once; the one that exists is patched, the gone one is not.
        pause_tx.send_replace(false);
        let mut first = take(&log, 3).await;
        first.sort();
        assert_eq!(
            first,
            [
                format!("GET {base}/gone"),
                format!("GET {base}/wp"),
                format!("PATCH {base}/wp/status")
            ]
        );
        // The same status again: nothing. A new generation: one patch, no read.
        res_tx.send_replace(status(true));
        tokio::time::sleep(DEBOUNCE * 3).await;
        assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
        gen_tx.send_replace(gens(2));
        res_tx.send_replace(status(true));
        assert_eq!(
            take(&log, 2).await,
            [
                format!("GET {base}/gone"),
                format!("PATCH {base}/wp/status")
            ]
        );
    }
}
