//! The daemons speak systemd's notify protocol: a root given a `NOTIFY_SOCKET` of its
//! own (PID 1 here is not systemd) says `READY=1` once it serves, and with
//! `WATCHDOG_USEC` feeds the watchdog (`WATCHDOG=1`) every half period.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{bin, scratch};

#[test]
fn grove_root_says_ready_and_feeds_the_watchdog() {
    let dir = scratch("notify");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut child = Command::new(bin("grove-root"))
        .args([
            "--http",
            "127.0.0.1:0",
            "--coap",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.join("root"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("grove-root");
    let started = Instant::now();
    let mut got: Vec<String> = Vec::new();
    let mut buf = [0u8; 512];
    while started.elapsed() < Duration::from_secs(30)
        && !(got.iter().any(|m| m.contains("READY=1"))
            && got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2)
    {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let ready = got.iter().position(|m| m.contains("READY=1"));
    assert!(ready.is_some(), "no READY=1 in {got:?}");
    let beats = got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(
        beats >= 2,
        "the watchdog was not fed every half second: {got:?}"
    );
}
