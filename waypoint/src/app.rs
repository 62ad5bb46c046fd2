//! Wiring: builds a waypoint from its [`Config`] and runs it until drained.
//!
//! The data plane runs on the worker runtimes given to [`start_on`] (one current-thread runtime per thread in
//! `main`): each worker binds its own 15008 listener (`SO_REUSEPORT`) and has its own backend connections, so a
//! request is served and forwarded on one thread. The control side (xDS, the local file watcher, certificates,
//! admin, metrics, readiness) runs on the runtime `start_on` is called from.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_core::admin::{AdminServer, ConfigDump};
use ambit_core::cert::{CertManager, Priority};
use ambit_core::drain::{self, DrainTrigger};
use ambit_core::grpc::{ControlPlaneConfig, RootCa, TokenSource};
use ambit_core::hbone::H2Config;
use ambit_core::logging::LogHandle;
use ambit_core::metrics as core_metrics;
use ambit_core::readiness::Readiness;
use ambit_core::signer::CsrSigner;
use ambit_core::tls::TlsBackend;
use ambit_core::xds::{Rejection, XdsClient, XdsHandler, XdsUpdate};
use anyhow::Context;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::authz::Policy;
use crate::config::Config;
use crate::http::Proxy;
use crate::jwt::{Authenticator, JwksCache, JwtRule, rules_from_proto};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimitPolicy;
use crate::route::rule_from_proto;
use crate::state::{
    BackendPolicy, Resource, SelfInfo, Store, Targeted, address_from_proto, targets_from_proto,
};
use crate::upstream::{Connector, Upstream};
use crate::{inbound, localconfig};

#[derive(Clone, Debug)]
pub struct Addresses {
    pub hbone: SocketAddr,
    pub admin: SocketAddr,
    pub stats: SocketAddr,
    pub readiness: SocketAddr,
}

/// A started waypoint.
pub struct Running {
    pub addresses: Addresses,
    pub store: Store,
    pub certs: Arc<CertManager>,
    pub readiness: Readiness,
    trigger: DrainTrigger,
    shutdown: tokio::sync::mpsc::Receiver<()>,
    deadline: Duration,
}

impl Running {
    /// Waits for SIGTERM/SIGINT or `/quitquitquit`, then drains.
    pub async fn wait(mut self) {
        tokio::select! {
            _ = ambit_core::signal::shutdown() => info!("signal received, draining"),
            _ = self.shutdown.recv() => info!("shutdown requested, draining"),
        }
        self.drain().await;
    }

    /// Stops accepting; in-flight requests finish until the deadline, then the rest are closed.
    pub async fn drain(self) {
        let graceful = self.trigger.drain(self.deadline).await;
        info!(graceful, "drained");
    }
}

/// Starts a waypoint with its data plane on the current runtime (tests).
pub async fn start(cfg: Config, log: LogHandle) -> anyhow::Result<Running> {
    start_on(cfg, log, vec![Handle::current()]).await
}

pub async fn start_on(
    cfg: Config,
    log: LogHandle,
    workers: Vec<Handle>,
) -> anyhow::Result<Running> {
    anyhow::ensure!(!workers.is_empty(), "no data-plane workers");
    let cfg = Arc::new(cfg);
    let (trigger, drain) = drain::new();
    let readiness = Readiness::new();
    let proxy_ready = readiness.register_task("proxy");
    let cert_ready = readiness.register_task("certificate");
    let state_ready = readiness.register_task("state manager");
    let tls_backend: TlsBackend = cfg
        .tls_backend
        .parse()
        .map_err(|e| anyhow::anyhow!("TLS_BACKEND: {e}"))?;
    ambit_core::tls::TlsPolicy::install_from_settings(
        cfg.crl_path.as_deref(),
        &cfg.compliance_policy,
        tls_backend,
    )?;
    let certs = CertManager::new(signer(&cfg).await?, cfg.secret_ttl);
    let me = SelfInfo {
        gateway: (cfg.namespace.clone(), cfg.gateway_name.clone()),
        service_hostname: format!(
            "{}.{}.svc.{}",
            cfg.gateway_name, cfg.namespace, cfg.cluster_domain
        ),
        ip: cfg.instance_ip,
    };
    let jwks = JwksCache::new(Arc::new(ambit_core::jwt::HttpFetcher::with_system_roots()));
    let store = Store::new(me).with_jwks(jwks.clone(), tokio::runtime::Handle::current());

    let mut registry = Registry::default();
    core_metrics::register_build_info(&mut registry, "waypoint");
    core_metrics::register_process_metrics(&mut registry);
    certs.register_metrics(&mut registry);
    if let Some(path) = &cfg.local_xds_path {
        let initial = localconfig::load(path)
            .with_context(|| format!("LOCAL_XDS_PATH {}", path.display()))?;
        store.replace_all(initial);
        tokio::spawn(localconfig::watch(
            path.clone(),
            store.clone(),
            drain.clone(),
        ));
    }
    match &cfg.xds_address {
        Some(address) => {
            let node = ambit_core::xds::node_from_env(&cfg.node_env());
            let types = vec![
                ambit_proto::type_url::ADDRESS.to_owned(),
                ambit_proto::type_url::WAYPOINT_ROUTE.to_owned(),
                ambit_proto::type_url::WAYPOINT_BACKEND_POLICY.to_owned(),
                ambit_proto::type_url::WAYPOINT_RATE_LIMIT.to_owned(),
                ambit_proto::type_url::WAYPOINT_REQUEST_AUTHENTICATION.to_owned(),
                ambit_proto::type_url::WAYPOINT_AUTHORIZATION.to_owned(),
            ];
            let client = XdsClient::new(
                control_plane(&cfg, address, &cfg.xds_root_ca),
                node,
                types,
                Arc::new(StoreHandler(store.clone())),
                state_ready,
                &mut registry,
            );
            tokio::spawn(client.run(drain.clone()));
        }
        None => drop(state_ready),
    }
    // The waypoint's own certificate before it says it is ready: retried (the CA may not know the pod yet) until
    // it is issued or the waypoint drains.
    {
        let certs = certs.clone();
        let id = cfg.identity();
        let mut stop = drain.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match certs.fetch(&id, Priority::Warmup).await {
                    Ok(_) => {
                        drop(cert_ready);
                        return;
                    }
                    Err(e) => {
                        warn!(identity = %id, error = %e, retry_in = ?backoff, "no certificate yet; not ready")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.signaled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    }
    let metrics = Arc::new(Metrics::new(&mut registry));
    let default_retry = cfg.default_retry()?;
    let registry = Arc::new(registry);
    let h2 = Arc::new(H2Config::default());
    let my_ip = cfg.instance_ip.unwrap_or(cfg.hbone_addr.ip());

    let mut hbone_addr = cfg.hbone_addr;
    for worker in &workers {
        let _guard = worker.enter();
        let listener = bind(hbone_addr, workers.len() > 1)?;
        hbone_addr = listener.local_addr()?;
        let connector = Connector {
            certs: certs.clone(),
            backend: tls_backend,
        };
        let proxy = Arc::new(Proxy {
            cfg: cfg.clone(),
            certs: certs.clone(),
            store: store.clone(),
            upstream: Upstream::new(h2.clone(), connector, cfg.identity(), my_ip),
            metrics: metrics.clone(),
            default_retry: default_retry.clone(),
            authenticator: Authenticator::new(jwks.clone()),
        });
        worker.spawn(inbound::serve(
            proxy,
            listener,
            h2.clone(),
            tls_backend,
            drain.clone(),
        ));
    }

    let (shutdown_tx, shutdown) = tokio::sync::mpsc::channel(1);
    let admin_l = tokio::net::TcpListener::bind(cfg.admin_addr)
        .await
        .with_context(|| format!("bind {}", cfg.admin_addr))?;
    let stats_l = tokio::net::TcpListener::bind(cfg.stats_addr)
        .await
        .with_context(|| format!("bind {}", cfg.stats_addr))?;
    let ready_l = tokio::net::TcpListener::bind(cfg.readiness_addr)
        .await
        .with_context(|| format!("bind {}", cfg.readiness_addr))?;
    let addresses = Addresses {
        hbone: hbone_addr,
        admin: admin_l.local_addr()?,
        stats: stats_l.local_addr()?,
        readiness: ready_l.local_addr()?,
    };
    let shutdown_tx = Mutex::new(Some(shutdown_tx));
    let on_quit = move || {
        if let Ok(mut tx) = shutdown_tx.lock()
            && let Some(tx) = tx.take()
        {
            let _ = tx.try_send(());
        }
    };
    let dump = Arc::new(Dump {
        cfg: cfg.clone(),
        store: store.clone(),
        certs: certs.clone(),
    });
    tokio::spawn(AdminServer::new(admin_l, log, Box::new(on_quit), dump).run(drain.clone()));
    tokio::spawn(core_metrics::serve_metrics(
        stats_l,
        registry,
        drain.clone(),
    ));
    tokio::spawn(core_metrics::serve_readiness(
        ready_l,
        readiness.clone(),
        drain.clone(),
    ));
    drop(proxy_ready);
    info!(?addresses, identity = %cfg.identity(), "waypoint started");
    Ok(Running {
        addresses,
        store,
        certs,
        readiness,
        trigger,
        shutdown,
        deadline: cfg.termination_deadline,
    })
}

/// A listener for one worker (`SO_REUSEPORT` so every worker can bind the same port; dual-stack on `[::]`).
fn bind(addr: SocketAddr, reuse_port: bool) -> anyhow::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("bind {addr}"))?;
    s.listen(1024)?;
    Ok(tokio::net::TcpListener::from_std(s.into())?)
}

fn control_plane(cfg: &Config, address: &str, root: &str) -> ControlPlaneConfig {
    ControlPlaneConfig {
        address: address.to_owned(),
        root_ca: RootCa::from_env_value(root),
        alt_hostname: None,
        token: TokenSource::from_env(cfg.auth_token.as_deref()),
        cluster_id: cfg.cluster_id.clone(),
        extra_headers: vec![],
    }
}

async fn signer(cfg: &Config) -> anyhow::Result<Arc<dyn CsrSigner>> {
    // The waypoint asks for its own identity only: no impersonation.
    let ca = cfg
        .ca_address
        .as_ref()
        .map(|address| (control_plane(cfg, address, &cfg.ca_root_ca), false));
    Ok(ambit_core::signer::choose(
        cfg.local_ca_dir.as_deref(),
        cfg.fake_ca,
        &cfg.trust_domain,
        ca,
    )?)
}

/// Applies WDS and route resources; a resource that does not decode or convert is NACKed by name with the
/// reason, and the rest of the response applies.
struct StoreHandler(Store);

impl XdsHandler for StoreHandler {
    fn apply(&self, type_url: &str, updates: Vec<XdsUpdate>) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        let mut upserts = Vec::new();
        let mut removes = Vec::new();
        for u in updates {
            match u {
                XdsUpdate::Remove { name } => removes.push(store_key(type_url, &name)),
                XdsUpdate::Upsert { name, resource, .. } => {
                    let converted = decode_resource(type_url, &name, &resource.value);
                    match converted {
                        Ok(r) => upserts.push((store_key(type_url, &name), r)),
                        Err(reason) => {
                            warn!(resource = %name, %reason, "rejected");
                            rejected.push(Rejection { name, reason });
                        }
                    }
                }
            }
        }
        self.0.update(upserts, removes);
        rejected
    }
}

/// One xDS resource of a type the waypoint subscribes to, decoded and converted (an error is its NACK reason).
pub fn decode_resource(type_url: &str, name: &str, bytes: &[u8]) -> Result<Resource, String> {
    use ambit_proto::type_url as t;
    use ambit_proto::waypoint as pb;
    fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, String> {
        M::decode(bytes).map_err(|e| format!("decode: {e}"))
    }
    match type_url {
        t::ADDRESS => address_from_proto(&decode(bytes)?),
        t::WAYPOINT_ROUTE => rule_from_proto(name, &decode::<pb::Route>(bytes)?)
            .map(Resource::Rule)
            .map_err(|e| e.to_string()),
        t::WAYPOINT_BACKEND_POLICY => {
            BackendPolicy::from_proto(name, &decode(bytes)?).map(Resource::Policy)
        }
        t::WAYPOINT_RATE_LIMIT => rate_limit_from_proto(&decode(bytes)?).map(Resource::RateLimit),
        t::WAYPOINT_REQUEST_AUTHENTICATION => {
            request_authn_from_proto(&decode(bytes)?).map(Resource::RequestAuthn)
        }
        t::WAYPOINT_AUTHORIZATION => Policy::from_proto(&decode(bytes)?)
            .map(Resource::Authz)
            .map_err(|e| e.to_string()),
        other => Err(format!("unexpected type {other}")),
    }
}

/// The store's name of an xDS resource: the L7 policy types share `<ns>/<name>` names, so each gets its own
/// prefix (WDS, route and backend policy names cannot collide with each other).
pub fn store_key(type_url: &str, name: &str) -> String {
    match type_url {
        ambit_proto::type_url::WAYPOINT_RATE_LIMIT => format!("ratelimit/{name}"),
        ambit_proto::type_url::WAYPOINT_AUTHORIZATION => format!("authz/{name}"),
        ambit_proto::type_url::WAYPOINT_REQUEST_AUTHENTICATION => format!("requestauthn/{name}"),
        _ => name.to_owned(),
    }
}

/// A RequestAuthentication resource with its targets.
pub fn request_authn_from_proto(
    p: &ambit_proto::waypoint::RequestAuthentication,
) -> Result<Targeted<Vec<JwtRule>>, String> {
    Ok(Targeted {
        targets: targets_from_proto(&p.targets)?,
        policy: rules_from_proto(p).map_err(|e| e.to_string())?,
    })
}

/// A RateLimitPolicy resource with its targets.
pub fn rate_limit_from_proto(
    p: &ambit_proto::waypoint::RateLimitPolicy,
) -> Result<Targeted<RateLimitPolicy>, String> {
    Ok(Targeted {
        targets: targets_from_proto(&p.targets)?,
        policy: RateLimitPolicy::from_proto(p)?,
    })
}

/// `/config_dump`: the configuration, services with their routes, and certificates.
struct Dump {
    cfg: Arc<Config>,
    store: Store,
    certs: Arc<CertManager>,
}

impl ConfigDump for Dump {
    fn config_dump(&self) -> serde_json::Value {
        let mut v = self.store.load().dump(self.store.me());
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "config".into(),
                serde_json::to_value(&*self.cfg).unwrap_or_default(),
            );
            o.insert(
                "certificates".into(),
                serde_json::to_value(self.certs.dump()).unwrap_or_default(),
            );
            o.insert(
                "self".into(),
                serde_json::to_value(self.store.me()).unwrap_or_default(),
            );
        }
        v
    }
}
