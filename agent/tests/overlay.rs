//! The data plane on the kernel: a worker's bridge and two instances' veth pairs, all
//! inside network namespaces this test makes (the worker's own "host" namespace too),
//! so nothing touches the machine's network. Needs root (fails under CI without it).

use grove_agent::net::netlink::Kernel;
use grove_agent::net::{Cidr, Names, Netlink, Overlay};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;

/// A network namespace made with `ip netns add`, deleted when dropped.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Self {
        let name = format!("gt-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        Self(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }

    /// Run `args` inside; its success.
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn instances_reach_each_other_through_the_bridge_and_nothing_is_left_behind() {
    if !grove_tests::have_root("network namespaces")
        || grove_tests::tool("ip").is_none()
        || grove_tests::tool("busybox").is_none()
    {
        return;
    }
    let (host, a, b) = (Ns::new("host"), Ns::new("a"), Ns::new("b"));
    // This thread becomes the worker: its bridge lives in `host`, not on the machine.
    let target = std::fs::File::open(host.path()).unwrap();
    nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();

    let subnet = Cidr {
        addr: Ipv4Addr::new(10, 18, 250, 0),
        len: 26,
    };
    let subnet6 = Cidr {
        addr: "fc00:0:fa::".parse::<Ipv6Addr>().unwrap(),
        len: 120,
    };
    let agent = format!("test-{}", std::process::id());
    let mut o = Overlay::open(Kernel, &agent, subnet, Some(subnet6), &[]).unwrap();
    o.attach(
        "a-0",
        &a.path(),
        Ipv4Addr::new(10, 18, 250, 2),
        Some("fc00:0:fa::2".parse().unwrap()),
    )
    .unwrap();
    o.attach(
        "b-0",
        &b.path(),
        Ipv4Addr::new(10, 18, 250, 3),
        Some("fc00:0:fa::3".parse().unwrap()),
    )
    .unwrap();

    let (ok, out) = a.run(&["busybox", "ping", "-c", "1", "-W", "2", "10.18.250.3"]);
    assert!(ok, "a → b over IPv4: {out}");
    let (ok, out) = b.run(&["busybox", "ping", "-c", "1", "-W", "2", "10.18.250.1"]);
    assert!(ok, "b → its bridge: {out}");
    let (ok, out) = a.run(&["busybox", "ping6", "-c", "1", "-W", "2", "fc00:0:fa::3"]);
    assert!(ok, "a → b over IPv6: {out}");
    let (_, routes) = a.run(&["ip", "route"]);
    assert!(
        routes.contains("default via 10.18.250.1 dev eth0"),
        "{routes}"
    );
    let (_, link) = a.run(&["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1450"), "{link}");

    // An instance's link goes with it; its namespace keeps nothing of the overlay.
    o.detach("a-0").unwrap();
    let (_, addrs) = a.run(&["ip", "-o", "addr"]);
    assert!(
        !addrs.contains("10.18.250.2") && !addrs.contains("eth0"),
        "{addrs}"
    );
    let (ok, _) = b.run(&["busybox", "ping", "-c", "1", "-W", "1", "10.18.250.2"]);
    assert!(!ok, "a still answers after its detach");

    // A crashed agent's leftovers: a new run that keeps only `a-0` removes `b-0`'s.
    let names = Names::of(&agent);
    drop(o);
    let mut again = Overlay::open(Kernel, &agent, subnet, Some(subnet6), &["a-0".into()]).unwrap();
    let mut k = Kernel;
    assert!(!k.links().unwrap().contains(&names.instance("b-0")));
    let (_, baddrs) = b.run(&["ip", "-o", "addr"]);
    assert!(!baddrs.contains("10.18.250.3"), "{baddrs}");

    // And on the way out, everything of this agent goes.
    again.remove_all().unwrap();
    let left: Vec<String> = k
        .links()
        .unwrap()
        .into_iter()
        .filter(|l| l.starts_with(&names.bridge()[..6]))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn enter(ns: &Ns) {
    let f = std::fs::File::open(ns.path()).unwrap();
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

#[test]
fn instances_on_two_workers_reach_each_other_over_vxlan() {
    if !grove_tests::have_root("network namespaces")
        || grove_tests::tool("ip").is_none()
        || grove_tests::tool("busybox").is_none()
    {
        return;
    }
    // Two worker hosts on an underlay link of their own, an instance on each.
    let (h1, h2, a, b) = (Ns::new("w1"), Ns::new("w2"), Ns::new("ia"), Ns::new("ib"));
    let link = format!("gtu{}", std::process::id() % 100_000);
    let ip = |args: &[&str]| {
        let ok = Command::new("ip").args(args).status().unwrap();
        assert!(ok.success(), "ip {args:?}");
    };
    ip(&[
        "link", "add", &link, "netns", &h1.0, "type", "veth", "peer", "name", "u2", "netns", &h2.0,
    ]);
    h1.run(&["ip", "link", "set", &link, "name", "u1"]);
    for (h, addr, dev) in [(&h1, "10.31.0.1/24", "u1"), (&h2, "10.31.0.2/24", "u2")] {
        assert!(h.run(&["ip", "addr", "add", addr, "dev", dev]).0);
        assert!(h.run(&["ip", "link", "set", dev, "up"]).0);
    }
    let net = |third: u8| Cidr {
        addr: Ipv4Addr::new(10, 18, 251, third),
        len: 26,
    };
    let (n1, n2) = (net(0), net(64));
    let peers = [
        grove_agent::net::Peer {
            underlay: Ipv4Addr::new(10, 31, 0, 1),
            subnet: n1,
            subnet6: None,
        },
        grove_agent::net::Peer {
            underlay: Ipv4Addr::new(10, 31, 0, 2),
            subnet: n2,
            subnet6: None,
        },
    ];
    enter(&h1);
    let mut o1 = Overlay::open(Kernel, "w1", n1, None, &[]).unwrap();
    o1.attach("a-0", &a.path(), Ipv4Addr::new(10, 18, 251, 2), None)
        .unwrap();
    o1.set_peers(Ipv4Addr::new(10, 31, 0, 1), &peers).unwrap();
    enter(&h2);
    let mut o2 = Overlay::open(Kernel, "w2", n2, None, &[]).unwrap();
    o2.attach("b-0", &b.path(), Ipv4Addr::new(10, 18, 251, 66), None)
        .unwrap();
    o2.set_peers(Ipv4Addr::new(10, 31, 0, 2), &peers).unwrap();

    let (ok, out) = a.run(&["busybox", "ping", "-c", "2", "-W", "2", "10.18.251.66"]);
    assert!(ok, "a on w1 → b on w2: {out}");
    // The encapsulated packets fit the underlay: a full-size ping goes through.
    let (ok, out) = b.run(&[
        "busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "-s",
        "1400",
        "10.18.251.2",
    ]);
    assert!(ok, "b → a with 1400 bytes: {out}");

    // w2 leaves (its device goes, so nothing more comes from it): w1 forgets it.
    o2.remove_all().unwrap();
    enter(&h1);
    o1.set_peers(Ipv4Addr::new(10, 31, 0, 1), &peers[..1])
        .unwrap();
    let (_, routes) = h1.run(&["ip", "route"]);
    assert!(!routes.contains("10.18.251.64/26"), "{routes}");
    // Its flooding entry went with the old device (learned entries too).
    let vx = Names::of("w1").vxlan();
    let (_, fdb) = h1.run(&["bridge", "fdb", "show", "dev", &vx]);
    assert!(!fdb.contains("10.31.0.2"), "{fdb}");
    o1.remove_all().unwrap();
}
