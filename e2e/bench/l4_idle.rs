//! `--idle-connections N`: memory per idle tunnelled connection. An application in pod b holds every connection
//! it accepts (echoing the first bytes); one in pod a opens N connections to it through the pair, sends a byte on
//! each and waits for it back (so every connection exists end to end: downstream socket and HBONE stream at
//! ztunnel a, inbound stream and upstream socket at ztunnel b), then holds them. Both ztunnels' `VmRSS` before and
//! with the N connections open, the difference divided by N, is the figure (both ztunnels together, KiB). Then
//! the connections close, and both ztunnels' open fds [`RELEASE_WAIT`] later, above what they held before, tell
//! what the HBONE pool keeps of the burst (the ~100 connections 10,000 streams needed).

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ambit_e2e::TestDir;
use ambit_e2e::TwoPods;
use ambit_e2e::process::Process;
use ambit_e2e::tools::{fd_sum, rss_sum};
use ambit_e2e::topology::{B_IP, wait_listening};
use anyhow::{Context, Result, bail};

/// How long after the idle connections closed their fds are counted.
pub const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// The holding application's port in pod b.
pub const HOLD_PORT: u16 = 7077;

/// Accepts and keeps every connection; echoes what arrives; lets go of a connection only when its peer closes.
const HOLDER: &str = r#"
import resource, selectors, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", int(sys.argv[1])))
l.listen(4096)
l.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(l, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is l:
            try:
                c, _ = l.accept()
            except BlockingIOError:
                continue
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ)
        else:
            c = key.fileobj
            try:
                d = c.recv(64)
            except OSError:
                d = b""
            if d:
                c.send(d)
            else:
                sel.unregister(c)
                c.close()
"#;

/// Opens N connections, a byte there and back on each, prints `ready`, holds them until stdin closes.
const OPENER: &str = r#"
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conns = []
for i in range(n):
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(b"x")
    conns.append(s)
for s in conns:
    if s.recv(1) != b"x":
        sys.exit("a connection closed before its echo")
print("ready", flush=True)
sys.stdin.read()
"#;

/// The holder, listening in pod b on [`HOLD_PORT`]; stopped when dropped.
pub fn start_holder(dir: &TestDir, pods: &TwoPods) -> Result<Process> {
    let port = HOLD_PORT.to_string();
    let holder = pods.b().ns().spawn(
        dir.path(),
        "idle-holder",
        &["python3", "-c", HOLDER, &port],
        &[],
    )?;
    wait_listening(pods.b().ns(), HOLD_PORT, Duration::from_secs(10))?;
    Ok(holder)
}

/// What `--idle-connections N` measured.
pub struct Idle {
    /// Both ztunnels' RSS growth per connection.
    pub kib_per_connection: f64,
    /// Both ztunnels' open fds [`RELEASE_WAIT`] after the connections closed, above what they held before.
    pub fds_left: Option<i64>,
}

/// KiB of both ztunnels' RSS per idle connection, with `n` connections open through `pods`; then what they keep
/// once those close.
pub fn run(dir: &TestDir, pods: &TwoPods, ztunnels: &[u32], n: u32) -> Result<Idle> {
    let port = HOLD_PORT.to_string();
    let _holder = start_holder(dir, pods)?;
    let before = rss_sum(ztunnels).context("ztunnels' VmRSS")?;
    let fds_before = fd_sum(ztunnels);
    let started = Instant::now();
    let mut opener = pods
        .a()
        .ns()
        .command("python3")
        .args(["-c", OPENER, &B_IP.to_string(), &port, &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the connection opener")?;
    let stdout = opener.stdout.take().context("opener stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != "ready" {
        let status = opener.wait()?;
        bail!("opening {n} idle connections failed ({status}); see the ztunnel logs");
    }
    eprintln!("   {n} idle connections open in {:?}", started.elapsed());
    // Let the ztunnels' allocators settle before reading.
    std::thread::sleep(Duration::from_secs(1));
    let with = rss_sum(ztunnels).context("ztunnels' VmRSS")?;
    let fds_open = fd_sum(ztunnels);
    if let Some(mut stdin) = opener.stdin.take() {
        let _ = stdin.flush();
    }
    let _ = opener.wait();
    let kib = with.saturating_sub(before) as f64 / f64::from(n);
    eprintln!("   {kib:.2} KiB per idle connection (both ztunnels: {before} → {with} KiB)");
    std::thread::sleep(RELEASE_WAIT);
    let fds_after = fd_sum(ztunnels);
    let fds_left = match (fds_before, fds_after) {
        (Some(b), Some(a)) => Some(a as i64 - b as i64),
        _ => None,
    };
    if let (Some(b), Some(o), Some(a)) = (fds_before, fds_open, fds_after) {
        eprintln!(
            "   ztunnels' open fds: {b} before, {o} with the connections, {a} {}s after they closed",
            RELEASE_WAIT.as_secs()
        );
    }
    Ok(Idle {
        kib_per_connection: kib,
        fds_left,
    })
}
