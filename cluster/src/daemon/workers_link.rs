//! The cluster's side of its workers' link: `proto`'s upper half ([`Upper`]) with the
//! store behind it and the node driver in front.
//!
//! Join tokens made or revoked by `grove-cluster token` while the daemon runs, workers
//! evicted (`node evict NAME`) and re-keys asked (`node rekey NAME`) are read from the
//! store every [`SYNC_EVERY`]. An evicted worker's keys stop working at once (its next
//! message gets 4.01), its instances move and it is deleted; it can come back only
//! with a new token.

use super::{Cluster, WorkerSeen};
use grove_proto::coap::driver::Incoming;
use grove_proto::coap::{Code, Endpoint, Response};
use grove_proto::link::shell::PeerContexts;
use grove_proto::link::upper::{KeyAction, StoredPeer, Upper};
use grove_proto::link::{OsRandom, PeerKey};
use grove_proto::msg;
use grove_proto::util::{key_generation, speaks_for, unhex};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the store is read for tokens, evictions and re-key requests made by
/// `grove-cluster` commands while the daemon runs.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);

/// The workers' contexts under the cluster's state directory (`oscore/node-*.seq`).
pub fn contexts(dir: &std::path::Path) -> PeerContexts {
    PeerContexts::new(dir, "node")
}

/// Every key a registered worker may speak with (its key, and a pending one), and the
/// live join tokens, into an endpoint that is not running yet.
pub fn load(cl: &Cluster, endpoint: &mut Endpoint) {
    let nodes = cl.db().nodes().unwrap_or_default();
    let stored = nodes.iter().map(|n| StoredPeer {
        id: n.id,
        current: PeerKey {
            generation: n.key_gen,
            secret: n.secret.clone(),
            salt: n.salt.clone(),
        },
        pending: n.pending.as_ref().map(|(secret, salt)| PeerKey {
            generation: n.key_gen + 1,
            secret: secret.clone(),
            salt: salt.clone(),
        }),
        rekey_asked: n.rekey,
    });
    let tokens = live_tokens(cl);
    let actions = {
        let mut link = cl.link();
        link.load(stored);
        link.sync_tokens(tokens);
        link.drain_actions()
    };
    for n in &nodes {
        cl.seen().insert(n.id, WorkerSeen::fresh());
    }
    cl.contexts.apply_to_endpoint(endpoint, actions);
}

fn live_tokens(cl: &Cluster) -> Vec<(Vec<u8>, Vec<u8>)> {
    cl.db()
        .live_worker_tokens(crate::store::now_secs())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(id, secret)| Some((unhex(&id)?, secret)))
        .collect()
}

impl Cluster {
    pub(super) fn link(&self) -> std::sync::MutexGuard<'_, Upper> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply what the link decided to the running driver.
    async fn apply(&self, actions: Vec<KeyAction>) -> Result<(), std::io::Error> {
        match self.coap.get() {
            Some(h) if !actions.is_empty() => self.contexts.apply(h, actions).await,
            _ => Ok(()),
        }
    }

    /// A worker joined (or joined again with a new token) from `addr`: its key is
    /// generation 0 and whatever it had before is gone.
    pub(super) async fn joined(
        &self,
        id: u32,
        key: &PeerKey,
        addr: std::net::SocketAddr,
    ) -> Result<(), std::io::Error> {
        let actions = {
            let mut link = self.link();
            link.joined(Instant::now(), id, key, addr);
            link.drain_actions()
        };
        self.apply(actions).await
    }

    /// Whether the worker's heartbeat answers ask for a new key (until it speaks
    /// with one).
    pub(super) fn rekey_asked(&self, id: u32) -> bool {
        self.link().rekey_asked(id)
    }

    /// A request of worker `id` arrived: when it came under the pending key, that key
    /// is now the one in use and the old one is removed.
    pub(super) async fn heard(&self, id: u32, inc: &Incoming) {
        let generation = key_generation(inc);
        let (heard, actions) = {
            let mut link = self.link();
            let heard = link.heard(Instant::now(), id, generation, inc.peer, &mut *self.db());
            (heard, link.drain_actions())
        };
        match heard {
            Ok(h) if h.rekeyed.is_some() => {
                *self.nodes_cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::info!(
                    node = id,
                    generation,
                    "worker re-keyed: its old key no longer works"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!(node = id, error = %e, "cannot store the worker's new key"),
        }
        if let Err(e) = self.apply(actions).await {
            tracing::error!(node = id, error = %e, "cannot change the worker's contexts");
        }
    }

    /// Read what `grove-cluster` commands changed in the store: join tokens made
    /// (learnt) or revoked and expired (forgotten), workers evicted, re-keys asked.
    pub(super) async fn sync_keys(&self) {
        let tokens = live_tokens(self);
        let asked = self.db().rekey_requested().unwrap_or_default();
        let actions = {
            let mut link = self.link();
            link.sync_tokens(tokens);
            for id in asked {
                link.ask_rekey(id);
            }
            link.drain_actions()
        };
        if let Err(e) = self.apply(actions).await {
            tracing::error!(error = %e, "cannot change the join tokens");
        }
        let evicted = self.db().evicted_nodes().unwrap_or_default();
        for (id, _) in evicted {
            self.evict(id).await;
        }
    }

    async fn evict(&self, id: u32) {
        let actions = {
            let mut link = self.link();
            link.evict(id);
            link.drain_actions()
        };
        if let Err(e) = self.apply(actions).await {
            tracing::error!(node = id, error = %e, "cannot remove the evicted worker's contexts");
        }
        if let Some(m) = &self.metrics {
            m.lost(id);
        }
        let mut touched = self.move_instances_off(id);
        if let Err(e) = self.db().delete_node(id) {
            tracing::error!(node = id, error = %e, "cannot delete the evicted worker");
            return;
        }
        self.seen().remove(&id);
        *self.nodes_cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::warn!(
            node = id,
            "worker evicted: its key no longer works, its instances move"
        );
        touched.extend(self.place_pending());
        let others: Vec<u32> = self.seen().keys().copied().collect();
        touched.extend(others);
        self.mark(touched);
    }
}

/// `POST /v1/nodes/{id}/rekey`: the worker's next key, answered under its current one
/// (stored as pending before it is handed out).
pub async fn rekey(cl: Arc<Cluster>, inc: Incoming) -> Response {
    let id = match speaks_for(&inc, "node") {
        Ok(id) => id,
        Err(r) => return r,
    };
    cl.heard(id, &inc).await;
    let (creds, actions) = {
        let mut link = cl.link();
        let creds = link.rekey(id, &mut *cl.db(), &mut OsRandom);
        (creds, link.drain_actions())
    };
    let creds = match creds {
        Ok(c) => c,
        Err(e) => return Response::error(Code::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    if let Err(e) = cl.apply(actions).await {
        return Response::error(Code::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    tracing::info!(node = id, "new key handed to the worker");
    Response {
        code: Code::CHANGED,
        ..Response::cbor(msg::to_cbor(&creds))
    }
}
