//! `ambit local up --addons prometheus`: the add-ons the local mesh runs for itself.
//!
//! Once the mesh is ready, `up` starts `ambit dashboard prometheus --no-browser` detached (its own process group,
//! output in `<dir>/prometheus/addon.log`) with the hidden `--managed` flag, which makes it stop when the mesh's
//! supervisor is gone. Its pid is recorded in `<dir>/addons/prometheus.pid`, as the supervisor's is in
//! `state.json`; `ambit local down` stops it there ([`stop_all`]) before the mesh.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::local::{self, State};

/// An add-on of the local mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addon {
    Prometheus,
}

/// The add-ons `--addons` knows, by name.
pub const KNOWN: [(&str, Addon); 1] = [("prometheus", Addon::Prometheus)];

impl Addon {
    pub fn name(self) -> &'static str {
        match self {
            Addon::Prometheus => "prometheus",
        }
    }
}

/// One name of `--addons` (clap splits the comma list).
pub fn parse(name: &str) -> Result<Addon, String> {
    KNOWN
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
        .map(|(_, a)| *a)
        .ok_or_else(|| {
            format!(
                "unknown add-on {name:?}: the known add-ons are {} (Grafana: `ambit dashboard grafana`)",
                KNOWN.map(|(n, _)| n).join(", ")
            )
        })
}

fn pid_file(dir: &Path, addon: Addon) -> PathBuf {
    dir.join("addons").join(format!("{}.pid", addon.name()))
}

/// True while the mesh in `dir` has a live supervisor.
pub fn mesh_running(dir: &Path) -> bool {
    State::load(dir).is_ok_and(|s| local::pid_alive(s.supervisor_pid))
}

/// Starts `addons` for the ready mesh in `dir`, Prometheus on `localhost:<prometheus_port>`, and prints their URLs.
pub fn start(dir: &Path, addons: &[Addon], prometheus_port: u16) -> Result<()> {
    for addon in addons {
        match addon {
            Addon::Prometheus => start_prometheus(dir, prometheus_port)?,
        }
    }
    Ok(())
}

fn start_prometheus(dir: &Path, port: u16) -> Result<()> {
    let prom_dir = dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir)?;
    std::fs::create_dir_all(dir.join("addons"))?;
    let log_path = prom_dir.join("addon.log");
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["dashboard", "--dir"])
        .arg(dir)
        .args([
            "prometheus",
            "--no-browser",
            "--managed",
            "--address",
            "localhost",
        ])
        .args(["--port", &port.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().context("start the Prometheus add-on")?;
    std::fs::write(pid_file(dir, Addon::Prometheus), child.id().to_string())?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let _ = std::fs::remove_file(pid_file(dir, Addon::Prometheus));
            bail!(
                "the Prometheus add-on exited ({status}):\n{}",
                super::tail(&log_path, 20)
            );
        }
        if std::fs::read_to_string(&log_path)
            .is_ok_and(|l| l.contains("Prometheus for the local mesh"))
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(40) {
            bail!(
                "the Prometheus add-on is not ready after 40 s; see {} (`ambit local down` stops it)",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "\nPrometheus (add-on): http://localhost:{port} (log {}; `ambit local down` stops it)",
        log_path.display()
    );
    Ok(())
}

/// Stops every add-on recorded in `dir`: SIGTERM, then SIGKILL after 10 s.
pub fn stop_all(dir: &Path) {
    for (_, addon) in KNOWN {
        let path = pid_file(dir, addon);
        let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        else {
            continue;
        };
        // Only our own command: the pid may have been reused since.
        let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"--managed"));
        if ours
            && local::pid_alive(pid)
            && let Ok(raw) = i32::try_from(pid)
        {
            let pid_t = nix::unistd::Pid::from_raw(raw);
            let _ = nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while local::pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if local::pid_alive(pid) {
                let _ = nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_unknown_ones_list_the_known() {
        assert_eq!(parse("prometheus"), Ok(Addon::Prometheus));
        assert_eq!(parse(" Prometheus"), Ok(Addon::Prometheus));
        let e = parse("grafan").unwrap_err();
        assert!(
            e.contains("\"grafan\"") && e.contains("known add-ons are prometheus"),
            "{e}"
        );
    }

    #[test]
    fn stopping_without_addons_does_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        stop_all(dir.path());
        std::fs::create_dir_all(dir.path().join("addons")).unwrap_or_else(|e| panic!("{e}"));
        // A stale pid that is not ours is left alone and its file removed.
        std::fs::write(pid_file(dir.path(), Addon::Prometheus), "1")
            .unwrap_or_else(|e| panic!("{e}"));
        stop_all(dir.path());
        assert!(!pid_file(dir.path(), Addon::Prometheus).exists());
    }
}
