//! One current-thread Tokio runtime per thread, reused by every execution (building one per input would cost
//! more than most parsers).

use std::future::Future;
use std::time::Duration;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = build();
}

// Start-up invariant: a fuzz process without a runtime cannot do anything useful.
#[allow(clippy::expect_used)]
fn build() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `f` to completion on this thread's runtime.
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(f))
}

/// Runs `f` with a generous deadline; `None` when it did not finish (libFuzzer's own `-timeout` reports real
/// hangs; this only keeps one stuck exchange from stalling the replay test).
pub(crate) fn block_on_within<F: Future>(limit: Duration, f: F) -> Option<F::Output> {
    block_on(async { tokio::time::timeout(limit, f).await.ok() })
}
