//! The controller loop: the single writer of the [`Index`]. It applies source events, waits for a quiet moment
//! (debounce, bounded by a maximum delay so a constant trickle still gets pushed), recomputes everything and
//! publishes the results through `watch` channels that the xDS server, the CA and the debug endpoint read.

use std::sync::Arc;
use std::time::Duration;

use ambit_core::drain::DrainWatcher;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::ca::PodDirectory;
use crate::compute::{self, ComputeConfig, Resources};
use crate::index::Index;
use crate::sources::Event;
use crate::status_writer::{Generations, generations};
use crate::xds::Snapshot;

/// Receivers for everything the loop publishes.
#[derive(Clone)]
pub struct Outputs {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub pods: watch::Receiver<Arc<PodDirectory>>,
    pub resources: watch::Receiver<Arc<Resources>>,
    /// `metadata.generation` of the objects in `resources.status` (for the status writer's `observedGeneration`);
    /// published just before `resources`.
    pub generations: watch::Receiver<Arc<Generations>>,
    /// True once every source finished its initial listing and the first result was published.
    pub ready: watch::Receiver<bool>,
}

pub struct Controller {
    cfg: ComputeConfig,
    debounce: Duration,
    max_delay: Duration,
    sources: usize,
    snapshot: watch::Sender<Arc<Snapshot>>,
    pods: watch::Sender<Arc<PodDirectory>>,
    resources: watch::Sender<Arc<Resources>>,
    generations: watch::Sender<Arc<Generations>>,
    ready: watch::Sender<bool>,
}

impl Controller {
    /// `sources`: how many sources feed the loop (each must send `InitDone`).
    pub fn new(cfg: ComputeConfig, sources: usize, debounce: Duration) -> (Controller, Outputs) {
        let (snapshot, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
        let (pods, pods_rx) = watch::channel(Arc::new(PodDirectory::default()));
        let (resources, resources_rx) = watch::channel(Arc::new(Resources::default()));
        let (generations, generations_rx) = watch::channel(Arc::new(Generations::default()));
        let (ready, ready_rx) = watch::channel(false);
        let c = Controller {
            cfg,
            debounce,
            max_delay: debounce * 10,
            sources,
            snapshot,
            pods,
            resources,
            generations,
            ready,
        };
        (
            c,
            Outputs {
                snapshot: snapshot_rx,
                pods: pods_rx,
                resources: resources_rx,
                generations: generations_rx,
                ready: ready_rx,
            },
        )
    }

    /// Runs until drained or until every source is gone.
    pub async fn run(self, mut events: mpsc::Receiver<Event>, mut drain: DrainWatcher) {
        let mut index = Index::default();
        let mut pending_init = self.sources;
        let mut generation = 0u64;
        let mut dirty = false;
        let mut first_change: Option<Instant> = None;
        loop {
            let deadline =
                first_change.map(|f| (Instant::now() + self.debounce).min(f + self.max_delay));
            tokio::select! {
                _ = drain.signaled() => return,
                ev = events.recv() => {
                    let Some(ev) = ev else { return };
                    if ev == Event::InitDone {
                        pending_init = pending_init.saturating_sub(1);
                        if pending_init == 0 {
                            index.synced = true;
                            dirty = true;
                        }
                    } else if index.apply(ev) {
                        dirty = true;
                    }
                    if dirty && pending_init == 0 && first_change.is_none() {
                        first_change = Some(Instant::now());
                    }
                    continue;
                }
                _ = sleep_until(deadline) => {}
            }
            if !dirty {
                first_change = None;
                continue;
            }
            dirty = false;
            first_change = None;
            generation += 1;
            let started = std::time::Instant::now();
            let resources = compute::compute(&index, &self.cfg);
            let prev = self.snapshot.borrow().clone();
            let snap = Snapshot::next(&prev, generation, &resources);
            tracing::info!(
                generation,
                addresses = resources.addresses.len(),
                authorizations = resources.authorizations.len(),
                routes = resources.routes.len(),
                compute.ms = started.elapsed().as_millis() as u64,
                "computed new state"
            );
            self.pods
                .send_replace(Arc::new(PodDirectory::from_index(&index)));
            self.generations
                .send_replace(Arc::new(generations(&index, &resources.status)));
            self.resources.send_replace(Arc::new(resources));
            self.snapshot.send_replace(Arc::new(snap));
            self.ready.send_replace(true);
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::sources::{Document, Object, parse_document};

    fn pod(name: &str) -> Object {
        let y = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: n}}\nstatus: {{podIP: 10.0.0.1}}\n"
        );
        match parse_document(serde_yaml::from_str(&y).unwrap()).unwrap() {
            Document::Object(o) => o,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_init_then_debounces_bursts_into_one_publish() {
        let (c, mut out) = Controller::new(ComputeConfig::default(), 1, Duration::from_millis(100));
        let (tx, rx) = mpsc::channel(16);
        let (_trigger, drain) = ambit_core::drain::new();
        tokio::spawn(c.run(rx, drain));
        tx.send(Event::Apply(pod("a"))).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!*out.ready.borrow(), "not ready before InitDone");
        tx.send(Event::InitDone).await.unwrap();
        out.snapshot.changed().await.unwrap();
        assert_eq!(out.snapshot.borrow().generation, 1);
        assert!(*out.ready.borrow());
        // A burst of three changes becomes one new generation.
        for n in ["b", "c", "d"] {
            tx.send(Event::Apply(pod(n))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        out.snapshot.changed().await.unwrap();
        let snap = out.snapshot.borrow_and_update().clone();
        assert_eq!(snap.generation, 2);
        assert_eq!(snap.types[ambit_proto::type_url::ADDRESS].len(), 4);
        assert_eq!(out.pods.borrow().pods.len(), 4);
        // An event that changes nothing publishes nothing.
        tx.send(Event::Apply(pod("d"))).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!out.snapshot.has_changed().unwrap());
    }
}
