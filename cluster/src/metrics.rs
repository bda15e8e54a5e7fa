//! The cluster's `/metrics` (Prometheus text format, on the optional `--metrics` HTTP
//! port; the agents stay without one): heartbeats received and missed, workers lost, each
//! worker's and each instance's CPU and memory from the heartbeats, instances by
//! status, the worker link's CoAP counters.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The cluster's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    heartbeats: Family<Labels, Counter>,
    missed: Family<Labels, Counter>,
    /// Each worker's last heartbeat sequence number (gaps are heartbeats missed).
    seqs: Mutex<std::collections::HashMap<u32, u32>>,
    lost: Counter,
    node_cpu: Family<Labels, FloatGauge>,
    node_mem: Family<Labels, Gauge>,
    node_mem_total: Family<Labels, Gauge>,
    instance_cpu: Family<Labels, FloatGauge>,
    instance_mem: Family<Labels, Gauge>,
    instances: Family<Labels, Gauge>,
    coap: Family<Labels, Counter>,
    coap_last: Mutex<grove_proto::coap::Stats>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("grove_cluster");
        let heartbeats = Family::<Labels, Counter>::default();
        r.register(
            "heartbeats",
            "Heartbeats received from each worker",
            heartbeats.clone(),
        );
        let missed = Family::<Labels, Counter>::default();
        r.register(
            "heartbeats_missed",
            "Heartbeats of each worker that never arrived (gaps in their sequence numbers)",
            missed.clone(),
        );
        let lost = Counter::default();
        r.register(
            "workers_lost",
            "Workers that missed their heartbeats",
            lost.clone(),
        );
        let node_cpu = Family::<Labels, FloatGauge>::default();
        r.register(
            "node_cpu_percent",
            "A worker's CPU use, percent of all its CPUs",
            node_cpu.clone(),
        );
        let node_mem = Family::<Labels, Gauge>::default();
        r.register(
            "node_memory_used_bytes",
            "A worker's memory in use",
            node_mem.clone(),
        );
        let node_mem_total = Family::<Labels, Gauge>::default();
        r.register(
            "node_memory_bytes",
            "A worker's memory",
            node_mem_total.clone(),
        );
        let instance_cpu = Family::<Labels, FloatGauge>::default();
        r.register(
            "instance_cpu_percent",
            "An instance's CPU use (100: one CPU)",
            instance_cpu.clone(),
        );
        let instance_mem = Family::<Labels, Gauge>::default();
        r.register(
            "instance_memory_used_bytes",
            "An instance's memory in use",
            instance_mem.clone(),
        );
        let instances = Family::<Labels, Gauge>::default();
        r.register(
            "instances",
            "This cluster's instances by status",
            instances.clone(),
        );
        let coap = Family::<Labels, Counter>::default();
        r.register(
            "coap_datagrams",
            "The worker link's datagrams by kind (in, out, retransmitted, malformed, oscore_rejected, duplicate)",
            coap.clone(),
        );
        Self {
            registry: r,
            heartbeats,
            missed,
            seqs: Mutex::default(),
            lost,
            node_cpu,
            node_mem,
            node_mem_total,
            instance_cpu,
            instance_mem,
            instances,
            coap,
            coap_last: Mutex::default(),
        }
    }
}

const MIB: i64 = 1 << 20;

fn node_label(node: u32) -> Labels {
    vec![("node".to_owned(), format!("node-{node}"))]
}

impl Metrics {
    /// A heartbeat of worker `node` (a status report carries no usage: zero memory).
    pub fn heartbeat(&self, node: u32, hb: &grove_proto::msg::Heartbeat) {
        let l = node_label(node);
        self.heartbeats.get_or_create(&l).inc();
        // A status report sent between heartbeats repeats the last number; a
        // restarted worker counts from 0 again.
        let before = self
            .seqs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, hb.seq);
        if let Some(gap) = before
            .and_then(|b| hb.seq.checked_sub(b))
            .filter(|g| *g > 1)
        {
            self.missed.get_or_create(&l).inc_by(u64::from(gap - 1));
        }
        if hb.mem_total_mib == 0 {
            return;
        }
        self.node_cpu
            .get_or_create(&l)
            .set(f64::from(hb.cpu_centi_pct) / 100.0);
        self.node_mem
            .get_or_create(&l)
            .set(i64::from(hb.mem_used_mib) * MIB);
        self.node_mem_total
            .get_or_create(&l)
            .set(i64::from(hb.mem_total_mib) * MIB);
        for u in hb.instances.iter().flatten() {
            let l = vec![
                ("node".to_owned(), format!("node-{node}")),
                ("service".to_owned(), u.instance.service.clone()),
                ("instance".to_owned(), u.instance.instance.to_string()),
            ];
            self.instance_cpu
                .get_or_create(&l)
                .set(f64::from(u.cpu_centi_pct) / 100.0);
            self.instance_mem
                .get_or_create(&l)
                .set(i64::from(u.mem_mib) * MIB);
        }
    }

    /// A worker was found lost (or evicted): its figures go.
    pub fn lost(&self, node: u32) {
        self.lost.inc();
        self.seqs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&node);
        let l = node_label(node);
        for f in [&self.node_mem, &self.node_mem_total] {
            f.remove(&l);
        }
        self.node_cpu.remove(&l);
    }

    /// The text of a scrape: `instances` by status and the link's `stats` now.
    pub fn render(&self, instances: &[String], stats: grove_proto::coap::Stats) -> String {
        self.instances.clear();
        for s in instances {
            self.instances
                .get_or_create(&vec![("status".to_owned(), s.clone())])
                .inc();
        }
        let mut last = self.coap_last.lock().unwrap_or_else(|p| p.into_inner());
        for ((kind, now), (_, before)) in stats.by_kind().into_iter().zip(last.by_kind()) {
            self.coap
                .get_or_create(&vec![("kind".to_owned(), kind.to_owned())])
                .inc_by(now.saturating_sub(before));
        }
        *last = stats;
        drop(last);
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grove_proto::msg::{Heartbeat, NetCoord, NodeId};

    fn hb(seq: u32) -> Heartbeat {
        Heartbeat {
            node: NodeId(1),
            seq,
            cpu_centi_pct: 2500,
            mem_used_mib: 100,
            mem_total_mib: 1000,
            disk_used_mib: 0,
            disk_total_mib: 0,
            running: 0,
            coord: NetCoord([0.0; 3]),
            digest: [0; 8],
            changes: Vec::new(),
            instances: None,
            limits: None,
            changes_from: None,
        }
    }

    #[test]
    fn gaps_in_a_workers_heartbeats_count_as_missed() {
        let m = Metrics::default();
        // 1, 2, then 5 (3 and 4 lost), 5 again (a status report), then 1 (restarted).
        for seq in [1, 2, 5, 5, 1, 2] {
            m.heartbeat(1, &hb(seq));
        }
        let text = m.render(&[], grove_proto::coap::Stats::default());
        assert!(
            text.contains("grove_cluster_heartbeats_missed_total{node=\"node-1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("grove_cluster_heartbeats_total{node=\"node-1\"} 6\n"),
            "{text}"
        );
        assert!(
            text.contains("grove_cluster_node_cpu_percent{node=\"node-1\"} 25.0\n"),
            "{text}"
        );
    }
}
