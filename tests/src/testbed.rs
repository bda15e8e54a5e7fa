//! The multi-host test bed: N hosts as network namespaces, each with one link to a
//! switch (a bridge in a namespace of its own), underlay addresses 10.31.0.(i+1)/24
//! and fd31::(i+1)/64, and no route anywhere else. A test's thread can enter a host (then what it starts
//! runs there) or start programs in one with `ip netns exec`. Everything is deleted
//! when the bed is dropped, also when the test panics.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;

/// One host of the bed.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace's name (`ip netns`).
    pub ns: String,
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// Its IPv6 underlay address.
    pub ip6: Ipv6Addr,
}

impl Host {
    /// The namespace file.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.ns)
    }

    /// `program` to be run inside this host (`nsenter --net`: unlike `ip netns exec`
    /// it keeps the machine's /sys, where the cgroup file systems are).
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg(program);
        c
    }

    /// Run a command line inside; (success, output).
    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .output()
            .expect("ip netns exec");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

/// The bed.
#[derive(Debug)]
pub struct TestBed {
    switch: String,
    /// Its hosts.
    pub hosts: Vec<Host>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn quiet_del(ns: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(std::process::Stdio::null())
        .status();
}

impl TestBed {
    /// A bed of `n` hosts for test `tag`; `None` (after [`crate::missing`]) without
    /// root or `ip`.
    pub fn new(tag: &str, n: usize) -> Option<Self> {
        if !crate::have_root("network namespaces") {
            return None;
        }
        crate::tool("ip")?;
        let id = std::process::id() % 100_000;
        let switch = format!("gb{id}-{tag}-sw");
        quiet_del(&switch);
        ip(&["netns", "add", &switch]);
        let mut bed = Self {
            switch: switch.clone(),
            hosts: Vec::new(),
        };
        ip(&["-n", &switch, "link", "add", "sw0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "sw0", "up"]);
        for i in 0..n {
            let ns = format!("gb{id}-{tag}-h{i}");
            quiet_del(&ns);
            ip(&["netns", "add", &ns]);
            let addr = Ipv4Addr::new(10, 31, 0, u8::try_from(i + 1).expect("< 255 hosts"));
            let port = format!("p{i}");
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &switch, "link", "set", &port, "master", "sw0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            let addr6 = Ipv6Addr::new(0xfd31, 0, 0, 0, 0, 0, 0, u16::from(addr.octets()[3]));
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr6}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            bed.hosts.push(Host {
                ns,
                ip: addr,
                ip6: addr6,
            });
        }
        Some(bed)
    }

    /// Move this thread into host `i`: sockets it opens and programs it starts from
    /// now on are in that host.
    pub fn enter(&self, i: usize) {
        let f = std::fs::File::open(self.hosts[i].path()).expect("host namespace");
        // SAFETY: setns on the calling thread only; the file is a namespace.
        let r = unsafe { libc_setns(std::os::fd::AsRawFd::as_raw_fd(&f)) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

/// setns(2) for a network namespace.
///
/// # Safety
/// `fd` must be an open file descriptor.
unsafe fn libc_setns(fd: i32) -> i32 {
    const CLONE_NEWNET: i32 = 0x4000_0000;
    unsafe extern "C" {
        fn setns(fd: i32, nstype: i32) -> i32;
    }
    // SAFETY: forwarded from the caller.
    unsafe { setns(fd, CLONE_NEWNET) }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        for h in &self.hosts {
            quiet_del(&h.ns);
        }
        quiet_del(&self.switch);
    }
}
