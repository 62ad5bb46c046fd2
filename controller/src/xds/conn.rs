//! One ADS stream: subscriptions, what the client holds, ACK/NACK bookkeeping.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use ambit_core::drain::DrainWatcher;
use ambit_proto::type_url;
use ambit_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Resource};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::{ConnectionInfo, Snapshot, XdsMetrics};
use crate::index::Name;

/// Per type URL.
#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    /// Explicitly subscribed names (on-demand).
    names: BTreeSet<String>,
    /// Name → version the client holds, as far as we know.
    sent: HashMap<String, String>,
    /// The snapshot generation `sent` was last brought up to date with (0: never).
    synced: u64,
}

pub(super) struct Connection {
    id: u64,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<XdsMetrics>,
    table: Arc<Mutex<BTreeMap<u64, ConnectionInfo>>>,
    info: ConnectionInfo,
    types: BTreeMap<String, TypeState>,
    nonce: u64,
    /// The waypoint Gateway this connection declared itself to be: its wildcard routes and policies (every type
    /// in [`Snapshot::scopes`]) are limited to that waypoint's scope. `None`: every one.
    scope: Option<Name>,
}

/// The waypoint Gateway `(namespace, name)` of a node: a `router~` id with non-empty `GATEWAY_NAME` and
/// `NAMESPACE` metadata (what Ambit's waypoint sends). Anything else is unscoped.
fn waypoint_scope(node: &Node) -> Option<Name> {
    if !node.id.starts_with("router~") {
        return None;
    }
    let fields = &node.metadata.as_ref()?.fields;
    let string = |k: &str| match fields.get(k)?.kind.as_ref()? {
        prost_types::value::Kind::StringValue(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    Some((string("NAMESPACE")?, string("GATEWAY_NAME")?))
}

type Tx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// The order in which one snapshot change is pushed: `Address` (additions, updates and removals), then
/// `Authorization`, then the waypoint types (by name).
///
/// Why Address first, then Authorization, and the same on removal (fail closed). A ztunnel applies to workload W
/// the GLOBAL and NAMESPACE policies plus the names in `W.authorization_policies` that it holds (a name it does not
/// hold yet is skipped), and re-checks its live connections when an Authorization response arrives, not when an
/// Address does (upstream ztunnel's policy store notifies only on policy updates).
/// * A new selector policy P for W: Address first leaves W naming a P not yet held (skipped) until P arrives, and
///   P's arrival re-checks every connection, so one opened in between is closed if P denies it. Authorization
///   first would store P unused, then W's new Address activates it without a re-check: a connection opened in
///   between would never be checked against P.
/// * W removed (with or without its policies): W's Address removal goes first, so W is unknown (connections to
///   it are refused) before its policies go; policies removed first would leave W reachable, unprotected, until
///   its Address removal arrived. So a workload loses its policies last.
/// * A policy removed while W stops naming it: W's Address drops the name, then the removal re-checks with the
///   final state.
///
/// Within a type the order does not matter: one response is applied as a whole. Types each client asks for are
/// first answered in the order it asks (upstream ztunnel asks for Address, then Authorization).
fn push_order<'a>(types: impl Iterator<Item = &'a String>) -> Vec<String> {
    let rank = |t: &str| match t {
        type_url::ADDRESS => 0,
        type_url::AUTHORIZATION => 1,
        _ => 2,
    };
    let mut types: Vec<String> = types.cloned().collect();
    types.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    types
}

/// The connection is over (client gone or stream error).
struct Closed;

impl Connection {
    pub(super) fn new(
        id: u64,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        metrics: Arc<XdsMetrics>,
        table: Arc<Mutex<BTreeMap<u64, ConnectionInfo>>>,
        info: ConnectionInfo,
    ) -> Self {
        Connection {
            id,
            snapshots,
            metrics,
            table,
            info,
            types: BTreeMap::new(),
            nonce: 0,
            scope: None,
        }
    }

    pub(super) async fn run(
        mut self,
        mut requests: Streaming<DeltaDiscoveryRequest>,
        tx: Tx,
        mut drain: DrainWatcher,
    ) {
        self.metrics.connected.inc();
        self.metrics.connections.inc();
        self.publish();
        tracing::debug!(conn.id = self.id, src.addr = %self.info.peer, "xds stream opened");
        // Everything currently in the snapshot counts as seen: pushes are for later changes.
        self.snapshots.mark_unchanged();
        loop {
            let step = tokio::select! {
                req = requests.message() => match req {
                    Ok(Some(req)) => self.on_request(req, &tx).await,
                    Ok(None) => Err(Closed),
                    Err(status) => {
                        tracing::debug!(conn.id = self.id, error = %status, "xds stream error");
                        Err(Closed)
                    }
                },
                changed = self.snapshots.changed() => match changed {
                    Ok(()) => self.push_all(&tx).await,
                    Err(_) => Err(Closed),
                },
                _ = drain.signaled() => Err(Closed),
            };
            self.publish();
            if step.is_err() {
                break;
            }
        }
        self.close();
    }

    fn close(&self) {
        tracing::debug!(conn.id = self.id, node.id = %self.info.node_id, "xds stream closed");
        self.metrics.connected.dec();
        if let Ok(mut t) = self.table.lock() {
            t.remove(&self.id);
        }
    }

    fn publish(&mut self) {
        self.info.resources = self
            .types
            .iter()
            .map(|(k, t)| (k.clone(), t.sent.len()))
            .collect();
        for (k, t) in &self.types {
            self.info.types.entry(k.clone()).or_default().resources = t.sent.len();
        }
        self.info.generation = self.snapshots.borrow().generation;
        if let Ok(mut t) = self.table.lock() {
            t.insert(self.id, self.info.clone());
        }
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest, tx: &Tx) -> Result<(), Closed> {
        if let Some(node) = &req.node
            && self.info.node_id.is_empty()
        {
            self.info.node_id = node.id.clone();
            self.info.node_type = node.id.split('~').next().unwrap_or_default().to_owned();
            self.info.version = node
                .metadata
                .as_ref()
                .and_then(|m| m.fields.get("ISTIO_VERSION"))
                .and_then(|v| match &v.kind {
                    Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            self.scope = waypoint_scope(node);
            self.info.waypoint = self.scope.as_ref().map(|(ns, gw)| format!("{ns}/{gw}"));
            if self.scope.is_some() {
                // Routes and policies sent before the node was known were unscoped: the next push takes the full
                // difference.
                let snap = self.snapshots.borrow().clone();
                for t in snap.scopes.keys() {
                    if let Some(state) = self.types.get_mut(*t) {
                        state.synced = 0;
                    }
                }
            }
            tracing::info!(conn.id = self.id, node.id = %node.id, src.addr = %self.info.peer,
                waypoint = self.info.waypoint.as_deref().unwrap_or(""), "xds client connected");
        }
        let label = XdsMetrics::label(&req.type_url);
        if !req.response_nonce.is_empty() {
            let status = self.info.types.entry(req.type_url.clone()).or_default();
            if let Some(err) = &req.error_detail {
                status.nacked_nonce = req.response_nonce.clone();
                status.nack_error = err.message.clone();
                self.info.nacks += 1;
                self.info.last_nack = Some(err.message.clone());
                self.metrics.rejects.get_or_create(&label).inc();
                tracing::warn!(conn.id = self.id, node.id = %self.info.node_id, xds.type = %label.r#type,
                    xds.nonce = %req.response_nonce, error = %err.message, "client rejected resources (NACK)");
            } else {
                if status.sent_nonce == req.response_nonce {
                    status.acked_generation = status.sent_generation;
                }
                status.acked_nonce = req.response_nonce.clone();
                self.info.acks += 1;
            }
            // An ACK/NACK may also carry subscription changes; otherwise there is nothing to answer.
            if req.resource_names_subscribe.is_empty() && req.resource_names_unsubscribe.is_empty()
            {
                return Ok(());
            }
        }
        let first = !self.types.contains_key(&req.type_url);
        if first
            && !req.initial_resource_versions.is_empty()
            && self.snapshots.borrow().generation == 0
        {
            // A client that holds resources (reconnecting to a just restarted controller) waits until the first
            // state is computed: answered from the empty placeholder (generation 0), it would be told that
            // everything it holds is gone. A clone waits, so the change still counts as unseen for the other
            // types (a push follows). The sender goes when the controller loop stops (drain): then we close.
            let mut computed = self.snapshots.clone();
            if computed.wait_for(|s| s.generation > 0).await.is_err() {
                return Err(Closed);
            }
        }
        let state = self.types.entry(req.type_url.clone()).or_default();
        if first {
            state.sent = req.initial_resource_versions.clone().into_iter().collect();
            state.wildcard = req.resource_names_subscribe.is_empty();
        }
        let mut requested = Vec::new();
        for name in &req.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name.clone());
                requested.push(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
                requested.retain(|r| r != name);
            }
        }
        let known = [
            type_url::ADDRESS,
            type_url::AUTHORIZATION,
            type_url::WAYPOINT_ROUTE,
            type_url::WAYPOINT_BACKEND_POLICY,
            type_url::WAYPOINT_AUTHORIZATION,
            type_url::WAYPOINT_REQUEST_AUTHENTICATION,
            type_url::WAYPOINT_RATE_LIMIT,
        ]
        .contains(&req.type_url.as_str());
        if !known {
            tracing::info!(conn.id = self.id, xds.type = %req.type_url, "subscription to an unknown type; answering empty");
        }
        // The first request of a type is always answered (clients block readiness on it).
        let snap = self.snapshots.borrow().clone();
        self.respond(&snap, &req.type_url, &requested, first, None, tx)
            .await
    }

    /// A new snapshot: for each subscribed type, only the names that changed when this connection is up to date
    /// with the snapshot the change set is relative to (and subscribes by wildcard only); the full difference
    /// otherwise.
    async fn push_all(&mut self, tx: &Tx) -> Result<(), Closed> {
        let snap = self.snapshots.borrow_and_update().clone();
        let types = push_order(self.types.keys());
        let none = BTreeSet::new();
        for t in types {
            let only = match (&snap.changes, self.types.get(&t)) {
                (Some((base, changes)), Some(state))
                    if state.synced == *base && state.names.is_empty() =>
                {
                    Some(changes.get(t.as_str()).unwrap_or(&none))
                }
                _ => None,
            };
            self.respond(&snap, &t, &[], false, only, tx).await?;
        }
        Ok(())
    }

    /// Sends what the client lacks for `type_url` (and, for `requested` names that do not exist, a removal so an
    /// on-demand waiter is released). With `always`, sends even an empty response. With `only`, looks at just
    /// those names (the snapshot's change set); otherwise at everything wanted and everything sent.
    ///
    /// For a scoped connection, wildcard routes (and backend policies) are only those in its waypoint's scope; the
    /// change set includes every one whose visibility changed, so the change-set path both sends newly visible routes and removes
    /// ones no longer visible.
    async fn respond(
        &mut self,
        snap: &Snapshot,
        type_url: &str,
        requested: &[String],
        always: bool,
        only: Option<&BTreeSet<String>>,
        tx: &Tx,
    ) -> Result<(), Closed> {
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let empty = BTreeMap::new();
        let all = snap.types.get(type_url).unwrap_or(&empty);
        let no_routes = BTreeSet::new();
        // `Some`: the only names this connection gets by wildcard.
        let visible: Option<&BTreeSet<String>> = match (&self.scope, snap.scopes.get(type_url)) {
            (Some(key), Some(scopes)) => Some(scopes.get(key).unwrap_or(&no_routes)),
            _ => None,
        };
        let candidates: BTreeSet<&str> = match only {
            Some(names) => names.iter().map(String::as_str).collect(),
            None => {
                let mut c: BTreeSet<&str> = state.names.iter().map(String::as_str).collect();
                if state.wildcard {
                    match visible {
                        Some(v) => c.extend(v.iter().map(String::as_str)),
                        None => c.extend(all.keys().map(String::as_str)),
                    }
                }
                c
            }
        };
        // Full difference: what the client holds but is no longer wanted goes too.
        let stale: Vec<String> = match only {
            Some(_) => Vec::new(),
            None => state
                .sent
                .keys()
                .filter(|n| !candidates.contains(n.as_str()))
                .cloned()
                .collect(),
        };
        let mut resources = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        for name in stale {
            state.sent.remove(&name);
            removed.push(name);
        }
        for name in candidates {
            let wanted = state.wildcard
                && all.contains_key(name)
                && visible.is_none_or(|v| v.contains(name))
                || state.names.contains(name);
            match snap.lookup(type_url, name).filter(|_| wanted) {
                Some(v) => {
                    if state.sent.get(name) != Some(&v.version) {
                        state.sent.insert(name.to_owned(), v.version.clone());
                        resources.push(Resource {
                            name: name.to_owned(),
                            version: v.version.clone(),
                            resource: Some(v.any.clone()),
                            ..Default::default()
                        });
                    }
                }
                None => {
                    if state.sent.remove(name).is_some() {
                        removed.push(name.to_owned());
                    }
                }
            }
        }
        state.synced = snap.generation;
        for n in requested {
            if snap.lookup(type_url, n).is_none() && !removed.contains(n) {
                removed.push(n.clone());
            }
        }
        removed.sort();
        if resources.is_empty() && removed.is_empty() && !always {
            return Ok(());
        }
        self.nonce += 1;
        let label = XdsMetrics::label(type_url);
        self.metrics.pushes.get_or_create(&label).inc();
        self.metrics
            .resources_sent
            .get_or_create(&label)
            .inc_by(resources.len() as u64);
        self.info.responses += 1;
        tracing::debug!(conn.id = self.id, xds.type = %label.r#type, resources = resources.len(),
            removed = removed.len(), "xds push");
        let nonce = format!("{}-{}", self.id, self.nonce);
        let status = self.info.types.entry(type_url.to_owned()).or_default();
        status.sent_nonce = nonce.clone();
        status.sent_generation = snap.generation;
        status.resources_sent += resources.len() as u64;
        status.removals_sent += removed.len() as u64;
        let resp = DeltaDiscoveryResponse {
            system_version_info: snap.generation.to_string(),
            resources,
            type_url: type_url.to_owned(),
            nonce,
            removed_resources: removed,
        };
        tx.send(Ok(resp)).await.map_err(|_| Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_go_before_authorizations_and_waypoint_types_after() {
        let subscribed: BTreeSet<String> = [
            type_url::WAYPOINT_ROUTE,
            type_url::AUTHORIZATION,
            type_url::WAYPOINT_AUTHORIZATION,
            type_url::ADDRESS,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let mut rest = vec![type_url::WAYPOINT_ROUTE, type_url::WAYPOINT_AUTHORIZATION];
        rest.sort();
        let mut want = vec![type_url::ADDRESS, type_url::AUTHORIZATION];
        want.extend(rest);
        assert_eq!(push_order(subscribed.iter()), want);
    }
}
