//! The plugin's life on the node while the agent runs: the socket is served first (a pod started right after the
//! install must find someone to ask), then the plugin is installed ([`crate::install`]) and kept installed — the
//! configuration is checked every [`CHECK_EVERY`], so a primary CNI that rewrites its file gets our entry back
//! within that — and on the agent's stop the configuration is restored before the socket closes.
//!
//! Between the agent's stop and its successor's start (a DaemonSet rollout) pods start uncaptured and are captured
//! by the successor's first reconcile, exactly as pods that started before the agent was installed.

use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::install::{Ensured, InstallConfig, Installer};
use crate::plugin_server::{self, PluginCall};

/// How often the installed configuration is checked (and repaired).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The running install: stop it with [`Installed::uninstall`].
pub struct Installed {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Option<Installer>>,
}

/// Serves the plugin socket and installs the plugin; the calls go to the reconcile loop. Errors here (a bad
/// failure mode, a directory the agent cannot write) stop the agent with what to fix.
pub fn start(cfg: &InstallConfig) -> anyhow::Result<(mpsc::Receiver<PluginCall>, Installed)> {
    let calls = plugin_server::serve(&cfg.socket)
        .with_context(|| format!("serve the CNI plugin socket {}", cfg.socket.display()))?;
    let mut installer = Installer::new(cfg.clone()).context("the CNI plugin configuration")?;
    let first = installer.ensure().with_context(|| {
        format!(
            "install the CNI plugin into {} and {}",
            cfg.bin_dir.display(),
            cfg.conf_dir.display()
        )
    })?;
    report(&first, cfg);
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(keep(installer, cfg.clone(), stopped));
    Ok((calls, Installed { stop, task }))
}

impl Installed {
    /// Stops checking and restores the node's CNI configuration.
    pub async fn uninstall(self) {
        let _ = self.stop.send(());
        let Ok(Some(mut installer)) = self.task.await else {
            warn!("the CNI install task failed; the plugin stays configured");
            return;
        };
        match tokio::task::spawn_blocking(move || installer.uninstall()).await {
            Ok(Ok(())) => info!("CNI plugin removed from the node's configuration"),
            Ok(Err(e)) => warn!(error = %e, "removing the CNI plugin failed"),
            Err(e) => warn!(error = %e, "the CNI uninstall task failed"),
        }
    }
}

async fn keep(
    mut installer: Installer,
    cfg: InstallConfig,
    mut stopped: oneshot::Receiver<()>,
) -> Option<Installer> {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    let mut waiting_logged = false;
    loop {
        tokio::select! {
            _ = &mut stopped => return Some(installer),
            _ = tick.tick() => {}
        }
        let (back, result) = match tokio::task::spawn_blocking(move || {
            let r = installer.ensure();
            (installer, r)
        })
        .await
        {
            Ok(v) => v,
            Err(e) => {
                // The installer was lost with the task; nothing more can be checked or restored.
                warn!(error = %e, "the CNI install check panicked; stopping the checks");
                return None;
            }
        };
        installer = back;
        match result {
            Ok(Ensured::NoPrimaryYet) if waiting_logged => {}
            Ok(e) => {
                waiting_logged = matches!(e, Ensured::NoPrimaryYet);
                last_error = None;
                report(&e, &cfg);
            }
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    warn!(error = %msg, "checking the CNI plugin configuration failed; retrying");
                    last_error = Some(msg);
                }
            }
        }
    }
}

fn report(e: &Ensured, cfg: &InstallConfig) {
    match e {
        Ensured::Unchanged => {}
        Ensured::Installed { file } => {
            info!(file = %file.display(), socket = %cfg.socket.display(), failure_mode = %cfg.failure_mode,
                "CNI plugin installed (chained)")
        }
        Ensured::Repaired { file } => {
            info!(file = %file.display(), "the primary CNI rewrote its configuration; CNI plugin entry restored")
        }
        Ensured::NoPrimaryYet => warn!(
            dir = %cfg.conf_dir.display(),
            "no primary CNI configuration yet; the plugin is installed once there is one"
        ),
    }
}
