//! The effective waypoint configuration, resolved once at start by a pure function of the environment
//! ([`Config::from_env`]). Where a setting means what it means for ztunnel, the variable has ztunnel's (and
//! upstream's) name: `XDS_ADDRESS`, `CA_ADDRESS`, `CLUSTER_ID`, `ISTIO_META_*`, `FAKE_CA`, `LOCAL_CA_DIR`, ...
//! Nothing else in the crate reads the environment.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ambit_core::Identity;
use serde::Serialize;

/// Where the control plane's root certificate is, by default (as ztunnel).
pub const DEFAULT_ROOT_CA: &str = "./var/run/secrets/istio/root-cert.pem";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        var: String,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Missing(String),
}

fn invalid(var: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var: var.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// Everything a waypoint needs at start; serialized (camelCase) for the log and `/config_dump`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// The waypoint Gateway this process serves (`GATEWAY_NAME`, default: the service account).
    pub gateway_name: String,
    /// Its GatewayClass (`GATEWAY_CLASS`, default `istio-waypoint`): AuthorizationPolicies in the root namespace
    /// that target the class apply here.
    pub gateway_class: String,
    /// `XFCC_INCLUDE_CLIENT_IDENTITY` (from the Gateway's `ambient.istio.io/xfcc-include-client-identity`): tell
    /// backends the client's identity in `x-forwarded-client-cert`.
    pub xfcc_include_client_identity: bool,
    pub namespace: String,
    pub pod_name: String,
    pub service_account: String,
    pub trust_domain: String,
    pub instance_ip: Option<IpAddr>,
    pub cluster_id: String,
    pub cluster_domain: String,
    pub network: String,

    /// xDS server (`https://host:port`); `None` disables xDS (then `LOCAL_XDS_PATH` gives the config).
    pub xds_address: Option<String>,
    pub ca_address: Option<String>,
    pub xds_root_ca: String,
    pub ca_root_ca: String,
    #[serde(skip_serializing)]
    pub auth_token: Option<String>,
    /// The waypoint's resources from a YAML file, re-read when it changes (see `localconfig`).
    pub local_xds_path: Option<PathBuf>,
    pub fake_ca: bool,
    pub local_ca_dir: Option<PathBuf>,
    pub secret_ttl: Duration,
    pub tls_backend: String,
    /// `CRL_PATH`: peers whose certificate (or an intermediate) this CRL file revokes are refused.
    pub crl_path: Option<PathBuf>,
    /// `COMPLIANCE_POLICY`: empty, or `pqc` (key exchange X25519MLKEM768 only).
    pub compliance_policy: String,
    /// `ISTIO_META_<K>=v` entries, keyed by `<K>`.
    pub proxy_metadata: BTreeMap<String, String>,

    pub hbone_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub stats_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    pub worker_threads: usize,
    /// How long in-flight requests may take to finish once draining starts.
    pub termination_deadline: Duration,
    /// Largest request header block accepted (431 above it for HTTP/1.1; HTTP/2 refuses the stream).
    pub max_request_headers: usize,
    /// How long the first bytes of a connection of unknown protocol are awaited before it is treated as TCP.
    pub protocol_detect_timeout: Duration,
    /// The retry policy of requests whose route sets none, and of services without routes (Istio's
    /// `meshConfig.defaultHttpRetryPolicy`): `DEFAULT_HTTP_RETRY_ATTEMPTS` (2; 0 turns default retries off) on
    /// `DEFAULT_HTTP_RETRY_ON` (Istio's list), retriable status codes `DEFAULT_HTTP_RETRY_CODES` (503).
    pub default_retry_attempts: u32,
    pub default_retry_on: String,
    pub default_retry_codes: Vec<u32>,
    /// Largest request body kept for replaying it on a retry (`RETRY_BUFFER_BYTES`, 64 KiB); a larger body is
    /// sent once and not retried.
    pub retry_buffer_bytes: usize,
}

impl Config {
    /// The SPIFFE identity the waypoint presents.
    pub fn identity(&self) -> Identity {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
    }

    /// The retry policy of routes that set none, from `DEFAULT_HTTP_RETRY_*`.
    pub fn default_retry(&self) -> Result<crate::resilience::RetryPolicy, ConfigError> {
        crate::resilience::RetryPolicy::from_proto(&ambit_proto::waypoint::RetryPolicy {
            attempts: self.default_retry_attempts,
            retry_on: vec![self.default_retry_on.clone()],
            codes: self.default_retry_codes.clone(),
            ..Default::default()
        })
        .map_err(|e| invalid("DEFAULT_HTTP_RETRY_ON", &self.default_retry_on, &e))
    }

    /// The xDS node metadata (`ISTIO_META_*` plus what identifies this waypoint to the controller).
    pub fn node_env(&self) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = self
            .proxy_metadata
            .iter()
            .map(|(k, v)| (format!("ISTIO_META_{k}"), v.clone()))
            .collect();
        env.insert("POD_NAME".into(), self.pod_name.clone());
        env.insert("POD_NAMESPACE".into(), self.namespace.clone());
        env.insert("CLUSTER_ID".into(), self.cluster_id.clone());
        env.insert("NODE_TYPE".into(), "router".into());
        // The controller scopes what it sends by the waypoint Gateway a connection declares.
        env.insert("ISTIO_META_GATEWAY_NAME".into(), self.gateway_name.clone());
        if let Some(ip) = self.instance_ip {
            env.insert("INSTANCE_IP".into(), ip.to_string());
        }
        env
    }

    /// Resolves the configuration from environment variables (pure: the map is all it reads).
    pub fn from_env(env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let flag = |k: &str, default: bool| -> Result<bool, ConfigError> {
            match get(k).as_deref() {
                None => Ok(default),
                Some("true" | "1" | "TRUE" | "True") => Ok(true),
                Some("false" | "0" | "FALSE" | "False") => Ok(false),
                Some(v) => Err(invalid(k, v, "expected true or false")),
            }
        };
        let duration = |k: &str, default: Duration| -> Result<Duration, ConfigError> {
            get(k).map_or(Ok(default), |v| {
                parse_duration(&v)
                    .ok_or_else(|| invalid(k, &v, "expected a duration like 5s or 100ms"))
            })
        };
        let number = |k: &str, default: usize| -> Result<usize, ConfigError> {
            get(k).map_or(Ok(default), |v| {
                v.parse().map_err(|_| invalid(k, &v, "expected a number"))
            })
        };
        let addr = |k: &str, default: SocketAddr| -> Result<SocketAddr, ConfigError> {
            get(k).map_or(Ok(default), |v| {
                v.parse().map_err(|_| invalid(k, &v, "expected ip:port"))
            })
        };
        // Bind on v4 when the host has no IPv6 (tests, some local setups): `IPV6_ENABLED=false`.
        let (unspecified, loopback): (IpAddr, IpAddr) = if flag("IPV6_ENABLED", true)? {
            (Ipv6Addr::UNSPECIFIED.into(), Ipv6Addr::LOCALHOST.into())
        } else {
            (Ipv4Addr::UNSPECIFIED.into(), Ipv4Addr::LOCALHOST.into())
        };
        let any = |port: u16| SocketAddr::new(unspecified, port);
        let localhost = |port: u16| SocketAddr::new(loopback, port);

        let compliance_policy = get("COMPLIANCE_POLICY").unwrap_or_default();
        if let Err(e) = compliance_policy.parse::<ambit_core::tls::CompliancePolicy>() {
            return Err(invalid(
                "COMPLIANCE_POLICY",
                &compliance_policy,
                e.to_string(),
            ));
        }
        let service_account = get("SERVICE_ACCOUNT")
            .or_else(|| get("GATEWAY_NAME"))
            .unwrap_or_else(|| "waypoint".into());
        let namespace = get("POD_NAMESPACE").unwrap_or_else(|| "default".into());
        let instance_ip = match get("INSTANCE_IP") {
            Some(v) => Some(
                v.parse()
                    .map_err(|_| invalid("INSTANCE_IP", &v, "expected an IP address"))?,
            ),
            None => None,
        };
        let fake_ca = flag("FAKE_CA", false)?;
        let local_ca_dir = get("LOCAL_CA_DIR").map(PathBuf::from);
        let ca_address = get("CA_ADDRESS");
        if !fake_ca && local_ca_dir.is_none() && ca_address.is_none() {
            return Err(ConfigError::Missing(
                "no certificate source: set CA_ADDRESS, FAKE_CA=true or LOCAL_CA_DIR".into(),
            ));
        }
        let xds_address = get("XDS_ADDRESS");
        let local_xds_path = get("LOCAL_XDS_PATH").map(PathBuf::from);
        if xds_address.is_none() && local_xds_path.is_none() {
            return Err(ConfigError::Missing(
                "no configuration source: set XDS_ADDRESS or LOCAL_XDS_PATH".into(),
            ));
        }
        let proxy_metadata = env
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("ISTIO_META_")?.to_owned(), v.clone())))
            .collect();
        let cfg = Config {
            gateway_name: get("GATEWAY_NAME").unwrap_or_else(|| service_account.clone()),
            gateway_class: get("GATEWAY_CLASS").unwrap_or_else(|| "istio-waypoint".into()),
            xfcc_include_client_identity: flag("XFCC_INCLUDE_CLIENT_IDENTITY", false)?,
            pod_name: get("POD_NAME").unwrap_or_else(|| "waypoint".into()),
            namespace,
            service_account,
            trust_domain: get("TRUST_DOMAIN").unwrap_or_else(|| "cluster.local".into()),
            instance_ip,
            cluster_id: get("CLUSTER_ID").unwrap_or_else(|| "Kubernetes".into()),
            cluster_domain: get("CLUSTER_DOMAIN").unwrap_or_else(|| "cluster.local".into()),
            network: get("NETWORK").unwrap_or_default(),
            xds_address,
            ca_address,
            xds_root_ca: get("XDS_ROOT_CA").unwrap_or_else(|| DEFAULT_ROOT_CA.into()),
            ca_root_ca: get("CA_ROOT_CA").unwrap_or_else(|| DEFAULT_ROOT_CA.into()),
            auth_token: get("AUTH_TOKEN"),
            local_xds_path,
            fake_ca,
            local_ca_dir,
            secret_ttl: duration("SECRET_TTL", Duration::from_secs(24 * 3600))?,
            tls_backend: get("TLS_BACKEND").unwrap_or_else(|| "rustls".into()),
            crl_path: get("CRL_PATH").map(PathBuf::from),
            compliance_policy,
            proxy_metadata,
            hbone_addr: addr("WAYPOINT_HBONE_ADDR", any(15008))?,
            admin_addr: addr("WAYPOINT_ADMIN_ADDR", localhost(15000))?,
            stats_addr: addr("WAYPOINT_STATS_ADDR", any(15020))?,
            readiness_addr: addr("WAYPOINT_READINESS_ADDR", any(15021))?,
            worker_threads: number("WORKER_THREADS", 2)?.max(1),
            termination_deadline: duration(
                "CONNECTION_TERMINATION_DEADLINE",
                Duration::from_secs(5),
            )?,
            max_request_headers: number("MAX_REQUEST_HEADERS_KB", 60)? * 1024,
            protocol_detect_timeout: duration(
                "PROTOCOL_DETECT_TIMEOUT",
                Duration::from_millis(500),
            )?,
            default_retry_attempts: u32::try_from(number("DEFAULT_HTTP_RETRY_ATTEMPTS", 2)?)
                .map_err(|_| invalid("DEFAULT_HTTP_RETRY_ATTEMPTS", "", "too large"))?,
            default_retry_on: get("DEFAULT_HTTP_RETRY_ON").unwrap_or_else(|| {
                "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".into()
            }),
            default_retry_codes: match get("DEFAULT_HTTP_RETRY_CODES") {
                None => vec![503],
                Some(v) => v
                    .split(',')
                    .map(|c| c.trim().parse::<u32>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| {
                        invalid(
                            "DEFAULT_HTTP_RETRY_CODES",
                            &v,
                            "expected status codes like 503,504",
                        )
                    })?,
            },
            retry_buffer_bytes: number("RETRY_BUFFER_BYTES", 64 * 1024)?,
        };
        Ok(cfg)
    }
}

/// `5s`, `100ms`, `1m`, `2h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn defaults_and_identity() {
        let c = Config::from_env(&env(&[
            ("FAKE_CA", "true"),
            ("LOCAL_XDS_PATH", "/x.yaml"),
            ("POD_NAMESPACE", "demo"),
            ("GATEWAY_NAME", "waypoint"),
            ("ISTIO_META_CLUSTER_ID", "c1"),
        ]))
        .unwrap();
        assert_eq!(
            c.identity().to_string(),
            "spiffe://cluster.local/ns/demo/sa/waypoint"
        );
        assert_eq!(c.hbone_addr.port(), 15008);
        assert_eq!(c.admin_addr.port(), 15000);
        assert!(c.admin_addr.ip().is_loopback());
        assert_eq!(c.worker_threads, 2);
        assert_eq!(
            c.node_env()
                .get("ISTIO_META_CLUSTER_ID")
                .map(String::as_str),
            Some("c1")
        );
    }

    #[test]
    fn crl_path_and_compliance_policy_are_read_and_checked() {
        let base = [("FAKE_CA", "true"), ("LOCAL_XDS_PATH", "/x")];
        let c = Config::from_env(&env(&base)).unwrap();
        assert_eq!((c.crl_path, c.compliance_policy.as_str()), (None, ""));
        let mut vars = base.to_vec();
        vars.extend([("CRL_PATH", "/etc/crl.pem"), ("COMPLIANCE_POLICY", "pqc")]);
        let c = Config::from_env(&env(&vars)).unwrap();
        assert_eq!(c.crl_path, Some(PathBuf::from("/etc/crl.pem")));
        assert_eq!(c.compliance_policy, "pqc");
        let mut vars = base.to_vec();
        vars.push(("COMPLIANCE_POLICY", "fips-2099"));
        let e = Config::from_env(&env(&vars)).unwrap_err();
        assert!(
            e.to_string().starts_with("COMPLIANCE_POLICY=\"fips-2099\""),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let e = Config::from_env(&env(&[("LOCAL_XDS_PATH", "/x")])).unwrap_err();
        assert!(e.to_string().contains("certificate source"), "{e}");
        let e = Config::from_env(&env(&[("FAKE_CA", "true")])).unwrap_err();
        assert!(e.to_string().contains("configuration source"), "{e}");
        let e =
            Config::from_env(&env(&[("FAKE_CA", "yes"), ("LOCAL_XDS_PATH", "/x")])).unwrap_err();
        assert!(e.to_string().starts_with("FAKE_CA=\"yes\""), "{e}");
        let e = Config::from_env(&env(&[
            ("FAKE_CA", "1"),
            ("LOCAL_XDS_PATH", "/x"),
            ("WORKER_THREADS", "many"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("WORKER_THREADS"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        for bad in ["", "s", "5x", "-1s", "1.5s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
