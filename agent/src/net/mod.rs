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

pub mod netlink;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

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
        })
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

    /// Remove everything of this agent (its bridge and instance links).
    pub fn remove_all(&mut self) -> Result<(), String> {
        for l in self.nl.links()? {
            if self.names.is_instance_link(&l) {
                self.nl.delete_link(&l)?;
            }
        }
        self.nl.delete_link(&self.names.bridge())
    }
}

/// The subnet's first host address (the bridge's).
pub fn first_host(net: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net) + 1)
}

/// The IPv6 subnet's first host address.
pub fn first_host6(net: Ipv6Addr) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

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
