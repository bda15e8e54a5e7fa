//! Where a new instance goes: the root scheduler over what the root knows of each
//! cluster (its last report, its aggregate capacity, its location).

use crate::metrics::Metrics;
use crate::scheduler::{self, ClusterView, Demand};
use crate::sla::{self, Microservice};
use crate::store::{AppRow, ClusterRow, InstanceRow, ServiceRow, Store, StoreError};
use grove_proto::msg::{Capacity, ClusterId, GeoPoint};

/// A cluster silent this long is lost (DESIGN.md: 3 missed 5 s reports).
pub const CLUSTER_LOST_AFTER_SECS: i64 = 15;

/// Why an instance could not be placed (a placement the scheduler refuses is not an
/// error: the instance is FAILED with Oakestra's reason).
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The service's stored spec no longer parses.
    #[error("the stored spec of service {0} does not parse")]
    Spec(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The stored (current) spec of a service, parsed.
pub fn microservice_of(app: &AppRow, s: &ServiceRow) -> Option<Microservice> {
    spec_microservice(app, &s.spec)
}

/// A stored spec (of any generation), parsed.
pub fn spec_microservice(app: &AppRow, spec: &str) -> Option<Microservice> {
    let spec: serde_json::Value = serde_json::from_str(spec).ok()?;
    sla::one_microservice(&spec, &app.name, &app.namespace)
        .ok()
        .map(|(ms, _)| ms)
}

/// What the root knows of each cluster at `now`, for the scheduler: active while its
/// last report is younger than [`CLUSTER_LOST_AFTER_SECS`].
pub fn cluster_views(rows: &[ClusterRow], now: i64) -> Vec<ClusterView> {
    rows.iter()
        .map(|c| ClusterView {
            id: ClusterId(c.id),
            name: c.name.clone(),
            active: c
                .last_report
                .is_some_and(|t| now - t < CLUSTER_LOST_AFTER_SECS),
            location: c.location.map(|(lat, lon)| GeoPoint {
                lat: sla::narrow(lat),
                lon: sla::narrow(lon),
            }),
            capacity: c
                .aggregate
                .as_deref()
                .and_then(|b| minicbor::decode::<Vec<Capacity>>(b).ok())
                .unwrap_or_default(),
        })
        .collect()
}

/// The scheduler's view of what one instance of `ms` needs.
pub fn demand_of(ms: &Microservice) -> Demand {
    Demand {
        millicpus: ms.millicpus,
        memory_mib: ms.memory_mb,
        vgpus: ms.vgpus,
        virtualization: ms.virtualization.as_str().into(),
        arch: ms.arch.clone(),
        constraints: ms
            .constraints
            .iter()
            .filter_map(|c| match c {
                sla::Constraint::Direct {
                    cluster: Some(name),
                    ..
                } => Some(scheduler::Constraint::Direct {
                    cluster: name.clone(),
                }),
                sla::Constraint::Geo {
                    location,
                    threshold_km,
                    ..
                } => Some(scheduler::Constraint::Geo {
                    location: *location,
                    threshold_km: *threshold_km,
                }),
                _ => None,
            })
            .collect(),
    }
}

/// Add one instance of the service's current spec at `now`, placed by the root
/// scheduler (CLUSTER_SCHEDULED) or FAILED with Oakestra's reason.
pub fn place_new_instance(
    db: &mut Store,
    metrics: &Metrics,
    app: &AppRow,
    s: &ServiceRow,
    now: i64,
) -> Result<InstanceRow, PlaceError> {
    let ms = microservice_of(app, s).ok_or_else(|| PlaceError::Spec(s.id.clone()))?;
    let inst = db.add_instance(&s.id)?;
    metrics.asked(&s.id, inst.number);
    let views = cluster_views(&db.clusters()?, now);
    let started = std::time::Instant::now();
    let chosen = scheduler::schedule(&views, &demand_of(&ms));
    metrics.scheduled(started.elapsed());
    Ok(match chosen {
        Ok(cluster) => db.move_instance(&s.id, inst.number, Some(cluster.0), None)?,
        Err(reason) => db.move_instance(&s.id, inst.number, None, Some(reason.as_str()))?,
    })
}
