//! Services of other clusters this worker talks to: looked up at the cluster's
//! directory on the first packet to an address no rule knows (a miss), observed there
//! while flows keep using them, and dropped once unused for a while (the interest).

use grove_proto::msg::ServiceEntry;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most services of other clusters looked up at once on one worker.
pub const MAX_WANTED: usize = 256;

/// Directory work the data plane asks of the control loop.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lookups {
    /// Look these addresses up at the cluster and observe the entry.
    pub ask: Vec<IpAddr>,
    /// No longer used: stop observing.
    pub drop: Vec<IpAddr>,
}

#[derive(Debug, Clone)]
struct Wanted {
    entry: Option<ServiceEntry>,
    used: Instant,
    observing: bool,
    asked: Option<Instant>,
}

/// The looked-up services, by the address that was looked up.
#[derive(Debug)]
pub struct Interest {
    wanted: HashMap<IpAddr, Wanted>,
    idle: Duration,
    retry: Duration,
}

impl Interest {
    /// Entries unused for `idle` go; a lookup that found nothing is tried again after
    /// `retry` while packets still ask for it.
    pub fn new(idle: Duration, retry: Duration) -> Self {
        Self {
            wanted: HashMap::new(),
            idle,
            retry,
        }
    }

    /// A new flow to `ip` at `now`. Once [`MAX_WANTED`] addresses are wanted, new ones
    /// are not looked up until some go idle: a workload scanning the service range
    /// cannot make the table (or the cluster's directory) grow without bound.
    pub fn seen(&mut self, ip: IpAddr, now: Instant) {
        if let Some(w) = self.wanted.get_mut(&ip) {
            w.used = now;
            return;
        }
        if let Some(w) = self.wanted.values_mut().find(|w| {
            w.entry
                .as_ref()
                .is_some_and(|e| e.addresses().contains(&ip))
        }) {
            w.used = now;
            return;
        }
        if self.wanted.len() >= MAX_WANTED {
            return;
        }
        self.wanted.insert(
            ip,
            Wanted {
                entry: None,
                used: now,
                observing: false,
                asked: None,
            },
        );
    }

    /// What to look up and what to stop observing at `now`; the second value says
    /// whether an entry with rules went (the rules must follow).
    pub fn due(&mut self, now: Instant) -> (Lookups, bool) {
        let mut l = Lookups::default();
        let mut rules_changed = false;
        let idle = self.idle;
        self.wanted.retain(|ip, w| {
            let keep = now.saturating_duration_since(w.used) < idle;
            if !keep {
                l.drop.push(*ip);
                rules_changed |= w.entry.is_some();
            }
            keep
        });
        for (ip, w) in &mut self.wanted {
            let ready = w
                .asked
                .is_none_or(|t| now.saturating_duration_since(t) >= self.retry);
            if !w.observing && ready {
                w.observing = true;
                w.asked = Some(now);
                l.ask.push(*ip);
            }
        }
        l.ask.sort();
        l.drop.sort();
        (l, rules_changed)
    }

    /// The directory's answer for `ip`: an entry (first or a change), or `None` (not
    /// found, or the observation ended: asked again later while still used). Whether
    /// the rules change.
    pub fn found(&mut self, ip: IpAddr, entry: Option<ServiceEntry>) -> bool {
        let Some(w) = self.wanted.get_mut(&ip) else {
            return false;
        };
        match entry {
            Some(e) => {
                let changed = w.entry.as_ref() != Some(&e);
                w.entry = Some(e);
                changed
            }
            None => {
                w.observing = false;
                false
            }
        }
    }

    /// The services known, once each.
    pub fn entries(&self) -> Vec<ServiceEntry> {
        let mut out: Vec<ServiceEntry> = Vec::new();
        let mut keys: Vec<&IpAddr> = self.wanted.keys().collect();
        keys.sort();
        for k in keys {
            if let Some(e) = &self.wanted[k].entry {
                if !out.iter().any(|o| o.service == e.service) {
                    out.push(e.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rr: [u8; 4]) -> ServiceEntry {
        ServiceEntry {
            name: "a.b.c.d".into(),
            service: "s1".into(),
            rr_ip: Some(u32::from(std::net::Ipv4Addr::from(rr))),
            closest_ip: Some(u32::from(std::net::Ipv4Addr::new(10, 30, 64, 1))),
            instances: vec![],
            rr_ip6: None,
            closest_ip6: None,
        }
    }

    #[test]
    fn a_miss_is_looked_up_once_kept_while_used_and_dropped_when_idle() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut i = Interest::new(60 * s, 5 * s);
        let rr: IpAddr = "10.30.30.30".parse().unwrap();
        i.seen(rr, t0);
        i.seen(rr, t0);
        let (l, _) = i.due(t0);
        assert_eq!(l.ask, [rr], "looked up once");
        assert!(i.due(t0 + s).0.ask.is_empty(), "not again while observed");
        assert!(i.found(rr, Some(entry([10, 30, 30, 30]))));
        assert!(!i.found(rr, Some(entry([10, 30, 30, 30]))), "no change");
        assert_eq!(i.entries().len(), 1);
        // A flow to its closest IP counts as use of the same entry.
        i.seen("10.30.64.1".parse().unwrap(), t0 + 50 * s);
        let (l, gone) = i.due(t0 + 100 * s);
        assert!(l.drop.is_empty() && !gone, "used 50 s ago: kept");
        let (l, gone) = i.due(t0 + 111 * s);
        assert_eq!(l.drop, [rr]);
        assert!(gone && i.entries().is_empty());
    }

    #[test]
    fn a_lookup_that_found_nothing_is_tried_again_later() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut i = Interest::new(60 * s, 5 * s);
        let ip: IpAddr = "fdff:2000::9".parse().unwrap();
        i.seen(ip, t0);
        assert_eq!(i.due(t0).0.ask, [ip]);
        assert!(!i.found(ip, None));
        assert!(i.due(t0 + s).0.ask.is_empty(), "not before the retry time");
        assert_eq!(i.due(t0 + 6 * s).0.ask, [ip]);
    }

    #[test]
    fn a_scan_of_the_service_range_wants_a_bounded_number_of_lookups() {
        let mut i = Interest::new(Duration::from_secs(60), Duration::from_secs(5));
        let now = Instant::now();
        for n in 0..10_000u32 {
            i.seen(IpAddr::V4(std::net::Ipv4Addr::from(0x0a1e_0000 + n)), now);
        }
        let (l, _) = i.due(now);
        assert_eq!(l.ask.len(), MAX_WANTED);
    }
}
