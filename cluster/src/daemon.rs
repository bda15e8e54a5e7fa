//! The running cluster: the node link (agents join, heartbeat, observe their full-state
//! commands), the root link (join, observe the cluster's commands, report), placement
//! with the cluster scheduler, and the loss watcher.

mod asked;
mod directory;
mod placement;
mod push;
mod root_link;
mod workers_link;

use crate::scheduler::{self, Demand, NodeView, Resources};
use crate::store::{InstanceRow, NewNode, Store, now_secs};
use grove_proto::coap::driver::{self, Handle, Router};
use grove_proto::coap::{Config, Endpoint, Method, Response};
use grove_proto::msg::{
    self, Capacity, ClusterCommands, ClusterId, GeoPoint, Heartbeat, InstanceRef, InstanceSpec,
    InstanceState, InstanceStatus, NetCoord, NodeCommand, NodeId, NodeRegistered, RegisterNode,
};
use grove_proto::paths;
use grove_proto::util::{format_join_token, hex, speaks_for};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Heartbeat period handed to workers.
pub const HEARTBEAT_MS: u32 = 2000;
/// Missed heartbeats before a worker is lost.
pub const MISSED: u32 = 3;
/// How to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The root's CoAP address.
    pub root: SocketAddr,
    /// Cluster name.
    pub name: String,
    /// Location.
    pub location: Option<GeoPoint>,
    /// State directory.
    pub data_dir: PathBuf,
    /// A cluster join token from the root (first start only).
    pub join_token: Option<String>,
    /// An instance its worker has not confirmed (still NODE_SCHEDULED) this long is
    /// placed again elsewhere.
    pub schedule_timeout: Duration,
    /// An instance still CREATING this long (an image pull that hangs) is placed again
    /// elsewhere.
    pub create_timeout: Duration,
    /// A directory entry no worker observes is dropped (and its observation at the
    /// root ended) after this long.
    pub directory_idle: Duration,
    /// Workers expected at most (sizes the block of worker subnets asked of the root).
    pub max_workers: Option<u32>,
    /// Whether `/metrics` is served (else heartbeats cost no metric work).
    pub metrics: bool,
}

/// How long a worker's registration waits for the cluster to join its root.
const JOIN_WAITS_FOR_ROOT: Duration = Duration::from_secs(20);

/// How often refused datagrams (malformed, or refused by OSCORE) are counted in the
/// log, when there were any.
const REFUSED_EVERY: Duration = Duration::from_secs(10);

/// Default of [`Settings::directory_idle`].
pub const DIRECTORY_IDLE: Duration = Duration::from_secs(60);

/// Default of [`Settings::schedule_timeout`].
pub const SCHEDULE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`Settings::create_timeout`]: room for a large image over a slow link.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(300);

/// Where an instance on its way to RUNNING is, since when, and the workers it got
/// stuck on before (Oakestra's #419: such instances stayed stuck for ever).
#[derive(Debug, Clone)]
struct Progress {
    state: String,
    since: Instant,
    avoid: Vec<u32>,
}

/// What the cluster knows of a worker from its heartbeats.
#[derive(Debug, Clone)]
struct WorkerSeen {
    last_seen: Instant,
    lost: bool,
    /// Network coordinate from the last heartbeat that carried one.
    coord: Option<NetCoord>,
    /// Since when the cluster hears it (its join, or the cluster's start).
    since: Instant,
    /// Where its heartbeats come from: its VXLAN endpoint.
    underlay: Option<std::net::IpAddr>,
    /// The socket its heartbeats come from (where the cluster asks it for logs).
    peer: Option<SocketAddr>,
    /// CPU (hundredths of a percent), memory in use and the machine's memory (MiB), by
    /// its last heartbeat that carried them.
    usage: Option<(u16, u32, u32)>,
}

impl WorkerSeen {
    fn fresh() -> Self {
        Self {
            last_seen: Instant::now(),
            lost: false,
            coord: None,
            since: Instant::now(),
            underlay: None,
            peer: None,
            usage: None,
        }
    }

    /// Its coordinate is not known yet but will be within a few heartbeats.
    fn coord_due(&self) -> bool {
        !self.lost
            && self.coord.is_none()
            && self.since.elapsed() < Duration::from_millis(u64::from(HEARTBEAT_MS * MISSED))
    }
}

/// The cluster's state shared by its tasks.
#[derive(Debug)]
pub struct Cluster {
    store: Mutex<Store>,
    coap: OnceLock<Handle>,
    seen: Mutex<HashMap<u32, WorkerSeen>>,
    to_root: mpsc::UnboundedSender<InstanceStatus>,
    block: Mutex<(u32, [u8; 16])>,
    /// How many /26s the block holds.
    subnets: std::sync::atomic::AtomicU32,
    /// Workers of other clusters this cluster's overlay reaches (from the root).
    foreign: Mutex<Vec<msg::NodePeer>>,
    dir: PathBuf,
    progress: Mutex<HashMap<(String, u32), Progress>>,
    timeouts: (Duration, Duration),
    directory_idle: Duration,
    /// Placements waiting for workers' coordinates.
    deferred: std::sync::atomic::AtomicBool,
    /// The root link, once joined.
    root_link: OnceLock<RootLink>,
    /// The service directory for the workers.
    directory: directory::Directory,
    /// Workers whose command sets are to be sent, and the pusher's wake-up.
    due: Mutex<push::Due>,
    due_wake: tokio::sync::Notify,
    /// What each worker was last given.
    sent: Mutex<HashMap<u32, push::Sent>>,
    /// The peer lists given out lately.
    peer_history: Mutex<push::PeerHistory>,
    /// The peer list given out now.
    published_peers: Mutex<push::Published<Vec<msg::NodePeer>>>,
    /// The service table given out now.
    published_services: Mutex<push::Published<Vec<msg::ServiceEntry>>>,
    /// The registered workers as the store has them (`None` after a registration).
    nodes_cache: Mutex<Option<Arc<Vec<crate::store::NodeRow>>>>,
    /// The workers' link: keys, join tokens, re-keys and evictions.
    link: Mutex<grove_proto::link::upper::Upper>,
    /// Where the workers' contexts keep their sequence numbers.
    contexts: grove_proto::link::shell::PeerContexts,
    /// What `/metrics` says, when it is served.
    metrics: Option<crate::metrics::Metrics>,
    /// Whether `block` is the root's (joined, or resumed from the store): a worker
    /// joining before would get a subnet of another cluster's block.
    block_known: tokio::sync::watch::Sender<bool>,
}

/// How the cluster talks to its root.
#[derive(Debug, Clone)]
struct RootLink {
    coap: Handle,
    key: grove_proto::coap::ContextKey,
    addr: SocketAddr,
    id: ClusterId,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = getrandom::getrandom(&mut b);
    b
}

/// Make a worker join token valid for `ttl_secs` and store it; returns `idhex.secrethex`.
pub fn make_worker_token(
    store: &mut Store,
    ttl_secs: i64,
    single_use: bool,
) -> Result<String, String> {
    let (id, secret) = (random::<8>(), random::<16>());
    store
        .create_worker_token(&hex(&id), &secret, now_secs() + ttl_secs, single_use)
        .map_err(|e| e.to_string())?;
    Ok(format_join_token(&id, &secret))
}

fn spec_of(i: &InstanceRow) -> Option<InstanceSpec> {
    msg::from_cbor(&i.spec).ok()
}

/// Whether an instance with status `s` has ended (runs nowhere, will not run again).
fn ended(s: &str) -> bool {
    InstanceState::from_name(s).is_final()
}

impl Cluster {
    fn db(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn seen(&self) -> MutexGuard<'_, HashMap<u32, WorkerSeen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn progress(&self) -> MutexGuard<'_, HashMap<(String, u32), Progress>> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The IPv6 overlay address that goes with `addr` on the worker with subnet `index`.
fn addr6_in(block: (u32, [u8; 16]), (index, size): (u32, u32), addr: u32) -> Option<[u8; 16]> {
    let (v4, v6) = subnets_of(block, index, size);
    msg::addr6_of(v4.addr, v4.len, v6.addr, v6.len, addr)
}

/// The workers' subnets and coordinates as directory endpoints need them.
#[derive(Debug)]
struct Workers {
    block: (u32, [u8; 16]),
    subnets: HashMap<u32, (u32, u32)>,
    coords: HashMap<u32, NetCoord>,
}

impl Workers {
    /// Where instance `row` (running `spec`) is reached: its instance IPs, its overlay
    /// addresses in its worker's subnets, and its worker's coordinate.
    fn endpoint(
        &self,
        row: &InstanceRow,
        spec: &InstanceSpec,
        me: ClusterId,
    ) -> Option<msg::InstanceEndpoint> {
        let (ip, node) = (spec.ip?, row.node?);
        let addr6 = row
            .addr
            .and_then(|a| addr6_in(self.block, *self.subnets.get(&node)?, a));
        Some(msg::InstanceEndpoint {
            instance: spec.instance.clone(),
            ip,
            ip6: spec.ip6,
            worker: format!("node-{node}"),
            cluster: me,
            state: InstanceState::from_name(&row.status),
            addr: row.addr,
            addr6,
            coord: self.coords.get(&node).copied(),
        })
    }
}

/// A worker's subnets from its first index in the cluster's block and their count:
/// `size` /26s (a /26 to a /22) and the IPv6 prefix whose host numbers match, a /120
/// for up to four /26s, else as many /120s as it takes (the block's /120 of each
/// index the worker's IPv4 subnet spans is the worker's).
fn subnets_of(block: (u32, [u8; 16]), index: u32, size: u32) -> (msg::Ipv4Prefix, msg::Ipv6Prefix) {
    // The /120 of index i is the block's /32 plus i·256 (byte 14 for the first 256).
    let v6 = (u128::from_be_bytes(block.1) + (u128::from(index) << 8)).to_be_bytes();
    // log2 of the size: 0 (/26) to 4 (/22).
    let bits = u8::try_from(size.max(1).trailing_zeros().min(4)).unwrap_or(0);
    (
        msg::Ipv4Prefix {
            addr: block.0 + index * 64,
            len: 26 - bits,
        },
        msg::Ipv6Prefix {
            addr: v6,
            len: 120 - bits.saturating_sub(2),
        },
    )
}

/// Start the node link on `socket` and the root link; runs until the runtime stops.
pub async fn start(
    s: Settings,
    store: Store,
    socket: tokio::net::UdpSocket,
) -> Result<Arc<Cluster>, String> {
    std::fs::create_dir_all(s.data_dir.join("oscore")).map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::unbounded_channel();
    let cl = Arc::new(Cluster {
        store: Mutex::new(store),
        coap: OnceLock::new(),
        seen: Mutex::new(HashMap::new()),
        to_root: tx,
        foreign: Mutex::default(),
        block: Mutex::new((
            0x0A12_0000,
            [0xfc, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        )),
        subnets: std::sync::atomic::AtomicU32::new(256),
        dir: s.data_dir.clone(),
        progress: Mutex::new(HashMap::new()),
        timeouts: (s.schedule_timeout, s.create_timeout),
        directory_idle: s.directory_idle,
        deferred: std::sync::atomic::AtomicBool::new(false),
        root_link: OnceLock::new(),
        directory: directory::Directory::default(),
        due: Mutex::default(),
        due_wake: tokio::sync::Notify::new(),
        sent: Mutex::default(),
        peer_history: Mutex::default(),
        published_peers: Mutex::default(),
        published_services: Mutex::default(),
        nodes_cache: Mutex::default(),
        link: Mutex::default(),
        contexts: workers_link::contexts(&s.data_dir),
        metrics: s.metrics.then(crate::metrics::Metrics::default),
        block_known: tokio::sync::watch::Sender::new(false),
    });
    let router = Router::new()
        .route(Method::Post, paths::NODES, {
            let cl = cl.clone();
            move |inc| workers_link::register_node(cl.clone(), inc)
        })
        .route(Method::Post, "/v1/nodes/{id}/rekey", {
            let cl = cl.clone();
            move |inc| workers_link::rekey(cl.clone(), inc)
        })
        .route(Method::Post, "/v1/nodes/{id}/status", {
            let cl = cl.clone();
            move |inc| workers_link::node_status(cl.clone(), inc)
        })
        .observable("/v1/nodes/{id}/commands", {
            let shared = cl.clone();
            move |inc| {
                let cl = shared.clone();
                async move {
                    match speaks_for(&inc, "node") {
                        Ok(id) => {
                            cl.heard(id, &inc).await;
                            Response::cbor(msg::to_cbor(&cl.commands_for(id)))
                        }
                        Err(r) => r,
                    }
                }
            }
        })
        .observable("/v1/services/by-ip/{ip}", {
            let cl = cl.clone();
            move |inc| directory::lookup(cl.clone(), inc)
        })
        .observable("/v1/services/{name}", {
            let cl = cl.clone();
            move |inc| directory::lookup(cl.clone(), inc)
        });
    let cfg = Config {
        seed: u64::from_le_bytes(random::<8>()),
        ..Config::default()
    };
    // Everything a worker may speak with is known before the first datagram is read:
    // the contexts of workers registered before a restart (which get a grace period of
    // one loss timeout) and the join tokens made so far.
    let mut endpoint = Endpoint::new(cfg);
    workers_link::load(&cl, &mut endpoint);
    let (coap, _) = driver::spawn(socket, endpoint, router).map_err(|e| e.to_string())?;
    let _ = cl.coap.set(coap.clone());
    // Instances on their way to RUNNING before a restart are watched from now on.
    let unfinished: Vec<InstanceRow> = cl.db().instances().unwrap_or_default();
    for i in &unfinished {
        cl.track(&i.service, i.number, &i.status);
    }
    // Join tokens, evictions and re-keys asked by `grove-cluster` while running.
    cl.sync_keys().await;
    let ct = cl.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(workers_link::SYNC_EVERY);
        loop {
            tick.tick().await;
            ct.sync_keys().await;
        }
    });
    // What the endpoint refused, said when it refused anything (a flood shows here).
    let cs = cl.clone();
    tokio::spawn(async move {
        let mut last = grove_proto::coap::Stats::default();
        let mut tick = tokio::time::interval(REFUSED_EVERY);
        loop {
            tick.tick().await;
            let Some(h) = cs.coap.get() else { continue };
            let s = h.stats().await;
            let (malformed, rejected) = (
                s.malformed.saturating_sub(last.malformed),
                s.oscore_rejected.saturating_sub(last.oscore_rejected),
            );
            if malformed + rejected > 0 {
                tracing::warn!(
                    malformed,
                    oscore_rejected = rejected,
                    total_malformed = s.malformed,
                    total_rejected = s.oscore_rejected,
                    datagrams_in = s.datagrams_in,
                    "datagrams refused in the last {} s",
                    REFUSED_EVERY.as_secs()
                );
            }
            last = s;
        }
    });
    // Directory entries no worker observes any more.
    let cd = cl.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            cd.sweep_directory().await;
        }
    });
    // The workers' command sets, sent in rounds.
    tokio::spawn(cl.clone().pusher());
    // Loss watcher.
    let cw = cl.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let mut touched = cw.handle_losses();
            if !touched.is_empty() {
                // A worker lost leaves the overlay of every other one.
                let others: Vec<u32> = cw
                    .seen()
                    .iter()
                    .filter(|(_, l)| !l.lost)
                    .map(|(id, _)| *id)
                    .collect();
                touched.extend(others);
            }
            touched.extend(cw.handle_stuck());
            if cw.deferred.swap(false, Ordering::Relaxed) {
                touched.extend(cw.place_pending());
            }
            cw.mark(touched);
            cw.push_directory().await;
        }
    });
    // Root link: join (or resume), observe commands, report.
    root_link::open(&cl, &s, rx)
        .await
        .map_err(|e| e.to_string())?;
    Ok(cl)
}

/// Serve `/metrics` on `listener` (the `--metrics` port).
pub async fn serve_metrics(cl: Arc<Cluster>, listener: tokio::net::TcpListener) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let cl = cl.clone();
            async move {
                let statuses: Vec<String> = cl
                    .db()
                    .instances()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|i| i.status)
                    .collect();
                let stats = match cl.coap.get() {
                    Some(h) => h.stats().await,
                    None => grove_proto::coap::Stats::default(),
                };
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    cl.metrics
                        .as_ref()
                        .map(|m| m.render(&statuses, stats))
                        .unwrap_or_default(),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics port stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn larger_worker_subnets_keep_ipv6_host_numbers_inside_their_prefix() {
        let block = (
            0x0A12_0000,
            [0xfc, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        );
        for (index, size, len4, len6) in [
            (3, 1, 26, 120),
            (2, 2, 25, 120),
            (8, 8, 23, 119),
            (16, 16, 22, 118),
        ] {
            let (v4, v6) = subnets_of(block, index, size);
            assert_eq!((v4.len, v6.len), (len4, len6), "{size} /26s");
            assert_eq!(v4.addr, block.0 + index * 64);
            // The last address of the IPv4 subnet still has its IPv6 twin.
            let last = v4.addr + (1 << (32 - u32::from(len4))) - 2;
            assert!(
                addr6_in(block, (index, size), last).is_some(),
                "{size} /26s"
            );
        }
        // Past the first 256 /26s (a cluster with a block of several /18s) the /120s
        // go on in order: none is shared.
        let v6 = |i| u128::from_be_bytes(subnets_of(block, i, 1).1.addr);
        assert_eq!(v6(256) - v6(255), 256);
        assert_eq!(subnets_of(block, 1000, 1).0.addr, block.0 + 64_000);
    }
}
