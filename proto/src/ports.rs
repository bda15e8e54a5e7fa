//! Port mappings of the SLA's `port` field: `host[:container][/tcp|udp]`, `;`-separated
//! (`"9080"` alone maps 9080 to 9080). The root validates them, the cluster counts host
//! ports as a worker's resource, the agent installs them.

/// Grove's own ports, never a host port of a workload: VXLAN (4789/udp), the root's
/// API and CoAP (10000), the cluster's CoAP (10100).
pub const GROVE_PORTS: [u16; 3] = [4789, 10000, 10100];

/// Transport of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

/// One `host[:container][/tcp|udp]` mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    /// Port on the worker.
    pub host: u16,
    /// Port in the container (the host port when not given).
    pub container: u16,
    /// Transport.
    pub protocol: Protocol,
}

/// Parse `host[:container][/tcp|udp]`, `;`-separated.
pub fn parse_ports(s: &str) -> Result<Vec<PortMapping>, String> {
    let port = |p: &str| -> Result<u16, String> {
        match p.trim().parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => {
                u16::try_from(n).map_err(|_| format!("\"{p}\" is not a port"))
            }
            _ => Err(format!("\"{}\" is not a port", p.trim())),
        }
    };
    let mut out = Vec::new();
    for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (ports, protocol) = match entry.split_once('/') {
            None => (entry, Protocol::Tcp),
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some((_, other)) => return Err(format!("\"{other}\" is not tcp or udp")),
        };
        let (host, container) = match ports.split_once(':') {
            None => (port(ports)?, port(ports)?),
            Some((h, c)) => (port(h)?, port(c)?),
        };
        if out
            .iter()
            .any(|m: &PortMapping| m.host == host && m.protocol == protocol)
        {
            return Err(format!("host port {host} is mapped twice"));
        }
        out.push(PortMapping {
            host,
            container,
            protocol,
        });
    }
    Ok(out)
}
