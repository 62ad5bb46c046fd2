//! Serde types for Istio's traffic management resources a waypoint applies: `VirtualService` and
//! `DestinationRule` (`networking.istio.io/v1`; `v1beta1` and `v1alpha3` have the same schema). Only the fields
//! the waypoint schema can carry are typed; every other field lands in an `unknown` map so that
//! `compute::virtual_service` / `compute::destination_rule` can report the ones that change behaviour (a field
//! silently ignored would route traffic differently from what the user wrote). Defaults (weight 100 for a single
//! destination, `consecutive5xxErrors` 5, redirect code 301) are applied by compute, not here, so that "unset"
//! stays visible. Durations are Istio's (`parse_istio_duration`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// Fields the types do not model, by name.
pub type Unknown = BTreeMap<String, serde_yaml::Value>;

/// `networking.istio.io/v1` `VirtualService`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VirtualService {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualServiceSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Empty: `mesh`.
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<VsHttpRoute>,
    #[serde(default)]
    pub tcp: Vec<VsTcpRoute>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsHttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<VsHttpMatch>,
    #[serde(default)]
    pub route: Vec<VsRouteDestination>,
    #[serde(default)]
    pub redirect: Option<VsRedirect>,
    #[serde(default)]
    pub direct_response: Option<VsDirectResponse>,
    #[serde(default)]
    pub rewrite: Option<VsRewrite>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<VsRetries>,
    #[serde(default)]
    pub fault: Option<VsFault>,
    #[serde(default)]
    pub mirror: Option<VsDestination>,
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    #[serde(default)]
    pub cors_policy: Option<VsCorsPolicy>,
    #[serde(default)]
    pub headers: Option<VsHeaders>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

/// Istio's `StringMatch`: exactly one of `exact`, `prefix`, `regex` (none: "present", for headers).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsHttpMatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub authority: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub port: Option<u32>,
    /// `None`: any client; an empty map selects every workload too.
    #[serde(default)]
    pub source_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub source_namespace: Option<String>,
    #[serde(default)]
    pub ignore_uri_case: bool,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortSelector {
    #[serde(default)]
    pub number: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VsDestination {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VsRouteDestination {
    #[serde(default)]
    pub destination: VsDestination,
    #[serde(default)]
    pub weight: Option<i64>,
    #[serde(default)]
    pub headers: Option<VsHeaders>,
}

/// `headers.request` / `headers.response`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VsHeaders {
    #[serde(default)]
    pub request: Option<VsHeaderOperations>,
    #[serde(default)]
    pub response: Option<VsHeaderOperations>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VsHeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsRedirect {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub scheme: Option<String>,
    /// Default 301.
    #[serde(default)]
    pub redirect_code: Option<u32>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VsRewrite {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsRetries {
    #[serde(default)]
    pub attempts: Option<i64>,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    #[serde(default)]
    pub retry_on: Option<String>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

/// `{value: 0-100}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VsFault {
    #[serde(default)]
    pub delay: Option<VsFaultDelay>,
    #[serde(default)]
    pub abort: Option<VsFaultAbort>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsFaultDelay {
    #[serde(default)]
    pub fixed_delay: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percent>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsFaultAbort {
    #[serde(default)]
    pub http_status: Option<i64>,
    /// A gRPC status name (`UNAVAILABLE`) or number.
    #[serde(default)]
    pub grpc_status: Option<serde_yaml::Value>,
    #[serde(default)]
    pub percentage: Option<Percent>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsCorsPolicy {
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    /// `FORWARD` (default) or `IGNORE`.
    #[serde(default)]
    pub unmatched_preflights: Option<String>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VsDirectResponse {
    #[serde(default)]
    pub status: Option<i64>,
    #[serde(default)]
    pub body: Option<VsResponseBody>,
}

/// `string` or `bytes` (base64).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VsResponseBody {
    #[serde(default)]
    pub string: Option<String>,
    #[serde(default)]
    pub bytes: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsTcpRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<VsL4Match>,
    #[serde(default)]
    pub route: Vec<VsRouteDestination>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsL4Match {
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

/// `networking.istio.io/v1` `DestinationRule`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DestinationRule {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: DestinationRuleSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub traffic_policy: Option<DrTrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<DrSubset>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrTrafficPolicy {
    #[serde(default)]
    pub load_balancer: Option<DrLoadBalancer>,
    #[serde(default)]
    pub connection_pool: Option<DrConnectionPool>,
    #[serde(default)]
    pub outlier_detection: Option<DrOutlierDetection>,
    #[serde(default)]
    pub port_level_settings: Vec<DrPortTrafficPolicy>,
    #[serde(default)]
    pub tls: Option<DrTls>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrPortTrafficPolicy {
    #[serde(default)]
    pub port: Option<PortSelector>,
    #[serde(default)]
    pub load_balancer: Option<DrLoadBalancer>,
    #[serde(default)]
    pub connection_pool: Option<DrConnectionPool>,
    #[serde(default)]
    pub outlier_detection: Option<DrOutlierDetection>,
    #[serde(default)]
    pub tls: Option<DrTls>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

/// `mode`: `DISABLE`, `SIMPLE`, `MUTUAL`, `ISTIO_MUTUAL`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DrTls {
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrLoadBalancer {
    /// `LEAST_REQUEST`, `ROUND_ROBIN`, `RANDOM`, `PASSTHROUGH` (`UNSPECIFIED`, `LEAST_CONN`: least request).
    #[serde(default)]
    pub simple: Option<String>,
    #[serde(default)]
    pub consistent_hash: Option<DrConsistentHash>,
    #[serde(default)]
    pub locality_lb_setting: Option<DrLocalityLbSetting>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrConsistentHash {
    #[serde(default)]
    pub http_header_name: Option<String>,
    #[serde(default)]
    pub http_cookie: Option<DrHttpCookie>,
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    #[serde(default)]
    pub ring_hash: Option<DrRingHash>,
    #[serde(default)]
    pub maglev: Option<DrMaglev>,
    /// Deprecated spelling of `ringHash.minimumRingSize`.
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DrHttpCookie {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub ttl: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrRingHash {
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrMaglev {
    #[serde(default)]
    pub table_size: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DrLocalityLbSetting {
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DrConnectionPool {
    #[serde(default)]
    pub tcp: Option<DrTcpSettings>,
    #[serde(default)]
    pub http: Option<DrHttpSettings>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrTcpSettings {
    #[serde(default)]
    pub max_connections: Option<i64>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrHttpSettings {
    #[serde(default)]
    pub http1_max_pending_requests: Option<i64>,
    #[serde(default)]
    pub http2_max_requests: Option<i64>,
    #[serde(default)]
    pub max_requests_per_connection: Option<i64>,
    #[serde(default)]
    pub max_retries: Option<i64>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrOutlierDetection {
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<i64>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<i64>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    #[serde(default)]
    pub max_ejection_percent: Option<i64>,
    #[serde(default)]
    pub min_health_percent: Option<i64>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrSubset {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<DrTrafficPolicy>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn virtual_service_reads_the_modelled_fields_and_keeps_unknown_ones() {
        let vs: VirtualService = serde_yaml::from_str(
            r#"
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  exportTo: ["."]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}, port: 9080, sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews, subset: v2, port: {number: 9080}}, weight: 100}]
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,reset"}
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 50}}}
    delegate: {name: x}
"#,
        )
        .unwrap();
        let http = &vs.spec.http[0];
        assert!(vs.spec.unknown.contains_key("exportTo"));
        assert!(http.unknown.contains_key("delegate"));
        assert_eq!(
            http.matches[0].headers["end-user"].exact.as_deref(),
            Some("jason")
        );
        assert_eq!(http.route[0].destination.subset.as_deref(), Some("v2"));
        assert_eq!(http.retries.as_ref().unwrap().attempts, Some(3));
        assert_eq!(
            http.fault
                .as_ref()
                .unwrap()
                .abort
                .as_ref()
                .unwrap()
                .percentage,
            Some(Percent { value: 50.0 })
        );
    }

    #[test]
    fn destination_rule_reads_the_modelled_fields() {
        let dr: DestinationRule = serde_yaml::from_str(
            r#"
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}, maglev: {tableSize: 1021}}}
    connectionPool: {tcp: {maxConnections: 10}, http: {http1MaxPendingRequests: 1}}
    outlierDetection: {consecutive5xxErrors: 7}
    tls: {mode: SIMPLE}
  subsets: [{name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}]
"#,
        )
        .unwrap();
        let tp = dr.spec.traffic_policy.as_ref().unwrap();
        assert_eq!(
            tp.outlier_detection
                .as_ref()
                .unwrap()
                .consecutive_5xx_errors,
            Some(7)
        );
        assert_eq!(tp.tls.as_ref().unwrap().mode.as_deref(), Some("SIMPLE"));
        let ch = tp
            .load_balancer
            .as_ref()
            .unwrap()
            .consistent_hash
            .as_ref()
            .unwrap();
        assert_eq!(ch.http_cookie.as_ref().unwrap().name, "user");
        assert_eq!(dr.spec.subsets[0].labels["version"], "v1");
    }
}
