//! Ambit's embedded Kubernetes-compatible API server.
//!
//! `ambit local` runs it so that the controller and node agents talk to the Kubernetes API through kube-rs
//! exactly as on a cluster, and so that `kubectl` works on the local mesh. It is our own small implementation
//! of the API's REST semantics (discovery, list/watch with resource versions and selectors, create/update/
//! patch/apply/delete, status subresources, CRDs, garbage collection, TokenReview), in memory with an on-disk
//! snapshot. It is not a general Kubernetes: see `docs/ARCHITECTURE.md` for what it does not do.

pub mod auth;
pub mod discovery;
pub mod error;
mod http;
pub mod kubeconfig;
pub mod managed;
pub mod meta;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod selector;
pub mod snapshot;
pub mod store;
pub mod table;
pub mod tls;
pub mod token;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

pub use error::ApiError;
pub use store::{Store, StoreConfig};
pub use token::PodToken;

/// How to run the server.
#[derive(Clone, Debug)]
pub struct Config {
    /// `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    /// Keeps the CA, keys, admin token and the snapshot; `None` runs in memory with fresh keys.
    pub data_dir: Option<PathBuf>,
    /// Where to write the admin kubeconfig, if anywhere.
    pub kubeconfig: Option<PathBuf>,
    /// Extra names and addresses for the serving certificate.
    pub hosts: Vec<String>,
    /// The URL clients should use (default `https://<listen address>`).
    pub external_url: Option<String>,
    pub snapshot_debounce: Duration,
    pub bookmark_interval: Duration,
    pub store: StoreConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: None,
            kubeconfig: None,
            hosts: Vec::new(),
            external_url: None,
            snapshot_debounce: Duration::from_millis(200),
            bookmark_interval: Duration::from_secs(30),
            store: StoreConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error("token signing key: {0}")]
    Token(#[from] token::TokenError),
    #[error("listening on {addr}: {err}")]
    Listen {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("writing the kubeconfig {path}: {err}")]
    Kubeconfig { path: String, err: std::io::Error },
}

/// A running server. Dropping it without [`ApiServer::shutdown`] stops serving but may skip the last snapshot.
pub struct ApiServer {
    addr: SocketAddr,
    url: String,
    store: Arc<Store>,
    ca_pem: String,
    admin_token: String,
    signer: Arc<http::State>,
    shutdown: signal::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    snapshot_path: Option<PathBuf>,
}

impl ApiServer {
    pub async fn start(config: Config) -> Result<ApiServer, StartError> {
        let pki = tls::Pki::load_or_create(config.data_dir.as_deref(), &config.hosts)?;
        let store = Arc::new(Store::new(config.store.clone()));
        let snapshot_path = config.data_dir.as_ref().map(|d| d.join("state.json"));
        if let Some(path) = &snapshot_path
            && let Some((rv, objects)) = snapshot::load(path)?
        {
            store.lock().restore(rv, objects);
            tracing::info!(path = %path.display(), resource_version = rv, "restored the API server state");
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|err| StartError::Listen {
                    addr: config.listen,
                    err,
                })?;
        let addr = listener.local_addr().map_err(|err| StartError::Listen {
            addr: config.listen,
            err,
        })?;
        let url = config
            .external_url
            .clone()
            .unwrap_or_else(|| format!("https://{addr}"));
        let (shutdown, shutdown_rx) = signal::channel(false);
        let state = Arc::new(http::State {
            store: store.clone(),
            signer: token::TokenSigner::from_pkcs8(&pki.token_key_der)?,
            admin_token: pki.admin_token.clone(),
            bookmark_every: config.bookmark_interval,
            shutdown: shutdown_rx.clone(),
            server_address: addr.to_string(),
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config.clone());
        let mut tasks = vec![tokio::spawn(http::serve(
            listener,
            acceptor,
            state.clone(),
            shutdown_rx.clone(),
        ))];
        if let Some(path) = &snapshot_path {
            tasks.push(tokio::spawn(snapshot::run_writer(
                store.clone(),
                path.clone(),
                config.snapshot_debounce,
                shutdown_rx,
            )));
        }
        if let Some(path) = &config.kubeconfig {
            kubeconfig::write(path, &url, &pki.ca_pem, &pki.admin_token).map_err(|err| {
                StartError::Kubeconfig {
                    path: path.display().to_string(),
                    err,
                }
            })?;
        }
        tracing::info!(listen = %addr, url, data_dir = ?config.data_dir, "API server listening");
        Ok(ApiServer {
            addr,
            url,
            store,
            ca_pem: pki.ca_pem,
            admin_token: pki.admin_token,
            signer: state,
            shutdown,
            tasks,
            snapshot_path,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The admin kubeconfig, as text.
    pub fn kubeconfig(&self) -> String {
        kubeconfig::render(&self.url, &self.ca_pem, &self.admin_token)
    }

    /// The store, for in-process users (the local runtime) and tests.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Drops the watch history: watches from any earlier version now get `410 Expired`.
    pub fn compact(&self) {
        self.store.lock().compact();
    }

    /// A projected-style service-account token bound to a pod, signed by this server (what a kubelet mounts).
    pub fn mint_pod_token(&self, req: &PodToken) -> Result<String, token::TokenError> {
        self.signer.signer.mint(req, token::unix_now())
    }

    /// Stops accepting, ends the watches, lets connections drain, and writes the last snapshot.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(path) = &self.snapshot_path
            && let Err(e) = snapshot::save(&self.store, path)
        {
            tracing::warn!(error = %e, "writing the final snapshot failed");
        }
    }
}
