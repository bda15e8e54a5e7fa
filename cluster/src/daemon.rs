//! The running cluster: the node link (agents join, heartbeat, observe their full-state
//! commands), the root link (join, observe the cluster's commands, report), placement
//! with the cluster scheduler, and the loss watcher.

mod asked;
mod directory;
mod push;
mod root_link;
mod workers_link;

use crate::scheduler::{self, Demand, NodeView, Resources};
use crate::store::{InstanceRow, NewNode, Store, now_secs};
use grove_proto::coap::driver::{self, Handle, Incoming, Router};
use grove_proto::coap::{Code, Config, Endpoint, Method, Response};
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

const ENDED: [&str; 4] = ["FAILED", "DEAD", "COMPLETED", "UNDEPLOYED"];

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

    /// Note an instance's new state; only the way to RUNNING is watched.
    fn track(&self, service: &str, number: u32, state: &str) {
        let key = (service.to_owned(), number);
        let mut p = self.progress();
        if state == "NODE_SCHEDULED" || state == "CREATING" {
            let e = p.entry(key).or_insert_with(|| Progress {
                state: String::new(),
                since: Instant::now(),
                avoid: Vec::new(),
            });
            if e.state != state {
                e.state = state.to_owned();
                e.since = Instant::now();
            }
        } else {
            p.remove(&key);
        }
    }

    /// Take back instances stuck on their way to RUNNING and place them again, on
    /// another worker if one qualifies; returns the workers to notify.
    fn handle_stuck(&self) -> HashSet<u32> {
        let (sched, create) = self.timeouts;
        let stuck: Vec<(String, u32, String)> = self
            .progress()
            .iter()
            .filter(|(_, p)| {
                let limit = if p.state == "CREATING" { create } else { sched };
                p.since.elapsed() > limit
            })
            .map(|((s, n), p)| (s.clone(), *n, p.state.clone()))
            .collect();
        let mut touched = HashSet::new();
        for (service, number, state) in stuck {
            let row = self
                .db()
                .instances()
                .unwrap_or_default()
                .into_iter()
                .find(|i| i.service == service && i.number == number);
            let Some(node) = row.and_then(|r| r.node) else {
                self.progress().remove(&(service, number));
                continue;
            };
            tracing::warn!(%service, number, node, %state, "instance stuck: placing it again");
            if let Some(p) = self.progress().get_mut(&(service.clone(), number)) {
                p.avoid.push(node);
                p.state.clear();
            }
            let _ = self
                .db()
                .place(&service, number, None, "CLUSTER_SCHEDULED", None);
            touched.insert(node);
        }
        if !touched.is_empty() {
            touched.extend(self.place_pending());
        }
        touched
    }

    /// The services with instances in this cluster and their RUNNING instances'
    /// overlay addresses (what every worker's service IP table is made of).
    fn services_of(&self, rows: &[InstanceRow]) -> Vec<msg::ServiceEntry> {
        let me = self.root_link.get().map_or(ClusterId(0), |l| l.id);
        let mut out: BTreeMap<String, msg::ServiceEntry> = BTreeMap::new();
        let workers = self.workers();
        for row in rows {
            let Some(spec) = spec_of(row) else { continue };
            let e = out
                .entry(row.service.clone())
                .or_insert_with(|| msg::ServiceEntry {
                    name: spec.name.clone(),
                    service: row.service.clone(),
                    rr_ip: spec.rr_ip,
                    closest_ip: spec.closest_ip,
                    instances: Vec::new(),
                    rr_ip6: spec.rr_ip6,
                    closest_ip6: spec.closest_ip6,
                });
            if row.status != "RUNNING" || row.addr.is_none() {
                continue;
            }
            e.instances.extend(workers.endpoint(row, &spec, me));
        }
        out.into_values().collect()
    }

    /// The IPv6 overlay address that goes with `addr` on worker `node`.
    fn addr6_on(&self, node: u32, addr: u32) -> Option<[u8; 16]> {
        let block = *self.block.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.db().node(node).ok()?;
        addr6_in(block, (n.subnet, n.subnet_size), addr)
    }

    /// The registered workers, read from the store once after each registration
    /// (rounds, reports and placements read them many times a second).
    fn nodes(&self) -> Arc<Vec<crate::store::NodeRow>> {
        let mut c = self.nodes_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.as_ref() {
            return n.clone();
        }
        let n = Arc::new(self.db().nodes().unwrap_or_default());
        *c = Some(n.clone());
        n
    }

    /// Worker `id` says what its limits are now: stored when they changed (from the
    /// cached rows, so an unchanged heartbeat costs no query).
    fn limits_now(&self, id: u32, limits: &msg::WorkerLimits) {
        let known = self
            .nodes()
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.limits.clone());
        if known.as_ref().is_some_and(|l| l.as_ref() == Some(limits)) {
            return;
        }
        if self.db().set_limits(id, limits).is_ok() {
            *self.nodes_cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!(node = id, ?limits, "the worker's limits changed");
        }
    }

    /// What directory endpoints need of the workers, read once for a whole table
    /// (not once per instance).
    fn workers(&self) -> Workers {
        Workers {
            block: *self.block.lock().unwrap_or_else(|p| p.into_inner()),
            subnets: self
                .nodes()
                .iter()
                .map(|n| (n.id, (n.subnet, n.subnet_size)))
                .collect(),
            coords: self
                .seen()
                .iter()
                .filter_map(|(id, l)| Some((*id, l.coord?)))
                .collect(),
        }
    }

    /// The workers the overlay spans: this cluster's, and those of other clusters
    /// the root said its workers exchange traffic with.
    fn peers(&self) -> Vec<msg::NodePeer> {
        let mut p = self.own_peers();
        p.extend(
            self.foreign
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        msg::sort_peers(&mut p);
        p
    }

    /// This cluster's active workers whose address is known.
    fn own_peers(&self) -> Vec<msg::NodePeer> {
        let block = *self.block.lock().unwrap_or_else(|p| p.into_inner());
        let nodes = self.nodes();
        let live = self.seen();
        nodes
            .iter()
            .filter_map(|n| {
                let l = live.get(&n.id).filter(|l| !l.lost)?;
                let (subnet_v4, subnet_v6) = subnets_of(block, n.subnet, n.subnet_size);
                Some(msg::NodePeer {
                    node: NodeId(n.id),
                    underlay: l.underlay?.to_string(),
                    subnet_v4,
                    subnet_v6,
                })
            })
            .collect()
    }

    fn views(&self, exclude: Option<u32>) -> Vec<NodeView> {
        let nodes = self.nodes();
        let instances = self.db().instances().unwrap_or_default();
        let live = self.seen().clone();
        nodes
            .iter()
            .map(|n| {
                let mut reserved = Resources::default();
                let mut ports = Vec::new();
                for i in instances
                    .iter()
                    .filter(|i| i.node == Some(n.id) && !ENDED.contains(&i.status.as_str()))
                {
                    if let Some(s) = spec_of(i) {
                        let takes = scheduler::on_worker(
                            n.limits.as_ref(),
                            Resources {
                                millicpus: s.millicpus,
                                memory_mib: s.memory_mib,
                                vgpus: 0,
                            },
                        );
                        reserved.millicpus += takes.millicpus;
                        reserved.memory_mib += takes.memory_mib;
                        ports.extend(host_ports(&s));
                    }
                }
                NodeView {
                    id: NodeId(n.id),
                    name: n.name.clone(),
                    active: Some(n.id) != exclude && live.get(&n.id).is_some_and(|l| !l.lost),
                    arch: n.arch.clone(),
                    virtualizations: n.virtualizations.clone(),
                    location: n.location.map(|(a, b)| GeoPoint {
                        lat: degrees(a),
                        lon: degrees(b),
                    }),
                    coord: live.get(&n.id).and_then(|l| l.coord),
                    capacity: Resources {
                        millicpus: n.cpus * 1000,
                        memory_mib: n.memory_mib,
                        vgpus: 0,
                    },
                    reserved,
                    same_service: 0,
                    ports,
                    limits: n.limits.clone(),
                }
            })
            .collect()
    }

    /// Place every instance without a (live) worker; returns the workers to notify.
    fn place_pending(&self) -> HashSet<u32> {
        let mut touched = HashSet::new();
        let instances = self.db().instances().unwrap_or_default();
        for i in instances
            .iter()
            .filter(|i| i.node.is_none() && !ENDED.contains(&i.status.as_str()))
        {
            let Some(spec) = spec_of(i) else { continue };
            // A latency constraint cannot be judged while a worker that just joined (or
            // a cluster that just restarted) still waits for its coordinate: wait too.
            if spec.latency.is_some() && self.seen().values().any(WorkerSeen::coord_due) {
                self.deferred.store(true, Ordering::Relaxed);
                continue;
            }
            let mut views = self.views(None);
            // Fresh: instances placed earlier in this pass count too.
            let now = self.db().instances().unwrap_or_default();
            let same: Vec<u32> = now
                .iter()
                .filter(|x| x.service == i.service && !ENDED.contains(&x.status.as_str()))
                .filter_map(|x| x.node)
                .collect();
            for v in &mut views {
                v.same_service = u32::try_from(same.iter().filter(|n| **n == v.id.0).count())
                    .unwrap_or(u32::MAX);
            }
            let avoid = self
                .progress()
                .get(&(i.service.clone(), i.number))
                .map(|p| p.avoid.clone())
                .unwrap_or_default();
            let demand = Demand {
                resources: Resources {
                    millicpus: spec.millicpus,
                    memory_mib: spec.memory_mib,
                    vgpus: 0,
                },
                virtualization: "container".into(),
                arch: vec![],
                constraints: constraints_of(&spec, &views),
                ports: host_ports(&spec),
                storage_mib: spec.storage_mib.unwrap_or(0),
            };
            // Workers it got stuck on come last: tried only when no other one qualifies.
            let elsewhere: Vec<NodeView> = views
                .iter()
                .filter(|v| !avoid.contains(&v.id.0))
                .cloned()
                .collect();
            let placed = scheduler::schedule(&elsewhere, &demand)
                .or_else(|_| scheduler::schedule(&views, &demand));
            let (node, state, reason) = match placed {
                Ok(n) => (Some(n.0), InstanceState::NodeScheduled, None),
                Err(f) => {
                    // A limit or host port no worker can honour is named.
                    let why = match f {
                        scheduler::Failure::NoQualifiedWorkerFound => {
                            scheduler::why_unqualified(&views, &demand)
                        }
                        _ => None,
                    };
                    let reason = match why {
                        Some(w) => format!("{}: {w}", f.as_str()),
                        None => f.as_str().to_owned(),
                    };
                    (None, InstanceState::Failed, Some(reason))
                }
            };
            if self
                .db()
                .place(
                    &i.service,
                    i.number,
                    node,
                    state.as_str(),
                    reason.as_deref(),
                )
                .is_ok()
            {
                touched.extend(node);
                self.track(&i.service, i.number, state.as_str());
                self.directory.touch(&i.service);
                let _ = self.to_root.send(InstanceStatus {
                    instance: InstanceRef {
                        service: i.service.clone(),
                        instance: i.number,
                    },
                    state,
                    detail: reason,
                    ip: spec.ip,
                    worker: node.map(|n| format!("node-{n}")),
                    addr: None,
                    addr6: None,
                });
            }
        }
        touched
    }

    /// Apply the root's full command set.
    pub async fn apply_root(&self, cmds: &ClusterCommands) {
        let mut touched = HashSet::new();
        let wanted: BTreeMap<(String, u32), &InstanceSpec> = cmds
            .commands
            .iter()
            .filter_map(|c| match c {
                NodeCommand::Deploy(s) => {
                    Some(((s.instance.service.clone(), s.instance.instance), s))
                }
                NodeCommand::Undeploy(_) => None,
            })
            .collect();
        let have = self.db().instances().unwrap_or_default();
        for i in &have {
            if !wanted.contains_key(&(i.service.clone(), i.number)) {
                self.directory.touch(&i.service);
                if let Ok(Some(n)) = self.db().remove_instance(&i.service, i.number) {
                    touched.insert(n);
                }
            }
        }
        for ((service, number), spec) in &wanted {
            let changed = self
                .db()
                .upsert_instance(service, *number, &msg::to_cbor(*spec))
                .unwrap_or(false);
            if changed {
                if let Some(n) = have
                    .iter()
                    .find(|i| i.service == *service && i.number == *number)
                    .and_then(|i| i.node)
                {
                    touched.insert(n);
                }
            }
        }
        touched.extend(self.place_pending());
        let foreign_changed = cmds.peers.as_ref().is_some_and(|p| {
            let mut f = self.foreign.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *f != *p;
            f.clone_from(p);
            changed
        });
        if foreign_changed {
            self.mark_all();
        } else {
            self.mark(touched);
        }
        self.push_directory().await;
    }

    /// Move the instances of workers silent for too long; returns workers to notify.
    fn handle_losses(&self) -> HashSet<u32> {
        let limit = Duration::from_millis(u64::from(HEARTBEAT_MS * MISSED));
        let lost: Vec<u32> = {
            let mut live = self.seen();
            let mut out = Vec::new();
            for (id, l) in live.iter_mut() {
                if !l.lost && l.last_seen.elapsed() > limit {
                    l.lost = true;
                    out.push(*id);
                }
            }
            out
        };
        let mut touched = HashSet::new();
        for id in lost {
            tracing::warn!(node = id, "worker lost: moving its instances");
            if let Some(m) = &self.metrics {
                m.lost(id);
            }
            touched.extend(self.move_instances_off(id));
            touched.extend(self.place_pending());
        }
        touched
    }

    /// Take a worker's instances back (to be placed elsewhere); the workers touched.
    fn move_instances_off(&self, id: u32) -> HashSet<u32> {
        self.forget_sent(id);
        // Collect first: a guard in the loop head would live through the body.
        let placed: Vec<InstanceRow> = self
            .db()
            .instances()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i.node == Some(id) && !ENDED.contains(&i.status.as_str()))
            .collect();
        for i in &placed {
            let _ = self
                .db()
                .place(&i.service, i.number, None, "CLUSTER_SCHEDULED", None);
            self.directory.touch(&i.service);
        }
        HashSet::from([id])
    }

    fn capacity(&self) -> Vec<Capacity> {
        let mut classes: BTreeMap<(String, String), Capacity> = BTreeMap::new();
        for v in self.views(None).iter().filter(|v| v.active) {
            let free_cpu = v.capacity.millicpus.saturating_sub(v.reserved.millicpus);
            let free_mem = v.capacity.memory_mib.saturating_sub(v.reserved.memory_mib);
            for virt in &v.virtualizations {
                let c = classes
                    .entry((v.arch.clone(), virt.clone()))
                    .or_insert_with(|| Capacity {
                        arch: v.arch.clone(),
                        virtualization: virt.clone(),
                        nodes: 0,
                        free_millicpus: 0,
                        free_memory_mib: 0,
                        max_free_millicpus: 0,
                        max_free_memory_mib: 0,
                        free_vgpus: None,
                        max_free_vgpus: None,
                    });
                c.nodes += 1;
                c.free_millicpus += u64::from(free_cpu);
                c.free_memory_mib += u64::from(free_mem);
                c.max_free_millicpus = c.max_free_millicpus.max(free_cpu);
                c.max_free_memory_mib = c.max_free_memory_mib.max(free_mem);
            }
        }
        classes.into_values().collect()
    }
}

/// The host ports an instance maps (its `port` field; the root validated it).
fn host_ports(spec: &InstanceSpec) -> Vec<(u16, grove_proto::ports::Protocol)> {
    spec.ports
        .as_deref()
        .and_then(|p| grove_proto::ports::parse_ports(p).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.host, m.protocol))
        .collect()
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

fn degrees(x: f64) -> f32 {
    #[allow(clippy::cast_possible_truncation)]
    let y = x as f32;
    y
}

/// The scheduler's constraints for a spec. A latency target is the coordinate of the
/// worker nearest (on the map) to the users' location.
fn constraints_of(spec: &InstanceSpec, views: &[NodeView]) -> Vec<scheduler::Constraint> {
    let mut out = Vec::new();
    if let Some(nodes) = &spec.nodes {
        out.push(scheduler::Constraint::Nodes(nodes.clone()));
    }
    if let Some(g) = spec.geo {
        out.push(scheduler::Constraint::Geo {
            location: g.location,
            threshold_km: f64::from(g.threshold_km),
        });
    }
    if let Some(l) = spec.latency {
        let nearest = views
            .iter()
            .filter_map(|v| {
                Some((
                    grove_proto::util::distance_km(v.location?, l.location),
                    v.coord?,
                ))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, c)| c);
        // No worker to stand for the users yet: no worker can be shown to be near them.
        out.push(scheduler::Constraint::Latency {
            targets: nearest.into_iter().collect(),
            threshold_ms: l.threshold_ms,
        });
    }
    out
}

async fn register_node(cl: Arc<Cluster>, inc: Incoming) -> Response {
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
    let key = grove_proto::link::PeerKey::fresh(0, &mut grove_proto::link::OsRandom);
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

async fn node_status(cl: Arc<Cluster>, inc: Incoming) -> Response {
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
            move |inc| register_node(cl.clone(), inc)
        })
        .route(Method::Post, "/v1/nodes/{id}/rekey", {
            let cl = cl.clone();
            move |inc| workers_link::rekey(cl.clone(), inc)
        })
        .route(Method::Post, "/v1/nodes/{id}/status", {
            let cl = cl.clone();
            move |inc| node_status(cl.clone(), inc)
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
