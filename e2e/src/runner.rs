//! Running an end-to-end test: root check (skip or fail), one test at a time machine-wide, leftovers swept,
//! a [`TestDir`] that is printed when the test fails.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::netns;
use crate::testdir::TestDir;

/// Set to `1` to turn "not root, skipping" into a test failure (CI).
pub const REQUIRED_ENV: &str = "AMBIT_E2E_REQUIRED";

/// Lock file serialising e2e tests and benchmarks across processes (they share namespace names and addresses).
const LOCK_PATH: &str = "/tmp/ambit-e2e.lock";

/// Tools every topology needs.
const REQUIRED_TOOLS: &[&str] = &["ip", "iptables", "curl", "tcpdump"];

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn required() -> bool {
    std::env::var(REQUIRED_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// `true` when the test can run. When not root: prints why and returns `false` (skip), or panics when
/// `AMBIT_E2E_REQUIRED=1`.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    let msg = format!(
        "{test}: needs root (network namespaces, veth, iptables); run `sudo scripts/test.sh` or the tests as root"
    );
    if required() {
        panic!("{msg} ({REQUIRED_ENV}=1, so not skipping)");
    }
    // Straight to the stderr handle, not `eprintln!`: libtest captures the macros' output of passing tests.
    let _ = writeln!(std::io::stderr(), "SKIPPED {msg}");
    false
}

/// Fails with a clear message when a command the harness uses is not installed.
pub fn check_tools(tools: &[&str]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "missing tools: {} (scripts/test.sh installs them: apt-get install iproute2 iptables curl tcpdump iperf3 wrk)",
        missing.join(", ")
    );
    Ok(())
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Machine-wide exclusive lock held while a topology exists.
#[derive(Debug)]
pub struct E2eLock(#[allow(dead_code)] Flock<File>);

impl E2eLock {
    /// Blocks until no other e2e test or benchmark runs, then sweeps the leftovers of crashed runs.
    pub fn acquire() -> Result<E2eLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .with_context(|| format!("open {LOCK_PATH}"))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .context("flock")?;
        netns::cleanup_leftovers().context("removing leftovers of an earlier run")?;
        Ok(E2eLock(lock))
    }
}

/// Runs one end-to-end test: skips (or fails, see [`REQUIRED_ENV`]) when not root, takes the machine-wide lock,
/// sweeps leftovers, gives `body` a fresh [`TestDir`] and, when `body` fails or panics, prints that directory
/// (configs, process logs) before failing the test.
pub fn e2e_test(name: &str, body: impl FnOnce(&TestDir) -> Result<()>) {
    if !require_root(name) {
        return;
    }
    let setup = (|| -> Result<(E2eLock, TestDir)> {
        check_tools(REQUIRED_TOOLS)?;
        let lock = E2eLock::acquire()?;
        Ok((lock, TestDir::new(name)?))
    })();
    let (lock, dir) = match setup {
        Ok(v) => v,
        Err(e) => panic!("{name}: setup failed: {e:#}"),
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| body(&dir)));
    // Anything `body` started (processes, namespaces) is gone by now, so the logs are complete.
    let _ = netns::cleanup_leftovers();
    drop(lock);
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            dir.report();
            panic!("{name} failed: {e:#}");
        }
        Err(panic) => {
            dir.report();
            resume_unwind(panic);
        }
    }
}
