//! `workload_certificates{state}`: how many of the tracked identities hold a valid certificate, hold only an
//! expired one (the CA has not renewed it in time: their connections are refused, fail closed), or have none yet.
//! Read from the manager's entries at each scrape, so a certificate that expires between two events still counts
//! as expired at once.

use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::CertManager;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

#[derive(Debug)]
pub(super) struct CertCollector(pub(super) Weak<CertManager>);

impl Collector for CertCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(mgr) = self.0.upgrade() else {
            return Ok(());
        };
        let (mut valid, mut expired, mut pending) = (0i64, 0i64, 0i64);
        for state in mgr.states() {
            match state.cert {
                Some(c) if !c.is_expired() => valid += 1,
                Some(_) => expired += 1,
                None => pending += 1,
            }
        }
        let mut family = encoder.encode_descriptor(
            "workload_certificates",
            "workload identities by the state of their certificate: valid, expired (not renewed in time; their \
             connections are refused) or pending (none issued yet)",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in [("valid", valid), ("expired", expired), ("pending", pending)] {
            ConstGauge::new(n).encode(family.encode_family(&State { state })?)?;
        }
        Ok(())
    }
}
