//! Faults survived (issue 15): certificates rotated under load. The local mesh's ztunnel asks the controller's CA
//! for 12-second certificates (`SECRET_TTL=12s`, handed on by `ambit local up`), so each identity is renewed about
//! every 6 s; a client makes sequential requests through it (a new connection per request, STRICT mTLS) while the
//! client's and the server's certificates are replaced several times.
//!
//! Asserted: no request fails across at least three rotations of both identities; a TLS handshake with the server's
//! HBONE port after the first certificates expired is offered a certificate that is still valid (a ztunnel
//! serving its first one would fail every new connection); and the renewals keep to the pace the lifetime sets —
//! a CA back-dates `not_before`, and a refresh computed from `not_before` renewed short certificates in a tight
//! loop (hundreds of requests a second) before it was fixed.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use ambit_e2e::e2e_test;
use ambit_e2e::load::RequestLoop;
use ambit_e2e::local::{LocalMesh, NET_NS, run_strict_demo};
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, ensure};

const NS: &str = "demo";
const TTL: Duration = Duration::from_secs(12);
/// Certificates each identity must have been issued (the first and three rotations).
const ISSUED: usize = 4;

/// How many certificates the node's ztunnel logged as issued for service account `sa` of the demo namespace.
fn issued(state_dir: &Path, sa: &str) -> Result<usize> {
    let log = std::fs::read_to_string(state_dir.join("logs/ztunnel-node-1.log"))
        .context("read the ztunnel log")?;
    let identity = format!("identity=spiffe://cluster.local/ns/{NS}/sa/{sa} ");
    Ok(log
        .lines()
        .filter(|l| l.contains("workload certificate issued") && l.contains(&identity))
        .count())
}

/// Whether the certificate the HBONE port at `ip` presents to a new handshake is still valid (`openssl x509
/// -checkend 0`), with its `notAfter` line. The handshake itself fails (no client certificate is offered), but in
/// TLS 1.3 the server's certificate comes first.
fn served_cert_valid(ip: &str) -> Result<(bool, String)> {
    let out = Command::new("ip")
        .args(["netns", "exec", NET_NS, "openssl", "s_client", "-connect"])
        .arg(format!("{ip}:15008"))
        .args(["-tls1_3", "-alpn", "h2", "-noservername"])
        .stdin(Stdio::null())
        .output()
        .context("run openssl s_client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("-----BEGIN CERTIFICATE-----"),
        "no certificate offered by {ip}:15008: {text}"
    );
    // `x509` reads the first certificate of s_client's output: the leaf.
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-checkend", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("run openssl x509")?;
    x509.stdin
        .take()
        .context("openssl stdin")?
        .write_all(&out.stdout)?;
    let checked = x509.wait_with_output()?;
    let said = String::from_utf8_lossy(&checked.stdout).trim().to_owned();
    Ok((checked.status.success(), said))
}

fn scenario(mesh: &LocalMesh) -> Result<()> {
    let state_dir = mesh.state_dir().to_owned();
    let server_ip = mesh.pods(NS, "server")?[0].ip.clone();
    let load = RequestLoop::default();
    let url = format!("http://{}/", mesh.vip(NS, "server")?);
    let started = Instant::now();
    let first_expiry = SystemTime::now() + TTL;
    let result = std::thread::scope(|s| {
        s.spawn(|| load.run(mesh, NS, "deploy/client", &url));
        let steps = || -> Result<()> {
            load.more(10, "before the first rotation")?;
            for sa in ["client", "server"] {
                poll(
                    &format!("{ISSUED} certificates issued to {sa}"),
                    Duration::from_secs(90),
                    || Ok((issued(&state_dir, sa)? >= ISSUED).then_some(())),
                )?;
            }
            load.more(10, "after the rotations")?;
            Ok(())
        };
        let r = steps();
        load.stop();
        r
    });
    result?;
    let (ok, failed, last) = load.totals();
    let elapsed = started.elapsed();
    let counts = (issued(&state_dir, "client")?, issued(&state_dir, "server")?);
    eprintln!(
        "certificate rotation: {ok} requests, {failed} failed, over {elapsed:?}; issued client={} server={}",
        counts.0, counts.1
    );
    ensure!(
        failed == 0,
        "{failed} of {} requests failed across the rotations; first errors:\n{last}",
        ok + failed
    );
    // One renewal per half-lifetime, from before the mesh was up until now, with room for a retry or two.
    let bound = (elapsed.as_secs() + 120) / (TTL.as_secs() / 2) + 3;
    for (sa, n) in [("client", counts.0), ("server", counts.1)] {
        ensure!(
            n as u64 <= bound,
            "{n} certificates issued to {sa} in {elapsed:?}: more than one per half-lifetime ({bound} at most)"
        );
    }
    let now = SystemTime::now();
    ensure!(
        now > first_expiry,
        "the first certificates are not expired yet"
    );
    let (valid, said) = served_cert_valid(&server_ip)?;
    eprintln!("a new handshake after the first certificates expired is offered: {said}");
    ensure!(
        valid,
        "a new handshake with {server_ip}:15008 was offered an expired certificate: {said}"
    );
    Ok(())
}

#[test]
fn certificates_rotated_under_load_cost_no_request() {
    e2e_test("local-faults-cert-rotation", |dir| {
        let ttl = format!("{}s", TTL.as_secs());
        run_strict_demo(dir, &[("SECRET_TTL", &ttl)], scenario)
    });
}
