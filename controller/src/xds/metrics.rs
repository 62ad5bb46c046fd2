//! xDS server metrics, with istiod's names: `pilot_xds` (connected clients), `pilot_xds_pushes{type}`,
//! `pilot_total_xds_rejects{type}`, plus request/auth counters. `type` is istiod's short name (`wds` for
//! Address, `wads` for Authorization).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Default)]
pub struct XdsMetrics {
    pub connected: Gauge,
    pub connections: Counter,
    pub pushes: Family<TypeLabel, Counter>,
    pub rejects: Family<TypeLabel, Counter>,
    pub resources_sent: Family<TypeLabel, Counter>,
    pub auth_failures: Counter,
}

/// istiod's short type name.
pub fn short_type(type_url: &str) -> String {
    match type_url {
        ambit_proto::type_url::ADDRESS => "wds".to_owned(),
        ambit_proto::type_url::AUTHORIZATION => "wads".to_owned(),
        other => other.rsplit('.').next().unwrap_or(other).to_owned(),
    }
}

impl XdsMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = XdsMetrics::default();
        registry.register(
            "pilot_xds",
            "Number of endpoints connected to this controller using xDS",
            m.connected.clone(),
        );
        registry.register(
            "pilot_xds_connections",
            "xDS streams opened",
            m.connections.clone(),
        );
        registry.register(
            "pilot_xds_pushes",
            "xDS responses sent, by type",
            m.pushes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "xDS responses rejected (NACKed) by clients",
            m.rejects.clone(),
        );
        registry.register(
            "pilot_xds_resources_sent",
            "Resources sent in xDS responses",
            m.resources_sent.clone(),
        );
        registry.register(
            "pilot_xds_auth_failures",
            "xDS streams refused for lack of a valid token",
            m.auth_failures.clone(),
        );
        m
    }

    pub fn label(type_url: &str) -> TypeLabel {
        TypeLabel {
            r#type: short_type(type_url),
        }
    }
}
