//! The worker's data plane, programmed in the kernel (the agent only programs it):
//! a bridge holding the first address of the worker's subnet, and per instance a veth
//! pair born with one end inside the instance's held network namespace (never moved:
//! moving takes the kernel's global network lock) carrying the instance's address,
//! with a default route through the bridge.
//!
//! Every object is named after the agent (`--name`), so an agent finds and removes
//! what a crashed run of itself left behind, and never touches another agent's.
//! The kernel is reached through [`Netlink`]: the real one speaks rtnetlink
//! ([`netlink::Kernel`]), the recording fake tests the programming unprivileged.

pub mod interest;
pub mod nat;
pub mod netlink;
pub mod nflog;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr<A> {
    /// The address.
    pub addr: A,
    /// Prefix length.
    pub len: u8,
}

/// What the data plane needs from the kernel.
pub trait Netlink {
    /// Make the bridge `name` (if missing) with `v4` (and `v6`) on it, up.
    fn ensure_bridge(
        &mut self,
        name: &str,
        v4: Cidr<Ipv4Addr>,
        v6: Option<Cidr<Ipv6Addr>>,
        mtu: u32,
    ) -> Result<(), String>;
    /// A veth pair: `host` on the bridge, `peer` born in the namespace held at `netns`
    /// as `eth0` with `v4` (and `v6`), up, default routes via `gw4` (and `gw6`).
    #[allow(clippy::too_many_arguments)]
    fn add_instance_link(
        &mut self,
        host: &str,
        bridge: &str,
        netns: &Path,
        v4: Cidr<Ipv4Addr>,
        gw4: Ipv4Addr,
        v6: Option<(Cidr<Ipv6Addr>, Ipv6Addr)>,
        mtu: u32,
    ) -> Result<(), String>;
    /// Delete link `name` (its peer and addresses go with it); absent is fine.
    fn delete_link(&mut self, name: &str) -> Result<(), String>;
    /// The names of the links in the agent's namespace.
    fn links(&mut self) -> Result<Vec<String>, String>;
    /// Make the VXLAN device `name` (if missing): `vni`, UDP 4789, from `local`, on
    /// the bridge, up. Made afresh, it has no forwarding entries.
    fn ensure_vxlan(
        &mut self,
        name: &str,
        bridge: &str,
        vni: u32,
        local: Ipv4Addr,
        mtu: u32,
    ) -> Result<(), String>;
    /// Add (or remove) a flooding entry of `dev` towards a peer's underlay address.
    fn fdb(&mut self, dev: &str, peer: Ipv4Addr, add: bool) -> Result<(), String>;
    /// Add (or remove) an on-link route to `net` through `dev`, tagged as Grove's.
    fn route(&mut self, dev: &str, net: std::net::IpAddr, len: u8, add: bool)
    -> Result<(), String>;
    /// Remove every route tagged as Grove's through `dev` (what a crashed run left).
    fn flush_routes(&mut self, dev: &str) -> Result<(), String>;
    /// Let this namespace forward packets (IPv4 and IPv6) between its links.
    fn enable_forwarding(&mut self) -> Result<(), String>;
}

/// Another worker of the cluster, as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// Its underlay address (the VXLAN endpoint).
    pub underlay: Ipv4Addr,
    /// Its subnet.
    pub subnet: Cidr<Ipv4Addr>,
    /// Its IPv6 subnet.
    pub subnet6: Option<Cidr<Ipv6Addr>>,
}

/// The VXLAN network identifier of Grove's overlay.
pub const VNI: u32 = 4242;

/// Names of one agent's objects: at most 15 bytes (IFNAMSIZ), `g` + 5 hex digits of
/// the agent name's hash, then `b` for the bridge or `v` + 8 hex of the instance's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

impl Names {
    /// The names of agent `agent`'s objects.
    pub fn of(agent: &str) -> Self {
        Self {
            prefix: format!("g{:05x}", fnv(agent) & 0xf_ffff),
        }
    }

    /// Its bridge.
    pub fn bridge(&self) -> String {
        format!("{}b", self.prefix)
    }

    /// Its VXLAN device.
    pub fn vxlan(&self) -> String {
        format!("{}x", self.prefix)
    }

    /// Its nftables log group (misses and uses of other clusters' services).
    pub fn log_group(&self) -> u16 {
        // 1..=65000, from the same hash as the names.
        let h = u32::from_str_radix(&self.prefix[1..], 16).unwrap_or(0);
        u16::try_from(h % 65_000).unwrap_or(0) + 1
    }

    /// Its nftables table (service IP translation).
    pub fn nat_table(&self) -> String {
        format!("grove_{}", self.prefix)
    }

    /// The host end of an instance's veth pair.
    pub fn instance(&self, container: &str) -> String {
        format!("{}v{:08x}", self.prefix, fnv(container))
    }

    /// Whether `link` is one of this agent's instance links.
    pub fn is_instance_link(&self, link: &str) -> bool {
        link.strip_prefix(&self.prefix)
            .is_some_and(|r| r.starts_with('v') && r.len() == 9)
    }
}

/// MTU of the bridge and the instances: room for VXLAN's 50 bytes of encapsulation on
/// a 1500-byte underlay.
pub const MTU: u32 = 1450;

/// One worker's data plane.
#[derive(Debug)]
pub struct Overlay<N: Netlink> {
    nl: N,
    names: Names,
    subnet: Cidr<Ipv4Addr>,
    subnet6: Option<Cidr<Ipv6Addr>>,
    /// The peers programmed, and from which local address.
    peers: Vec<Peer>,
    local: Option<Ipv4Addr>,
}

impl<N: Netlink> Overlay<N> {
    /// The data plane of agent `agent` on `subnet` (and `subnet6`): its bridge made,
    /// instance links left by an earlier run of this agent removed.
    pub fn open(
        mut nl: N,
        agent: &str,
        subnet: Cidr<Ipv4Addr>,
        subnet6: Option<Cidr<Ipv6Addr>>,
        keep: &[String],
    ) -> Result<Self, String> {
        let names = Names::of(agent);
        let gw = Cidr {
            addr: first_host(subnet.addr),
            len: subnet.len,
        };
        let gw6 = subnet6.map(|s| Cidr {
            addr: first_host6(s.addr),
            len: s.len,
        });
        nl.ensure_bridge(&names.bridge(), gw, gw6, MTU)?;
        nl.flush_routes(&names.bridge())?;
        nl.enable_forwarding()?;
        let wanted: Vec<String> = keep.iter().map(|c| names.instance(c)).collect();
        for l in nl.links()? {
            if names.is_instance_link(&l) && !wanted.contains(&l) {
                tracing::info!(link = %l, "removing a link an earlier run left behind");
                nl.delete_link(&l)?;
            }
        }
        Ok(Self {
            nl,
            names,
            subnet,
            subnet6,
            peers: Vec::new(),
            local: None,
        })
    }

    /// Reach the other workers: a VXLAN device on the bridge from `local`, a flooding
    /// entry and a route to the subnets of each peer; what is no longer a peer goes.
    pub fn set_peers(&mut self, local: Ipv4Addr, peers: &[Peer]) -> Result<(), String> {
        let vx = self.names.vxlan();
        let bridge = self.names.bridge();
        let leaving = self
            .peers
            .iter()
            .any(|p| !wanted_of(local, peers).contains(p));
        if self.local != Some(local) || leaving {
            // A new local address, or a peer gone (the device learned where its
            // instances' MAC addresses live): a new device, its entries gone with the old.
            self.nl.delete_link(&vx)?;
            self.nl.ensure_vxlan(&vx, &bridge, VNI, local, MTU)?;
            self.local = Some(local);
            for p in std::mem::take(&mut self.peers) {
                self.routes(&p, false)?;
            }
        }
        let wanted = wanted_of(local, peers);
        let fresh: Vec<Peer> = wanted
            .iter()
            .filter(|p| !self.peers.contains(p))
            .cloned()
            .collect();
        for new in &fresh {
            self.nl.fdb(&vx, new.underlay, true)?;
            self.routes(new, true)?;
        }
        self.peers = wanted;
        Ok(())
    }

    fn routes(&mut self, p: &Peer, add: bool) -> Result<(), String> {
        let bridge = self.names.bridge();
        self.nl.route(
            &bridge,
            std::net::IpAddr::V4(p.subnet.addr),
            p.subnet.len,
            add,
        )?;
        if let Some(s6) = p.subnet6 {
            self.nl
                .route(&bridge, std::net::IpAddr::V6(s6.addr), s6.len, add)?;
        }
        Ok(())
    }

    /// The IPv6 overlay address that goes with IPv4 address `v4` of this worker's
    /// subnet (the same host number in its IPv6 subnet).
    pub fn address6(&self, v4: Ipv4Addr) -> Option<Ipv6Addr> {
        let s6 = self.subnet6?;
        grove_proto::msg::addr6_of(
            u32::from(self.subnet.addr),
            self.subnet.len,
            s6.addr.octets(),
            s6.len,
            u32::from(v4),
        )
        .map(Ipv6Addr::from)
    }

    /// Wire container `container`'s namespace at `netns` with `ip` (and `ip6`).
    pub fn attach(
        &mut self,
        container: &str,
        netns: &Path,
        ip: Ipv4Addr,
        ip6: Option<Ipv6Addr>,
    ) -> Result<(), String> {
        let host = self.names.instance(container);
        // A half-made pair from an interrupted attempt goes first.
        self.nl.delete_link(&host)?;
        let v6 = match (ip6, self.subnet6) {
            (Some(a), Some(s)) => Some((
                Cidr {
                    addr: a,
                    len: s.len,
                },
                first_host6(s.addr),
            )),
            _ => None,
        };
        self.nl.add_instance_link(
            &host,
            &self.names.bridge(),
            netns,
            Cidr {
                addr: ip,
                len: self.subnet.len,
            },
            first_host(self.subnet.addr),
            v6,
            MTU,
        )
    }

    /// Remove container `container`'s link (its namespace end goes with it).
    pub fn detach(&mut self, container: &str) -> Result<(), String> {
        self.nl.delete_link(&self.names.instance(container))
    }

    /// Remove everything of this agent (its bridge, VXLAN device and instance links).
    pub fn remove_all(&mut self) -> Result<(), String> {
        remove_agent(&mut self.nl, &self.names)
    }
}

/// Remove every link of the agent named by `names` (routes, addresses and forwarding
/// entries go with them).
pub fn remove_agent<N: Netlink>(nl: &mut N, names: &Names) -> Result<(), String> {
    for l in nl.links()? {
        if names.is_instance_link(&l) {
            nl.delete_link(&l)?;
        }
    }
    nl.delete_link(&names.vxlan())?;
    nl.delete_link(&names.bridge())
}

/// The peers to program: sorted, once each, not this worker itself.
fn wanted_of(local: Ipv4Addr, peers: &[Peer]) -> Vec<Peer> {
    let mut w: Vec<Peer> = peers
        .iter()
        .filter(|p| p.underlay != local)
        .cloned()
        .collect();
    w.sort();
    w.dedup();
    w
}

/// The subnet's first host address (the bridge's).
pub fn first_host(net: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net) + 1)
}

/// The IPv6 subnet's first host address.
pub fn first_host6(net: Ipv6Addr) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net) + 1)
}

/// The MAC address of the instance with IPv4 address `ip`: locally administered
/// (02), `47` for Grove, then the address's four bytes. An instance that gets the
/// address of one removed before has its MAC too, so the other workers' neighbour
/// entries (which live up to a minute) stay right.
pub fn instance_mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x47, a, b, c, d]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_mac_follows_from_its_address_and_is_local_unicast() {
        let m = instance_mac(Ipv4Addr::new(10, 18, 0, 66));
        assert_eq!(m, [0x02, 0x47, 10, 18, 0, 66]);
        assert_eq!(m[0] & 0x03, 0x02, "locally administered, unicast");
        assert_ne!(m, instance_mac(Ipv4Addr::new(10, 18, 0, 67)));
    }

    /// Records every call; links live in a list.
    #[derive(Debug, Default)]
    struct Fake {
        calls: Vec<String>,
        links: Vec<String>,
    }

    impl Netlink for Fake {
        fn ensure_bridge(
            &mut self,
            name: &str,
            v4: Cidr<Ipv4Addr>,
            v6: Option<Cidr<Ipv6Addr>>,
            mtu: u32,
        ) -> Result<(), String> {
            self.calls.push(format!(
                "bridge {name} {}/{} {v6:?} mtu {mtu}",
                v4.addr, v4.len
            ));
            if !self.links.contains(&name.to_owned()) {
                self.links.push(name.into());
            }
            Ok(())
        }
        fn add_instance_link(
            &mut self,
            host: &str,
            bridge: &str,
            netns: &Path,
            v4: Cidr<Ipv4Addr>,
            gw4: Ipv4Addr,
            v6: Option<(Cidr<Ipv6Addr>, Ipv6Addr)>,
            mtu: u32,
        ) -> Result<(), String> {
            self.calls.push(format!(
                "veth {host} on {bridge} into {} {}/{} via {gw4} {v6:?} mtu {mtu}",
                netns.display(),
                v4.addr,
                v4.len
            ));
            self.links.push(host.into());
            Ok(())
        }
        fn delete_link(&mut self, name: &str) -> Result<(), String> {
            self.calls.push(format!("delete {name}"));
            self.links.retain(|l| l != name);
            Ok(())
        }
        fn links(&mut self) -> Result<Vec<String>, String> {
            Ok(self.links.clone())
        }
        fn ensure_vxlan(
            &mut self,
            name: &str,
            bridge: &str,
            vni: u32,
            local: Ipv4Addr,
            mtu: u32,
        ) -> Result<(), String> {
            self.calls.push(format!(
                "vxlan {name} on {bridge} vni {vni} local {local} mtu {mtu}"
            ));
            self.links.push(name.into());
            Ok(())
        }
        fn fdb(&mut self, dev: &str, peer: Ipv4Addr, add: bool) -> Result<(), String> {
            self.calls.push(format!(
                "fdb {} {dev} {peer}",
                if add { "add" } else { "del" }
            ));
            Ok(())
        }
        fn route(
            &mut self,
            dev: &str,
            net: std::net::IpAddr,
            len: u8,
            add: bool,
        ) -> Result<(), String> {
            self.calls.push(format!(
                "route {} {net}/{len} {dev}",
                if add { "add" } else { "del" }
            ));
            Ok(())
        }
        fn flush_routes(&mut self, dev: &str) -> Result<(), String> {
            self.calls.push(format!("flush {dev}"));
            Ok(())
        }
        fn enable_forwarding(&mut self) -> Result<(), String> {
            self.calls.push("forwarding".into());
            Ok(())
        }
    }

    fn subnet() -> Cidr<Ipv4Addr> {
        Cidr {
            addr: Ipv4Addr::new(10, 18, 0, 64),
            len: 26,
        }
    }

    #[test]
    fn names_fit_ifnamsiz_and_tell_agents_apart() {
        let (a, b) = (Names::of("pi-1"), Names::of("pi-2"));
        assert_ne!(a.bridge(), b.bridge());
        let l = a.instance("6b0a196d24f886baf65bce9e-12");
        assert!(l.len() <= 15 && a.bridge().len() <= 15, "{l}");
        assert!(a.is_instance_link(&l) && !b.is_instance_link(&l));
        assert!(!a.is_instance_link(&a.bridge()) && !a.is_instance_link("eth0"));
    }

    #[test]
    fn the_bridge_holds_the_first_address_and_instances_route_through_it() {
        let v6 = Cidr {
            addr: "fc00:0:1::100".parse().unwrap(),
            len: 120,
        };
        let mut o = Overlay::open(Fake::default(), "pi-1", subnet(), Some(v6), &[]).unwrap();
        o.attach(
            "svc-0",
            Path::new("/s/containers/svc-0/netns"),
            Ipv4Addr::new(10, 18, 0, 66),
            Some("fc00:0:1::102".parse().unwrap()),
        )
        .unwrap();
        let n = Names::of("pi-1");
        let calls = &o.nl.calls;
        assert!(
            calls[0].starts_with(&format!("bridge {} 10.18.0.65/26", n.bridge())),
            "{calls:?}"
        );
        assert!(calls[0].contains("fc00:0:1::101") && calls[0].ends_with("mtu 1450"));
        let veth = calls.iter().find(|c| c.starts_with("veth")).unwrap();
        assert!(
            veth.contains(&format!("{} on {}", n.instance("svc-0"), n.bridge()))
                && veth.contains("into /s/containers/svc-0/netns 10.18.0.66/26 via 10.18.0.65")
                && veth.contains("fc00:0:1::102"),
            "{veth}"
        );
        o.detach("svc-0").unwrap();
        assert_eq!(o.nl.links, [n.bridge()]);
    }

    #[test]
    fn peers_get_a_flooding_entry_and_routes_and_leave_without_a_trace() {
        let mut o = Overlay::open(Fake::default(), "pi-1", subnet(), None, &[]).unwrap();
        let n = Names::of("pi-1");
        let peer = |last: u8, net: u8| Peer {
            underlay: Ipv4Addr::new(10, 31, 0, last),
            subnet: Cidr {
                addr: Ipv4Addr::new(10, 18, 0, net),
                len: 26,
            },
            subnet6: None,
        };
        let me = Ipv4Addr::new(10, 31, 0, 1);
        o.set_peers(me, &[peer(2, 128), peer(3, 192), peer(1, 64)])
            .unwrap();
        let calls = o.nl.calls.join("\n");
        assert!(
            calls.contains(&format!(
                "vxlan {} on {} vni 4242 local 10.31.0.1 mtu 1450",
                n.vxlan(),
                n.bridge()
            )),
            "{calls}"
        );
        assert!(calls.contains(&format!("fdb add {} 10.31.0.2", n.vxlan())));
        assert!(calls.contains(&format!("route add 10.18.0.192/26 {}", n.bridge())));
        assert!(
            !calls.contains(&format!("fdb add {} 10.31.0.1", n.vxlan())),
            "no entry to itself"
        );
        o.nl.calls.clear();
        // One peer leaves: a fresh device with the remaining one's entry; its routes
        // stay, the one who left loses its own.
        o.set_peers(me, &[peer(2, 128)]).unwrap();
        assert_eq!(
            o.nl.calls,
            [
                format!("delete {}", n.vxlan()),
                format!(
                    "vxlan {} on {} vni 4242 local 10.31.0.1 mtu 1450",
                    n.vxlan(),
                    n.bridge()
                ),
                format!("route del 10.18.0.128/26 {}", n.bridge()),
                format!("route del 10.18.0.192/26 {}", n.bridge()),
                format!("fdb add {} 10.31.0.2", n.vxlan()),
                format!("route add 10.18.0.128/26 {}", n.bridge()),
            ]
        );
        o.remove_all().unwrap();
        assert!(!o.nl.links.contains(&n.vxlan()) && !o.nl.links.contains(&n.bridge()));
    }

    #[test]
    fn leftovers_of_this_agent_go_and_other_agents_links_stay() {
        let mine = Names::of("pi-1");
        let theirs = Names::of("pi-2");
        let fake = Fake {
            links: vec![
                "lo".into(),
                mine.instance("dead-0"),
                mine.instance("alive-0"),
                theirs.instance("x-0"),
                theirs.bridge(),
            ],
            ..Fake::default()
        };
        let mut o = Overlay::open(fake, "pi-1", subnet(), None, &["alive-0".into()]).unwrap();
        let left = o.nl.links.clone();
        assert!(!left.contains(&mine.instance("dead-0")));
        assert!(left.contains(&mine.instance("alive-0")));
        assert!(left.contains(&theirs.instance("x-0")) && left.contains(&theirs.bridge()));
        o.remove_all().unwrap();
        assert_eq!(
            o.nl.links,
            ["lo".to_owned(), theirs.instance("x-0"), theirs.bridge()]
        );
    }
}
