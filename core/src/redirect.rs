//! The in-pod redirection rules of spec 4.4, installed inside a pod's network namespace and removed again.
//!
//! **iptables, not nftables**, for two reasons: the rules are then exactly upstream istio-cni's (its goldens are
//! `iptables-save` output), so an operator can diff `iptables-save` in a pod against upstream's and tools that
//! inspect Istio pods keep working; and Debian's `iptables` is the nf_tables backend anyway, so the kernel side is
//! nftables either way. Each table is written in one `iptables-restore --noflush` transaction, so a pod is never
//! half-redirected. Commands run inside the pod's namespace with `nsenter --net=<path>`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// ztunnel's socket mark (PACKET_MARK) and mask.
pub const ZTUNNEL_MARK: &str = "0x539/0xfff";
/// Connections whose replies go back to ztunnel's transparent sockets.
pub const ORIG_SRC_MARK: &str = "0x111/0xfff";
pub const ROUTE_TABLE: &str = "100";
pub const RULE_PREF: &str = "32764";
/// Source address of kubelet health probes (SNATed on the node).
pub const PROBE_SOURCE: &str = "169.254.7.127";

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{command}: {message}")]
    Command { command: String, message: String },
}

/// The chains ztunnel's rules live in, per table.
const CHAINS: &[(&str, &[(&str, &str)])] = &[
    (
        "mangle",
        &[("PREROUTING", "ISTIO_PRERT"), ("OUTPUT", "ISTIO_OUTPUT")],
    ),
    (
        "nat",
        &[("PREROUTING", "ISTIO_PRERT"), ("OUTPUT", "ISTIO_OUTPUT")],
    ),
    (
        "raw",
        &[("PREROUTING", "ISTIO_PRERT"), ("OUTPUT", "ISTIO_OUTPUT")],
    ),
];

/// The `iptables-restore` input for one pod.
pub fn ruleset(dns_capture: bool) -> String {
    let z = ZTUNNEL_MARK;
    let o = ORIG_SRC_MARK;
    let mut s = String::new();
    s.push_str("*mangle\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n");
    s.push_str("-A PREROUTING -j ISTIO_PRERT\n-A OUTPUT -j ISTIO_OUTPUT\n");
    s.push_str(&format!(
        "-A ISTIO_PRERT -m mark --mark {z} -j CONNMARK --set-xmark {o}\n"
    ));
    s.push_str(&format!(
        "-A ISTIO_OUTPUT -m connmark --mark {o} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\n"
    ));
    s.push_str("COMMIT\n");
    s.push_str("*nat\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n");
    s.push_str("-A PREROUTING -j ISTIO_PRERT\n-A OUTPUT -j ISTIO_OUTPUT\n");
    s.push_str(&format!(
        "-A ISTIO_PRERT -s {PROBE_SOURCE}/32 -p tcp -m tcp -j ACCEPT\n"
    ));
    s.push_str(&format!(
        "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark {z} -j REDIRECT --to-ports 15006\n"
    ));
    s.push_str(&format!(
        "-A ISTIO_OUTPUT -d {PROBE_SOURCE}/32 -p tcp -m tcp -j ACCEPT\n"
    ));
    if dns_capture {
        s.push_str(&format!(
            "-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark {z} -m udp --dport 53 -j REDIRECT --to-ports 15053\n"
        ));
        s.push_str(&format!(
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark {z} -j REDIRECT --to-ports 15053\n"
        ));
    }
    s.push_str(&format!(
        "-A ISTIO_OUTPUT -p tcp -m mark --mark {o} -j ACCEPT\n"
    ));
    s.push_str("-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT\n");
    s.push_str(&format!(
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark {z} -j REDIRECT --to-ports 15001\n"
    ));
    s.push_str("COMMIT\n");
    s.push_str("*raw\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n");
    s.push_str("-A PREROUTING -j ISTIO_PRERT\n-A OUTPUT -j ISTIO_OUTPUT\n");
    if dns_capture {
        // ztunnel's forwarded query and the pod's redirected one would share a conntrack tuple: separate zones.
        s.push_str(&format!(
            "-A ISTIO_OUTPUT -p udp -m mark --mark {z} -m udp --dport 53 -j CT --zone 1\n"
        ));
        s.push_str(&format!(
            "-A ISTIO_PRERT -p udp -m mark ! --mark {z} -m udp --sport 53 -j CT --zone 1\n"
        ));
    }
    s.push_str("COMMIT\n");
    s
}

fn in_netns(netns: &Path, argv: &[&str], stdin: Option<&str>) -> Result<String, RulesError> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .args(argv)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fail = |message: String| RulesError::Command {
        command: format!("nsenter --net={} {}", netns.display(), argv.join(" ")),
        message,
    };
    let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs the rules and the policy routing in the namespace at `netns`. Idempotent: rules already exactly in
/// place are left alone (a restarted agent taking its pods over changes nothing, so there is no moment without
/// redirection, when traffic would bypass ztunnel); anything else an earlier install left is replaced.
///
/// Returns whether the iptables rules had to be written (`false`: the pod was already redirected).
pub fn install(netns: &Path, dns_capture: bool) -> Result<bool, RulesError> {
    in_netns(netns, &["ip", "link", "set", "lo", "up"], None)?;
    migrate_requests(netns)?;
    let want = ruleset(dns_capture);
    let current = save(netns).unwrap_or_default();
    let written = !already_installed(&current, &want);
    if written {
        // A new pod's namespace has nothing of ours: skip the removal's ~18 failing commands (the CNI ADD waits).
        if current.contains("ISTIO_") {
            remove_iptables(netns);
        }
        in_netns(netns, &["iptables-restore", "-w", "--noflush"], Some(&want))?;
    }
    in_netns(
        netns,
        &[
            "ip",
            "route",
            "replace",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            ROUTE_TABLE,
        ],
        None,
    )?;
    let rules = ip_rules(netns).unwrap_or_default();
    let ours = count_our_rule(&rules);
    if ours != 1 {
        for _ in 0..ours {
            let _ = remove_rule(netns);
        }
        in_netns(netns, &rule_argv("add"), None)?;
    }
    Ok(written)
}

/// `ip rule <verb>` of our policy-routing rule.
fn rule_argv(verb: &str) -> [&str; 9] {
    [
        "ip",
        "rule",
        verb,
        "fwmark",
        ORIG_SRC_MARK,
        "pref",
        RULE_PREF,
        "lookup",
        ROUTE_TABLE,
    ]
}

/// `net.ipv4.tcp_migrate_req=1` in the pod's namespace: when a ztunnel closes its listeners (an upgrade: the new
/// process has bound the same ports with `SO_REUSEPORT`), the connections still in their accept queues move to the
/// new process's listeners instead of being reset. Written from a thread that enters the namespace (`/proc/sys/net`
/// is the calling thread's namespace's), so the image needs no `sysctl` binary.
pub fn migrate_requests(netns: &Path) -> Result<(), RulesError> {
    let fail = |message: String| RulesError::Command {
        command: format!("net.ipv4.tcp_migrate_req=1 in {}", netns.display()),
        message,
    };
    let ns = std::fs::File::open(netns).map_err(|e| fail(e.to_string()))?;
    std::thread::spawn(move || -> Result<(), String> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        match std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", b"1") {
            // A kernel before 5.14 has no such setting: an upgrade then resets what was queued, as upstream's does.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| e.to_string()),
        }
    })
    .join()
    .map_err(|_| fail("the thread panicked".to_owned()))?
    .map_err(fail)
}

/// How many times `ip rule` output holds our policy-routing rule.
fn count_our_rule(ip_rules: &str) -> usize {
    let fwmark = format!("fwmark {ORIG_SRC_MARK} lookup {ROUTE_TABLE}");
    ip_rules
        .lines()
        .filter(|l| l.starts_with(&format!("{RULE_PREF}:")) && l.contains(&fwmark))
        .count()
}

/// The `-A` lines of an `iptables-save` (or `iptables-restore`) text, per table.
fn rules_by_table(text: &str) -> BTreeMap<&str, Vec<&str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut table = None;
    for line in text.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('*') {
            table = Some(t);
            out.entry(t).or_default();
        } else if line == "COMMIT" {
            table = None;
        } else if let Some(t) = table
            && line.starts_with("-A ")
        {
            out.entry(t).or_default().push(line);
        }
    }
    out
}

/// Whether `save` (`iptables-save` of the pod) holds exactly what `ruleset` installs: in every table one jump to
/// each of our chains and our chains' rules in order. Any difference (a stale version, a duplicate jump after a
/// crash, another formatting by another iptables backend) means reinstall.
pub fn already_installed(save: &str, ruleset: &str) -> bool {
    let (have, want) = (rules_by_table(save), rules_by_table(ruleset));
    CHAINS.iter().all(|(table, jumps)| {
        let (Some(have), Some(want)) = (have.get(table), want.get(table)) else {
            return false;
        };
        jumps.iter().all(|(builtin, chain)| {
            let jump = format!("-A {builtin} -j {chain}");
            let prefix = format!("-A {chain} ");
            let ours = |lines: &[&str]| -> Vec<String> {
                lines
                    .iter()
                    .filter(|l| l.starts_with(&prefix))
                    .map(|l| (*l).to_owned())
                    .collect()
            };
            have.iter().filter(|l| **l == jump).count() == 1 && ours(have) == ours(want)
        })
    })
}

fn remove_rule(netns: &Path) -> Result<String, RulesError> {
    in_netns(netns, &rule_argv("del"), None)
}

/// Deletes the jumps and chains (errors ignored: each may already be gone).
fn remove_iptables(netns: &Path) {
    for (table, jumps) in CHAINS {
        for (builtin, chain) in *jumps {
            // A jump may be present more than once after a crash between writes.
            while in_netns(
                netns,
                &["iptables", "-w", "-t", table, "-D", builtin, "-j", chain],
                None,
            )
            .is_ok()
            {}
        }
        for (_, chain) in *jumps {
            let _ = in_netns(netns, &["iptables", "-w", "-t", table, "-F", chain], None);
            let _ = in_netns(netns, &["iptables", "-w", "-t", table, "-X", chain], None);
        }
    }
}

/// Removes everything [`install`] adds. Idempotent.
pub fn remove(netns: &Path) -> Result<(), RulesError> {
    remove_iptables(netns);
    while remove_rule(netns).is_ok() {}
    let _ = in_netns(
        netns,
        &[
            "ip",
            "route",
            "del",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            ROUTE_TABLE,
        ],
        None,
    );
    Ok(())
}

/// `iptables-save` inside the namespace (for tests and debugging).
pub fn save(netns: &Path) -> Result<String, RulesError> {
    in_netns(netns, &["iptables-save"], None)
}

/// `ip rule` inside the namespace.
pub fn ip_rules(netns: &Path) -> Result<String, RulesError> {
    in_netns(netns, &["ip", "rule"], None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_in_place_is_recognised_and_any_difference_is_not() {
        let want = ruleset(true);
        assert!(already_installed(&want, &want));
        // Other software's rules in the built-in chains do not matter.
        let with_others = want.replace(
            "-A PREROUTING -j ISTIO_PRERT\n",
            "-A PREROUTING -j ISTIO_PRERT\n-A PREROUTING -p udp -j ACCEPT\n",
        );
        assert!(already_installed(&with_others, &want));
        // A duplicate jump (a crash between writes), another version's rules, a missing table: reinstall.
        let twice = want.replacen(
            "-A OUTPUT -j ISTIO_OUTPUT\n",
            "-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\n",
            1,
        );
        assert!(!already_installed(&twice, &want));
        assert!(!already_installed(&ruleset(false), &want));
        assert!(!already_installed(&want.replace("15006", "15007"), &want));
        let no_raw = &want[..want.find("*raw").unwrap_or(want.len())];
        assert!(!already_installed(no_raw, &want));
        assert!(!already_installed("", &want));
    }

    #[test]
    fn our_policy_rule_is_counted_in_ip_rule_output() {
        let one = "0:\tfrom all lookup local\n32764:\tfrom all fwmark 0x111/0xfff lookup 100\n32766:\tfrom all lookup main\n";
        assert_eq!(count_our_rule(one), 1);
        let two = format!("{one}32764:\tfrom all fwmark 0x111/0xfff lookup 100\n");
        assert_eq!(count_our_rule(&two), 2);
        assert_eq!(
            count_our_rule("32765:\tfrom all fwmark 0x111/0xfff lookup 100\n"),
            0
        );
    }
}
