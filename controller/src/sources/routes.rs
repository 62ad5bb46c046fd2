//! Serde types for the Gateway API routes a waypoint serves: `HTTPRoute` and `GRPCRoute`
//! (`gateway.networking.k8s.io/v1`) and `TCPRoute` (`v1alpha2`). Every field the waypoint route schema carries is
//! modelled; unknown fields are ignored. Defaults that Gateway API's CRDs apply (path `PathPrefix /`, weight 1,
//! match type `Exact`) are applied by `compute::routes`, not here, so that "unset" stays visible.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// `gateway.networking.k8s.io/v1` `HTTPRoute`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpRoute {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: HttpRouteSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// A `parentRefs` entry. Gateway API defaults: group `gateway.networking.k8s.io`, kind `Gateway`, the route's
/// namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub section_name: Option<String>,
    #[serde(default)]
    pub port: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    #[serde(default)]
    pub timeouts: Option<HttpRouteTimeouts>,
    #[serde(default)]
    pub retry: Option<HttpRouteRetry>,
}

/// `rules[].retry` (GEP-1731, Standard since Gateway API v1.7). Values are kept as written (an `i64`, any
/// string) so that compute can report the ones out of range by field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpRouteRetry {
    /// Retries after the first attempt; unset: the implementation's default; 0: no retries.
    #[serde(default)]
    pub attempts: Option<i64>,
    /// HTTP statuses (400-599) to retry.
    #[serde(default)]
    pub codes: Vec<i64>,
    /// A Gateway API duration: the base interval of the backoff.
    #[serde(default)]
    pub backoff: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    #[serde(default)]
    pub path: Option<HttpPathMatch>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    #[serde(default)]
    pub method: Option<String>,
}

/// `type`: `Exact`, `PathPrefix` (default) or `RegularExpression`; `value` defaults to `/`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpPathMatch {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

/// A header or query parameter match; `type` is `Exact` (default) or `RegularExpression`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ValueMatch {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// One filter; `type` says which of the other fields applies. Types the controller does not know (CORS, an
/// ExtensionRef to anything but an `ambit.dev` `FaultInjection`) are skipped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderFilter>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderFilter>,
    #[serde(default)]
    pub request_redirect: Option<RedirectFilter>,
    #[serde(default, rename = "urlRewrite")]
    pub url_rewrite: Option<RewriteFilter>,
    #[serde(default)]
    pub request_mirror: Option<MirrorFilter>,
    #[serde(default)]
    pub extension_ref: Option<LocalObjectReference>,
}

/// `extensionRef`: an object in the route's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalObjectReference {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeaderFilter {
    #[serde(default)]
    pub set: Vec<HeaderValue>,
    #[serde(default)]
    pub add: Vec<HeaderValue>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeaderValue {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedirectFilter {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifierSpec>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub status_code: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RewriteFilter {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifierSpec>,
}

/// `type` `ReplaceFullPath` (with `replaceFullPath`) or `ReplacePrefixMatch` (with `replacePrefixMatch`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathModifierSpec {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub replace_full_path: Option<String>,
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorFilter {
    #[serde(default)]
    pub backend_ref: BackendObjectReference,
    /// 0-100.
    #[serde(default)]
    pub percent: Option<u32>,
    #[serde(default)]
    pub fraction: Option<Fraction>,
}

/// `numerator / denominator` (denominator defaults to 100).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fraction {
    #[serde(default)]
    pub numerator: u32,
    #[serde(default)]
    pub denominator: Option<u32>,
}

/// A reference to a backend without weight or filters (mirror targets). Defaults: group `""`, kind `Service`, the
/// route's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendObjectReference {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u32>,
}

/// An HTTPRoute/GRPCRoute `backendRefs` entry (TCPRoute entries simply never carry filters).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpBackendRef {
    #[serde(flatten)]
    pub backend: BackendObjectReference,
    /// Default 1.
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
}

/// Gateway API durations (`10s`, `500ms`, `1h30m`); see [`parse_duration`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// `gateway.networking.k8s.io/v1` `GRPCRoute`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpcRoute {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: GrpcRouteSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpcRouteMatch {
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
}

/// `type` `Exact` (default) or `RegularExpression`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpcMethodMatch {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
}

/// `gateway.networking.k8s.io/v1alpha2` `TCPRoute`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TcpRoute {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: TcpRouteSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default)]
    pub rules: Vec<TcpRouteRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
}

/// `spec.listeners[].allowedRoutes` of a Gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AllowedRoutes {
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
}

/// `from`: `Same` (default), `All` or `Selector` (with `selector.matchLabels`; `matchExpressions` are not
/// supported and select nothing).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteNamespaces {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub selector: Option<NamespaceSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<serde_yaml::Value>,
}

/// Parses a Gateway API duration (GEP-2257): one or more `<digits><unit>` pairs with units `h`, `m`, `s`, `ms`
/// (`1h`, `10s`, `500ms`, `1h30m`), into milliseconds. No sign, no fractions, no days, not empty.
pub fn parse_duration(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total = total.checked_add(n.checked_mul(unit_ms)?)?;
    }
    Some(total)
}

/// Parses an Istio duration (a protobuf `Duration` as Istio's YAML writes it, and Go's `time.ParseDuration`):
/// one or more `<number><unit>` pairs where the number may have a fraction and the unit is `h`, `m`, `s`, `ms`,
/// `us`/`µs` or `ns` (`2s`, `1.5s`, `500ms`, `1m`, `1h30m`), into milliseconds. A non-zero duration shorter than
/// a millisecond rounds up to 1 ms (so it never means "none"). No sign, not empty.
pub fn parse_istio_duration(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut total_ns: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after),
        };
        if (int_part.is_empty() && frac_part.is_empty()) || int_part.len() > 12 {
            return None;
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let unit_ns: u128 = match &after[..unit_len] {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ns" => 1,
            _ => return None,
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let mut ns = int.checked_mul(unit_ns)?;
        // The fraction, digit by digit (at most nanosecond precision matters).
        let mut scale = unit_ns;
        for d in frac_part.bytes().take(18) {
            scale /= 10;
            ns += u128::from(d - b'0') * scale;
        }
        total_ns = total_ns.checked_add(ns)?;
        rest = &after[unit_len..];
    }
    let ms = total_ns.div_ceil(1_000_000);
    u64::try_from(ms).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn gateway_api_durations() {
        assert_eq!(parse_duration("1h"), Some(3_600_000));
        assert_eq!(parse_duration("10s"), Some(10_000));
        assert_eq!(parse_duration("500ms"), Some(500));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration("0s"), Some(0));
        assert_eq!(parse_duration("1m1s1ms"), Some(61_001));
        for bad in ["", "10", "-1s", "1d", "1.5s", "s", "1h ", "123456s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn istio_durations() {
        for (s, ms) in [
            ("2s", 2_000),
            ("500ms", 500),
            ("1.5s", 1_500),
            ("1m", 60_000),
            ("1h30m", 5_400_000),
            ("0s", 0),
            ("0.25s", 250),
            ("100us", 1),
            ("7s", 7_000),
            (".5s", 500),
        ] {
            assert_eq!(parse_istio_duration(s), Some(ms), "{s:?}");
        }
        for bad in ["", "10", "-1s", "1d", "s", "1.s.", "1 s", "1.2.3s"] {
            assert_eq!(parse_istio_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn http_route_reads_every_field_and_ignores_unknown_ones() {
        let r: HttpRoute = serde_yaml::from_str(
            r#"
metadata: {name: r, namespace: n}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  unknown: 1
  rules:
  - name: a
    matches: [{path: {type: Exact, value: /x}, headers: [{name: h, value: v}], method: GET}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}, fraction: {numerator: 1}}}]
    backendRefs: [{name: b, port: 8080, weight: 3, filters: [{type: URLRewrite, urlRewrite: {hostname: h}}]}]
    timeouts: {request: 10s}
    retry: {attempts: 3, codes: [503, 504], backoff: 100ms}
  - filters: [{type: ExtensionRef, extensionRef: {group: ambit.dev, kind: FaultInjection, name: f}}]
"#,
        )
        .unwrap();
        let rule = &r.spec.rules[0];
        assert_eq!(r.spec.parent_refs[0].kind.as_deref(), Some("Service"));
        assert_eq!(rule.backend_refs[0].backend.port, Some(8080));
        assert_eq!(rule.backend_refs[0].weight, Some(3));
        assert!(rule.backend_refs[0].filters[0].url_rewrite.is_some());
        assert_eq!(
            rule.filters[0].request_mirror.as_ref().unwrap().fraction,
            Some(Fraction {
                numerator: 1,
                denominator: None
            })
        );
        assert_eq!(
            rule.timeouts.as_ref().unwrap().request.as_deref(),
            Some("10s")
        );
        assert_eq!(
            rule.retry,
            Some(HttpRouteRetry {
                attempts: Some(3),
                codes: vec![503, 504],
                backoff: Some("100ms".into())
            })
        );
        let ext = r.spec.rules[1].filters[0].extension_ref.as_ref().unwrap();
        assert_eq!(
            (ext.group.as_str(), ext.kind.as_str(), ext.name.as_str()),
            ("ambit.dev", "FaultInjection", "f")
        );
    }
}
