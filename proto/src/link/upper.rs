//! The upper half of the tier link: what the root holds of its clusters and a cluster
//! of its workers.
//!
//! **Keys over time.** A peer joins under a join token and gets a key of generation 0.
//! Asked to re-key (by an operator), the upper tier says so in its answers to the
//! peer's heartbeats; the peer asks under its current key and gets the next one, which
//! is stored as pending before it is handed out. Both keys work side by side (the new
//! one under sender id [`peer_kid`](crate::util::peer_kid)`(id, generation)`) until the
//! peer speaks with the new one: then it is committed in the store and the old one
//! stops working. Either side killed at any moment resumes with a key the other
//! accepts. An evicted peer's keys stop working at once; it can come back only with a
//! new token.
//!
//! **Status changes once.** A lower tier numbers its status changes
//! ([`ChangeMark`]); the upper tier takes each number once, so a batch sent again after
//! a lost acknowledgement is not applied twice.

use super::{PeerKey, Random, StoreError};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Where the upper tier keeps its peers' keys.
pub trait KeyStore {
    /// What goes wrong in the store engine.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Hand out `peer`'s next key: `candidate` (fresh random bytes) becomes the pending
    /// key unless one is pending already, which is then handed out again. Returns the
    /// pending key and whether it is new.
    fn begin_rekey(
        &mut self,
        peer: u32,
        candidate: &PeerKey,
    ) -> Result<(PeerKey, bool), Self::Error>;
    /// `peer` spoke with its pending key of `generation`: it becomes the current one.
    /// Returns whether it was pending.
    fn commit_rekey(&mut self, peer: u32, generation: u32) -> Result<bool, Self::Error>;
}

/// A peer as the store holds it, to load at start.
#[derive(Debug, Clone)]
pub struct StoredPeer {
    /// Its id.
    pub id: u32,
    /// The key in use.
    pub current: PeerKey,
    /// A key handed out and not yet used.
    pub pending: Option<PeerKey>,
    /// Whether an operator asked for a new key.
    pub rekey_asked: bool,
}

/// What the endpoint must change; the shell applies these in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAction {
    /// Accept `peer` under `key`. `fresh`: a key never used, whose sequence numbers
    /// start anew (any file of an earlier one of that generation is stale).
    AddContext {
        /// The peer.
        peer: u32,
        /// Its key.
        key: PeerKey,
        /// Whether the key is new.
        fresh: bool,
    },
    /// Stop accepting `peer`'s key of `generation` and forget its sequence numbers.
    RemoveContext {
        /// The peer.
        peer: u32,
        /// The key's generation.
        generation: u32,
    },
    /// Accept joins under a token.
    AddToken {
        /// The token's id.
        id: Vec<u8>,
        /// Its secret.
        secret: Vec<u8>,
    },
    /// Stop accepting joins under a token.
    RemoveToken {
        /// The token's id.
        id: Vec<u8>,
    },
}

/// What a request of a peer told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heard {
    /// It had been lost (silent past the loss timeout) and speaks again.
    pub came_back: bool,
    /// It speaks from another address than before (or for the first time).
    pub moved: bool,
    /// It spoke with its pending key, which is now its key of this generation.
    pub rekeyed: Option<u32>,
}

/// The number of the first status change of a batch: a lower tier's run (random at
/// each start) and the change's place in that run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeMark {
    /// The lower tier's run.
    pub run: u32,
    /// The first change's number in the run.
    pub first: u32,
}

impl ChangeMark {
    /// As it travels (`changes_from` of heartbeats and reports).
    pub fn to_wire(self) -> u64 {
        (u64::from(self.run) << 32) | u64::from(self.first)
    }

    /// From the wire.
    pub fn from_wire(v: u64) -> Self {
        Self {
            run: u32::try_from(v >> 32).unwrap_or(0),
            first: u32::try_from(v & 0xFFFF_FFFF).unwrap_or(0),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Peer {
    current: u32,
    pending: Option<u32>,
    asked: bool,
    addr: Option<SocketAddr>,
    heard: Option<Instant>,
    lost: bool,
    /// The run and the last change number taken.
    taken: Option<(u32, u32)>,
}

/// The upper half of the link.
#[derive(Debug, Default)]
pub struct Upper {
    peers: HashMap<u32, Peer>,
    tokens: HashSet<Vec<u8>>,
    actions: VecDeque<KeyAction>,
}

impl Upper {
    /// No peers, no tokens.
    pub fn new() -> Self {
        Self::default()
    }

    /// The peers the store holds (at start): each key they may speak with is accepted.
    pub fn load(&mut self, peers: impl IntoIterator<Item = StoredPeer>) {
        for p in peers {
            self.actions.push_back(KeyAction::AddContext {
                peer: p.id,
                key: p.current.clone(),
                fresh: false,
            });
            if let Some(next) = &p.pending {
                self.actions.push_back(KeyAction::AddContext {
                    peer: p.id,
                    key: next.clone(),
                    fresh: false,
                });
            }
            self.peers.insert(
                p.id,
                Peer {
                    current: p.current.generation,
                    pending: p.pending.map(|k| k.generation),
                    asked: p.rekey_asked,
                    ..Peer::default()
                },
            );
        }
    }

    /// The join tokens that are live now (made, not expired, not revoked, not used up):
    /// new ones are accepted, the others no longer.
    pub fn sync_tokens(&mut self, live: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) {
        let mut now = HashSet::new();
        for (id, secret) in live {
            if self.tokens.insert(id.clone()) {
                self.actions.push_back(KeyAction::AddToken {
                    id: id.clone(),
                    secret,
                });
            }
            now.insert(id);
        }
        let gone: Vec<Vec<u8>> = self.tokens.difference(&now).cloned().collect();
        for id in gone {
            self.tokens.remove(&id);
            self.actions.push_back(KeyAction::RemoveToken { id });
        }
    }

    /// Whether joins under the token `id` are accepted.
    pub fn accepts_token(&self, id: &[u8]) -> bool {
        self.tokens.contains(id)
    }

    /// Peer `id` joined (or joined again with a new token) under `key` (generation 0):
    /// whatever keys it had before are gone.
    pub fn joined(&mut self, now: Instant, id: u32, key: &PeerKey, addr: SocketAddr) {
        let before = self.peers.insert(
            id,
            Peer {
                current: key.generation,
                addr: Some(addr),
                heard: Some(now),
                ..Peer::default()
            },
        );
        for g in before
            .into_iter()
            .flat_map(|p| std::iter::once(p.current).chain(p.pending))
            .filter(|g| *g != key.generation)
        {
            self.actions.push_back(KeyAction::RemoveContext {
                peer: id,
                generation: g,
            });
        }
        self.actions.push_back(KeyAction::AddContext {
            peer: id,
            key: key.clone(),
            fresh: true,
        });
    }

    /// A request of peer `id` under its key of `generation` came from `addr`: it is
    /// alive, and when it spoke with its pending key that key is now its key (committed
    /// in the store first) and the old one is removed.
    pub fn heard(
        &mut self,
        now: Instant,
        id: u32,
        generation: u32,
        addr: SocketAddr,
        store: &mut impl KeyStore,
    ) -> Result<Heard, StoreError> {
        let p = self.peers.entry(id).or_insert_with(|| Peer {
            current: generation,
            ..Peer::default()
        });
        let heard = Heard {
            came_back: p.lost,
            moved: p.addr != Some(addr),
            rekeyed: None,
        };
        p.lost = false;
        p.addr = Some(addr);
        p.heard = Some(now);
        if p.pending != Some(generation)
            || !store
                .commit_rekey(id, generation)
                .map_err(StoreError::new)?
        {
            return Ok(heard);
        }
        let old = p.current;
        p.current = generation;
        p.pending = None;
        p.asked = false;
        self.actions.push_back(KeyAction::RemoveContext {
            peer: id,
            generation: old,
        });
        Ok(Heard {
            rekeyed: Some(generation),
            ..heard
        })
    }

    /// Peer `id` asks for its next key (under its current one): the pending key,
    /// stored before it is handed out; the same one again if the peer asks again
    /// before it used it (its answer may have been lost).
    pub fn rekey(
        &mut self,
        id: u32,
        store: &mut impl KeyStore,
        rng: &mut dyn Random,
    ) -> Result<crate::msg::Credentials, StoreError> {
        let current = self.peers.get(&id).map_or(0, |p| p.current);
        let candidate = PeerKey::fresh(current + 1, rng);
        let (key, fresh) = store.begin_rekey(id, &candidate).map_err(StoreError::new)?;
        let p = self.peers.entry(id).or_default();
        // A context is made for a new key, and for one handed out before whose
        // context is not there (made in a run that ended before it was used).
        if fresh || p.pending != Some(key.generation) {
            p.pending = Some(key.generation);
            self.actions.push_back(KeyAction::AddContext {
                peer: id,
                key: key.clone(),
                fresh,
            });
        }
        Ok(key.credentials(id))
    }

    /// An operator asked for a new key for `id`: the answers to its heartbeats say so
    /// until it speaks with one.
    pub fn ask_rekey(&mut self, id: u32) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.asked = true;
        }
    }

    /// Whether the answers to `id`'s heartbeats ask for a new key.
    pub fn rekey_asked(&self, id: u32) -> bool {
        self.peers.get(&id).is_some_and(|p| p.asked)
    }

    /// Evict `id`: every key of it stops working now. Returns whether it was known.
    pub fn evict(&mut self, id: u32) -> bool {
        let Some(p) = self.peers.remove(&id) else {
            return false;
        };
        for g in std::iter::once(p.current).chain(p.pending) {
            self.actions.push_back(KeyAction::RemoveContext {
                peer: id,
                generation: g,
            });
        }
        true
    }

    /// The generation of `id`'s key in use.
    pub fn generation(&self, id: u32) -> Option<u32> {
        self.peers.get(&id).map(|p| p.current)
    }

    /// Where `id`'s requests last came from: where the upper tier asks it.
    pub fn addr(&self, id: u32) -> Option<SocketAddr> {
        self.peers.get(&id).and_then(|p| p.addr)
    }

    /// Peers silent for `after` (counted from `since` for those never heard since the
    /// start) that were not lost yet: they are lost now.
    pub fn sweep(&mut self, now: Instant, since: Instant, after: Duration) -> Vec<u32> {
        let mut lost: Vec<u32> = self
            .peers
            .iter_mut()
            .filter(|(_, p)| !p.lost && now.duration_since(p.heard.unwrap_or(since)) >= after)
            .map(|(id, p)| {
                p.lost = true;
                *id
            })
            .collect();
        lost.sort_unstable();
        lost
    }

    /// Whether `id` is lost.
    pub fn is_lost(&self, id: u32) -> bool {
        self.peers.get(&id).is_some_and(|p| p.lost)
    }

    /// A batch of `count` status changes of `id` numbered from `mark`: how many of its
    /// first ones were taken before (to skip). The rest are taken now.
    pub fn take_changes(&mut self, id: u32, mark: Option<ChangeMark>, count: usize) -> usize {
        let (Some(mark), Some(p)) = (mark, self.peers.get_mut(&id)) else {
            return 0;
        };
        let Some(last) = u32::try_from(count)
            .ok()
            .and_then(|c| c.checked_sub(1))
            .map(|c| mark.first.wrapping_add(c))
        else {
            return 0;
        };
        let skip = match p.taken {
            // Numbers up to `through` were taken; the batch may overlap them (compared
            // on the circle of u32, as numbers wrap).
            Some((run, through)) if run == mark.run => {
                let ahead = through.wrapping_sub(mark.first);
                if ahead < 0x8000_0000 {
                    usize::try_from(ahead).map_or(count, |a| a.saturating_add(1).min(count))
                } else {
                    0
                }
            }
            _ => 0,
        };
        if skip < count {
            p.taken = Some((mark.run, last));
        }
        skip
    }

    /// Every pending change to apply, in order.
    pub fn drain_actions(&mut self) -> Vec<KeyAction> {
        self.actions.drain(..).collect()
    }
}
