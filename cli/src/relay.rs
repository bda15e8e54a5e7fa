//! A UDP relay on loopback that drops a share of datagrams in each direction: the
//! flaky link of the demo (this kernel has no netem).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::UdpSocket;

/// Counters of one relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Datagrams forwarded.
    pub forwarded: AtomicU64,
    /// Datagrams dropped.
    pub dropped: AtomicU64,
}

/// Start a relay to `target` dropping `loss_pct` % each way; returns the address the
/// client must send to.
pub async fn start(
    target: SocketAddr,
    loss_pct: u8,
    seed: u64,
) -> std::io::Result<(SocketAddr, Arc<RelayStats>)> {
    let front = UdpSocket::bind("127.0.0.1:0").await?;
    let back = UdpSocket::bind("127.0.0.1:0").await?;
    back.connect(target).await?;
    let addr = front.local_addr()?;
    let stats = Arc::new(RelayStats::default());
    let s = stats.clone();
    tokio::spawn(async move {
        let mut rng = seed | 1;
        let mut keep = move || {
            // xorshift64
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % 100 >= u64::from(loss_pct)
        };
        let mut client: Option<SocketAddr> = None;
        let (mut a, mut b) = (vec![0u8; 2048], vec![0u8; 2048]);
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut a) => {
                    client = Some(from);
                    if keep() {
                        let _ = back.send(&a[..n]).await;
                        s.forwarded.fetch_add(1, Ordering::Relaxed);
                    } else {
                        s.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(n) = back.recv(&mut b) => {
                    if let Some(c) = client {
                        if keep() {
                            let _ = front.send_to(&b[..n], c).await;
                            s.forwarded.fetch_add(1, Ordering::Relaxed);
                        } else {
                            s.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    });
    Ok((addr, stats))
}
