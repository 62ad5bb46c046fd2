//! `ztunnel`: configured from the environment exactly like upstream ztunnel.

use std::collections::HashMap;

use ambit_ztunnel::{app, config::Config};
use anyhow::Context;

// Many short-lived buffers of a few sizes on many threads: jemalloc handles that better than glibc's malloc.
#[cfg(target_env = "gnu")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let json = env.get("LOG_FORMAT").is_some_and(|f| f == "json");
    let log = ambit_core::logging::init("info", json);
    ambit_core::tls::install_default_provider();
    let cfg = Config::from_env(&env).context("configuration")?;
    tracing::info!(config = %serde_json::to_string(&cfg).unwrap_or_default(), "effective configuration");

    // Control side: xDS, certificates' timers, admin, metrics, readiness, on one small thread of its own.
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("ztunnel-control")
        .build()
        .context("control runtime")?;
    let control_handle = control.handle().clone();
    let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let control_thread = std::thread::Builder::new()
        .name("ztunnel-control".into())
        .spawn(move || {
            control.block_on(async {
                let _ = control_stopped.await;
            })
        })
        .context("control thread")?;

    // Data plane.
    let data = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.worker_threads.max(1))
        .enable_all()
        .thread_name("ztunnel-proxy")
        .build()
        .context("data-plane runtime")?;
    let result = data.block_on(async move {
        let running = app::start(cfg, log, Some(control_handle)).await?;
        running.wait().await;
        anyhow::Ok(())
    });
    let _ = stop_control.send(());
    let _ = control_thread.join();
    result
}
