//! The `ambit-node-agent` binary: serves ZDS on its socket and stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn listens_and_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ztunnel.sock");
    let pods = dir.path().join("pods.json");
    std::fs::write(&pods, "[]").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ambit-node-agent"))
        .arg("--zds-socket")
        .arg(&sock)
        .arg("--pods")
        .arg(&pods)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no ZDS socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A bad pod list is reported and changes nothing; the agent keeps running.
    std::fs::write(&pods, "{not json").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "a bad pod list stopped the agent"
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the node agent did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
