//! Watches: a replay (the current state as ADDED, or the history after a `resourceVersion`) followed by the
//! live changes, as newline-delimited `{"type": ..., "object": ...}` events. A watch from a version older than
//! the retained history (or newer than the server's: the state was restored from an older snapshot) gets one
//! `ERROR` event with a 410 `Expired` Status, which kube-rs and client-go answer by listing again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::error::ApiError;
use crate::meta;
use crate::resources::{ResourceType, TypeKey};
use crate::selector::Selectors;
use crate::store::{Event, EventType, Inner, Store};

/// Turns a stored object into what the client receives (version, Table...).
pub type Render = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

pub struct WatchRequest {
    pub rt: ResourceType,
    pub api_version: String,
    pub namespace: Option<String>,
    pub selectors: Selectors,
    pub resource_version: Option<String>,
    pub send_initial_events: bool,
    pub allow_bookmarks: bool,
    pub timeout: Duration,
    pub render: Render,
}

fn line(etype: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": etype, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn expired(message: String) -> Bytes {
    line("ERROR", &ApiError::Expired(message).to_status())
}

/// What a watcher with this filter sees of `ev`: selectors turn modifications that cross the selection boundary
/// into ADDED or DELETED.
fn classify<'a>(
    ev: &'a Event,
    key: &TypeKey,
    ns: Option<&str>,
    sel: &Selectors,
) -> Option<(EventType, &'a Value)> {
    if &ev.key != key || ns.is_some_and(|n| meta::namespace(&ev.object) != n) {
        return None;
    }
    let now = sel.matches(&ev.object);
    match ev.etype {
        EventType::Added | EventType::Deleted => now.then_some((ev.etype, &*ev.object)),
        EventType::Modified => {
            let before = ev.old.as_ref().is_none_or(|o| sel.matches(o));
            match (before, now) {
                (true, true) => Some((EventType::Modified, &*ev.object)),
                (false, true) => Some((EventType::Added, &*ev.object)),
                (true, false) => Some((EventType::Deleted, &*ev.object)),
                (false, false) => None,
            }
        }
    }
}

fn bookmark(req: &WatchRequest, rv: u64, initial_end: bool) -> Bytes {
    let mut obj = json!({"kind": req.rt.kind, "apiVersion": req.api_version,
                         "metadata": {"resourceVersion": rv.to_string()}});
    if initial_end {
        obj["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line("BOOKMARK", &obj)
}

/// The replay, decided under the store lock together with the subscription, so no change falls in between.
fn replay(inner: &Inner, req: &WatchRequest) -> Result<(Vec<Bytes>, u64, bool), ApiError> {
    let key = req.rt.key();
    let ns = req.namespace.as_deref();
    let current = inner.resource_version();
    let from_state = |out: &mut Vec<Bytes>| {
        for obj in inner.list(&req.rt, ns, &req.selectors) {
            out.push(line("ADDED", &(req.render)(&obj)));
        }
    };
    let mut out = Vec::new();
    match req.resource_version.as_deref().filter(|v| !v.is_empty()) {
        None | Some("0") => {
            from_state(&mut out);
            if req.send_initial_events && req.allow_bookmarks {
                out.push(bookmark(req, current, true));
            }
        }
        Some(v) => {
            let rv: u64 = v
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {v:?}")))?;
            if rv < inner.compacted() {
                out.push(expired(format!(
                    "too old resource version: {rv} ({})",
                    inner.compacted()
                )));
                return Ok((out, current, true));
            }
            if rv > current {
                out.push(expired(format!(
                    "too large resource version: {rv}, current: {current}"
                )));
                return Ok((out, current, true));
            }
            if req.send_initial_events {
                from_state(&mut out);
                if req.allow_bookmarks {
                    out.push(bookmark(req, current, true));
                }
            } else {
                for ev in inner.history_since(rv) {
                    if let Some((t, obj)) = classify(ev, &key, ns, &req.selectors) {
                        out.push(line(t.as_str(), &(req.render)(obj)));
                    }
                }
            }
        }
    }
    Ok((out, current, false))
}

/// Starts a watch; the receiver yields the response body's chunks and ends when the watch does.
pub fn start(
    store: &Arc<Store>,
    req: WatchRequest,
    bookmark_every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let (initial, start_rv, done, mut rx) = {
        let inner = store.lock();
        let (initial, rv, done) = replay(&inner, &req)?;
        (initial, rv, done, inner.subscribe())
    };
    let (tx, out) = mpsc::channel(64);
    tokio::spawn(async move {
        for chunk in initial {
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
        if done {
            return;
        }
        let key = req.rt.key();
        let deadline = tokio::time::sleep(req.timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(bookmark_every);
        tick.tick().await;
        // Every event up to this version has reached this task: a bookmark may claim it.
        let mut seen = start_rv;
        loop {
            let chunk = tokio::select! {
                _ = &mut deadline => break,
                _ = shutdown.changed() => break,
                _ = tx.closed() => break,
                _ = tick.tick(), if req.allow_bookmarks => Some(bookmark(&req, seen, false)),
                r = rx.recv() => match r {
                    Ok(ev) => {
                        seen = ev.rv;
                        classify(&ev, &key, req.namespace.as_deref(), &req.selectors)
                            .map(|(t, obj)| line(t.as_str(), &(req.render)(obj)))
                    }
                    // Too slow a reader: end the watch, the client resumes from its last version.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            if let Some(chunk) = chunk
                && tx.send(chunk).await.is_err()
            {
                break;
            }
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::LabelSelector;
    use serde_json::json;

    fn ev(etype: EventType, old: Option<Value>, new: Value) -> Event {
        Event {
            rv: 1,
            key: TypeKey::pods(),
            etype,
            object: Arc::new(new),
            old: old.map(Arc::new),
        }
    }

    #[test]
    fn selector_boundary_crossings_become_added_and_deleted() {
        let sel = Selectors {
            labels: LabelSelector::parse("app=web").unwrap(),
            ..Default::default()
        };
        let web = json!({"metadata": {"name": "p", "namespace": "a", "labels": {"app": "web"}}});
        let db = json!({"metadata": {"name": "p", "namespace": "a", "labels": {"app": "db"}}});
        let k = TypeKey::pods();
        let t = |e: &Event| classify(e, &k, None, &sel).map(|(t, _)| t);
        assert_eq!(
            t(&ev(EventType::Modified, Some(db.clone()), web.clone())),
            Some(EventType::Added)
        );
        assert_eq!(
            t(&ev(EventType::Modified, Some(web.clone()), db.clone())),
            Some(EventType::Deleted)
        );
        assert_eq!(
            t(&ev(EventType::Modified, Some(web.clone()), web.clone())),
            Some(EventType::Modified)
        );
        assert_eq!(
            t(&ev(EventType::Modified, Some(db.clone()), db.clone())),
            None
        );
        assert_eq!(t(&ev(EventType::Added, None, db.clone())), None);
        assert_eq!(
            classify(
                &ev(EventType::Added, None, web.clone()),
                &k,
                Some("b"),
                &sel
            )
            .map(|(t, _)| t),
            None
        );
        assert_eq!(
            classify(
                &ev(EventType::Added, None, web),
                &TypeKey::namespaces(),
                None,
                &sel
            )
            .map(|(t, _)| t),
            None
        );
    }
}
