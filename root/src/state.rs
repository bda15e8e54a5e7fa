//! What the root's API handlers and its cluster link share: the store, the token keys,
//! the link once started, the peering between clusters, the login limit and the metrics.

use crate::auth::AuthKeys;
use crate::store::Store;
use std::sync::{Arc, Mutex, MutexGuard};

/// Everything a handler needs.
#[derive(Debug)]
pub struct AppState {
    /// The database.
    pub store: Mutex<Store>,
    /// Token keys.
    pub keys: AuthKeys,
    /// The cluster link, once started.
    pub link: std::sync::OnceLock<crate::clusters_link::LinkHandle>,
    /// Which clusters' workers reach which (cross-cluster traffic).
    pub peering: Mutex<crate::orchestrate::ClusterPeering>,
    /// Failed logins per user and per address.
    pub logins: Mutex<crate::limit::LoginLimit>,
    /// What `/metrics` says.
    pub metrics: crate::metrics::Metrics,
}

/// Shared state of the router.
pub type Shared = Arc<AppState>;

impl AppState {
    /// Lock the store (a poisoned lock still holds a consistent database: every change
    /// is a committed transaction).
    pub fn db(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lock the login rate limit.
    pub fn logins(&self) -> MutexGuard<'_, crate::limit::LoginLimit> {
        self.logins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lock the peering between clusters.
    pub fn peering(&self) -> MutexGuard<'_, crate::orchestrate::ClusterPeering> {
        self.peering.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tell the link that the service directory changed.
    pub fn directory_changed(&self, u: crate::orchestrate::DirectoryUpdate) {
        if let Some(link) = self.link.get() {
            link.directory_changed(u);
        }
    }

    /// Tell the link that these clusters' instance sets changed.
    pub fn clusters_changed(&self, clusters: impl IntoIterator<Item = Option<u32>>) {
        if let Some(link) = self.link.get() {
            let mut seen = std::collections::HashSet::new();
            for c in clusters.into_iter().flatten() {
                if seen.insert(c) {
                    link.cluster_changed(c);
                }
            }
        }
    }
}
