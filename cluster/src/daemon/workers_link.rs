//! The cluster's side of its workers' link: `proto`'s upper half ([`Upper`]) with the
//! store behind it and the node driver in front.
//!
//! Join tokens made or revoked by `grove-cluster token` while the daemon runs, workers
//! evicted (`node evict NAME`) and re-keys asked (`node rekey NAME`) are read from the
//! store every [`SYNC_EVERY`]. An evicted worker's keys stop working at once (its next
//! message gets 4.01), its instances move and it is deleted; it can come back only
//! with a new token.

use super::*;
use grove_proto::coap::driver::Incoming;
use grove_proto::coap::{Code, Endpoint, Response};
use grove_proto::link::shell::{self, PeerContexts};
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
        .live_worker_tokens(now_secs())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(id, secret)| Some((unhex(&id)?, secret)))
        .collect()
}

impl Cluster {
    pub(super) fn link(&self) -> MutexGuard<'_, Upper> {
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
        addr: SocketAddr,
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
    let Some(coap) = cl.coap.get() else {
        return Response::error(Code::SERVICE_UNAVAILABLE, "starting");
    };
    shell::rekey_answer(id, &cl.link, || cl.db(), &cl.contexts, coap, "worker").await
}

pub(super) async fn register_node(cl: Arc<Cluster>, inc: Incoming) -> Response {
    let Some(ctx_id) = inc.security.as_ref().and_then(|k| k.id_context.clone()) else {
        return Response::error(Code::FORBIDDEN, "registration needs a worker join token");
    };
    let reg: RegisterNode = match msg::from_cbor(&inc.request.payload) {
        Ok(r) => r,
        Err(e) => return Response::error(Code::BAD_REQUEST, &e.to_string()),
    };
    if let Err(diag) = msg::check_version(reg.version) {
        return Response::error(Code::NOT_ACCEPTABLE, &diag);
    }
    // A cluster that has not joined its root yet does not know its block of worker
    // subnets: the registration waits for it (as a separate response).
    let mut known = cl.block_known.subscribe();
    if tokio::time::timeout(JOIN_WAITS_FOR_ROOT, known.wait_for(|k| *k))
        .await
        .is_err()
    {
        return Response::error(
            Code::SERVICE_UNAVAILABLE,
            "the cluster has not joined its root yet: try again",
        );
    }
    let token = hex(&ctx_id[..8.min(ctx_id.len())]);
    if !cl
        .db()
        .use_worker_token(&token, now_secs())
        .unwrap_or(false)
    {
        return Response::error(
            Code::FORBIDDEN,
            "worker join token expired, used or revoked",
        );
    }
    let key = PeerKey::fresh(0, &mut OsRandom);
    let node = NewNode {
        name: &reg.name,
        arch: &reg.arch,
        cpus: u32::from(reg.cpus),
        memory_mib: reg.memory_mib,
        virtualizations: &reg.virtualizations,
        location: reg.location.map(|g| (f64::from(g.lat), f64::from(g.lon))),
        secret: &key.secret,
        salt: &key.salt,
        subnet_size: crate::store::subnet_size(reg.max_instances),
        limits: reg.limits.as_ref(),
    };
    let subnets = cl.subnets.load(Ordering::Relaxed);
    let row = match cl.db().register_node(&node, subnets) {
        Ok(r) => r,
        Err(e) => return Response::error(Code::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    *cl.nodes_cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
    if let Err(e) = cl.joined(row.id, &key, inc.peer).await {
        return Response::error(Code::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    cl.seen().insert(row.id, WorkerSeen::fresh());
    let (subnet_v4, subnet_v6) = subnets_of(
        *cl.block.lock().unwrap_or_else(|p| p.into_inner()),
        row.subnet,
        row.subnet_size,
    );
    let answer = NodeRegistered {
        version: msg::PROTOCOL_VERSION,
        node: NodeId(row.id),
        subnet_v4,
        subnet_v6,
        timing: msg::Timing {
            heartbeat_ms: HEARTBEAT_MS,
            missed_before_lost: u8::try_from(MISSED).unwrap_or(3),
        },
        credentials: Some(key.credentials(row.id)),
    };
    Response {
        code: Code::CREATED,
        ..Response::cbor(msg::to_cbor(&answer))
    }
}

pub(super) async fn node_status(cl: Arc<Cluster>, inc: Incoming) -> Response {
    let id = match speaks_for(&inc, "node") {
        Ok(id) => id,
        Err(r) => return r,
    };
    let hb: Heartbeat = match msg::from_cbor(&inc.request.payload) {
        Ok(h) => h,
        Err(e) => return Response::error(Code::BAD_REQUEST, &e.to_string()),
    };
    cl.heard(id, &inc).await;
    if let Some(m) = &cl.metrics {
        m.heartbeat(id, &hb);
    }
    if let Some(limits) = &hb.limits {
        cl.limits_now(id, limits);
    }
    let came_back = {
        let mut live = cl.seen();
        let l = live.entry(id).or_insert_with(WorkerSeen::fresh);
        let was_lost = l.lost;
        l.last_seen = Instant::now();
        l.lost = false;
        let moved = l.underlay != Some(inc.peer.ip());
        l.underlay = Some(inc.peer.ip());
        l.peer = Some(inc.peer);
        // (A heartbeat sent early with status changes carries no usage.)
        if hb.mem_total_mib > 0 {
            l.usage = Some((hb.cpu_centi_pct, hb.mem_used_mib, hb.mem_total_mib));
        }
        if hb.coord.0 != [0.0; 3] {
            l.coord = Some(hb.coord);
        }
        (was_lost, moved)
    };
    let (came_back, moved) = came_back;
    // A batch sent again after a lost acknowledgement: its changes taken before are
    // not applied twice.
    let mark = hb
        .changes_from
        .map(grove_proto::link::upper::ChangeMark::from_wire);
    let taken = cl.link().take_changes(id, mark, hb.changes.len());
    for c in &hb.changes[taken..] {
        let ok = cl
            .db()
            .report_status(
                &c.instance.service,
                c.instance.instance,
                id,
                c.state.as_str(),
                c.detail.as_deref(),
                c.addr,
            )
            .unwrap_or(false);
        if ok {
            cl.track(&c.instance.service, c.instance.instance, c.state.as_str());
            cl.directory.touch(&c.instance.service);
            let mut up = c.clone();
            up.worker = Some(format!("node-{id}"));
            up.addr6 = c.addr.and_then(|a| cl.addr6_on(id, a));
            let _ = cl.to_root.send(up);
        }
    }
    cl.push_directory().await;
    if came_back || moved || !hb.changes.is_empty() {
        // A worker back or at a new address, or an instance that started or ended:
        // everyone's overlay and service table change (and the one back learns what it
        // should run now: what was moved away is no longer there).
        cl.mark_all();
    }
    cl.heartbeat_ack(id)
}
