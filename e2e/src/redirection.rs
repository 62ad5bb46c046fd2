//! What the node agent installs in a pod's network namespace (`core/src/redirect.rs`), as `iptables-save` and
//! `ip rule` inside it show it.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::netns::Netns;
use crate::topology::poll;

/// Generous: two shared cores, several builds at once.
const WAIT: Duration = Duration::from_secs(60);

/// What the agent installs (`core/src/redirect.rs`), as seen inside a namespace.
#[derive(Debug, PartialEq, Eq)]
pub struct Redirection {
    /// The nat table's inbound REDIRECT to 15006 and outbound to 15001.
    pub nat: bool,
    /// Any ISTIO_* chain in any table.
    pub chains: bool,
    /// The policy-routing rule `fwmark 0x111/0xfff lookup 100`.
    pub rule: bool,
}

impl Redirection {
    pub fn read(netns: &str) -> Result<Redirection> {
        let run = |args: &[&str]| -> Result<String> {
            let out = Command::new("ip")
                .args(["netns", "exec", netns])
                .args(args)
                .output()
                .with_context(|| format!("ip netns exec {netns} {args:?}"))?;
            ensure!(
                out.status.success(),
                "ip netns exec {netns} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let save = run(&["iptables-save"])?;
        let rules = run(&["ip", "rule"])?;
        Ok(Redirection {
            nat: save.contains("-A ISTIO_PRERT")
                && save.contains("--to-ports 15006")
                && save.contains("--to-ports 15001"),
            chains: save.contains("ISTIO_"),
            rule: rules
                .lines()
                .any(|l| l.contains("fwmark 0x111/0xfff") && l.contains("lookup 100")),
        })
    }

    pub fn installed(&self) -> bool {
        self.nat && self.chains && self.rule
    }

    pub fn absent(&self) -> bool {
        !self.nat && !self.chains && !self.rule
    }
}

/// Waits until what `netns` shows satisfies `done` (as [`Redirection::installed`] or [`Redirection::absent`]).
pub fn wait_until(what: &str, netns: &Netns, done: fn(&Redirection) -> bool) -> Result<()> {
    let mut last = None;
    poll(what, WAIT, || {
        let r = Redirection::read(netns.name())?;
        let ok = done(&r);
        last = Some(r);
        Ok(ok.then_some(()))
    })
    .with_context(|| format!("last seen in {}: {last:?}", netns.name()))
}

pub fn wait_installed(what: &str, netns: &Netns) -> Result<()> {
    wait_until(what, netns, Redirection::installed)
}

pub fn wait_absent(what: &str, netns: &Netns) -> Result<()> {
    wait_until(what, netns, Redirection::absent)
}
