//! `ambit-apiserver`: the embedded API server on its own, for manual runs and tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Ambit's embedded Kubernetes-compatible API server.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks one).
    #[arg(long, env = "AMBIT_APISERVER_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Directory for the CA, keys, admin token and the state snapshot; without it, state is in memory only.
    #[arg(long, env = "AMBIT_APISERVER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where to write the admin kubeconfig.
    #[arg(long, env = "AMBIT_APISERVER_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Extra DNS names or IP addresses for the serving certificate.
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Service cluster IP range.
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cidr: String,
    /// Watch events kept for resuming watches.
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 30)]
    bookmark_seconds: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    tracing::info!(?args, "config");
    let config = ambit_apiserver::Config {
        listen: args.listen,
        data_dir: args.data_dir,
        kubeconfig: args.kubeconfig,
        hosts: args.hosts,
        bookmark_interval: Duration::from_secs(args.bookmark_seconds.max(1)),
        store: ambit_apiserver::StoreConfig {
            history_limit: args.history.max(1),
            service_cidr: args.service_cidr,
        },
        ..Default::default()
    };
    let server = ambit_apiserver::ApiServer::start(config).await?;
    println!("ambit-apiserver listening on {}", server.url());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
