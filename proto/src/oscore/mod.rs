//! OSCORE (RFC 8613): security contexts, message protection and the join derivation.
//!
//! The algorithms are fixed to what RFC 8613 mandates: AES-CCM-16-64-128 (COSE alg 10)
//! and HKDF-SHA256. The COSE structures (`Enc_structure`, the external AAD, the HKDF
//! `info`) are three short CBOR arrays, written here with minicbor's encoder rather
//! than pulling in a COSE library.
//!
//! Sequence numbers survive restarts as RFC 8613 Appendix B.1.1 describes: a ceiling is
//! persisted ahead of use, and a restarted sender starts at the persisted ceiling. A
//! recipient whose replay window was in use before a restart starts uninitialized and
//! recovers freshness with the Echo option (RFC 9175), as Appendix B.1.2 allows.

mod context;
pub(crate) mod protect;
mod replay;

pub use context::{
    ContextParams, ContextStore, FileContextStore, MemoryContextStore, PersistedState,
    SecurityContext, join_context,
};
pub use protect::{RequestBinding, compress_option, decompress_option};
pub use replay::ReplayWindow;

/// Why a message could not be protected or unprotected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OscoreError {
    /// The OSCORE option value is malformed.
    #[error("malformed OSCORE option: {0}")]
    BadOption(&'static str),
    /// No security context for this kid / kid context.
    #[error("no security context for kid {0:02x?}")]
    UnknownContext(Vec<u8>),
    /// A request without a Partial IV, or a Partial IV longer than 5 bytes.
    #[error("missing or oversized Partial IV")]
    BadPartialIv,
    /// Authentication tag mismatch: tampered, or wrongly keyed.
    #[error("decryption failed (tampered or wrong key)")]
    DecryptFailed,
    /// The sequence number was seen before (or is older than the window).
    #[error("replayed sequence number {0}")]
    Replay(u64),
    /// The replay window is unknown after a restart; freshness must be proven with Echo.
    #[error("replay window uninitialized; Echo required")]
    EchoRequired([u8; 8]),
    /// The plaintext is not a CoAP message.
    #[error("malformed plaintext: {0}")]
    BadPlaintext(&'static str),
    /// The sender sequence number space is exhausted (2^40).
    #[error("sender sequence numbers exhausted; re-key the context")]
    SequenceExhausted,
    /// Persisting the sender sequence number failed: nothing may be sent.
    #[error("persisting OSCORE sequence number failed: {0}")]
    Persist(String),
}
