//! The cluster scheduler: picks a worker for one instance. A pure function over a
//! snapshot of the nodes; the caller does the I/O.
//!
//! Filters, in order, each with its failure reason:
//! 1. a `direct` node list (`node1;node2`) names known workers — else `NO_NODE_FOUND`;
//! 2. virtualization, architecture, `geo` (great-circle km to a location) and `latency`
//!    (estimated RTT from network coordinates to a target) — else
//!    `NO_QUALIFIED_WORKER_FOUND`;
//! 3. free CPU, memory and GPUs after the reservations of what is placed there (not
//!    the reported usage), and the host ports of its port mappings free there — else
//!    `NO_WORKER_CAPACITY`.
//!
//! Among the workers left, replicas of one service spread (fewest instances of the
//! service first), then best fit on CPU and memory together, then the lower node id.

use grove_proto::msg::{GeoPoint, NetCoord, NodeId, WorkerLimits};
use grove_proto::ports::Protocol;
pub use grove_proto::util::distance_km;
use grove_proto::vivaldi;

/// What the cluster knows of one worker when it schedules.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// Id.
    pub id: NodeId,
    /// Name (`direct` constraints list names).
    pub name: String,
    /// Heartbeating (not lost).
    pub active: bool,
    /// CPU architecture.
    pub arch: String,
    /// Virtualizations it runs.
    pub virtualizations: Vec<String>,
    /// Where it is.
    pub location: Option<GeoPoint>,
    /// Its network coordinate.
    pub coord: Option<NetCoord>,
    /// Capacity: CPU in thousandths, memory MiB, GPUs.
    pub capacity: Resources,
    /// Reserved by the instances placed on it.
    pub reserved: Resources,
    /// How many instances of the service being placed it already holds.
    pub same_service: u32,
    /// Host ports its instances have mapped.
    pub ports: Vec<(u16, Protocol)>,
    /// Its defaults, the limits it cannot enforce and the host ports it maps (none
    /// from older agents: no defaults, everything enforced, any port).
    pub limits: Option<WorkerLimits>,
}

/// CPU, memory and GPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in thousandths.
    pub millicpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// GPUs.
    pub vgpus: u32,
}

/// A placement constraint on workers.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Only these workers (by name).
    Nodes(Vec<String>),
    /// Within `threshold_km` of `location`.
    Geo {
        /// The point.
        location: GeoPoint,
        /// Radius in km.
        threshold_km: f64,
    },
    /// Estimated RTT at most `threshold_ms` to the nearest of `targets` (the
    /// coordinates of a user location's nearest worker, or of another service's
    /// instances).
    Latency {
        /// Coordinates to be near.
        targets: Vec<NetCoord>,
        /// Milliseconds.
        threshold_ms: f32,
    },
}

/// What one instance needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    /// Resources.
    pub resources: Resources,
    /// `container` or `unikernel`.
    pub virtualization: String,
    /// Acceptable architectures; empty means any.
    pub arch: Vec<String>,
    /// Constraints, all of which must hold.
    pub constraints: Vec<Constraint>,
    /// Host ports it maps (a worker's resource: one user each).
    pub ports: Vec<(u16, Protocol)>,
    /// Its writable layer, MiB (0: the worker's default).
    pub storage_mib: u32,
}

/// Why no worker was chosen: Oakestra's reasons, kept verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A `direct` node list names no known worker.
    NoNodeFound,
    /// No worker passes the qualification filters.
    NoQualifiedWorkerFound,
    /// Qualified workers exist but none has room.
    NoWorkerCapacity,
}

impl Failure {
    /// As Oakestra writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoNodeFound => "NO_NODE_FOUND",
            Self::NoQualifiedWorkerFound => "NO_QUALIFIED_WORKER_FOUND",
            Self::NoWorkerCapacity => "NO_WORKER_CAPACITY",
        }
    }
}

/// What an instance of `want` takes on worker `n`: where the SLA sets no CPU or
/// memory, the worker's defaults (its container runs within them).
pub fn on_worker(n: Option<&WorkerLimits>, want: Resources) -> Resources {
    let or = |v: u32, d: Option<u32>| if v == 0 { d.unwrap_or(0) } else { v };
    Resources {
        millicpus: or(want.millicpus, n.map(|l| l.default_millicpus)),
        memory_mib: or(want.memory_mib, n.map(|l| l.default_memory_mib)),
        vgpus: want.vgpus,
    }
}

/// Why worker `n` cannot run `d` as asked, if it cannot: a limit `d` sets that the
/// worker cannot enforce, or a host port it does not map.
pub fn refusal(n: &NodeView, d: &Demand) -> Option<String> {
    let l = n.limits.as_ref()?;
    for (what, set) in [
        ("memory", d.resources.memory_mib > 0),
        ("cpu", d.resources.millicpus > 0),
        ("storage", d.storage_mib > 0),
    ] {
        if set && !l.enforces(what) {
            return Some(format!(
                "worker {} cannot enforce a {what} limit (its kernel or disk lacks what it takes)",
                n.name
            ));
        }
    }
    d.ports
        .iter()
        .find_map(|(p, _)| l.refuses_port(*p))
        .map(|why| format!("worker {}: {why}", n.name))
}

/// Why no worker qualified for `d` when limits or host ports were the reason: the
/// first such worker's refusal.
pub fn why_unqualified(nodes: &[NodeView], d: &Demand) -> Option<String> {
    nodes
        .iter()
        .filter(|n| n.active && base_qualifies(n, d))
        .find_map(|n| refusal(n, d))
}

fn qualifies(n: &NodeView, d: &Demand) -> bool {
    base_qualifies(n, d) && refusal(n, d).is_none()
}

fn base_qualifies(n: &NodeView, d: &Demand) -> bool {
    n.virtualizations.contains(&d.virtualization)
        && (d.arch.is_empty() || d.arch.contains(&n.arch))
        && d.constraints.iter().all(|c| match c {
            Constraint::Nodes(_) => true,
            Constraint::Geo {
                location,
                threshold_km,
            } => n
                .location
                .is_some_and(|l| distance_km(*location, l) <= *threshold_km),
            Constraint::Latency {
                targets,
                threshold_ms,
            } => n.coord.is_some_and(|c| {
                targets
                    .iter()
                    .any(|t| vivaldi::distance(c, *t) <= *threshold_ms)
            }),
        })
}

/// The spare fraction the node keeps after the instance (lower is a better fit), or
/// `None` if it does not fit.
fn fit(n: &NodeView, want: Resources) -> Option<f64> {
    let free = |cap: u32, res: u32| cap.saturating_sub(res);
    let (cpu, mem, gpu) = (
        free(n.capacity.millicpus, n.reserved.millicpus),
        free(n.capacity.memory_mib, n.reserved.memory_mib),
        free(n.capacity.vgpus, n.reserved.vgpus),
    );
    if cpu < want.millicpus || mem < want.memory_mib || gpu < want.vgpus {
        return None;
    }
    let spare = |f: u32, w: u32| {
        if f == 0 {
            0.0
        } else {
            f64::from(f - w) / f64::from(f)
        }
    };
    Some((spare(cpu, want.millicpus) + spare(mem, want.memory_mib)) / 2.0)
}

/// Pick the worker for one instance.
pub fn schedule(nodes: &[NodeView], d: &Demand) -> Result<NodeId, Failure> {
    let listed = d.constraints.iter().find_map(|c| match c {
        Constraint::Nodes(names) => Some(names),
        _ => None,
    });
    if let Some(names) = listed {
        if !nodes.iter().any(|n| names.contains(&n.name)) {
            return Err(Failure::NoNodeFound);
        }
    }
    let mut any_qualified = false;
    let mut best: Option<(u32, f64, NodeId)> = None;
    for n in nodes {
        if !n.active || listed.is_some_and(|names| !names.contains(&n.name)) || !qualifies(n, d) {
            continue;
        }
        any_qualified = true;
        if d.ports.iter().any(|p| n.ports.contains(p)) {
            continue;
        }
        let Some(score) = fit(n, on_worker(n.limits.as_ref(), d.resources)) else {
            continue;
        };
        let key = (n.same_service, score, n.id);
        let better = best.is_none_or(|b| {
            (key.0
                .cmp(&b.0)
                .then(key.1.total_cmp(&b.1))
                .then(key.2.cmp(&b.2)))
                == std::cmp::Ordering::Less
        });
        if better {
            best = Some(key);
        }
    }
    match best {
        Some((_, _, id)) => Ok(id),
        None if any_qualified => Err(Failure::NoWorkerCapacity),
        None => Err(Failure::NoQualifiedWorkerFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u32, name: &str, arch: &str, cpu: u32, mem: u32) -> NodeView {
        NodeView {
            id: NodeId(id),
            name: name.into(),
            active: true,
            arch: arch.into(),
            virtualizations: vec!["container".into()],
            location: None,
            coord: None,
            capacity: Resources {
                millicpus: cpu,
                memory_mib: mem,
                vgpus: 0,
            },
            reserved: Resources::default(),
            same_service: 0,
            ports: vec![],
            limits: None,
        }
    }

    fn demand(cpu: u32, mem: u32) -> Demand {
        Demand {
            resources: Resources {
                millicpus: cpu,
                memory_mib: mem,
                vgpus: 0,
            },
            virtualization: "container".into(),
            arch: vec![],
            constraints: vec![],
            ports: vec![],
            storage_mib: 0,
        }
    }

    #[test]
    fn a_host_port_in_use_on_a_worker_sends_the_instance_elsewhere() {
        let mut a = node(1, "a", "x86_64", 8000, 8000);
        let b = node(2, "b", "x86_64", 2000, 2000);
        a.ports = vec![(6080, Protocol::Tcp)];
        let mut d = demand(500, 100);
        d.ports = vec![(6080, Protocol::Tcp)];
        assert_eq!(schedule(&[a.clone(), b.clone()], &d), Ok(NodeId(2)));
        // The same port over UDP is another resource.
        d.ports = vec![(6080, Protocol::Udp)];
        assert_eq!(schedule(&[a.clone()], &d), Ok(NodeId(1)));
        d.ports = vec![(6080, Protocol::Tcp)];
        assert_eq!(schedule(&[a], &d), Err(Failure::NoWorkerCapacity));
    }

    #[test]
    fn best_fit_counts_reservations_not_reported_usage() {
        let mut a = node(1, "a", "x86_64", 4000, 4096);
        let b = node(2, "b", "x86_64", 2000, 2048);
        assert_eq!(
            schedule(&[a.clone(), b.clone()], &demand(1000, 1000)),
            Ok(NodeId(2)),
            "b is the tighter fit"
        );
        a.reserved = Resources {
            millicpus: 2500,
            memory_mib: 2500,
            vgpus: 0,
        };
        assert_eq!(
            schedule(&[a.clone(), b.clone()], &demand(1000, 1000)),
            Ok(NodeId(1)),
            "a's reservations make it tighter"
        );
        a.reserved = Resources {
            millicpus: 3500,
            memory_mib: 0,
            vgpus: 0,
        };
        assert_eq!(
            schedule(&[a, b], &demand(1000, 1000)),
            Ok(NodeId(2)),
            "a no longer fits"
        );
    }

    #[test]
    fn cpu_and_memory_both_weigh() {
        let a = node(1, "a", "x86_64", 1100, 64_000);
        let b = node(2, "b", "x86_64", 1300, 1100);
        assert_eq!(schedule(&[a, b], &demand(1000, 1000)), Ok(NodeId(2)));
    }

    #[test]
    fn replicas_spread_before_fitting_tightly() {
        let mut a = node(1, "a", "x86_64", 2000, 2000);
        let b = node(2, "b", "x86_64", 8000, 8000);
        a.same_service = 1;
        assert_eq!(schedule(&[a, b], &demand(1000, 1000)), Ok(NodeId(2)));
    }

    #[test]
    fn direct_node_lists_and_their_failure() {
        let nodes = [
            node(1, "pi-1", "aarch64", 4000, 4000),
            node(2, "pi-2", "aarch64", 4000, 4000),
        ];
        let mut d = demand(100, 100);
        d.constraints = vec![Constraint::Nodes(vec!["pi-2".into(), "pi-9".into()])];
        assert_eq!(schedule(&nodes, &d), Ok(NodeId(2)));
        d.constraints = vec![Constraint::Nodes(vec!["pi-9".into()])];
        assert_eq!(schedule(&nodes, &d), Err(Failure::NoNodeFound));
    }

    #[test]
    fn qualification_filters_and_their_failure() {
        let nodes = [node(1, "a", "aarch64", 4000, 4000)];
        let mut d = demand(100, 100);
        d.arch = vec!["x86_64".into()];
        assert_eq!(schedule(&nodes, &d), Err(Failure::NoQualifiedWorkerFound));
        let mut u = demand(100, 100);
        u.virtualization = "unikernel".into();
        assert_eq!(schedule(&nodes, &u), Err(Failure::NoQualifiedWorkerFound));
        let mut lost = nodes[0].clone();
        lost.active = false;
        assert_eq!(
            schedule(&[lost], &demand(100, 100)),
            Err(Failure::NoQualifiedWorkerFound)
        );
    }

    #[test]
    fn capacity_and_its_failure() {
        let mut n = node(1, "a", "x86_64", 1000, 1000);
        n.capacity.vgpus = 1;
        assert_eq!(
            schedule(std::slice::from_ref(&n), &demand(2000, 100)),
            Err(Failure::NoWorkerCapacity)
        );
        assert_eq!(
            schedule(std::slice::from_ref(&n), &demand(100, 2000)),
            Err(Failure::NoWorkerCapacity)
        );
        let mut g = demand(100, 100);
        g.resources.vgpus = 1;
        assert_eq!(schedule(std::slice::from_ref(&n), &g), Ok(NodeId(1)));
        g.resources.vgpus = 2;
        assert_eq!(schedule(&[n], &g), Err(Failure::NoWorkerCapacity));
    }

    #[test]
    fn geo_keeps_workers_near_a_location() {
        let mut munich = node(1, "munich", "x86_64", 4000, 4000);
        munich.location = Some(GeoPoint {
            lat: 48.14,
            lon: 11.58,
        });
        let mut berlin = node(2, "berlin", "x86_64", 1500, 1500);
        berlin.location = Some(GeoPoint {
            lat: 52.52,
            lon: 13.40,
        });
        let nowhere = node(3, "unknown", "x86_64", 1200, 1200);
        let mut d = demand(1000, 1000);
        d.constraints = vec![Constraint::Geo {
            location: GeoPoint {
                lat: 48.25,
                lon: 11.65,
            },
            threshold_km: 50.0,
        }];
        assert_eq!(
            schedule(&[munich.clone(), berlin.clone(), nowhere.clone()], &d),
            Ok(NodeId(1))
        );
        d.constraints = vec![Constraint::Geo {
            location: GeoPoint { lat: 0.0, lon: 0.0 },
            threshold_km: 10.0,
        }];
        assert_eq!(
            schedule(&[munich, berlin, nowhere], &d),
            Err(Failure::NoQualifiedWorkerFound)
        );
    }

    #[test]
    fn latency_keeps_workers_within_the_rtt_of_a_target() {
        let mut near = node(1, "near", "x86_64", 8000, 8000);
        near.coord = Some(NetCoord([5.0, 0.0, 0.0]));
        let mut far = node(2, "far", "x86_64", 1500, 1500);
        far.coord = Some(NetCoord([80.0, 0.0, 0.0]));
        let target = NetCoord([0.0, 0.0, 0.0]);
        let mut d = demand(1000, 1000);
        d.constraints = vec![Constraint::Latency {
            targets: vec![target],
            threshold_ms: 20.0,
        }];
        assert_eq!(
            schedule(&[near.clone(), far.clone()], &d),
            Ok(NodeId(1)),
            "far is the tighter fit but too far"
        );
        d.constraints = vec![Constraint::Latency {
            targets: vec![target],
            threshold_ms: 1.0,
        }];
        assert_eq!(
            schedule(&[near, far], &d),
            Err(Failure::NoQualifiedWorkerFound)
        );
    }

    #[test]
    fn ties_go_to_the_lower_node_id() {
        let nodes = [
            node(9, "x", "x86_64", 2000, 2000),
            node(4, "y", "x86_64", 2000, 2000),
        ];
        assert_eq!(schedule(&nodes, &demand(1000, 1000)), Ok(NodeId(4)));
    }

    #[test]
    fn reasons_read_as_oakestra_writes_them() {
        assert_eq!(Failure::NoWorkerCapacity.as_str(), "NO_WORKER_CAPACITY");
        assert_eq!(
            Failure::NoQualifiedWorkerFound.as_str(),
            "NO_QUALIFIED_WORKER_FOUND"
        );
        assert_eq!(Failure::NoNodeFound.as_str(), "NO_NODE_FOUND");
    }

    fn limited(unenforced: &[&str]) -> WorkerLimits {
        WorkerLimits {
            default_memory_mib: 512,
            default_millicpus: 1000,
            default_storage_mib: 1024,
            unenforced: unenforced.iter().map(|u| (*u).to_owned()).collect(),
            ports_first: 1024,
            ports_last: 65535,
            ports_reserved: vec![4789, 10000, 10100],
        }
    }

    #[test]
    fn a_limit_a_worker_cannot_enforce_keeps_the_service_off_it_and_says_why() {
        let mut a = node(1, "pi-no-memcg", "aarch64", 4000, 4000);
        a.limits = Some(limited(&["memory"]));
        let mut b = node(2, "pi", "aarch64", 4000, 4000);
        b.limits = Some(limited(&[]));
        let d = demand(100, 100);
        assert_eq!(schedule(&[a.clone(), b.clone()], &d), Ok(NodeId(2)));
        assert_eq!(
            schedule(std::slice::from_ref(&a), &d),
            Err(Failure::NoQualifiedWorkerFound)
        );
        let why = why_unqualified(std::slice::from_ref(&a), &d).unwrap();
        assert!(
            why.contains("pi-no-memcg") && why.contains("memory"),
            "{why}"
        );
        // A service that sets no memory runs there (within nothing it could hold).
        assert_eq!(
            schedule(std::slice::from_ref(&a), &demand(100, 0)),
            Ok(NodeId(1))
        );
        let mut s = demand(100, 0);
        s.storage_mib = 50;
        a.limits = Some(limited(&["storage"]));
        assert_eq!(
            schedule(std::slice::from_ref(&a), &s),
            Err(Failure::NoQualifiedWorkerFound)
        );
    }

    #[test]
    fn host_ports_outside_a_workers_range_or_its_own_are_a_placement_constraint() {
        let mut a = node(1, "a", "x86_64", 4000, 4000);
        a.limits = Some(limited(&[]));
        let mut d = demand(100, 100);
        for (port, word) in [(22, "outside"), (4789, "own"), (10100, "own")] {
            d.ports = vec![(port, Protocol::Tcp)];
            assert_eq!(
                schedule(std::slice::from_ref(&a), &d),
                Err(Failure::NoQualifiedWorkerFound)
            );
            let why = why_unqualified(std::slice::from_ref(&a), &d).unwrap();
            assert!(
                why.contains(&port.to_string()) && why.contains(word),
                "{why}"
            );
        }
        for port in [6080, 9080] {
            d.ports = vec![(port, Protocol::Tcp)];
            assert_eq!(
                schedule(std::slice::from_ref(&a), &d),
                Ok(NodeId(1)),
                "{port}"
            );
        }
        // A worker that maps low ports takes 80.
        let mut low = node(2, "low", "x86_64", 4000, 4000);
        low.limits = Some(WorkerLimits {
            ports_first: 1,
            ..limited(&[])
        });
        d.ports = vec![(80, Protocol::Tcp)];
        assert_eq!(schedule(&[a, low], &d), Ok(NodeId(2)));
    }

    #[test]
    fn a_service_without_limits_counts_the_workers_defaults() {
        let mut a = node(1, "a", "x86_64", 4000, 1000);
        a.limits = Some(limited(&[]));
        // 512 MiB by default: one fits in 1000, a second does not.
        assert_eq!(
            schedule(std::slice::from_ref(&a), &demand(0, 0)),
            Ok(NodeId(1))
        );
        a.reserved = on_worker(a.limits.as_ref(), Resources::default());
        assert_eq!(a.reserved.memory_mib, 512);
        assert_eq!(
            schedule(std::slice::from_ref(&a), &demand(0, 0)),
            Err(Failure::NoWorkerCapacity)
        );
    }
}
