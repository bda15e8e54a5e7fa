//! Service IPs translated in the kernel on the sending worker: one nftables table per
//! agent, replaced atomically (one `nft -f` transaction) whenever the cluster's service
//! table changes. `rr_ip` → new flows spread round-robin over the RUNNING instances;
//! `closest_ip` → an instance on this worker if there is one, else another of the
//! cluster; an instance IP → that instance. Translated flows are masqueraded behind
//! the bridge address, so replies come back through this worker's conntrack even when
//! the instance answering sits on the same bridge as the client.

use super::Cidr;
use grove_proto::msg::{InstanceState, ServiceEntry};
use grove_proto::ports::{PortMapping, Protocol};
use std::fmt::Write;
use std::net::Ipv4Addr;

fn in_subnet(addr: u32, s: Cidr<Ipv4Addr>) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(s.len)).unwrap_or(0);
    addr & mask == u32::from(s.addr) & mask
}

/// The nft script that makes `table` hold exactly these services' rules (`subnet`:
/// this worker's, for `closest_ip`) and port mappings (`host port` on this worker's own
/// addresses → `address:container port` of one of its instances). Nothing: the table
/// goes.
pub fn ruleset(
    table: &str,
    subnet: Cidr<Ipv4Addr>,
    services: &[ServiceEntry],
    mappings: &[(PortMapping, Ipv4Addr)],
) -> String {
    let mut rules = String::new();
    for (m, to) in mappings {
        let proto = match m.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        let _ = writeln!(
            rules,
            "    fib daddr type local {proto} dport {} dnat to {to}:{}",
            m.host, m.container
        );
    }
    for s in services {
        let targets: Vec<u32> = s
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Running)
            .filter_map(|i| i.addr)
            .collect();
        if targets.is_empty() {
            continue;
        }
        if let Some(rr) = s.rr_ip {
            let map: Vec<String> = targets
                .iter()
                .enumerate()
                .map(|(n, a)| format!("{n} : {}", Ipv4Addr::from(*a)))
                .collect();
            let _ = writeln!(
                rules,
                "    ip daddr {} dnat to numgen inc mod {} map {{ {} }}",
                Ipv4Addr::from(rr),
                targets.len(),
                map.join(", ")
            );
        }
        if let Some(c) = s.closest_ip {
            let near = targets
                .iter()
                .find(|a| in_subnet(**a, subnet))
                .or(targets.first())
                .copied()
                .unwrap_or_default();
            let _ = writeln!(
                rules,
                "    ip daddr {} dnat to {}",
                Ipv4Addr::from(c),
                Ipv4Addr::from(near)
            );
        }
        for i in s
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Running)
        {
            if let Some(a) = i.addr {
                let _ = writeln!(
                    rules,
                    "    ip daddr {} dnat to {}",
                    Ipv4Addr::from(i.ip),
                    Ipv4Addr::from(a)
                );
            }
        }
    }
    // Declaring the table first makes the delete succeed whether it existed or not.
    let mut script = format!("table ip {table}\ndelete table ip {table}\n");
    if !rules.is_empty() {
        let _ = write!(
            script,
            "table ip {table} {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n{rules}  }}\n  chain out {{\n    type nat hook output priority -100; policy accept;\n{rules}  }}\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ct status dnat masquerade\n  }}\n}}\n"
        );
    }
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
mod tests {
    use super::*;
    use grove_proto::msg::{ClusterId, InstanceEndpoint, InstanceRef};

    fn endpoint(n: u32, ip: [u8; 4], addr: [u8; 4], state: InstanceState) -> InstanceEndpoint {
        InstanceEndpoint {
            instance: InstanceRef {
                service: "s".into(),
                instance: n,
            },
            ip: u32::from(Ipv4Addr::from(ip)),
            ip6: None,
            worker: String::new(),
            cluster: ClusterId(1),
            state,
            addr: Some(u32::from(Ipv4Addr::from(addr))),
        }
    }

    #[test]
    fn service_ips_spread_prefer_this_worker_and_skip_what_does_not_run() {
        let s = ServiceEntry {
            name: "a.b.nginx.d".into(),
            service: "s".into(),
            rr_ip: Some(u32::from(Ipv4Addr::new(10, 30, 30, 30))),
            closest_ip: Some(u32::from(Ipv4Addr::new(10, 30, 40, 40))),
            instances: vec![
                endpoint(0, [10, 30, 0, 2], [10, 18, 0, 130], InstanceState::Running),
                endpoint(1, [10, 30, 0, 3], [10, 18, 0, 66], InstanceState::Running),
                endpoint(2, [10, 30, 0, 4], [10, 18, 0, 67], InstanceState::Creating),
            ],
        };
        let mine = Cidr {
            addr: Ipv4Addr::new(10, 18, 0, 64),
            len: 26,
        };
        let web = PortMapping {
            host: 6080,
            container: 60,
            protocol: Protocol::Tcp,
        };
        let r = ruleset(
            "grove_t",
            mine,
            &[s],
            &[(web, Ipv4Addr::new(10, 18, 0, 66))],
        );
        assert!(
            r.contains("fib daddr type local tcp dport 6080 dnat to 10.18.0.66:60"),
            "{r}"
        );
        assert!(
            r.starts_with("table ip grove_t\ndelete table ip grove_t\n"),
            "{r}"
        );
        assert!(r.contains(
            "ip daddr 10.30.30.30 dnat to numgen inc mod 2 map { 0 : 10.18.0.130, 1 : 10.18.0.66 }"
        ), "{r}");
        assert!(
            r.contains("ip daddr 10.30.40.40 dnat to 10.18.0.66"),
            "closest is the local one: {r}"
        );
        assert!(r.contains("ip daddr 10.30.0.2 dnat to 10.18.0.130"));
        assert!(
            !r.contains("10.18.0.67"),
            "a CREATING instance gets no traffic: {r}"
        );
        assert!(r.contains("ct status dnat masquerade"));
        // Nothing runs: the table goes.
        assert_eq!(
            ruleset("grove_t", mine, &[], &[]),
            "table ip grove_t\ndelete table ip grove_t\n"
        );
    }
}
