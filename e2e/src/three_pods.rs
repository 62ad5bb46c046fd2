//! `ThreePods`: a client, a waypoint and a server pod, each a network namespace with one veth to a bridge in a
//! fourth namespace, for the L7 benchmark (`ambit-bench-l7`). What runs where depends on the [`L7Mode`]:
//!
//! ```text
//!  ambit-e2e-l7c 10.78.0.2   ambit-e2e-l7w 10.78.0.4            ambit-e2e-l7s 10.78.0.3
//!  wrk, curl [ztunnel]       [waypoint :15008 | nginx/haproxy :8080]   e2e-http :8080 [ztunnel]
//!        \__________________________ br0 (ambit-e2e-l7br) ___________________/
//! ```
//!
//! The `echo` Service (VIP 10.96.78.10, port 80 → 8080) has the server as its endpoint; in the waypoint modes
//! ([`L7Mode::L7`], [`L7Mode::L7Bare`], [`L7Mode::L7Policies`], [`L7Mode::WaypointPlain`]) it names the `waypoint`
//! Service (VIP 10.96.78.50, port 15008) as its waypoint, whose one workload is the waypoint pod (native HBONE, not
//! captured).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::netns::{self, Netns};
use crate::process::Process;
use crate::testdir::{TestDir, tail};
use crate::topology::{PACKET_MARK, READY_PORT, poll, wait_listening};

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 3);
pub const WAYPOINT_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 4);
/// The `echo` Service's VIP (port [`ECHO_PORT`] → the server's [`HTTP_PORT`]).
pub const ECHO_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 78, 10);
pub const ECHO_PORT: u16 = 80;
/// The `waypoint` Service's VIP (port 15008).
pub const WAYPOINT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 78, 50);
/// The server's `e2e-http`, and nginx/HAProxy in the waypoint pod.
pub const HTTP_PORT: u16 = 8080;
pub const HBONE_PORT: u16 = 15008;
/// The waypoint's metrics port.
pub const WAYPOINT_STATS_PORT: u16 = 15020;
/// The waypoint's admin port (`/config_dump`, localhost only).
pub const WAYPOINT_ADMIN_PORT: u16 = 15000;
pub const ECHO_HOST: &str = "echo.default.svc.cluster.local";
const WAYPOINT_HOST: &str = "waypoint.default.svc.cluster.local";

/// What carries the client's requests to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L7Mode {
    /// client → server, plain HTTP: the baseline.
    Direct,
    /// client → ztunnel → HBONE → ztunnel → server (the Service has no waypoint).
    L4,
    /// client → ztunnel → HBONE → waypoint → HBONE → ztunnel → server; no route, so the waypoint's default retry
    /// policy (Istio's) applies.
    L7,
    /// As [`L7Mode::L7`] with a route to `echo` that turns retries off (`retry: {attempts: 0}`) and no
    /// BackendPolicy: the baseline the policies' cost is measured against.
    L7Bare,
    /// As [`L7Mode::L7Bare`] with retries, timeouts, outlier detection and a connection pool configured
    /// ([`POLICIES_ROUTE_FIELDS`], [`POLICIES_BACKEND_POLICY`]); on the success path none of them fires.
    L7Policies,
    /// As [`L7Mode::L7Bare`] with AuthorizationPolicies on the waypoint: one ALLOW on `echo` that every benchmark
    /// request matches, plus 9 (`L7Authz10`) or 999 (`L7Authz1000`) ALLOW policies on other services — what
    /// L7 authorization costs, and whether it grows with policies that do not target the request.
    L7Authz10,
    L7Authz1000,
    /// client → ztunnel → HBONE → waypoint → plain TCP → server (no ztunnel in the server pod, `tunnel: NONE`).
    WaypointPlain,
    /// client → nginx in the waypoint pod → server, plain HTTP/1.1 both ways, no mesh.
    Nginx,
    /// client → HAProxy (`mode http`) in the waypoint pod → server, plain HTTP/1.1 both ways, no mesh.
    Haproxy,
}

impl L7Mode {
    pub const ALL: [L7Mode; 8] = [
        L7Mode::Direct,
        L7Mode::L4,
        L7Mode::L7,
        L7Mode::L7Bare,
        L7Mode::L7Policies,
        L7Mode::WaypointPlain,
        L7Mode::Nginx,
        L7Mode::Haproxy,
    ];

    /// Modes measured only when asked for (`--modes`).
    pub const OPT_IN: [L7Mode; 2] = [L7Mode::L7Authz10, L7Mode::L7Authz1000];

    pub fn as_str(self) -> &'static str {
        match self {
            L7Mode::L7Authz10 => "l7-authz-10",
            L7Mode::L7Authz1000 => "l7-authz-1000",
            L7Mode::Direct => "direct",
            L7Mode::L4 => "l4",
            L7Mode::L7 => "l7",
            L7Mode::L7Bare => "l7-bare",
            L7Mode::L7Policies => "l7-policies",
            L7Mode::WaypointPlain => "waypoint-plain",
            L7Mode::Nginx => "nginx",
            L7Mode::Haproxy => "haproxy",
        }
    }

    pub fn parse(s: &str) -> Option<L7Mode> {
        L7Mode::ALL
            .into_iter()
            .chain(L7Mode::OPT_IN)
            .find(|m| m.as_str() == s)
    }

    fn client_ztunnel(self) -> bool {
        self == L7Mode::L4 || self.waypoint()
    }

    fn server_ztunnel(self) -> bool {
        matches!(
            self,
            L7Mode::L4
                | L7Mode::L7
                | L7Mode::L7Bare
                | L7Mode::L7Policies
                | L7Mode::L7Authz10
                | L7Mode::L7Authz1000
        )
    }

    /// Whether the Ambit waypoint runs in the waypoint pod.
    pub fn waypoint(self) -> bool {
        matches!(
            self,
            L7Mode::L7
                | L7Mode::L7Bare
                | L7Mode::L7Policies
                | L7Mode::L7Authz10
                | L7Mode::L7Authz1000
                | L7Mode::WaypointPlain
        )
    }

    /// Whether the waypoint's config has a route for `echo` (and, for [`L7Mode::L7Policies`], a BackendPolicy).
    pub fn has_route(self) -> bool {
        matches!(
            self,
            L7Mode::L7Bare | L7Mode::L7Policies | L7Mode::L7Authz10 | L7Mode::L7Authz1000
        )
    }

    /// The URL the client asks for.
    pub fn url(self) -> String {
        match self {
            L7Mode::Direct => format!("http://{SERVER_IP}:{HTTP_PORT}/"),
            L7Mode::L4
            | L7Mode::L7
            | L7Mode::L7Bare
            | L7Mode::L7Policies
            | L7Mode::L7Authz10
            | L7Mode::L7Authz1000
            | L7Mode::WaypointPlain => format!("http://{ECHO_VIP}:{ECHO_PORT}/"),
            L7Mode::Nginx | L7Mode::Haproxy => format!("http://{WAYPOINT_IP}:{HTTP_PORT}/"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ThreePodsOptions {
    pub mode: L7Mode,
    pub ztunnel_bin: PathBuf,
    pub waypoint_bin: PathBuf,
    pub http_bin: PathBuf,
    /// Extra environment for the ztunnels.
    pub ztunnel_env: Vec<(String, String)>,
    /// Extra environment for the waypoint.
    pub waypoint_env: Vec<(String, String)>,
    /// Worker processes (nginx) or threads (HAProxy) of the reference proxies.
    pub proxy_workers: u32,
    pub ready_timeout: Duration,
}

/// One pod's namespace, optional ztunnel and address.
#[derive(Debug)]
pub struct L7Pod {
    // Field order is drop order: the ztunnel dies before its namespace goes.
    ztunnel: Option<Process>,
    ns: Netns,
    ip: Ipv4Addr,
}

impl L7Pod {
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn ztunnel_pid(&self) -> Option<u32> {
        self.ztunnel.as_ref().map(Process::pid)
    }

    /// `curl` inside the pod (5 s limit): (HTTP status, body); status 0 when there was no response.
    pub fn curl(&self, url: &str) -> Result<(u16, String)> {
        const MARK: &str = "\n--ambit-status:";
        let fmt = format!("{MARK}%{{http_code}}");
        let out = self
            .ns
            .output(&["curl", "-sS", "--max-time", "5", "-w", &fmt, url])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (body, status) = stdout.rsplit_once(MARK).unwrap_or((&stdout, "0"));
        Ok((status.trim().parse().unwrap_or(0), body.to_owned()))
    }
}

/// The topology. Dropping it kills every process and removes the namespaces.
#[derive(Debug)]
pub struct ThreePods {
    // Field order is drop order: applications and proxies first, then the pods, then the bridge.
    apps: Vec<Process>,
    proxy: Option<Process>,
    client: L7Pod,
    waypoint: L7Pod,
    server: L7Pod,
    _bridge: Netns,
    mode: L7Mode,
}

impl ThreePods {
    /// Builds the namespaces and the bridge, starts the server, then what the mode needs: the ztunnels (client's
    /// first, so only it creates the shared CA), the waypoint or a reference proxy, each waited for.
    pub fn start(dir: &TestDir, opts: &ThreePodsOptions) -> Result<ThreePods> {
        let bridge = Netns::create("l7br")?;
        bridge.run(&["ip", "link", "add", "br0", "type", "bridge"])?;
        bridge.run(&["ip", "link", "set", "br0", "up"])?;
        let pod = |suffix: &str, ip: Ipv4Addr| -> Result<L7Pod> {
            let ns = Netns::create(suffix)?;
            let (inner, outer) = (format!("veth-{suffix}"), format!("br-{suffix}"));
            netns::veth_pair(&ns, &inner, &bridge, &outer)?;
            bridge.run(&["ip", "link", "set", &outer, "master", "br0"])?;
            ns.run(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &inner])?;
            // The Service VIPs are only ever dialed (and redirected to the ztunnel before leaving the pod).
            ns.run(&["ip", "route", "add", "10.96.0.0/16", "dev", &inner])?;
            Ok(L7Pod {
                ztunnel: None,
                ns,
                ip,
            })
        };
        let mut pods = ThreePods {
            apps: Vec::new(),
            proxy: None,
            client: pod("l7c", CLIENT_IP)?,
            waypoint: pod("l7w", WAYPOINT_IP)?,
            server: pod("l7s", SERVER_IP)?,
            _bridge: bridge,
            mode: opts.mode,
        };

        let http = opts.http_bin.to_string_lossy();
        let listen = format!("0.0.0.0:{HTTP_PORT}");
        pods.apps.push(
            pods.server
                .ns
                .spawn(dir.path(), "http-server", &[&http, &listen], &[])?,
        );
        wait_listening(&pods.server.ns, HTTP_PORT, Duration::from_secs(10))?;

        let mode = opts.mode;
        let ca_dir = dir.join("ca");
        std::fs::create_dir_all(&ca_dir).context("create the CA directory")?;
        let ztunnel_config = dir.join("ztunnel.yaml");
        if mode.client_ztunnel() {
            std::fs::write(&ztunnel_config, ztunnel_config_yaml(mode))
                .context("write the ztunnel config")?;
        }
        if mode.client_ztunnel() {
            start_ztunnel(
                dir,
                opts,
                &mut pods.client,
                "client",
                &ztunnel_config,
                &ca_dir,
            )?;
        }
        if mode.server_ztunnel() {
            start_ztunnel(
                dir,
                opts,
                &mut pods.server,
                "server",
                &ztunnel_config,
                &ca_dir,
            )?;
        }
        match mode {
            m if m.waypoint() => {
                pods.proxy = Some(start_waypoint(dir, opts, &pods.waypoint, &ca_dir)?);
            }
            L7Mode::Nginx => pods.proxy = Some(start_nginx(dir, opts, &pods.waypoint)?),
            L7Mode::Haproxy => pods.proxy = Some(start_haproxy(dir, opts, &pods.waypoint)?),
            _ => {}
        }
        Ok(pods)
    }

    pub fn mode(&self) -> L7Mode {
        self.mode
    }

    pub fn client(&self) -> &L7Pod {
        &self.client
    }

    pub fn waypoint(&self) -> &L7Pod {
        &self.waypoint
    }

    pub fn server(&self) -> &L7Pod {
        &self.server
    }

    /// The process in the waypoint pod (Ambit's waypoint, nginx's master or HAProxy), if any.
    pub fn proxy(&self) -> Option<&Process> {
        self.proxy.as_ref()
    }

    /// The ztunnels' process ids.
    pub fn ztunnel_pids(&self) -> Vec<u32> {
        [self.client.ztunnel_pid(), self.server.ztunnel_pid()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// The waypoint pod's proxy and its child processes (nginx's workers).
    pub fn proxy_pids(&self) -> Vec<u32> {
        let Some(p) = &self.proxy else {
            return Vec::new();
        };
        let mut pids = vec![p.pid()];
        pids.extend(children_of(p.pid()));
        pids
    }
}

/// Processes whose parent is `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    // "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
                    let rest = s.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// The ztunnels' local config (upstream's format): client, server and waypoint workloads, the `echo` Service
/// (with the waypoint in the waypoint modes) and the `waypoint` Service. Written as text: port maps need integer
/// keys, which a JSON value cannot hold.
fn ztunnel_config_yaml(mode: L7Mode) -> String {
    let workload = |name: &str, ip: Ipv4Addr, protocol: &str, extra: &str| {
        format!(
            "- {{uid: Kubernetes//Pod/default/{name}, name: {name}, namespace: default, serviceAccount: {name},\n   \
             trustDomain: cluster.local, workloadIps: [{ip}], protocol: {protocol}, clusterId: Kubernetes,\n   \
             workloadName: {name}, canonicalName: {name}{extra}}}\n"
        )
    };
    let server_protocol = if mode.server_ztunnel() {
        "HBONE"
    } else {
        "TCP"
    };
    let echo_waypoint = if mode.waypoint() {
        format!(",\n   waypoint: {{destination: default/{WAYPOINT_HOST}}}")
    } else {
        String::new()
    };
    format!(
        "workloads:\n{}{}{}\
         services:\n\
         - {{name: echo, namespace: default, hostname: {ECHO_HOST}, vips: [/{ECHO_VIP}],\n   \
         ports: {{{ECHO_PORT}: {HTTP_PORT}}}{echo_waypoint}}}\n\
         - {{name: waypoint, namespace: default, hostname: {WAYPOINT_HOST}, vips: [/{WAYPOINT_VIP}],\n   \
         ports: {{{HBONE_PORT}: {HBONE_PORT}}}}}\n\
         policies: []\n",
        workload("client", CLIENT_IP, "HBONE", ""),
        workload(
            "server",
            SERVER_IP,
            server_protocol,
            &format!(",\n   services: {{default/{ECHO_HOST}: {{{ECHO_PORT}: {HTTP_PORT}}}}}"),
        ),
        workload(
            "waypoint",
            WAYPOINT_IP,
            "HBONE",
            &format!(
                ", nativeTunnel: true,\n   services: {{default/{WAYPOINT_HOST}: {{{HBONE_PORT}: {HBONE_PORT}}}}}"
            ),
        ),
    )
}

/// [`L7Mode::L7Policies`]'s route policies (`ambit.waypoint.Route` fields): retries on 5xx and connect failures,
/// a request and a per-attempt timeout.
pub const POLICIES_ROUTE_FIELDS: &str = "retry: {attempts: 2, retryOn: [5xx, connect-failure]}, \
timeouts: {requestMs: 5000, backendRequestMs: 2000}";

/// [`L7Mode::L7Policies`]'s `ambit.waypoint.BackendPolicy` body for `echo`: outlier detection and a connection pool.
pub const POLICIES_BACKEND_POLICY: &str = "policy: {outlierDetection: {consecutive5xxErrors: 5, intervalMs: 10000, \
baseEjectionTimeMs: 30000}, connectionPool: {maxConnections: 1000, http2MaxRequests: 10000}}";

/// The waypoint's local config (`waypoint/src/localconfig.rs`): the `echo` Service with this waypoint, the
/// server as its endpoint (`HBONE` behind its ztunnel, or `NONE`), the client for source attribution; in
/// `n` ALLOW AuthorizationPolicies: one on `echo` every benchmark request matches (a client identity, GET, a
/// path prefix and a header condition that holds), the others on services no request goes to.
fn authz_policies(n: usize) -> String {
    let mut out = format!(
        "authorizationPolicies:\n\
         - {{name: default/echo-get, action: ALLOW, targets: [{{kind: SERVICE, name: {ECHO_HOST}}}],\n   \
         rules: [{{from: [{{principals: [\"*\"]}}], to: [{{methods: [GET], paths: [\"/*\"]}}],\n   \
         when: [{{key: \"request.headers[user-agent]\", notValues: [blocked]}}]}}]}}\n"
    );
    for i in 1..n {
        out.push_str(&format!(
            "- {{name: default/other-{i}, action: ALLOW, targets: [{{kind: SERVICE, name: svc-{i}.default.svc.cluster.local}}],\n   \
             rules: [{{to: [{{methods: [GET], paths: [\"/api/{i}/*\"]}}]}}]}}\n"
        ));
    }
    out
}

/// [`L7Mode::L7Bare`] and [`L7Mode::L7Policies`] also a route for `echo` (and the latter's BackendPolicy).
fn waypoint_config_yaml(mode: L7Mode) -> String {
    let tunnel = if mode.server_ztunnel() {
        "HBONE"
    } else {
        "NONE"
    };
    let route = |fields: &str| {
        format!(
            "routes:\n\
             - {{name: default/httproute/echo/0, namespace: default, routeName: echo, ruleIndex: 0,\n   \
             parents: [{{kind: SERVICE, name: {ECHO_HOST}, port: {ECHO_PORT}}}],\n   \
             backends: [{{hostname: {ECHO_HOST}, port: {ECHO_PORT}, weight: 1}}],\n   {fields}}}\n"
        )
    };
    let extra = match mode {
        L7Mode::L7Bare => route("retry: {attempts: 0}"),
        L7Mode::L7Policies => format!(
            "{}backendPolicies:\n- {{hostname: {ECHO_HOST}, source: default/echo, {POLICIES_BACKEND_POLICY}}}\n",
            route(POLICIES_ROUTE_FIELDS)
        ),
        L7Mode::L7Authz10 => route("retry: {attempts: 0}") + &authz_policies(10),
        L7Mode::L7Authz1000 => route("retry: {attempts: 0}") + &authz_policies(1000),
        _ => String::new(),
    };
    format!(
        "services:\n\
         - {{name: echo, namespace: default, hostname: {ECHO_HOST}, vips: [{ECHO_VIP}],\n   \
         ports: [{{port: {ECHO_PORT}, targetPort: {HTTP_PORT}, protocol: http1}}],\n   \
         waypoint: {{namespace: default, hostname: {WAYPOINT_HOST}}}}}\n\
         workloads:\n\
         - {{uid: client, name: client, namespace: default, serviceAccount: client, ips: [{CLIENT_IP}], workloadName: client}}\n\
         - {{uid: server, name: server, namespace: default, serviceAccount: server, ips: [{SERVER_IP}], tunnel: {tunnel},\n   \
         workloadName: server, services: {{default/{ECHO_HOST}: {{{ECHO_PORT}: {HTTP_PORT}}}}}}}\n\
         {extra}"
    )
}

fn start_ztunnel(
    dir: &TestDir,
    opts: &ThreePodsOptions,
    pod: &mut L7Pod,
    name: &str,
    config: &Path,
    ca_dir: &Path,
) -> Result<()> {
    ensure!(
        opts.ztunnel_bin.is_file(),
        "ztunnel binary not found at {}",
        opts.ztunnel_bin.display()
    );
    let mut env: Vec<(String, String)> = [
        ("PROXY_MODE", "dedicated".to_owned()),
        ("PROXY_WORKLOAD_INFO", format!("default/{name}/{name}")),
        ("XDS_ADDRESS", String::new()),
        ("CA_ADDRESS", String::new()),
        ("LOCAL_XDS_PATH", config.to_string_lossy().into_owned()),
        ("LOCAL_CA_DIR", ca_dir.to_string_lossy().into_owned()),
        ("PACKET_MARK", PACKET_MARK.to_string()),
        ("RUST_LOG", "warn".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(opts.ztunnel_env.iter().cloned());
    let bin = opts.ztunnel_bin.to_string_lossy();
    let mut z = pod
        .ns
        .spawn(dir.path(), &format!("ztunnel-{name}"), &[&bin], &env)?;
    let url = format!("http://127.0.0.1:{READY_PORT}/healthz/ready");
    let ready = poll(&format!("ztunnel {name} ready"), opts.ready_timeout, || {
        if let Some(status) = z.exited() {
            bail!(
                "ztunnel {name} exited ({status}); its log ends:\n{}",
                tail(&z.output(), 20)
            );
        }
        Ok(pod
            .ns
            .run(&["curl", "-sf", "--max-time", "1", &url])
            .is_ok()
            .then_some(()))
    });
    pod.ztunnel = Some(z);
    ready?;
    // Upstream's dedicated-mode capture: the pod's own outgoing TCP (not loopback, not ztunnel's marked
    // sockets) goes to ztunnel's outbound listener.
    crate::topology::redirect_outbound(&pod.ns)?;
    Ok(())
}

fn start_waypoint(
    dir: &TestDir,
    opts: &ThreePodsOptions,
    pod: &L7Pod,
    ca_dir: &Path,
) -> Result<Process> {
    ensure!(
        opts.waypoint_bin.is_file(),
        "waypoint binary not found at {}",
        opts.waypoint_bin.display()
    );
    let config = dir.join("waypoint.yaml");
    std::fs::write(&config, waypoint_config_yaml(opts.mode))
        .context("write the waypoint config")?;
    let mut env: Vec<(String, String)> = [
        ("LOCAL_XDS_PATH", config.to_string_lossy().into_owned()),
        ("LOCAL_CA_DIR", ca_dir.to_string_lossy().into_owned()),
        ("POD_NAMESPACE", "default".to_owned()),
        ("POD_NAME", "waypoint".to_owned()),
        ("GATEWAY_NAME", "waypoint".to_owned()),
        ("INSTANCE_IP", WAYPOINT_IP.to_string()),
        ("IPV6_ENABLED", "false".to_owned()),
        ("RUST_LOG", "info,access=warn".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(opts.waypoint_env.iter().cloned());
    let bin = opts.waypoint_bin.to_string_lossy();
    let mut w = pod.ns.spawn(dir.path(), "waypoint", &[&bin], &env)?;
    let url = format!("http://127.0.0.1:{READY_PORT}/healthz/ready");
    poll("waypoint ready", opts.ready_timeout, || {
        if let Some(status) = w.exited() {
            bail!(
                "waypoint exited ({status}); its log ends:\n{}",
                tail(&w.output(), 20)
            );
        }
        Ok(pod
            .ns
            .run(&["curl", "-sf", "--max-time", "1", &url])
            .is_ok()
            .then_some(()))
    })?;
    Ok(w)
}

/// nginx as a plain HTTP/1.1 reverse proxy on the waypoint pod's :8080, keep-alive to the server, no logs.
fn start_nginx(dir: &TestDir, opts: &ThreePodsOptions, pod: &L7Pod) -> Result<Process> {
    crate::runner::check_tools(&["nginx"])
        .context("the nginx mode needs nginx (apt-get install nginx-light)")?;
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).context("create nginx's directory")?;
    let cfg = prefix.join("nginx.conf");
    let tmp = prefix.to_string_lossy();
    std::fs::write(
        &cfg,
        format!(
            "daemon off;\nmaster_process on;\nworker_processes {workers};\nuser nobody nogroup;\n\
             error_log {tmp}/logs/error.log warn;\npid {tmp}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n\
             \x20 fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n\
             \x20 keepalive_requests 1000000;\n  keepalive_timeout 300s;\n\
             \x20 upstream server {{ server {SERVER_IP}:{HTTP_PORT}; keepalive 64; keepalive_requests 1000000; }}\n\
             \x20 server {{\n    listen {HTTP_PORT} reuseport;\n    location / {{\n      proxy_pass http://server;\n\
             \x20     proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering on;\n    }}\n  }}\n}}\n",
            workers = opts.proxy_workers,
        ),
    )
    .context("write the nginx configuration")?;
    let cfg = cfg.to_string_lossy().into_owned();
    let p = pod.ns.spawn(
        dir.path(),
        "nginx",
        &["nginx", "-p", &tmp, "-c", &cfg, "-e", "stderr"],
        &[],
    )?;
    wait_listening(&pod.ns, HTTP_PORT, Duration::from_secs(10))?;
    Ok(p)
}

/// HAProxy (`mode http`, `nbthread`) as a plain HTTP/1.1 reverse proxy on the waypoint pod's :8080, connections
/// to the server reused, no logs.
fn start_haproxy(dir: &TestDir, opts: &ThreePodsOptions, pod: &L7Pod) -> Result<Process> {
    crate::runner::check_tools(&["haproxy"])
        .context("the haproxy mode needs haproxy (apt-get install haproxy)")?;
    let cfg = dir.join("haproxy-l7.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  nbthread {threads}\n  user nobody\n  group nogroup\n\
             defaults\n  mode http\n  option http-keep-alive\n  http-reuse always\n  timeout connect 5s\n\
             \x20 timeout client 1h\n  timeout server 1h\n  timeout http-keep-alive 1h\n\
             frontend http\n  bind 0.0.0.0:{HTTP_PORT}\n  default_backend server\n\
             backend server\n  server s1 {SERVER_IP}:{HTTP_PORT}\n",
            threads = opts.proxy_workers,
        ),
    )
    .context("write the haproxy configuration")?;
    let cfg = cfg.to_string_lossy().into_owned();
    let p = pod
        .ns
        .spawn(dir.path(), "haproxy", &["haproxy", "-db", "-f", &cfg], &[])?;
    wait_listening(&pod.ns, HTTP_PORT, Duration::from_secs(10))?;
    Ok(p)
}

/// `VmRSS` of `pid` in KiB (`/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ztunnel_config_names_the_waypoint_only_in_waypoint_modes() {
        for (mode, has) in [(L7Mode::L4, false), (L7Mode::L7, true)] {
            let v: serde_yaml::Value = serde_yaml::from_str(&ztunnel_config_yaml(mode)).unwrap();
            let echo = &v["services"][0];
            assert_eq!(echo["vips"][0].as_str(), Some("/10.96.78.10"));
            assert_eq!(
                echo["waypoint"]["destination"].as_str().is_some(),
                has,
                "{mode:?}"
            );
            assert_eq!(v["workloads"][2]["nativeTunnel"].as_bool(), Some(true));
            assert_eq!(echo["ports"][80].as_u64(), Some(8080));
        }
        let v: serde_yaml::Value =
            serde_yaml::from_str(&ztunnel_config_yaml(L7Mode::WaypointPlain)).unwrap();
        assert_eq!(v["workloads"][1]["protocol"].as_str(), Some("TCP"));
    }

    #[test]
    fn waypoint_config_is_yaml() {
        let v: serde_yaml::Value =
            serde_yaml::from_str(&waypoint_config_yaml(L7Mode::WaypointPlain)).unwrap();
        assert_eq!(v["workloads"][1]["tunnel"].as_str(), Some("NONE"));
        assert_eq!(
            v["workloads"][1]["services"]["default/echo.default.svc.cluster.local"][80].as_u64(),
            Some(8080)
        );
        assert_eq!(
            v["services"][0]["ports"][0]["protocol"].as_str(),
            Some("http1")
        );
        assert!(v.get("routes").is_none() && v.get("backendPolicies").is_none());
    }

    #[test]
    fn route_modes_add_a_route_and_the_policies_mode_a_backend_policy() {
        let yaml = |mode| -> serde_yaml::Value {
            serde_yaml::from_str(&waypoint_config_yaml(mode)).unwrap()
        };
        let l7 = yaml(L7Mode::L7);
        assert!(
            l7.get("routes").is_none(),
            "l7 keeps the default retry policy"
        );

        let bare = yaml(L7Mode::L7Bare);
        let route = &bare["routes"][0];
        assert_eq!(route["parents"][0]["name"].as_str(), Some(ECHO_HOST));
        assert_eq!(route["parents"][0]["port"].as_u64(), Some(80));
        assert_eq!(route["backends"][0]["hostname"].as_str(), Some(ECHO_HOST));
        assert_eq!(route["retry"]["attempts"].as_u64(), Some(0));
        assert!(route.get("timeouts").is_none());
        assert!(bare.get("backendPolicies").is_none());
        assert_eq!(bare["workloads"][1]["tunnel"].as_str(), Some("HBONE"));

        let p = yaml(L7Mode::L7Policies);
        let route = &p["routes"][0];
        assert_eq!(route["retry"]["attempts"].as_u64(), Some(2));
        assert_eq!(
            route["retry"]["retryOn"][1].as_str(),
            Some("connect-failure")
        );
        assert_eq!(route["timeouts"]["requestMs"].as_u64(), Some(5000));
        assert_eq!(route["timeouts"]["backendRequestMs"].as_u64(), Some(2000));
        let policy = &p["backendPolicies"][0];
        assert_eq!(policy["hostname"].as_str(), Some(ECHO_HOST));
        let od = &policy["policy"]["outlierDetection"];
        assert_eq!(od["consecutive5xxErrors"].as_u64(), Some(5));
        assert_eq!(od["intervalMs"].as_u64(), Some(10000));
        assert_eq!(od["baseEjectionTimeMs"].as_u64(), Some(30000));
        let pool = &policy["policy"]["connectionPool"];
        assert_eq!(pool["maxConnections"].as_u64(), Some(1000));
        assert_eq!(pool["http2MaxRequests"].as_u64(), Some(10000));
    }
}
