//! The tier link, written once: the upper half (root toward its clusters, cluster
//! toward its workers) and the lower half (cluster toward its root, worker toward its
//! cluster), each a sans-IO state machine like the CoAP [`Endpoint`](crate::coap::Endpoint).
//!
//! - [`upper::Upper`] holds each lower peer's keys over time (join, re-key, eviction),
//!   the join tokens the endpoint accepts, where and when each peer was last heard,
//!   which of its status changes were taken already (each one once) and which command
//!   set it was last given. Its outputs are [`upper::KeyAction`]s for the endpoint;
//!   persistence goes through [`upper::KeyStore`], randomness through [`Random`].
//! - [`lower::Lower`] decides when the lower tier joins, observes its commands,
//!   heartbeats, sends its queued status changes (numbered, dropped only when
//!   acknowledged) and asks for a new key, with `now` as an input and back-off while the
//!   upper tier is away.
//! - [`shell`] is the one tokio shell of both halves: contexts with their sequence
//!   files on the driver, and the lower half's exchanges as tasks.
//!
//! Root↔cluster and cluster↔worker are two uses of the same halves; the message bodies
//! (`Heartbeat`/`ClusterReport`, `NodeCommands`/`ClusterCommands`) stay the tier's.
//! `proto/tests/link.rs` runs both halves over [`crate::sim`] in virtual time.

pub mod lower;
pub mod shell;
pub mod upper;

/// A source of random bytes: the operating system's in the daemons, a seeded one in
/// simulations.
pub trait Random {
    /// Fill `buf`.
    fn fill(&mut self, buf: &mut [u8]);
}

/// The operating system's CSPRNG.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        // getrandom fails only where the OS has no entropy source at all; a daemon
        // there could not have made its keys either.
        if getrandom::getrandom(buf).is_err() {
            panic!("the operating system's random source failed");
        }
    }
}

/// A deterministic generator (splitmix64) for simulations. Not for keys.
#[derive(Debug, Clone, Copy)]
pub struct SeededRandom(pub u64);

impl Random for SeededRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// `N` random bytes.
pub fn random<const N: usize>(rng: &mut dyn Random) -> [u8; N] {
    let mut b = [0u8; N];
    rng.fill(&mut b);
    b
}

/// A lower peer's long-term key: what the upper tier stores and hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerKey {
    /// Its generation (0 at a join, one more with each re-key).
    pub generation: u32,
    /// OSCORE master secret.
    pub secret: Vec<u8>,
    /// OSCORE master salt.
    pub salt: Vec<u8>,
}

impl PeerKey {
    /// A fresh key of `generation`: 32 bytes of secret, 8 of salt.
    pub fn fresh(generation: u32, rng: &mut dyn Random) -> Self {
        Self {
            generation,
            secret: random::<32>(rng).to_vec(),
            salt: random::<8>(rng).to_vec(),
        }
    }

    /// The credentials peer `id` gets for this key.
    pub fn credentials(&self, id: u32) -> crate::msg::Credentials {
        crate::msg::Credentials {
            master_secret: self.secret.clone(),
            master_salt: self.salt.clone(),
            sender_id: crate::util::peer_kid(id, self.generation),
            recipient_id: Vec::new(),
        }
    }

    /// The upper tier's context parameters for peer `id` under this key.
    pub fn params(&self, id: u32) -> crate::oscore::ContextParams {
        crate::oscore::ContextParams::for_peer(id, self.generation, &self.secret, &self.salt)
    }
}

/// Why the store could not do what the link asked.
#[derive(Debug, thiserror::Error)]
#[error("the key store failed: {0}")]
pub struct StoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    /// Wrap any error of a store engine.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(e))
    }
}
