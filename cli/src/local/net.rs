//! The local mesh's network, built with `ip` and `iptables-restore` so that every piece is visible with the usual
//! tools and disappears with its namespace:
//!
//! - `ambit-l-net`: the "pod network". A bridge `br0` with the gateway address 10.244.0.1/16, the cluster DNS
//!   address 10.96.0.10 and the probe source 169.254.7.127 on `lo`, and the Service VIP rules (the role
//!   kube-proxy plays) in its `nat` table. The controller runs here. `br_netfilter` is on in this namespace, so
//!   replies between pods on the bridge go through conntrack and VIP translation works in both directions.
//! - `ambit-l-node-<k>`: one per virtual node, on the bridge at 10.244.0.<10+k>; its ztunnel and node agent run there.
//! - `ambit-l-pod-<ns>.<name>`: one per pod, on the bridge at `10.244.<1..>.<n>`, default route via the gateway.
//!
//! Nothing is created in the host's own namespace, so `down` only has to delete namespaces named `ambit-l-*`.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Every namespace of the local mesh starts with this.
pub const PREFIX: &str = "ambit-l-";
pub const NET_NS: &str = "ambit-l-net";
/// The pod bridge's address (locally administered).
const BRIDGE_MAC: &str = "02:a6:b1:70:00:01";
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The runtime's readiness probes come from this address, as kubelet's do once istio-cni SNATs them on a node
/// (`ambit_core::redirect::PROBE_SOURCE`): captured pods let it through to the app.
pub const PROBE_SOURCE: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);
const BRIDGE: &str = "br0";
const SERVICES_CHAIN: &str = "AMBIT-SERVICES";

/// Runs a command, failing with its output when it exits non-zero.
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

pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Runs `argv` inside namespace `ns`.
pub fn exec_in(ns: &str, argv: &[&str]) -> Result<String> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(argv))
}

/// The namespaces of the local mesh that exist now.
pub fn namespaces() -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_owned)
        .collect())
}

/// The processes running inside namespace `ns`.
pub fn pids_in(ns: &str) -> Vec<i32> {
    ip(&["netns", "pids", ns])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills whatever runs in `ns` and deletes it, with its links and rules. Best effort.
pub fn delete_ns(ns: &str) {
    for pid in pids_in(ns) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = ip(&["netns", "del", ns]);
    let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
}

fn create_ns(ns: &str) -> Result<()> {
    delete_ns(ns);
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    Ok(())
}

/// `/etc/netns/<ns>/resolv.conf`: what `ip netns exec` shows processes of `ns` as `/etc/resolv.conf`.
pub fn write_resolv_conf(ns: &str, search: &[String]) -> Result<()> {
    let dir = format!("/etc/netns/{ns}");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {dir}"))?;
    let mut text = format!("nameserver {DNS_IP}\n");
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    text.push_str("options ndots:5\n");
    std::fs::write(format!("{dir}/resolv.conf"), text)?;
    Ok(())
}

/// The pod network namespace with its bridge, DNS address and (empty) Service rules.
pub fn create_network() -> Result<()> {
    create_ns(NET_NS)?;
    let n = NET_NS;
    // A fixed address: a bridge without one takes its lowest port's, so it changes as pods' veths join, and pods
    // that resolved the gateway before keep sending to the old address (dropped as another host's) until their
    // neighbour entry goes stale, tens of seconds later.
    ip(&[
        "-n", n, "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge",
    ])?;
    ip(&[
        "-n",
        n,
        "addr",
        "add",
        &format!("{GATEWAY}/16"),
        "dev",
        BRIDGE,
    ])?;
    ip(&["-n", n, "link", "set", BRIDGE, "up"])?;
    ip(&["-n", n, "addr", "add", &format!("{DNS_IP}/32"), "dev", "lo"])?;
    ip(&[
        "-n",
        n,
        "addr",
        "add",
        &format!("{PROBE_SOURCE}/32"),
        "dev",
        "lo",
    ])?;
    exec_in(n, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    exec_in(
        n,
        &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
    )
    .context("br_netfilter is needed for Service VIPs between pods on one bridge")?;
    write_service_rules(&[])?;
    for chain in ["PREROUTING", "OUTPUT"] {
        exec_in(
            n,
            &[
                "iptables",
                "-w",
                "-t",
                "nat",
                "-A",
                chain,
                "-j",
                SERVICES_CHAIN,
            ],
        )?;
    }
    write_resolv_conf(n, &[])?;
    Ok(())
}

/// Creates namespace `ns` attached to the bridge through veth `host_if` with `addr`, default route via the gateway.
pub fn attach(ns: &str, host_if: &str, addr: Ipv4Addr) -> Result<()> {
    create_ns(ns)?;
    let _ = ip(&["-n", NET_NS, "link", "del", host_if]);
    ip(&[
        "-n", NET_NS, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ])?;
    ip(&["-n", NET_NS, "link", "set", host_if, "master", BRIDGE, "up"])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{addr}/16"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        &GATEWAY.to_string(),
    ])?;
    Ok(())
}

/// One Service VIP port and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipRule {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// Replaces the Service rules in one `iptables-restore` transaction: each VIP port DNATs to one of its endpoints,
/// chosen at random with equal weight (as kube-proxy's iptables mode does).
pub fn write_service_rules(rules: &[VipRule]) -> Result<()> {
    let mut text = format!("*nat\n:{SERVICES_CHAIN} - [0:0]\n");
    for r in rules {
        let proto = r.protocol.to_ascii_lowercase();
        let n = r.endpoints.len();
        for (i, (ip, port)) in r.endpoints.iter().enumerate() {
            let remaining = n - i;
            let pick = if remaining > 1 {
                format!(
                    " -m statistic --mode random --probability {:.5}",
                    1.0 / remaining as f64
                )
            } else {
                String::new()
            };
            text.push_str(&format!(
                "-A {SERVICES_CHAIN} -d {}/32 -p {proto} --dport {}{pick} -j DNAT --to-destination {ip}:{port}\n",
                r.vip, r.port
            ));
        }
    }
    text.push_str("COMMIT\n");
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            NET_NS,
            "iptables-restore",
            "-w",
            "--noflush",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run iptables-restore")?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_names_fit_and_are_ours() {
        assert!(NET_NS.starts_with(PREFIX));
        // veth names are limited to 15 bytes; ours are `vp<n>`/`vn<n>`, far below.
        assert!(format!("vp{}", u32::MAX).len() <= 15);
    }
}
