//! `waypoint`: configured from the environment (the same variable names as ztunnel where they mean the same).

use std::collections::HashMap;

use ambit_waypoint::{app, config::Config};
use anyhow::Context;

#[cfg(target_env = "gnu")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    ambit_core::cmdline::handle(
        "waypoint",
        "configured from the environment with the variables ztunnel reads where they mean the same (waypoint/src/config.rs)",
        &[],
    );
    let env: HashMap<String, String> = std::env::vars().collect();
    let json = env.get("LOG_FORMAT").is_some_and(|f| f == "json");
    let log = ambit_core::logging::init("info", json);
    if let Some((from, to)) = ambit_core::runtime::raise_fd_limit() {
        tracing::info!(from, to, "raised the soft open-file limit to the hard one");
    }
    ambit_core::tls::install_default_provider();
    let cfg = Config::from_env(&env).context("configuration")?;
    tracing::info!(config = %serde_json::to_string(&cfg).unwrap_or_default(), "effective configuration");

    // One current-thread runtime per worker thread: each binds its own 15008 listener and keeps its own backend
    // connections, so a request never hops threads.
    let (handles, threads) =
        ambit_core::runtime::start(cfg.worker_threads, "waypoint").context("data-plane threads")?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("control runtime")?;
    let result = control.block_on(async move {
        let running = app::start_on(cfg, log, handles).await?;
        running.wait().await;
        anyhow::Ok(())
    });
    threads.stop();
    result
}
