//! The lower half of the tier link: what a worker does toward its cluster and a
//! cluster toward its root.
//!
//! It decides, with `now` as an input, when to join, when to (re-)observe the command
//! resource, when to heartbeat, when to send queued status changes and when to ask
//! for a new key; the shell carries out each [`Do`] as an exchange and hands its
//! outcome back. While the upper tier is away, observation attempts back off
//! (200 ms doubling to 5 s) and status changes stay queued, in order, until an
//! answer acknowledges them: each is dropped exactly once, when acknowledged.

use super::Random;
use super::upper::ChangeMark;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Timing of the lower half.
#[derive(Debug, Clone, Copy)]
pub struct LowerConfig {
    /// How often a heartbeat (report) goes up.
    pub heartbeat: Duration,
    /// How often the observation is renewed (an upper tier that restarted forgot its
    /// observers). Where heartbeat answers name the command set last given, a lost
    /// observation shows within seconds and this renewal is only every
    /// `backstop_every`-th.
    pub refresh: Duration,
    /// See `refresh`.
    pub backstop_every: u32,
    /// First wait after a failed exchange; it doubles up to `retry_max`.
    pub retry_min: Duration,
    /// Longest wait between attempts.
    pub retry_max: Duration,
    /// Wait after the upper tier refused an observation.
    pub refused_wait: Duration,
    /// How long a join token the upper tier does not know is tried again (a token
    /// made a moment ago, an upper tier starting).
    pub token_patience: Duration,
}

impl Default for LowerConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(2),
            refresh: Duration::from_secs(20),
            backstop_every: 15,
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(5),
            refused_wait: Duration::from_secs(5),
            token_patience: Duration::from_secs(20),
        }
    }
}

/// An exchange for the shell to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Do<C> {
    /// Register under the join token.
    Join,
    /// Observe the command resource afresh (dropping any observation held).
    Observe,
    /// Send a heartbeat (non-confirmable) numbered `seq`.
    Heartbeat {
        /// Its number.
        seq: u32,
    },
    /// Send these status changes (confirmable), numbered from `mark`.
    Report {
        /// The first change's number.
        mark: ChangeMark,
        /// The changes, oldest first.
        changes: Vec<C>,
    },
    /// Ask for a new key under the current one.
    AskKey,
}

/// How a join attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Registered; the shell stored the credentials.
    Joined,
    /// No answer.
    Unreachable,
    /// The upper tier asks to be asked again (5.03: it is not ready for joins).
    NotReady,
    /// The upper tier does not know the token (4.01).
    UnknownToken,
    /// Refused for good (the token is used, expired or revoked; another version).
    Refused,
}

/// How an observation attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObserveOutcome {
    /// Observing; the first command set came with it.
    Observed,
    /// The upper tier answered with an error.
    Refused,
    /// No answer.
    Unreachable,
}

/// What an answer to a heartbeat said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// When the heartbeat was sent.
    pub sent: Instant,
    /// The command set the upper tier last gave this peer, where its answers say so:
    /// `Some(None)`: it holds no observation of this peer; `None`: not said.
    pub given: Option<Option<u64>>,
    /// The upper tier asks for a new key.
    pub rekey: bool,
}

/// Why the lower half gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LowerError {
    /// The upper tier refused the join for good.
    #[error(
        "the upper tier refused the join (token used, expired or revoked, or another protocol version)"
    )]
    JoinRefused,
    /// The upper tier did not learn the join token within the patience.
    #[error(
        "the upper tier does not know this join token (expired, revoked, or made by another upper tier)"
    )]
    UnknownToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observation {
    /// None held; the next attempt at this time.
    Idle(Instant),
    /// An attempt is on its way.
    Asking,
    /// Observing since.
    Active(Instant),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not joined: the next attempt at this time (`None`: one is on its way).
    Joining {
        next: Option<Instant>,
        since: Instant,
    },
    Linked,
}

/// The lower half of the link; `C` is the tier's status change.
#[derive(Debug)]
pub struct Lower<C> {
    cfg: LowerConfig,
    phase: Phase,
    observation: Observation,
    failures: u32,
    /// The command set last taken.
    generation: Option<u64>,
    /// Heartbeat answers in a row that name a set this peer does not hold.
    behind: u32,
    /// Whether heartbeat answers name the set given.
    told: bool,
    refreshes: u32,
    next_refresh: Instant,
    next_heartbeat: Instant,
    seq: u32,
    run: u32,
    /// The number of `queue[0]`.
    first: u32,
    queue: VecDeque<C>,
    /// Changes on their way, and when the next report may go.
    in_flight: Option<usize>,
    report_at: Instant,
    report_failures: u32,
    asking_key: bool,
    key_wanted: bool,
}

impl<C: Clone> Lower<C> {
    /// A lower half that holds credentials from an earlier join (`joined`) or must
    /// join first. Its status changes are numbered in a run drawn from `rng`.
    pub fn new(cfg: LowerConfig, now: Instant, joined: bool, rng: &mut dyn Random) -> Self {
        Self {
            cfg,
            phase: if joined {
                Phase::Linked
            } else {
                Phase::Joining {
                    next: Some(now),
                    since: now,
                }
            },
            observation: Observation::Idle(now),
            failures: 0,
            generation: None,
            behind: 0,
            told: false,
            refreshes: 0,
            next_refresh: now + cfg.refresh,
            next_heartbeat: now,
            seq: 0,
            run: u32::from_le_bytes(super::random::<4>(rng)),
            first: 1,
            queue: VecDeque::new(),
            in_flight: None,
            report_at: now,
            report_failures: 0,
            asking_key: false,
            key_wanted: false,
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        self.cfg
            .retry_min
            .saturating_mul(1 << failures.min(16))
            .min(self.cfg.retry_max)
    }

    /// Whether the peer holds credentials.
    pub fn is_joined(&self) -> bool {
        self.phase == Phase::Linked
    }

    /// Whether an observation is held.
    pub fn is_observing(&self) -> bool {
        matches!(self.observation, Observation::Active(_))
    }

    /// The command set last taken.
    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// Status changes not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.queue.len()
    }

    /// The next exchange to start now, if any.
    pub fn poll(&mut self, now: Instant) -> Option<Do<C>> {
        if let Phase::Joining { next, since } = self.phase {
            if next.is_some_and(|t| t <= now) {
                self.phase = Phase::Joining { next: None, since };
                return Some(Do::Join);
            }
            return None;
        }
        if now >= self.next_refresh {
            self.refreshes += 1;
            self.next_refresh = now + self.cfg.refresh;
            // With heartbeat answers naming the set, a lost observation shows within
            // seconds; the renewal is only a backstop then.
            if matches!(self.observation, Observation::Active(_))
                && (!self.told || self.refreshes % self.cfg.backstop_every.max(1) == 0)
            {
                self.observation = Observation::Idle(now);
            }
        }
        if matches!(self.observation, Observation::Idle(t) if t <= now) {
            self.observation = Observation::Asking;
            return Some(Do::Observe);
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.cfg.heartbeat;
            self.seq = self.seq.wrapping_add(1);
            return Some(Do::Heartbeat { seq: self.seq });
        }
        if self.key_wanted && !self.asking_key {
            self.key_wanted = false;
            self.asking_key = true;
            return Some(Do::AskKey);
        }
        if self.in_flight.is_none() && !self.queue.is_empty() && now >= self.report_at {
            self.in_flight = Some(self.queue.len());
            return Some(Do::Report {
                mark: ChangeMark {
                    run: self.run,
                    first: self.first,
                },
                changes: self.queue.iter().cloned().collect(),
            });
        }
        None
    }

    /// When [`Lower::poll`] has something next (changes queued report at once).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Joining { next, .. } => next,
            Phase::Linked => {
                let observe = match self.observation {
                    Observation::Idle(t) => Some(t),
                    _ => None,
                };
                let report =
                    (self.in_flight.is_none() && !self.queue.is_empty()).then_some(self.report_at);
                [
                    Some(self.next_heartbeat),
                    Some(self.next_refresh),
                    observe,
                    report,
                ]
                .into_iter()
                .flatten()
                .min()
            }
        }
    }

    /// A join attempt ended.
    pub fn join_answered(&mut self, now: Instant, outcome: JoinOutcome) -> Result<(), LowerError> {
        let Phase::Joining { since, .. } = self.phase else {
            return Ok(());
        };
        let retry = |s: &mut Self| {
            let wait = s.backoff(s.failures);
            s.failures += 1;
            s.phase = Phase::Joining {
                next: Some(now + wait),
                since,
            };
        };
        match outcome {
            JoinOutcome::Joined => {
                self.failures = 0;
                self.phase = Phase::Linked;
                self.observation = Observation::Idle(now);
                self.next_heartbeat = now;
                Ok(())
            }
            JoinOutcome::Unreachable | JoinOutcome::NotReady => {
                retry(self);
                Ok(())
            }
            JoinOutcome::UnknownToken if now.duration_since(since) < self.cfg.token_patience => {
                retry(self);
                Ok(())
            }
            JoinOutcome::UnknownToken => Err(LowerError::UnknownToken),
            JoinOutcome::Refused => Err(LowerError::JoinRefused),
        }
    }

    /// An observation attempt ended.
    pub fn observe_answered(&mut self, now: Instant, outcome: ObserveOutcome) {
        self.observation = match outcome {
            ObserveOutcome::Observed => {
                self.failures = 0;
                Observation::Active(now)
            }
            ObserveOutcome::Refused => Observation::Idle(now + self.cfg.refused_wait),
            ObserveOutcome::Unreachable => {
                let wait = self.backoff(self.failures);
                self.failures += 1;
                Observation::Idle(now + wait)
            }
        };
    }

    /// A command set of `generation` arrived: whether to take it (an older set that
    /// arrives late, a notification overtaken by a new observation's answer, is not).
    pub fn commands(&mut self, generation: u64) -> bool {
        if self.generation.is_some_and(|g| generation < g) {
            return false;
        }
        self.generation = Some(generation);
        true
    }

    /// The observation ended, or what it brought cannot be followed (a part of a delta
    /// was lost): observe afresh now.
    pub fn reobserve(&mut self, now: Instant) {
        if !matches!(self.observation, Observation::Asking) {
            self.observation = Observation::Idle(now);
        }
    }

    /// A status change to send up; it stays queued until acknowledged.
    pub fn change(&mut self, c: C) {
        self.queue.push_back(c);
    }

    /// The report on its way was answered (`ok`: acknowledged) or failed.
    pub fn report_answered(&mut self, now: Instant, ok: bool) {
        let Some(n) = self.in_flight.take() else {
            return;
        };
        if ok {
            let n = n.min(self.queue.len());
            self.queue.drain(..n);
            self.first = self.first.wrapping_add(u32::try_from(n).unwrap_or(0));
            self.report_failures = 0;
            self.report_at = now;
        } else {
            self.report_at = now + self.backoff(self.report_failures);
            self.report_failures += 1;
        }
    }

    /// A heartbeat was answered.
    pub fn heartbeat_answered(&mut self, now: Instant, answer: HeartbeatAnswer) {
        if answer.rekey {
            self.key_wanted = true;
        }
        let Some(given) = answer.given else {
            return;
        };
        // An answer made before the current observation was answered says nothing of
        // it (the heartbeat and the observation cross at a join).
        let Observation::Active(since) = self.observation else {
            return;
        };
        if answer.sent < since {
            return;
        }
        self.told = true;
        self.behind = if given.is_some() && given == self.generation {
            0
        } else {
            self.behind + 1
        };
        // The upper tier holds no observation of this peer (it restarted), or it gave
        // a set that never arrived (twice in a row: one may be on its way).
        if given.is_none() || self.behind >= 2 {
            self.behind = 0;
            self.observation = Observation::Idle(now);
        }
    }

    /// The key exchange ended; `taken`: the new key is stored and in use (the
    /// observation was made under the old one and is renewed).
    pub fn key_answered(&mut self, now: Instant, taken: bool) {
        self.asking_key = false;
        if taken {
            self.reobserve(now);
        }
    }
}
