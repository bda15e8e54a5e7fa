//! A cluster under a flood: 10,000 datagrams a second for 30 s at its CoAP port, half
//! garbage and half well-formed OSCORE requests under no or a wrong key, while a
//! deployment goes on through it. The deployment completes, the cluster's memory
//! stays bounded, and its log counts what it refused.

// Noise is made by truncating random words, and the rate by rounding a product.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss
)]

mod support;

use serde_json::json;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{Agent, Cluster, Root, scratch, wait_until};

const RATE: u64 = 10_000;
const FLOOD: Duration = Duration::from_secs(30);

/// xorshift64: reproducible noise.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Datagram `i` of the flood: odd ones garbage of any length, even ones confirmable
/// POSTs with an OSCORE option naming worker 1 (whose key the flood does not have)
/// or a made-up sender id, and a ciphertext of noise.
fn datagram(i: u64, n: &mut Noise) -> Vec<u8> {
    if i % 2 == 1 {
        let len = 1 + (n.next() % 200) as usize;
        return n.bytes(len);
    }
    let mid = (i as u16).to_be_bytes();
    let mut d = vec![0x40, 0x02, mid[0], mid[1]];
    let kid: [u8; 4] = if i % 4 == 0 {
        [0, 0, 0, 1]
    } else {
        (n.next() as u32).to_be_bytes()
    };
    // Option 9 (OSCORE), 6 bytes: flags (1-byte Partial IV, kid present), PIV, kid.
    d.push(0x96);
    d.push(0x09);
    d.push(n.next() as u8);
    d.extend_from_slice(&kid);
    d.push(0xff);
    let len = 16 + (n.next() % 48) as usize;
    d.extend(n.bytes(len));
    d
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A number in a log line `key=N` (ANSI colours removed).
fn logged_max(log: &str, key: &str) -> u64 {
    let mut plain = String::with_capacity(log.len());
    let mut esc = false;
    for c in log.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    plain
        .match_indices(&format!("{key}="))
        .filter_map(|(at, k)| {
            let rest = &plain[at + k.len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn a_flooded_cluster_completes_a_deployment_with_bounded_memory_and_counts_the_flood() {
    let dir = scratch("flood");
    let root = Root::start(&dir, &[]);
    let cluster = Cluster::start(&dir, "edge", &root, &[]);
    let room = ["--cpus", "16", "--memory-mib", "16384"];
    let _agents: Vec<Agent> = ["w1", "w2"]
        .iter()
        .map(|n| Agent::start(&dir, n, cluster.addr, &cluster.worker_token, &room))
        .collect();
    wait_until(30, "both workers", || root.active_workers() == 2);
    let ids = root.deploy_seed(|sla| {
        for ms in sla["applications"][0]["microservices"]
            .as_array_mut()
            .unwrap()
        {
            ms["port"] = json!("");
        }
    });
    let pid = cluster.daemon.pid().expect("the cluster's pid");
    let before = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let target: SocketAddr = cluster.addr;
    let flood = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let socks: Vec<UdpSocket> = (0..4)
                .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
                .collect();
            let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
            let start = Instant::now();
            let mut i = 0u64;
            while start.elapsed() < FLOOD && !stop.load(Ordering::Relaxed) {
                // Keep to the rate: as many as are due by now.
                let due = (start.elapsed().as_secs_f64() * RATE as f64) as u64;
                while i < due {
                    let d = datagram(i, &mut noise);
                    let _ = socks[(i % 4) as usize].send_to(&d, target);
                    i += 1;
                }
                sent.store(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
            sent.store(i, Ordering::Relaxed);
        })
    };
    let peak = Arc::new(AtomicU64::new(before));
    let watch = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // The deployment, once the cluster has had 3 s of the flood: six instances, all
    // RUNNING.
    wait_until(10, "3 s of the flood sent", || {
        sent.load(Ordering::Relaxed) >= RATE * 3
    });
    let asked = Instant::now();
    for _ in 0..6 {
        root.add_instance(&ids[1]);
    }
    wait_until(25, "six instances RUNNING under the flood", || {
        let list = root.instances(&ids[1]);
        list.len() == 6 && list.iter().all(|i| i["status"] == "RUNNING")
    });
    let took = asked.elapsed();
    let flooding = !flood.is_finished();
    flood.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    watch.join().unwrap();
    let sent = sent.load(Ordering::Relaxed);
    eprintln!("deployed in {took:?} under the flood; {sent} datagrams sent");
    assert!(flooding, "the deployment finished only after the flood");
    assert!(
        sent >= RATE * FLOOD.as_secs() * 9 / 10,
        "only {sent} datagrams sent"
    );

    let (before, peak) = (before, peak.load(Ordering::Relaxed));
    eprintln!("cluster RSS {before} KiB before, {peak} KiB at most");
    assert!(
        peak < before + 64 * 1024,
        "memory grew from {before} to {peak} KiB"
    );

    // The log counts the refused datagrams (every 10 s).
    wait_until(15, "the log to count the flood", || {
        let log = cluster.daemon.log();
        logged_max(&log, "total_malformed") + logged_max(&log, "total_rejected") >= sent / 2
    });
    let log = cluster.daemon.log();
    let (malformed, rejected) = (
        logged_max(&log, "total_malformed"),
        logged_max(&log, "total_rejected"),
    );
    eprintln!("refused: {malformed} malformed, {rejected} by OSCORE, of {sent}");
    assert!(
        rejected >= sent / 4,
        "{rejected} refused by OSCORE of {} wrongly keyed",
        sent / 2
    );
    // Still serving: a new instance after the flood.
    root.add_instance(&ids[1]);
    wait_until(20, "a seventh instance RUNNING", || {
        root.instances(&ids[1])
            .iter()
            .filter(|i| i["status"] == "RUNNING")
            .count()
            == 7
    });
}
