//! The host checks for the one-box local mesh (`ambit local up`) and for a node that runs the node agent: what
//! they run (`ip`, `iptables-restore`, `nsenter`, `sysctl`), and the kernel features they use, tried for real in a
//! throwaway network namespace (`ambit-precheck-<pid>`, deleted afterwards): namespaces, a bridge and a veth
//! pair (the local mesh's network), the node agent's own in-pod redirection rules (nat `REDIRECT`, mangle
//! `mark`/`CONNMARK`, raw `CT --zone`, the policy route for ztunnel's transparent sockets; no TPROXY), and the
//! sysctls the local mesh sets in its namespaces (`ip_forward`, `bridge-nf-call-iptables`, i.e. `br_netfilter`).
//! Nothing in the host's own network namespace is changed.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Check, Level, PrecheckArgs};
use crate::local::{self, net};

const HOST: &str = "Host";

/// Runs `argv`; its stdout, or why it failed (spawn error or stderr).
fn run(argv: &[&str]) -> Result<String, String> {
    let (bin, rest) = argv.split_first().ok_or("empty command")?;
    let out = Command::new(bin)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{bin}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("`{}`: {}", argv.join(" "), err.trim()))
    }
}

/// A program on `PATH` (or with a path).
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A tool the mesh runs: present, with the Debian package that has it.
fn tool(code: &str, name: &str, program: &str, package: &str, why: &str) -> Check {
    let fix = format!("apt-get install {package} (or your distribution's {package} package)");
    match on_path(program) {
        Some(p) => Check::pass(
            code,
            name,
            &format!("Program {program}"),
            format!("{} found ({why})", p.display()),
            &fix,
        ),
        None => Check::fail(
            code,
            name,
            Level::Error,
            &format!("Program {program}"),
            format!("`{program}` is not on PATH: {why}"),
            fix,
        ),
    }
}

/// A throwaway network namespace, deleted on drop.
struct ScratchNs(String);

impl ScratchNs {
    fn create() -> Result<ScratchNs, String> {
        let name = format!("ambit-precheck-{}", std::process::id());
        let _ = run(&["ip", "netns", "del", &name]);
        run(&["ip", "netns", "add", &name])?;
        let ns = ScratchNs(name);
        run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }

    fn exec(&self, argv: &[&str]) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(argv);
        run(&full)
    }
}

impl Drop for ScratchNs {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.0]);
    }
}

/// Every host check.
pub fn checks(args: &PrecheckArgs) -> Vec<Check> {
    let root = nix::unistd::Uid::effective().is_root();
    let uid = nix::unistd::Uid::effective().as_raw();
    let mut out = vec![if root {
        Check::pass(
            "AMB1101",
            "root",
            HOST,
            "running as root (uid 0): network namespaces and firewall rules can be created".into(),
            "run as root: `sudo ambit local up -f DIR`",
        )
    } else {
        Check::fail(
            "AMB1101",
            "root",
            Level::Error,
            HOST,
            format!(
                "running as uid {uid}: the local mesh creates network namespaces and firewall rules, which needs root"
            ),
            "run as root: `sudo ambit precheck --local`, then `sudo ambit local up -f DIR`".into(),
        )
    }];
    out.push(tool(
        "AMB1102",
        "iproute2",
        "ip",
        "iproute2",
        "the local mesh builds its namespaces, bridge and veths with `ip`",
    ));
    out.push(iptables());
    out.push(tool(
        "AMB1104",
        "nsenter",
        "nsenter",
        "util-linux",
        "the node agent installs each pod's rules inside its namespace with `nsenter`",
    ));
    out.push(tool(
        "AMB1105",
        "sysctl",
        "sysctl",
        "procps",
        "the local mesh sets ip_forward and bridge-nf-call-iptables in its namespace",
    ));
    out.extend(kernel(root));
    out.extend(binaries(args));
    out.push(mesh_state(&args.local_dir));
    out.extend(dashboard_ports());
    out
}

fn iptables() -> Check {
    let fix = "apt-get install iptables (the nf_tables backend, Debian's default, is fine: the kernel side is nftables either way)";
    let (code, name, object) = ("AMB1103", "iptables", "Program iptables-restore");
    match (on_path("iptables-restore"), run(&["iptables", "--version"])) {
        (Some(_), Ok(v)) => Check::pass(
            code,
            name,
            object,
            format!(
                "{}: the redirection and Service rules are written with iptables-restore",
                v.trim()
            ),
            fix,
        ),
        (_, v) => Check::fail(
            code,
            name,
            Level::Error,
            object,
            format!(
                "iptables/iptables-restore not usable ({}): the node agent's redirection and the local mesh's Service rules are iptables rules",
                v.err()
                    .unwrap_or_else(|| "iptables-restore is not on PATH".into())
            ),
            fix.into(),
        ),
    }
}

/// The kernel features, tried in a scratch namespace (root only).
fn kernel(root: bool) -> Vec<Check> {
    let netns_fix = "a kernel with network namespaces (CONFIG_NET_NS) and `ip netns` from iproute2; in a container, run it privileged";
    let redirect_fix = "load the netfilter modules: `modprobe -a iptable_nat iptable_mangle iptable_raw xt_REDIRECT xt_mark xt_connmark xt_CT` (or nf_tables' nft_chain_nat/nft_ct/nft_redir with the nf_tables iptables), and `apt-get install iptables`";
    let link_fix = "load the link drivers: `modprobe -a bridge veth`";
    let brnf_fix = "`modprobe br_netfilter` (to keep it: `echo br_netfilter > /etc/modules-load.d/br_netfilter.conf`)";
    let forward_fix =
        "a kernel with IPv4 forwarding (net.ipv4.ip_forward writable in a network namespace)";
    if !root {
        let why =
            "needs root to try in a scratch network namespace: run `sudo ambit precheck --local`";
        return vec![
            Check::unknown(
                "AMB1106",
                "netns",
                HOST,
                format!("network namespaces: {why}"),
                netns_fix,
            ),
            Check::unknown(
                "AMB1107",
                "redirection",
                HOST,
                format!("in-pod redirection rules: {why}"),
                redirect_fix,
            ),
            Check::unknown(
                "AMB1108",
                "bridge-veth",
                HOST,
                format!("bridge and veth links: {why}"),
                link_fix,
            ),
            Check::unknown(
                "AMB1109",
                "br-netfilter",
                HOST,
                format!("bridge netfilter: {why}"),
                brnf_fix,
            ),
            Check::unknown(
                "AMB1110",
                "ip-forward",
                HOST,
                format!("IPv4 forwarding: {why}"),
                forward_fix,
            ),
        ];
    }
    let ns = match ScratchNs::create() {
        Ok(ns) => ns,
        Err(e) => {
            let skipped = "skipped: no scratch network namespace";
            return vec![
                Check::fail(
                    "AMB1106",
                    "netns",
                    Level::Error,
                    HOST,
                    format!("cannot create a network namespace: {e}"),
                    netns_fix.into(),
                ),
                Check::unknown("AMB1107", "redirection", HOST, skipped.into(), redirect_fix),
                Check::unknown("AMB1108", "bridge-veth", HOST, skipped.into(), link_fix),
                Check::unknown("AMB1109", "br-netfilter", HOST, skipped.into(), brnf_fix),
                Check::unknown("AMB1110", "ip-forward", HOST, skipped.into(), forward_fix),
            ];
        }
    };
    let mut out = vec![Check::pass(
        "AMB1106",
        "netns",
        HOST,
        format!("`ip netns add/exec/del` work (tried with {})", ns.0),
        netns_fix,
    )];
    out.push(
        match ambit_core::redirect::install(&ns.path(), true).and_then(|_| ambit_core::redirect::save(&ns.path())) {
            Ok(rules) if rules.contains("--to-ports 15001") => Check::pass(
                "AMB1107",
                "redirection",
                HOST,
                "the node agent's in-pod rules load (nat REDIRECT to 15001/15006/15053, mangle mark and CONNMARK, raw CT zone, the fwmark route)".into(),
                redirect_fix,
            ),
            Ok(_) => Check::fail(
                "AMB1107",
                "redirection",
                Level::Error,
                HOST,
                "the node agent's rules loaded but iptables-save does not show them".into(),
                redirect_fix.into(),
            ),
            Err(e) => Check::fail(
                "AMB1107",
                "redirection",
                Level::Error,
                HOST,
                format!("the node agent's in-pod redirection rules do not load: {e}"),
                redirect_fix.into(),
            ),
        },
    );
    let links =
        run(&["ip", "-n", &ns.0, "link", "add", "br-pre", "type", "bridge"]).and_then(|_| {
            run(&[
                "ip", "-n", &ns.0, "link", "add", "vpre0", "type", "veth", "peer", "name", "vpre1",
            ])
        });
    out.push(match links {
        Ok(_) => Check::pass(
            "AMB1108",
            "bridge-veth",
            HOST,
            "bridge and veth links can be created".into(),
            link_fix,
        ),
        Err(e) => Check::fail(
            "AMB1108",
            "bridge-veth",
            Level::Error,
            HOST,
            format!("cannot create the local mesh's links: {e}"),
            link_fix.into(),
        ),
    });
    out.push(match ns.exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]) {
        Ok(_) => Check::pass("AMB1109", "br-netfilter", HOST, "net.bridge.bridge-nf-call-iptables can be set (br_netfilter is loaded)".into(), brnf_fix),
        Err(e) => Check::fail(
            "AMB1109",
            "br-netfilter",
            Level::Error,
            HOST,
            format!("cannot set net.bridge.bridge-nf-call-iptables ({e}): the local mesh's Service VIPs between pods on its bridge need br_netfilter"),
            brnf_fix.into(),
        ),
    });
    out.push(match ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]) {
        Ok(_) => Check::pass("AMB1110", "ip-forward", HOST, "net.ipv4.ip_forward can be set in a network namespace (the host's own value is left alone)".into(), forward_fix),
        Err(e) => Check::fail("AMB1110", "ip-forward", Level::Error, HOST, format!("cannot set net.ipv4.ip_forward in a namespace: {e}"), forward_fix.into()),
    });
    out
}

/// The binaries `ambit local up` starts, found as it finds them: next to `ambit`, then on `PATH`.
fn binaries(args: &PrecheckArgs) -> Vec<Check> {
    let ambit = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("ambit"));
    let find = |name: &str| {
        let sibling = ambit.with_file_name(name);
        if sibling.is_file() {
            Some(sibling)
        } else {
            on_path(name)
        }
    };
    let fix = format!(
        "build everything with `cargo build --release --workspace` and run target/release/ambit, or put the binaries next to {} or on PATH",
        ambit.display()
    );
    let mut out = Vec::new();
    let wanted: [(&str, Level, &str); 4] = [
        ("controller", Level::Error, "the control plane"),
        ("ztunnel", Level::Error, "each node's ztunnel"),
        (
            "ambit-node-agent",
            Level::Error,
            "each node's agent, for the in-pod redirection",
        ),
        (
            local::kubelet::WAYPOINT_COMMAND,
            Level::Warning,
            "waypoint pods, only when a waypoint is deployed",
        ),
    ];
    for (name, severity, role) in wanted {
        let object = format!("Binary {name}");
        let found = match (&args.ztunnel_bin, name) {
            (Some(p), "ztunnel") => Some(p.clone()).filter(|p| p.is_file()),
            _ => find(name),
        };
        out.push(match found {
            Some(p) => Check::pass(
                "AMB1111",
                "mesh-binaries",
                &object,
                format!("{} ({role})", p.display()),
                &fix,
            ),
            None => Check::fail(
                "AMB1111",
                "mesh-binaries",
                severity,
                &object,
                match (&args.ztunnel_bin, name) {
                    (Some(p), "ztunnel") => format!(
                        "{}={}: no such file ({role})",
                        local::bins::ZTUNNEL_ENV,
                        p.display()
                    ),
                    _ => format!(
                        "`{name}` is neither next to {} nor on PATH ({role})",
                        ambit.display()
                    ),
                },
                fix.clone(),
            ),
        });
    }
    out
}

/// A local mesh already running, or one that was not taken down.
fn mesh_state(dir: &Path) -> Check {
    let (code, name) = ("AMB1112", "local-mesh");
    let fix = "`sudo ambit local down` removes a running or left-over local mesh";
    if let Ok(state) = local::State::load(dir)
        && local::pid_alive(state.supervisor_pid)
    {
        return Check::fail(
            code,
            name,
            Level::Info,
            &format!("Directory {}", dir.display()),
            format!(
                "a local mesh is running (supervisor pid {}): use it, or take it down before `ambit local up`",
                state.supervisor_pid
            ),
            fix.into(),
        );
    }
    match net::namespaces() {
        Ok(left) if !left.is_empty() => Check::fail(
            code,
            name,
            Level::Warning,
            HOST,
            format!(
                "network namespaces of an earlier local mesh are left ({}): `ambit local up` replaces them",
                left.join(", ")
            ),
            fix.into(),
        ),
        _ => Check::pass(
            code,
            name,
            HOST,
            format!("no local mesh running (state directory {})", dir.display()),
            fix,
        ),
    }
}

/// The host ports `ambit dashboard` forwards to by default (the mesh itself listens only in its namespaces).
fn dashboard_ports() -> Vec<Check> {
    [(9090u16, "prometheus"), (3000, "grafana")]
        .into_iter()
        .map(|(port, what)| {
            let object = format!("Port localhost:{port}");
            let fix =
                format!("free port {port}, or pick another with `ambit dashboard {what} -p PORT`");
            match TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))) {
                Ok(_) => Check::pass(
                    "AMB1113",
                    "dashboard-ports",
                    &object,
                    format!("free for `ambit dashboard {what}`"),
                    &fix,
                ),
                Err(e) => Check::fail(
                    "AMB1113",
                    "dashboard-ports",
                    Level::Info,
                    &object,
                    format!("in use ({e}): `ambit dashboard {what}` needs -p"),
                    fix,
                ),
            }
        })
        .collect()
}
