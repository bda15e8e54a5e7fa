//! `/metrics` in Prometheus' text format (prometheus-client): instances by status,
//! deploy and scheduling latency, cluster reports, the CoAP link's
//! datagrams, retransmissions and refusals.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

type Labels = Vec<(String, String)>;

/// Instances whose deploy is being timed, at most (the oldest go past this).
const TIMED_MAX: usize = 10_000;

/// The root's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    instances: Family<Labels, Gauge>,
    deploy: Histogram,
    schedule: Histogram,
    reports: Family<Labels, Counter>,
    coap: Family<Labels, Counter>,
    /// The CoAP counters as last read (the families count on from them).
    coap_last: Mutex<grove_proto::coap::Stats>,
    /// When each instance was asked for, until it runs.
    asked: Mutex<HashMap<(String, u32), Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("grove");
        let instances = Family::<Labels, Gauge>::default();
        registry.register("instances", "Instances by status", instances.clone());
        // 5 ms to about 80 s.
        let deploy = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        registry.register(
            "deploy_latency_seconds",
            "From an instance asked for to RUNNING",
            deploy.clone(),
        );
        let schedule = Histogram::new(exponential_buckets(0.000_01, 4.0, 10));
        registry.register(
            "schedule_latency_seconds",
            "The root scheduler's time to pick a cluster",
            schedule.clone(),
        );
        let reports = Family::<Labels, Counter>::default();
        registry.register(
            "cluster_reports",
            "Reports received from each cluster",
            reports.clone(),
        );
        let coap = Family::<Labels, Counter>::default();
        registry.register(
            "coap_datagrams",
            "The cluster link's datagrams by kind (in, out, retransmitted, malformed, oscore_rejected, duplicate)",
            coap.clone(),
        );
        Self {
            registry,
            instances,
            deploy,
            schedule,
            reports,
            coap,
            coap_last: Mutex::default(),
            asked: Mutex::default(),
        }
    }
}

fn label(k: &str, v: impl ToString) -> Labels {
    vec![(k.to_owned(), v.to_string())]
}

impl Metrics {
    /// An instance was asked for (its deploy is timed from now).
    pub fn asked(&self, service: &str, number: u32) {
        let mut m = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= TIMED_MAX {
            let cutoff = Instant::now().checked_sub(Duration::from_secs(600));
            m.retain(|_, t| cutoff.is_none_or(|c| *t > c));
            if m.len() >= TIMED_MAX {
                m.clear();
            }
        }
        m.insert((service.to_owned(), number), Instant::now());
    }

    /// An instance reported RUNNING: its deploy latency, if it was being timed.
    pub fn running(&self, service: &str, number: u32) {
        let t = self
            .asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(service.to_owned(), number));
        if let Some(t) = t {
            self.deploy.observe(t.elapsed().as_secs_f64());
        }
    }

    /// The scheduler took `d`.
    pub fn scheduled(&self, d: Duration) {
        self.schedule.observe(d.as_secs_f64());
    }

    /// A report from `cluster`.
    pub fn report(&self, cluster: u32) {
        self.reports.get_or_create(&label("cluster", cluster)).inc();
    }

    /// The text of a scrape: `instances` by status and the link's `stats` as they are
    /// now.
    pub fn render(
        &self,
        instances: &[(String, u64)],
        stats: Option<grove_proto::coap::Stats>,
    ) -> String {
        self.instances.clear();
        for (status, n) in instances {
            self.instances
                .get_or_create(&label("status", status))
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        if let Some(s) = stats {
            let mut last = self.coap_last.lock().unwrap_or_else(|p| p.into_inner());
            for ((kind, now), (_, before)) in s.by_kind().into_iter().zip(last.by_kind()) {
                self.coap
                    .get_or_create(&vec![("kind".to_owned(), kind.to_owned())])
                    .inc_by(now.saturating_sub(before));
            }
            *last = s;
        }
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
