//! `ambit dashboard proxy|prometheus|grafana` (istioctl's `dashboard`, `dash`, `d`), for the local mesh.
//!
//! `proxy <pod>` ([`proxy`]) forwards a ztunnel's or waypoint's admin port to this host.
//!
//! `prometheus` writes a scrape configuration and `file_sd` targets ([`scrape`]) into `<dir>/prometheus/`, runs
//! the real `prometheus` inside the mesh's pod network namespace (where every ztunnel's and waypoint's `:15020`
//! is reachable) and forwards `--address:--port` on this host to it, as istioctl port-forwards to a cluster's
//! Prometheus. While it runs it refreshes the targets from the mesh's state, so pods that come and go are
//! followed. `--print-config` prints the configuration and exits.
//!
//! `ambit local up --addons prometheus` runs the same command detached, managed by the mesh ([`addons`]).
//!
//! `grafana` writes the dashboards (`addons/grafana/dashboards`, built into this binary) and a provisioning for
//! them into `<dir>/grafana/`; it runs `grafana-server` against the Prometheus of `ambit dashboard prometheus`
//! when Grafana is installed, and otherwise prints how to import the dashboards.
//!
//! In a cluster: `kubectl apply -f addons/prometheus/` and the dashboards from `addons/grafana/dashboards` (see
//! `docs/CLI.md`).

pub mod addons;
pub mod proxy;
pub mod scrape;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::local::{self, State, manifests, net::NET_NS};

/// The dashboards, as in `addons/grafana/dashboards`.
pub const DASHBOARDS: [(&str, &str); 4] = [
    (
        "ambit-mesh.json",
        include_str!("../../addons/grafana/dashboards/ambit-mesh.json"),
    ),
    (
        "ambit-ztunnel.json",
        include_str!("../../addons/grafana/dashboards/ambit-ztunnel.json"),
    ),
    (
        "ambit-waypoint.json",
        include_str!("../../addons/grafana/dashboards/ambit-waypoint.json"),
    ),
    (
        "ambit-controller.json",
        include_str!("../../addons/grafana/dashboards/ambit-controller.json"),
    ),
];

#[derive(clap::Args, Debug, Clone)]
pub struct DashboardArgs {
    /// The local mesh's state directory.
    #[arg(long, env = "AMBIT_LOCAL_DIR", default_value = local::DEFAULT_DIR, global = true)]
    pub dir: PathBuf,
    #[command(subcommand)]
    pub command: DashboardCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum DashboardCommand {
    /// A ztunnel's or waypoint's admin page (port 15000) on http://localhost:15000 (needs root).
    #[command(visible_alias = "envoy")]
    Proxy(proxy::ProxyArgs),
    /// Prometheus scraping every ztunnel, waypoint and controller of the local mesh, on http://localhost:9090 (needs root
    /// and the `prometheus` binary).
    Prometheus(PrometheusArgs),
    /// The Grafana dashboards: runs grafana-server with them when installed, else prints how to import them.
    Grafana(GrafanaArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct PrometheusArgs {
    /// The port on this host to serve Prometheus on.
    #[arg(short = 'p', long, default_value_t = 9090)]
    pub port: u16,
    /// The address on this host to serve Prometheus on.
    #[arg(long, default_value = "localhost")]
    pub address: String,
    /// Do not open a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// Print the scrape configuration and exit.
    #[arg(long)]
    pub print_config: bool,
    /// How often Prometheus scrapes (and evaluates).
    #[arg(long, default_value = "5s", value_parser = scrape::parse_interval)]
    pub scrape_interval: String,
    /// Prometheus' storage directory (default `<dir>/prometheus/data`).
    #[arg(long)]
    pub storage_dir: Option<PathBuf>,
    /// The Prometheus binary.
    #[arg(long, env = "AMBIT_PROMETHEUS_BIN", default_value = "prometheus")]
    pub prometheus_bin: PathBuf,
    /// Run as the mesh's add-on (`ambit local up --addons`): stop when the mesh's supervisor is gone.
    #[arg(long, hide = true)]
    pub managed: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct GrafanaArgs {
    /// The port on this host to serve Grafana on.
    #[arg(short = 'p', long, default_value_t = 3000)]
    pub port: u16,
    /// The address on this host to serve Grafana on.
    #[arg(long, default_value = "localhost")]
    pub address: String,
    /// Do not open a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// The Prometheus the dashboards' data source points at (`ambit dashboard prometheus` serves it here).
    #[arg(long, default_value = "http://localhost:9090")]
    pub prometheus_url: String,
    /// Only write the dashboards and print how to import them, even when Grafana is installed.
    #[arg(long)]
    pub print_only: bool,
}

pub fn run(args: DashboardArgs) -> Result<i32> {
    match &args.command {
        DashboardCommand::Proxy(p) => proxy::run(&args.dir, p),
        DashboardCommand::Prometheus(p) => prometheus(&args.dir, p),
        DashboardCommand::Grafana(g) => grafana(&args.dir, g),
    }
}

/// `name` as given when it has a `/`, else the first match on `PATH`.
fn find_binary(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_owned());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The manifests and the controller's deployments of the running mesh.
fn desired(dir: &Path, state: &State) -> Result<manifests::Desired> {
    let mut d = manifests::load(&state.manifests)
        .with_context(|| format!("read {}", state.manifests.display()))?;
    if let Ok(deployed) = manifests::load(&dir.join("deployed")) {
        d.merge(deployed);
    }
    Ok(d)
}

/// Rewrites the targets from the mesh's current state.
fn refresh_targets(dir: &Path, prom_dir: &Path) -> Result<()> {
    let state = State::load(dir)?;
    let targets = scrape::targets(&state, &desired(dir, &state)?);
    scrape::write_targets(prom_dir, &targets)
        .with_context(|| format!("write the targets in {}", prom_dir.display()))?;
    Ok(())
}

fn prometheus(dir: &Path, args: &PrometheusArgs) -> Result<i32> {
    let prom_dir = dir.join("prometheus");
    let config = scrape::config(&prom_dir, &args.scrape_interval);
    if args.print_config {
        print!("{config}");
        return Ok(0);
    }
    let bin = find_binary(&args.prometheus_bin).with_context(|| {
        format!(
            "`{}` is not installed: install the package `prometheus` (Debian/Ubuntu: `apt-get install prometheus`) \
             or a release from https://prometheus.io/download/, or name the binary with --prometheus-bin",
            args.prometheus_bin.display()
        )
    })?;
    State::load(dir).with_context(|| {
        format!(
            "no local mesh in {} (start one with `ambit local up -f <dir>`, or set --dir); for a cluster: \
             `kubectl apply -f addons/prometheus/` then `kubectl -n istio-system port-forward svc/prometheus 9090`",
            dir.display()
        )
    })?;
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "Prometheus runs in the local mesh's network namespace to reach its pods: run this as root"
        );
    }
    std::fs::create_dir_all(&prom_dir).with_context(|| format!("create {}", prom_dir.display()))?;
    let config_path = prom_dir.join("prometheus.yml");
    std::fs::write(&config_path, &config)?;
    refresh_targets(dir, &prom_dir)?;
    let storage = args
        .storage_dir
        .clone()
        .unwrap_or_else(|| prom_dir.join("data"));
    std::fs::create_dir_all(&storage)?;
    let log_path = prom_dir.join("prometheus.log");
    let log = std::fs::File::create(&log_path)?;
    // Inside the namespace Prometheus listens on its loopback, on the same port as here.
    let inner = SocketAddr::from(([127, 0, 0, 1], args.port));
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", NET_NS])
        .arg(&bin)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!("--storage.tsdb.path={}", storage.display()))
        .arg(format!("--web.listen-address={inner}"))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: Ctrl-C reaches this command, which then stops Prometheus.
        .process_group(0)
        .kill_on_drop(true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.address.as_str(), args.port))
            .await
            .with_context(|| format!("listen on {}:{}", args.address, args.port))?;
        let mut child = cmd.spawn().context("run ip netns exec prometheus")?;
        let started = Instant::now();
        while local::http::status_in(NET_NS, inner, "/-/ready") != Some(200) {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "prometheus exited ({status}):\n{}",
                    tail(&log_path, 20)
                );
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "prometheus is not ready after 30 s; see {}",
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let url = format!("http://{}:{}", args.address, args.port);
        println!("Prometheus for the local mesh: {url}");
        println!(
            "  config {} (targets in {}/targets)",
            config_path.display(),
            prom_dir.display()
        );
        println!("  log    {}", log_path.display());
        println!("Ctrl-C stops it.");
        if !args.no_browser {
            open_browser(&url);
        }
        let forward = tokio::spawn(forward(listener, NET_NS.to_owned(), inner));
        let mut refresh = tokio::time::interval(Duration::from_secs(2));
        let shutdown = ambit_core::signal::shutdown();
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                _ = &mut shutdown => break Ok(0),
                status = child.wait() => {
                    break Err(anyhow::anyhow!("prometheus exited ({}):\n{}",
                        status.map_or_else(|e| e.to_string(), |s| s.to_string()), tail(&log_path, 20)));
                }
                _ = refresh.tick() => {
                    if args.managed && !addons::mesh_running(dir) {
                        eprintln!("the local mesh stopped: stopping Prometheus");
                        break Ok(0);
                    }
                    if let Err(e) = refresh_targets(dir, &prom_dir) {
                        eprintln!("warning: targets not refreshed: {e:#}");
                    }
                }
            }
        };
        forward.abort();
        stop_child(&mut child).await;
        result
    })
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// SIGTERM, then SIGKILL after 5 s.
async fn stop_child(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Opens `url` with `xdg-open` when there is a desktop session; best effort, as istioctl's `--browser`.
fn open_browser(url: &str) {
    if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        return;
    }
    let _ = std::process::Command::new("xdg-open")
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Forwards every connection to `listener` to `upstream` inside network namespace `ns`.
async fn forward(listener: tokio::net::TcpListener, ns: String, upstream: SocketAddr) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ns = ns.clone();
        tokio::spawn(async move {
            let Ok(Ok(server)) =
                tokio::task::spawn_blocking(move || connect_in(&ns, upstream)).await
            else {
                return;
            };
            let Ok(mut server) = tokio::net::TcpStream::from_std(server) else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}

/// A TCP connection to `addr` made from inside namespace `ns`, on a thread of its own (a socket keeps the
/// namespace it was made in; the thread, and with it the namespace switch, ends here).
fn connect_in(ns: &str, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let netns = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
    std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .join()
    .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
}

/// Grafana's provisioning: the Prometheus data source and the dashboards folder.
pub fn grafana_provisioning(
    prometheus_url: &str,
    dashboards: &Path,
) -> [(&'static str, String); 2] {
    [
        (
            "datasources/ambit.yaml",
            format!(
                "apiVersion: 1\ndatasources:\n- name: Prometheus\n  uid: ambit-prometheus\n  type: prometheus\n  \
                 access: proxy\n  url: {prometheus_url}\n  isDefault: true\n"
            ),
        ),
        (
            "dashboards/ambit.yaml",
            format!(
                "apiVersion: 1\nproviders:\n- name: ambit\n  folder: Ambit\n  type: file\n  options:\n    path: {}\n",
                dashboards.display()
            ),
        ),
    ]
}

fn grafana(dir: &Path, args: &GrafanaArgs) -> Result<i32> {
    let gdir = dir.join("grafana");
    let dash_dir = gdir.join("dashboards");
    std::fs::create_dir_all(&dash_dir).with_context(|| format!("create {}", dash_dir.display()))?;
    for (name, text) in DASHBOARDS {
        std::fs::write(dash_dir.join(name), text)?;
    }
    let server = ["grafana-server", "grafana"]
        .into_iter()
        .find_map(|b| find_binary(Path::new(b)));
    let Some(server) = server.filter(|_| !args.print_only) else {
        println!("The Ambit dashboards (also in addons/grafana/dashboards of the source tree):");
        for (name, _) in DASHBOARDS {
            println!("  {}", dash_dir.join(name).display());
        }
        println!(
            "Import each in Grafana (Dashboards > New > Import > Upload JSON file) and pick your Prometheus data \
             source; `ambit dashboard prometheus` serves the local mesh's on {}.",
            args.prometheus_url
        );
        println!(
            "Grafana is not installed{}: with `grafana-server` on PATH this command runs it with the dashboards \
             provisioned.",
            if args.print_only {
                " or not wanted"
            } else {
                ""
            }
        );
        return Ok(0);
    };
    let prov = gdir.join("provisioning");
    for (file, text) in grafana_provisioning(&args.prometheus_url, &dash_dir) {
        let p = prov.join(file);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, text)?;
    }
    let home = ["/usr/share/grafana", "/usr/local/share/grafana"]
        .into_iter()
        .find(|h| Path::new(h).is_dir())
        .context("grafana-server is installed but its home (/usr/share/grafana) is not there")?;
    let mut cmd = std::process::Command::new(&server);
    if server.file_name().is_some_and(|n| n == "grafana") {
        cmd.arg("server");
    }
    let url = format!("http://{}:{}", args.address, args.port);
    cmd.arg(format!("--homepath={home}")).args([
        format!("cfg:default.paths.provisioning={}", prov.display()),
        format!("cfg:default.paths.data={}", gdir.join("data").display()),
        format!("cfg:default.paths.logs={}", gdir.join("logs").display()),
        format!("cfg:default.server.http_addr={}", args.address),
        format!("cfg:default.server.http_port={}", args.port),
    ]);
    println!("Grafana with the Ambit dashboards (folder Ambit): {url} (first login admin/admin)");
    println!("  data source Prometheus at {}", args.prometheus_url);
    if !args.no_browser {
        open_browser(&url);
    }
    let status = cmd
        .status()
        .with_context(|| format!("run {}", server.display()))?;
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboards_are_json_with_a_datasource_variable() {
        for (name, text) in DASHBOARDS {
            let v: serde_json::Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let vars = v["templating"]["list"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(
                vars.iter()
                    .any(|t| t["name"] == "datasource" && t["type"] == "datasource"),
                "{name} has no datasource variable"
            );
            assert!(v["uid"].is_string() && v["panels"].as_array().is_some_and(|p| !p.is_empty()));
        }
    }

    #[test]
    fn provisioning_points_at_prometheus_and_the_dashboards() {
        let [ds, dash] = grafana_provisioning("http://localhost:9090", Path::new("/d"));
        assert!(ds.1.contains("url: http://localhost:9090") && ds.1.contains("type: prometheus"));
        assert!(dash.1.contains("path: /d"));
    }
}
