//! The Kubernetes source: one kube-rs [`watcher()`] per [`Kind`], read as `DynamicObject`s at the version Istio and
//! Gateway API users apply today and converted by the manifest source's parser ([`tracker`]).
//!
//! `InitDone` is sent once every kind has completed its first listing. A kind whose CRD is not installed (404 on
//! list) counts as empty: it is logged once at info and listed again every few seconds, so its objects appear when
//! the CRD is installed later (and disappear if it is removed). Other API errors are logged and retried with
//! kube-rs' default backoff; an object that does not parse is logged by name and skipped.

pub mod tracker;

use std::collections::BTreeSet;
use std::time::Duration;

use ::kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use ::kube::runtime::{WatchStreamExt, watcher};
use ::kube::Client;
use ambit_core::drain::DrainWatcher;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Event, Kind, Source, SourceError};
use tracker::KindTracker;

/// Every kind the controller reads, with the group, version, kind and plural it is watched at.
#[rustfmt::skip]
pub const RESOURCES: &[(Kind, &str, &str, &str, &str)] = &[
    (Kind::Namespace, "", "v1", "Namespace", "namespaces"),
    (Kind::Pod, "", "v1", "Pod", "pods"),
    (Kind::Service, "", "v1", "Service", "services"),
    (Kind::ServiceAccount, "", "v1", "ServiceAccount", "serviceaccounts"),
    (Kind::ConfigMap, "", "v1", "ConfigMap", "configmaps"),
    (Kind::Gateway, GATEWAY_API, "v1", "Gateway", "gateways"),
    (Kind::HttpRoute, GATEWAY_API, "v1", "HTTPRoute", "httproutes"),
    (Kind::GrpcRoute, GATEWAY_API, "v1", "GRPCRoute", "grpcroutes"),
    (Kind::TcpRoute, GATEWAY_API, "v1alpha2", "TCPRoute", "tcproutes"),
    (Kind::ReferenceGrant, GATEWAY_API, "v1beta1", "ReferenceGrant", "referencegrants"),
    (Kind::AuthorizationPolicy, SECURITY, "v1", "AuthorizationPolicy", "authorizationpolicies"),
    (Kind::PeerAuthentication, SECURITY, "v1", "PeerAuthentication", "peerauthentications"),
    (Kind::RequestAuthentication, SECURITY, "v1", "RequestAuthentication", "requestauthentications"),
    (Kind::VirtualService, NETWORKING, "v1", "VirtualService", "virtualservices"),
    (Kind::DestinationRule, NETWORKING, "v1", "DestinationRule", "destinationrules"),
    (Kind::ServiceEntry, NETWORKING, "v1", "ServiceEntry", "serviceentries"),
    (Kind::WorkloadEntry, NETWORKING, "v1", "WorkloadEntry", "workloadentries"),
    (Kind::FaultInjection, AMBIT, "v1alpha1", "FaultInjection", "faultinjections"),
    (Kind::RateLimitPolicy, AMBIT, "v1alpha1", "RateLimitPolicy", "ratelimitpolicies"),
];

const GATEWAY_API: &str = "gateway.networking.k8s.io";
const SECURITY: &str = "security.istio.io";
const NETWORKING: &str = "networking.istio.io";
const AMBIT: &str = "ambit.dev";

/// How often a kind whose CRD is not installed is listed again, by default.
pub const DEFAULT_CRD_RETRY: Duration = Duration::from_secs(5);

/// Watches the Kubernetes API.
pub struct KubeSource {
    client: Client,
    crd_retry: Duration,
}

impl KubeSource {
    pub fn new(client: Client) -> Self {
        KubeSource {
            client,
            crd_retry: DEFAULT_CRD_RETRY,
        }
    }

    /// How often a kind that is not served (CRD not installed) is listed again.
    pub fn with_crd_retry(mut self, every: Duration) -> Self {
        self.crd_retry = every;
        self
    }
}

#[async_trait::async_trait]
impl Source for KubeSource {
    async fn run(
        self: Box<Self>,
        tx: mpsc::Sender<Event>,
        mut drain: DrainWatcher,
    ) -> Result<(), SourceError> {
        let (synced_tx, mut synced_rx) = mpsc::channel::<Kind>(RESOURCES.len());
        let mut pending: BTreeSet<Kind> = RESOURCES.iter().map(|r| r.0).collect();
        // Dropping the set (drain, error) aborts every watcher.
        let mut watchers = JoinSet::new();
        for &(kind, group, version, kind_name, plural) in RESOURCES {
            let gvk = GroupVersionKind::gvk(group, version, kind_name);
            let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
            watchers.spawn(watch_kind(
                self.client.clone(),
                kind,
                resource,
                tx.clone(),
                synced_tx.clone(),
                self.crd_retry,
            ));
        }
        drop(synced_tx);
        let started = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = drain.signaled() => return Ok(()),
                Some(kind) = synced_rx.recv() => {
                    pending.remove(&kind);
                    if pending.is_empty() {
                        tracing::info!(kinds = RESOURCES.len(), elapsed.ms = started.elapsed().as_millis() as u64,
                            "Kubernetes: initial listing complete");
                        tx.send(Event::InitDone).await.map_err(|_| SourceError::Closed)?;
                    }
                }
                Some(done) = watchers.join_next() => {
                    // A watcher only ends when the controller stopped listening (or it panicked).
                    if let Err(e) = done {
                        tracing::error!(error = %e, "a Kubernetes watcher task failed");
                    }
                    return Err(SourceError::Closed);
                }
            }
        }
    }
}

/// Runs one kind's watcher until the event receiver is gone. Reports the kind on `synced` after its first listing.
async fn watch_kind(
    client: Client,
    kind: Kind,
    resource: ApiResource,
    tx: mpsc::Sender<Event>,
    synced: mpsc::Sender<Kind>,
    crd_retry: Duration,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut tracker = KindTracker::new(kind, &resource.api_version, &resource.kind);
    let mut missing_logged = false;
    loop {
        let mut stream = watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut not_installed = false;
        while let Some(item) = stream.next().await {
            let was_synced = tracker.synced();
            let events = match item {
                Ok(ev) => {
                    if missing_logged && matches!(ev, watcher::Event::InitDone) {
                        tracing::info!(kind = %resource.kind, api_version = %resource.api_version,
                            "{} CRD installed; watching it", resource.kind);
                        missing_logged = false;
                    }
                    tracker.on_event(ev)
                }
                Err(e) if is_not_found(&e) => {
                    not_installed = true;
                    tracker.not_installed()
                }
                Err(e) => {
                    tracing::warn!(kind = %resource.kind, api_version = %resource.api_version, error = %e,
                        "Kubernetes watch failed; retrying with backoff");
                    continue;
                }
            };
            for ev in events {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            if !was_synced && tracker.synced() {
                tracing::debug!(kind = %resource.kind, objects = tracker.len(), "initial listing done");
                if synced.send(kind).await.is_err() {
                    return;
                }
            }
            if not_installed {
                break;
            }
        }
        if not_installed && !missing_logged {
            tracing::info!(kind = %resource.kind, api_version = %resource.api_version,
                "{} CRD not installed; watching for it", resource.kind);
            missing_logged = true;
        }
        tokio::time::sleep(crd_retry).await;
    }
}

/// The API server does not serve the resource (404 on list or watch): its CRD is not installed.
fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(::kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(::kube::Error::Api(s))
        | watcher::Error::WatchFailed(::kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_watched_at_a_version_the_parser_accepts() {
        let watched: BTreeSet<Kind> = RESOURCES.iter().map(|r| r.0).collect();
        assert_eq!(watched.len(), RESOURCES.len(), "a kind listed twice");
        for &(kind, group, version, name, _) in RESOURCES {
            let api_version = if group.is_empty() {
                version.to_owned()
            } else {
                format!("{group}/{version}")
            };
            assert_eq!(
                Kind::from_type_meta(&api_version, name),
                Some(kind),
                "{api_version} {name}"
            );
        }
        // Adding a kind breaks this match: watch it in RESOURCES too.
        let all = |k: Kind| match k {
            Kind::Namespace
            | Kind::Pod
            | Kind::Service
            | Kind::ServiceAccount
            | Kind::ConfigMap => true,
            Kind::Gateway
            | Kind::HttpRoute
            | Kind::GrpcRoute
            | Kind::TcpRoute
            | Kind::ReferenceGrant => true,
            Kind::AuthorizationPolicy | Kind::PeerAuthentication | Kind::RequestAuthentication => {
                true
            }
            Kind::VirtualService
            | Kind::DestinationRule
            | Kind::ServiceEntry
            | Kind::WorkloadEntry => true,
            Kind::FaultInjection | Kind::RateLimitPolicy => true,
        };
        assert!(watched.iter().all(|k| all(*k)));
        assert_eq!(
            watched.len(),
            19,
            "every kind of the match above is watched"
        );
    }
}
