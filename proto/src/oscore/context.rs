//! Security contexts (RFC 8613 §3): key derivation and sequence-number persistence.

use super::{OscoreError, ReplayWindow};
use hkdf::Hkdf;
use sha2::Sha256;
use std::io;
use std::path::{Path, PathBuf};

/// COSE algorithm id of AES-CCM-16-64-128.
pub(crate) const ALG_AES_CCM_16_64_128: i64 = 10;
/// Key length of that algorithm.
pub(crate) const KEY_LEN: usize = 16;
/// Nonce length of that algorithm.
pub(crate) const NONCE_LEN: usize = 13;
/// Largest sender/recipient id for this nonce length (RFC 8613 §3.3).
pub const MAX_ID_LEN: usize = NONCE_LEN - 6;
/// Sequence numbers reserved per persistence write (RFC 8613 Appendix B.1.1's K).
const SEQ_RESERVE: u64 = 256;
/// Sequence numbers are 40 bits (a 5-byte Partial IV).
const SEQ_LIMIT: u64 = 1 << 40;

/// Input to a context derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextParams {
    /// The master secret.
    pub master_secret: Vec<u8>,
    /// The master salt (may be empty).
    pub master_salt: Vec<u8>,
    /// Our sender id.
    pub sender_id: Vec<u8>,
    /// The peer's sender id.
    pub recipient_id: Vec<u8>,
    /// The id context, if any (sent as "kid context" in requests).
    pub id_context: Option<Vec<u8>>,
}

impl ContextParams {
    /// The upper tier's side of a lower-tier peer's key of `generation` (worker at its
    /// cluster, cluster at its root): its sender id [`crate::util::peer_kid`], ours
    /// empty.
    pub fn for_peer(id: u32, generation: u32, secret: &[u8], salt: &[u8]) -> Self {
        Self {
            master_secret: secret.to_vec(),
            master_salt: salt.to_vec(),
            sender_id: Vec::new(),
            recipient_id: crate::util::peer_kid(id, generation),
            id_context: None,
        }
    }
}

impl From<crate::msg::Credentials> for ContextParams {
    /// The receiver's side of credentials handed out at a join: its sender and
    /// recipient ids as given.
    fn from(c: crate::msg::Credentials) -> Self {
        Self {
            master_secret: c.master_secret,
            master_salt: c.master_salt,
            sender_id: c.sender_id,
            recipient_id: c.recipient_id,
            id_context: None,
        }
    }
}

/// What survives a restart of a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistedState {
    /// The sender sequence number a restarted context starts at.
    pub seq_ceiling: u64,
    /// Whether the replay window was ever used (then it restarts uninitialized).
    pub window_used: bool,
}

/// Where a context keeps its [`PersistedState`].
pub trait ContextStore: Send + std::fmt::Debug {
    /// The state saved last, or `None` for a context never used.
    fn load(&mut self) -> io::Result<Option<PersistedState>>;
    /// Save durably; only after this returns may the sequence numbers be used.
    fn save(&mut self, state: &PersistedState) -> io::Result<()>;
}

/// A store that forgets on restart (tests, and the one-shot join contexts).
#[derive(Debug, Default, Clone)]
pub struct MemoryContextStore(pub Option<PersistedState>);

impl ContextStore for MemoryContextStore {
    fn load(&mut self) -> io::Result<Option<PersistedState>> {
        Ok(self.0)
    }
    fn save(&mut self, state: &PersistedState) -> io::Result<()> {
        self.0 = Some(*state);
        Ok(())
    }
}

/// A store in a small text file, replaced atomically (write, fsync, rename).
#[derive(Debug, Clone)]
pub struct FileContextStore {
    path: PathBuf,
}

impl FileContextStore {
    /// Keep the state in `path`.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
        }
    }
}

impl ContextStore for FileContextStore {
    fn load(&mut self) -> io::Result<Option<PersistedState>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut seq = None;
        let mut used = None;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("seq_ceiling", v)) => seq = v.trim().parse().ok(),
                Some(("window_used", v)) => used = v.trim().parse().ok(),
                _ => {}
            }
        }
        match (seq, used) {
            (Some(seq_ceiling), Some(window_used)) => Ok(Some(PersistedState {
                seq_ceiling,
                window_used,
            })),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not an OSCORE sequence state file", self.path.display()),
            )),
        }
    }

    fn save(&mut self, state: &PersistedState) -> io::Result<()> {
        use std::io::Write;
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            write!(
                f,
                "seq_ceiling={}\nwindow_used={}\n",
                state.seq_ceiling, state.window_used
            )?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            // Make the rename itself durable; a failure here is not fatal on every fs.
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

/// One end of an OSCORE association: derived keys, sequence numbers, replay window.
#[derive(Debug)]
pub struct SecurityContext {
    sender_id: Vec<u8>,
    recipient_id: Vec<u8>,
    id_context: Option<Vec<u8>>,
    pub(crate) sender_key: [u8; KEY_LEN],
    pub(crate) recipient_key: [u8; KEY_LEN],
    pub(crate) common_iv: [u8; NONCE_LEN],
    next_seq: u64,
    state: PersistedState,
    pub(crate) replay: ReplayWindow,
    pub(crate) echo: Option<[u8; 8]>,
    store: Box<dyn ContextStore>,
}

fn hkdf_info(id: &[u8], id_context: Option<&[u8]>, kind: &str, len: usize) -> Vec<u8> {
    let mut e = minicbor::Encoder::new(Vec::new());
    // Writing to a Vec is infallible; the results are ignored on purpose.
    let _ = e.array(5).and_then(|e| e.bytes(id));
    let _ = match id_context {
        Some(c) => e.bytes(c),
        None => e.null(),
    };
    let _ = e
        .i64(ALG_AES_CCM_16_64_128)
        .and_then(|e| e.str(kind))
        .and_then(|e| e.u64(len as u64));
    e.into_writer()
}

fn derive<const N: usize>(p: &ContextParams, id: &[u8], kind: &str) -> [u8; N] {
    let hk = Hkdf::<Sha256>::new(Some(&p.master_salt), &p.master_secret);
    let mut out = [0u8; N];
    // N is 13 or 16, far below HKDF's 255*32 limit.
    let _ = hk.expand(&hkdf_info(id, p.id_context.as_deref(), kind, N), &mut out);
    out
}

impl SecurityContext {
    /// Derive a context whose state is kept in `store`.
    pub fn new(params: &ContextParams, mut store: Box<dyn ContextStore>) -> io::Result<Self> {
        for (what, id) in [
            ("sender", &params.sender_id),
            ("recipient", &params.recipient_id),
        ] {
            if id.len() > MAX_ID_LEN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "OSCORE {what} id is {} bytes; at most {MAX_ID_LEN}",
                        id.len()
                    ),
                ));
            }
        }
        let loaded = store.load()?;
        let (next_seq, state, replay) = match loaded {
            None => (
                0,
                PersistedState {
                    seq_ceiling: 0,
                    window_used: false,
                },
                ReplayWindow::empty(),
            ),
            Some(s) if s.window_used => (s.seq_ceiling, s, ReplayWindow::uninitialized()),
            Some(s) => (s.seq_ceiling, s, ReplayWindow::empty()),
        };
        let echo = if replay.is_initialized() {
            None
        } else {
            Some(random_bytes())
        };
        Ok(Self {
            sender_key: derive(params, &params.sender_id, "Key"),
            recipient_key: derive(params, &params.recipient_id, "Key"),
            common_iv: derive(params, &[], "IV"),
            sender_id: params.sender_id.clone(),
            recipient_id: params.recipient_id.clone(),
            id_context: params.id_context.clone(),
            next_seq,
            state,
            replay,
            echo,
            store,
        })
    }

    /// Derive a context kept only in memory.
    pub fn in_memory(params: &ContextParams) -> Self {
        // A memory store cannot fail and the ids are checked by the callers' tests;
        // fall back to an empty-id context rather than panic on absurd input.
        Self::new(params, Box::new(MemoryContextStore::default())).unwrap_or_else(|_| {
            let mut p = params.clone();
            p.sender_id.truncate(MAX_ID_LEN);
            p.recipient_id.truncate(MAX_ID_LEN);
            Self::new(&p, Box::new(MemoryContextStore::default()))
                .unwrap_or_else(|_| unreachable!("memory store never fails"))
        })
    }

    /// Our sender id.
    pub fn sender_id(&self) -> &[u8] {
        &self.sender_id
    }
    /// The peer's sender id.
    pub fn recipient_id(&self) -> &[u8] {
        &self.recipient_id
    }
    /// The id context.
    pub fn id_context(&self) -> Option<&[u8]> {
        self.id_context.as_deref()
    }
    /// The next sender sequence number that will be used.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Take a sender sequence number, persisting a new ceiling first when needed.
    pub(crate) fn take_seq(&mut self) -> Result<u64, OscoreError> {
        if self.next_seq >= SEQ_LIMIT {
            return Err(OscoreError::SequenceExhausted);
        }
        if self.next_seq >= self.state.seq_ceiling {
            let mut s = self.state;
            s.seq_ceiling = (self.next_seq + SEQ_RESERVE).min(SEQ_LIMIT);
            self.store
                .save(&s)
                .map_err(|e| OscoreError::Persist(e.to_string()))?;
            self.state = s;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Record that the replay window now holds state a restart would lose.
    pub(crate) fn note_window_used(&mut self) {
        if !self.state.window_used {
            let mut s = self.state;
            s.window_used = true;
            // If this write fails the worst case is a window that restarts empty
            // instead of uninitialized; log-worthy but not a reason to drop the message.
            if self.store.save(&s).is_ok() {
                self.state = s;
            }
        }
    }
}

/// 8 random bytes from the OS (Echo values, nonces of join attempts).
pub(crate) fn random_bytes() -> [u8; 8] {
    let mut b = [0u8; 8];
    // getrandom only fails without an OS RNG; a zero value is still unique per use
    // of the context's sequence numbers, so no panic here.
    let _ = getrandom::getrandom(&mut b);
    b
}

/// The context a joining peer and the upper tier derive from a join token.
///
/// `token_id` and `secret` come from the token; `attempt` is a fresh random value per
/// join attempt (sent in the kid context), so that each attempt has fresh keys and
/// neither side needs to persist sequence numbers for a token.
pub fn join_context(token_id: &[u8], secret: &[u8], attempt: &[u8], joiner: bool) -> ContextParams {
    let mut id_context = token_id.to_vec();
    id_context.extend_from_slice(attempt);
    let (me, peer) = if joiner {
        (vec![1], vec![0])
    } else {
        (vec![0], vec![1])
    };
    ContextParams {
        master_secret: secret.to_vec(),
        master_salt: b"grove-join-v1".to_vec(),
        sender_id: me,
        recipient_id: peer,
        id_context: Some(id_context),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn derivation_matches_rfc8613_appendix_c1_1() {
        let p = ContextParams {
            master_secret: hex("0102030405060708090a0b0c0d0e0f10"),
            master_salt: hex("9e7ca92223786340"),
            sender_id: vec![],
            recipient_id: vec![1],
            id_context: None,
        };
        let c = SecurityContext::in_memory(&p);
        assert_eq!(
            c.sender_key.to_vec(),
            hex("f0910ed7295e6ad4b54fc793154302ff")
        );
        assert_eq!(
            c.recipient_key.to_vec(),
            hex("ffb14e093c94c9cac9471648b4f98710")
        );
        assert_eq!(c.common_iv.to_vec(), hex("4622d4dd6d944168eefb54987c"));
    }

    #[test]
    fn sequence_numbers_never_repeat_across_a_restart() {
        let dir = std::env::temp_dir().join(format!("grove-seq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctx.seq");
        let _ = std::fs::remove_file(&path);
        let p = join_context(b"tok", b"secret", b"n", true);
        let mut used = std::collections::HashSet::new();
        for _restart in 0..3 {
            let mut c = SecurityContext::new(&p, Box::new(FileContextStore::new(&path))).unwrap();
            for _ in 0..300 {
                assert!(used.insert(c.take_seq().unwrap()), "sequence number reused");
            }
            // Simulated crash: the context is dropped without any shutdown step.
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_restarted_recipient_that_had_received_needs_echo() {
        let mut store = MemoryContextStore::default();
        let p = join_context(b"tok", b"secret", b"n", false);
        let mut c = SecurityContext::new(&p, Box::new(store.clone())).unwrap();
        assert!(c.replay.is_initialized());
        c.note_window_used();
        store.0 = Some(PersistedState {
            seq_ceiling: 0,
            window_used: true,
        });
        let c2 = SecurityContext::new(&p, Box::new(store)).unwrap();
        assert!(!c2.replay.is_initialized());
        assert!(c2.echo.is_some());
    }

    #[test]
    fn overlong_ids_are_refused_by_name() {
        let mut p = join_context(b"t", b"s", b"n", true);
        p.sender_id = vec![0; 8];
        let err = SecurityContext::new(&p, Box::new(MemoryContextStore::default())).unwrap_err();
        assert!(err.to_string().contains("sender id"), "{err}");
    }
}
