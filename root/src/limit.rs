//! The login rate limit: failed logins drain a bucket per user name and one per
//! client address; while either is empty, logins for it are refused with 429 before
//! any password is checked (so guessing gets no answer, and no argon2 time either).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A bucket's size and how fast it refills.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Failures allowed at once.
    pub burst: u32,
    /// One more failure allowed after this.
    pub every: Duration,
}

/// Per user: 5 failures, then one every 12 s (5 a minute).
pub const PER_USER: Rate = Rate {
    burst: 5,
    every: Duration::from_secs(12),
};
/// Per client address: 20 failures, then one every 3 s.
pub const PER_ADDRESS: Rate = Rate {
    burst: 20,
    every: Duration::from_secs(3),
};
/// Buckets kept per kind before full ones are forgotten (memory stays bounded however
/// many names and addresses are tried).
const MAX_BUCKETS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still allowed, at `at`.
    left: f64,
    at: Instant,
}

#[derive(Debug)]
struct Buckets<K> {
    rate: Rate,
    map: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    fn new(rate: Rate) -> Self {
        Self {
            rate,
            map: HashMap::new(),
        }
    }

    fn level(&self, b: &Bucket, now: Instant) -> f64 {
        let refill =
            now.saturating_duration_since(b.at).as_secs_f64() / self.rate.every.as_secs_f64();
        (b.left + refill).min(f64::from(self.rate.burst))
    }

    /// How long until `k` may try again (zero: now).
    fn wait(&self, k: &K, now: Instant) -> Duration {
        match self.map.get(k) {
            Some(b) if self.level(b, now) < 1.0 => {
                self.rate.every.mul_f64(1.0 - self.level(b, now))
            }
            _ => Duration::ZERO,
        }
    }

    fn fail(&mut self, k: &K, now: Instant) {
        if self.map.len() >= MAX_BUCKETS && !self.map.contains_key(k) {
            let burst = f64::from(self.rate.burst);
            let rate = self.rate;
            self.map.retain(|_, b| {
                let refill =
                    now.saturating_duration_since(b.at).as_secs_f64() / rate.every.as_secs_f64();
                b.left + refill < burst
            });
            if self.map.len() >= MAX_BUCKETS {
                // Still full of draining buckets: forget the one nearest to full.
                if let Some(k) = self
                    .map
                    .iter()
                    .max_by(|a, b| a.1.left.total_cmp(&b.1.left))
                    .map(|(k, _)| k.clone())
                {
                    self.map.remove(&k);
                }
            }
        }
        let left = self
            .map
            .get(k)
            .map_or(f64::from(self.rate.burst), |b| self.level(b, now));
        self.map.insert(
            k.clone(),
            Bucket {
                left: (left - 1.0).max(0.0),
                at: now,
            },
        );
    }
}

/// Both limits.
#[derive(Debug)]
pub struct LoginLimit {
    users: Buckets<String>,
    addresses: Buckets<IpAddr>,
}

impl Default for LoginLimit {
    fn default() -> Self {
        Self::new(PER_USER, PER_ADDRESS)
    }
}

impl LoginLimit {
    /// With these rates.
    pub fn new(per_user: Rate, per_address: Rate) -> Self {
        Self {
            users: Buckets::new(per_user),
            addresses: Buckets::new(per_address),
        }
    }

    /// How long `user` from `addr` must wait before trying (zero: may try now).
    pub fn wait(&self, user: &str, addr: Option<IpAddr>, now: Instant) -> Duration {
        let by_addr = addr.map_or(Duration::ZERO, |a| self.addresses.wait(&a, now));
        self.users.wait(&user.to_owned(), now).max(by_addr)
    }

    /// A failed login.
    pub fn fail(&mut self, user: &str, addr: Option<IpAddr>, now: Instant) {
        self.users.fail(&user.to_owned(), now);
        if let Some(a) = addr {
            self.addresses.fail(&a, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_drain_per_user_and_per_address_and_refill() {
        let mut l = LoginLimit::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(l.wait("alice", Some(a), t0), Duration::ZERO);
            l.fail("alice", Some(a), t0);
        }
        assert!(l.wait("alice", Some(a), t0) > Duration::from_secs(11));
        // Another address is refused too (the user's bucket), another user is not.
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.wait("alice", Some(b), t0) > Duration::ZERO);
        assert_eq!(l.wait("bob", Some(a), t0), Duration::ZERO);
        // One more try after 12 s.
        assert_eq!(
            l.wait("alice", Some(a), t0 + Duration::from_secs(12)),
            Duration::ZERO
        );
        // One address trying many names runs out of its own bucket.
        for i in 0..15 {
            l.fail(&format!("u{i}"), Some(a), t0);
        }
        assert!(l.wait("carol", Some(a), t0) > Duration::ZERO);
        assert_eq!(l.wait("carol", Some(b), t0), Duration::ZERO);
    }

    #[test]
    fn buckets_stay_bounded() {
        let mut l = LoginLimit::default();
        let t0 = Instant::now();
        for i in 0..(MAX_BUCKETS + 1000) {
            l.fail(&format!("user{i}"), None, t0);
        }
        assert!(l.users.map.len() <= MAX_BUCKETS);
    }
}
