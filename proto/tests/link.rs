//! Both halves of the tier link over the simulated network, in virtual time: an
//! upper tier (an `Upper` with an in-memory key store behind a real `Endpoint`) and
//! lower tiers (a `Lower` each behind its own `Endpoint`), OSCORE on every message,
//! with loss, duplication, reordering, partitions and restarts of either side.
//!
//! Every test is seeded, so each run is the same run, and runs in milliseconds.

use grove_proto::coap::{
    Code, Config, ContextKey, Endpoint, Event, Request, RequestHandle, Response, SendOptions,
};
use grove_proto::link::lower::{
    Do, HeartbeatAnswer, JoinOutcome, Lower, LowerConfig, LowerError, ObserveOutcome,
};
use grove_proto::link::shell::PeerContexts;
use grove_proto::link::upper::{ChangeMark, KeyStore, StoredPeer, Upper};
use grove_proto::link::{PeerKey, SeededRandom, StoreError};
use grove_proto::msg::Credentials;
use grove_proto::oscore::{ContextParams, FileContextStore, SecurityContext, join_context};
use grove_proto::sim::{Impairment, SimNet};
use grove_proto::util::peer_of_kid;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- the upper tier

#[derive(Debug, Clone)]
struct Token {
    secret: Vec<u8>,
    until: Duration,
    used: bool,
    revoked: bool,
}

/// The key store as the daemons' SQLite holds it, in memory.
#[derive(Debug, Default)]
struct MemStore {
    keys: HashMap<u32, (PeerKey, Option<PeerKey>)>,
    tokens: HashMap<Vec<u8>, Token>,
    next_id: u32,
    asked: HashSet<u32>,
}

impl KeyStore for MemStore {
    type Error = StoreError;
    fn begin_rekey(
        &mut self,
        peer: u32,
        candidate: &PeerKey,
    ) -> Result<(PeerKey, bool), StoreError> {
        let (current, pending) = self
            .keys
            .get_mut(&peer)
            .ok_or_else(|| StoreError::new(std::io::Error::other("no such peer")))?;
        if let Some(p) = pending {
            return Ok((p.clone(), false));
        }
        let next = PeerKey {
            generation: current.generation + 1,
            ..candidate.clone()
        };
        *pending = Some(next.clone());
        Ok((next, true))
    }

    fn commit_rekey(&mut self, peer: u32, generation: u32) -> Result<bool, StoreError> {
        let Some((current, pending)) = self.keys.get_mut(&peer) else {
            return Ok(false);
        };
        match pending.take() {
            Some(p) if p.generation == generation => {
                *current = p;
                self.asked.remove(&peer);
                Ok(true)
            }
            other => {
                *pending = other;
                Ok(false)
            }
        }
    }
}

impl MemStore {
    fn live_tokens(&self, at: Duration) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.tokens
            .iter()
            .filter(|(_, t)| !t.used && !t.revoked && at < t.until)
            .map(|(id, t)| (id.clone(), t.secret.clone()))
            .collect()
    }

    fn peers(&self) -> Vec<StoredPeer> {
        self.keys
            .iter()
            .map(|(id, (current, pending))| StoredPeer {
                id: *id,
                current: current.clone(),
                pending: pending.clone(),
                rekey_asked: self.asked.contains(id),
            })
            .collect()
    }
}

#[derive(Debug)]
struct Up {
    upper: Upper,
    store: MemStore,
    rng: SeededRandom,
    ctx: PeerContexts,
    /// The command set every peer should hold.
    generation: u64,
    /// The set each observer was last given.
    given: HashMap<u32, u64>,
    /// Status changes applied, by peer, in order.
    applied: HashMap<u32, Vec<u32>>,
    heartbeats: HashMap<u32, u32>,
    joins: u32,
    start: Instant,
}

fn cbor<T: minicbor::Encode<()>>(v: &T) -> Vec<u8> {
    minicbor::to_vec(v).expect("encodes")
}

fn commands_path(id: u32) -> String {
    format!("/v1/nodes/{id}/commands")
}

impl Up {
    fn apply(&mut self, ep: &mut Endpoint) {
        self.ctx.apply_to_endpoint(ep, self.upper.drain_actions());
    }

    fn on_event(&mut self, ep: &mut Endpoint, now: Instant, ev: Event) {
        let Event::Request {
            id: rid,
            peer,
            request,
            security,
        } = ev
        else {
            return;
        };
        let r = self.answer(ep, now, peer, &request, security);
        self.apply(ep);
        ep.respond(now, rid, r);
    }

    fn answer(
        &mut self,
        _ep: &mut Endpoint,
        now: Instant,
        from: SocketAddr,
        req: &Request,
        security: Option<ContextKey>,
    ) -> Response {
        let Some(sec) = security else {
            return Response::error(Code::UNAUTHORIZED, "OSCORE only");
        };
        let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        if segs == ["v1", "nodes"] {
            let Some(ctx_id) = sec.id_context else {
                return Response::error(Code::FORBIDDEN, "a join needs a token");
            };
            let token = ctx_id[..8].to_vec();
            let at = now - self.start;
            match self.store.tokens.get_mut(&token) {
                Some(t) if !t.used && !t.revoked && at < t.until => t.used = true,
                _ => {
                    return Response::error(Code::FORBIDDEN, "join token expired, used or revoked");
                }
            }
            self.store.next_id += 1;
            let id = self.store.next_id;
            let key = PeerKey::fresh(0, &mut self.rng);
            self.store.keys.insert(id, (key.clone(), None));
            self.upper.joined(now, id, &key, from);
            self.joins += 1;
            return Response {
                code: Code::CREATED,
                ..Response::cbor(cbor(&key.credentials(id)))
            };
        }
        if sec.id_context.is_some() {
            return Response::error(Code::FORBIDDEN, "not a peer's key");
        }
        let Some((id, generation)) = peer_of_kid(&sec.recipient_id) else {
            return Response::error(Code::FORBIDDEN, "not a peer's key");
        };
        if segs.get(2).and_then(|s| s.parse::<u32>().ok()) != Some(id) {
            return Response::error(Code::FORBIDDEN, "not this peer's credentials");
        }
        if let Err(e) = self.upper.heard(now, id, generation, from, &mut self.store) {
            return Response::error(Code::SERVICE_UNAVAILABLE, &e.to_string());
        }
        match segs.get(3).copied() {
            Some("status") => {
                let Ok((mark, changes)) = minicbor::decode::<(Option<u64>, Vec<u32>)>(&req.payload)
                else {
                    return Response::error(Code::BAD_REQUEST, "body");
                };
                let skip =
                    self.upper
                        .take_changes(id, mark.map(ChangeMark::from_wire), changes.len());
                self.applied
                    .entry(id)
                    .or_default()
                    .extend_from_slice(&changes[skip..]);
                if mark.is_none() {
                    *self.heartbeats.entry(id).or_default() += 1;
                }
                let answer = (self.given.get(&id).copied(), self.upper.rekey_asked(id));
                Response {
                    code: Code::CHANGED,
                    ..Response::cbor(cbor(&answer))
                }
            }
            Some("commands") => {
                self.given.insert(id, self.generation);
                Response {
                    observable: true,
                    ..Response::cbor(cbor(&self.generation))
                }
            }
            Some("rekey") => match self.upper.rekey(id, &mut self.store, &mut self.rng) {
                Ok(creds) => Response {
                    code: Code::CHANGED,
                    ..Response::cbor(cbor(&creds))
                },
                Err(e) => Response::error(Code::SERVICE_UNAVAILABLE, &e.to_string()),
            },
            _ => Response::error(Code::NOT_FOUND, "no such resource"),
        }
    }
}

// ---------------------------------------------------------------- a lower tier

#[derive(Debug, Clone, Copy)]
enum Ex {
    Join,
    Observe,
    Heartbeat(Instant),
    Report,
    Key,
}

#[derive(Debug)]
struct Low {
    idx: usize,
    upper: SocketAddr,
    lower: Lower<u32>,
    token: (Vec<u8>, Vec<u8>),
    /// What the lower tier keeps on disk: its credentials.
    creds: Option<Credentials>,
    seq_file: PathBuf,
    key: Option<ContextKey>,
    join_key: Option<ContextKey>,
    inflight: HashMap<RequestHandle, Ex>,
    obs: Option<RequestHandle>,
    answered: HashSet<RequestHandle>,
    /// Command sets taken, in order.
    taken: Vec<u64>,
    next_change: u32,
    failed: Option<LowerError>,
    rng: SeededRandom,
    cfg: LowerConfig,
}

fn id_of(creds: &Credentials) -> u32 {
    peer_of_kid(&creds.sender_id).map_or(0, |p| p.0)
}

impl Low {
    fn id(&self) -> Option<u32> {
        self.creds.as_ref().map(id_of)
    }

    fn install(&mut self, ep: &mut Endpoint, fresh: bool) {
        let Some(creds) = self.creds.clone() else {
            return;
        };
        if fresh {
            let _ = std::fs::remove_file(&self.seq_file);
        }
        let ctx = SecurityContext::new(
            &ContextParams::from(creds),
            Box::new(FileContextStore::new(&self.seq_file)),
        )
        .expect("context");
        self.key = Some(ep.add_context(ctx));
    }

    fn start(&mut self, ep: &mut Endpoint, now: Instant) {
        while let Some(d) = self.lower.poll(now) {
            let id = self.id().unwrap_or(0);
            let send = |ep: &mut Endpoint, req: Request, key: &Option<ContextKey>, non: bool| {
                let opts = SendOptions {
                    non_confirmable: non,
                    security: key.clone(),
                };
                ep.request(now, self.upper, req, opts)
            };
            let (h, ex) = match d {
                Do::Join => {
                    let attempt = grove_proto::link::random::<8>(&mut self.rng);
                    let params = join_context(&self.token.0, &self.token.1, &attempt, true);
                    let key = ep.add_context(SecurityContext::in_memory(&params));
                    self.join_key = Some(key.clone());
                    let h = send(
                        ep,
                        Request::post_cbor("/v1/nodes", Vec::new()),
                        &Some(key),
                        false,
                    );
                    (h, Ex::Join)
                }
                Do::Observe => {
                    if let Some(old) = self.obs.take() {
                        ep.cancel(now, old);
                    }
                    let mut req = Request::get(&commands_path(id));
                    req.observe = Some(0);
                    let h = send(ep, req, &self.key, false);
                    self.obs = Some(h);
                    (h, Ex::Observe)
                }
                Do::Heartbeat { .. } => {
                    let body = cbor(&(None::<u64>, Vec::<u32>::new()));
                    let h = send(
                        ep,
                        Request::post_cbor(&format!("/v1/nodes/{id}/status"), body),
                        &self.key,
                        true,
                    );
                    (h, Ex::Heartbeat(now))
                }
                Do::Report { mark, changes } => {
                    let body = cbor(&(Some(mark.to_wire()), changes));
                    let h = send(
                        ep,
                        Request::post_cbor(&format!("/v1/nodes/{id}/status"), body),
                        &self.key,
                        false,
                    );
                    (h, Ex::Report)
                }
                Do::AskKey => {
                    let h = send(
                        ep,
                        Request::post_cbor(&format!("/v1/nodes/{id}/rekey"), Vec::new()),
                        &self.key,
                        false,
                    );
                    (h, Ex::Key)
                }
            };
            self.inflight.insert(h, ex);
        }
    }

    fn follow(&mut self, payload: &[u8]) {
        if let Ok(g) = minicbor::decode::<u64>(payload) {
            if self.lower.commands(g) {
                self.taken.push(g);
            }
        }
    }

    fn on_event(&mut self, ep: &mut Endpoint, now: Instant, ev: Event) {
        match ev {
            Event::Response { handle, response } => {
                let Some(ex) = self.inflight.get(&handle).copied() else {
                    return;
                };
                if !matches!(ex, Ex::Observe) {
                    self.inflight.remove(&handle);
                }
                self.answered(ep, now, handle, ex, response);
            }
            Event::Notification { handle, response } => {
                if self.obs == Some(handle) {
                    self.follow(&response.payload);
                }
            }
            Event::Failed { handle, .. } => {
                let Some(ex) = self.inflight.remove(&handle) else {
                    return;
                };
                match ex {
                    Ex::Join => {
                        if let Err(e) = self.lower.join_answered(now, JoinOutcome::Unreachable) {
                            self.failed = Some(e);
                        }
                    }
                    Ex::Observe if self.obs == Some(handle) => {
                        if self.answered.remove(&handle) {
                            self.lower.reobserve(now);
                        } else {
                            self.lower
                                .observe_answered(now, ObserveOutcome::Unreachable);
                        }
                        self.obs = None;
                    }
                    Ex::Observe | Ex::Heartbeat(_) => {}
                    Ex::Report => self.lower.report_answered(now, false),
                    Ex::Key => self.lower.key_answered(now, false),
                }
            }
            Event::Request { .. } => {}
        }
    }

    fn answered(&mut self, ep: &mut Endpoint, now: Instant, h: RequestHandle, ex: Ex, r: Response) {
        match ex {
            Ex::Join => {
                if let Some(k) = self.join_key.take() {
                    ep.remove_context(&k);
                }
                let outcome = match r.code {
                    c if c.is_success() => JoinOutcome::Joined,
                    Code::SERVICE_UNAVAILABLE => JoinOutcome::NotReady,
                    Code::UNAUTHORIZED => JoinOutcome::UnknownToken,
                    _ => JoinOutcome::Refused,
                };
                if outcome == JoinOutcome::Joined {
                    self.creds = minicbor::decode(&r.payload).ok();
                    self.install(ep, true);
                }
                if let Err(e) = self.lower.join_answered(now, outcome) {
                    self.failed = Some(e);
                }
            }
            Ex::Observe => {
                if self.obs != Some(h) {
                    return;
                }
                if r.code == Code::CONTENT {
                    self.answered.insert(h);
                    self.lower.observe_answered(now, ObserveOutcome::Observed);
                    self.follow(&r.payload);
                } else {
                    self.inflight.remove(&h);
                    self.obs = None;
                    self.lower.observe_answered(now, ObserveOutcome::Refused);
                }
            }
            Ex::Heartbeat(sent) => {
                if let Ok((given, rekey)) = minicbor::decode::<(Option<u64>, bool)>(&r.payload) {
                    self.lower.heartbeat_answered(
                        now,
                        HeartbeatAnswer {
                            sent,
                            given: Some(given),
                            rekey,
                        },
                    );
                }
            }
            Ex::Report => self.lower.report_answered(now, r.code.is_success()),
            Ex::Key => {
                let creds: Option<Credentials> = minicbor::decode(&r.payload)
                    .ok()
                    .filter(|_| r.code.is_success());
                let taken = creds.is_some();
                if let Some(c) = creds {
                    // Stored before it is used.
                    self.creds = Some(c);
                    self.install(ep, true);
                }
                self.lower.key_answered(now, taken);
            }
        }
    }

    fn change(&mut self) -> u32 {
        self.next_change += 1;
        let c = self.id().unwrap_or(0) * 1000 + self.next_change;
        self.lower.change(c);
        c
    }
}

// ---------------------------------------------------------------- the world

struct World {
    sim: SimNet,
    up: Up,
    lows: Vec<Low>,
    dir: PathBuf,
    seed: u64,
    restarts: u64,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, u8::try_from(i + 1).unwrap_or(255)], 5683))
}

fn endpoint(seed: u64) -> Endpoint {
    let mut cfg = Config {
        seed,
        ..Config::default()
    };
    cfg.link.ack_timeout = Duration::from_secs(1);
    cfg.link.max_retransmit = 4;
    Endpoint::new(cfg)
}

fn lossy(loss: f64) -> Impairment {
    Impairment {
        loss,
        duplicate: 0.05,
        min_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(60),
    }
}

fn clean() -> Impairment {
    Impairment::default()
}

static DIRS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl World {
    fn new(seed: u64, imp: Impairment) -> Self {
        let n = DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("grove-link-{}-{seed}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("oscore")).expect("temp dir");
        let mut sim = SimNet::new(seed, imp);
        sim.add(addr(0), endpoint(seed ^ 0xA5));
        let start = sim.now();
        Self {
            up: Up {
                upper: Upper::new(),
                store: MemStore::default(),
                rng: SeededRandom(seed ^ 0x55),
                ctx: PeerContexts::new(&dir, "node"),
                generation: 1,
                given: HashMap::new(),
                applied: HashMap::new(),
                heartbeats: HashMap::new(),
                joins: 0,
                start,
            },
            sim,
            lows: Vec::new(),
            dir,
            seed,
            restarts: 0,
        }
    }

    fn elapsed(&self) -> Duration {
        self.sim.now() - self.up.start
    }

    /// A join token valid for `valid`, which the upper tier's endpoint learns.
    fn token(&mut self, valid: Duration) -> (Vec<u8>, Vec<u8>) {
        let id = grove_proto::link::random::<8>(&mut self.up.rng).to_vec();
        let secret = grove_proto::link::random::<16>(&mut self.up.rng).to_vec();
        let until = self.elapsed() + valid;
        self.up.store.tokens.insert(
            id.clone(),
            Token {
                secret: secret.clone(),
                until,
                used: false,
                revoked: false,
            },
        );
        self.sync_tokens();
        (id, secret)
    }

    fn sync_tokens(&mut self) {
        let live = self.up.store.live_tokens(self.elapsed());
        self.up.upper.sync_tokens(live);
        let ep = self.sim.ep(0);
        self.up.apply(ep);
    }

    /// A lower tier that joins with `token`; returns its index.
    fn lower(&mut self, token: (Vec<u8>, Vec<u8>)) -> usize {
        let k = self.lows.len();
        let idx = self
            .sim
            .add(addr(k + 1), endpoint(self.seed ^ (k as u64 + 7)));
        let now = self.sim.now();
        let cfg = LowerConfig::default();
        let mut rng = SeededRandom(self.seed ^ (k as u64) << 8);
        self.lows.push(Low {
            idx,
            upper: addr(0),
            lower: Lower::new(cfg, now, false, &mut rng),
            token,
            creds: None,
            seq_file: self.dir.join(format!("lower-{k}.seq")),
            key: None,
            join_key: None,
            inflight: HashMap::new(),
            obs: None,
            answered: HashSet::new(),
            taken: Vec::new(),
            next_change: 0,
            failed: None,
            rng,
            cfg,
        });
        k
    }

    fn joined(&mut self, limit: Duration) -> usize {
        let t = self.token(Duration::from_secs(3600));
        let k = self.lower(t);
        let ok = self.run(limit, |w| {
            w.lows[k].lower.is_joined() && w.lows[k].lower.is_observing()
        });
        assert!(
            ok,
            "the lower tier joins and observes: joined {}, failed {:?}, joins {}, in flight {:?}, lost {}, delivered {}",
            self.lows[k].lower.is_joined(),
            self.lows[k].failed,
            self.up.joins,
            self.lows[k].inflight,
            self.sim.lost,
            self.sim.delivered
        );
        k
    }

    /// Run until `done` holds or `limit` of virtual time passes.
    fn run(&mut self, limit: Duration, mut done: impl FnMut(&World) -> bool) -> bool {
        let end = self.sim.now() + limit;
        loop {
            let now = self.sim.now();
            for low in &mut self.lows {
                let ep = self.sim.ep(low.idx);
                low.start(ep, now);
            }
            if done(self) {
                return true;
            }
            if now >= end {
                return false;
            }
            let next = self
                .lows
                .iter()
                .filter_map(|l| l.lower.poll_timeout())
                .chain([end])
                .min()
                .map(|t| t.max(now));
            let (up, lows) = (&mut self.up, &mut self.lows);
            self.sim.step_until(next, &mut |ep, i, now, ev| {
                if i == 0 {
                    up.on_event(ep, now, ev);
                } else if let Some(l) = lows.iter_mut().find(|l| l.idx == i) {
                    l.on_event(ep, now, ev);
                }
            });
        }
    }

    fn pass(&mut self, d: Duration) {
        self.run(d, |_| false);
    }

    /// Publish a new command set to every observer.
    fn publish(&mut self) -> u64 {
        self.up.generation += 1;
        let g = self.up.generation;
        let now = self.sim.now();
        let ids: Vec<u32> = self.up.store.keys.keys().copied().collect();
        for id in ids {
            let n = self
                .sim
                .ep(0)
                .notify(now, &commands_path(id), Response::cbor(cbor(&g)));
            if n > 0 {
                self.up.given.insert(id, g);
            }
        }
        g
    }

    /// The upper tier is killed and starts again from its store.
    fn restart_upper(&mut self) {
        self.restarts += 1;
        let mut ep = endpoint(self.seed ^ 0xA5 ^ (self.restarts << 16));
        self.up.upper = Upper::new();
        self.up.upper.load(self.up.store.peers());
        let live = self.up.store.live_tokens(self.elapsed());
        self.up.upper.sync_tokens(live);
        self.up.apply(&mut ep);
        self.up.given.clear();
        self.sim.replace(0, ep);
    }

    /// Lower tier `k` is killed and starts again from what it keeps on disk.
    fn restart_lower(&mut self, k: usize) {
        self.restarts += 1;
        let mut ep = endpoint(self.seed ^ (k as u64 + 7) ^ (self.restarts << 16));
        let now = self.sim.now();
        let low = &mut self.lows[k];
        low.lower = Lower::new(low.cfg, now, low.creds.is_some(), &mut low.rng);
        low.inflight.clear();
        low.obs = None;
        low.answered.clear();
        low.key = None;
        low.install(&mut ep, false);
        self.sim.replace(low.idx, ep);
    }

    fn evict(&mut self, id: u32) {
        self.up.store.keys.remove(&id);
        self.up.upper.evict(id);
        let ep = self.sim.ep(0);
        self.up.apply(ep);
    }

    fn ask_rekey(&mut self, id: u32) {
        self.up.store.asked.insert(id);
        self.up.upper.ask_rekey(id);
    }

    fn id(&self, k: usize) -> u32 {
        self.lows[k].id().expect("joined")
    }

    fn generation(&self, k: usize) -> u32 {
        peer_of_kid(&self.lows[k].creds.as_ref().expect("joined").sender_id).map_or(0, |p| p.1)
    }

    fn applied(&self, k: usize) -> Vec<u32> {
        self.up
            .applied
            .get(&self.id(k))
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const MINUTE: Duration = Duration::from_secs(60);

fn expect_changes(w: &mut World, k: usize, n: usize, limit: Duration) -> Vec<u32> {
    let sent: Vec<u32> = (0..n).map(|_| w.lows[k].change()).collect();
    assert!(
        w.run(limit, |w| w.lows[k].lower.unacknowledged() == 0
            && w.applied(k).len() >= n),
        "{} of {n} changes applied, {} unacknowledged",
        w.applied(k).len(),
        w.lows[k].lower.unacknowledged()
    );
    sent
}

// ---------------------------------------------------------------- joins

#[test]
fn join_with_a_good_token_gives_a_key_and_an_observation() {
    let mut w = World::new(1, clean());
    let k = w.joined(Duration::from_secs(5));
    assert_eq!(w.generation(k), 0, "a join's key is generation 0");
    assert_eq!(w.up.upper.generation(w.id(k)), Some(0));
    assert_eq!(
        w.lows[k].taken,
        vec![1],
        "the first command set came with the observation"
    );
    assert!(
        w.elapsed() < Duration::from_secs(1),
        "a clean link joins at once: {:?}",
        w.elapsed()
    );
}

#[test]
fn join_with_an_unknown_token_is_refused_after_the_patience() {
    let mut w = World::new(2, clean());
    let k = w.lower((vec![9; 8], vec![1; 16]));
    assert!(w.run(2 * MINUTE, |w| w.lows[k].failed.is_some()));
    assert_eq!(w.lows[k].failed, Some(LowerError::UnknownToken));
    assert!(
        w.elapsed() >= w.lows[k].cfg.token_patience,
        "tried for the whole patience"
    );
    assert_eq!(w.up.joins, 0);
}

#[test]
fn join_with_a_token_learnt_late_succeeds_within_the_patience() {
    let mut w = World::new(3, clean());
    let id = vec![4; 8];
    let secret = vec![5; 16];
    let k = w.lower((id.clone(), secret.clone()));
    w.pass(Duration::from_secs(5));
    assert!(!w.lows[k].lower.is_joined());
    let until = w.elapsed() + MINUTE;
    w.up.store.tokens.insert(
        id,
        Token {
            secret,
            until,
            used: false,
            revoked: false,
        },
    );
    w.sync_tokens();
    assert!(w.run(MINUTE, |w| w.lows[k].lower.is_observing()));
    assert_eq!(w.lows[k].failed, None);
}

#[test]
fn join_with_an_expired_token_is_refused_for_good() {
    let mut w = World::new(4, clean());
    let t = w.token(Duration::from_secs(1));
    w.pass(Duration::from_secs(2));
    let k = w.lower(t);
    assert!(w.run(MINUTE, |w| w.lows[k].failed.is_some()));
    assert_eq!(w.lows[k].failed, Some(LowerError::JoinRefused));
    assert_eq!(w.up.joins, 0);
}

#[test]
fn a_token_used_once_cannot_join_a_second_peer() {
    let mut w = World::new(5, clean());
    let t = w.token(MINUTE);
    let a = w.lower(t.clone());
    assert!(w.run(MINUTE, |w| w.lows[a].lower.is_observing()));
    let b = w.lower(t);
    assert!(w.run(MINUTE, |w| w.lows[b].failed.is_some()));
    assert!(
        matches!(
            w.lows[b].failed,
            Some(LowerError::JoinRefused | LowerError::UnknownToken)
        ),
        "{:?}",
        w.lows[b].failed
    );
    assert_eq!(w.up.joins, 1);
}

#[test]
fn a_revoked_token_stops_working_before_its_use() {
    let mut w = World::new(6, clean());
    let t = w.token(MINUTE);
    w.up.store.tokens.get_mut(&t.0).expect("token").revoked = true;
    w.sync_tokens();
    assert!(!w.up.upper.accepts_token(&t.0));
    let k = w.lower(t);
    assert!(w.run(2 * MINUTE, |w| w.lows[k].failed.is_some()));
    assert_eq!(w.up.joins, 0);
}

#[test]
fn join_under_30_percent_loss_completes_once() {
    let mut w = World::new(7, lossy(0.3));
    let t = w.token(MINUTE);
    let k = w.lower(t);
    assert!(w.run(MINUTE, |w| w.lows[k].lower.is_observing()));
    assert_eq!(
        w.up.joins, 1,
        "a retransmitted join request registers one peer"
    );
}

#[test]
fn join_waits_for_an_upper_tier_that_is_away() {
    let mut w = World::new(8, clean());
    let t = w.token(10 * MINUTE);
    w.sim.set_down(0, true);
    let k = w.lower(t);
    w.pass(Duration::from_secs(90));
    assert!(!w.lows[k].lower.is_joined());
    assert_eq!(w.lows[k].failed, None, "an absent upper tier is waited for");
    w.sim.set_down(0, false);
    assert!(w.run(Duration::from_secs(30), |w| w.lows[k].lower.is_observing()));
}

#[test]
fn many_peers_join_at_once_each_with_its_own_id() {
    let mut w = World::new(9, lossy(0.1));
    let ks: Vec<usize> = (0..20)
        .map(|_| {
            let t = w.token(MINUTE);
            w.lower(t)
        })
        .collect();
    assert!(w.run(MINUTE, |w| {
        ks.iter().all(|k| w.lows[*k].lower.is_observing())
    }));
    let ids: HashSet<u32> = ks.iter().map(|k| w.id(*k)).collect();
    assert_eq!(ids.len(), 20);
    assert_eq!(w.up.joins, 20);
}

#[test]
fn a_peer_joining_again_with_a_new_token_loses_its_old_key() {
    let mut w = World::new(10, clean());
    let k = w.joined(Duration::from_secs(5));
    let id = w.id(k);
    // The same peer registers again (the store hands out the same id here).
    let key = PeerKey::fresh(0, &mut w.up.rng);
    w.up.store.keys.insert(id, (key.clone(), None));
    let now = w.sim.now();
    w.up.upper.joined(now, id, &key, addr(k + 1));
    let ep = w.sim.ep(0);
    w.up.apply(ep);
    // What it says under the old key is no longer heard.
    let before = w.up.heartbeats.get(&id).copied().unwrap_or(0);
    w.pass(Duration::from_secs(10));
    assert_eq!(w.up.heartbeats.get(&id).copied().unwrap_or(0), before);
}

// ---------------------------------------------------------------- commands

#[test]
fn command_sets_converge_on_a_clean_link() {
    let mut w = World::new(11, clean());
    let k = w.joined(Duration::from_secs(5));
    let g = w.publish();
    assert!(
        w.run(Duration::from_secs(5), |w| w.lows[k].lower.generation()
            == Some(g))
    );
}

#[test]
fn command_sets_converge_under_loss_and_reordering() {
    let mut w = World::new(12, lossy(0.3));
    let k = w.joined(MINUTE);
    let mut g = 0;
    for _ in 0..10 {
        g = w.publish();
        w.pass(Duration::from_millis(300));
    }
    assert!(w.run(2 * MINUTE, |w| w.lows[k].lower.generation() == Some(g)));
}

#[test]
fn an_older_command_set_arriving_late_is_not_taken() {
    let mut w = World::new(13, lossy(0.2));
    let k = w.joined(MINUTE);
    for _ in 0..30 {
        w.publish();
        w.pass(Duration::from_millis(50));
    }
    w.pass(MINUTE);
    let taken = &w.lows[k].taken;
    assert!(
        taken.windows(2).all(|p| p[0] <= p[1]),
        "generations taken in order: {taken:?}"
    );
}

#[test]
fn a_lost_notification_is_noticed_from_heartbeat_answers() {
    let mut w = World::new(14, clean());
    let k = w.joined(Duration::from_secs(5));
    // The notification is lost: the peer is cut off while it goes.
    w.sim.set_down(w.lows[k].idx, true);
    let g = w.publish();
    w.pass(Duration::from_millis(100));
    w.sim.set_down(w.lows[k].idx, false);
    // Confirmable notifications are retransmitted, so cut it off long enough for
    // them to give up is not needed: the heartbeat answers name the set given.
    assert!(
        w.run(Duration::from_secs(30), |w| w.lows[k].lower.generation()
            == Some(g))
    );
}

#[test]
fn many_peers_converge_on_each_command_set() {
    let mut w = World::new(15, lossy(0.15));
    let ks: Vec<usize> = (0..10)
        .map(|_| {
            let t = w.token(MINUTE);
            w.lower(t)
        })
        .collect();
    assert!(w.run(MINUTE, |w| {
        ks.iter().all(|k| w.lows[*k].lower.is_observing())
    }));
    let g = w.publish();
    assert!(w.run(MINUTE, |w| {
        ks.iter().all(|k| w.lows[*k].lower.generation() == Some(g))
    }));
}

#[test]
fn an_upper_tier_that_forgot_its_observer_is_observed_again() {
    let mut w = World::new(16, clean());
    let k = w.joined(Duration::from_secs(5));
    // Forget the observer at the upper tier without telling the peer (the upper
    // tier's answers then say it holds none): the peer observes afresh.
    let id = w.id(k);
    w.up.given.remove(&id);
    let g = w.publish();
    assert!(
        w.run(Duration::from_secs(30), |w| w.lows[k].lower.generation()
            == Some(g))
    );
}

// ---------------------------------------------------------------- status changes

#[test]
fn status_changes_are_applied_once_on_a_clean_link() {
    let mut w = World::new(17, clean());
    let k = w.joined(Duration::from_secs(5));
    let sent = expect_changes(&mut w, k, 5, Duration::from_secs(10));
    assert_eq!(w.applied(k), sent);
}

#[test]
fn status_changes_are_applied_exactly_once_under_heavy_loss() {
    let mut w = World::new(18, lossy(0.4));
    let k = w.joined(2 * MINUTE);
    let mut sent = Vec::new();
    for _ in 0..10 {
        sent.extend(expect_changes(&mut w, k, 3, 10 * MINUTE));
    }
    assert_eq!(w.applied(k), sent, "each change once, in order");
}

#[test]
fn status_changes_sent_again_after_a_lost_acknowledgement_are_not_applied_twice() {
    let mut w = World::new(19, clean());
    let k = w.joined(Duration::from_secs(5));
    let c = w.lows[k].change();
    // The report arrives, its acknowledgement is lost: cut the peer off right after
    // the upper tier took the change.
    assert!(w.run(Duration::from_secs(5), |w| w.applied(k).len() == 1));
    let idx = w.lows[k].idx;
    w.sim.set_down(idx, true);
    w.pass(Duration::from_secs(40));
    w.sim.set_down(idx, false);
    let d = w.lows[k].change();
    assert!(w.run(MINUTE, |w| w.lows[k].lower.unacknowledged() == 0));
    assert_eq!(w.applied(k), vec![c, d]);
}

#[test]
fn status_changes_wait_while_the_upper_tier_is_away() {
    let mut w = World::new(20, clean());
    let k = w.joined(Duration::from_secs(5));
    w.sim.set_down(0, true);
    let sent: Vec<u32> = (0..4).map(|_| w.lows[k].change()).collect();
    w.pass(3 * MINUTE);
    assert_eq!(
        w.lows[k].lower.unacknowledged(),
        4,
        "kept while nobody acknowledges"
    );
    assert!(w.applied(k).is_empty());
    w.sim.set_down(0, false);
    assert!(w.run(MINUTE, |w| w.lows[k].lower.unacknowledged() == 0));
    assert_eq!(w.applied(k), sent);
}

#[test]
fn status_changes_survive_an_upper_tier_restart() {
    let mut w = World::new(21, clean());
    let k = w.joined(Duration::from_secs(5));
    w.sim.set_down(0, true);
    let sent: Vec<u32> = (0..3).map(|_| w.lows[k].change()).collect();
    w.pass(Duration::from_secs(20));
    w.restart_upper();
    w.sim.set_down(0, false);
    assert!(w.run(MINUTE, |w| w.lows[k].lower.unacknowledged() == 0));
    assert_eq!(w.applied(k), sent);
}

#[test]
fn a_restarted_lower_tier_numbers_its_changes_in_a_new_run() {
    let mut w = World::new(22, clean());
    let k = w.joined(Duration::from_secs(5));
    let a = expect_changes(&mut w, k, 2, Duration::from_secs(10));
    w.restart_lower(k);
    let b = expect_changes(&mut w, k, 2, Duration::from_secs(30));
    assert_eq!(
        w.applied(k),
        [a, b].concat(),
        "the new run's numbers are not taken for old ones"
    );
}

#[test]
fn changes_of_two_peers_are_kept_apart() {
    let mut w = World::new(23, lossy(0.2));
    let a = w.joined(MINUTE);
    let b = w.joined(MINUTE);
    let sa = expect_changes(&mut w, a, 4, 5 * MINUTE);
    let sb = expect_changes(&mut w, b, 4, 5 * MINUTE);
    assert_eq!(w.applied(a), sa);
    assert_eq!(w.applied(b), sb);
}

#[test]
fn a_change_queued_while_a_report_is_on_its_way_goes_next() {
    let mut w = World::new(24, lossy(0.1));
    let k = w.joined(MINUTE);
    let first = w.lows[k].change();
    let now = w.sim.now();
    let ep = w.sim.ep(w.lows[k].idx);
    w.lows[k].start(ep, now);
    let second = w.lows[k].change();
    assert!(w.run(MINUTE, |w| w.lows[k].lower.unacknowledged() == 0));
    assert_eq!(w.applied(k), vec![first, second]);
}

// ---------------------------------------------------------------- the upper tier away

#[test]
fn an_upper_tier_away_and_back_is_observed_again() {
    let mut w = World::new(25, clean());
    let k = w.joined(Duration::from_secs(5));
    w.sim.set_down(0, true);
    w.pass(2 * MINUTE);
    w.sim.set_down(0, false);
    let g = w.publish();
    assert!(w.run(MINUTE, |w| w.lows[k].lower.generation() == Some(g)));
}

#[test]
fn a_restarted_upper_tier_is_observed_again_within_seconds() {
    let mut w = World::new(26, clean());
    let k = w.joined(Duration::from_secs(5));
    w.restart_upper();
    let g = w.publish();
    let t0 = w.elapsed();
    assert!(w.run(MINUTE, |w| w.lows[k].lower.generation() == Some(g)));
    assert!(
        w.elapsed() - t0 < Duration::from_secs(10),
        "heartbeat answers show the lost observation"
    );
}

#[test]
fn a_restarted_upper_tier_still_accepts_its_peers_keys() {
    let mut w = World::new(27, clean());
    let k = w.joined(Duration::from_secs(5));
    let id = w.id(k);
    w.restart_upper();
    let before = w.up.heartbeats.get(&id).copied().unwrap_or(0);
    w.pass(Duration::from_secs(10));
    assert!(w.up.heartbeats.get(&id).copied().unwrap_or(0) > before);
}

#[test]
fn observation_attempts_back_off_while_the_upper_tier_is_away() {
    let mut w = World::new(28, clean());
    let k = w.joined(Duration::from_secs(5));
    w.sim.set_down(0, true);
    // Drop the observation: the peer tries again and again.
    let now = w.sim.now();
    w.lows[k].lower.reobserve(now);
    let sent_before = w.sim.ep(w.lows[k].idx).stats().datagrams_out;
    w.pass(10 * MINUTE);
    let sent = w.sim.ep(w.lows[k].idx).stats().datagrams_out - sent_before;
    // Heartbeats every 2 s (300) plus observations at most every 5 s with their
    // retransmissions: far below a tight loop.
    assert!(sent < 1500, "{sent} datagrams in 10 minutes");
    w.sim.set_down(0, false);
    assert!(w.run(Duration::from_secs(30), |w| w.lows[k].lower.is_observing()));
}

#[test]
fn heartbeats_keep_their_period_while_the_upper_tier_is_away() {
    let mut w = World::new(29, clean());
    let k = w.joined(Duration::from_secs(5));
    w.sim.set_down(0, true);
    w.pass(Duration::from_secs(20));
    w.sim.set_down(0, false);
    let id = w.id(k);
    let before = w.up.heartbeats.get(&id).copied().unwrap_or(0);
    w.pass(Duration::from_secs(20));
    let n = w.up.heartbeats.get(&id).copied().unwrap_or(0) - before;
    assert!(
        (9..=11).contains(&n),
        "{n} heartbeats in 20 s at a 2 s period"
    );
}

// ---------------------------------------------------------------- the lower tier restarting

#[test]
fn a_restarted_lower_tier_resumes_with_its_stored_key() {
    let mut w = World::new(30, clean());
    let k = w.joined(Duration::from_secs(5));
    w.restart_lower(k);
    assert!(w.run(MINUTE, |w| w.lows[k].lower.is_observing()));
    assert_eq!(w.up.joins, 1, "no second join");
}

#[test]
fn a_restarted_lower_tier_takes_the_current_command_set() {
    let mut w = World::new(31, clean());
    let k = w.joined(Duration::from_secs(5));
    w.sim.set_down(w.lows[k].idx, true);
    let g = w.publish();
    w.restart_lower(k);
    w.sim.set_down(w.lows[k].idx, false);
    assert!(w.run(MINUTE, |w| w.lows[k].lower.generation() == Some(g)));
}

#[test]
fn a_lower_tier_killed_before_its_join_answer_joins_with_its_token_again_if_unused() {
    let mut w = World::new(32, clean());
    let t = w.token(MINUTE);
    // The upper tier is away: the join never arrives; the peer restarts.
    w.sim.set_down(0, true);
    let k = w.lower(t);
    w.pass(Duration::from_secs(3));
    w.restart_lower(k);
    w.sim.set_down(0, false);
    assert!(w.run(MINUTE, |w| w.lows[k].lower.is_observing()));
    assert_eq!(w.up.joins, 1);
}

// ---------------------------------------------------------------- re-keying

fn rekeyed(w: &mut World, k: usize, limit: Duration) -> bool {
    let id = w.id(k);
    w.ask_rekey(id);
    w.run(limit, |w| {
        w.generation(k) == 1 && w.up.upper.generation(id) == Some(1) && !w.up.upper.rekey_asked(id)
    })
}

#[test]
fn rekey_asked_is_taken_and_the_old_key_stops_working() {
    let mut w = World::new(33, clean());
    let k = w.joined(Duration::from_secs(5));
    assert!(rekeyed(&mut w, k, MINUTE));
    let id = w.id(k);
    assert_eq!(
        w.up.store.keys[&id].0.generation, 1,
        "committed in the store"
    );
    assert!(w.up.store.keys[&id].1.is_none());
    // The old key's context is gone at the upper tier.
    assert!(w.sim.ep(0).context(&PeerContexts::key(id, 0)).is_none());
    assert!(w.sim.ep(0).context(&PeerContexts::key(id, 1)).is_some());
}

#[test]
fn rekey_during_heavy_loss_ends_with_one_key_both_sides_agree_on() {
    for seed in [34, 134, 234] {
        let mut w = World::new(seed, lossy(0.35));
        let k = w.joined(2 * MINUTE);
        assert!(rekeyed(&mut w, k, 10 * MINUTE), "seed {seed}");
        let g = w.publish();
        assert!(
            w.run(5 * MINUTE, |w| w.lows[k].lower.generation() == Some(g)),
            "seed {seed}"
        );
    }
}

#[test]
fn a_lost_rekey_answer_hands_out_the_same_pending_key_again() {
    let mut w = World::new(35, clean());
    let k = w.joined(Duration::from_secs(5));
    let id = w.id(k);
    // Ask on the peer's behalf while it cannot hear the answer.
    let first =
        w.up.upper
            .rekey(id, &mut w.up.store, &mut w.up.rng)
            .expect("rekey");
    let ep = w.sim.ep(0);
    w.up.apply(ep);
    let again =
        w.up.upper
            .rekey(id, &mut w.up.store, &mut w.up.rng)
            .expect("rekey");
    assert_eq!(first, again, "the pending key, not a second one");
    w.ask_rekey(id);
    assert!(w.run(MINUTE, |w| w.up.upper.generation(id) == Some(1)));
    assert_eq!(
        w.lows[k].creds.as_ref().map(|c| c.master_secret.clone()),
        Some(first.master_secret)
    );
}

#[test]
fn an_upper_tier_restarted_mid_rekey_accepts_the_pending_key() {
    let mut w = World::new(36, clean());
    let k = w.joined(Duration::from_secs(5));
    let id = w.id(k);
    w.ask_rekey(id);
    // Until the upper tier handed out the key, then it is killed.
    assert!(w.run(MINUTE, |w| w.up.store.keys[&id].1.is_some()));
    w.restart_upper();
    assert!(w.run(MINUTE, |w| w.up.upper.generation(id) == Some(1)
        && w.generation(k) == 1));
    let g = w.publish();
    assert!(w.run(MINUTE, |w| w.lows[k].lower.generation() == Some(g)));
}

#[test]
fn a_lower_tier_restarted_after_taking_its_new_key_speaks_with_it() {
    let mut w = World::new(37, clean());
    let k = w.joined(Duration::from_secs(5));
    let id = w.id(k);
    w.ask_rekey(id);
    assert!(w.run(MINUTE, |w| w.generation(k) == 1));
    w.restart_lower(k);
    assert!(w.run(MINUTE, |w| w.up.upper.generation(id) == Some(1)));
    assert!(w.run(MINUTE, |w| w.lows[k].lower.is_observing()));
}

#[test]
fn two_rekeys_in_a_row_reach_generation_two() {
    let mut w = World::new(38, lossy(0.1));
    let k = w.joined(MINUTE);
    let id = w.id(k);
    assert!(rekeyed(&mut w, k, 5 * MINUTE));
    w.ask_rekey(id);
    assert!(w.run(5 * MINUTE, |w| w.up.upper.generation(id) == Some(2)
        && w.generation(k) == 2));
}

#[test]
fn no_rekey_happens_unless_asked() {
    let mut w = World::new(39, clean());
    let k = w.joined(Duration::from_secs(5));
    w.pass(5 * MINUTE);
    assert_eq!(w.generation(k), 0);
    assert!(w.up.store.keys[&w.id(k)].1.is_none());
}

// ---------------------------------------------------------------- eviction

#[test]
fn an_evicted_peer_is_not_heard_any_more() {
    let mut w = World::new(40, clean());
    let k = w.joined(Duration::from_secs(5));
    let id = w.id(k);
    w.evict(id);
    let before = w.up.heartbeats.get(&id).copied().unwrap_or(0);
    let c = w.lows[k].change();
    w.pass(MINUTE);
    assert_eq!(w.up.heartbeats.get(&id).copied().unwrap_or(0), before);
    assert!(!w.applied(k).contains(&c));
    assert!(w.sim.ep(0).context(&PeerContexts::key(id, 0)).is_none());
}

#[test]
fn eviction_during_a_rekey_removes_both_keys() {
    let mut w = World::new(41, clean());
    let k = w.joined(Duration::from_secs(5));
    let id = w.id(k);
    let _ =
        w.up.upper
            .rekey(id, &mut w.up.store, &mut w.up.rng)
            .expect("rekey");
    let ep = w.sim.ep(0);
    w.up.apply(ep);
    assert!(w.sim.ep(0).context(&PeerContexts::key(id, 1)).is_some());
    w.evict(id);
    assert!(w.sim.ep(0).context(&PeerContexts::key(id, 0)).is_none());
    assert!(w.sim.ep(0).context(&PeerContexts::key(id, 1)).is_none());
}

#[test]
fn an_evicted_peer_stays_out_after_an_upper_tier_restart() {
    let mut w = World::new(42, clean());
    let k = w.joined(Duration::from_secs(5));
    let id = w.id(k);
    w.evict(id);
    w.restart_upper();
    let before = w.up.heartbeats.get(&id).copied().unwrap_or(0);
    w.pass(MINUTE);
    assert_eq!(w.up.heartbeats.get(&id).copied().unwrap_or(0), before);
}

#[test]
fn evicting_one_peer_leaves_the_others_linked() {
    let mut w = World::new(43, clean());
    let a = w.joined(Duration::from_secs(5));
    let b = w.joined(Duration::from_secs(5));
    w.evict(w.id(a));
    let g = w.publish();
    assert!(w.run(MINUTE, |w| w.lows[b].lower.generation() == Some(g)));
    let sb = expect_changes(&mut w, b, 2, MINUTE);
    assert_eq!(w.applied(b), sb);
}

// ---------------------------------------------------------------- liveness

#[test]
fn a_silent_peer_is_lost_and_comes_back_when_heard() {
    let mut w = World::new(44, clean());
    let k = w.joined(Duration::from_secs(5));
    let id = w.id(k);
    let start = w.up.start;
    w.sim.set_down(w.lows[k].idx, true);
    w.pass(Duration::from_secs(7));
    let now = w.sim.now();
    assert_eq!(
        w.up.upper.sweep(now, start, Duration::from_secs(6)),
        vec![id]
    );
    assert!(w.up.upper.is_lost(id));
    assert!(
        w.up.upper
            .sweep(now, start, Duration::from_secs(6))
            .is_empty(),
        "lost once"
    );
    w.sim.set_down(w.lows[k].idx, false);
    assert!(w.run(Duration::from_secs(5), |w| !w.up.upper.is_lost(id)));
}

#[test]
fn the_upper_tier_knows_where_to_ask_each_peer() {
    let mut w = World::new(45, clean());
    let a = w.joined(Duration::from_secs(5));
    let b = w.joined(Duration::from_secs(5));
    assert_eq!(w.up.upper.addr(w.id(a)), Some(addr(a + 1)));
    assert_eq!(w.up.upper.addr(w.id(b)), Some(addr(b + 1)));
}

// ---------------------------------------------------------------- the pure cores

#[test]
fn change_marks_survive_the_wire_and_overlapping_batches_skip_what_was_taken() {
    let m = ChangeMark {
        run: 0xDEAD_BEEF,
        first: 0xFFFF_FFFE,
    };
    assert_eq!(ChangeMark::from_wire(m.to_wire()), m);
    let mut u = Upper::new();
    let mut store = MemStore::default();
    let now = Instant::now();
    u.heard(now, 1, 0, addr(1), &mut store).expect("heard");
    assert_eq!(
        u.take_changes(1, Some(m), 3),
        0,
        "first batch all new (wrapping)"
    );
    assert_eq!(u.take_changes(1, Some(m), 3), 3, "the same batch again");
    let next = ChangeMark {
        run: m.run,
        first: 1,
    };
    assert_eq!(
        u.take_changes(1, Some(ChangeMark { first: 0, ..next }), 2),
        1,
        "overlapping by one"
    );
    assert_eq!(
        u.take_changes(1, Some(ChangeMark { run: 7, first: 0 }), 2),
        0,
        "another run"
    );
    assert_eq!(
        u.take_changes(1, None, 4),
        0,
        "unnumbered changes are taken"
    );
}

#[test]
fn seeded_randomness_is_repeatable_and_keys_differ() {
    let (mut a, mut b) = (SeededRandom(3), SeededRandom(3));
    let (ka, kb) = (PeerKey::fresh(0, &mut a), PeerKey::fresh(0, &mut b));
    assert_eq!(ka, kb);
    let kc = PeerKey::fresh(0, &mut a);
    assert_ne!(ka.secret, kc.secret);
    assert_eq!(ka.secret.len(), 32);
    assert_eq!(ka.salt.len(), 8);
}

#[test]
fn the_lower_half_backs_off_and_resets_after_success() {
    let cfg = LowerConfig::default();
    let t0 = Instant::now();
    let mut l: Lower<()> = Lower::new(cfg, t0, true, &mut SeededRandom(1));
    let mut now = t0;
    let mut attempts = Vec::new();
    while attempts.len() < 9 {
        while let Some(d) = l.poll(now) {
            if d == Do::Observe {
                attempts.push(now);
                l.observe_answered(now, ObserveOutcome::Unreachable);
            }
        }
        now = l.poll_timeout().expect("a timer");
    }
    let waits: Vec<Duration> = attempts.windows(2).map(|p| p[1] - p[0]).collect();
    assert_eq!(waits[0], cfg.retry_min);
    assert!(
        waits.windows(2).all(|p| p[1] >= p[0]),
        "waits grow: {waits:?}"
    );
    assert_eq!(waits.last(), Some(&cfg.retry_max), "{waits:?}");
    l.observe_answered(now, ObserveOutcome::Observed);
    l.reobserve(now);
    while let Some(d) = l.poll(now) {
        if d == Do::Observe {
            l.observe_answered(now, ObserveOutcome::Unreachable);
        }
    }
    let next = (0..100)
        .map(|i| now + Duration::from_millis(i * 10))
        .find(|t| {
            let mut probe = std::iter::from_fn(|| l.poll(*t));
            probe.any(|d| d == Do::Observe)
        });
    assert_eq!(
        next.map(|t| t - now),
        Some(cfg.retry_min),
        "back to the first wait"
    );
}

#[test]
fn the_lower_half_reports_one_batch_at_a_time_in_order() {
    let t0 = Instant::now();
    let mut l: Lower<u32> = Lower::new(LowerConfig::default(), t0, true, &mut SeededRandom(2));
    l.observe_answered(t0, ObserveOutcome::Observed);
    l.change(1);
    l.change(2);
    let mut reports = Vec::new();
    while let Some(d) = l.poll(t0) {
        if let Do::Report { mark, changes } = d {
            reports.push((mark, changes));
        }
    }
    assert_eq!(reports.len(), 1);
    l.change(3);
    assert!(
        !matches!(l.poll(t0), Some(Do::Report { .. })),
        "one report on its way at once"
    );
    l.report_answered(t0, true);
    let Some(Do::Report { mark, changes }) = l.poll(t0) else {
        panic!("the change queued meanwhile goes next");
    };
    assert_eq!(changes, vec![3]);
    assert_eq!(mark.first, reports[0].0.first + 2);
    l.report_answered(t0, false);
    assert!(
        l.poll(t0).is_none(),
        "a failed report waits before it goes again"
    );
    assert_eq!(l.unacknowledged(), 1);
}

#[test]
fn the_lower_half_asks_for_one_key_at_a_time() {
    let t0 = Instant::now();
    let mut l: Lower<u32> = Lower::new(LowerConfig::default(), t0, true, &mut SeededRandom(3));
    while l.poll(t0).is_some() {}
    l.observe_answered(t0, ObserveOutcome::Observed);
    let ask = HeartbeatAnswer {
        sent: t0,
        given: None,
        rekey: true,
    };
    l.heartbeat_answered(t0, ask);
    assert_eq!(l.poll(t0), Some(Do::AskKey));
    l.heartbeat_answered(t0, ask);
    assert_eq!(l.poll(t0), None, "one exchange at once");
    l.key_answered(t0, true);
    assert_eq!(
        l.poll(t0),
        Some(Do::Observe),
        "the observation was made under the old key"
    );
    assert_eq!(l.poll(t0), Some(Do::AskKey), "asked again meanwhile");
}
