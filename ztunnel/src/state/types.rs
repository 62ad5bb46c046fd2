//! Domain types of the proxy state. Serialized (camelCase) exactly as upstream's internal model, which is both the
//! local config file format (spec 2.7) and the `/config_dump` shape (spec 6.2).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ambit_core::Identity;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The default HBONE port of a gateway or waypoint.
pub const DEFAULT_HBONE_PORT: u16 = 15008;

/// Service port → target port.
pub type PortMap = BTreeMap<u16, u16>;

/// How a workload receives mesh traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InboundProtocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "HBONE")]
    Hbone,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NetworkMode {
    #[default]
    Standard,
    /// Shares the node's network: never looked up by IP.
    HostNetwork,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HealthStatus {
    #[default]
    Healthy,
    Unhealthy,
}

/// The kind of controller behind a workload; names the `k8s.<type>.name` baggage key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadType {
    #[default]
    Deployment,
    Cronjob,
    Pod,
    Job,
}

impl WorkloadType {
    pub fn as_str(&self) -> &'static str {
        match self {
            WorkloadType::Deployment => "deployment",
            WorkloadType::Cronjob => "cronjob",
            WorkloadType::Pod => "pod",
            WorkloadType::Job => "job",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AppTunnelProtocol {
    #[default]
    #[serde(rename = "NONE")]
    None,
    #[serde(rename = "PROXY")]
    Proxy,
}

/// The workload accepts tunnelled traffic itself (spec 1.10): on `port` if set, wrapped as `protocol`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationTunnel {
    #[serde(default)]
    pub protocol: AppTunnelProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// An IP on a network; serialized as `"<network>/<ip>"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    pub network: String,
    pub address: IpAddr,
}

impl NetworkAddress {
    pub fn new(network: &str, address: IpAddr) -> Self {
        NetworkAddress {
            network: network.to_owned(),
            address,
        }
    }
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.address)
    }
}

impl FromStr for NetworkAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (network, ip) = s
            .rsplit_once('/')
            .ok_or_else(|| format!("{s:?} is not <network>/<ip>"))?;
        let address = ip
            .parse()
            .map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
        Ok(NetworkAddress {
            network: network.to_owned(),
            address,
        })
    }
}

/// A CIDR VIP on a network; serialized as `"<network>/<ip>/<len>"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkCidr {
    pub network: String,
    pub cidr: IpNet,
}

impl fmt::Display for NetworkCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.cidr)
    }
}

impl FromStr for NetworkCidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not <network>/<ip>/<prefix length>");
        let (rest, len) = s.rsplit_once('/').ok_or_else(bad)?;
        let (network, ip) = rest.rsplit_once('/').ok_or_else(bad)?;
        let cidr = format!("{ip}/{len}").parse::<IpNet>().map_err(|_| bad())?;
        Ok(NetworkCidr {
            network: network.to_owned(),
            cidr: cidr.trunc(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespacedHostname {
    pub namespace: String,
    pub hostname: String,
}

impl fmt::Display for NamespacedHostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.hostname)
    }
}

/// Where a gateway or waypoint is: an address, or a service (or workload) by hostname.
/// Serialized as `"<network>/<ip>"` or `"<namespace>/<hostname>"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GatewayDestination {
    Address(NetworkAddress),
    Hostname(NamespacedHostname),
}

impl fmt::Display for GatewayDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayDestination::Address(a) => a.fmt(f),
            GatewayDestination::Hostname(h) => h.fmt(f),
        }
    }
}

impl FromStr for GatewayDestination {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(a) = s.parse::<NetworkAddress>() {
            return Ok(GatewayDestination::Address(a));
        }
        match s.split_once('/') {
            Some((ns, host)) if !ns.is_empty() && !host.is_empty() => {
                Ok(GatewayDestination::Hostname(NamespacedHostname {
                    namespace: ns.into(),
                    hostname: host.into(),
                }))
            }
            _ => Err(format!(
                "{s:?} is neither <network>/<ip> nor <namespace>/<hostname>"
            )),
        }
    }
}

/// A gateway (east-west) or waypoint reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAddress {
    #[serde(serialize_with = "ser_display", deserialize_with = "de_from_str")]
    pub destination: GatewayDestination,
    #[serde(default = "default_hbone_port")]
    pub hbone_mtls_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedWaypoint {
    pub destination: GatewayAddress,
    #[serde(default)]
    pub weight: u32,
}

/// A workload (pod, WorkloadEntry, …): the unit that has an identity and receives traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    #[serde(default)]
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub workload_ips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub protocol: InboundProtocol,
    #[serde(default)]
    pub network_mode: NetworkMode,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_gateway: Option<GatewayAddress>,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub canonical_name: String,
    #[serde(default)]
    pub canonical_revision: String,
    #[serde(default)]
    pub workload_type: WorkloadType,
    #[serde(default)]
    pub workload_name: String,
    #[serde(default)]
    pub native_tunnel: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_tunnel: Option<ApplicationTunnel>,
    /// `namespace/hostname` of each service this workload is an endpoint of, with its own port map.
    #[serde(default)]
    pub services: BTreeMap<String, PortMap>,
    /// WORKLOAD_SELECTOR policies (`namespace/name`) that apply to this workload.
    #[serde(default)]
    pub authorization_policies: Vec<String>,
    #[serde(default)]
    pub status: HealthStatus,
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    #[serde(default)]
    pub locality: Locality,
    #[serde(default = "default_capacity")]
    pub capacity: u32,
}

impl Workload {
    /// The SPIFFE identity this workload's certificate carries.
    pub fn identity(&self) -> Identity {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
    }

    /// True when this workload is looked up by its IPs (host-network workloads share the node's).
    pub fn indexed_by_ip(&self) -> bool {
        self.network_mode != NetworkMode::HostNetwork
    }
}

/// One endpoint of a service: a workload and its own port map for that service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    pub workload_uid: String,
    #[serde(default)]
    pub port: PortMap,
    #[serde(default)]
    pub status: HealthStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LbScope {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LbMode {
    /// No locality preference.
    #[default]
    Standard,
    /// Only endpoints matching every routing preference.
    Strict,
    /// Prefer the best-matching endpoints; fall back to worse matches only when none are left.
    Failover,
    /// Not load-balanced by ztunnel: traffic goes to the original destination.
    Passthrough,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HealthPolicy {
    #[default]
    OnlyHealthy,
    AllowAll,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LoadBalancer {
    pub routing_preferences: Vec<LbScope>,
    pub mode: LbMode,
    pub health_policy: HealthPolicy,
}

/// Restricts which IP families of an endpoint are used (and answered by DNS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpFamilies {
    Dual,
    #[serde(rename = "IPv4")]
    Ipv4Only,
    #[serde(rename = "IPv6")]
    Ipv6Only,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Visibility {
    #[default]
    Public,
    /// Only resolvable and routable from the service's own namespace.
    Namespace,
}

/// A service: VIPs and ports in front of a set of endpoint workloads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    #[serde(
        default,
        serialize_with = "ser_display_vec",
        deserialize_with = "de_from_str_vec"
    )]
    pub vips: Vec<NetworkAddress>,
    #[serde(
        default,
        serialize_with = "ser_display_vec",
        deserialize_with = "de_from_str_vec"
    )]
    pub cidr_vips: Vec<NetworkCidr>,
    #[serde(default)]
    pub ports: PortMap,
    /// Workload uid → endpoint. Derived from the workloads' `services` (the file may also list some).
    #[serde(default)]
    pub endpoints: BTreeMap<String, Endpoint>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weighted_waypoints: Vec<WeightedWaypoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_families: Option<IpFamilies>,
    #[serde(default)]
    pub canonical: bool,
    #[serde(default)]
    pub visibility: Visibility,
}

impl Service {
    /// `namespace/hostname`: the resource name and the key workloads use to name this service.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }

    /// Load balancing is left to the original destination (`PASSTHROUGH`).
    pub fn is_passthrough(&self) -> bool {
        self.load_balancer
            .as_ref()
            .is_some_and(|lb| lb.mode == LbMode::Passthrough)
    }

    /// Visible (resolvable and routable) from a client in `namespace`.
    pub fn visible_from(&self, namespace: &str) -> bool {
        self.visibility == Visibility::Public || self.namespace == namespace
    }

    /// The waypoint for one connection: a weighted pick among `weighted_waypoints` (all-zero weights ignore
    /// them), else `waypoint`.
    pub fn choose_waypoint(&self) -> Option<&GatewayAddress> {
        let total: u64 = self
            .weighted_waypoints
            .iter()
            .map(|w| u64::from(w.weight))
            .sum();
        if total == 0 {
            return self.waypoint.as_ref();
        }
        let mut pick = rand::random_range(0..total);
        for w in &self.weighted_waypoints {
            let weight = u64::from(w.weight);
            if pick < weight {
                return Some(&w.destination);
            }
            pick -= weight;
        }
        self.waypoint.as_ref()
    }

    /// The target port of `port` on this service: `Some(0)` for a named port (resolved per endpoint), `None` if
    /// the service has no such port.
    pub fn target_port(&self, port: u16) -> Option<u16> {
        self.ports.get(&port).copied()
    }
}

fn default_hbone_port() -> u16 {
    DEFAULT_HBONE_PORT
}
fn default_trust_domain() -> String {
    "cluster.local".to_owned()
}
fn default_service_account() -> String {
    "default".to_owned()
}
fn default_cluster_id() -> String {
    "Kubernetes".to_owned()
}
fn default_capacity() -> u32 {
    1
}

fn ser_display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn de_from_str<'de, T, D>(d: D) -> Result<T, D::Error>
where
    T: FromStr<Err = String>,
    D: Deserializer<'de>,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn ser_display_vec<T: fmt::Display, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(ToString::to_string))
}

fn de_from_str_vec<'de, T, D>(d: D) -> Result<Vec<T>, D::Error>
where
    T: FromStr<Err = String>,
    D: Deserializer<'de>,
{
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}
