//! The effective ztunnel configuration, resolved once at start by a pure function of the environment
//! ([`Config::from_env`]). Variable names and defaults follow upstream ztunnel (spec 8.1), so either binary runs
//! from the same pod spec. Nothing else in the crate reads the environment.

mod parse;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use parse::{parse_bool, parse_duration, parse_num, worker_spill_percent, worker_threads};

/// Where the root certificate of the control plane comes from, by default.
pub const DEFAULT_ROOT_CA: &str = "./var/run/secrets/istio/root-cert.pem";
/// The in-pod (ZDS) socket the node agent connects to.
pub const DEFAULT_INPOD_UDS: &str = "/var/run/ztunnel/ztunnel.sock";
/// Packet mark put on every ztunnel socket in shared mode, so the in-pod rules let them through.
pub const DEFAULT_PACKET_MARK: u32 = 1337;

/// How this ztunnel is deployed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ProxyMode {
    /// One ztunnel per node serving every enrolled pod (in-pod mode, sockets handed over by ZDS).
    Shared,
    /// One ztunnel serving a single workload ([`Config::proxy_workload_info`]).
    Dedicated,
}

/// The workload a dedicated-mode ztunnel serves (`PROXY_WORKLOAD_INFO=<namespace>/<name>/<service account>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadInfo {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

/// The static local configuration (spec 2.7): a file that is watched, or YAML given inline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum LocalXds {
    Path(PathBuf),
    Inline(String),
}

/// A bad environment value; always names the variable and the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        var: String,
        value: String,
        reason: String,
    },
    #[error("{0} and {1} are mutually exclusive")]
    Exclusive(&'static str, &'static str),
    #[error("{0}")]
    Missing(String),
}

impl ConfigError {
    pub(crate) fn invalid(var: &str, value: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            var: var.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Everything a ztunnel needs to know at start. All fields are public so tests can build one directly
/// (start from [`Config::for_tests`]); serialized (camelCase) for `/config_dump`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub proxy_mode: ProxyMode,
    pub proxy_workload_info: Option<WorkloadInfo>,

    /// xDS server (`https://host:port`); `None` disables xDS.
    pub xds_address: Option<String>,
    /// CA server; `None` needs `FAKE_CA` or `LOCAL_CA_DIR`.
    pub ca_address: Option<String>,
    /// `XDS_ROOT_CA` / `CA_ROOT_CA` as given: a file path, `SYSTEM`, or inline PEM.
    pub xds_root_ca: String,
    pub ca_root_ca: String,
    pub alt_xds_hostname: Option<String>,
    pub alt_ca_hostname: Option<String>,
    /// `AUTH_TOKEN` as given (a path or a literal token). Never shown in the config dump.
    #[serde(skip_serializing)]
    pub auth_token: Option<String>,
    /// Extra gRPC metadata from `XDS_HEADER_<name>` / `CA_HEADER_<name>`.
    pub xds_headers: Vec<(String, String)>,
    pub ca_headers: Vec<(String, String)>,

    pub cluster_id: String,
    pub cluster_domain: String,
    pub network: String,
    pub node_name: Option<String>,
    pub trust_domain: String,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub service_account: Option<String>,
    pub instance_ip: Option<String>,
    /// `ISTIO_META_<K>=v` entries, keyed by `<K>`.
    pub proxy_metadata: BTreeMap<String, String>,
    /// `ISTIO_METAJSON_<K>=<json>` entries, keyed by `<K>`, raw JSON text.
    pub proxy_metadata_json: BTreeMap<String, String>,

    pub local_xds: Option<LocalXds>,
    pub fake_ca: bool,
    /// Ambit: sign certificates with the CA kept in this directory (created on first use).
    pub local_ca_dir: Option<PathBuf>,
    pub secret_ttl: Duration,
    /// Ambit: `rustls` (default) or `boring`.
    pub tls_backend: String,
    /// Revocation lists checked on every mTLS handshake, both directions; re-read when the file changes.
    pub crl_path: Option<PathBuf>,
    /// `COMPLIANCE_POLICY`: `""` (none) or `pqc` (key exchange X25519MLKEM768 only).
    pub compliance_policy: String,

    pub packet_mark: Option<u32>,
    pub enable_orig_src: Option<bool>,
    pub worker_threads: usize,
    /// Ambit's own (`AMBIT_WORKER_SPILL_PERCENT`): a worker busier than this share of one CPU takes no new
    /// connections while another is below it; `None` (`off`) leaves each connection on the worker whose listener
    /// the kernel chose. See `workers.rs`.
    pub worker_spill_percent: Option<u32>,

    pub pool_max_streams_per_conn: u32,
    pub pool_unused_release_timeout: Duration,
    /// Ambit's own (`AMBIT_HANDSHAKE_TIMEOUT`, 10 s): how long an inbound HBONE connection may take for its TLS
    /// handshake and then its HTTP/2 preface, and a SOCKS5 client for its greeting and request, before it is
    /// closed.
    pub handshake_timeout: Duration,
    pub http2_stream_window: u32,
    pub http2_connection_window: u32,
    pub http2_frame_size: u32,

    pub keepalive_enabled: bool,
    pub keepalive_time: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_retries: u32,
    /// Sets `TCP_USER_TIMEOUT` on proxy sockets, as upstream: see [`Config::tcp_user_timeout`].
    pub user_timeout_enabled: bool,

    pub termination_deadline: Duration,
    pub ipv6_enabled: bool,
    pub socks5_enabled: bool,
    pub enable_response_baggage: bool,
    pub localhost_app_tunnel: bool,
    pub inpod_uds: PathBuf,
    pub inpod_port_reuse: bool,

    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    pub hbone_addr: SocketAddr,
    pub socks5_addr: SocketAddr,
    /// The DNS proxy (spec 7), when `ISTIO_META_DNS_CAPTURE=true`.
    pub dns_proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub stats_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
}

/// Reads variables from the map given to [`Config::from_env`], reporting bad values with their name.
struct Env<'a>(&'a HashMap<String, String>);

impl Env<'_> {
    /// The value, with unset and empty treated alike.
    fn get(&self, var: &str) -> Option<&str> {
        self.0
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Set, even if empty.
    fn raw(&self, var: &str) -> Option<&str> {
        self.0.get(var).map(String::as_str)
    }

    fn string(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or(default).to_owned()
    }

    fn opt(&self, var: &str) -> Option<String> {
        self.get(var).map(str::to_owned)
    }

    fn bool(&self, var: &str, default: bool) -> Result<bool, ConfigError> {
        self.get(var).map_or(Ok(default), |v| parse_bool(var, v))
    }

    fn opt_bool(&self, var: &str) -> Result<Option<bool>, ConfigError> {
        self.get(var).map(|v| parse_bool(var, v)).transpose()
    }

    fn num<T: std::str::FromStr>(&self, var: &str, default: T) -> Result<T, ConfigError> {
        self.get(var).map_or(Ok(default), |v| parse_num(var, v))
    }

    fn duration(&self, var: &str, default: Duration) -> Result<Duration, ConfigError> {
        self.get(var)
            .map_or(Ok(default), |v| parse_duration(var, v))
    }

    /// A boolean upstream setting that Ambit only supports at `supported`: any other value is a start-up error
    /// saying so (an unknown value is the usual parse error).
    fn unsupported(&self, var: &str, supported: bool, why: &str) -> Result<(), ConfigError> {
        if self.bool(var, supported)? == supported {
            return Ok(());
        }
        let value = self.get(var).unwrap_or_default();
        Err(ConfigError::invalid(
            var,
            value,
            format!("not supported by Ambit: {why}; unset it or set {supported}"),
        ))
    }

    /// Every `<prefix><name>=<value>` entry as `(name, value)`, sorted by name.
    fn prefixed(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .0
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(prefix)
                    .filter(|n| !n.is_empty())
                    .map(|n| (n.to_owned(), v.clone()))
            })
            .collect();
        out.sort();
        out
    }
}

/// A control-plane address: unset ⇒ the default, empty ⇒ disabled, scheme-less ⇒ `https://` added.
fn control_plane_address(env: &Env<'_>, var: &str, default: &str) -> Option<String> {
    match env.raw(var) {
        None => Some(default.to_owned()),
        Some("") => None,
        Some(v) if v.contains("://") => Some(v.to_owned()),
        Some(v) => Some(format!("https://{v}")),
    }
}

impl Config {
    /// Resolves the configuration from environment variables (`main` passes `std::env::vars()`).
    pub fn from_env(env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::from_env_with_cpus(env, cpus)
    }

    /// As [`Config::from_env`], with the CPU count given (for tests).
    pub fn from_env_with_cpus(
        env: &HashMap<String, String>,
        cpus: usize,
    ) -> Result<Config, ConfigError> {
        let e = Env(env);
        let proxy_mode = match e.get("PROXY_MODE").map(str::to_ascii_lowercase).as_deref() {
            None | Some("shared") => ProxyMode::Shared,
            Some("dedicated") => ProxyMode::Dedicated,
            Some(_) => {
                let v = e.get("PROXY_MODE").unwrap_or_default();
                return Err(ConfigError::invalid(
                    "PROXY_MODE",
                    v,
                    "expected shared or dedicated",
                ));
            }
        };
        let proxy_workload_info = e
            .get("PROXY_WORKLOAD_INFO")
            .map(parse_workload_info)
            .transpose()?;
        if proxy_mode == ProxyMode::Dedicated && proxy_workload_info.is_none() {
            return Err(ConfigError::Missing(
                "PROXY_MODE=dedicated needs PROXY_WORKLOAD_INFO=<namespace>/<name>/<service account>".into(),
            ));
        }

        let istiod = if e.get("KUBERNETES_SERVICE_HOST").is_some() {
            "https://istiod.istio-system.svc:15012"
        } else {
            "https://localhost:15012"
        };
        let xds_address = control_plane_address(&e, "XDS_ADDRESS", istiod);
        let ca_address = control_plane_address(&e, "CA_ADDRESS", istiod);
        let fake_ca = e.bool("FAKE_CA", false)?;
        let local_ca_dir = e.get("LOCAL_CA_DIR").map(PathBuf::from);
        if ca_address.is_none() && !fake_ca && local_ca_dir.is_none() {
            return Err(ConfigError::Missing(
                "CA_ADDRESS is empty: set it, or FAKE_CA=true, or LOCAL_CA_DIR".into(),
            ));
        }

        let local_xds = match (e.get("LOCAL_XDS_PATH"), e.get("LOCAL_XDS")) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Exclusive("LOCAL_XDS_PATH", "LOCAL_XDS"));
            }
            (Some(p), None) => Some(LocalXds::Path(PathBuf::from(p))),
            (None, Some(y)) => Some(LocalXds::Inline(y.to_owned())),
            (None, None) => None,
        };

        let proxy_metadata: BTreeMap<String, String> =
            e.prefixed("ISTIO_META_").into_iter().collect();
        let proxy_metadata_json: BTreeMap<String, String> =
            e.prefixed("ISTIO_METAJSON_").into_iter().collect();
        let cluster_id = proxy_metadata
            .get("CLUSTER_ID")
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| e.string("CLUSTER_ID", "Kubernetes"));

        let packet_mark = match e.get("PACKET_MARK") {
            Some(v) => Some(parse_num::<u32>("PACKET_MARK", v)?),
            None if proxy_mode == ProxyMode::Shared => Some(DEFAULT_PACKET_MARK),
            None => None,
        };

        let termination_deadline = match (
            e.get("CONNECTION_TERMINATION_DEADLINE"),
            e.get("TERMINATION_GRACE_PERIOD_SECONDS"),
        ) {
            (Some(v), _) => parse_duration("CONNECTION_TERMINATION_DEADLINE", v)?,
            (None, Some(g)) => {
                let g: u64 = parse_num("TERMINATION_GRACE_PERIOD_SECONDS", g)?;
                let secs = if g > 10 { g - 5 } else { g.saturating_sub(1) };
                Duration::from_secs(secs.max(1))
            }
            (None, None) => Duration::from_secs(5),
        };

        let ipv6_enabled = e.bool("IPV6_ENABLED", true)?;
        let wildcard = if ipv6_enabled {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let tls_backend = e.string("TLS_BACKEND", "rustls");
        if !matches!(tls_backend.as_str(), "rustls" | "boring") {
            return Err(ConfigError::invalid(
                "TLS_BACKEND",
                &tls_backend,
                "expected rustls or boring",
            ));
        }
        let crl_path = e.get("CRL_PATH").map(PathBuf::from);
        if crl_path.is_some() && tls_backend == "boring" {
            return Err(ConfigError::invalid(
                "CRL_PATH",
                &crl_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                "CRL checking is implemented for TLS_BACKEND=rustls only",
            ));
        }
        let compliance_policy = e.string("COMPLIANCE_POLICY", "");
        let compliance_policy = match compliance_policy.parse::<ambit_core::tls::CompliancePolicy>()
        {
            Ok(ambit_core::tls::CompliancePolicy::Pqc) => "pqc".to_owned(),
            Ok(ambit_core::tls::CompliancePolicy::Default) => String::new(),
            Err(_) => {
                return Err(ConfigError::invalid(
                    "COMPLIANCE_POLICY",
                    &compliance_policy,
                    "expected \"\" or pqc",
                ));
            }
        };

        // Upstream settings Ambit does not implement: refused rather than accepted and ignored.
        e.unsupported(
            "TLS12_ENABLED",
            false,
            "Ambit's mTLS is TLS 1.3 only (HBONE peers always negotiate 1.3)",
        )?;
        e.unsupported(
            "XDS_ON_DEMAND",
            false,
            "Ambit subscribes to every Address; on-demand (delta) address lookups are not implemented",
        )?;
        e.unsupported(
            "ENABLE_PROXY",
            true,
            "running without the proxy listeners (xDS, DNS and admin only) is not implemented",
        )?;

        Ok(Config {
            proxy_mode,
            proxy_workload_info,
            xds_address,
            ca_address,
            xds_root_ca: e.string("XDS_ROOT_CA", DEFAULT_ROOT_CA),
            ca_root_ca: e.string("CA_ROOT_CA", DEFAULT_ROOT_CA),
            alt_xds_hostname: e.opt("ALT_XDS_HOSTNAME"),
            alt_ca_hostname: e.opt("ALT_CA_HOSTNAME"),
            auth_token: e.opt("AUTH_TOKEN"),
            xds_headers: e.prefixed("XDS_HEADER_"),
            ca_headers: e.prefixed("CA_HEADER_"),
            cluster_id,
            cluster_domain: e.string("CLUSTER_DOMAIN", "cluster.local"),
            network: e.string("NETWORK", ""),
            node_name: e.opt("NODE_NAME"),
            trust_domain: e.string("TRUST_DOMAIN", "cluster.local"),
            pod_name: e.opt("POD_NAME"),
            pod_namespace: e.opt("POD_NAMESPACE"),
            service_account: e.opt("SERVICE_ACCOUNT"),
            instance_ip: e.opt("INSTANCE_IP"),
            proxy_metadata,
            proxy_metadata_json,
            local_xds,
            fake_ca,
            local_ca_dir,
            secret_ttl: e.duration("SECRET_TTL", Duration::from_secs(24 * 3600))?,
            tls_backend,
            crl_path,
            compliance_policy,
            packet_mark,
            enable_orig_src: e.opt_bool("ENABLE_ORIG_SRC")?,
            worker_threads: worker_threads(&e, cpus)?,
            worker_spill_percent: worker_spill_percent(&e)?,
            pool_max_streams_per_conn: e.num("POOL_MAX_STREAMS_PER_CONNECTION", 100)?,
            pool_unused_release_timeout: e
                .duration("POOL_UNUSED_RELEASE_TIMEOUT", Duration::from_secs(300))?,
            handshake_timeout: e.duration("AMBIT_HANDSHAKE_TIMEOUT", Duration::from_secs(10))?,
            http2_stream_window: e.num("HTTP2_STREAM_WINDOW_SIZE", 4 * 1024 * 1024)?,
            http2_connection_window: e.num("HTTP2_CONNECTION_WINDOW_SIZE", 16 * 1024 * 1024)?,
            http2_frame_size: e.num("HTTP2_FRAME_SIZE", 1024 * 1024)?,
            keepalive_enabled: e.bool("KEEPALIVE_ENABLED", true)?,
            keepalive_time: e.duration("KEEPALIVE_TIME", Duration::from_secs(180))?,
            keepalive_interval: e.duration("KEEPALIVE_INTERVAL", Duration::from_secs(180))?,
            keepalive_retries: e.num("KEEPALIVE_RETRIES", 9)?,
            user_timeout_enabled: e.bool("USER_TIMEOUT_ENABLED", false)?,
            termination_deadline,
            ipv6_enabled,
            socks5_enabled: e.bool("UNSTABLE_ENABLE_SOCKS5", false)?,
            enable_response_baggage: e.bool("ENABLE_RESPONSE_BAGGAGE", true)?,
            localhost_app_tunnel: e.bool("LOCALHOST_APP_TUNNEL", true)?,
            inpod_uds: PathBuf::from(e.string("INPOD_UDS", DEFAULT_INPOD_UDS)),
            inpod_port_reuse: e.bool("INPOD_PORT_REUSE", true)?,
            outbound_addr: SocketAddr::new(wildcard, 15001),
            inbound_addr: SocketAddr::new(wildcard, 15006),
            hbone_addr: SocketAddr::new(wildcard, 15008),
            socks5_addr: SocketAddr::new(localhost, 15080),
            dns_proxy_addr: e.num("DNS_PROXY_ADDR", SocketAddr::new(localhost, 15053))?,
            admin_addr: SocketAddr::new(localhost, 15000),
            stats_addr: SocketAddr::new(wildcard, 15020),
            readiness_addr: SocketAddr::new(wildcard, 15021),
        })
    }

    /// A configuration for tests: dedicated mode, no control plane, an in-process CA, defaults elsewhere.
    pub fn for_tests() -> Config {
        let env: HashMap<String, String> = [
            ("PROXY_MODE", "dedicated"),
            ("PROXY_WORKLOAD_INFO", "default/test/default"),
            ("XDS_ADDRESS", ""),
            ("CA_ADDRESS", ""),
            ("FAKE_CA", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        match Self::from_env_with_cpus(&env, 2) {
            Ok(cfg) => cfg,
            // A fixed, valid input: failing here is a bug in this module, caught by its tests.
            Err(e) => unreachable!("test configuration is invalid: {e}"),
        }
    }

    /// The environment-style values the xDS `Node` is built from (spec 2.2): `POD_NAME`, `POD_NAMESPACE`,
    /// `INSTANCE_IP`, `NODE_NAME`, `ISTIO_META_<K>` and `ISTIO_METAJSON_<K>`, as set at start.
    pub fn node_env(&self) -> HashMap<String, String> {
        let mut env = HashMap::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                env.insert(k.to_owned(), v.clone());
            }
        };
        put("POD_NAME", &self.pod_name);
        put("POD_NAMESPACE", &self.pod_namespace);
        put("INSTANCE_IP", &self.instance_ip);
        put("NODE_NAME", &self.node_name);
        for (k, v) in &self.proxy_metadata {
            env.insert(format!("ISTIO_META_{k}"), v.clone());
        }
        for (k, v) in &self.proxy_metadata_json {
            env.insert(format!("ISTIO_METAJSON_{k}"), v.clone());
        }
        env.entry("ISTIO_META_CLUSTER_ID".to_owned())
            .or_insert_with(|| self.cluster_id.clone());
        env
    }

    /// `TCP_USER_TIMEOUT` for proxy sockets when `USER_TIMEOUT_ENABLED`: as upstream, the time keepalive takes to
    /// give up on a silent peer (`KEEPALIVE_TIME + KEEPALIVE_RETRIES * KEEPALIVE_INTERVAL`), so a peer that stops
    /// acknowledging data is dropped as soon as one that stops answering probes is.
    pub fn tcp_user_timeout(&self) -> Option<Duration> {
        self.user_timeout_enabled
            .then(|| self.keepalive_time + self.keepalive_interval * self.keepalive_retries)
    }

    /// The DNS proxy runs when the proxy metadata asks for DNS capture (as upstream: `ISTIO_META_DNS_CAPTURE`).
    pub fn dns_proxy_enabled(&self) -> bool {
        self.proxy_metadata
            .get("DNS_CAPTURE")
            .is_some_and(|v| v == "true")
    }

    /// True when a workload scheduled on `node` is served by this ztunnel (unset `NODE_NAME` ⇒ every workload).
    pub fn is_local_node(&self, node: &str) -> bool {
        self.node_name.as_deref().is_none_or(|n| n == node)
    }
}

fn parse_workload_info(v: &str) -> Result<WorkloadInfo, ConfigError> {
    match v.split('/').collect::<Vec<_>>().as_slice() {
        [ns, name, sa] if !ns.is_empty() && !name.is_empty() && !sa.is_empty() => {
            Ok(WorkloadInfo {
                namespace: (*ns).to_owned(),
                name: (*name).to_owned(),
                service_account: (*sa).to_owned(),
            })
        }
        _ => Err(ConfigError::invalid(
            "PROXY_WORKLOAD_INFO",
            v,
            "expected <namespace>/<name>/<service account>",
        )),
    }
}
