//! `tokio_*` metrics of the data plane, with upstream's names: upstream exports its one multi-thread runtime; here
//! each data-plane worker is a runtime of its own, so `worker` is the data-plane worker's index and the gauges are
//! sums over them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::runtime::{Handle, RuntimeMetrics};

#[derive(Debug)]
pub struct RuntimeCollector {
    workers: Vec<RuntimeMetrics>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Worker {
    worker: usize,
}

impl RuntimeCollector {
    /// Registers the metrics of the runtimes of `workers` under the `tokio` prefix.
    pub fn register(registry: &mut Registry, workers: &[Handle]) {
        let workers = workers.iter().map(Handle::metrics).collect();
        registry
            .sub_registry_with_prefix("tokio")
            .register_collector(Box::new(RuntimeCollector { workers }));
    }

    fn gauge(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: usize,
    ) -> std::fmt::Result {
        let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
        g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
    }

    /// One value per worker, as a counter family. Upstream writes the park counts as counter-typed families of
    /// gauge samples (no `_total`) and the busy time as counters (`_total`); `as_counter` chooses which.
    fn per_worker(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        as_counter: bool,
        value: impl Fn(&RuntimeMetrics) -> f64,
    ) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (worker, m) in self.workers.iter().enumerate() {
            let labels = Worker { worker };
            let e = family.encode_family(&labels)?;
            if as_counter {
                ConstCounter::new(value(m)).encode(e)?;
            } else {
                ConstGauge::new(value(m) as i64).encode(e)?;
            }
        }
        Ok(())
    }
}

impl Collector for RuntimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let sum = |f: fn(&RuntimeMetrics) -> usize| self.workers.iter().map(f).sum::<usize>();
        Self::gauge(
            &mut encoder,
            "num_workers",
            "the number of worker threads used by the data plane",
            sum(RuntimeMetrics::num_workers),
        )?;
        Self::gauge(
            &mut encoder,
            "global_queue_depth",
            "the number of tasks currently scheduled in the data plane's global queues",
            sum(RuntimeMetrics::global_queue_depth),
        )?;
        Self::gauge(
            &mut encoder,
            "num_alive_tasks",
            "the number of alive tasks in the data plane",
            sum(RuntimeMetrics::num_alive_tasks),
        )?;
        self.per_worker(
            &mut encoder,
            "worker_total_busy_duration_seconds",
            "the amount of time worker threads have been busy",
            true,
            |m| m.worker_total_busy_duration(0).as_secs_f64(),
        )?;
        self.per_worker(
            &mut encoder,
            "worker_park_count",
            "the total number of times the given worker thread has parked",
            false,
            |m| m.worker_park_count(0) as f64,
        )?;
        self.per_worker(
            &mut encoder,
            "worker_park_unpark_count",
            "the total number of times the given worker thread has parked and unparked",
            false,
            |m| m.worker_park_unpark_count(0) as f64,
        )
    }
}
