//! Packets the agent's nftables rules hand to it through `log group N` (nfnetlink_log):
//! the first packet of a flow to a service IP this worker has no entry for (a miss:
//! look the service up) or to a service of another cluster it holds an entry for (a
//! use: keep the entry). Only the destination address matters, so only the start of
//! each packet is copied.
//!
//! The messages are netlink-packet-netfilter's; one blocking thread reads them (the
//! agent's only thread besides the puller) and hands the addresses on through a channel.

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::nlas::config::ConfigNla;
use netlink_packet_netfilter::nflog::nlas::config::{ConfigCmd, ConfigMode, CopyMode};
use netlink_packet_netfilter::nflog::nlas::packet::PacketNla;
use netlink_packet_netfilter::nflog::{NfLogMessage, config_request};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_NETFILTER;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::mpsc;

/// Enough of a packet for its destination address (an IPv6 header is 40 bytes).
const COPY: u32 = 40;

/// The destination address of an IPv4 or IPv6 packet.
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let b: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 => {
            let b: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

fn send(s: &Socket, nlas: Vec<ConfigNla>, group: u16) -> std::io::Result<()> {
    // AF_UNSPEC: the group gets both families' packets.
    let msg = config_request(0, group, nlas);
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    s.send(&buf, 0)?;
    let mut answer = vec![0u8; 4096];
    let n = s.recv(&mut &mut answer[..], 0)?;
    match NetlinkMessage::<NetfilterMessage>::deserialize(&answer[..n]) {
        Ok(NetlinkMessage {
            payload: NetlinkPayload::Error(e),
            ..
        }) => match e.code {
            Some(code) => Err(std::io::Error::from_raw_os_error(code.get().abs())),
            None => Ok(()),
        },
        Ok(_) => Ok(()),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// Listen on log group `group` in this thread's network namespace: a thread that
/// sends the destination of every packet logged there to the receiver returned.
pub fn listen(group: u16) -> std::io::Result<mpsc::Receiver<IpAddr>> {
    let mut s = Socket::new(NETLINK_NETFILTER)?;
    s.bind_auto()?;
    send(
        &s,
        vec![
            ConfigCmd::Bind.into(),
            ConfigMode::new(COPY, CopyMode::Packet).into(),
            // Each packet at once, not batched.
            ConfigNla::QThresh(1),
        ],
        group,
    )?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("nflog".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                let n = match s.recv(&mut &mut buf[..], 0) {
                    Ok(n) => n,
                    // ENOBUFS: the kernel dropped some; the flows will try again.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "the log group socket failed");
                        return;
                    }
                };
                let mut off = 0;
                while off < n {
                    let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..n])
                    else {
                        break;
                    };
                    let len = m.header.length as usize;
                    if let NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::NfLog(NfLogMessage::Packet(nlas)),
                        ..
                    }) = m.payload
                    {
                        for nla in nlas {
                            if let PacketNla::Payload(p) = nla {
                                if let Some(ip) = destination(&p) {
                                    if tx.send(ip).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    if len == 0 {
                        break;
                    }
                    off += (len + 3) & !3;
                }
            }
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_of_both_families() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[16..20].copy_from_slice(&[10, 30, 30, 30]);
        assert_eq!(destination(&v4), Some("10.30.30.30".parse().unwrap()));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[24..40].copy_from_slice(&"fdff:2000::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(destination(&v6), Some("fdff:2000::1".parse().unwrap()));
        assert_eq!(destination(&v4[..10]), None, "cut short");
        assert_eq!(destination(&[0x20; 40]), None, "not IP");
    }
}
