//! Packet capture with `tcpdump -w` inside a namespace, started before traffic and stopped after.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;

use crate::netns::Netns;
use crate::pcap::{self, TcpSegment};
use crate::process::Process;

/// A running `tcpdump -i <interface> -w <file>`.
#[derive(Debug)]
pub struct Capture {
    process: Process,
    file: PathBuf,
}

impl Capture {
    /// Starts tcpdump on `interface` in `ns` (TCP only, full packets, written unbuffered to `<dir>/<name>.pcap`)
    /// and waits until it listens.
    pub fn start(
        ns: &Netns,
        interface: &str,
        dir: &std::path::Path,
        name: &str,
    ) -> Result<Capture> {
        Capture::start_in(ns.name(), interface, dir, name)
    }

    /// [`Capture::start`] in a namespace the harness does not own (e.g. the local mesh's pod network).
    pub fn start_in(
        ns: &str,
        interface: &str,
        dir: &std::path::Path,
        name: &str,
    ) -> Result<Capture> {
        let file = dir.join(format!("{name}.pcap"));
        let file_arg = file.to_string_lossy().into_owned();
        let args = [
            "tcpdump",
            "-i",
            interface,
            "-n",
            "-U",
            "--immediate-mode",
            "-s",
            "0",
            "-w",
            &file_arg,
            "tcp",
        ];
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        let mut process = Process::spawn(name, cmd, dir)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if process.output().contains("listening on") {
                return Ok(Capture { process, file });
            }
            if let Some(status) = process.exited() {
                bail!("tcpdump exited ({status}): {}", process.output());
            }
            if Instant::now() > deadline {
                bail!(
                    "tcpdump did not start listening within 10s: {}",
                    process.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops tcpdump (SIGINT, so it flushes) and returns the TCP segments it saw.
    pub fn stop(mut self) -> Result<Vec<TcpSegment>> {
        // Give the last packets of the exchange a moment to reach the capture buffer.
        std::thread::sleep(Duration::from_millis(200));
        self.process
            .stop_with(Signal::SIGINT, Duration::from_secs(5));
        let bytes =
            std::fs::read(&self.file).with_context(|| format!("read {}", self.file.display()))?;
        pcap::tcp_segments(&bytes).with_context(|| format!("parse {}", self.file.display()))
    }
}
