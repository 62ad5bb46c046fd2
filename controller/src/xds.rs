//! The delta ADS server (`envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`) serving
//! `istio.workload.Address` and `istio.security.Authorization` the way upstream ztunnel expects (spec 2.3), and
//! `ambit.waypoint.Route` to waypoints. Only subscribed types are ever sent, so ztunnels (which subscribe to the
//! first two) never see routes. A waypoint connection (node id `router~…` with `GATEWAY_NAME` and `NAMESPACE`
//! metadata) gets, by wildcard, only the routes in its scope ([`crate::compute::route_scopes`]); names it
//! subscribes to explicitly are served whatever the scope (an explicit request is the client's choice, and routes
//! are no secret: unscoped clients get them all). Any other client subscribed to routes gets every route.
//! `ambit.waypoint.BackendPolicy` (DestinationRules, by service hostname) is scoped the same way: a waypoint gets
//! the policies of the services it serves and of every backend its routes send to
//! ([`crate::compute::route_scopes::backend_policy_scopes`]). The waypoint's L7 policies
//! (`ambit.waypoint.AuthorizationPolicy`, `RequestAuthentication`, `RateLimitPolicy`, by `<ns>/<name>`) are scoped
//! too: a waypoint gets those targeting its Gateway, its GatewayClass, the Services it serves and the route rules
//! it gets ([`crate::compute::waypoint_policy`]).
//!
//! The computed state is published as an immutable [`Snapshot`] through a `watch` channel (one writer: the
//! controller loop, which also debounces bursts of changes). Each connection keeps, per type, the version of
//! every resource the client holds and sends only differences: on the first request (seeded from
//! `initial_resource_versions`), on subscription changes, and whenever a new snapshot appears.

mod conn;
pub mod metrics;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ambit_core::drain::DrainWatcher;
use ambit_proto::type_url;
use ambit_proto::xds::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use ambit_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use prost::Message;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::ca::Authenticator;
use crate::compute::Resources;
use crate::compute::route_scopes::{self, RouteScopes};
pub use metrics::XdsMetrics;

/// One resource as served: its content hash as version, and the encoded `Any`.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned {
    pub version: String,
    pub any: prost_types::Any,
}

/// Everything served at one moment, by type URL then resource name.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub generation: u64,
    pub types: BTreeMap<&'static str, BTreeMap<String, Versioned>>,
    /// `network/IP` → resource name, to answer on-demand lookups by address.
    pub aliases: BTreeMap<String, String>,
    /// Per scoped type URL (routes, backend policies, the L7 policies): waypoint `(ns, gateway)` → the names it
    /// gets by wildcard. Types not listed are sent whole to everyone.
    pub scopes: BTreeMap<&'static str, RouteScopes>,
    /// The names (per type URL) added, changed or removed since the snapshot of generation `.0`, computed once
    /// here so that a connection already up to date with that snapshot looks at only those names.
    pub changes: Option<(u64, BTreeMap<&'static str, BTreeSet<String>>)>,
}

/// The first 16 hex digits of the SHA-256 of the encoded resource.
pub fn content_version(bytes: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn versioned<M: Message>(type_url: &str, m: &M) -> Versioned {
    let value = m.encode_to_vec();
    Versioned {
        version: content_version(&value),
        any: prost_types::Any {
            type_url: type_url.to_owned(),
            value,
        },
    }
}

impl Snapshot {
    pub fn new(generation: u64, r: &Resources) -> Self {
        let addresses = r
            .addresses
            .iter()
            .map(|(k, v)| (k.clone(), versioned(type_url::ADDRESS, v)))
            .collect();
        let authz = r
            .authorizations
            .iter()
            .map(|(k, v)| (k.clone(), versioned(type_url::AUTHORIZATION, v)))
            .collect();
        let routes = r
            .routes
            .iter()
            .map(|(k, v)| (k.clone(), versioned(type_url::WAYPOINT_ROUTE, v)))
            .collect();
        let policies = r
            .backend_policies
            .iter()
            .map(|(k, v)| (k.clone(), versioned(type_url::WAYPOINT_BACKEND_POLICY, v)))
            .collect();
        fn encode<M: Message>(
            type_url: &'static str,
            m: &BTreeMap<String, M>,
        ) -> BTreeMap<String, Versioned> {
            m.iter()
                .map(|(k, v)| (k.clone(), versioned(type_url, v)))
                .collect()
        }
        Snapshot {
            generation,
            types: BTreeMap::from([
                (type_url::ADDRESS, addresses),
                (type_url::AUTHORIZATION, authz),
                (type_url::WAYPOINT_ROUTE, routes),
                (type_url::WAYPOINT_BACKEND_POLICY, policies),
                (
                    type_url::WAYPOINT_AUTHORIZATION,
                    encode(type_url::WAYPOINT_AUTHORIZATION, &r.waypoint_authorizations),
                ),
                (
                    type_url::WAYPOINT_REQUEST_AUTHENTICATION,
                    encode(
                        type_url::WAYPOINT_REQUEST_AUTHENTICATION,
                        &r.request_authentications,
                    ),
                ),
                (
                    type_url::WAYPOINT_RATE_LIMIT,
                    encode(type_url::WAYPOINT_RATE_LIMIT, &r.rate_limits),
                ),
            ]),
            aliases: r.aliases.clone(),
            scopes: BTreeMap::from([
                (type_url::WAYPOINT_ROUTE, r.route_scopes.clone()),
                (
                    type_url::WAYPOINT_BACKEND_POLICY,
                    r.backend_policy_scopes.clone(),
                ),
                (
                    type_url::WAYPOINT_AUTHORIZATION,
                    r.waypoint_authorization_scopes.clone(),
                ),
                (
                    type_url::WAYPOINT_REQUEST_AUTHENTICATION,
                    r.request_authentication_scopes.clone(),
                ),
                (type_url::WAYPOINT_RATE_LIMIT, r.rate_limit_scopes.clone()),
            ]),
            changes: None,
        }
    }

    /// As [`Snapshot::new`], with the changes since `prev`. A scoped resource (route, backend policy, L7 policy) that became visible or
    /// invisible to some waypoint counts as changed even when the resource itself did not change, so that a scoped connection on
    /// the change-set path sends it or removes it.
    pub fn next(prev: &Snapshot, generation: u64, r: &Resources) -> Self {
        let mut s = Snapshot::new(generation, r);
        let empty = BTreeMap::new();
        let mut changes = BTreeMap::new();
        for (t, now) in &s.types {
            let before = prev.types.get(t).unwrap_or(&empty);
            let mut names: BTreeSet<String> = now
                .iter()
                .filter(|(n, v)| before.get(*n).map(|b| &b.version) != Some(&v.version))
                .map(|(n, _)| n.clone())
                .collect();
            names.extend(before.keys().filter(|n| !now.contains_key(*n)).cloned());
            if let Some(now_scopes) = s.scopes.get(t) {
                let none = RouteScopes::new();
                let before_scopes = prev.scopes.get(t).unwrap_or(&none);
                names.extend(route_scopes::changed_visibility(before_scopes, now_scopes));
            }
            changes.insert(*t, names);
        }
        s.changes = Some((prev.generation, changes));
        s
    }

    /// A resource by name, or (for on-demand lookups) by alias.
    pub fn lookup(&self, type_url: &str, name: &str) -> Option<&Versioned> {
        let m = self.types.get(type_url)?;
        m.get(name).or_else(|| m.get(self.aliases.get(name)?))
    }
}

/// What the debug endpoint shows about one connection.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectionInfo {
    pub id: u64,
    pub node_id: String,
    pub peer: String,
    pub responses: u64,
    pub acks: u64,
    pub nacks: u64,
    pub last_nack: Option<String>,
    /// The waypoint Gateway (`ns/name`) whose routes and policies this connection is scoped to, if any.
    pub waypoint: Option<String>,
    /// Per type: how many resources the client holds (as far as the server knows).
    pub resources: BTreeMap<String, usize>,
    /// `ztunnel`, `router` (waypoints) or whatever the node id's first field says.
    pub node_type: String,
    /// The proxy's `ISTIO_VERSION` node metadata, when it sent one.
    pub version: String,
    /// When the stream opened (seconds since the epoch).
    pub connected_at: u64,
    /// The snapshot generation the controller serves now; a type whose `acked_generation` is lower is stale.
    pub generation: u64,
    /// Per subscribed type URL: what was sent and what the client said of it.
    pub types: BTreeMap<String, TypeStatus>,
}

/// One subscribed type of a connection, for `ambit proxy-status`.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TypeStatus {
    pub resources: usize,
    /// The nonce of the last response sent, and the snapshot generation it brought the client to.
    pub sent_nonce: String,
    pub sent_generation: u64,
    /// The last nonce the client ACKed and the generation that response carried.
    pub acked_nonce: String,
    pub acked_generation: u64,
    /// The last NACK: its nonce and the client's error.
    pub nacked_nonce: String,
    pub nack_error: String,
    /// Resources (added or changed) and removals sent on this connection so far, over all its responses: what a
    /// (re)connection cost. A client reconnecting with `initial_resource_versions` to an unchanged state gets 0.
    pub resources_sent: u64,
    pub removals_sent: u64,
}

/// The ADS service. Cheap to clone; every clone shares the snapshot, metrics and connection table.
#[derive(Clone)]
pub struct XdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<XdsMetrics>,
    auth: Option<Arc<dyn Authenticator>>,
    drain: DrainWatcher,
    next_id: Arc<AtomicU64>,
    connections: Arc<Mutex<BTreeMap<u64, ConnectionInfo>>>,
}

impl XdsServer {
    /// `auth`: when set, every stream must carry a bearer token it accepts.
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        metrics: Arc<XdsMetrics>,
        auth: Option<Arc<dyn Authenticator>>,
        drain: DrainWatcher,
    ) -> Self {
        XdsServer {
            snapshots,
            metrics,
            auth,
            drain,
            next_id: Arc::new(AtomicU64::new(1)),
            connections: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// The same service, with (or without) authentication; shares state with `self`.
    pub fn with_auth(&self, auth: Option<Arc<dyn Authenticator>>) -> Self {
        XdsServer {
            auth,
            ..self.clone()
        }
    }

    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(200 * 1024 * 1024)
    }

    /// The live connections.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.connections
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        if let Some(auth) = &self.auth {
            auth.authenticate(request.metadata()).map_err(|e| {
                self.metrics.auth_failures.inc();
                Status::unauthenticated(e.to_string())
            })?;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let (tx, rx) = mpsc::channel(8);
        let conn = conn::Connection::new(
            id,
            self.snapshots.clone(),
            self.metrics.clone(),
            self.connections.clone(),
            ConnectionInfo {
                id,
                peer,
                connected_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                ..Default::default()
            },
        );
        let drain = self.drain.clone();
        tokio::spawn(conn.run(request.into_inner(), tx, drain));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
