//! Waiting for the signals that ask a process to stop.

/// Resolves on SIGTERM or SIGINT (Ctrl-C). If SIGTERM cannot be watched, on SIGINT alone.
pub async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
