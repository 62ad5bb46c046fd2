//! `ztunnel`: configured from the environment exactly like upstream ztunnel.

use std::collections::HashMap;

use ambit_ztunnel::{app, config::Config};
use anyhow::Context;

// Many short-lived buffers of a few sizes on many threads: jemalloc handles that better than glibc's malloc.
#[cfg(target_env = "gnu")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    ambit_core::cmdline::handle(
        "ztunnel",
        "configured from the environment, as upstream ztunnel is (ztunnel/src/config.rs; docs/INTEROP.md)",
        &[&["proxy", "ztunnel"]],
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

    // Data plane: one current-thread runtime per worker thread. Each worker binds its own listeners (SO_REUSEPORT)
    // and keeps its own HBONE pool, so a connection never hops between threads (see app::start_on).
    let (handles, threads) = ambit_core::runtime::start(cfg.worker_threads, "ztunnel-proxy")
        .context("data-plane threads")?;

    // Control side (xDS, certificate timers, admin, metrics, readiness) on this thread, apart from the data plane,
    // so a saturated data plane never delays a policy update or a health check.
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("control runtime")?;
    let result = control.block_on(async move {
        let running = app::start_on(cfg, log, None, handles).await?;
        running.wait().await;
        anyhow::Ok(())
    });
    threads.stop();
    result
}
