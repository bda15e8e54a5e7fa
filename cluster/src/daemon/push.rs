//! Workers' command sets, sent by one task in rounds. Whatever changes (a worker
//! joins, an instance starts or ends, the root's commands) marks the workers it
//! concerns; the pusher reads everything once per round and notifies each marked
//! worker whose set differs from what it was last given — with the peers and the
//! service table only when those changed, their digests always. A burst of changes
//! (a thousand workers joining) costs a few rounds, not one per change per worker.

use super::{Cluster, ended, spec_of};
use crate::store::InstanceRow;
use grove_proto::coap::Response;
use grove_proto::msg::{self, HeartbeatAck, NodeCommand, NodeCommands, NodeId};
use grove_proto::paths;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, MutexGuard};

/// What a worker was last given, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sent {
    at: tokio::time::Instant,
    generation: u64,
    commands: [u8; 8],
    peers: [u8; 8],
    services: [u8; 8],
}

/// Workers whose sets are due (every active one with `all`).
#[derive(Debug, Default)]
pub(super) struct Due {
    all: bool,
    nodes: HashSet<u32>,
}

/// Peer lists given out lately, by digest, the newest last: a worker holding one of
/// them is given the change, not the list.
pub(super) type PeerHistory = VecDeque<([u8; 8], Arc<Vec<msg::NodePeer>>)>;

/// How long after the answer to a worker's observation the observer may still be
/// unregistered (the endpoint registers it as it sends the answer).
const OBSERVATION_SETTLES: std::time::Duration = std::time::Duration::from_secs(2);

/// When a worker whose observation was still settling is notified again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// How many recent peer lists are kept for deltas.
const PEER_HISTORY: usize = 16;

/// A new list of peers is given out at most once a second, and in a large cluster
/// at most every 10 ms per worker (10 s at a thousand): a thousand workers joining
/// cost each worker a delta now and then, not one per join.
fn peers_every(workers: usize) -> std::time::Duration {
    let ms = u64::try_from(workers)
        .unwrap_or(u64::MAX)
        .saturating_mul(10);
    std::time::Duration::from_millis(ms.clamp(1_000, 10_000))
}

/// The service table is given out at most every millisecond per worker (1 s at a
/// thousand, the most): a new table goes to every worker, and a run of deploys should
/// cost each worker one table now and then, not one per instance. A dead instance is
/// still out of every table within 2 s.
fn services_every(workers: usize) -> std::time::Duration {
    let ms = u64::try_from(workers).unwrap_or(u64::MAX);
    std::time::Duration::from_millis(ms.min(1_000))
}

/// A part of every worker's set (the peers, the service table) as given out, since
/// when; and whether a newer one waits.
#[derive(Debug, Default)]
pub(super) struct Published<T> {
    at: Option<tokio::time::Instant>,
    value: T,
    waiting: bool,
    every: std::time::Duration,
}

impl<T: PartialEq + Clone> Published<T> {
    /// What to give out now: `fresh` if the last value went out at least `every` ago,
    /// else that one (and `fresh` waits). Whether it began to wait.
    fn offer(&mut self, fresh: T, every: std::time::Duration) -> (T, bool) {
        if fresh == self.value {
            self.waiting = false;
            return (fresh, false);
        }
        let now = tokio::time::Instant::now();
        self.every = every;
        if self.at.is_some_and(|at| now < at + every) {
            let began = !self.waiting;
            self.waiting = true;
            return (self.value.clone(), began);
        }
        self.at = Some(now);
        self.value.clone_from(&fresh);
        self.waiting = false;
        (fresh, false)
    }

    /// When a waiting value may go out, if one waits.
    fn due(&self) -> Option<tokio::time::Instant> {
        self.waiting.then(|| {
            self.at
                .map_or_else(tokio::time::Instant::now, |at| at + self.every)
        })
    }
}

/// What the command sets are made of, read once for a round.
struct Snapshot {
    generation: u64,
    by_node: HashMap<u32, Vec<NodeCommand>>,
    peers: Vec<msg::NodePeer>,
    services: Vec<msg::ServiceEntry>,
    peers_digest: [u8; 8],
    services_digest: [u8; 8],
    /// Recent peer lists, by digest.
    history: Vec<([u8; 8], Arc<Vec<msg::NodePeer>>)>,
    /// From a recent peer list to this one: (added or changed, removed), worked out
    /// when first needed in the round.
    deltas: std::sync::Mutex<HashMap<[u8; 8], Option<Delta>>>,
}

type Delta = Arc<(Vec<msg::NodePeer>, Vec<msg::PeerKey>)>;

/// How a set gives the peers.
#[derive(Clone, Copy)]
enum Peers {
    /// The whole list.
    Full,
    /// What changed since the list of this digest.
    Since([u8; 8]),
    /// Nothing: they did not change.
    Same,
}

impl Snapshot {
    /// Worker `node`'s instances and what its set stands for.
    fn parts(&self, node: u32) -> (Vec<NodeCommand>, Sent) {
        let commands = self.by_node.get(&node).cloned().unwrap_or_default();
        let sent = Sent {
            at: tokio::time::Instant::now(),
            generation: self.generation,
            commands: msg::digest_of(&commands),
            peers: self.peers_digest,
            services: self.services_digest,
        };
        (commands, sent)
    }

    /// The delta from the recent list of digest `base`, if it is known.
    fn delta(&self, base: [u8; 8]) -> Option<Delta> {
        let mut d = self.deltas.lock().unwrap_or_else(|p| p.into_inner());
        d.entry(base)
            .or_insert_with(|| {
                let (_, old) = self.history.iter().find(|(h, _)| *h == base)?;
                Some(Arc::new(msg::peers_delta(old, &self.peers)))
            })
            .clone()
    }

    fn set(&self, commands: Vec<NodeCommand>, peers: Peers, services: bool) -> NodeCommands {
        let delta = match peers {
            Peers::Since(base) => self.delta(base).map(|d| (base, d)),
            Peers::Full | Peers::Same => None,
        };
        NodeCommands {
            generation: self.generation,
            commands,
            peers: matches!(peers, Peers::Full).then(|| self.peers.clone()),
            services: services.then(|| self.services.clone()),
            peers_digest: Some(self.peers_digest),
            services_digest: Some(self.services_digest),
            peers_base: delta.as_ref().map(|(base, _)| *base),
            peers_added: delta.as_ref().map(|(_, d)| d.0.clone()),
            peers_removed: delta.as_ref().map(|(_, d)| d.1.clone()),
        }
    }

    /// How to give the peers to a worker holding those of digest `held`: the change
    /// when it is known and small, else everything.
    fn peers_after(&self, held: [u8; 8]) -> Peers {
        if held == self.peers_digest {
            return Peers::Same;
        }
        match self.delta(held) {
            Some(d) if 2 * (d.0.len() + d.1.len()) < self.peers.len() => Peers::Since(held),
            _ => Peers::Full,
        }
    }

    /// Worker `node`'s whole set.
    fn full(&self, node: u32) -> (NodeCommands, Sent) {
        let (commands, sent) = self.parts(node);
        (self.set(commands, Peers::Full, true), sent)
    }

    /// What changed for worker `node` since it was given `last` (`None`: nothing);
    /// peers and services only when they are not what it holds.
    fn after(&self, node: u32, last: Option<&Sent>) -> Option<(NodeCommands, Sent)> {
        let (commands, now) = self.parts(node);
        let Some(l) = last else {
            return Some((self.set(commands, Peers::Full, true), now));
        };
        if (l.commands, l.peers, l.services) == (now.commands, now.peers, now.services) {
            return None;
        }
        let cmds = self.set(
            commands,
            self.peers_after(l.peers),
            l.services != now.services,
        );
        Some((cmds, now))
    }
}

impl Cluster {
    pub(super) fn due(&self) -> MutexGuard<'_, Due> {
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn sent(&self) -> MutexGuard<'_, HashMap<u32, Sent>> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every active worker's set is due (the peers or the service table changed).
    pub(super) fn mark_all(&self) {
        self.due().all = true;
        self.due_wake.notify_one();
    }

    /// These workers' sets are due.
    pub(super) fn mark(&self, nodes: impl IntoIterator<Item = u32>) {
        let mut d = self.due();
        let before = d.nodes.len();
        d.nodes.extend(nodes);
        if d.nodes.len() > before {
            self.due_wake.notify_one();
        }
    }

    fn snapshot(&self) -> Snapshot {
        // The generation first: a set read later is never older than its number says.
        let generation = msg::next_generation();
        let rows: Vec<InstanceRow> = self.db().instances().unwrap_or_default();
        let mut by_node: HashMap<u32, Vec<NodeCommand>> = HashMap::new();
        for r in &rows {
            if let (Some(n), false) = (r.node, ended(r.status.as_str())) {
                if let Some(spec) = spec_of(r) {
                    by_node
                        .entry(n)
                        .or_default()
                        .push(NodeCommand::Deploy(spec));
                }
            }
        }
        let workers = self.seen().len();
        let peers = self.published(&self.published_peers, self.peers(), peers_every(workers));
        let services = self.published(
            &self.published_services,
            self.services_of(&rows),
            services_every(workers),
        );
        let peers_digest = msg::digest_of(&peers);
        let history = {
            let mut h = self.peer_history.lock().unwrap_or_else(|p| p.into_inner());
            if h.back().map(|(d, _)| *d) != Some(peers_digest) {
                h.push_back((peers_digest, Arc::new(peers.clone())));
                if h.len() > PEER_HISTORY {
                    h.pop_front();
                }
            }
            h.iter().cloned().collect()
        };
        Snapshot {
            generation,
            by_node,
            peers_digest,
            services_digest: msg::digest_of(&services),
            peers,
            services,
            history,
            deltas: std::sync::Mutex::default(),
        }
    }

    /// What of a part to give out now (see [`Published::offer`]).
    fn published<T: PartialEq + Clone>(
        &self,
        slot: &std::sync::Mutex<Published<T>>,
        fresh: T,
        every: std::time::Duration,
    ) -> T {
        let (value, began) = slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .offer(fresh, every);
        if began {
            // The pusher may be asleep with nothing due: it should know when.
            self.due_wake.notify_one();
        }
        value
    }

    /// When a held-back part may go out, if one waits.
    fn parts_due(&self) -> Option<tokio::time::Instant> {
        let peers = self
            .published_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due();
        let services = self
            .published_services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due();
        peers.into_iter().chain(services).min()
    }

    /// The full set of worker `node`, as the first answer of its observation (and
    /// what the pusher then compares with).
    pub fn commands_for(&self, node: u32) -> NodeCommands {
        let (cmds, sent) = self.snapshot().full(node);
        self.sent().insert(node, sent);
        cmds
    }

    /// What the answer to worker `node`'s heartbeat says: the generation it was last
    /// given, if the cluster holds its observation.
    pub(super) fn heartbeat_ack(&self, node: u32) -> Response {
        let ack = HeartbeatAck {
            generation: self.sent().get(&node).map(|s| s.generation),
            rekey: self.rekey_asked(node),
        };
        Response {
            code: grove_proto::coap::Code::CHANGED,
            ..Response::cbor(msg::to_cbor(&ack))
        }
    }

    /// A worker lost: what it was given no longer counts (it observes afresh).
    pub(super) fn forget_sent(&self, node: u32) {
        self.sent().remove(&node);
    }

    /// One round: every due worker whose set changed is notified. Returns the workers
    /// to try again shortly: their observation was answered a moment ago and is not
    /// registered yet.
    pub(super) async fn push_round(&self) -> Vec<u32> {
        let mut again = Vec::new();
        let due = std::mem::take(&mut *self.due());
        if !due.all && due.nodes.is_empty() {
            return again;
        }
        let Some(h) = self.coap.get() else {
            return again;
        };
        let active: HashSet<u32> = self
            .seen()
            .iter()
            .filter(|(_, l)| !l.lost)
            .map(|(id, _)| *id)
            .collect();
        let mut targets: Vec<u32> = if due.all {
            active.iter().copied().collect()
        } else {
            due.nodes
                .into_iter()
                .filter(|n| active.contains(n))
                .collect()
        };
        targets.sort_unstable();
        let snap = self.snapshot();
        for node in targets {
            let last = self.sent().get(&node).copied();
            if last.is_some_and(|l| l.generation > snap.generation) {
                // The answer to a new observation went out during this round, made
                // from a later reading than this round's: it holds everything this
                // would bring.
                continue;
            }
            let Some((cmds, sent)) = snap.after(node, last.as_ref()) else {
                continue;
            };
            let n = h
                .notify(
                    &paths::node_commands(NodeId(node)),
                    Response::cbor(msg::to_cbor(&cmds)),
                )
                .await;
            let mut s = self.sent();
            if s.get(&node).is_some_and(|l| l.generation > snap.generation) {
                // As above, while this notification was being sent.
            } else if n > 0 {
                s.insert(node, sent);
            } else if s
                .get(&node)
                .is_some_and(|l| l.at.elapsed() < OBSERVATION_SETTLES)
            {
                // The answer to its observation has just been made (and the
                // endpoint registers the observer as it sends it): what it holds is
                // that answer; the change follows in a moment.
                again.push(node);
            } else {
                // No observation of the worker's: it learns so from its next
                // heartbeat's answer and observes afresh.
                s.remove(&node);
            }
        }
        again
    }

    /// The pusher: a round whenever something is due, and every worker's when a
    /// held-back list of peers or service table may go out.
    pub(super) async fn pusher(self: Arc<Self>) {
        // Workers to notify again, and when.
        let mut again: HashSet<u32> = HashSet::new();
        let mut retry_at = tokio::time::Instant::now();
        loop {
            let due = self.parts_due();
            tokio::select! {
                () = self.due_wake.notified() => {}
                () = tokio::time::sleep_until(retry_at), if !again.is_empty() => {
                    self.mark(std::mem::take(&mut again));
                }
                () = async {
                    match due {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.due().all = true;
                }
            }
            let more = self.push_round().await;
            if again.is_empty() && !more.is_empty() {
                retry_at = tokio::time::Instant::now() + RETRY_AFTER;
            }
            again.extend(more);
        }
    }
}
