//! The in-pod rules in a real network namespace (root only): installed as upstream writes them, installed twice
//! without duplicates, removed completely (twice is fine).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use ambit_core::redirect as rules;

struct TestNs(String);

impl TestNs {
    fn create(suffix: &str) -> Option<TestNs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root (network namespaces)");
            return None;
        }
        let name = format!("ambit-cnitest-{}-{suffix}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add");
        Some(TestNs(name))
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.0))
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn install_twice_then_remove_twice() {
    let Some(ns) = TestNs::create("twice") else {
        return;
    };
    let p = ns.path();
    rules::install(&p, true).unwrap();
    rules::install(&p, true).unwrap();
    let saved = rules::save(&p).unwrap();
    // Spec 4.4, one of each.
    for needle in [
        "-A PREROUTING -j ISTIO_PRERT",
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-j CONNMARK --set-xmark 0x111/0xfff",
        "--restore-mark",
        "-j REDIRECT --to-ports 15006",
        "-j REDIRECT --to-ports 15001",
        "--dport 53 -j REDIRECT --to-ports 15053",
        "-j CT --zone 1",
        "169.254.7.127",
    ] {
        assert!(count(&saved, needle) >= 1, "missing {needle:?} in\n{saved}");
    }
    assert_eq!(
        count(&saved, "-A PREROUTING -j ISTIO_PRERT"),
        3,
        "one jump per table (mangle, nat, raw), not duplicated:\n{saved}"
    );
    assert_eq!(count(&saved, "--to-ports 15001"), 1, "{saved}");
    // 15008 is not redirected: it reaches ztunnel's listener in the pod.
    assert!(saved.contains("! --dport 15008"), "{saved}");
    let ip_rules = rules::ip_rules(&p).unwrap();
    assert_eq!(
        count(&ip_rules, "fwmark 0x111/0xfff lookup 100"),
        1,
        "{ip_rules}"
    );

    // Installed again over itself (a restarted agent taking the pod over): nothing is rewritten, so there is no
    // moment without redirection. A rule's counters, set by hand, survive the reinstall.
    let set = std::process::Command::new("nsenter")
        .arg(format!("--net={}", p.display()))
        .args([
            "iptables",
            "-w",
            "-t",
            "nat",
            "-R",
            "ISTIO_PRERT",
            "1",
            "-c",
            "5",
            "7",
            "-s",
            "169.254.7.127/32",
            "-p",
            "tcp",
            "-m",
            "tcp",
            "-j",
            "ACCEPT",
        ])
        .status()
        .unwrap();
    assert!(set.success());
    rules::install(&p, true).unwrap();
    let counted = std::process::Command::new("nsenter")
        .arg(format!("--net={}", p.display()))
        .args(["iptables-save", "-c", "-t", "nat"])
        .output()
        .unwrap();
    let counted = String::from_utf8_lossy(&counted.stdout);
    assert!(
        counted.contains("[5:7] -A ISTIO_PRERT -s 169.254.7.127/32"),
        "the rules were rewritten by a reinstall:\n{counted}"
    );

    rules::remove(&p).unwrap();
    rules::remove(&p).unwrap();
    let saved = rules::save(&p).unwrap();
    assert!(!saved.contains("ISTIO_"), "left behind:\n{saved}");
    assert!(!rules::ip_rules(&p).unwrap().contains("lookup 100"));
}

#[test]
fn dns_capture_off_leaves_port_53_alone() {
    let Some(ns) = TestNs::create("dns") else {
        return;
    };
    let p = ns.path();
    rules::install(&p, false).unwrap();
    let saved = rules::save(&p).unwrap();
    assert!(!saved.contains("15053"), "{saved}");
    assert!(!saved.contains("CT --zone"), "{saved}");
    assert!(saved.contains("--to-ports 15001"), "{saved}");
}

/// Two listeners on one port with `SO_REUSEPORT` (an old and a new ztunnel in a pod during an upgrade), connections
/// completed by the kernel but not accepted yet, then the first listener closes (the old ztunnel drains): with the
/// setting `install` writes, every queued connection is handed to the second listener; without it, those queued on
/// the first are reset.
#[test]
fn queued_connections_move_to_the_new_listener_when_the_old_one_closes() {
    let Some(ns) = TestNs::create("migrate") else {
        return;
    };
    let p = ns.path();
    let lo = Command::new("ip")
        .args(["-n", &ns.0, "link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(lo.success());
    let in_ns = |f: fn() -> (usize, usize)| {
        let file = std::fs::File::open(ns.path()).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    };
    // Returns (connections made, connections the second listener accepted after the first closed).
    fn upgrade() -> (usize, usize) {
        use socket2::{Domain, Socket, Type};
        let listener = |addr: std::net::SocketAddr| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&addr.into()).unwrap();
            s.listen(128).unwrap();
            std::net::TcpListener::from(s)
        };
        let old = listener("127.0.0.1:0".parse().unwrap());
        let addr = old.local_addr().unwrap();
        let new = listener(addr);
        // From many source ports, so the kernel's hash puts some on each listener.
        let clients: Vec<_> = (0..40)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(old);
        new.set_nonblocking(true).unwrap();
        let mut accepted = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while accepted < clients.len() && std::time::Instant::now() < deadline {
            match new.accept() {
                Ok(_) => accepted += 1,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        (clients.len(), accepted)
    }
    let (made, kept) = in_ns(upgrade);
    assert!(
        kept < made,
        "without tcp_migrate_req every connection survived ({kept} of {made}): the check cannot see the difference"
    );
    rules::install(&p, true).unwrap();
    let value = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "cat",
            "/proc/sys/net/ipv4/tcp_migrate_req",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&value.stdout).trim(), "1");
    let (made, kept) = in_ns(upgrade);
    assert_eq!(
        kept, made,
        "queued connections lost when the old listener closed"
    );
}
