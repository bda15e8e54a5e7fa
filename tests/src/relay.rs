//! A link emulator: a UDP relay on loopback that sits between two tiers and gives each
//! direction its own delay, jitter and loss (this kernel has no netem).
//!
//! Clients send to the relay's address; each client gets a socket of its own towards the
//! target (as a NAT would), so the target sees one peer per client and answers reach
//! the right one. The shape can be changed while traffic flows, e.g. to cut the link
//! (100 % loss) and heal it again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;

/// What one direction does to datagrams.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shape {
    /// Added to every datagram.
    pub delay: Duration,
    /// Up to this much more, uniformly (so datagrams can overtake each other).
    pub jitter: Duration,
    /// Share of datagrams dropped, percent (0..=100).
    pub loss_pct: f64,
}

impl Shape {
    /// A fixed delay, no jitter, no loss.
    pub fn delay(d: Duration) -> Self {
        Self {
            delay: d,
            ..Self::default()
        }
    }

    /// Loss only.
    pub fn loss(pct: f64) -> Self {
        Self {
            loss_pct: pct,
            ..Self::default()
        }
    }
}

/// Both directions of a link.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Link {
    /// Client → target.
    pub up: Shape,
    /// Target → client.
    pub down: Shape,
}

impl Link {
    /// The same shape both ways.
    pub fn symmetric(s: Shape) -> Self {
        Self { up: s, down: s }
    }
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams forwarded.
    pub forwarded: AtomicU64,
    /// Datagrams dropped.
    pub dropped: AtomicU64,
}

impl Counters {
    fn count(&self, forwarded: bool) {
        let c = if forwarded {
            &self.forwarded
        } else {
            &self.dropped
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of one relay.
#[derive(Debug, Default)]
pub struct Stats {
    /// Client → target.
    pub up: Counters,
    /// Target → client.
    pub down: Counters,
}

impl Stats {
    /// Datagrams forwarded both ways.
    pub fn forwarded(&self) -> u64 {
        self.up.forwarded.load(Ordering::Relaxed) + self.down.forwarded.load(Ordering::Relaxed)
    }

    /// Datagrams dropped both ways.
    pub fn dropped(&self) -> u64 {
        self.up.dropped.load(Ordering::Relaxed) + self.down.dropped.load(Ordering::Relaxed)
    }
}

/// A datagram the relay passed on, as an eavesdropper on the link records it.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Client → target.
    pub up: bool,
    /// The client it came from or went to.
    pub client: SocketAddr,
    /// The bytes.
    pub data: Vec<u8>,
}

/// What the tap keeps at most (the oldest go first).
const TAP_MAX: usize = 10_000;

type Tap = Arc<Mutex<Option<std::collections::VecDeque<Captured>>>>;

fn record(tap: &Tap, up: bool, client: SocketAddr, data: &[u8]) {
    if let Some(q) = tap.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        if q.len() == TAP_MAX {
            q.pop_front();
        }
        q.push_back(Captured {
            up,
            client,
            data: data.to_vec(),
        });
    }
}

/// A running relay; it stops when dropped.
#[derive(Debug)]
pub struct Relay {
    /// Where clients send to.
    pub addr: SocketAddr,
    /// Counters.
    pub stats: Arc<Stats>,
    link: Arc<Mutex<Link>>,
    tap: Tap,
    front: Arc<UdpSocket>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Change the link's shape from now on.
    pub fn set(&self, link: Link) {
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = link;
    }

    /// Record every datagram passed on from now on (an eavesdropper), or stop.
    pub fn capture(&self, on: bool) {
        *self.tap.lock().unwrap_or_else(|p| p.into_inner()) =
            on.then(std::collections::VecDeque::new);
    }

    /// What was recorded so far.
    pub fn captured(&self) -> Vec<Captured> {
        self.tap
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Send `data` to `client` as if the target had sent it (an attacker on the link
    /// replaying what it recorded).
    pub async fn inject_down(&self, client: SocketAddr, data: &[u8]) -> std::io::Result<()> {
        self.front.send_to(data, client).await.map(|_| ())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A small deterministic generator (xorshift64), so a seed replays the same losses.
#[derive(Debug)]
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A uniform number in [0, 1).
    fn unit(&mut self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let x = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        x
    }
}

/// Decide a datagram's fate under `shape`: `None` drops it, else its delay.
fn fate(shape: Shape, dice: &mut Dice) -> Option<Duration> {
    if dice.unit() * 100.0 < shape.loss_pct {
        return None;
    }
    Some(shape.delay + shape.jitter.mul_f64(dice.unit()))
}

/// Send `data` on `sock` to `to` after `after` (at once when zero).
fn forward(sock: Arc<UdpSocket>, data: Vec<u8>, to: SocketAddr, after: Duration) {
    if after.is_zero() {
        let _ = sock.try_send_to(&data, to);
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = sock.send_to(&data, to).await;
    });
}

/// Start a relay on `bind` (port 0 for any) to `target` shaped by `link`; `seed` fixes
/// its random choices.
pub async fn start(
    bind: SocketAddr,
    target: SocketAddr,
    link: Link,
    seed: u64,
) -> std::io::Result<Relay> {
    let front = Arc::new(UdpSocket::bind(bind).await?);
    let addr = front.local_addr()?;
    let stats = Arc::new(Stats::default());
    let link = Arc::new(Mutex::new(link));
    let tap: Tap = Arc::default();
    let (s, l, front_task, tap_task) = (stats.clone(), link.clone(), front.clone(), tap.clone());
    let task = tokio::spawn(async move {
        let dice = Arc::new(Mutex::new(Dice(seed | 1)));
        let shape = |up: bool| {
            let l = l.lock().unwrap_or_else(|p| p.into_inner());
            if up { l.up } else { l.down }
        };
        let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut returns = tokio::task::JoinSet::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, client)) = front_task.recv_from(&mut buf).await else {
                continue;
            };
            let back = match backs.get(&client) {
                Some(b) => b.clone(),
                None => {
                    let any: SocketAddr = if target.is_ipv4() {
                        "127.0.0.1:0".parse().unwrap_or(bind)
                    } else {
                        "[::1]:0".parse().unwrap_or(bind)
                    };
                    let Ok(b) = UdpSocket::bind(any).await else {
                        continue;
                    };
                    let b = Arc::new(b);
                    backs.insert(client, b.clone());
                    // The way back for this client.
                    let (b2, f2, s2, d2) = (b.clone(), front_task.clone(), s.clone(), dice.clone());
                    let (l2, t2) = (l.clone(), tap_task.clone());
                    returns.spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        loop {
                            let Ok((n, from)) = b2.recv_from(&mut buf).await else {
                                continue;
                            };
                            if from != target {
                                continue;
                            }
                            let down = l2.lock().unwrap_or_else(|p| p.into_inner()).down;
                            let f = fate(down, &mut d2.lock().unwrap_or_else(|p| p.into_inner()));
                            s2.down.count(f.is_some());
                            if f.is_some() {
                                record(&t2, false, client, &buf[..n]);
                            }
                            if let Some(after) = f {
                                forward(f2.clone(), buf[..n].to_vec(), client, after);
                            }
                        }
                    });
                    b
                }
            };
            let f = fate(
                shape(true),
                &mut dice.lock().unwrap_or_else(|p| p.into_inner()),
            );
            s.up.count(f.is_some());
            if f.is_some() {
                record(&tap_task, true, client, &buf[..n]);
            }
            if let Some(after) = f {
                forward(back, buf[..n].to_vec(), target, after);
            }
        }
    });
    Ok(Relay {
        addr,
        stats,
        link,
        tap,
        front,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn echo() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = [0u8; 1500];
            while let Ok((n, from)) = s.recv_from(&mut b).await {
                let _ = s.send_to(&b[..n], from).await;
            }
        });
        a
    }

    #[tokio::test]
    async fn each_direction_adds_its_own_delay() {
        let target = echo().await;
        let link = Link {
            up: Shape::delay(Duration::from_millis(30)),
            down: Shape::delay(Duration::from_millis(50)),
        };
        let r = start("127.0.0.1:0".parse().unwrap(), target, link, 1)
            .await
            .unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut b = [0u8; 16];
        let t = Instant::now();
        c.send_to(b"ping", r.addr).await.unwrap();
        let (n, from) = c.recv_from(&mut b).await.unwrap();
        let rtt = t.elapsed();
        assert_eq!((&b[..n], from), (&b"ping"[..], r.addr));
        assert!(
            rtt >= Duration::from_millis(80) && rtt < Duration::from_millis(300),
            "{rtt:?}"
        );
    }

    #[tokio::test]
    async fn loss_drops_about_the_share_asked_and_a_cut_link_drops_everything() {
        let target = echo().await;
        let r = start(
            "127.0.0.1:0".parse().unwrap(),
            target,
            Link {
                up: Shape::loss(30.0),
                down: Shape::default(),
            },
            7,
        )
        .await
        .unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up = |r: &Relay| {
            r.stats.up.forwarded.load(Ordering::Relaxed)
                + r.stats.up.dropped.load(Ordering::Relaxed)
        };
        for i in 1..=1000 {
            c.send_to(b"x", r.addr).await.unwrap();
            // One at a time, so no socket buffer overflows and every loss is the relay's.
            let deadline = Instant::now() + Duration::from_secs(5);
            while up(&r) < i {
                assert!(Instant::now() < deadline, "relay stalled at {i}");
                tokio::task::yield_now().await;
            }
        }
        let dropped_up = r.stats.up.dropped.load(Ordering::Relaxed);
        assert!((220..=380).contains(&dropped_up), "{dropped_up} of 1000");
        assert_eq!(r.stats.down.dropped.load(Ordering::Relaxed), 0);

        r.set(Link::symmetric(Shape::loss(100.0)));
        c.send_to(b"y", r.addr).await.unwrap();
        let mut b = [0u8; 4];
        // An echo would come back within a millisecond; the cut link keeps it.
        let got = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                let (n, _) = c.recv_from(&mut b).await.unwrap();
                if &b[..n] == b"y" {
                    break;
                }
            }
        })
        .await;
        assert!(got.is_err(), "a datagram crossed a cut link");
    }
}
