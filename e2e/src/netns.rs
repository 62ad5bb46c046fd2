//! Named network namespaces (`ip netns`), veth pairs and commands run inside a namespace.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::process::Process;

/// Every namespace the harness creates starts with this; [`cleanup_leftovers`] removes all of them.
pub const PREFIX: &str = "ambit-e2e-";

/// Runs `cmd`, failing with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Names of existing namespaces starting with [`PREFIX`].
pub fn leftovers() -> Result<Vec<String>> {
    let list = ip(&["netns", "list"])?;
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_owned)
        .collect())
}

/// Kills every process in `name` and deletes the namespace (errors ignored: best effort).
fn destroy(name: &str) {
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let _ = ip(&["netns", "del", name]);
}

/// Removes namespaces (and the processes in them) left by a crashed run.
pub fn cleanup_leftovers() -> Result<()> {
    for name in leftovers()? {
        destroy(&name);
    }
    Ok(())
}

/// A network namespace `ambit-e2e-<suffix>`, deleted (with whatever still runs in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace (replacing a leftover of the same name) and brings `lo` up.
    pub fn create(suffix: &str) -> Result<Netns> {
        let name = format!("{PREFIX}{suffix}");
        destroy(&name);
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <name> <program>`; add arguments, environment, then run or spawn it.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `args` inside the namespace; fails when it exits non-zero. Returns stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args.split_first().context("empty command")?;
        run(self.command(program).args(rest))
    }

    /// Runs `args` inside the namespace and returns its output whatever the exit status.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        let (program, rest) = args.split_first().context("empty command")?;
        let mut cmd = self.command(program);
        cmd.args(rest);
        cmd.output().with_context(|| format!("run {cmd:?}"))
    }

    /// Starts a long-running process inside the namespace; output to `<dir>/<name>.{stdout,stderr}`.
    pub fn spawn(
        &self,
        dir: &Path,
        name: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<Process> {
        let (program, rest) = args.split_first().context("empty command")?;
        let mut cmd = self.command(program);
        cmd.args(rest).envs(env.iter().map(|(k, v)| (k, v)));
        Process::spawn(name, cmd, dir)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        destroy(&self.name);
    }
}

/// Creates a veth pair `a_if` (in `a`) ⇄ `b_if` (in `b`), both up.
pub fn veth_pair(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    ip(&[
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.run(&["ip", "link", "set", a_if, "up"])?;
    b.run(&["ip", "link", "set", b_if, "up"])?;
    Ok(())
}
