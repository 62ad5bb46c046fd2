//! Where objects come from. A [`Source`] emits [`Event`]s modelled on kube-rs watcher events (`Apply`, `Delete`,
//! `InitDone`): [`kube::KubeSource`] watches the Kubernetes API, [`manifest::ManifestSource`] a manifest directory,
//! and the rest of the controller cannot tell them apart.

pub mod ambit;
pub mod entries;
pub mod istio;
pub mod kube;
pub mod manifest;
pub mod reference_grant;
pub mod routes;
pub mod types;

use std::fmt;

use ambit_core::drain::DrainWatcher;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use tokio::sync::mpsc;

pub use ambit::{FaultInjection, RateLimitPolicy};
pub use entries::{ServiceEntry, WorkloadEntry};
pub use istio::{DestinationRule, VirtualService};
pub use reference_grant::ReferenceGrant;
pub use routes::{GrpcRoute, HttpRoute, TcpRoute};
pub use types::{AuthorizationPolicy, Gateway, PeerAuthentication, RequestAuthentication};

/// The kinds of object the controller understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    Gateway,
    HttpRoute,
    GrpcRoute,
    TcpRoute,
    AuthorizationPolicy,
    PeerAuthentication,
    VirtualService,
    DestinationRule,
    FaultInjection,
    ConfigMap,
    RequestAuthentication,
    RateLimitPolicy,
    ServiceEntry,
    WorkloadEntry,
    ReferenceGrant,
}

impl Kind {
    /// The kind for an `apiVersion`/`kind` pair, or `None` when the controller does not use it.
    pub fn from_type_meta(api_version: &str, kind: &str) -> Option<Kind> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let version = api_version.rsplit('/').next().unwrap_or(api_version);
        match (group, version, kind) {
            ("", "v1", "Namespace") => Some(Kind::Namespace),
            ("", "v1", "Pod") => Some(Kind::Pod),
            ("", "v1", "Service") => Some(Kind::Service),
            ("", "v1", "ServiceAccount") => Some(Kind::ServiceAccount),
            ("gateway.networking.k8s.io", "v1" | "v1beta1", "Gateway") => Some(Kind::Gateway),
            ("gateway.networking.k8s.io", "v1" | "v1beta1", "HTTPRoute") => Some(Kind::HttpRoute),
            ("gateway.networking.k8s.io", "v1" | "v1alpha2", "GRPCRoute") => Some(Kind::GrpcRoute),
            ("gateway.networking.k8s.io", "v1alpha2", "TCPRoute") => Some(Kind::TcpRoute),
            ("gateway.networking.k8s.io", "v1" | "v1beta1", "ReferenceGrant") => {
                Some(Kind::ReferenceGrant)
            }
            ("security.istio.io", "v1" | "v1beta1", "AuthorizationPolicy") => {
                Some(Kind::AuthorizationPolicy)
            }
            ("security.istio.io", "v1" | "v1beta1", "PeerAuthentication") => {
                Some(Kind::PeerAuthentication)
            }
            ("networking.istio.io", "v1" | "v1beta1" | "v1alpha3", "VirtualService") => {
                Some(Kind::VirtualService)
            }
            ("networking.istio.io", "v1" | "v1beta1" | "v1alpha3", "DestinationRule") => {
                Some(Kind::DestinationRule)
            }
            ("networking.istio.io", "v1" | "v1beta1" | "v1alpha3", "ServiceEntry") => {
                Some(Kind::ServiceEntry)
            }
            ("networking.istio.io", "v1" | "v1beta1" | "v1alpha3", "WorkloadEntry") => {
                Some(Kind::WorkloadEntry)
            }
            ("ambit.dev", "v1alpha1", "FaultInjection") => Some(Kind::FaultInjection),
            ("ambit.dev", "v1alpha1", "RateLimitPolicy") => Some(Kind::RateLimitPolicy),
            ("", "v1", "ConfigMap") => Some(Kind::ConfigMap),
            ("security.istio.io", "v1" | "v1beta1", "RequestAuthentication") => {
                Some(Kind::RequestAuthentication)
            }
            _ => None,
        }
    }

    pub fn namespaced(self) -> bool {
        self != Kind::Namespace
    }
}

/// Identifies one object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{:?}/{}", self.kind, self.name)
        } else {
            write!(f, "{:?}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A typed object.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Box<core::Namespace>),
    Pod(Box<core::Pod>),
    Service(Box<core::Service>),
    ServiceAccount(Box<core::ServiceAccount>),
    Gateway(Box<Gateway>),
    HttpRoute(Box<HttpRoute>),
    GrpcRoute(Box<GrpcRoute>),
    TcpRoute(Box<TcpRoute>),
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    PeerAuthentication(Box<PeerAuthentication>),
    VirtualService(Box<VirtualService>),
    DestinationRule(Box<DestinationRule>),
    FaultInjection(Box<FaultInjection>),
    ConfigMap(Box<core::ConfigMap>),
    RequestAuthentication(Box<RequestAuthentication>),
    RateLimitPolicy(Box<RateLimitPolicy>),
    ServiceEntry(Box<ServiceEntry>),
    WorkloadEntry(Box<WorkloadEntry>),
    ReferenceGrant(Box<ReferenceGrant>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::ServiceAccount(_) => Kind::ServiceAccount,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::TcpRoute(_) => Kind::TcpRoute,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::PeerAuthentication(_) => Kind::PeerAuthentication,
            Object::VirtualService(_) => Kind::VirtualService,
            Object::DestinationRule(_) => Kind::DestinationRule,
            Object::FaultInjection(_) => Kind::FaultInjection,
            Object::ConfigMap(_) => Kind::ConfigMap,
            Object::RequestAuthentication(_) => Kind::RequestAuthentication,
            Object::RateLimitPolicy(_) => Kind::RateLimitPolicy,
            Object::ServiceEntry(_) => Kind::ServiceEntry,
            Object::WorkloadEntry(_) => Kind::WorkloadEntry,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::GrpcRoute(o) => &o.metadata,
            Object::TcpRoute(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
            Object::VirtualService(o) => &o.metadata,
            Object::DestinationRule(o) => &o.metadata,
            Object::FaultInjection(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::RequestAuthentication(o) => &o.metadata,
            Object::RateLimitPolicy(o) => &o.metadata,
            Object::ServiceEntry(o) => &o.metadata,
            Object::WorkloadEntry(o) => &o.metadata,
            Object::ReferenceGrant(o) => &o.metadata,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        ObjectKey {
            kind: self.kind(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// What a source reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The object was created or changed (the full new state).
    Apply(Object),
    /// The object is gone.
    Delete(ObjectKey),
    /// The initial listing is complete: everything that existed at start has been applied.
    InitDone,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("watching {path}: {source}")]
    Watch { path: String, source: notify::Error },
    #[error("the event receiver is gone")]
    Closed,
}

/// Produces events until it is drained. It sends `InitDone` exactly once, after the initial state.
#[async_trait::async_trait]
pub trait Source: Send + 'static {
    async fn run(
        self: Box<Self>,
        tx: mpsc::Sender<Event>,
        drain: DrainWatcher,
    ) -> Result<(), SourceError>;
}

/// Why one YAML document could not become an object.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("missing apiVersion or kind")]
    NoType,
    #[error("missing metadata.name")]
    NoName,
    #[error("invalid {kind:?}: {source}")]
    Invalid {
        kind: Kind,
        source: serde_yaml::Error,
    },
}

/// The outcome of reading one document.
#[derive(Debug)]
pub enum Document {
    Object(Object),
    /// A kind the controller does not use (`apiVersion`, `kind`).
    Unknown(String, String),
    /// An empty document (e.g. a trailing `---`).
    Empty,
}

/// Converts one parsed YAML document into a typed object. Namespaced objects without a namespace land in
/// `default`, as with `kubectl apply`.
pub fn parse_document(value: serde_yaml::Value) -> Result<Document, DocumentError> {
    let value = without_tags(value);
    if value.is_null() {
        return Ok(Document::Empty);
    }
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .ok_or(DocumentError::NoType)?;
    let kind_str = value
        .get("kind")
        .and_then(|v| v.as_str())
        .ok_or(DocumentError::NoType)?;
    let Some(kind) = Kind::from_type_meta(api_version, kind_str) else {
        return Ok(Document::Unknown(
            api_version.to_owned(),
            kind_str.to_owned(),
        ));
    };
    let invalid = |source| DocumentError::Invalid { kind, source };
    let mut obj = match kind {
        Kind::Namespace => {
            Object::Namespace(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
        Kind::Pod => Object::Pod(Box::new(serde_yaml::from_value(value).map_err(invalid)?)),
        Kind::Service => Object::Service(Box::new(serde_yaml::from_value(value).map_err(invalid)?)),
        Kind::ServiceAccount => {
            Object::ServiceAccount(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
        Kind::Gateway => Object::Gateway(Box::new(serde_yaml::from_value(value).map_err(invalid)?)),
        Kind::HttpRoute => {
            Object::HttpRoute(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
        Kind::GrpcRoute => {
            Object::GrpcRoute(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
        Kind::TcpRoute => {
            Object::TcpRoute(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
        Kind::AuthorizationPolicy => {
            Object::AuthorizationPolicy(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
        Kind::PeerAuthentication => {
            Object::PeerAuthentication(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
        Kind::VirtualService => {
            Object::VirtualService(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
        Kind::DestinationRule => {
            Object::DestinationRule(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
        Kind::FaultInjection => {
            Object::FaultInjection(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
        Kind::ConfigMap => {
            Object::ConfigMap(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
        Kind::RequestAuthentication => {
            Object::RequestAuthentication(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
        Kind::RateLimitPolicy => {
            Object::RateLimitPolicy(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
        Kind::ServiceEntry => {
            Object::ServiceEntry(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
        Kind::WorkloadEntry => {
            Object::WorkloadEntry(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
        Kind::ReferenceGrant => {
            Object::ReferenceGrant(Box::new(serde_yaml::from_value(value).map_err(invalid)?))
        }
    };
    if obj
        .metadata()
        .name
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        return Err(DocumentError::NoName);
    }
    let meta = match &mut obj {
        Object::Namespace(o) => &mut o.metadata,
        Object::Pod(o) => &mut o.metadata,
        Object::Service(o) => &mut o.metadata,
        Object::ServiceAccount(o) => &mut o.metadata,
        Object::Gateway(o) => &mut o.metadata,
        Object::HttpRoute(o) => &mut o.metadata,
        Object::GrpcRoute(o) => &mut o.metadata,
        Object::TcpRoute(o) => &mut o.metadata,
        Object::AuthorizationPolicy(o) => &mut o.metadata,
        Object::PeerAuthentication(o) => &mut o.metadata,
        Object::VirtualService(o) => &mut o.metadata,
        Object::DestinationRule(o) => &mut o.metadata,
        Object::FaultInjection(o) => &mut o.metadata,
        Object::ConfigMap(o) => &mut o.metadata,
        Object::RequestAuthentication(o) => &mut o.metadata,
        Object::RateLimitPolicy(o) => &mut o.metadata,
        Object::ServiceEntry(o) => &mut o.metadata,
        Object::WorkloadEntry(o) => &mut o.metadata,
        Object::ReferenceGrant(o) => &mut o.metadata,
    };
    if kind.namespaced() {
        if meta.namespace.as_deref().unwrap_or_default().is_empty() {
            meta.namespace = Some("default".to_owned());
        }
    } else {
        meta.namespace = None;
    }
    Ok(Document::Object(obj))
}

/// The key a document would have, read leniently from the untyped YAML (used to keep the last good state of an
/// object whose new version does not parse).
pub fn document_key(value: &serde_yaml::Value) -> Option<ObjectKey> {
    // Through YAML tags, as [`parse_document`] reads the document.
    fn get<'a>(v: &'a serde_yaml::Value, key: &str) -> Option<&'a serde_yaml::Value> {
        let serde_yaml::Value::Mapping(m) = untagged(v) else {
            return None;
        };
        // The last one: keys that differ only by their tags are one key once the tags go, and the later wins.
        m.iter()
            .filter(|(k, _)| untagged(k).as_str() == Some(key))
            .last()
            .map(|(_, v)| untagged(v))
    }
    let kind = Kind::from_type_meta(
        get(value, "apiVersion")?.as_str()?,
        get(value, "kind")?.as_str()?,
    )?;
    let meta = get(value, "metadata")?;
    let name = get(meta, "name")?.as_str()?.to_owned();
    let namespace = if kind.namespaced() {
        get(meta, "namespace")
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_owned()
    } else {
        String::new()
    };
    Some(ObjectKey {
        kind,
        namespace,
        name,
    })
}

/// `v` without the YAML tag(s) on it.
fn untagged(v: &serde_yaml::Value) -> &serde_yaml::Value {
    match v {
        serde_yaml::Value::Tagged(t) => untagged(&t.value),
        v => v,
    }
}

/// `v` with every YAML tag dropped: a tag means nothing in a Kubernetes manifest (kubectl's YAML-to-JSON step
/// drops them too), and a tagged map or string would otherwise read as another type here and there.
fn without_tags(v: serde_yaml::Value) -> serde_yaml::Value {
    use serde_yaml::Value;
    match v {
        Value::Tagged(t) => without_tags(t.value),
        Value::Sequence(s) => Value::Sequence(s.into_iter().map(without_tags).collect()),
        Value::Mapping(m) => Value::Mapping(
            m.into_iter()
                .map(|(k, v)| (without_tags(k), without_tags(v)))
                .collect(),
        ),
        v => v,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Found by the `controller_manifest` fuzzer: `metadata` behind a YAML tag parsed (the typed read sees
    /// through it) while [`document_key`] found no key, so a broken later version of such a document would not
    /// have kept the last good one. Tags on any part now read as if absent, on both paths.
    #[test]
    fn yaml_tags_are_read_through_on_both_paths() {
        for text in [
            "apiVersion: ambit.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n ! name: d\n",
            "apiVersion: v1\nkind: Pod\nmetadata: !meta {name: !n d, namespace: !ns default}\n",
            "!doc {apiVersion: !a v1, kind: !k Pod, metadata: {name: d}}\n",
            "apiVersion: v1\nkind: Pod\nmetadata: {!x name: other, name: d}\n",
        ] {
            let value: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
            let key = document_key(&value);
            let Ok(Document::Object(o)) = parse_document(value) else {
                panic!("does not parse: {text}")
            };
            assert_eq!(key, Some(o.key()), "{text}");
            assert_eq!(
                (o.key().namespace.as_str(), o.key().name.as_str()),
                ("default", "d")
            );
        }
    }

    fn doc(s: &str) -> Result<Document, DocumentError> {
        parse_document(serde_yaml::from_str(s).unwrap())
    }

    #[test]
    fn pod_defaults_to_default_namespace() {
        let Document::Object(o) = doc("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n").unwrap()
        else {
            panic!("not an object")
        };
        assert_eq!(
            o.key(),
            ObjectKey {
                kind: Kind::Pod,
                namespace: "default".into(),
                name: "a".into()
            }
        );
    }

    #[test]
    fn accepts_v1beta1_security_and_ignores_unknown() {
        let d = doc("apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: x}\nspec: {mtls: {mode: STRICT}}\n").unwrap();
        assert!(matches!(d, Document::Object(Object::PeerAuthentication(_))));
        for v in ["v1", "v1beta1", "v1alpha3"] {
            let d = doc(&format!("apiVersion: networking.istio.io/{v}\nkind: VirtualService\nmetadata: {{name: r}}\nspec: {{hosts: [r]}}\n")).unwrap();
            assert!(
                matches!(d, Document::Object(Object::VirtualService(_))),
                "{v}"
            );
            let d = doc(&format!("apiVersion: networking.istio.io/{v}\nkind: DestinationRule\nmetadata: {{name: r}}\nspec: {{host: r}}\n")).unwrap();
            assert!(
                matches!(d, Document::Object(Object::DestinationRule(_))),
                "{v}"
            );
        }
        let d = doc("apiVersion: ambit.dev/v1alpha1\nkind: FaultInjection\nmetadata: {name: f}\nspec: {abort: {httpStatus: 503}}\n").unwrap();
        assert!(
            matches!(&d, Document::Object(o @ Object::FaultInjection(_)) if o.key().namespace == "default")
        );
        for (api, kind) in [
            ("security.istio.io/v1", "RequestAuthentication"),
            ("security.istio.io/v1beta1", "RequestAuthentication"),
            ("ambit.dev/v1alpha1", "RateLimitPolicy"),
            ("v1", "ConfigMap"),
        ] {
            let d = doc(&format!(
                "apiVersion: {api}\nkind: {kind}\nmetadata: {{name: x}}\n"
            ))
            .unwrap();
            assert!(
                matches!(&d, Document::Object(o) if format!("{:?}", o.kind()) == kind),
                "{api} {kind}"
            );
        }
        let d = doc("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n").unwrap();
        assert!(matches!(d, Document::Unknown(_, k) if k == "Deployment"));
        // A Pod from the wrong group is not a Pod.
        let d = doc("apiVersion: example.com/v1\nkind: Pod\nmetadata: {name: d}\n").unwrap();
        assert!(matches!(d, Document::Unknown(..)));
    }

    #[test]
    fn rejects_bad_field_types_and_missing_names() {
        assert!(matches!(
            doc("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: 3}\n"),
            Err(DocumentError::Invalid {
                kind: Kind::Service,
                ..
            })
        ));
        assert!(matches!(
            doc("apiVersion: v1\nkind: Pod\nmetadata: {}\n"),
            Err(DocumentError::NoName)
        ));
        assert!(matches!(doc("kind: Pod\n"), Err(DocumentError::NoType)));
    }
}
