//! What changes without a user asking: instances of a lost cluster move to the others
//! (or fail with the scheduler's reason), and rolling replacements advance one step at
//! a time. Each decision is a function of the rows and `now`; [`reschedule_lost`] and
//! [`rollout_step`] apply them to the store and say what changed.

use super::placement::{self, PlaceError, cluster_views, demand_of, microservice_of};
use crate::metrics::Metrics;
use crate::scheduler::{self, ClusterView};
use crate::store::{ClusterRow, InstanceRow, Store};
use grove_proto::msg::InstanceState;
use std::collections::HashSet;

/// Clusters and services whose state changed: their commands and directory entries
/// are pushed again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Clusters whose command sets changed.
    pub clusters: HashSet<u32>,
    /// Services whose directory entries changed.
    pub services: HashSet<String>,
}

/// The scheduler's view of the clusters at `now` when one silent for `lost_after`
/// seconds counts as lost.
pub fn views_at(rows: &[ClusterRow], now: i64, lost_after: i64) -> Vec<ClusterView> {
    let mut views = cluster_views(rows, now);
    for v in &mut views {
        v.active = rows
            .iter()
            .any(|r| r.id == v.id.0 && r.last_report.is_some_and(|t| now - t < lost_after));
    }
    views
}

/// Move the instances of clusters silent for `lost_after` seconds at `now` into active
/// clusters (or fail them with the scheduler's reason).
pub fn reschedule_lost(db: &mut Store, now: i64, lost_after: i64) -> Changed {
    let mut changed = Changed::default();
    let rows = db.clusters().unwrap_or_default();
    let views = views_at(&rows, now, lost_after);
    for lost in views.iter().filter(|v| !v.active) {
        let instances = db.instances_of_cluster(lost.id.0).unwrap_or_default();
        for i in instances {
            let Ok(s) = db.service(&i.service) else {
                continue;
            };
            let Ok(app) = db.application(&s.application) else {
                continue;
            };
            let Some(ms) = microservice_of(&app, &s) else {
                continue;
            };
            let moved = match scheduler::schedule(&views, &demand_of(&ms)) {
                Ok(c) => db
                    .move_instance(&i.service, i.number, Some(c.0), None)
                    .map(|_| Some(c.0)),
                Err(reason) => db
                    .move_instance(&i.service, i.number, None, Some(reason.as_str()))
                    .map(|_| None),
            };
            match moved {
                Ok(to) => {
                    tracing::warn!(cluster = lost.id.0, service = %i.service, instance = i.number, to = ?to, "cluster lost: instance moved");
                    changed.services.insert(i.service.clone());
                    changed.clusters.insert(lost.id.0);
                    changed.clusters.extend(to);
                }
                Err(e) => tracing::error!(error = %e, "cannot move an instance of a lost cluster"),
            }
        }
    }
    changed
}

/// The next step of a rolling replacement to generation `generation` with `target`
/// instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    /// No instance of an older generation is left: the rollout is over.
    Finished,
    /// A new instance is not RUNNING yet: wait for it.
    Wait,
    /// Add one instance of the new generation.
    Add,
    /// Remove this old instance.
    Remove(u32),
}

/// What one rollout does next, given the service's instances: while instances of an
/// older generation live, add one of the new generation when every new one is RUNNING
/// and the count is at its target, then remove one old instance — so the service never
/// has fewer running instances than before, and at most one extra.
pub fn next_rollout_step(target: u32, generation: i64, instances: &[InstanceRow]) -> Rollout {
    let live: Vec<&InstanceRow> = instances
        .iter()
        .filter(|i| !InstanceState::from_name(&i.status).is_final())
        .collect();
    let (old, new): (Vec<&InstanceRow>, Vec<&InstanceRow>) =
        live.iter().partition(|i| i.generation < generation);
    let Some(oldest) = old.first() else {
        return Rollout::Finished;
    };
    if new
        .iter()
        .any(|i| InstanceState::from_name(&i.status) != InstanceState::Running)
    {
        return Rollout::Wait;
    }
    if u32::try_from(live.len()).unwrap_or(u32::MAX) <= target {
        Rollout::Add
    } else {
        Rollout::Remove(oldest.number)
    }
}

/// One step of every rolling replacement (`PUT /api/service/{id}`) at `now`.
pub fn rollout_step(db: &mut Store, metrics: &Metrics, now: i64) -> Changed {
    let mut changed = Changed::default();
    for (sid, target) in db.rollouts().unwrap_or_default() {
        let Ok(s) = db.service(&sid) else { continue };
        let Ok(app) = db.application(&s.application) else {
            continue;
        };
        let instances = db.instances(Some(&sid)).unwrap_or_default();
        match next_rollout_step(target, s.generation, &instances) {
            Rollout::Finished => {
                let _ = db.finish_rollout(&sid);
            }
            Rollout::Wait => {}
            Rollout::Add => match placement::place_new_instance(db, metrics, &app, &s, now) {
                Ok(i) => {
                    changed.clusters.extend(i.cluster);
                    changed.services.insert(sid.clone());
                }
                Err(e @ (PlaceError::Spec(_) | PlaceError::Store(_))) => {
                    tracing::error!(service = %sid, error = %e, "rollout: cannot add an instance");
                }
            },
            Rollout::Remove(number) => {
                if let Ok(gone) = db.remove_instance(&sid, number) {
                    changed.clusters.extend(gone.cluster);
                    changed.services.insert(sid.clone());
                }
            }
        }
    }
    changed
}
