//! The workers' keys over time: join tokens made or revoked while the cluster runs,
//! re-keying without downtime, and eviction.
//!
//! **Re-keying.** Asked by the operator (`grove-cluster node rekey NAME`, the flag
//! goes out with the worker's heartbeat answers) the worker POSTs to
//! `/v1/nodes/{id}/rekey` under its key; the answer, protected under that key, holds
//! the next one. Both live side by side (the new one under sender id
//! [`peer_kid`]`(id, generation)`) until the worker speaks with the new one: then the
//! old one is removed and every message under it is refused. The worker stores the
//! new key before it uses it; the cluster stores it (as pending) before answering.
//! Either killed at any moment, each resumes with a key the other accepts.
//!
//! **Eviction.** `grove-cluster node evict NAME` marks the worker in the store; within
//! half a second the daemon removes its keys (its next message gets 4.01), moves its
//! instances to other workers and deletes it. It can come back only with a new token.

use super::{Cluster, Live, random};
use grove_proto::coap::driver::Incoming;
use grove_proto::coap::{Code, ContextKey, Endpoint, Response};
use grove_proto::msg::{self, NodeId};
use grove_proto::oscore::{ContextParams, FileContextStore, SecurityContext};
use grove_proto::util::{key_generation, peer_kid, speaks_for, unhex};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How often the store is read for tokens, evictions and re-key requests made by
/// `grove-cluster` commands while the daemon runs.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);

fn seq_file(dir: &Path, id: u32, generation: u32) -> std::path::PathBuf {
    let name = if generation == 0 {
        format!("node-{id}.seq")
    } else {
        format!("node-{id}-k{generation}.seq")
    };
    dir.join("oscore").join(name)
}

/// A worker's context under its key of `generation`; each generation's sender
/// sequence numbers persist in a file of their own.
pub fn node_context(
    dir: &Path,
    id: u32,
    generation: u32,
    secret: &[u8],
    salt: &[u8],
) -> Result<SecurityContext, String> {
    let params = ContextParams::for_peer(id, generation, secret, salt);
    SecurityContext::new(
        &params,
        Box::new(FileContextStore::new(seq_file(dir, id, generation))),
    )
    .map_err(|e| e.to_string())
}

pub(super) fn key_of(id: u32, generation: u32) -> ContextKey {
    ContextKey {
        id_context: None,
        recipient_id: peer_kid(id, generation),
    }
}

/// Every key a registered worker may speak with (its key, and a pending one), and the
/// live join tokens, into an endpoint that is not running yet.
pub fn load(cl: &Cluster, endpoint: &mut Endpoint) {
    for n in cl.db().nodes().unwrap_or_default() {
        cl.live().insert(n.id, Live::fresh());
        let next = n
            .pending
            .as_ref()
            .map(|(s, salt)| (n.key_gen + 1, s.clone(), salt.clone()));
        for (generation, secret, salt) in
            std::iter::once((n.key_gen, n.secret.clone(), n.salt.clone())).chain(next)
        {
            match node_context(&cl.dir, n.id, generation, &secret, &salt) {
                Ok(ctx) => {
                    endpoint.add_context(ctx);
                }
                Err(e) => {
                    tracing::error!(node = n.id, error = %e, "cannot load a worker's context")
                }
            }
        }
        if n.pending.is_some() {
            cl.keys().pending.insert(n.id, n.key_gen + 1);
        }
        cl.keys().current.insert(n.id, n.key_gen);
        if n.rekey {
            cl.keys().asked.insert(n.id);
        }
    }
    // The join tokens made so far, before the first datagram is read.
    let tokens = cl
        .db()
        .live_worker_tokens(crate::store::now_secs())
        .unwrap_or_default();
    for (id, secret) in tokens {
        if let Some(raw) = unhex(&id) {
            endpoint.add_join_token(raw, secret);
            cl.keys().tokens.insert(id);
        }
    }
}

/// What the daemon knows of its workers' keys.
#[derive(Debug, Default)]
pub struct Keys {
    /// The generation of each worker's key in use.
    pub current: std::collections::HashMap<u32, u32>,
    /// Generations handed out and not yet used.
    pub pending: std::collections::HashMap<u32, u32>,
    /// Workers the operator asked to re-key.
    pub asked: HashSet<u32>,
    /// Join tokens the endpoint has.
    pub tokens: HashSet<String>,
}

impl Cluster {
    pub(super) fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A worker joined (or joined again with a new token): its key is generation 0
    /// and whatever it had before is gone.
    pub(super) async fn joined(&self, id: u32, secret: &[u8], salt: &[u8]) -> Result<(), String> {
        let before = {
            let mut k = self.keys();
            k.asked.remove(&id);
            [k.current.insert(id, 0), k.pending.remove(&id)]
        };
        let coap = self.coap.get();
        for generation in before.into_iter().flatten().filter(|g| *g > 0) {
            if let Some(h) = coap {
                h.remove_context(key_of(id, generation));
            }
        }
        let _ = std::fs::remove_file(seq_file(&self.dir, id, 0));
        let ctx = node_context(&self.dir, id, 0, secret, salt)?;
        if let Some(h) = coap {
            h.add_context(ctx).await;
        }
        Ok(())
    }

    /// Whether the worker's heartbeat answers ask for a new key (until it speaks
    /// with one).
    pub(super) fn rekey_asked(&self, id: u32) -> bool {
        self.keys().asked.contains(&id)
    }

    /// A request of worker `id` arrived: when it came under the pending key, that key
    /// is now the one in use and the old one is removed.
    pub(super) fn heard(&self, id: u32, inc: &Incoming) {
        let generation = key_generation(inc);
        if self.keys().pending.get(&id) != Some(&generation) {
            return;
        }
        match self.db().commit_rekey(id, generation) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::error!(node = id, error = %e, "cannot store the worker's new key");
                return;
            }
        }
        let old = {
            let mut k = self.keys();
            k.pending.remove(&id);
            k.asked.remove(&id);
            k.current.insert(id, generation)
        };
        if let (Some(old), Some(h)) = (old, self.coap.get()) {
            h.remove_context(key_of(id, old));
            let _ = std::fs::remove_file(seq_file(&self.dir, id, old));
        }
        *self.nodes_cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::info!(
            node = id,
            generation,
            "worker re-keyed: its old key no longer works"
        );
    }

    /// Read what `grove-cluster` commands changed in the store: join tokens made
    /// (learnt) or revoked and expired (forgotten), workers evicted, re-keys asked.
    pub(super) async fn sync_keys(&self) {
        let now = crate::store::now_secs();
        let live: Vec<(String, Vec<u8>)> = self.db().live_worker_tokens(now).unwrap_or_default();
        let Some(h) = self.coap.get() else { return };
        {
            let mut k = self.keys();
            let ids: HashSet<String> = live.iter().map(|(id, _)| id.clone()).collect();
            for (id, secret) in live {
                if k.tokens.insert(id.clone()) {
                    if let Some(raw) = unhex(&id) {
                        h.add_join_token(raw, secret);
                    }
                }
            }
            let gone: Vec<String> = k.tokens.difference(&ids).cloned().collect();
            for id in gone {
                k.tokens.remove(&id);
                if let Some(raw) = unhex(&id) {
                    h.remove_join_token(raw);
                }
            }
        }
        let asked = self.db().rekey_requested().unwrap_or_default();
        self.keys().asked.extend(asked);
        let evicted = self.db().evicted_nodes().unwrap_or_default();
        for (id, generation) in evicted {
            self.evict(id, generation);
        }
    }

    fn evict(&self, id: u32, generation: u32) {
        let pending = {
            let mut k = self.keys();
            k.current.remove(&id);
            k.asked.remove(&id);
            k.pending.remove(&id)
        };
        if let Some(h) = self.coap.get() {
            for g in std::iter::once(generation).chain(pending) {
                h.remove_context(key_of(id, g));
                let _ = std::fs::remove_file(seq_file(&self.dir, id, g));
            }
        }
        if let Some(m) = &self.metrics {
            m.lost(id);
        }
        let mut touched = self.move_instances_off(id);
        if let Err(e) = self.db().delete_node(id) {
            tracing::error!(node = id, error = %e, "cannot delete the evicted worker");
            return;
        }
        self.live().remove(&id);
        *self.nodes_cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::warn!(
            node = id,
            "worker evicted: its key no longer works, its instances move"
        );
        touched.extend(self.place_pending());
        let others: Vec<u32> = self.live().keys().copied().collect();
        touched.extend(others);
        self.mark(touched);
    }
}

/// `POST /v1/nodes/{id}/rekey`: the worker's next key, answered under its current one.
pub async fn rekey(cl: Arc<Cluster>, inc: Incoming) -> Response {
    let id = match speaks_for(&inc, "node") {
        Ok(id) => id,
        Err(r) => return r,
    };
    cl.heard(id, &inc);
    let (secret, salt) = (random::<32>(), random::<8>());
    // Stored before it is handed out: a cluster killed after answering knows it.
    let (generation, secret, salt, fresh) = match cl.db().begin_rekey(id, &secret, &salt) {
        Ok(k) => k,
        Err(e) => return Response::error(Code::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    // A new key gets a context; so does one handed out before whose context is not
    // there (a context that could not be made last time).
    let known = cl.keys().pending.get(&id) == Some(&generation);
    if fresh || !known {
        if fresh {
            let _ = std::fs::remove_file(seq_file(&cl.dir, id, generation));
        }
        let ctx = match node_context(&cl.dir, id, generation, &secret, &salt) {
            Ok(c) => c,
            Err(e) => return Response::error(Code::INTERNAL_SERVER_ERROR, &e),
        };
        if let Some(h) = cl.coap.get() {
            h.add_context(ctx).await;
        }
        cl.keys().pending.insert(id, generation);
        tracing::info!(node = id, generation, "new key handed to the worker");
    }
    let creds = msg::Credentials {
        master_secret: secret,
        master_salt: salt,
        sender_id: peer_kid(NodeId(id).0, generation),
        recipient_id: Vec::new(),
    };
    Response {
        code: Code::CHANGED,
        ..Response::cbor(msg::to_cbor(&creds))
    }
}
