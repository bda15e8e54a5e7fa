//! Vivaldi network coordinates (Dabek et al., SIGCOMM 2004), for latency placement.
//!
//! Each worker keeps a coordinate in a 3-dimensional space whose distances estimate
//! round-trip times in milliseconds. It updates its coordinate from RTTs it measures
//! on messages it exchanges anyway (heartbeat round trips with its cluster, overlay
//! traffic), moving towards or away from the peer's coordinate in proportion to the
//! error, weighted by both sides' confidence.

use crate::msg::NetCoord;

/// A coordinate with its relative error estimate (1.0 = know nothing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vivaldi {
    /// The coordinate, milliseconds.
    pub coord: NetCoord,
    /// Relative error, 0..=1.
    pub error: f32,
}

/// Tuning constants from the paper.
const CE: f32 = 0.25;
const CC: f32 = 0.25;

impl Default for Vivaldi {
    fn default() -> Self {
        Self {
            coord: NetCoord([0.0; 3]),
            error: 1.0,
        }
    }
}

/// The estimated RTT between two coordinates, milliseconds.
pub fn distance(a: NetCoord, b: NetCoord) -> f32 {
    let d: f32 =
        a.0.iter()
            .zip(b.0.iter())
            .map(|(x, y)| (x - y) * (x - y))
            .sum();
    d.sqrt()
}

impl Vivaldi {
    /// Fold in one measured RTT (ms) to a peer with coordinate `peer` and error
    /// `peer_error`. `nudge` breaks the symmetry when both sit on the same point (any
    /// small varying value, e.g. from the sample's time).
    pub fn observe(&mut self, peer: NetCoord, peer_error: f32, rtt_ms: f32, nudge: f32) {
        if !(rtt_ms.is_finite() && rtt_ms > 0.0) {
            return;
        }
        if self.error >= 1.0 {
            // Knowing nothing yet, take the first sample at face value: sit at the
            // measured distance from the peer. (The adaptive step alone would need a
            // dozen samples, a dozen heartbeats, to get there.)
            let mut dir = [nudge.cos(), nudge.sin(), 0.5];
            let len = dir.iter().map(|x| x * x).sum::<f32>().sqrt();
            for (i, d) in dir.iter_mut().enumerate() {
                *d /= len;
                self.coord.0[i] = peer.0[i] + *d * rtt_ms;
            }
            self.error = 0.5;
            return;
        }
        let w = self.error / (self.error + peer_error.max(1e-3));
        let dist = distance(self.coord, peer);
        let sample_error = (dist - rtt_ms).abs() / rtt_ms;
        self.error = (sample_error * CE * w + self.error * (1.0 - CE * w)).clamp(0.01, 1.0);
        let delta = CC * w;
        // Unit vector from the peer to us (a nudged direction when co-located).
        let mut dir = [0f32; 3];
        for (i, d) in dir.iter_mut().enumerate() {
            *d = self.coord.0[i] - peer.0[i];
        }
        let len = dir.iter().map(|x| x * x).sum::<f32>().sqrt();
        if len < 1e-6 {
            dir = [nudge.cos(), nudge.sin(), 0.5];
        }
        let len = dir.iter().map(|x| x * x).sum::<f32>().sqrt();
        let force = delta * (rtt_ms - dist);
        for (i, d) in dir.iter().enumerate() {
            self.coord.0[i] += force * d / len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_converge_to_the_measured_rtts() {
        // Three nodes: a-b 10 ms, a-c 50 ms, b-c 45 ms (a triangle that embeds).
        let rtt = [[0.0, 10.0, 50.0], [10.0, 0.0, 45.0], [50.0, 45.0, 0.0]];
        let mut n = [Vivaldi::default(); 3];
        for round in 0..2000 {
            let i = round % 3;
            let j = (round / 3 + 1 + i) % 3;
            if i == j {
                continue;
            }
            let (peer, perr) = (n[j].coord, n[j].error);
            n[i].observe(peer, perr, rtt[i][j], round as f32);
        }
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    let est = distance(n[i].coord, n[j].coord);
                    assert!(
                        (est - rtt[i][j]).abs() < rtt[i][j] * 0.2 + 1.0,
                        "{i}-{j}: {est} vs {}",
                        rtt[i][j]
                    );
                }
            }
        }
        assert!(n.iter().all(|v| v.error < 0.3), "{n:?}");
    }

    #[test]
    fn a_worker_that_only_talks_to_its_cluster_sits_at_its_rtt_from_it() {
        // The cluster is the fixed anchor at the origin; RTTs jitter by ±20 %.
        let mut w = Vivaldi::default();
        for k in 0..20 {
            let jitter = if k % 2 == 0 { 0.8 } else { 1.2 };
            w.observe(NetCoord([0.0; 3]), 0.01, 120.0 * jitter, k as f32);
            if k == 0 {
                let d = distance(w.coord, NetCoord([0.0; 3]));
                assert!((d - 96.0).abs() < 0.5, "first sample taken as is: {d}");
            }
        }
        let d = distance(w.coord, NetCoord([0.0; 3]));
        assert!((d - 120.0).abs() < 30.0, "{d}");
    }

    #[test]
    fn nonsense_samples_change_nothing() {
        let mut v = Vivaldi::default();
        v.observe(NetCoord([1.0, 2.0, 3.0]), 0.5, f32::NAN, 0.0);
        v.observe(NetCoord([1.0, 2.0, 3.0]), 0.5, -4.0, 0.0);
        assert_eq!(v, Vivaldi::default());
    }
}
