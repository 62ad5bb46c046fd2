//! Wiring: sources → controller loop → xDS (15010 plaintext, 15012 TLS together with the CA) and the monitoring
//! port (15014). [`start`] binds everything and returns the bound addresses; [`Running::shutdown`] drains.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::drain::{self, DrainTrigger};
use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::{self, AdminState};
use crate::ca::{Authenticator, Authority, CaMetrics, CaService, TokenAuthority};
use crate::compute::ComputeConfig;
use crate::controller::{Controller, Outputs};
use crate::sources::Source;
use crate::sources::manifest::ManifestSource;
use crate::xds::{XdsMetrics, XdsServer};

/// The controller's effective configuration (resolved from flags in `main.rs`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Config {
    /// Manifest directories ([`start`]); empty when another source is given ([`start_with_source`]).
    pub manifests: Vec<PathBuf>,
    pub state_dir: PathBuf,
    /// DNS names and IPs of the 15012 serving certificate.
    pub tls_sans: Vec<String>,
    pub listen: IpAddr,
    /// Plaintext xDS (local debugging); 0 picks a free port.
    pub xds_port: u16,
    /// TLS xDS + CA.
    pub secure_port: u16,
    pub monitoring_port: u16,
    pub compute: ComputeConfig,
    pub debounce: Duration,
    /// Require a bearer token for xDS on the secure port (the plaintext port never asks).
    pub require_xds_token: bool,
    pub drain_deadline: Duration,
    /// Where the waypoint deployer's manifests are written (`waypoint-<ns>.<gw>.yaml`); `None`: not written.
    pub deploy_dir: Option<PathBuf>,
}

pub struct Running {
    pub xds_addr: SocketAddr,
    pub secure_addr: SocketAddr,
    pub monitoring_addr: SocketAddr,
    pub outputs: Outputs,
    trigger: DrainTrigger,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Graceful drain: listeners stop, streams end (clients reconnect elsewhere), tasks finish or are cut at the
    /// deadline.
    pub async fn shutdown(self, deadline: Duration) {
        let graceful = self.trigger.drain(deadline).await;
        for t in self.tasks {
            t.abort();
        }
        tracing::info!(graceful, "controller stopped");
    }
}

/// Splits `--tls-san` values into DNS names and IPs.
pub fn split_sans(sans: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for s in sans {
        match s.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(s.clone()),
        }
    }
    (dns, ips)
}

/// Starts with the manifest source on `cfg.manifests`.
pub async fn start(cfg: Config, authority: Arc<dyn Authority>) -> anyhow::Result<Running> {
    let source = Box::new(ManifestSource::new(cfg.manifests.clone()));
    let info = serde_json::json!({"manifests": cfg.manifests});
    start_with_source(cfg, authority, source, info).await
}

/// Starts with `source` (the manifest directories or the Kubernetes API); `source_info` describes it at
/// `/debug/config` (`source`).
pub async fn start_with_source(
    cfg: Config,
    authority: Arc<dyn Authority>,
    source: Box<dyn Source>,
    source_info: serde_json::Value,
) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let root_path = cfg.state_dir.join("root-cert.pem");
    std::fs::write(&root_path, authority.root_pem())
        .with_context(|| format!("writing {}", root_path.display()))?;
    let tokens: Arc<TokenAuthority> = Arc::new(TokenAuthority::load_or_create(&cfg.state_dir)?);

    let (trigger, drain_watcher) = drain::new();
    let mut registry = Registry::default();
    let xds_metrics = Arc::new(XdsMetrics::new(&mut registry));
    let ca_metrics = CaMetrics::new(&mut registry);

    let (events_tx, events_rx) = tokio::sync::mpsc::channel(1024);
    let (controller, outputs) = Controller::new(cfg.compute.clone(), 1, cfg.debounce);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(
        controller.run(events_rx, drain_watcher.clone()),
    ));
    let src_drain = drain_watcher.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = source.run(events_tx, src_drain).await {
            tracing::error!(error = %e, "source stopped");
        }
    }));

    if let Some(dir) = cfg.deploy_dir.clone() {
        tasks.push(tokio::spawn(crate::deploy::run(
            dir,
            outputs.resources.clone(),
            drain_watcher.clone(),
        )));
    }

    let xds = XdsServer::new(
        outputs.snapshot.clone(),
        xds_metrics,
        None,
        drain_watcher.clone(),
    );
    let auth: Arc<dyn Authenticator> = tokens.clone();
    let secure_xds = xds.with_auth(cfg.require_xds_token.then(|| auth.clone()));
    let ca = CaService::new(
        authority.clone(),
        auth,
        outputs.pods.clone(),
        &cfg.compute.trust_domain,
        ca_metrics,
    );

    let bind = |port| SocketAddr::new(cfg.listen, port);
    let plain = TcpListener::bind(bind(cfg.xds_port))
        .await
        .with_context(|| format!("binding {}", bind(cfg.xds_port)))?;
    let secure = TcpListener::bind(bind(cfg.secure_port))
        .await
        .with_context(|| format!("binding {}", bind(cfg.secure_port)))?;
    let monitoring = TcpListener::bind(bind(cfg.monitoring_port))
        .await
        .with_context(|| format!("binding {}", bind(cfg.monitoring_port)))?;
    let (xds_addr, secure_addr, monitoring_addr) = (
        plain.local_addr()?,
        secure.local_addr()?,
        monitoring.local_addr()?,
    );

    let (dns, ips) = split_sans(&cfg.tls_sans);
    let (chain, key) = authority
        .serving_cert(&dns, &ips, Duration::from_secs(365 * 24 * 3600))
        .map_err(|e| anyhow::anyhow!("issuing the serving certificate: {e}"))?;
    let identity = tonic::transport::Identity::from_pem(chain.concat(), key);

    let mut d = drain_watcher.clone();
    let plain_svc = xds.clone().into_service();
    tasks.push(tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(plain_svc)
            .serve_with_incoming_shutdown(TcpListenerStream::new(plain), async move {
                d.signaled().await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "plaintext xDS server failed");
        }
    }));
    let mut d = drain_watcher.clone();
    let mut builder = tonic::transport::Server::builder()
        .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
        .context("TLS config")?;
    let router = builder
        .add_service(secure_xds.into_service())
        .add_service(ca.into_service());
    tasks.push(tokio::spawn(async move {
        let r = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(secure), async move {
                d.signaled().await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "secure xDS/CA server failed");
        }
    }));

    let admin_state = Arc::new(AdminState {
        outputs: outputs.clone(),
        registry,
        xds,
        config: {
            let mut v = serde_json::to_value(&cfg).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("source".into(), source_info);
            }
            v
        },
    });
    tasks.push(tokio::spawn(admin::serve(
        monitoring,
        admin_state,
        drain_watcher,
    )));
    tracing::info!(xds = %xds_addr, secure = %secure_addr, monitoring = %monitoring_addr, root = %root_path.display(),
        "controller listening");
    Ok(Running {
        xds_addr,
        secure_addr,
        monitoring_addr,
        outputs,
        trigger,
        tasks,
    })
}
