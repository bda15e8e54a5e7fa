//! The root scheduler: picks a cluster for one instance. A pure function over a
//! snapshot of the clusters' aggregates; the caller does the I/O.
//!
//! Filters: the `direct` constraint (cluster name), virtualization, architecture, and
//! capacity (CPU, memory, GPUs) — an instance must fit on one worker, so the per-worker
//! maxima of the aggregate decide; a `geo` constraint keeps clusters within `threshold`
//! km (great-circle) of a location (a cluster without a location is left to its own
//! scheduler, which checks its workers' locations). Among the clusters left, best fit wins: the one the
//! instance leaves with the least spare CPU and memory (both, averaged; Oakestra's score
//! ranks CPU only). Ties go to the lower cluster id, so the result is deterministic.

use grove_proto::msg::{Capacity, ClusterId, GeoPoint};
pub use grove_proto::util::distance_km;

/// What the root knows of one cluster when it schedules.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    /// Id.
    pub id: ClusterId,
    /// Name (`direct` constraints name clusters).
    pub name: String,
    /// Reported within the loss timeout.
    pub active: bool,
    /// Where it is.
    pub location: Option<GeoPoint>,
    /// Its last aggregate, per architecture and virtualization.
    pub capacity: Vec<Capacity>,
}

/// Where an instance may go.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Only this cluster (Oakestra's `direct` with `cluster`); nodes are the cluster's
    /// business.
    Direct {
        /// Cluster name.
        cluster: String,
    },
    /// Within `threshold_km` of `location`.
    Geo {
        /// The point.
        location: GeoPoint,
        /// Radius in km.
        threshold_km: f64,
    },
}

/// What one instance needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    /// CPU in thousandths.
    pub millicpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// GPUs.
    pub vgpus: u32,
    /// `container` or `unikernel`.
    pub virtualization: String,
    /// Acceptable architectures; empty means any.
    pub arch: Vec<String>,
    /// Placement constraints, all of which must hold.
    pub constraints: Vec<Constraint>,
}

/// Why no cluster was chosen: Oakestra's reasons, kept verbatim in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A `direct` constraint names no known cluster.
    TargetClusterNotFound,
    /// The named cluster is lost.
    TargetClusterNotActive,
    /// The named cluster has no worker the instance fits on.
    TargetClusterNoCapacity,
    /// No active cluster passes every filter.
    NoActiveClusterWithCapacity,
}

impl Failure {
    /// The reason as Oakestra's API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TargetClusterNotFound => "TargetClusterNotFound",
            Self::TargetClusterNotActive => "TargetClusterNotActive",
            Self::TargetClusterNoCapacity => "TargetClusterNoCapacity",
            Self::NoActiveClusterWithCapacity => "NoActiveClusterWithCapacity",
        }
    }
}

/// The spare fraction a class keeps after the instance, or `None` if it does not fit.
fn fit(c: &Capacity, d: &Demand) -> Option<f64> {
    if c.virtualization != d.virtualization || c.nodes == 0 {
        return None;
    }
    if !d.arch.is_empty() && !d.arch.contains(&c.arch) {
        return None;
    }
    let gpus = c.max_free_vgpus.unwrap_or(0);
    if c.max_free_millicpus < d.millicpus || c.max_free_memory_mib < d.memory_mib || gpus < d.vgpus
    {
        return None;
    }
    let spare = |free: u32, need: u32| {
        if free == 0 {
            0.0
        } else {
            f64::from(free - need) / f64::from(free)
        }
    };
    Some(
        (spare(c.max_free_millicpus, d.millicpus) + spare(c.max_free_memory_mib, d.memory_mib))
            / 2.0,
    )
}

/// The best-fitting class of a cluster, if any fits.
fn best_fit(c: &ClusterView, d: &Demand) -> Option<f64> {
    c.capacity
        .iter()
        .filter_map(|k| fit(k, d))
        .min_by(f64::total_cmp)
}

fn within_geo(c: &ClusterView, d: &Demand) -> bool {
    d.constraints.iter().all(|k| match k {
        Constraint::Geo {
            location,
            threshold_km,
        } => c
            .location
            .is_none_or(|l| distance_km(*location, l) <= *threshold_km),
        Constraint::Direct { .. } => true,
    })
}

/// Pick the cluster for one instance.
pub fn schedule(clusters: &[ClusterView], d: &Demand) -> Result<ClusterId, Failure> {
    let direct = d.constraints.iter().find_map(|k| match k {
        Constraint::Direct { cluster } => Some(cluster.as_str()),
        Constraint::Geo { .. } => None,
    });
    if let Some(name) = direct {
        let c = clusters
            .iter()
            .find(|c| c.name == name)
            .ok_or(Failure::TargetClusterNotFound)?;
        if !c.active {
            return Err(Failure::TargetClusterNotActive);
        }
        return match best_fit(c, d) {
            Some(_) if within_geo(c, d) => Ok(c.id),
            _ => Err(Failure::TargetClusterNoCapacity),
        };
    }
    clusters
        .iter()
        .filter(|c| c.active && within_geo(c, d))
        .filter_map(|c| best_fit(c, d).map(|s| (s, c.id)))
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, id)| id)
        .ok_or(Failure::NoActiveClusterWithCapacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(arch: &str, virt: &str, cpu: u32, mem: u32, gpus: u32) -> Capacity {
        Capacity {
            arch: arch.into(),
            virtualization: virt.into(),
            nodes: 2,
            free_millicpus: u64::from(cpu) * 2,
            free_memory_mib: u64::from(mem) * 2,
            max_free_millicpus: cpu,
            max_free_memory_mib: mem,
            free_vgpus: Some(gpus * 2),
            max_free_vgpus: Some(gpus),
        }
    }

    fn cluster(id: u32, name: &str, lat: f32, lon: f32, classes: Vec<Capacity>) -> ClusterView {
        ClusterView {
            id: ClusterId(id),
            name: name.into(),
            active: true,
            location: Some(GeoPoint { lat, lon }),
            capacity: classes,
        }
    }

    fn demand(cpu: u32, mem: u32) -> Demand {
        Demand {
            millicpus: cpu,
            memory_mib: mem,
            vgpus: 0,
            virtualization: "container".into(),
            arch: vec![],
            constraints: vec![],
        }
    }

    /// Munich, Berlin and Lisbon.
    fn fleet() -> Vec<ClusterView> {
        vec![
            cluster(
                1,
                "munich",
                48.14,
                11.58,
                vec![class("x86_64", "container", 4000, 8000, 0)],
            ),
            cluster(
                2,
                "berlin",
                52.52,
                13.40,
                vec![class("aarch64", "container", 1500, 2000, 0)],
            ),
            cluster(
                3,
                "lisbon",
                38.72,
                -9.14,
                vec![class("x86_64", "container", 8000, 16000, 1)],
            ),
        ]
    }

    #[test]
    fn best_fit_takes_the_tightest_cluster_that_fits() {
        assert_eq!(schedule(&fleet(), &demand(1000, 1000)), Ok(ClusterId(2)));
        assert_eq!(schedule(&fleet(), &demand(2000, 1000)), Ok(ClusterId(1)));
        assert_eq!(schedule(&fleet(), &demand(6000, 1000)), Ok(ClusterId(3)));
    }

    #[test]
    fn best_fit_weighs_memory_as_well_as_cpu() {
        // CPU alone would pick "a" (less spare CPU); its spare memory makes "b" the tighter fit.
        let fleet = vec![
            cluster(
                1,
                "a",
                0.0,
                0.0,
                vec![class("x86_64", "container", 1100, 64_000, 0)],
            ),
            cluster(
                2,
                "b",
                0.0,
                0.0,
                vec![class("x86_64", "container", 1300, 1_100, 0)],
            ),
        ];
        assert_eq!(schedule(&fleet, &demand(1000, 1000)), Ok(ClusterId(2)));
    }

    #[test]
    fn an_instance_must_fit_on_one_worker_not_on_the_sum() {
        // The sums (2 × 1500) would fit 2500 millicpus; no single worker does.
        let d = demand(2500, 100);
        let only_berlin = vec![fleet().remove(1)];
        assert_eq!(
            schedule(&only_berlin, &d),
            Err(Failure::NoActiveClusterWithCapacity)
        );
    }

    #[test]
    fn direct_constraint_picks_the_named_cluster_or_says_why_not() {
        let mut d = demand(1000, 1000);
        d.constraints = vec![Constraint::Direct {
            cluster: "lisbon".into(),
        }];
        assert_eq!(schedule(&fleet(), &d), Ok(ClusterId(3)));

        d.constraints = vec![Constraint::Direct {
            cluster: "paris".into(),
        }];
        assert_eq!(schedule(&fleet(), &d), Err(Failure::TargetClusterNotFound));

        let mut f = fleet();
        f[2].active = false;
        d.constraints = vec![Constraint::Direct {
            cluster: "lisbon".into(),
        }];
        assert_eq!(schedule(&f, &d), Err(Failure::TargetClusterNotActive));

        let mut big = demand(9000, 1000);
        big.constraints = d.constraints.clone();
        assert_eq!(
            schedule(&fleet(), &big),
            Err(Failure::TargetClusterNoCapacity)
        );
    }

    #[test]
    fn lost_clusters_are_never_chosen() {
        let mut f = fleet();
        for c in &mut f {
            c.active = false;
        }
        assert_eq!(
            schedule(&f, &demand(100, 100)),
            Err(Failure::NoActiveClusterWithCapacity)
        );
    }

    #[test]
    fn virtualization_architecture_and_gpus_filter() {
        let mut d = demand(100, 100);
        d.arch = vec!["aarch64".into()];
        assert_eq!(schedule(&fleet(), &d), Ok(ClusterId(2)));
        d.arch = vec!["riscv64".into()];
        assert_eq!(
            schedule(&fleet(), &d),
            Err(Failure::NoActiveClusterWithCapacity)
        );
        let mut u = demand(100, 100);
        u.virtualization = "unikernel".into();
        assert_eq!(
            schedule(&fleet(), &u),
            Err(Failure::NoActiveClusterWithCapacity)
        );
        let mut g = demand(100, 100);
        g.vgpus = 1;
        assert_eq!(schedule(&fleet(), &g), Ok(ClusterId(3)));
    }

    #[test]
    fn geo_constraint_keeps_clusters_within_the_threshold() {
        let garching = GeoPoint {
            lat: 48.25,
            lon: 11.65,
        };
        let mut d = demand(1000, 1000);
        d.constraints = vec![Constraint::Geo {
            location: garching,
            threshold_km: 50.0,
        }];
        assert_eq!(schedule(&fleet(), &d), Ok(ClusterId(1)));
        // 600 km reaches Berlin (~500 km), which fits tighter than Munich.
        d.constraints = vec![Constraint::Geo {
            location: garching,
            threshold_km: 600.0,
        }];
        assert_eq!(schedule(&fleet(), &d), Ok(ClusterId(2)));
        d.constraints = vec![Constraint::Geo {
            location: GeoPoint { lat: 0.0, lon: 0.0 },
            threshold_km: 100.0,
        }];
        assert_eq!(
            schedule(&fleet(), &d),
            Err(Failure::NoActiveClusterWithCapacity)
        );
        // A cluster without a location is not ruled out: its workers' locations decide
        // (the cluster scheduler applies the same constraint to them).
        let mut f = fleet();
        f[0].location = None;
        f[1].location = None;
        d.constraints = vec![Constraint::Geo {
            location: garching,
            threshold_km: 50.0,
        }];
        assert_eq!(
            schedule(&f, &d),
            Ok(ClusterId(2)),
            "the tighter of the two unlocated clusters"
        );
    }

    #[test]
    fn direct_and_geo_together_must_both_hold() {
        let mut d = demand(1000, 1000);
        d.constraints = vec![
            Constraint::Direct {
                cluster: "lisbon".into(),
            },
            Constraint::Geo {
                location: GeoPoint {
                    lat: 48.25,
                    lon: 11.65,
                },
                threshold_km: 50.0,
            },
        ];
        assert_eq!(
            schedule(&fleet(), &d),
            Err(Failure::TargetClusterNoCapacity)
        );
    }

    #[test]
    fn distances_are_great_circle() {
        let munich = GeoPoint {
            lat: 48.14,
            lon: 11.58,
        };
        let berlin = GeoPoint {
            lat: 52.52,
            lon: 13.40,
        };
        let d = distance_km(munich, berlin);
        assert!((d - 504.0).abs() < 5.0, "{d}");
        assert!(distance_km(munich, munich) < 1e-9);
    }

    #[test]
    fn ties_go_to_the_lower_cluster_id() {
        let f = vec![
            cluster(
                7,
                "x",
                0.0,
                0.0,
                vec![class("x86_64", "container", 2000, 2000, 0)],
            ),
            cluster(
                3,
                "y",
                0.0,
                0.0,
                vec![class("x86_64", "container", 2000, 2000, 0)],
            ),
        ];
        assert_eq!(schedule(&f, &demand(1000, 1000)), Ok(ClusterId(3)));
    }

    #[test]
    fn failure_reasons_read_as_oakestra_writes_them() {
        assert_eq!(
            Failure::NoActiveClusterWithCapacity.as_str(),
            "NoActiveClusterWithCapacity"
        );
        assert_eq!(
            Failure::TargetClusterNotFound.as_str(),
            "TargetClusterNotFound"
        );
    }
}
