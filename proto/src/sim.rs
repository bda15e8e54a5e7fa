//! A seeded in-memory network for deterministic tests of [`Endpoint`]s.
//!
//! Time is virtual: the network jumps from one event (a delivery or a timer) to the
//! next. Loss, duplication and delay (hence reordering) are drawn from a seeded PRNG,
//! so every run with the same seed is the same run.

use crate::coap::{Endpoint, Event};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Impairments of the simulated links (both directions).
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a delivered datagram is delivered twice.
    pub duplicate: f64,
    /// Smallest one-way delay.
    pub min_delay: Duration,
    /// Largest one-way delay (a spread reorders datagrams).
    pub max_delay: Duration,
}

impl Default for Impairment {
    fn default() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(5),
        }
    }
}

type InFlight = Reverse<(Instant, u64, usize, SocketAddr, Vec<u8>)>;

/// The simulated network and its endpoints.
#[derive(Debug)]
pub struct SimNet {
    now: Instant,
    start: Instant,
    rng: u64,
    seq: u64,
    nodes: Vec<(SocketAddr, Endpoint)>,
    in_flight: BinaryHeap<InFlight>,
    /// Current impairments.
    pub impairment: Impairment,
    /// Datagrams lost so far.
    pub lost: u64,
    /// Datagrams delivered so far.
    pub delivered: u64,
    /// Endpoints cut off: what they send and what is sent to them is lost.
    down: Vec<bool>,
}

impl SimNet {
    /// An empty network with a seed.
    pub fn new(seed: u64, impairment: Impairment) -> Self {
        let now = Instant::now();
        Self {
            now,
            start: now,
            rng: seed,
            seq: 0,
            nodes: Vec::new(),
            in_flight: BinaryHeap::new(),
            impairment,
            lost: 0,
            delivered: 0,
            down: Vec::new(),
        }
    }

    fn rand(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Add an endpoint at `addr`; returns its index.
    pub fn add(&mut self, addr: SocketAddr, ep: Endpoint) -> usize {
        self.nodes.push((addr, ep));
        self.down.push(false);
        self.nodes.len() - 1
    }

    /// The endpoint at index `i`.
    pub fn ep(&mut self, i: usize) -> &mut Endpoint {
        &mut self.nodes[i].1
    }

    /// Replace endpoint `i` (a process restarted): datagrams on their way to it
    /// reach the new one.
    pub fn replace(&mut self, i: usize, ep: Endpoint) -> Endpoint {
        std::mem::replace(&mut self.nodes[i].1, ep)
    }

    /// Cut endpoint `i` off (`true`) or connect it again: while it is down, every
    /// datagram it sends or is sent is lost.
    pub fn set_down(&mut self, i: usize, down: bool) {
        self.down[i] = down;
    }

    /// The address of endpoint `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].0
    }

    /// The virtual clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Inject a datagram from `from` to endpoint `to`, delivered now.
    pub fn inject(&mut self, from: SocketAddr, to: usize, data: Vec<u8>) {
        self.seq += 1;
        self.in_flight
            .push(Reverse((self.now, self.seq, to, from, data)));
    }

    fn flush(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some(t) = self.nodes[i].1.poll_transmit() {
                let from = self.nodes[i].0;
                let Some(to) = self.nodes.iter().position(|(a, _)| *a == t.peer) else {
                    continue;
                };
                if self.down[i] || self.down[to] {
                    self.lost += 1;
                    continue;
                }
                let copies = if self.rand() < self.impairment.duplicate {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    if self.rand() < self.impairment.loss {
                        self.lost += 1;
                        continue;
                    }
                    let span = self
                        .impairment
                        .max_delay
                        .saturating_sub(self.impairment.min_delay);
                    let delay = self.impairment.min_delay + span.mul_f64(self.rand());
                    self.seq += 1;
                    self.in_flight.push(Reverse((
                        self.now + delay,
                        self.seq,
                        to,
                        from,
                        t.data.clone(),
                    )));
                }
            }
        }
    }

    /// Advance to the next delivery or timer and process it, handing every event to
    /// `handler`. Returns false when nothing is left to do.
    pub fn step(&mut self, handler: &mut dyn FnMut(&mut Endpoint, usize, Instant, Event)) -> bool {
        self.step_until(None, handler)
    }

    /// Like [`SimNet::step`], but virtual time goes no further than `limit`: with
    /// nothing due before it, the clock moves to `limit` (where an application's own
    /// timer is due) and the step returns true.
    pub fn step_until(
        &mut self,
        limit: Option<Instant>,
        handler: &mut dyn FnMut(&mut Endpoint, usize, Instant, Event),
    ) -> bool {
        self.drain(handler);
        self.flush();
        let next_delivery = self.in_flight.peek().map(|Reverse((t, ..))| *t);
        let next_timer = self
            .nodes
            .iter()
            .filter_map(|(_, e)| e.poll_timeout())
            .min();
        let Some(t) = [next_delivery, next_timer].into_iter().flatten().min() else {
            if let Some(l) = limit {
                self.now = self.now.max(l);
                return true;
            }
            return false;
        };
        if let Some(l) = limit.filter(|l| *l < t) {
            self.now = self.now.max(l);
            return true;
        }
        self.now = self.now.max(t);
        while let Some(Reverse((t, ..))) = self.in_flight.peek() {
            if *t > self.now {
                break;
            }
            let Some(Reverse((_, _, to, from, data))) = self.in_flight.pop() else {
                break;
            };
            if self.down[to] {
                self.lost += 1;
                continue;
            }
            self.delivered += 1;
            let now = self.now;
            self.nodes[to].1.handle_datagram(now, from, &data);
        }
        let now = self.now;
        for (_, e) in &mut self.nodes {
            if e.poll_timeout().is_some_and(|t| t <= now) {
                e.handle_timeout(now);
            }
        }
        self.drain(handler);
        self.flush();
        true
    }

    fn drain(&mut self, handler: &mut dyn FnMut(&mut Endpoint, usize, Instant, Event)) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            while let Some(ev) = self.nodes[i].1.poll_event() {
                handler(&mut self.nodes[i].1, i, now, ev);
            }
        }
    }

    /// Step until `done` holds or virtual time passes `limit`; returns whether `done` held.
    pub fn run_until(
        &mut self,
        limit: Duration,
        handler: &mut dyn FnMut(&mut Endpoint, usize, Instant, Event),
        done: &mut dyn FnMut() -> bool,
    ) -> bool {
        let end = self.now + limit;
        while !done() {
            if self.now > end || !self.step(handler) {
                return done();
            }
        }
        true
    }
}
