//! The root's orchestration: where instances go, what each cluster is to run, what the
//! directory says, and what changes on its own (lost clusters, rollouts). Decisions
//! take the store's rows and their inputs (`now` among them) and open no socket; the
//! HTTP API (`api/`) and the cluster link (`clusters_link.rs`) call them and push what
//! changed. This module imports neither: a test below reads its sources.

mod commands;
mod directory;
mod placement;
mod recovery;

pub use commands::commands_for;
pub use directory::{ClusterPeering, DirectoryUpdate, entry_for, hosts_of, removed_entry};
pub use placement::{
    CLUSTER_LOST_AFTER_SECS, PlaceError, cluster_views, demand_of, microservice_of,
    place_new_instance, spec_microservice,
};
pub use recovery::{Changed, Rollout, next_rollout_step, reschedule_lost, rollout_step, views_at};

#[cfg(test)]
mod tests;
