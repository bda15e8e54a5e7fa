//! The cluster link: CoAP + OSCORE on UDP 10000.
//!
//! Clusters join with a join token made through the API, get long-term OSCORE
//! credentials (kept in the database, so a restarted root still knows them), report
//! their aggregate and instance status changes, and observe their command resource:
//! the full, versioned set of instances the cluster should run. Because every
//! notification carries the whole set, a lost notification loses nothing and a
//! cluster that comes back after a partition stops what was moved away from it.
//!
//! A cluster silent for `lost_after` seconds is lost: its instances are rescheduled
//! into the other clusters.

use crate::orchestrate::{self, DirectoryUpdate, commands_for, entry_for};
use crate::state::{AppState, Shared};
use crate::store::now_secs;
use grove_proto::coap::driver::{self, Handle, Incoming, Router};
use grove_proto::coap::{Code, Config, Endpoint, Method, Request, Response, SendOptions};
use grove_proto::link::shell::{self, PeerContexts};
use grove_proto::link::upper::{KeyAction, StoredPeer, Upper};
use grove_proto::link::{OsRandom, PeerKey};
use grove_proto::msg::{
    self, ClusterCommands, ClusterId, ClusterRegistered, ClusterReport, RegisterCluster,
};
use grove_proto::oscore::{ContextParams, FileContextStore, SecurityContext};
use grove_proto::paths;
use grove_proto::util::{hex, speaks_for, unhex};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// What the API uses to reach the link.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    coap: Handle,
    changed: mpsc::UnboundedSender<u32>,
    directory: mpsc::UnboundedSender<DirectoryUpdate>,
    dir: PathBuf,
    /// The clusters' keys, where each one's requests come from (where the root asks
    /// it), re-keys and evictions: `proto`'s upper half of the link.
    link: Arc<Mutex<Upper>>,
    contexts: PeerContexts,
}

impl LinkHandle {
    /// A cluster's desired instances changed: push its commands.
    pub fn cluster_changed(&self, cluster: u32) {
        let _ = self.changed.send(cluster);
    }

    /// The directory changed: push it to the clusters observing it.
    pub fn directory_changed(&self, u: DirectoryUpdate) {
        let _ = self.directory.send(u);
    }

    /// Accept joins with a new token.
    pub fn add_join_token(&self, id: Vec<u8>, secret: Vec<u8>) {
        self.coap.add_join_token(id, secret);
    }

    /// Stop accepting a token.
    pub fn remove_join_token(&self, id: Vec<u8>) {
        self.coap.remove_join_token(id);
    }

    /// The link's CoAP counters.
    pub async fn stats(&self) -> grove_proto::coap::Stats {
        self.coap.stats().await
    }

    /// Wait until the tokens and keys added or removed so far are in effect (an API
    /// answer says so only then).
    pub async fn settled(&self) {
        self.coap.settled().await;
    }

    /// Install the OSCORE context of a CoAP API user.
    pub async fn add_user_context(
        &self,
        kid: &[u8],
        secret: &[u8],
        salt: &[u8],
    ) -> Result<(), String> {
        let ctx = user_context(&self.dir, kid, secret, salt)?;
        self.coap
            .add_context(ctx)
            .await
            .map(|_| ())
            .ok_or_else(|| "the link stopped".to_owned())
    }

    /// The link's UDP address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.coap.local_addr()
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Upper> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn apply(&self, actions: Vec<KeyAction>) -> std::io::Result<()> {
        self.contexts.apply(&self.coap, actions).await
    }

    /// An evicted cluster: every key of its stops working now.
    pub async fn evicted(&self, cluster: u32) {
        let actions = {
            let mut link = self.link();
            link.evict(cluster);
            link.drain_actions()
        };
        if let Err(e) = self.apply(actions).await {
            tracing::error!(cluster, error = %e, "cannot remove the evicted cluster's contexts");
        }
        tracing::warn!(
            cluster,
            "cluster evicted: its key no longer works, its instances move"
        );
    }

    /// An Admin asked for a new key for `cluster`.
    pub fn rekey_asked(&self, cluster: u32) {
        self.link().ask_rekey(cluster);
    }

    /// A cluster (re-)joined from `addr` under a key of generation 0: what it had is
    /// gone.
    async fn joined(
        &self,
        cluster: u32,
        key: &PeerKey,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<()> {
        let actions = {
            let mut link = self.link();
            link.joined(std::time::Instant::now(), cluster, key, addr);
            link.drain_actions()
        };
        self.apply(actions).await
    }

    /// A request of `cluster` arrived: under its pending key, that key is now the one
    /// in use (stored first), and the old one is removed.
    async fn heard(&self, st: &AppState, cluster: u32, inc: &Incoming) {
        let generation = grove_proto::util::key_generation(inc);
        let (heard, actions) = {
            let mut link = self.link();
            let heard = link.heard(
                std::time::Instant::now(),
                cluster,
                generation,
                inc.peer,
                &mut *st.db(),
            );
            (heard, link.drain_actions())
        };
        match heard {
            Ok(h) if h.rekeyed.is_some() => tracing::info!(
                cluster,
                generation,
                "cluster re-keyed: its old key no longer works"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(cluster, error = %e, "cannot store the cluster's new key"),
        }
        if let Err(e) = self.apply(actions).await {
            tracing::error!(cluster, error = %e, "cannot change the cluster's contexts");
        }
    }

    /// Ask `cluster` over the link it opened (its workers, their tokens, a log): its
    /// answer, or why there is none.
    pub async fn ask(&self, cluster: u32, req: Request) -> Result<Response, AskError> {
        let (addr, generation) = {
            let link = self.link();
            (link.addr(cluster), link.generation(cluster).unwrap_or(0))
        };
        let addr = addr.ok_or(AskError::NotHeard)?;
        let sent = self.coap.request(
            addr,
            req,
            SendOptions::secure(PeerContexts::key(cluster, generation)),
        );
        match tokio::time::timeout(ASK_WAIT, sent).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(AskError::NoAnswer(e.to_string())),
            Err(_) => Err(AskError::NoAnswer(format!(
                "no answer within {} s",
                ASK_WAIT.as_secs()
            ))),
        }
    }

    /// Whether the answers to `cluster`'s reports ask for a new key.
    fn asks_rekey(&self, cluster: u32) -> bool {
        self.link().rekey_asked(cluster)
    }
}

/// `POST /v1/clusters/{id}/rekey`: the cluster's next key, answered under its current
/// one (stored as pending before it is handed out).
async fn rekey(st: Shared, inc: Incoming) -> Response {
    let id = match speaks_for(&inc, "cluster") {
        Ok(id) => id,
        Err(r) => return r,
    };
    let Some(link) = st.link.get() else {
        return Response::error(Code::SERVICE_UNAVAILABLE, "starting");
    };
    link.heard(&st, id, &inc).await;
    shell::rekey_answer(
        id,
        &link.link,
        || st.db(),
        &link.contexts,
        &link.coap,
        "cluster",
    )
    .await
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = getrandom::getrandom(&mut b);
    b
}

/// The IPv6 worker-subnet block of a cluster: fc00:<block + 1>::/32 inside fc00::/16.
fn v6_block(block: u32) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfc;
    a[2..4].copy_from_slice(&u16::try_from(block + 1).unwrap_or(u16::MAX).to_be_bytes());
    a
}

/// How long the root waits for a cluster's answer (the cluster may wait 8 s for its
/// worker's).
const ASK_WAIT: Duration = Duration::from_secs(12);

/// Why a cluster was not asked, or gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// No request of the cluster arrived since the root started.
    #[error("the cluster was not heard from since the root started; it reports every 5 s")]
    NotHeard,
    /// It did not answer.
    #[error("the cluster did not answer: {0}")]
    NoAnswer(String),
}

fn user_context(
    dir: &std::path::Path,
    kid: &[u8],
    secret: &[u8],
    salt: &[u8],
) -> Result<SecurityContext, String> {
    let params = ContextParams {
        master_secret: secret.to_vec(),
        master_salt: salt.to_vec(),
        sender_id: Vec::new(),
        recipient_id: kid.to_vec(),
        id_context: None,
    };
    let file = dir.join("oscore").join(format!("user-{}.seq", hex(kid)));
    SecurityContext::new(&params, Box::new(FileContextStore::new(file))).map_err(|e| e.to_string())
}

/// Cluster `cluster`'s commands now, as a new command set.
fn commands_of(st: &AppState, cluster: u32) -> ClusterCommands {
    let peers = st.peering().peers_of(cluster);
    commands_for(&st.db(), cluster, msg::next_generation(), peers)
}

/// Recompute what each cluster's overlay must reach; push commands to those whose set
/// changed.
fn refresh_reach(st: &AppState) {
    let interest = st.peering().interest();
    let hosts = orchestrate::hosts_of(&st.db(), &interest);
    let changed = st.peering().recompute(&hosts);
    st.clusters_changed(changed.into_iter().map(Some));
}

async fn register(st: Shared, inc: Incoming) -> Response {
    let Some(ctx_id) = inc.security.as_ref().and_then(|k| k.id_context.clone()) else {
        return Response::error(Code::FORBIDDEN, "registration needs a join token");
    };
    let token_id = hex(&ctx_id[..8.min(ctx_id.len())]);
    let reg: RegisterCluster = match msg::from_cbor(&inc.request.payload) {
        Ok(r) => r,
        Err(e) => return Response::error(Code::BAD_REQUEST, &e.to_string()),
    };
    if let Err(diag) = msg::check_version(reg.version) {
        return Response::error(Code::NOT_ACCEPTABLE, &diag);
    }
    if reg.name.is_empty() || reg.name.len() > 64 {
        return Response::error(Code::BAD_REQUEST, "cluster name must be 1 to 64 characters");
    }
    let Some(link) = st.link.get() else {
        return Response::error(Code::SERVICE_UNAVAILABLE, "starting: try again");
    };
    let key = PeerKey::fresh(0, &mut OsRandom);
    let row = {
        let mut db = st.db();
        match db.valid_cluster_token(&token_id, now_secs()) {
            Ok(Some(_)) => {}
            _ => return Response::error(Code::FORBIDDEN, "join token expired, used or revoked"),
        }
        let loc = reg.location.map(|g| (f64::from(g.lat), f64::from(g.lon)));
        let row = match db.register_cluster(&reg.name, loc) {
            Ok(r) => r,
            Err(e) => return Response::error(Code::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        if db
            .set_cluster_credentials(row.id, &key.secret, &key.salt)
            .is_err()
            || db.mark_cluster_token_used(&token_id).is_err()
        {
            return Response::error(
                Code::INTERNAL_SERVER_ERROR,
                "cannot store the cluster's credentials",
            );
        }
        row
    };
    // /18s of worker subnets (256 workers of /26 each) from 10.18.0.0 up to
    // 10.29.255.255: 48 blocks; a cluster gets as many as its expected workers need
    // (an aligned run, up to a /14), each handed out once and kept by its cluster.
    let want = reg.max_workers.unwrap_or(256).max(1).div_ceil(256);
    let (block, count) = match st.db().cluster_block(row.id, 48, want) {
        Ok(b) => b,
        Err(e) => return Response::error(Code::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let bits = u8::try_from(count.trailing_zeros()).unwrap_or(0);
    if let Err(e) = link.joined(row.id, &key, inc.peer).await {
        return Response::error(Code::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    let answer = ClusterRegistered {
        version: msg::PROTOCOL_VERSION,
        cluster: ClusterId(row.id),
        subnets: msg::Ipv4Prefix {
            addr: 0x0A12_0000 + (block << 14),
            len: 18 - bits,
        },
        subnets_v6: Some(msg::Ipv6Prefix {
            addr: v6_block(block),
            len: 32,
        }),
        timing: msg::Timing {
            heartbeat_ms: 5000,
            missed_before_lost: 3,
        },
        credentials: Some(key.credentials(row.id)),
    };
    Response {
        code: Code::CREATED,
        ..Response::cbor(msg::to_cbor(&answer))
    }
}

fn directory_lookup(st: &AppState, inc: &Incoming) -> Response {
    let is_cluster =
        matches!(&inc.security, Some(k) if k.id_context.is_none() && k.recipient_id.len() == 4);
    if !is_cluster {
        return Response::error(Code::FORBIDDEN, "the directory is for clusters");
    }
    let found = if let Some(ip) = inc.param("ip") {
        match ip.parse::<std::net::IpAddr>() {
            Ok(ip) => st.db().service_by_ip(ip),
            Err(_) => return Response::error(Code::BAD_REQUEST, "not an IP address"),
        }
    } else {
        st.db()
            .service_by_name(inc.param("name").unwrap_or_default())
    };
    let Ok(Some((app, s))) = found else {
        return Response::error(Code::NOT_FOUND, "no such service");
    };
    // Observing is the cluster's interest; deregistering (Observe: 1) ends it.
    let asker = inc.security.as_ref().map_or(0, |k| {
        u32::from_be_bytes(k.recipient_id[..4].try_into().unwrap_or_default())
    });
    let key = (asker, s.id.clone());
    let changed = {
        let mut r = st.peering();
        match inc.request.observe {
            Some(1) => r.observe(key.0, key.1, false),
            Some(_) => r.observe(key.0, key.1, true),
            None => false,
        }
    };
    if changed {
        refresh_reach(st);
    }
    let entry = entry_for(&st.db(), &app, &s);
    Response::cbor(msg::to_cbor(&entry))
}

async fn report(st: &Shared, inc: &Incoming) -> Response {
    let id = match speaks_for(inc, "cluster") {
        Ok(id) => id,
        Err(r) => return r,
    };
    let rep: ClusterReport = match msg::from_cbor(&inc.request.payload) {
        Ok(r) => r,
        Err(e) => return Response::error(Code::BAD_REQUEST, &e.to_string()),
    };
    let link = st.link.get();
    if let Some(l) = link {
        l.heard(st, id, inc).await;
    }
    st.metrics.report(id);
    // A batch sent again after a lost acknowledgement: its changes taken before are
    // not applied twice.
    let mark = rep
        .changes_from
        .map(grove_proto::link::upper::ChangeMark::from_wire);
    let taken = link.map_or(0, |l| l.link().take_changes(id, mark, rep.changes.len()));
    let mut db = st.db();
    let aggregate = rep.capacity.as_ref().map(msg::to_cbor);
    if let Err(e) = db.record_report(id, aggregate.as_deref(), now_secs()) {
        return Response::error(Code::NOT_FOUND, &e.to_string());
    }
    let mut services = HashSet::new();
    for c in &rep.changes[taken..] {
        // Only the cluster an instance is placed on speaks for it: a cluster back from
        // a partition cannot overwrite the status of an instance moved away.
        let placed_here = db
            .instances(Some(&c.instance.service))
            .unwrap_or_default()
            .iter()
            .any(|i| i.number == c.instance.instance && i.cluster == Some(id));
        if placed_here {
            let _ = db.set_instance_status(
                &c.instance.service,
                c.instance.instance,
                c.state.as_str(),
                c.detail.as_deref(),
                Some(id),
                c.worker.as_deref(),
            );
            let addr6 = c.addr6.map(|a| std::net::Ipv6Addr::from(a).to_string());
            let _ = db.set_instance_addr(
                &c.instance.service,
                c.instance.instance,
                c.addr,
                addr6.as_deref(),
            );
            services.insert(c.instance.service.clone());
            if c.state == msg::InstanceState::Running {
                st.metrics.running(&c.instance.service, c.instance.instance);
            }
        }
    }
    drop(db);
    let workers_changed = rep.workers.is_some_and(|w| st.peering().workers(id, w));
    if workers_changed || !services.is_empty() {
        refresh_reach(st);
    }
    if let Some(link) = link {
        for s in services {
            link.directory_changed(DirectoryUpdate::Service(s));
        }
    }
    let ack = msg::ReportAck {
        rekey: link.is_some_and(|l| l.asks_rekey(id)),
    };
    Response {
        code: Code::CHANGED,
        ..Response::cbor(msg::to_cbor(&ack))
    }
}

/// Start the link on `socket`, serving `http` (the API's router) to CoAP users too;
/// runs until the runtime stops.
pub async fn start(
    st: Shared,
    socket: tokio::net::UdpSocket,
    dir: PathBuf,
    lost_after: i64,
    http: axum::Router,
) -> std::io::Result<LinkHandle> {
    std::fs::create_dir_all(dir.join("oscore"))?;
    let (s1, s2, s3) = (st.clone(), st.clone(), st.clone());
    let s4 = st.clone();
    let router = Router::new()
        .fallback(move |inc| crate::coap_api::handle(s4.clone(), http.clone(), inc))
        .route(Method::Post, paths::CLUSTERS, move |inc| {
            register(s1.clone(), inc)
        })
        .route(Method::Post, "/v1/clusters/{id}/status", move |inc| {
            let st = s2.clone();
            async move { report(&st, &inc).await }
        })
        .observable("/v1/services/{name}", {
            let st = st.clone();
            move |inc| {
                let st = st.clone();
                async move { directory_lookup(&st, &inc) }
            }
        })
        .observable("/v1/services/by-ip/{ip}", {
            let st = st.clone();
            move |inc| {
                let st = st.clone();
                async move { directory_lookup(&st, &inc) }
            }
        })
        .observable("/v1/clusters/{id}/commands", move |inc| {
            let st = s3.clone();
            async move {
                match speaks_for(&inc, "cluster") {
                    Ok(id) => {
                        if let Some(l) = st.link.get() {
                            l.heard(&st, id, &inc).await;
                        }
                        Response::cbor(msg::to_cbor(&commands_of(&st, id)))
                    }
                    Err(r) => r,
                }
            }
        })
        .route(Method::Post, "/v1/clusters/{id}/rekey", {
            let st = st.clone();
            move |inc| rekey(st.clone(), inc)
        });
    let cfg = Config {
        seed: u64::from_le_bytes(random::<8>()),
        ..Config::default()
    };
    let mut endpoint = Endpoint::new(cfg);
    // Contexts of registered clusters and live join tokens survive a restart.
    let (clusters, tokens) = {
        let db = st.db();
        (
            db.clusters().unwrap_or_default(),
            db.live_cluster_tokens(now_secs()).unwrap_or_default(),
        )
    };
    // A restarted root gives every cluster a full loss timeout to report again, as if
    // it had just reported: silence during the root's own outage is not the cluster's.
    {
        let mut db = st.db();
        for c in &clusters {
            let _ = db.record_report(c.id, None, now_secs());
        }
    }
    // Every key a cluster may speak with, and the live join tokens, before the first
    // datagram is read.
    let mut upper = Upper::new();
    upper.load(clusters.iter().filter(|c| !c.evicted).filter_map(|c| {
        let (secret, salt) = c.credentials.clone()?;
        Some(StoredPeer {
            id: c.id,
            current: PeerKey {
                generation: c.key_gen,
                secret,
                salt,
            },
            pending: c.pending.clone().map(|(secret, salt)| PeerKey {
                generation: c.key_gen + 1,
                secret,
                salt,
            }),
            rekey_asked: c.rekey,
        })
    }));
    upper.sync_tokens(
        tokens
            .into_iter()
            .filter_map(|(id, secret)| Some((unhex(&id)?, secret))),
    );
    let contexts = PeerContexts::new(&dir, "cluster");
    contexts.apply_to_endpoint(&mut endpoint, upper.drain_actions());
    let (coap, _task) = driver::spawn(socket, endpoint, router)?;
    let users = st.db().coap_credentials().unwrap_or_default();
    for (kid, secret, salt) in users {
        match user_context(&dir, &kid, &secret, &salt) {
            Ok(ctx) => {
                coap.add_context(ctx).await;
            }
            Err(e) => tracing::error!(error = %e, "cannot load a CoAP user's OSCORE context"),
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
    let (dtx, mut drx) = mpsc::unbounded_channel::<DirectoryUpdate>();
    let link = LinkHandle {
        coap: coap.clone(),
        changed: tx,
        directory: dtx,
        dir: dir.clone(),
        link: Arc::new(Mutex::new(upper)),
        contexts,
    };
    // Push directory entries to the clusters observing them.
    let (st_dir, coap_dir) = (st.clone(), coap.clone());
    tokio::spawn(async move {
        while let Some(u) = drx.recv().await {
            let (entry, ips) = match u {
                DirectoryUpdate::Service(id) => {
                    let found = {
                        let db = st_dir.db();
                        db.service(&id)
                            .and_then(|s| Ok((db.application(&s.application)?, s)))
                    };
                    let Ok((app, s)) = found else { continue };
                    let e = entry_for(&st_dir.db(), &app, &s);
                    let ips = e.addresses();
                    (e, ips)
                }
                DirectoryUpdate::Removed(name, ips) => (orchestrate::removed_entry(name), ips),
            };
            let body = msg::to_cbor(&entry);
            coap_dir
                .notify(&paths::service(&entry.name), Response::cbor(body.clone()))
                .await;
            for ip in ips {
                let path = paths::service_by_ip(ip);
                coap_dir.notify(&path, Response::cbor(body.clone())).await;
            }
        }
    });
    // Push commands when a cluster's set changes.
    let (st_push, coap_push) = (st.clone(), coap.clone());
    tokio::spawn(async move {
        while let Some(id) = rx.recv().await {
            let body = msg::to_cbor(&commands_of(&st_push, id));
            coap_push
                .notify(
                    &paths::cluster_commands(ClusterId(id)),
                    Response::cbor(body),
                )
                .await;
        }
    });
    // Reschedule the instances of lost clusters.
    let (st_watch, link_watch) = (st.clone(), link.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let lost = orchestrate::reschedule_lost(&mut st_watch.db(), now_secs(), lost_after);
            let rolled =
                orchestrate::rollout_step(&mut st_watch.db(), &st_watch.metrics, now_secs());
            for changed in [lost, rolled] {
                for id in changed.clusters {
                    link_watch.cluster_changed(id);
                }
                for s in changed.services {
                    link_watch.directory_changed(DirectoryUpdate::Service(s));
                }
            }
        }
    });
    Ok(link)
}
