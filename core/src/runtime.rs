//! Data-plane threads: one current-thread tokio runtime per thread, each kept alive until [`Threads::stop`].
//! Both proxies run their listeners and connections on these (a connection never hops threads), and their
//! control side on the main thread's own runtime.

use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The running data-plane threads.
pub struct Threads {
    threads: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

/// Starts `n` (at least one) threads named `<name>-<i>`, each running its own current-thread runtime; returns
/// their handles (to spawn on) and the threads (to stop).
pub fn start(n: usize, name: &str) -> std::io::Result<(Vec<Handle>, Threads)> {
    let mut handles = Vec::with_capacity(n.max(1));
    let mut threads = Vec::with_capacity(n.max(1));
    for i in 0..n.max(1) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        handles.push(rt.handle().clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                })
            })?;
        threads.push((stop, thread));
    }
    Ok((handles, Threads { threads }))
}

impl Threads {
    /// Stops every runtime (dropping what still runs on it) and joins the threads.
    pub fn stop(self) {
        for (stop, thread) in self.threads {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit, as upstream ztunnel does: every proxied
/// connection costs one or two descriptors, and a soft limit of 1024 (a common default outside containers) would
/// refuse connections long before memory runs short. Returns the (old, new) soft limit when it changed.
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return None;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Some((soft, hard)),
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn threads_run_and_stop() {
        let (handles, threads) = super::start(2, "t").expect("threads");
        assert_eq!(handles.len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        for h in &handles {
            let tx = tx.clone();
            h.spawn(async move {
                let _ = tx.send(std::thread::current().name().map(str::to_owned));
            });
        }
        let mut names: Vec<_> = (0..2).map(|_| rx.recv().ok().flatten()).collect();
        names.sort();
        assert_eq!(names, [Some("t-0".to_owned()), Some("t-1".to_owned())]);
        threads.stop();
    }
}
