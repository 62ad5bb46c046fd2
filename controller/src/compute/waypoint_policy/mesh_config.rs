//! ext_authz providers for CUSTOM AuthorizationPolicies, from Istio's mesh config: the ConfigMap `istio` in the
//! root namespace, key `mesh` (YAML), `extensionProviders[]` of kind `envoyExtAuthzHttp` or `envoyExtAuthzGrpc`
//! (other kinds, and other mesh config fields, are not ours and are ignored). Resolved and validated as istiod's
//! `processExtensionProvider` / `buildExtAuthzHTTP|GRPC` do:
//!
//! * `service`: `name.ns.svc.<suffix>`, or `ns/hostname`, or `ns/name` (short for `name.ns.svc.<suffix>`); it must
//!   be a Service of the index (istiod: "could not find ... in the service registry").
//! * `port`: 1–65535. `timeout`: an Istio duration, default 600s (istiod's `timeoutOrDefault`), always sent
//!   explicitly. `failOpen`, `includeRequestHeadersInCheck` (or the deprecated `includeHeadersInCheck` when it is
//!   unset), `headersToUpstreamOnAllow`, `headersToDownstreamOnDeny`: copied; a lone `*` in the header lists is
//!   refused, as istiod refuses it. `pathPrefix` must start with `/`. `includeRequestBodyInCheck.maxRequestBytes`.
//!
//! A provider with an error is kept with that error, so a CUSTOM policy naming it says why it denies.

use std::collections::BTreeMap;

use ambit_proto::waypoint::ExtAuthzProvider;
use serde::Deserialize;

use super::super::ComputeConfig;
use crate::index::Index;
use crate::sources::routes::parse_istio_duration;

pub const MESH_CONFIG_MAP: &str = "istio";
pub const MESH_KEY: &str = "mesh";
/// istiod's default ext_authz timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 600_000;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshConfigDoc {
    #[serde(default)]
    extension_providers: Vec<ExtensionProviderSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExtensionProviderSpec {
    #[serde(default)]
    name: String,
    #[serde(default)]
    envoy_ext_authz_http: Option<ExtAuthzSpec>,
    #[serde(default)]
    envoy_ext_authz_grpc: Option<ExtAuthzSpec>,
}

/// The fields of both kinds (the gRPC one has no header lists or path prefix; they stay empty).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExtAuthzSpec {
    #[serde(default)]
    service: String,
    #[serde(default)]
    port: i64,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    fail_open: bool,
    #[serde(default)]
    include_request_headers_in_check: Vec<String>,
    #[serde(default)]
    include_headers_in_check: Vec<String>,
    #[serde(default)]
    headers_to_upstream_on_allow: Vec<String>,
    #[serde(default)]
    headers_to_downstream_on_deny: Vec<String>,
    #[serde(default)]
    path_prefix: String,
    #[serde(default)]
    include_request_body_in_check: Option<RequestBodySpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestBodySpec {
    #[serde(default)]
    max_request_bytes: u32,
}

/// The mesh config's ext_authz providers by name (each resolved, or why not).
#[derive(Clone, Debug, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Result<ExtAuthzProvider, String>>,
    /// Why the mesh config could not be read at all.
    error: Option<String>,
    /// `<root>/istio`, for messages.
    source: String,
}

impl Providers {
    pub fn from_index(index: &Index, cfg: &ComputeConfig) -> Self {
        let source = format!("{}/{MESH_CONFIG_MAP}", cfg.root_namespace);
        let mut out = Providers {
            source: source.clone(),
            ..Default::default()
        };
        let key = (cfg.root_namespace.clone(), MESH_CONFIG_MAP.to_owned());
        let Some(text) = index
            .config_maps
            .get(&key)
            .and_then(|cm| cm.data.as_ref())
            .and_then(|d| d.get(MESH_KEY))
        else {
            return out;
        };
        match serde_yaml::from_str::<Option<MeshConfigDoc>>(text) {
            Ok(doc) => {
                for p in doc.unwrap_or_default().extension_providers {
                    let resolved = match (&p.envoy_ext_authz_http, &p.envoy_ext_authz_grpc) {
                        (Some(spec), _) => provider(index, cfg, &p.name, spec, false),
                        (None, Some(spec)) => provider(index, cfg, &p.name, spec, true),
                        (None, None) => continue,
                    };
                    out.by_name.entry(p.name.clone()).or_insert(resolved);
                }
            }
            Err(e) => {
                out.error = Some(format!(
                    "the mesh config ({source}, key {MESH_KEY}) does not parse: {e}"
                ));
            }
        }
        out
    }

    /// The provider named `name`, or why a CUSTOM policy naming it cannot use it.
    pub fn resolve(&self, name: &str) -> Result<ExtAuthzProvider, String> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.by_name.get(name) {
            Some(Ok(p)) => Ok(p.clone()),
            Some(Err(e)) => Err(format!(
                "provider.name: found errors in provider {name:?}: {e}"
            )),
            None => {
                let known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
                Err(format!(
                    "provider.name: {name:?} is not an ext_authz extension provider of the mesh config ({}, key {MESH_KEY}; available: [{}])",
                    self.source,
                    known.join(", ")
                ))
            }
        }
    }
}

/// The Service hostname `service` names, if it is a Service of the index.
fn service_hostname(index: &Index, cfg: &ComputeConfig, service: &str) -> Result<String, String> {
    let suffix = format!(".svc.{}", cfg.domain_suffix);
    let hostname = match service.split_once('/') {
        Some((ns, host)) if !ns.is_empty() && !host.is_empty() && !host.contains('.') => {
            format!("{host}.{ns}{suffix}")
        }
        Some((ns, host)) if !ns.is_empty() && !host.is_empty() => host.to_owned(),
        Some(_) => return Err(format!("service: {service:?} is not ns/name or a hostname")),
        None => service.to_owned(),
    };
    let found = hostname
        .strip_suffix(&suffix)
        .and_then(|rest| rest.split_once('.'))
        .filter(|(_, ns)| !ns.contains('.'))
        .is_some_and(|(name, ns)| {
            index
                .services
                .contains_key(&(ns.to_owned(), name.to_owned()))
        });
    if found {
        Ok(hostname)
    } else {
        Err(format!(
            "service: {service:?}: no Service {hostname} (ext_authz providers must be Kubernetes Services)"
        ))
    }
}

fn provider(
    index: &Index,
    cfg: &ComputeConfig,
    name: &str,
    spec: &ExtAuthzSpec,
    grpc: bool,
) -> Result<ExtAuthzProvider, String> {
    let mut errors = Vec::new();
    let service = service_hostname(index, cfg, &spec.service).unwrap_or_else(|e| {
        errors.push(e);
        String::new()
    });
    let port = match u32::try_from(spec.port) {
        Ok(p @ 1..=65535) => p,
        _ => {
            errors.push(format!(
                "port: must be in the range [1, 65535], found: {}",
                spec.port
            ));
            0
        }
    };
    let timeout_ms = match spec.timeout.as_deref() {
        None => DEFAULT_TIMEOUT_MS,
        Some(t) => parse_istio_duration(t).unwrap_or_else(|| {
            errors.push(format!("timeout: {t:?} is not a duration"));
            0
        }),
    };
    if !spec.path_prefix.is_empty() && !spec.path_prefix.starts_with('/') {
        errors.push(format!(
            "pathPrefix: must begin with `/`, found: {:?}",
            spec.path_prefix
        ));
    }
    let include = if spec.include_request_headers_in_check.is_empty() {
        &spec.include_headers_in_check
    } else {
        &spec.include_request_headers_in_check
    };
    for (field, values) in [
        ("includeRequestHeadersInCheck", include),
        (
            "headersToUpstreamOnAllow",
            &spec.headers_to_upstream_on_allow,
        ),
        (
            "headersToDownstreamOnDeny",
            &spec.headers_to_downstream_on_deny,
        ),
    ] {
        if values.iter().any(|v| v == "*") {
            errors.push(format!(
                "{field}: a single wildcard (\"*\") is not supported, change it to either prefix or suffix match"
            ));
        }
    }
    if name.is_empty() {
        errors.push("name: must not be empty".to_owned());
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    Ok(ExtAuthzProvider {
        name: name.to_owned(),
        service,
        port,
        grpc,
        timeout_ms,
        fail_open: spec.fail_open,
        include_request_headers_in_check: include.clone(),
        headers_to_upstream_on_allow: spec.headers_to_upstream_on_allow.clone(),
        headers_to_downstream_on_deny: spec.headers_to_downstream_on_deny.clone(),
        path_prefix: spec.path_prefix.clone(),
        include_request_body_bytes: spec
            .include_request_body_in_check
            .as_ref()
            .map_or(0, |b| b.max_request_bytes),
    })
}
