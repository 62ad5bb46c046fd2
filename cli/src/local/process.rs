//! The processes the supervisor runs (pods, and the mesh's own components): each started inside a network
//! namespace with `ip netns exec`, in its own process group, output appended to a log file, restarted with backoff
//! when it exits, stopped with SIGTERM then SIGKILL.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

const RESTART_MAX: Duration = Duration::from_secs(30);

/// A supervised process: started in a namespace, restarted with backoff when it exits.
pub struct Proc {
    pub name: String,
    netns: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    pub child: Option<Child>,
    pub restarts: u32,
    next_start: Instant,
}

impl Proc {
    pub fn new(
        name: &str,
        netns: &str,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> Proc {
        Proc {
            name: name.to_owned(),
            netns: netns.to_owned(),
            argv,
            env,
            log,
            child: None,
            restarts: 0,
            next_start: Instant::now(),
        }
    }

    pub fn start(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .args(&self.argv)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", self.name))?;
        info!(process = %self.name, pid = child.id(), "started");
        self.child = Some(child);
        Ok(())
    }

    /// The same process, not started: the new one of a rolling restart (same namespace, command, env and log).
    pub fn respawn(&self) -> Proc {
        Proc::new(
            &self.name,
            &self.netns,
            self.argv.clone(),
            self.env.clone(),
            self.log.clone(),
        )
    }

    /// The log file the process appends to.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// Whether the process has exited (reaped), without waiting.
    pub fn exited(&mut self) -> bool {
        match &mut self.child {
            None => true,
            Some(c) => match c.try_wait() {
                Ok(Some(_)) => {
                    self.child = None;
                    true
                }
                _ => false,
            },
        }
    }

    /// SIGKILL to its process group, then reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Restarts the process if it exited and its backoff has passed. Returns true when it (re)started.
    pub fn supervise(&mut self) -> bool {
        if let Some(c) = &mut self.child {
            match c.try_wait() {
                Ok(None) => return false,
                Ok(Some(status)) => {
                    warn!(process = %self.name, %status, "exited; restarting");
                    self.child = None;
                    self.restarts += 1;
                    let backoff = Duration::from_secs(1 << self.restarts.min(5)).min(RESTART_MAX);
                    self.next_start = Instant::now() + backoff;
                }
                Err(e) => {
                    warn!(process = %self.name, error = %e, "wait failed");
                    return false;
                }
            }
        }
        if self.child.is_none() && Instant::now() >= self.next_start {
            if let Err(e) = self.start() {
                warn!(process = %self.name, error = %e, "start failed");
                self.next_start = Instant::now() + RESTART_MAX;
                return false;
            }
            return true;
        }
        false
    }

    /// SIGTERM to its process group, SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.terminate();
        self.reap(Instant::now() + grace);
    }

    /// Asks its process group to stop (SIGTERM).
    pub fn terminate(&self) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }

    /// Waits for the process until `deadline`, then kills its process group.
    fn reap(&mut self, deadline: Instant) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(_)) = c.try_wait() {
                debug!(process = %self.name, after_ms = started.elapsed().as_millis() as u64, "stopped");
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        warn!(process = %self.name, "did not stop in time; killing it");
        if let Ok(pid) = i32::try_from(c.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = c.wait();
    }
}

/// SIGTERM to every process group, then waits for all of them together, SIGKILL after `grace`.
pub fn stop_all(procs: &mut [Proc], grace: Duration) {
    for p in procs.iter() {
        p.terminate();
    }
    let deadline = Instant::now() + grace;
    for p in procs.iter_mut() {
        p.reap(deadline);
    }
}
