//! The recipient's replay window (RFC 8613 §7.4): a sliding bitmap over sequence numbers.

/// A 64-entry sliding window; `None` until initialized (fresh context or Echo recovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    state: Option<(u64, u64)>,
}

impl ReplayWindow {
    /// Width of the window.
    pub const SIZE: u64 = 64;

    /// An empty window for a context that never received anything.
    pub fn empty() -> Self {
        Self {
            state: Some((0, 0)),
        }
    }

    /// A window whose state was lost (restart after use): needs Echo recovery.
    pub fn uninitialized() -> Self {
        Self { state: None }
    }

    /// Whether the window is usable.
    pub fn is_initialized(&self) -> bool {
        self.state.is_some()
    }

    /// Start from a sequence number proven fresh: it and everything below are used.
    pub fn initialize_from_fresh(&mut self, seq: u64) {
        self.state = Some((seq, 1));
    }

    /// Whether `seq` has not been seen and is not too old.
    pub fn is_valid(&self, seq: u64) -> bool {
        match self.state {
            None => false,
            Some((base, bits)) => {
                if seq < base {
                    false
                } else if seq >= base + Self::SIZE {
                    true
                } else {
                    bits >> (seq - base) & 1 == 0
                }
            }
        }
    }

    /// Mark `seq` as used. Call only after `is_valid(seq)` and a successful decryption.
    pub fn mark(&mut self, seq: u64) {
        let Some((mut base, mut bits)) = self.state else {
            return;
        };
        if seq >= base + Self::SIZE {
            let shift = seq - (base + Self::SIZE - 1);
            bits = if shift >= Self::SIZE {
                0
            } else {
                bits >> shift
            };
            base += shift;
        }
        if seq >= base {
            bits |= 1 << (seq - base);
        }
        self.state = Some((base, bits));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_number_is_accepted_once_and_old_ones_fall_out() {
        let mut w = ReplayWindow::empty();
        for s in [0, 1, 5, 3] {
            assert!(w.is_valid(s));
            w.mark(s);
            assert!(!w.is_valid(s));
        }
        assert!(w.is_valid(2));
        w.mark(200);
        assert!(!w.is_valid(2), "too old after the window moved");
        assert!(w.is_valid(199));
        assert!(!w.is_valid(200));
    }

    #[test]
    fn uninitialized_window_accepts_nothing_until_fresh() {
        let mut w = ReplayWindow::uninitialized();
        assert!(!w.is_valid(10));
        w.initialize_from_fresh(10);
        assert!(!w.is_valid(10) && !w.is_valid(9) && w.is_valid(11));
    }
}
