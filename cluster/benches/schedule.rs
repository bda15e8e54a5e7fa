//! `cargo bench -p grove-cluster`: one placement among 10 to 10,000 workers.
//! Target: under 1 ms among 1,000. Reports the median and p99 of many runs.

use grove_cluster::scheduler::{Demand, NodeView, Resources, schedule};
use grove_proto::msg::{GeoPoint, NetCoord, NodeId};
use std::time::Instant;

fn fleet(n: u32) -> Vec<NodeView> {
    (0..n)
        .map(|i| NodeView {
            id: NodeId(i + 1),
            name: format!("node-{i}"),
            active: i % 17 != 0,
            arch: if i % 3 == 0 {
                "aarch64".into()
            } else {
                "x86_64".into()
            },
            virtualizations: vec!["container".into()],
            location: Some(GeoPoint {
                lat: 40.0 + (i % 100) as f32 * 0.1,
                lon: 10.0 + (i % 37) as f32 * 0.1,
            }),
            coord: Some(NetCoord([(i % 50) as f32, (i % 7) as f32, 1.0])),
            capacity: Resources {
                millicpus: 4000,
                memory_mib: 4096,
                vgpus: 0,
            },
            reserved: Resources {
                millicpus: (i * 37) % 4000,
                memory_mib: (i * 53) % 4096,
                vgpus: 0,
            },
            same_service: i % 3,
            ports: vec![],
            limits: None,
        })
        .collect()
}

fn main() {
    let d = Demand {
        resources: Resources {
            millicpus: 500,
            memory_mib: 256,
            vgpus: 0,
        },
        virtualization: "container".into(),
        arch: vec![],
        constraints: vec![],
        ports: vec![],
        storage_mib: 0,
    };
    println!(
        "{:>7} {:>12} {:>12} {:>6}",
        "nodes", "median µs", "p99 µs", "runs"
    );
    for n in [10u32, 100, 1_000, 10_000] {
        let nodes = fleet(n);
        let runs = if n >= 10_000 { 200 } else { 2_000 };
        let mut t: Vec<f64> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                let r = schedule(std::hint::black_box(&nodes), std::hint::black_box(&d));
                let e = start.elapsed().as_secs_f64() * 1e6;
                assert!(r.is_ok());
                e
            })
            .collect();
        t.sort_by(f64::total_cmp);
        println!(
            "{n:>7} {:>12.1} {:>12.1} {runs:>6}",
            t[runs / 2],
            t[runs * 99 / 100]
        );
    }
}
