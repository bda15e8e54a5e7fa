//! [`Netlink`] on the kernel: rtnetlink requests (netlink-packet-route's message
//! types) over a blocking netlink socket. Requests for a container's namespace go over
//! a socket opened inside it (a socket belongs to the namespace it was made in), so
//! nothing is ever moved between namespaces.

use super::{Cidr, Netlink};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The link name an instance sees.
const INSIDE: &str = "eth0";
/// VXLAN's UDP port (IANA).
const VXLAN_PORT: u16 = 4789;
/// The routing protocol number Grove's routes carry (so they are told apart).
const GROVE_PROTO: u8 = 0x47;

/// An on-link route to `net`/`len` through link `index`, tagged as Grove's.
fn on_link_route(index: u32, net: IpAddr, len: u8) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = match net {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.header.destination_prefix_length = len;
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Other(GROVE_PROTO);
    m.header.scope = RouteScope::Link;
    m.header.kind = RouteType::Unicast;
    m.attributes.push(RouteAttribute::Destination(match net {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }));
    m.attributes.push(RouteAttribute::Oif(index));
    m
}

/// One rtnetlink socket.
struct Sock {
    s: Socket,
    seq: u32,
}

fn errno(code: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(code.abs())
}

impl Sock {
    fn new() -> std::io::Result<Self> {
        let mut s = Socket::new(NETLINK_ROUTE)?;
        s.bind_auto()?;
        s.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { s, seq: 0 })
    }

    /// A socket in the network namespace held at `netns`.
    fn inside(netns: &Path) -> std::io::Result<Self> {
        use nix::sched::{CloneFlags, setns};
        let own = std::fs::File::open("/proc/thread-self/ns/net")?;
        let target = std::fs::File::open(netns)?;
        setns(&target, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        let s = Self::new();
        // Back home before anything else runs on this thread.
        setns(&own, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        s
    }

    /// Send one request; the messages answered (for a dump), or an error.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> std::io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.s.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.s.recv_from_full()?;
            let mut off = 0;
            while off < data.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let len = m.header.length as usize;
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(code) => Err(errno(code.get())),
                            None => Ok(out),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(x) => out.push(x),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    fn index(&mut self, name: &str) -> std::io::Result<Option<u32>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(answers) => Ok(answers.into_iter().find_map(|a| match a {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn up(&mut self, index: u32) -> std::io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(m), 0).map(drop)
    }

    fn add_address(&mut self, index: u32, addr: IpAddr, len: u8) -> std::io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.header.prefix_len = len;
        match addr {
            IpAddr::V4(_) => {
                m.header.family = AddressFamily::Inet;
                m.attributes.push(AddressAttribute::Local(addr));
                m.attributes.push(AddressAttribute::Address(addr));
            }
            IpAddr::V6(_) => {
                m.header.family = AddressFamily::Inet6;
                m.attributes.push(AddressAttribute::Address(addr));
                // No duplicate address detection: the address is usable at once.
                m.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        match self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r.map(drop),
        }
    }

    fn default_route(&mut self, index: u32, via: IpAddr) -> std::io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = match via {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes.push(RouteAttribute::Gateway(match via {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        }));
        m.attributes.push(RouteAttribute::Oif(index));
        match self.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r.map(drop),
        }
    }
}

/// The kernel's rtnetlink.
#[derive(Debug, Default)]
pub struct Kernel;

fn ctx(what: String) -> impl FnOnce(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

impl Netlink for Kernel {
    fn ensure_bridge(
        &mut self,
        name: &str,
        v4: Cidr<Ipv4Addr>,
        v6: Option<Cidr<Ipv6Addr>>,
        mtu: u32,
    ) -> Result<(), String> {
        let mut s = Sock::new().map_err(ctx("netlink".into()))?;
        let index = match s.index(name).map_err(ctx(format!("bridge {name}")))? {
            Some(i) => i,
            None => {
                let mut m = LinkMessage::default();
                m.attributes.push(LinkAttribute::IfName(name.to_owned()));
                m.attributes.push(LinkAttribute::Mtu(mtu));
                m.attributes
                    .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                        InfoKind::Bridge,
                    )]));
                s.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
                    .map_err(ctx(format!("create bridge {name}")))?;
                s.index(name)
                    .map_err(ctx(format!("bridge {name}")))?
                    .ok_or(format!("bridge {name} vanished"))?
            }
        };
        s.add_address(index, IpAddr::V4(v4.addr), v4.len)
            .map_err(ctx(format!("{}/{} on {name}", v4.addr, v4.len)))?;
        if let Some(a) = v6 {
            s.add_address(index, IpAddr::V6(a.addr), a.len)
                .map_err(ctx(format!("{}/{} on {name}", a.addr, a.len)))?;
        }
        s.up(index).map_err(ctx(format!("{name} up")))
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
        let mut s = Sock::new().map_err(ctx("netlink".into()))?;
        let br = s
            .index(bridge)
            .map_err(ctx(format!("bridge {bridge}")))?
            .ok_or(format!("no bridge {bridge}"))?;
        let ns = std::fs::File::open(netns).map_err(ctx(netns.display().to_string()))?;
        // The peer is born in the instance's namespace.
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(INSIDE.to_owned()));
        peer.attributes.push(LinkAttribute::Mtu(mtu));
        // A MAC address that follows from the IPv4 address: an instance that gets an
        // address an earlier one had is reached at once by workers whose neighbour
        // caches still hold the old entry.
        peer.attributes.push(LinkAttribute::Address(
            super::instance_mac(v4.addr).to_vec(),
        ));
        peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(host.to_owned()));
        m.attributes.push(LinkAttribute::Mtu(mtu));
        m.attributes.push(LinkAttribute::Controller(br));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        s.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(ctx(format!("veth {host}")))?;
        let hi = s
            .index(host)
            .map_err(ctx(format!("veth {host}")))?
            .ok_or(format!("veth {host} vanished"))?;
        s.up(hi).map_err(ctx(format!("{host} up")))?;

        let mut inside =
            Sock::inside(netns).map_err(ctx(format!("netlink in {}", netns.display())))?;
        let ii = inside
            .index(INSIDE)
            .map_err(ctx(format!("{INSIDE} in {}", netns.display())))?
            .ok_or(format!("no {INSIDE} in {}", netns.display()))?;
        inside
            .add_address(ii, IpAddr::V4(v4.addr), v4.len)
            .map_err(ctx(format!("{}/{} on {INSIDE}", v4.addr, v4.len)))?;
        if let Some((a, _)) = v6 {
            inside
                .add_address(ii, IpAddr::V6(a.addr), a.len)
                .map_err(ctx(format!("{}/{} on {INSIDE}", a.addr, a.len)))?;
        }
        inside.up(ii).map_err(ctx(format!("{INSIDE} up")))?;
        if let Some(lo) = inside.index("lo").ok().flatten() {
            let _ = inside.up(lo);
        }
        inside
            .default_route(ii, IpAddr::V4(gw4))
            .map_err(ctx(format!("default route via {gw4}")))?;
        if let Some((_, gw6)) = v6 {
            inside
                .default_route(ii, IpAddr::V6(gw6))
                .map_err(ctx(format!("default route via {gw6}")))?;
        }
        Ok(())
    }

    fn delete_link(&mut self, name: &str) -> Result<(), String> {
        let mut s = Sock::new().map_err(ctx("netlink".into()))?;
        let Some(index) = s.index(name).map_err(ctx(format!("link {name}")))? else {
            return Ok(());
        };
        let mut m = LinkMessage::default();
        m.header.index = index;
        match s.request(RouteNetlinkMessage::DelLink(m), 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            r => r.map(drop).map_err(ctx(format!("delete {name}"))),
        }
    }

    fn ensure_vxlan(
        &mut self,
        name: &str,
        bridge: &str,
        vni: u32,
        local: Ipv4Addr,
        mtu: u32,
    ) -> Result<(), String> {
        let mut s = Sock::new().map_err(ctx("netlink".into()))?;
        if s.index(name)
            .map_err(ctx(format!("vxlan {name}")))?
            .is_none()
        {
            let br = s
                .index(bridge)
                .map_err(ctx(format!("bridge {bridge}")))?
                .ok_or(format!("no bridge {bridge}"))?;
            let mut m = LinkMessage::default();
            m.attributes.push(LinkAttribute::IfName(name.to_owned()));
            m.attributes.push(LinkAttribute::Mtu(mtu));
            m.attributes.push(LinkAttribute::Controller(br));
            m.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![
                    InfoVxlan::Id(vni),
                    InfoVxlan::Local(local),
                    InfoVxlan::Port(VXLAN_PORT),
                    InfoVxlan::Learning(true),
                ])),
            ]));
            s.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
                .map_err(ctx(format!("create vxlan {name}")))?;
        }
        let i = s
            .index(name)
            .map_err(ctx(format!("vxlan {name}")))?
            .ok_or(format!("vxlan {name} vanished"))?;
        s.up(i).map_err(ctx(format!("{name} up")))
    }

    fn fdb(&mut self, dev: &str, peer: Ipv4Addr, add: bool) -> Result<(), String> {
        let mut s = Sock::new().map_err(ctx("netlink".into()))?;
        let i = s
            .index(dev)
            .map_err(ctx(format!("link {dev}")))?
            .ok_or(format!("no link {dev}"))?;
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = i;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLocalAddress(vec![0; 6]));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                peer,
            )));
        let r = if add {
            s.request(
                RouteNetlinkMessage::NewNeighbour(m),
                NLM_F_CREATE | NLM_F_APPEND,
            )
        } else {
            s.request(RouteNetlinkMessage::DelNeighbour(m), 0)
        };
        match r {
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST)
                    || e.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            r => r
                .map(drop)
                .map_err(ctx(format!("forwarding entry {dev} → {peer}"))),
        }
    }

    fn route(&mut self, dev: &str, net: IpAddr, len: u8, add: bool) -> Result<(), String> {
        let mut s = Sock::new().map_err(ctx("netlink".into()))?;
        let i = s
            .index(dev)
            .map_err(ctx(format!("link {dev}")))?
            .ok_or(format!("no link {dev}"))?;
        let m = on_link_route(i, net, len);
        let r = if add {
            s.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL)
        } else {
            s.request(RouteNetlinkMessage::DelRoute(m), 0)
        };
        match r {
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST)
                    || e.raw_os_error() == Some(libc::ESRCH) =>
            {
                Ok(())
            }
            r => r
                .map(drop)
                .map_err(ctx(format!("route {net}/{len} via {dev}"))),
        }
    }

    fn flush_routes(&mut self, dev: &str) -> Result<(), String> {
        let mut s = Sock::new().map_err(ctx("netlink".into()))?;
        let Some(i) = s.index(dev).map_err(ctx(format!("link {dev}")))? else {
            return Ok(());
        };
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessage::default();
            q.header.address_family = family;
            let all = s
                .request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)
                .map_err(ctx("list routes".into()))?;
            for r in all {
                let RouteNetlinkMessage::NewRoute(r) = r else {
                    continue;
                };
                let ours = r.header.protocol == RouteProtocol::Other(GROVE_PROTO)
                    && r.attributes.contains(&RouteAttribute::Oif(i));
                if ours {
                    s.request(RouteNetlinkMessage::DelRoute(r), 0)
                        .map_err(ctx(format!("remove a stale route via {dev}")))?;
                }
            }
        }
        Ok(())
    }

    fn enable_forwarding(&mut self) -> Result<(), String> {
        // /proc/sys/net shows the namespace of whoever opens it: this thread's.
        for f in [
            "/proc/sys/net/ipv4/ip_forward",
            "/proc/sys/net/ipv6/conf/all/forwarding",
        ] {
            std::fs::write(f, "1").map_err(|e| format!("{f}: {e}"))?;
        }
        Ok(())
    }

    fn links(&mut self) -> Result<Vec<String>, String> {
        let mut s = Sock::new().map_err(ctx("netlink".into()))?;
        let answers = s
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(ctx("list links".into()))?;
        Ok(answers
            .into_iter()
            .filter_map(|a| match a {
                RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|x| match x {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                }),
                _ => None,
            })
            .collect())
    }
}
