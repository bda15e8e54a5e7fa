//! The endpoint: state, timers and the RFC 7252 message layer.
//!
//! The client side (`client.rs`) and server side (`server.rs`) are further `impl
//! Endpoint` blocks over the same state.

use super::client::Exchange;
use super::server::{Block1State, Block2Cache, Observer, Pending};
use super::types::*;
use crate::oscore::{ContextParams, SecurityContext};
use coap_lite::{MessageClass, MessageType, Packet};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub peer: SocketAddr,
    /// Bytes.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    Retransmit(SocketAddr, u16),
    AckDelay(u64),
    Exchange(u64),
}

#[derive(Debug)]
pub(crate) enum OutKind {
    Request(u64),
    Separate,
    Notification(SocketAddr, Vec<u8>),
}

#[derive(Debug)]
pub(crate) struct Outstanding {
    pub(crate) data: Vec<u8>,
    pub(crate) attempts: u32,
    pub(crate) timeout: Duration,
    pub(crate) deadline: Instant,
    pub(crate) kind: OutKind,
}

#[derive(Debug)]
struct Dedup {
    reply: Option<Vec<u8>>,
}

/// splitmix64: small, seedable, good enough for message IDs, tokens and jitter.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A CoAP endpoint: one UDP socket's worth of state, any number of peers.
#[derive(Debug)]
pub struct Endpoint {
    pub(crate) cfg: Config,
    links: HashMap<SocketAddr, LinkParams>,
    pub(crate) rng: Rng,
    next_mid: u16,
    next_id: u64,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    pub(crate) outstanding: HashMap<(SocketAddr, u16), Outstanding>,
    dedup: HashMap<(SocketAddr, u16), Dedup>,
    dedup_order: VecDeque<(Instant, SocketAddr, u16)>,
    pub(crate) contexts: HashMap<ContextKey, SecurityContext>,
    pub(crate) join_tokens: HashMap<Vec<u8>, Vec<u8>>,
    pub(crate) join_contexts: VecDeque<ContextKey>,
    pub(crate) exchanges: HashMap<u64, Exchange>,
    pub(crate) tokens: HashMap<Vec<u8>, u64>,
    pub(crate) inflight: HashMap<SocketAddr, usize>,
    pub(crate) queued: HashMap<SocketAddr, VecDeque<u64>>,
    pub(crate) pending: HashMap<u64, Pending>,
    pub(crate) observers: HashMap<(SocketAddr, Vec<u8>), Observer>,
    pub(crate) block1: HashMap<(SocketAddr, String), Block1State>,
    /// Bodies kept for their later blocks, by peer (ordered: a peer's are counted
    /// by a range, not a scan of every peer's).
    pub(crate) block2: BTreeMap<(SocketAddr, String), Block2Cache>,
    transmits: VecDeque<Transmit>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) stats: Stats,
    pub(crate) link_format: String,
}

impl Endpoint {
    /// A new endpoint.
    pub fn new(cfg: Config) -> Self {
        let mut rng = Rng(cfg.seed);
        // Truncation intended: a random starting message ID.
        let next_mid = (rng.next_u64() & 0xFFFF) as u16;
        Self {
            cfg,
            links: HashMap::new(),
            rng,
            next_mid,
            next_id: 1,
            timers: BinaryHeap::new(),
            outstanding: HashMap::new(),
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            contexts: HashMap::new(),
            join_tokens: HashMap::new(),
            join_contexts: VecDeque::new(),
            exchanges: HashMap::new(),
            tokens: HashMap::new(),
            inflight: HashMap::new(),
            queued: HashMap::new(),
            pending: HashMap::new(),
            observers: HashMap::new(),
            block1: HashMap::new(),
            block2: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            link_format: String::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Use other transmission parameters for one peer (a Wi-Fi or LTE link).
    pub fn set_link(&mut self, peer: SocketAddr, params: LinkParams) {
        self.links.insert(peer, params);
    }

    pub(crate) fn link(&self, peer: SocketAddr) -> LinkParams {
        self.links.get(&peer).copied().unwrap_or(self.cfg.link)
    }

    /// Install a security context (replacing one with the same key); returns its key.
    pub fn add_context(&mut self, ctx: SecurityContext) -> ContextKey {
        let key = ContextKey {
            id_context: ctx.id_context().map(<[u8]>::to_vec),
            recipient_id: ctx.recipient_id().to_vec(),
        };
        self.contexts.insert(key.clone(), ctx);
        key
    }

    /// Install an in-memory context derived from `params`.
    pub fn add_context_params(&mut self, params: &ContextParams) -> ContextKey {
        self.add_context(SecurityContext::in_memory(params))
    }

    /// Remove a context: requests under it get 4.01 from now on.
    pub fn remove_context(&mut self, key: &ContextKey) -> Option<SecurityContext> {
        self.contexts.remove(key)
    }

    /// A context, to inspect it.
    pub fn context(&self, key: &ContextKey) -> Option<&SecurityContext> {
        self.contexts.get(key)
    }

    /// Accept registrations protected with this join token (server side).
    pub fn add_join_token(&mut self, token_id: Vec<u8>, secret: Vec<u8>) {
        self.join_tokens.insert(token_id, secret);
    }

    /// Stop accepting a join token; contexts already derived from it are removed too.
    pub fn remove_join_token(&mut self, token_id: &[u8]) {
        self.join_tokens.remove(token_id);
        let from_token = |k: &ContextKey| {
            k.id_context
                .as_deref()
                .is_some_and(|c| c.starts_with(token_id))
        };
        self.join_contexts.retain(|k| !from_token(k));
        self.contexts.retain(|k, _| {
            !k.id_context
                .as_deref()
                .is_some_and(|c| c.starts_with(token_id))
        });
    }

    /// The CoRE link-format body of `/.well-known/core` (RFC 6690).
    pub fn set_link_format(&mut self, links: String) {
        self.link_format = links;
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.timers.peek().map(|Reverse((t, _))| *t);
        let d = self.dedup_order.front().map(|(t, _, _)| *t);
        match (t, d) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fire every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(t, peer, mid)) = self.dedup_order.front() {
            if t > now {
                break;
            }
            self.dedup_order.pop_front();
            self.dedup.remove(&(peer, mid));
        }
        while let Some(Reverse((t, _))) = self.timers.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((_, timer))) = self.timers.pop() else {
                break;
            };
            match timer {
                Timer::Retransmit(peer, mid) => self.on_retransmit(now, peer, mid),
                Timer::AckDelay(id) => self.on_ack_delay(id),
                Timer::Exchange(h) => self.on_exchange_deadline(now, h),
            }
        }
        self.block1.retain(|_, s| s.expires > now);
        self.block2.retain(|_, c| c.expires > now);
    }

    pub(crate) fn schedule(&mut self, at: Instant, timer: Timer) {
        self.timers.push(Reverse((at, timer)));
    }

    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn alloc_mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    pub(crate) fn transmit(&mut self, peer: SocketAddr, data: Vec<u8>) {
        self.stats.datagrams_out += 1;
        self.transmits.push_back(Transmit { peer, data });
    }

    pub(crate) fn encode(pkt: &Packet) -> Vec<u8> {
        // Only option values over 65804 bytes fail to encode; we never build those.
        pkt.to_bytes_unlimited().unwrap_or_default()
    }

    /// Send a confirmable message with retransmission; returns its message ID.
    pub(crate) fn send_con(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        mut pkt: Packet,
        kind: OutKind,
    ) -> u16 {
        let mid = self.alloc_mid();
        pkt.header.set_type(MessageType::Confirmable);
        pkt.header.message_id = mid;
        let data = Self::encode(&pkt);
        let link = self.link(peer);
        let factor = 1.0 + (link.ack_random_factor - 1.0).max(0.0) * self.rng.unit();
        let timeout = link.ack_timeout.mul_f64(factor);
        let deadline = now + timeout;
        self.outstanding.insert(
            (peer, mid),
            Outstanding {
                data: data.clone(),
                attempts: 0,
                timeout,
                deadline,
                kind,
            },
        );
        self.schedule(deadline, Timer::Retransmit(peer, mid));
        self.transmit(peer, data);
        mid
    }

    /// Send a non-confirmable message; returns its message ID.
    pub(crate) fn send_non(&mut self, peer: SocketAddr, mut pkt: Packet) -> u16 {
        let mid = self.alloc_mid();
        pkt.header.set_type(MessageType::NonConfirmable);
        pkt.header.message_id = mid;
        let data = Self::encode(&pkt);
        self.transmit(peer, data);
        mid
    }

    /// Send an ACK or RST for a received message and remember it for duplicates.
    pub(crate) fn reply(&mut self, peer: SocketAddr, mid: u16, mut pkt: Packet, t: MessageType) {
        pkt.header.set_type(t);
        pkt.header.message_id = mid;
        let data = Self::encode(&pkt);
        if let Some(d) = self.dedup.get_mut(&(peer, mid)) {
            d.reply = Some(data.clone());
        }
        self.transmit(peer, data);
    }

    /// An empty ACK or RST.
    pub(crate) fn reply_empty(&mut self, peer: SocketAddr, mid: u16, t: MessageType) {
        let mut p = Packet::new();
        // coap-lite's default code is GET; an empty message must carry 0.00.
        p.header.code = MessageClass::Empty;
        self.reply(peer, mid, p, t);
    }

    fn on_retransmit(&mut self, now: Instant, peer: SocketAddr, mid: u16) {
        let max = self.link(peer).max_retransmit;
        let Some(o) = self.outstanding.get_mut(&(peer, mid)) else {
            return;
        };
        if o.deadline > now {
            return;
        }
        if o.attempts >= max {
            let Some(o) = self.outstanding.remove(&(peer, mid)) else {
                return;
            };
            self.stats.gave_up += 1;
            match o.kind {
                OutKind::Request(h) => self.client_gave_up(now, h, mid),
                OutKind::Notification(p, token) => {
                    self.observers.remove(&(p, token));
                }
                OutKind::Separate => {}
            }
            return;
        }
        o.attempts += 1;
        o.timeout *= 2;
        o.deadline = now + o.timeout;
        let (deadline, data) = (o.deadline, o.data.clone());
        self.stats.retransmissions += 1;
        self.schedule(deadline, Timer::Retransmit(peer, mid));
        self.transmit(peer, data);
    }

    fn remember(&mut self, now: Instant, peer: SocketAddr, mid: u16) {
        if self.dedup.len() >= self.cfg.max_dedup {
            if let Some((_, p, m)) = self.dedup_order.pop_front() {
                self.dedup.remove(&(p, m));
            }
        }
        self.dedup.insert((peer, mid), Dedup { reply: None });
        self.dedup_order
            .push_back((now + self.cfg.dedup_lifetime, peer, mid));
    }

    /// Feed one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) {
        self.stats.datagrams_in += 1;
        let pkt = match Packet::from_bytes(data) {
            Ok(p) if p.header.get_version() == 1 => p,
            _ => {
                self.stats.malformed += 1;
                return;
            }
        };
        let mid = pkt.header.message_id;
        let code = u8::from(pkt.header.code);
        match pkt.header.get_type() {
            t @ (MessageType::Acknowledgement | MessageType::Reset) => {
                let reset = t == MessageType::Reset;
                if reset && code != 0 {
                    self.stats.malformed += 1;
                    return;
                }
                match self.outstanding.remove(&(peer, mid)) {
                    Some(o) => match o.kind {
                        OutKind::Request(h) => {
                            let response = (code != 0).then_some(pkt);
                            self.client_acked(now, h, mid, reset, response);
                        }
                        OutKind::Notification(p, token) => {
                            if reset {
                                self.observers.remove(&(p, token));
                            } else if let Some(obs) = self.observers.get_mut(&(p, token)) {
                                obs.inflight = None;
                            }
                        }
                        OutKind::Separate => {}
                    },
                    None => {
                        // A duplicate of an ACK already processed (or one for a
                        // message we gave up on): its piggybacked response, if any,
                        // was handled with the first copy.
                        self.stats.duplicates += 1;
                    }
                }
            }
            t => {
                let con = t == MessageType::Confirmable;
                if code == 0 {
                    // CoAP ping (CON) is answered with RST; an empty NON is malformed.
                    if con {
                        self.transmit(peer, Self::encode(&rst(mid)));
                    } else {
                        self.stats.malformed += 1;
                    }
                    return;
                }
                if let Some(d) = self.dedup.get(&(peer, mid)) {
                    self.stats.duplicates += 1;
                    if let Some(r) = d.reply.clone() {
                        self.transmit(peer, r);
                    }
                    return;
                }
                self.remember(now, peer, mid);
                match code >> 5 {
                    0 => self.server_request(now, peer, pkt, con),
                    2..=5 => self.client_response(now, peer, pkt, con),
                    _ => {
                        self.stats.malformed += 1;
                        if con {
                            self.reply_empty(peer, mid, MessageType::Reset);
                        }
                    }
                }
            }
        }
    }
}

fn rst(mid: u16) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Reset);
    p.header.code = MessageClass::Empty;
    p.header.message_id = mid;
    p
}
