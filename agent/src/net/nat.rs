//! Service IPs translated in the kernel on the sending worker: one nftables table per
//! agent, replaced atomically (one `nft -f` transaction) whenever the cluster's service
//! table changes. `rr_ip` → new flows spread round-robin over the RUNNING instances;
//! `closest_ip` → an instance on this worker if there is one, else another of the
//! cluster; an instance IP → that instance. Translated flows are masqueraded behind
//! the bridge address, so replies come back through this worker's conntrack even when
//! the instance answering sits on the same bridge as the client.

use super::Cidr;
use grove_proto::msg::{InstanceState, NetCoord, ServiceEntry};
use grove_proto::ports::{PortMapping, Protocol};
use std::fmt::Write;
use std::net::{Ipv4Addr, Ipv6Addr};

fn in_subnet(addr: u32, s: Cidr<Ipv4Addr>) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(s.len)).unwrap_or(0);
    addr & mask == u32::from(s.addr) & mask
}

/// One of this worker's instances as a port mapping's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Its IPv4 overlay address.
    pub v4: Ipv4Addr,
    /// Its IPv6 overlay address.
    pub v6: Option<Ipv6Addr>,
}

/// What one agent's table is made of.
#[derive(Debug, Clone, Copy)]
pub struct Tables<'a> {
    /// The table's name.
    pub table: &'a str,
    /// This worker's subnet (its instances are the closest).
    pub subnet: Cidr<Ipv4Addr>,
    /// This worker's network coordinate (the closest of the others is the one at the
    /// lowest estimated RTT), once known.
    pub me: Option<NetCoord>,
    /// The cluster's service table, as pushed.
    pub services: &'a [ServiceEntry],
    /// Services of other clusters, looked up on a miss: new flows to them are logged
    /// (their use keeps them).
    pub looked_up: &'a [ServiceEntry],
    /// Port mappings of this worker's RUNNING instances.
    pub mappings: &'a [(PortMapping, Target)],
    /// The log group misses and uses go to; `None`: no lookups.
    pub group: Option<u16>,
    /// What instances may not reach; `None` with no instances' bridge.
    pub guard: Option<Guard<'a>>,
    /// This worker's instances' bridge ports: each sends only with its own addresses.
    pub ports: &'a [Port],
}

/// One instance's port on the bridge, as its frames must look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The host end of its veth pair.
    pub link: String,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Its IPv4 address.
    pub v4: Ipv4Addr,
    /// Its IPv6 address.
    pub v6: Option<Ipv6Addr>,
}

impl Port {
    /// Its IPv6 link-local address (EUI-64 from its MAC, as the kernel makes it).
    fn link_local(&self) -> Ipv6Addr {
        let m = self.mac;
        Ipv6Addr::from([
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            m[0] ^ 0x02,
            m[1],
            m[2],
            0xff,
            0xfe,
            m[3],
            m[4],
            m[5],
        ])
    }
}

/// The bridge table: frames from an instance's port that carry another source MAC or
/// address, ARP that claims another's, or neighbour advertisements for another's
/// address, are dropped before they reach the bridge (a container cannot take over
/// another's traffic, nor the gateway's).
fn bridge_table(table: &str, ports: &[Port]) -> String {
    let mut out = format!("table bridge {table}\ndelete table bridge {table}\n");
    if ports.is_empty() {
        return out;
    }
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let hex = |a: Ipv6Addr| format!("0x{:032x}", u128::from(a));
    let mut jumps = String::new();
    let mut chains = String::new();
    for (i, p) in ports.iter().enumerate() {
        let m = mac(p.mac);
        let ll = p.link_local();
        let mut own6 = vec![ll.to_string(), "::".to_owned()];
        let mut targets = vec![hex(ll)];
        if let Some(v6) = p.v6 {
            own6.push(v6.to_string());
            targets.push(hex(v6));
        }
        let _ = writeln!(jumps, "    iifname \"{}\" jump p{i}", p.link);
        let _ = write!(
            chains,
            "  chain p{i} {{\n    ether saddr != {m} drop\n    ether type arp arp saddr ether != {m} drop\n    ether type arp arp saddr ip != {v4} drop\n    ether type ip ip saddr != {v4} drop\n    ether type ip6 ip6 saddr != {{ {own6} }} drop\n    ether type ip6 icmpv6 type nd-neighbor-advert @th,64,128 != {{ {targets} }} drop\n  }}\n",
            v4 = p.v4,
            own6 = own6.join(", "),
            targets = targets.join(", "),
        );
    }
    let _ = write!(
        out,
        "table bridge {table} {{\n  chain ports {{\n    type filter hook prerouting priority -300; policy accept;\n{jumps}  }}\n{chains}}}\n"
    );
    out
}

/// The worker's and the cluster's control ports, out of the instances' reach: nothing
/// from the instances' bridge opens a connection to the worker itself (its
/// supervisor, sshd, anything listening; ICMP still answers, and IPv6 neighbour
/// discovery needs it), and nothing from it reaches the cluster's CoAP port.
#[derive(Debug, Clone, Copy)]
pub struct Guard<'a> {
    /// The instances' bridge.
    pub bridge: &'a str,
    /// The cluster's address.
    pub cluster: Option<std::net::SocketAddr>,
}

impl Guard<'_> {
    fn chains(&self) -> String {
        let br = self.bridge;
        let cluster = match self.cluster {
            Some(std::net::SocketAddr::V4(a)) => {
                format!(
                    "    iifname \"{br}\" ip daddr {} udp dport {} drop\n",
                    a.ip(),
                    a.port()
                )
            }
            Some(std::net::SocketAddr::V6(a)) => {
                format!(
                    "    iifname \"{br}\" ip6 daddr {} udp dport {} drop\n",
                    a.ip(),
                    a.port()
                )
            }
            None => String::new(),
        };
        format!(
            "  chain guard_in {{\n    type filter hook input priority filter; policy accept;\n    iifname \"{br}\" meta l4proto {{ icmp, ipv6-icmp }} accept\n    iifname \"{br}\" ct state new drop\n{cluster}  }}\n  chain guard_fwd {{\n    type filter hook forward priority filter; policy accept;\n{cluster}  }}\n"
        )
    }
}

/// The rules being written, and the addresses they translate.
#[derive(Default)]
struct Rules {
    text: String,
    known4: Vec<String>,
    known6: Vec<String>,
}

impl Rules {
    /// Send `daddr` (family `ip` or `ip6`) to one of `to` (round-robin if several),
    /// logging each new flow to `log` when given.
    fn dnat<A: std::fmt::Display>(
        &mut self,
        family: &str,
        daddr: A,
        to: &[String],
        log: Option<u16>,
    ) {
        let daddr = daddr.to_string();
        let log = log.map(|g| format!("log group {g} ")).unwrap_or_default();
        match to {
            [] => return,
            [one] => {
                let _ = writeln!(
                    self.text,
                    "    {family} daddr {daddr} {log}dnat {family} to {one}"
                );
            }
            many => {
                let map: Vec<String> = many
                    .iter()
                    .enumerate()
                    .map(|(n, a)| format!("{n} : {a}"))
                    .collect();
                let _ = writeln!(
                    self.text,
                    "    {family} daddr {daddr} {log}dnat {family} to numgen inc mod {} map {{ {} }}",
                    many.len(),
                    map.join(", ")
                );
            }
        }
        self.known(family, daddr);
    }

    fn known(&mut self, family: &str, daddr: String) {
        let k = if family == "ip" {
            &mut self.known4
        } else {
            &mut self.known6
        };
        if !k.contains(&daddr) {
            k.push(daddr);
        }
    }

    /// The rules of one service (`me`: this worker's network coordinate, if known).
    fn service(
        &mut self,
        s: &ServiceEntry,
        subnet: Cidr<Ipv4Addr>,
        me: Option<NetCoord>,
        log: Option<u16>,
    ) {
        let running: Vec<_> = s
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Running && i.addr.is_some())
            .collect();
        let v4 =
            |i: &&grove_proto::msg::InstanceEndpoint| i.addr.map(|a| Ipv4Addr::from(a).to_string());
        let v6 = |i: &&grove_proto::msg::InstanceEndpoint| {
            i.addr6.map(|a| Ipv6Addr::from(a).to_string())
        };
        let all4: Vec<String> = running.iter().filter_map(v4).collect();
        let all6: Vec<String> = running.iter().filter_map(v6).collect();
        if let Some(rr) = s.rr_ip {
            self.dnat("ip", Ipv4Addr::from(rr), &all4, log);
        }
        if let Some(rr) = s.rr_ip6 {
            self.dnat("ip6", Ipv6Addr::from(rr), &all6, log);
        }
        // The closest: one on this worker; else of this cluster (whose instances come
        // with their worker's coordinate), the one at the lowest estimated RTT; else
        // one elsewhere.
        let rank = |i: &&&grove_proto::msg::InstanceEndpoint| {
            let local = i.addr.is_some_and(|a| in_subnet(a, subnet));
            let rtt = match (me, i.coord) {
                (Some(me), Some(c)) => grove_proto::vivaldi::distance(me, c),
                _ => f32::MAX,
            };
            (!local, i.coord.is_none(), rtt)
        };
        let near = running.iter().min_by(|a, b| {
            let (a, b) = (rank(a), rank(b));
            (a.0, a.1).cmp(&(b.0, b.1)).then(a.2.total_cmp(&b.2))
        });
        if let (Some(c), Some(near)) = (s.closest_ip, near) {
            self.dnat("ip", Ipv4Addr::from(c), &Vec::from_iter(v4(near)), log);
        }
        if let (Some(c), Some(near)) = (s.closest_ip6, near) {
            self.dnat("ip6", Ipv6Addr::from(c), &Vec::from_iter(v6(near)), log);
        }
        for i in &running {
            self.dnat("ip", Ipv4Addr::from(i.ip), &Vec::from_iter(v4(i)), log);
            if let Some(ip6) = i.ip6 {
                self.dnat("ip6", Ipv6Addr::from(ip6), &Vec::from_iter(v6(i)), log);
            }
        }
    }
}

/// Where Grove's service and instance IPs live: 10.30.0.0/16, and fdff::/21 (instances),
/// fdff:2000::/21 (round-robin), fdff:4000::/21 (closest), all inside fdff::/17.
const SERVICE_NET4: &str = "10.30.0.0/16";
const SERVICE_NET6: &str = "fdff::/17";

/// The nft script that makes the agent's table (family `inet`: IPv4 and IPv6 in one)
/// hold exactly these rules: port mappings (`host port` on this worker's own addresses
/// → `address:container port` of one of its instances), service and instance IPs,
/// and — with a log group — a filter ahead of connection tracking that hands the first
/// packets to an unknown service IP to the agent and drops them (connection tracking
/// never sees them, so the sender's retry meets the rules installed meanwhile).
/// Nothing at all: the table goes.
pub fn ruleset(t: &Tables<'_>) -> String {
    let mut r = Rules::default();
    for (m, to) in t.mappings {
        let proto = match m.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        let _ = writeln!(
            r.text,
            "    meta nfproto ipv4 fib daddr type local {proto} dport {} dnat ip to {}:{}",
            m.host, to.v4, m.container
        );
        if let Some(v6) = to.v6 {
            let _ = writeln!(
                r.text,
                "    meta nfproto ipv6 fib daddr type local {proto} dport {} dnat ip6 to [{v6}]:{}",
                m.host, m.container
            );
        }
    }
    for s in t.services {
        r.service(s, t.subnet, t.me, None);
        // The cluster's own services are known even with nothing running: no lookup.
        for ip in [s.rr_ip, s.closest_ip].into_iter().flatten() {
            r.known("ip", Ipv4Addr::from(ip).to_string());
        }
        for ip in [s.rr_ip6, s.closest_ip6].into_iter().flatten() {
            r.known("ip6", Ipv6Addr::from(ip).to_string());
        }
        for i in &s.instances {
            r.known("ip", Ipv4Addr::from(i.ip).to_string());
        }
    }
    // A service looked up before the cluster's table arrived (a worker that just
    // restarted sees traffic first) is the table's from then on: one set of rules.
    for s in t
        .looked_up
        .iter()
        .filter(|l| !t.services.iter().any(|s| s.service == l.service))
    {
        r.service(s, t.subnet, t.me, t.group);
    }
    let table = t.table;
    // Declaring the table first makes the delete succeed whether it existed or not.
    let mut script = bridge_table(table, t.ports);
    let _ = write!(script, "table inet {table}\ndelete table inet {table}\n");
    if r.text.is_empty() && t.group.is_none() && t.guard.is_none() {
        return script;
    }
    let rules = &r.text;
    let _ = write!(
        script,
        "table inet {table} {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n{rules}  }}\n  chain out {{\n    type nat hook output priority -100; policy accept;\n{rules}  }}\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ct status dnat masquerade\n  }}\n"
    );
    if let Some(g) = t.group {
        let except = |known: &[String], family: &str| {
            if known.is_empty() {
                String::new()
            } else {
                format!("{family} daddr != {{ {} }} ", known.join(", "))
            }
        };
        // Handed over at most 50 a second (a workload scanning the range cannot
        // flood the agent); dropped all the same beyond that.
        let (e4, e6) = (except(&r.known4, "ip"), except(&r.known6, "ip6"));
        let miss = format!(
            "    ip daddr {SERVICE_NET4} {e4}limit rate 50/second burst 50 packets log group {g} drop\n    ip daddr {SERVICE_NET4} {e4}drop\n    ip6 daddr {SERVICE_NET6} {e6}limit rate 50/second burst 50 packets log group {g} drop\n    ip6 daddr {SERVICE_NET6} {e6}drop\n"
        );
        let _ = write!(
            script,
            "  chain miss_pre {{\n    type filter hook prerouting priority raw; policy accept;\n{miss}  }}\n  chain miss_out {{\n    type filter hook output priority raw; policy accept;\n{miss}  }}\n"
        );
    }
    if let Some(g) = t.guard {
        script.push_str(&g.chains());
    }
    script.push_str("}\n");
    script
}

/// Apply a script with `nft -f -` (one transaction).
pub fn apply(script: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e} (is nftables installed?)"))?;
    child
        .stdin
        .take()
        .ok_or("nft: no stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| format!("nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests;
