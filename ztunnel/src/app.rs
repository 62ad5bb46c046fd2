//! Wiring: builds every part of a ztunnel from its [`Config`] and runs it until drained.
//!
//! The data plane (listeners and connections) runs on the runtime `start` is called from (a multi-thread runtime
//! in `main`); the control side (xDS, local config watcher, admin, metrics, readiness) runs on the runtime given as
//! `control`, a small current-thread runtime on its own thread in `main`, so a busy data plane never starves
//! config updates or health checks.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_core::admin::{AdminServer, ConfigDump};
use ambit_core::cert::CertManager;
use ambit_core::drain::{self, DrainTrigger, DrainWatcher};
use ambit_core::grpc::{ControlPlaneConfig, RootCa, TokenSource};
use ambit_core::hbone::{H2Config, HboneClient};
use ambit_core::logging::LogHandle;
use ambit_core::readiness::Readiness;
use ambit_core::signer::CsrSigner;
use ambit_core::tls::{TlsBackend, TlsPolicy};
use ambit_core::xds::{Rejection, XdsClient, XdsHandler, XdsUpdate};
use ambit_core::{Identity, metrics as core_metrics};
use anyhow::Context;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::config::{Config, LocalXds, ProxyMode};
use crate::dns::metrics::DnsMetrics;
use crate::dns::{ClientLookup, DnsConfig, DnsProxy};
use crate::localconfig;
use crate::metrics::{Metrics, WorkloadManagerMetrics};
use crate::pods::PodProxies;
use crate::proxy::connections::ConnectionRegistry;
use crate::proxy::socket::SocketFactory;
use crate::proxy::{self, HboneConnector, ProxyInputs};
use crate::state::ProxyState;
use crate::workers::Workers;

#[cfg(test)]
mod xds_bad_input;

/// The addresses the listeners actually bound (ports may be 0 in the config, as in tests).
#[derive(Clone, Debug)]
pub struct Addresses {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub hbone: SocketAddr,
    pub socks5: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub stats: SocketAddr,
    pub readiness: SocketAddr,
}

/// A started ztunnel.
pub struct Running {
    pub addresses: Addresses,
    pub state: ProxyState,
    pub certs: Arc<CertManager>,
    pub readiness: Readiness,
    /// Dedicated mode: the live connections of the workload it serves (shared mode shows each pod's in
    /// `/config_dump`'s `workloadState`).
    pub connections: Option<Arc<ConnectionRegistry>>,
    trigger: DrainTrigger,
    shutdown: tokio::sync::mpsc::Receiver<()>,
    deadline: Duration,
}

impl Running {
    /// Waits for SIGTERM/SIGINT or `/quitquitquit`, then drains: stop accepting, let connections finish until the
    /// termination deadline, then close the rest.
    pub async fn wait(mut self) {
        tokio::select! {
            _ = ambit_core::signal::shutdown() => info!("signal received, draining"),
            _ = self.shutdown.recv() => info!("shutdown requested, draining"),
        }
        self.drain().await;
    }

    /// Drains now.
    pub async fn drain(self) {
        let graceful = self.trigger.drain(self.deadline).await;
        info!(graceful, "drained");
    }
}

/// Builds everything and starts serving. `control` runs the control-side tasks; the data plane runs on the current
/// runtime (tests; `main` uses [`start_on`] with one runtime per worker thread).
pub async fn start(
    cfg: Config,
    log: LogHandle,
    control: Option<Handle>,
) -> anyhow::Result<Running> {
    start_on(cfg, log, control, vec![Handle::current()]).await
}

/// As [`start`], with the data plane on `workers`: every listener is bound once per worker (`SO_REUSEPORT`, so the
/// kernel spreads connections over them) and each worker has its own proxy inputs and HBONE pool, so a connection
/// is accepted, proxied and pooled on one thread and never wakes another.
pub async fn start_on(
    cfg: Config,
    log: LogHandle,
    control: Option<Handle>,
    workers: Vec<Handle>,
) -> anyhow::Result<Running> {
    anyhow::ensure!(!workers.is_empty(), "no data-plane workers");
    let cfg = Arc::new(cfg);
    let control = control.unwrap_or_else(Handle::current);
    let (trigger, drain) = drain::new();
    let readiness = Readiness::new();
    let proxy_ready = readiness.register_task("proxy");
    let state_ready = readiness.register_task("state manager");

    let tls_backend: TlsBackend = cfg
        .tls_backend
        .parse()
        .map_err(|e| anyhow::anyhow!("TLS_BACKEND: {e}"))?;
    install_tls_policy(&cfg, tls_backend, &control)?;
    let signer = cert_signer(&cfg).await?;
    let certs = CertManager::new(signer, cfg.secret_ttl);
    let state = ProxyState::new();

    // State sources: the local file (watched) and/or xDS.
    match &cfg.local_xds {
        Some(LocalXds::Path(path)) => {
            let initial = localconfig::load(path)
                .with_context(|| format!("LOCAL_XDS_PATH {}", path.display()))?;
            state.replace_all(initial);
            control.spawn(localconfig::watch(
                path.clone(),
                state.clone(),
                drain.clone(),
            ));
        }
        Some(LocalXds::Inline(yaml)) => {
            state.replace_all(localconfig::parse(yaml).context("LOCAL_XDS")?);
        }
        None => {}
    }
    let mut registry = Registry::default();
    core_metrics::register_build_info(&mut registry, "ztunnel");
    core_metrics::register_process_metrics(&mut registry);
    certs.register_metrics(&mut registry);
    crate::metrics::runtime::RuntimeCollector::register(&mut registry, &workers);
    match &cfg.xds_address {
        Some(address) => {
            let cp = control_plane(
                &cfg,
                address,
                &cfg.xds_root_ca,
                cfg.alt_xds_hostname.clone(),
                &cfg.xds_headers,
            );
            let node = ambit_core::xds::node_from_env(&cfg.node_env());
            let handler = Arc::new(StateHandler(state.clone()));
            let types = vec![
                ambit_proto::type_url::ADDRESS.to_owned(),
                ambit_proto::type_url::AUTHORIZATION.to_owned(),
            ];
            let client = XdsClient::new(cp, node, types, handler, state_ready, &mut registry);
            control.spawn(client.run(drain.clone()));
        }
        None => drop(state_ready),
    }
    let metrics = Arc::new(Metrics::new(&mut registry));
    let dns_metrics = cfg
        .dns_proxy_enabled()
        .then(|| Arc::new(DnsMetrics::new(&mut registry)));
    let workload_manager_metrics = (cfg.proxy_mode == ProxyMode::Shared)
        .then(|| Arc::new(WorkloadManagerMetrics::new(&mut registry)));
    let registry = Arc::new(registry);

    let sockets = SocketFactory {
        mark: cfg.packet_mark,
        keepalive: cfg.keepalive_enabled.then_some((
            cfg.keepalive_time,
            cfg.keepalive_interval,
            cfg.keepalive_retries,
        )),
        user_timeout: cfg.tcp_user_timeout(),
        netns: None,
    };
    let h2 = Arc::new(H2Config {
        stream_window: cfg.http2_stream_window,
        connection_window: cfg.http2_connection_window,
        frame_size: cfg.http2_frame_size,
        pool_max_streams_per_conn: cfg.pool_max_streams_per_conn,
        pool_idle_timeout: cfg.pool_unused_release_timeout,
        handshake_timeout: cfg.handshake_timeout,
        ..H2Config::default()
    });
    // In-pod mode connects to local applications from the peer's address by default, as upstream does (the in-pod
    // rules route the replies back); dedicated mode only when asked.
    let shared_mode = cfg.proxy_mode == ProxyMode::Shared;
    let dns = if cfg.dns_proxy_enabled() {
        let mut d = DnsConfig::from_resolv_conf(
            std::path::Path::new("/etc/resolv.conf"),
            &cfg.cluster_domain,
        )
        .context("DNS proxy: read /etc/resolv.conf")?;
        d.ipv6_enabled = cfg.ipv6_enabled;
        if shared_mode {
            // Each pod's own search list, derived from its namespace.
            d.search_domains = None;
        }
        Some(Arc::new(d))
    } else {
        None
    };
    let shared = Arc::new(ProxyShared {
        dns,
        dns_metrics,
        cfg: cfg.clone(),
        state: state.clone(),
        certs: certs.clone(),
        metrics,
        h2,
        tls_backend,
        spoof_source: cfg.enable_orig_src.unwrap_or(shared_mode),
        sockets: sockets.clone(),
        workers: Workers::new(workers, cfg.worker_spill_percent),
    });
    shared.workers.start_sampling(&drain);

    let mut addresses = Addresses {
        outbound: cfg.outbound_addr,
        inbound: cfg.inbound_addr,
        hbone: cfg.hbone_addr,
        socks5: None,
        admin: cfg.admin_addr,
        stats: cfg.stats_addr,
        readiness: cfg.readiness_addr,
    };
    let mut pod_proxies: Option<Arc<PodProxies>> = None;
    let mut connections = None;
    match (&cfg.proxy_mode, &cfg.proxy_workload_info) {
        (ProxyMode::Dedicated, Some(w)) => {
            let workload = (
                w.namespace.clone(),
                w.name.clone(),
                w.service_account.clone(),
            );
            let (pi, bound) =
                shared.serve_workload(workload, &sockets, drain.clone(), cfg.socks5_enabled)?;
            addresses.outbound = bound.outbound;
            addresses.inbound = bound.inbound;
            addresses.hbone = bound.hbone;
            addresses.socks5 = bound.socks5;
            shared.spawn_dns(&pi, &sockets, drain.clone())?;
            connections = Some(pi.connections.clone());
            // Certificates for the workload we serve, ahead of the first connection.
            control.spawn(async move {
                if let Ok(w) = pi.local_workload().await {
                    pi.certs.prefetch(&w.identity());
                }
            });
        }
        (ProxyMode::Dedicated, None) => {
            anyhow::bail!("PROXY_MODE=dedicated needs PROXY_WORKLOAD_INFO=<ns>/<name>/<sa>")
        }
        (ProxyMode::Shared, _) => {
            // Pods arrive from the node agent over ZDS; each gets its own listeners inside its namespace.
            let pods = PodProxies::new(
                shared.clone(),
                workload_manager_metrics.clone().unwrap_or_default(),
                drain.clone(),
            )
            .context("shared mode: open ztunnel's own network namespace")?;
            // Upstream's name for this readiness task.
            let snapshot_ready = readiness.register_task("workload proxy manager");
            tokio::spawn(crate::inpod::run(
                cfg.inpod_uds.clone(),
                pods.clone(),
                Some(snapshot_ready),
                drain.clone(),
            ));
            pod_proxies = Some(pods);
        }
    }

    // Ops servers on the control runtime.
    let (shutdown_tx, shutdown) = tokio::sync::mpsc::channel(1);
    // With port reuse (INPOD_PORT_REUSE, the default) a second ztunnel in the same namespace, the new process of a
    // rolling restart, binds these beside this one; each answers for itself while both run.
    let reuse = cfg.inpod_port_reuse;
    let admin_listener = bind_std(cfg.admin_addr, reuse)?;
    let stats_listener = bind_std(cfg.stats_addr, reuse)?;
    let ready_listener = bind_std(cfg.readiness_addr, reuse)?;
    let addresses = Addresses {
        admin: admin_listener.local_addr()?,
        stats: stats_listener.local_addr()?,
        readiness: ready_listener.local_addr()?,
        ..addresses
    };
    let dump = Arc::new(Dump {
        cfg: cfg.clone(),
        state: state.clone(),
        certs: certs.clone(),
        pods: pod_proxies,
        dedicated: cfg.proxy_workload_info.clone().zip(connections.clone()),
    });
    {
        let drain = drain.clone();
        let readiness = readiness.clone();
        let registry = registry.clone();
        let shutdown_tx = Mutex::new(Some(shutdown_tx));
        control.spawn(async move {
            let to_tokio = |l: std::net::TcpListener| tokio::net::TcpListener::from_std(l);
            let (Ok(admin_l), Ok(stats_l), Ok(ready_l)) = (
                to_tokio(admin_listener),
                to_tokio(stats_listener),
                to_tokio(ready_listener),
            ) else {
                warn!("could not register the ops listeners with the runtime");
                return;
            };
            let on_quit = move || {
                if let Ok(mut tx) = shutdown_tx.lock()
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.try_send(());
                }
            };
            let admin = AdminServer::new(admin_l, log, Box::new(on_quit), dump);
            tokio::spawn(core_metrics::serve_metrics(
                stats_l,
                registry,
                drain.clone(),
            ));
            tokio::spawn(core_metrics::serve_readiness(
                ready_l,
                readiness,
                drain.clone(),
            ));
            admin.run(drain).await;
        });
    }

    drop(proxy_ready);
    info!(?addresses, mode = ?cfg.proxy_mode, "ztunnel started");
    Ok(Running {
        addresses,
        state,
        certs,
        readiness,
        connections,
        trigger,
        shutdown,
        deadline: cfg.termination_deadline,
    })
}

/// What every proxy of this ztunnel shares: one proxy in dedicated mode, one per pod in shared mode.
pub struct ProxyShared {
    pub cfg: Arc<Config>,
    pub state: ProxyState,
    pub certs: Arc<CertManager>,
    pub metrics: Arc<Metrics>,
    pub h2: Arc<H2Config>,
    pub tls_backend: TlsBackend,
    pub spoof_source: bool,
    /// ztunnel's own socket settings (no namespace).
    pub sockets: SocketFactory,
    /// The DNS proxy's settings, when it runs.
    pub dns: Option<Arc<DnsConfig>>,
    pub dns_metrics: Option<Arc<DnsMetrics>>,
    /// The data-plane runtimes, one per worker thread, and which one takes a new connection.
    pub workers: Arc<Workers>,
}

/// Where a proxy's listeners ended up (ports may be 0 in the configuration, as in tests).
#[derive(Clone, Copy, Debug)]
pub struct BoundAddrs {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub hbone: SocketAddr,
    pub socks5: Option<SocketAddr>,
}

impl ProxyShared {
    /// The inputs of one proxy serving `workload` (namespace, name, service account), making its sockets with
    /// `sockets` (in shared mode: inside the pod's namespace), with its own HBONE connection pool.
    /// `connections` is the workload's registry of live connections, `worker` the data-plane worker these inputs
    /// run on.
    pub fn inputs(
        &self,
        workload: (String, String, String),
        sockets: SocketFactory,
        connections: Arc<ConnectionRegistry>,
        worker: usize,
    ) -> Arc<ProxyInputs> {
        let connector = HboneConnector {
            certs: self.certs.clone(),
            sockets: sockets.clone(),
            backend: self.tls_backend,
        };
        Arc::new(ProxyInputs {
            cfg: self.cfg.clone(),
            state: self.state.clone(),
            certs: self.certs.clone(),
            metrics: self.metrics.clone(),
            sockets,
            hbone: HboneClient::new(self.h2.clone(), connector),
            h2: self.h2.clone(),
            tls_backend: self.tls_backend,
            workload,
            spoof_source: self.spoof_source,
            connections,
            worker,
        })
    }

    /// Serves `workload` on every worker: each binds its own set of listeners on the same ports (`SO_REUSEPORT`
    /// when there is more than one worker) with `sockets`, and gets its own [`ProxyInputs`]; a connection runs on
    /// the worker [`Workers::pick`] chooses. All of them share one registry of live connections
    /// (`ProxyInputs::connections`). Returns the first worker's inputs and the bound addresses.
    pub fn serve_workload(
        &self,
        workload: (String, String, String),
        sockets: &SocketFactory,
        drain: DrainWatcher,
        socks5: bool,
    ) -> anyhow::Result<(Arc<ProxyInputs>, BoundAddrs)> {
        let reuse = self.workers.len() > 1 || self.cfg.inpod_port_reuse && sockets.netns.is_some();
        let mut addrs = BoundAddrs {
            outbound: self.cfg.outbound_addr,
            inbound: self.cfg.inbound_addr,
            hbone: self.cfg.hbone_addr,
            socks5: socks5.then_some(self.cfg.socks5_addr),
        };
        let mut listeners = Vec::with_capacity(self.workers.len());
        let mut inputs = Vec::with_capacity(self.workers.len());
        let connections = Arc::new(ConnectionRegistry::new(self.workers.len()));
        for (i, worker) in self.workers.handles().iter().enumerate() {
            // Inside the worker's context, so the listeners register with its reactor.
            let _guard = worker.enter();
            let l = Listeners::bind(&addrs, sockets, reuse)?;
            // Later workers bind the ports the first one got (they differ from the configuration only for 0).
            addrs = l.local_addrs()?;
            listeners.push(l);
            inputs.push(self.inputs(workload.clone(), sockets.clone(), connections.clone(), i));
        }
        let first = inputs.first().cloned().context("no data-plane workers")?;
        Listeners::spawn(listeners, inputs, &self.workers, drain);
        Ok((first, addrs))
    }

    /// Starts the DNS proxy of one proxy on `DNS_PROXY_ADDR` (in the pod's namespace in shared mode), answering
    /// as the workload `pi` serves. Nothing when DNS capture is off.
    pub fn spawn_dns(
        &self,
        pi: &Arc<ProxyInputs>,
        sockets: &SocketFactory,
        drain: DrainWatcher,
    ) -> anyhow::Result<()> {
        let Some(cfg) = &self.dns else {
            return Ok(());
        };
        let addr = self.cfg.dns_proxy_addr;
        let udp = sockets
            .udp_bind(addr, self.cfg.inpod_port_reuse)
            .with_context(|| format!("DNS proxy: bind udp {addr}"))?;
        let tcp = sockets
            .listen(addr, false, self.cfg.inpod_port_reuse)
            .with_context(|| format!("DNS proxy: bind tcp {addr}"))?;
        let (ns, name, sa) = pi.workload.clone();
        let state = self.state.clone();
        let client: ClientLookup = Arc::new(move || state.find_workload(&ns, &name, &sa));
        let mut proxy = DnsProxy::new(self.state.clone(), cfg.clone(), client);
        if let Some(m) = &self.dns_metrics {
            proxy = proxy.with_metrics(m.clone());
        }
        tokio::spawn(proxy.serve(udp, tcp, drain));
        Ok(())
    }
}

/// The data-plane listeners of one proxy.
pub struct Listeners {
    pub outbound: TcpListener,
    pub inbound: TcpListener,
    pub hbone: TcpListener,
    pub socks5: Option<TcpListener>,
}

impl Listeners {
    /// Binds 15001, 15006, 15008 and, when `addrs.socks5` is set, 15080 with `sockets` (in a pod's namespace in
    /// shared mode).
    pub fn bind(
        addrs: &BoundAddrs,
        sockets: &SocketFactory,
        reuse_port: bool,
    ) -> anyhow::Result<Listeners> {
        let bind = |addr: SocketAddr, transparent: bool| {
            sockets
                .listen(addr, transparent, reuse_port)
                .with_context(|| format!("bind {addr}"))
        };
        Ok(Listeners {
            outbound: bind(addrs.outbound, true)?,
            inbound: bind(addrs.inbound, true)?,
            hbone: bind(addrs.hbone, true)?,
            socks5: addrs.socks5.map(|a| bind(a, false)).transpose()?,
        })
    }

    /// Where the listeners are bound.
    pub fn local_addrs(&self) -> std::io::Result<BoundAddrs> {
        Ok(BoundAddrs {
            outbound: self.outbound.local_addr()?,
            inbound: self.inbound.local_addr()?,
            hbone: self.hbone.local_addr()?,
            socks5: self.socks5.as_ref().map(|l| l.local_addr()).transpose()?,
        })
    }

    /// Serves every worker's listeners (`listeners[i]` bound on worker `i`, whose connections use `inputs[i]`)
    /// until `drain` fires.
    pub fn spawn(
        listeners: Vec<Listeners>,
        inputs: Vec<Arc<ProxyInputs>>,
        workers: &Arc<Workers>,
        drain: DrainWatcher,
    ) {
        let outbound = proxy::Handlers::new(workers, &inputs, |pi, s, peer, d| async move {
            match proxy::socket::original_dst(&s) {
                Ok(dst) => {
                    proxy::outbound::handle(pi, s, peer, proxy::socket::canonical(dst), d).await
                }
                Err(e) => {
                    warn!(src.addr = %peer, error = %e, "no original destination; is the redirect rule in place?")
                }
            }
        });
        let passthrough = proxy::Handlers::new(workers, &inputs, proxy::passthrough::handle);
        let inbound = proxy::Handlers::new(workers, &inputs, proxy::inbound::handle);
        let socks5 = proxy::Handlers::new(workers, &inputs, proxy::socks5::handle);
        for (i, l) in listeners.into_iter().enumerate() {
            let h = workers.handle(i);
            h.spawn(proxy::serve(
                "outbound",
                l.outbound,
                drain.clone(),
                outbound.clone(),
                i,
            ));
            h.spawn(proxy::serve(
                "inbound_passthrough",
                l.inbound,
                drain.clone(),
                passthrough.clone(),
                i,
            ));
            h.spawn(proxy::serve(
                "inbound",
                l.hbone,
                drain.clone(),
                inbound.clone(),
                i,
            ));
            if let Some(s) = l.socks5 {
                h.spawn(proxy::serve("socks5", s, drain.clone(), socks5.clone(), i));
            }
        }
    }
}

/// `CRL_PATH` and `COMPLIANCE_POLICY` become core's process-wide TLS policy, used by every acceptor and connector
/// (see [`TlsPolicy::install_from_settings`]); the CRL file is polled on the control runtime.
fn install_tls_policy(cfg: &Config, backend: TlsBackend, control: &Handle) -> anyhow::Result<()> {
    let _runtime = control.enter();
    TlsPolicy::install_from_settings(cfg.crl_path.as_deref(), &cfg.compliance_policy, backend)
}

fn bind_std(addr: SocketAddr, reuse_port: bool) -> anyhow::Result<std::net::TcpListener> {
    let bind = || -> std::io::Result<std::net::TcpListener> {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        s.set_reuse_address(true)?;
        if reuse_port {
            s.set_reuse_port(true)?;
        }
        s.bind(&addr.into())?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    };
    bind().with_context(|| format!("bind {addr}"))
}

fn control_plane(
    cfg: &Config,
    address: &str,
    root: &str,
    alt_hostname: Option<String>,
    headers: &[(String, String)],
) -> ControlPlaneConfig {
    ControlPlaneConfig {
        address: address.to_owned(),
        root_ca: RootCa::from_env_value(root),
        alt_hostname,
        token: TokenSource::from_env(cfg.auth_token.as_deref()),
        cluster_id: cfg.cluster_id.clone(),
        extra_headers: headers.to_vec(),
    }
}

/// Who signs our certificates: an in-process CA (FAKE_CA, LOCAL_CA_DIR) or the Istio CA API.
async fn cert_signer(cfg: &Config) -> anyhow::Result<Arc<dyn CsrSigner>> {
    let ca = cfg.ca_address.as_ref().map(|address| {
        let cp = control_plane(
            cfg,
            address,
            &cfg.ca_root_ca,
            cfg.alt_ca_hostname.clone(),
            &cfg.ca_headers,
        );
        (cp, cfg.proxy_mode == ProxyMode::Shared)
    });
    Ok(ambit_core::signer::choose(
        cfg.local_ca_dir.as_deref(),
        cfg.fake_ca,
        &cfg.trust_domain,
        ca,
    )?)
}

/// Applies xDS resources to the proxy state; bad resources are rejected one by one (NACK), the rest apply.
struct StateHandler(ProxyState);

impl XdsHandler for StateHandler {
    fn apply(&self, type_url: &str, updates: Vec<XdsUpdate>) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        for update in updates {
            match update {
                XdsUpdate::Upsert { name, resource, .. } => {
                    let result = match type_url {
                        ambit_proto::type_url::ADDRESS => {
                            ambit_proto::workload::Address::decode(resource.value.as_slice())
                                .map_err(|e| format!("decode: {e}"))
                                .and_then(|a| self.0.insert_address(&name, a))
                        }
                        ambit_proto::type_url::AUTHORIZATION => {
                            ambit_proto::security::Authorization::decode(resource.value.as_slice())
                                .map_err(|e| format!("decode: {e}"))
                                .and_then(|p| self.0.insert_authorization(&name, p))
                        }
                        other => {
                            warn!(type_url = other, "ignoring resource of an unknown type");
                            Ok(())
                        }
                    };
                    if let Err(reason) = result {
                        rejected.push(Rejection { name, reason });
                    }
                }
                XdsUpdate::Remove { name } => match type_url {
                    ambit_proto::type_url::ADDRESS => self.0.remove_address(&name),
                    ambit_proto::type_url::AUTHORIZATION => self.0.remove_authorization(&name),
                    other => warn!(type_url = other, "ignoring resource of an unknown type"),
                },
            }
        }
        rejected
    }
}

/// `/config_dump`.
struct Dump {
    cfg: Arc<Config>,
    state: ProxyState,
    certs: Arc<CertManager>,
    /// Shared mode: the pods handed over by the node agent.
    pods: Option<Arc<PodProxies>>,
    /// Dedicated mode: the one workload served and its live connections.
    dedicated: Option<(crate::config::WorkloadInfo, Arc<ConnectionRegistry>)>,
}

impl ConfigDump for Dump {
    fn config_dump(&self) -> serde_json::Value {
        let mut v = self.state.snapshot_for_dump();
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "config".into(),
                serde_json::to_value(&*self.cfg).unwrap_or_default(),
            );
            obj.insert(
                "certificates".into(),
                serde_json::to_value(self.certs.dump()).unwrap_or_default(),
            );
            obj.insert(
                "version".into(),
                serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "gitRevision": option_env!("AMBIT_GIT_REVISION").unwrap_or("unknown"),
                    "rustVersion": "1.95",
                    "buildProfile": if cfg!(debug_assertions) { "debug" } else { "release" },
                    "buildStatus": "Clean",
                    "istioVersion": "1.28-compatible",
                    "cryptoProvider": if cfg!(feature = "tls-boring") { "aws-lc+boring" } else { "aws-lc" },
                }),
            );
            if let Some(pods) = &self.pods {
                obj.insert("workloadState".into(), pods.dump());
            }
            // Dedicated mode, in the shape of shared mode's entries (keyed `namespace/name`: no uid is known).
            if let Some((w, connections)) = &self.dedicated {
                obj.insert(
                    "workloadState".into(),
                    serde_json::json!({
                        format!("{}/{}", w.namespace, w.name): {
                            "info": {"name": w.name, "namespace": w.namespace, "serviceAccount": w.service_account},
                            "state": "Up",
                            "connections": serde_json::to_value(connections.dump()).unwrap_or_default(),
                        }
                    }),
                );
            }
            if let Some(LocalXds::Path(p)) = &self.cfg.local_xds {
                let static_config = localconfig::load(p)
                    .ok()
                    .and_then(|c| serde_json::to_value(c).ok())
                    .unwrap_or(serde_json::Value::Null);
                obj.insert("staticConfig".into(), static_config);
            }
        }
        v
    }
}

/// The identity a dedicated-mode ztunnel serves, as a SPIFFE id in the configured trust domain (for logs).
pub fn dedicated_identity(cfg: &Config) -> Option<Identity> {
    let w = cfg.proxy_workload_info.as_ref()?;
    Some(Identity::new(
        &cfg.trust_domain,
        &w.namespace,
        &w.service_account,
    ))
}
