//! Serde types for Ambit's own kinds (`ambit.dev/v1alpha1`):
//!
//! * `FaultInjection`, the object an HTTPRoute or GRPCRoute `ExtensionRef` filter names to inject faults (schema,
//!   defaults and an example in `compute::fault_injection`). Its `spec` has the shape of a VirtualService `fault`.
//! * `RateLimitPolicy`, local token buckets at the waypoint (schema, defaults and an example in
//!   `compute::waypoint_policy::rate_limit`).
//!
//! Fields the types do not model land in `unknown` so that compute reports them rather than silently ignoring
//! them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::istio::Unknown;
use super::routes::HttpRouteMatch;

/// `ambit.dev/v1alpha1` `FaultInjection`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultInjection {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: FaultInjectionSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultInjectionSpec {
    #[serde(default)]
    pub delay: Option<FaultDelaySpec>,
    #[serde(default)]
    pub abort: Option<FaultAbortSpec>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelaySpec {
    /// An Istio duration (`5s`, `1.5s`, `500ms`).
    #[serde(default)]
    pub fixed_delay: Option<String>,
    #[serde(default)]
    pub percentage: Option<FaultPercent>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbortSpec {
    #[serde(default)]
    pub http_status: Option<i64>,
    /// A gRPC status name (`UNAVAILABLE`) or number.
    #[serde(default)]
    pub grpc_status: Option<serde_yaml::Value>,
    #[serde(default)]
    pub percentage: Option<FaultPercent>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

/// A percentage, written as a number (`percentage: 10`) or as Istio writes it (`percentage: {value: 10}`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FaultPercent {
    Number(f64),
    Istio { value: f64 },
}

impl FaultPercent {
    pub fn value(self) -> f64 {
        match self {
            FaultPercent::Number(v) | FaultPercent::Istio { value: v } => v,
        }
    }
}

/// `ambit.dev/v1alpha1` `RateLimitPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RateLimitPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RateLimitPolicySpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    #[serde(default)]
    pub target_refs: Vec<RateLimitTargetRef>,
    #[serde(default)]
    pub limits: Vec<RateLimitSpec>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

/// Gateway API's `LocalPolicyTargetReferenceWithSectionName`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitTargetRef {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub section_name: Option<String>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RateLimitSpec {
    #[serde(default)]
    pub key: Option<RateLimitKeySpec>,
    /// Required, at least 1.
    #[serde(default)]
    pub requests: Option<i64>,
    /// A Gateway API duration; default `1s`.
    #[serde(default)]
    pub interval: Option<String>,
    /// Default: `requests`.
    #[serde(default)]
    pub burst: Option<i64>,
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RateLimitKeySpec {
    /// `None` (default), `ClientIdentity`, `SourceIP`, `Header` or `Path`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default, flatten)]
    pub unknown: Unknown,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_percentage_forms_and_keeps_unknown_fields() {
        let f: FaultInjection = serde_yaml::from_str(
            r#"
metadata: {name: f, namespace: n}
spec:
  delay: {fixedDelay: 5s, percentage: 10}
  abort: {grpcStatus: UNAVAILABLE, percentage: {value: 50}, extra: 1}
  typo: {}
"#,
        )
        .unwrap();
        let d = f.spec.delay.as_ref().unwrap();
        assert_eq!(d.fixed_delay.as_deref(), Some("5s"));
        assert_eq!(d.percentage.map(FaultPercent::value), Some(10.0));
        let a = f.spec.abort.as_ref().unwrap();
        assert_eq!(a.percentage.map(FaultPercent::value), Some(50.0));
        assert!(a.unknown.contains_key("extra"));
        assert!(f.spec.unknown.contains_key("typo"));
    }
}
