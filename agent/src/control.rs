//! The agent's control loop: join, heartbeat, observe commands, converge the runtime,
//! report status changes at once, reconnect with back-off — one task, no threads per
//! instance. While the cluster is away, instances keep running and changes queue up.

use crate::runtime::Runtime;
use grove_proto::coap::driver::{Handle, Router};
use grove_proto::coap::{Code, ContextKey, LinkParams, Request, Response, SendOptions};
use grove_proto::link::OsRandom;
use grove_proto::link::lower::LowerConfig;
use grove_proto::link::shell::{self, Followed, LowerLink, LowerPaths, LowerTier, Outcome};
use grove_proto::link::upper::ChangeMark;
use grove_proto::msg::{
    self, GeoPoint, Heartbeat, HeartbeatAck, InstanceRef, InstanceStatus, NetCoord, NodeCommand,
    NodeCommands, NodeId, NodeRegistered, RegisterNode,
};
use grove_proto::oscore::{ContextParams, FileContextStore, SecurityContext};
use grove_proto::paths;
use grove_proto::vivaldi::Vivaldi;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// What the control loop needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The cluster's CoAP address.
    pub cluster: SocketAddr,
    /// This worker's name.
    pub name: String,
    /// A worker join token `idhex.secrethex` (needed only for the first join).
    pub join_token: Option<String>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Where the worker is.
    pub location: Option<GeoPoint>,
    /// Room for this many instances.
    pub max_instances: Option<u16>,
    /// CPUs offered (default: the machine's).
    pub cpus: Option<u16>,
    /// Memory offered, MiB (default: the machine's).
    pub memory_mib: Option<u32>,
    /// Defaults, unenforced limits and host ports, as told to the cluster.
    pub limits: Option<msg::WorkerLimits>,
    /// How often the loop looks at its runtime when nothing woke it ([`TICK`]).
    pub tick: Duration,
}

/// How often an agent looks at its runtime (exits, restarts, lookups) unwoken.
pub const TICK: Duration = Duration::from_millis(200);

/// Why the loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No stored credentials and no join token.
    #[error(
        "no credentials in {0} and no --join-token: ask the cluster operator for a worker join token"
    )]
    NoToken(String),
    /// A malformed token.
    #[error("join token must be <id hex>.<secret hex> with an 8-byte id")]
    BadToken,
    /// The cluster refused the registration.
    #[error("the cluster refused the registration: {0}")]
    Refused(String),
    /// Local I/O.
    #[error("{0}")]
    Io(String),
}

/// The cluster is the anchor of its workers' coordinates: the origin, known exactly.
const CLUSTER_COORD: NetCoord = NetCoord([0.0; 3]);
const CLUSTER_ERROR: f32 = 0.01;

fn parse_token(t: &str) -> Result<(Vec<u8>, Vec<u8>), ControlError> {
    grove_proto::util::parse_join_token(t).ok_or(ControlError::BadToken)
}

fn meminfo_mib() -> u32 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| u32::try_from(kib / 1024).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

fn credentials_file(dir: &Path) -> PathBuf {
    dir.join("node.cbor")
}

/// Join the cluster with the join token of `s`: the registration, protected with the
/// token's context; the answer holds the worker's id, subnets and long-term credentials.
pub async fn join(c: &Handle, s: &Settings) -> Result<NodeRegistered, ControlError> {
    let token = s
        .join_token
        .as_deref()
        .ok_or_else(|| ControlError::NoToken(s.state_dir.display().to_string()))?;
    let (id, secret) = parse_token(token)?;
    let reg = RegisterNode {
        version: msg::PROTOCOL_VERSION,
        name: s.name.clone(),
        arch: std::env::consts::ARCH.into(),
        cpus: s.cpus.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| u16::try_from(n.get()).unwrap_or(u16::MAX))
                .unwrap_or(1)
        }),
        memory_mib: s.memory_mib.unwrap_or_else(meminfo_mib),
        disk_mib: 32_000,
        virtualizations: vec!["container".into()],
        location: s.location,
        max_instances: s.max_instances,
        underlay: None,
        limits: s.limits.clone(),
    };
    let answer = shell::join(
        c,
        s.cluster,
        (&id, &secret),
        paths::NODES,
        msg::to_cbor(&reg),
        LowerConfig::default(),
        &mut OsRandom,
    )
    .await
    .map_err(|e| ControlError::Refused(e.to_string()))?;
    msg::from_cbor(&answer).map_err(|e| ControlError::Refused(e.to_string()))
}

fn digest(instances: &[(InstanceRef, msg::InstanceState)]) -> [u8; 8] {
    let mut keys: Vec<String> = instances
        .iter()
        .map(|(i, s)| format!("{}/{}/{}", i.service, i.instance, s.as_str()))
        .collect();
    keys.sort();
    let h = Sha256::digest(keys.join("\n").as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&h[..8]);
    out
}

/// Keep the registration (with the worker's key) in `file`, readable by the agent only:
/// written to a temporary file, synced, renamed over the old one and the directory
/// synced, so a worker killed at any moment finds the old key or the new one whole.
pub fn store_registration(file: &Path, reg: &NodeRegistered) -> Result<(), ControlError> {
    grove_proto::util::replace_private(file, &msg::to_cbor(reg))
        .map_err(|e| ControlError::Io(format!("{}: {e}", file.display())))
}

/// The worker's long-term OSCORE context with its cluster, from the registration's
/// credentials; its sequence numbers persist in `seq_file`.
pub fn link_context(
    reg: &NodeRegistered,
    seq_file: &Path,
) -> Result<SecurityContext, ControlError> {
    let creds = reg
        .credentials
        .clone()
        .ok_or_else(|| ControlError::Refused("no credentials in the answer".into()))?;
    SecurityContext::new(
        &ContextParams::from(creds),
        Box::new(FileContextStore::new(seq_file)),
    )
    .map_err(|e| ControlError::Io(e.to_string()))
}

/// Converge the runtime to a full command set; returns nothing (changes come from poll).
/// Observe the directory entry of the service `ip` belongs to at the cluster, passing
/// each version on (and `None` when not found or when the observation ends).
fn watch_service(
    c: Handle,
    key: ContextKey,
    cluster: SocketAddr,
    ip: IpAddr,
    tx: mpsc::UnboundedSender<(IpAddr, Option<msg::ServiceEntry>)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let r = c
            .observe(
                cluster,
                Request::get(&paths::service_by_ip(ip)),
                SendOptions::secure(key),
            )
            .await;
        if let Some(mut o) = r.ok().filter(|o| o.first.code == Code::CONTENT) {
            let _ = tx.send((ip, msg::from_cbor(&o.first.payload).ok()));
            while let Some(n) = o.notifications.recv().await {
                if let Ok(e) = msg::from_cbor(&n.payload) {
                    let _ = tx.send((ip, Some(e)));
                }
            }
        }
        let _ = tx.send((ip, None));
    })
}

/// The command set in `payload` if `take` finds its generation newer than what was
/// taken (a late older set, a notification overtaken by the answer of a new
/// observation, is not).
fn newer(payload: &[u8], take: &mut (dyn FnMut(u64) -> bool + Send)) -> Option<NodeCommands> {
    let cmds: NodeCommands = msg::from_cbor(payload).ok()?;
    if !take(cmds.generation) {
        tracing::debug!(generation = cmds.generation, "older commands ignored");
        return None;
    }
    Some(cmds)
}

/// The parts of its command set a worker holds between notifications: the peers, and
/// the digests of the peers and the service table the cluster last named.
#[derive(Debug, Default)]
struct HeldParts {
    peers: Vec<msg::NodePeer>,
    peers_digest: Option<[u8; 8]>,
    services_digest: Option<[u8; 8]>,
}

/// Bring `held` up to `cmds`: a whole list is taken, a delta of the peers is applied
/// (and put into `cmds.peers` for the runtime). Whether `cmds` cannot be followed —
/// it left out a part that changed, or its delta starts from peers not held or does
/// not end at its digest (a notification was lost: the worker must observe afresh).
fn held_parts(cmds: &mut NodeCommands, held: &mut HeldParts) -> bool {
    let mut stale = false;
    match (&cmds.peers, cmds.peers_base) {
        (Some(p), _) => {
            held.peers.clone_from(p);
            held.peers_digest = cmds.peers_digest;
        }
        (None, Some(base)) if held.peers_digest == Some(base) => {
            msg::apply_peers(
                &mut held.peers,
                cmds.peers_added.as_deref().unwrap_or_default(),
                cmds.peers_removed.as_deref().unwrap_or_default(),
            );
            if Some(msg::digest_of(&held.peers)) == cmds.peers_digest {
                held.peers_digest = cmds.peers_digest;
                cmds.peers = Some(held.peers.clone());
            } else {
                // Not the list the cluster meant: what is held is no list of its.
                held.peers_digest = None;
                stale = true;
            }
        }
        (None, Some(_)) => stale = true,
        (None, None) => {
            stale |= cmds.peers_digest.is_some() && cmds.peers_digest != held.peers_digest
        }
    }
    if cmds.services.is_some() {
        held.services_digest = cmds.services_digest;
    } else if cmds.services_digest.is_some() && cmds.services_digest != held.services_digest {
        stale = true;
    }
    stale
}

fn converge(rt: &mut dyn Runtime, cmds: &NodeCommands) {
    tracing::debug!(
        generation = cmds.generation,
        instances = cmds.commands.len(),
        services = cmds.services.as_ref().map(Vec::len),
        "commands"
    );
    if let Some(p) = &cmds.peers {
        rt.peers(p);
    }

    let wanted: Vec<&msg::InstanceSpec> = cmds
        .commands
        .iter()
        .filter_map(|c| match c {
            NodeCommand::Deploy(s) => Some(s),
            NodeCommand::Undeploy(_) => None,
        })
        .collect();
    for (have, _) in rt.list() {
        let undeploy = cmds
            .commands
            .iter()
            .any(|c| matches!(c, NodeCommand::Undeploy(r) if *r == have));
        if undeploy || !wanted.iter().any(|s| s.instance == have) {
            rt.stop(&have);
        }
    }
    for spec in wanted {
        rt.deploy(spec);
    }
    // After the instances changed: the tables hold what runs now.
    if let Some(s) = &cmds.services {
        rt.services(s);
    }
}

/// The worker as the lower tier of its cluster link.
struct WorkerSide {
    rt: Box<dyn Runtime>,
    node: NodeId,
    limits: Option<msg::WorkerLimits>,
    mem_total: u32,
    coord: Vivaldi,
    /// Round trips measured so far (each sample's nudge).
    samples: u32,
    /// The peers and services this worker holds.
    held: HeldParts,
    watchdog: bool,
    /// Where the registration (with the key) is kept, and the key's sequence numbers.
    reg: NodeRegistered,
    file: PathBuf,
    seq_file: PathBuf,
    wake: std::sync::Arc<tokio::sync::Notify>,
}

impl LowerTier for WorkerSide {
    type Change = InstanceStatus;
    const KEY_REFUSED: &'static str = "the cluster refuses this worker's key (evicted?): it keeps its instances but hears no commands; join again with a new token (remove node.cbor from the state directory)";

    fn heartbeat(&mut self, seq: u32) -> Vec<u8> {
        tracing::debug!(seq, "heartbeat sent");
        if self.watchdog {
            grove_proto::service::alive();
        }
        let list = self.rt.list();
        let u = self.rt.usage();
        let running = list
            .iter()
            .filter(|(_, st)| *st == msg::InstanceState::Running)
            .count();
        msg::to_cbor(&Heartbeat {
            node: self.node,
            seq,
            cpu_centi_pct: u.cpu_centi_pct,
            mem_used_mib: u.mem_used_mib,
            mem_total_mib: self.mem_total,
            disk_used_mib: u.disk_used_mib,
            disk_total_mib: 32_000,
            running: u16::try_from(running).unwrap_or(u16::MAX),
            coord: self.coord.coord,
            digest: digest(&list),
            changes: Vec::new(),
            // Per-instance figures every fifth heartbeat (10 s).
            instances: (seq % 5 == 0)
                .then(|| self.rt.instance_usage())
                .filter(|v| !v.is_empty()),
            limits: (seq < 3 || seq % 150 == 0)
                .then(|| self.limits.clone())
                .flatten(),
            changes_from: None,
        })
    }

    fn report(&mut self, mark: ChangeMark, changes: &[InstanceStatus]) -> Vec<u8> {
        msg::to_cbor(&Heartbeat {
            node: self.node,
            seq: 0,
            cpu_centi_pct: 0,
            mem_used_mib: 0,
            mem_total_mib: 0,
            disk_used_mib: 0,
            disk_total_mib: 0,
            running: 0,
            coord: NetCoord([0.0; 3]),
            digest: [0; 8],
            changes: changes.to_vec(),
            instances: None,
            limits: None,
            changes_from: Some(mark.to_wire()),
        })
    }

    fn heartbeat_answered(
        &mut self,
        rtt: Duration,
        answer: &Response,
    ) -> (Option<Option<u64>>, bool) {
        // Round trips of heartbeats (non-confirmable: never retransmitted, so each one
        // is a clean sample) place this worker in the cluster's network coordinates.
        self.samples = self.samples.wrapping_add(1);
        #[allow(clippy::cast_precision_loss)]
        let (ms, nudge) = (rtt.as_secs_f32() * 1000.0, self.samples as f32);
        self.coord.observe(CLUSTER_COORD, CLUSTER_ERROR, ms, nudge);
        self.rt.coordinate(self.coord.coord);
        // Their answers say which command set the cluster last gave this worker.
        match msg::from_cbor::<HeartbeatAck>(&answer.payload) {
            Ok(a) => (Some(a.generation), a.rekey),
            Err(_) => (None, false),
        }
    }

    async fn commands(
        &mut self,
        payload: &[u8],
        first: bool,
        take: &mut (dyn FnMut(u64) -> bool + Send),
    ) -> Followed {
        let Some(mut cmds) = newer(payload, take) else {
            return Followed::Done;
        };
        // A change of the peers or services that never arrived (a first answer
        // brings everything).
        let stale = held_parts(&mut cmds, &mut self.held) && !first;
        converge(self.rt.as_mut(), &cmds);
        self.wake.notify_one();
        if first {
            tracing::info!(
                generation = cmds.generation,
                instances = cmds.commands.len(),
                "observing the cluster's commands; converged"
            );
        }
        if stale {
            Followed::Stale
        } else {
            Followed::Done
        }
    }

    fn take_key(&mut self, creds: msg::Credentials) -> Result<SecurityContext, String> {
        // Stored before it is used: killed now, the worker comes back with the old key
        // (still good until the new one is heard) or the new one.
        let mut next = self.reg.clone();
        next.credentials = Some(creds);
        let ctx = store_registration(&self.file, &next)
            .and_then(|()| link_context(&next, &self.seq_file))
            .map_err(|e| e.to_string())?;
        self.reg = next;
        Ok(ctx)
    }
}

/// Run the control loop until `stop` resolves.
pub async fn run(
    s: Settings,
    mut rt: Box<dyn Runtime>,
    stop: impl Future<Output = ()>,
) -> Result<(), ControlError> {
    std::fs::create_dir_all(&s.state_dir)
        .map_err(|e| ControlError::Io(format!("{}: {e}", s.state_dir.display())))?;
    let link = LinkParams {
        ack_timeout: Duration::from_secs(1),
        max_retransmit: 4,
        ..LinkParams::default()
    };
    // The cluster asks for logs over the link this agent opened (its only context).
    let containers = s.state_dir.join("containers");
    let router = Router::new().route(grove_proto::coap::Method::Post, paths::LOGS, move |inc| {
        let containers = containers.clone();
        // Read in the handler's task, not in the driver's loop.
        async move { crate::logs::answer(&containers, &inc.request.payload) }
    });
    let c = shell::lower_driver(s.cluster, link, router)
        .await
        .map_err(|e| ControlError::Io(e.to_string()))?;

    // Credentials: stored from an earlier join, or a join with the token now.
    let file = credentials_file(&s.state_dir);
    let reg: NodeRegistered = match std::fs::read(&file)
        .ok()
        .and_then(|b| msg::from_cbor(&b).ok())
    {
        Some(r) => r,
        None => {
            let r = join(&c, &s).await?;
            store_registration(&file, &r)?;
            r
        }
    };
    let seq_file = s.state_dir.join("cluster.oscore-seq");
    let ctx = link_context(&reg, &seq_file)?;
    let key = c
        .add_context(ctx)
        .await
        .ok_or_else(|| ControlError::Io("driver stopped".into()))?;
    let node = reg.node;
    tracing::info!(node = node.0, cluster = %s.cluster, "worker joined");
    rt.joined(&s.name, &reg, s.cluster);
    grove_proto::service::ready();

    let cfg = LowerConfig {
        heartbeat: Duration::from_millis(u64::from(reg.timing.heartbeat_ms.max(100))),
        ..LowerConfig::default()
    };
    let paths = LowerPaths {
        commands: paths::node_commands(node),
        status: paths::node_status(node),
        rekey: paths::node_rekey(node),
    };
    let mut link = LowerLink::new(c.clone(), s.cluster, key.clone(), paths, cfg, &mut OsRandom);
    // Work that is waiting (a status to send, a finished pull) runs at once instead
    // of at the next tick.
    let wake = rt
        .waker()
        .unwrap_or_else(|| std::sync::Arc::new(tokio::sync::Notify::new()));
    let mut tier = WorkerSide {
        rt,
        node,
        limits: s.limits.clone(),
        // The machine's memory does not change: read once, not with every heartbeat.
        mem_total: meminfo_mib(),
        coord: Vivaldi::default(),
        samples: 0,
        held: HeldParts::default(),
        // The watchdog is fed by the control loop itself, with each heartbeat.
        watchdog: std::env::var_os("WATCHDOG_USEC").is_some(),
        reg,
        file,
        seq_file,
        wake: wake.clone(),
    };
    let mut tick = tokio::time::interval(s.tick);
    // Services of other clusters the data plane asked for: one observation each at the
    // cluster's directory, as a task whose answers come back on this channel.
    let (dir_tx, mut dir_rx) = mpsc::unbounded_channel::<(IpAddr, Option<msg::ServiceEntry>)>();
    let mut watching: HashMap<IpAddr, tokio::task::JoinHandle<()>> = HashMap::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            o = link.next() => link.handle(&mut tier, o).await,
            () = async {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = wake.notified() => {}
                }
            } => {
                for change in tier.rt.poll() {
                    link.change(change);
                }
                let wanted = tier.rt.lookups();
                // The key may have changed with a re-key: lookups go under the current one.
                let key = link.key().clone();
                for ip in wanted.drop {
                    if let Some(h) = watching.remove(&ip) {
                        h.abort();
                        // Tell the cluster: the interest ended.
                        let mut req = Request::get(&paths::service_by_ip(ip));
                        req.observe = Some(1);
                        let (c2, key2, to) = (c.clone(), key.clone(), s.cluster);
                        tokio::spawn(async move {
                            let _ = c2.request(to, req, SendOptions::secure(key2)).await;
                        });
                    }
                }
                for ip in wanted.ask {
                    let task = watch_service(c.clone(), key.clone(), s.cluster, ip, dir_tx.clone());
                    if let Some(old) = watching.insert(ip, task) {
                        old.abort();
                    }
                }
                link.handle(&mut tier, Outcome::Due).await;
            }
            Some((ip, entry)) = dir_rx.recv() => tier.rt.found(ip, entry),
        }
    }
}

#[cfg(test)]
mod tests;
