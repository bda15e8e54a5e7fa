use super::*;
use grove_proto::msg::{ClusterId, InstanceEndpoint, InstanceRef};

fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

fn endpoint(n: u32, addr: [u8; 4], state: InstanceState) -> InstanceEndpoint {
    InstanceEndpoint {
        instance: InstanceRef {
            service: "s".into(),
            instance: n,
        },
        ip: u32::from(Ipv4Addr::new(10, 30, 0, 2 + u8::try_from(n).unwrap())),
        ip6: Some(v6(&format!("fdff::{}", 2 + n))),
        worker: String::new(),
        cluster: ClusterId(1),
        state,
        addr: Some(u32::from(Ipv4Addr::from(addr))),
        addr6: Some(v6(&format!("fc00::{:x}", addr[3]))),
        coord: Some(NetCoord([0.0; 3])),
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
            endpoint(0, [10, 18, 0, 130], InstanceState::Running),
            endpoint(1, [10, 18, 0, 66], InstanceState::Running),
            endpoint(2, [10, 18, 0, 67], InstanceState::Creating),
        ],
        rr_ip6: Some(v6("fdff:2000::1")),
        closest_ip6: Some(v6("fdff:4000::1")),
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
    let to = Target {
        v4: Ipv4Addr::new(10, 18, 0, 66),
        v6: Some("fc00::42".parse().unwrap()),
    };
    let r = ruleset(&Tables {
        table: "grove_t",
        subnet: mine,
        me: None,
        services: &[s],
        looked_up: &[],
        mappings: &[(web, to)],
        group: None,
        guard: None,
        ports: &[],
    });
    for want in [
        "meta nfproto ipv4 fib daddr type local tcp dport 6080 dnat ip to 10.18.0.66:60",
        "meta nfproto ipv6 fib daddr type local tcp dport 6080 dnat ip6 to [fc00::42]:60",
        "ip daddr 10.30.30.30 dnat ip to numgen inc mod 2 map { 0 : 10.18.0.130, 1 : 10.18.0.66 }",
        "ip6 daddr fdff:2000::1 dnat ip6 to numgen inc mod 2 map { 0 : fc00::82, 1 : fc00::42 }",
        // The closest is the one on this worker.
        "ip daddr 10.30.40.40 dnat ip to 10.18.0.66",
        "ip6 daddr fdff:4000::1 dnat ip6 to fc00::42",
        // Instance IPs.
        "ip daddr 10.30.0.2 dnat ip to 10.18.0.130",
        "ip6 daddr fdff::2 dnat ip6 to fc00::82",
        "ct status dnat masquerade",
    ] {
        assert!(r.contains(want), "{want} missing from\n{r}");
    }
    assert!(
        r.contains("table inet grove_t\ndelete table inet grove_t\n"),
        "{r}"
    );
    assert!(
        !r.contains("10.18.0.67") && !r.contains("fc00::43"),
        "a CREATING instance gets no traffic: {r}"
    );
    // Nothing runs: the table goes.
    assert_eq!(
        ruleset(&Tables {
            table: "grove_t",
            subnet: mine,
            me: None,
            services: &[],
            looked_up: &[],
            mappings: &[],
            group: None,
            guard: None,
            ports: &[],
        }),
        "table bridge grove_t\ndelete table bridge grove_t\ntable inet grove_t\ndelete table inet grove_t\n"
    );
}

#[test]
fn the_closest_elsewhere_is_the_one_at_the_lowest_estimated_rtt_then_other_clusters() {
    let mine = Cidr {
        addr: Ipv4Addr::new(10, 18, 0, 64),
        len: 26,
    };
    let mut far = endpoint(0, [10, 18, 0, 2], InstanceState::Running);
    far.coord = Some(NetCoord([80.0, 0.0, 0.0]));
    let mut near = endpoint(1, [10, 18, 0, 130], InstanceState::Running);
    near.coord = Some(NetCoord([5.0, 0.0, 0.0]));
    let mut other_cluster = endpoint(2, [10, 18, 64, 2], InstanceState::Running);
    other_cluster.coord = None;
    let entry = |instances: Vec<InstanceEndpoint>| ServiceEntry {
        name: "a.b.c.d".into(),
        service: "s".into(),
        rr_ip: None,
        closest_ip: Some(u32::from(Ipv4Addr::new(10, 30, 40, 40))),
        instances,
        rr_ip6: None,
        closest_ip6: None,
    };
    let closest = |services: &[ServiceEntry], me| {
        let r = ruleset(&Tables {
            table: "t",
            subnet: mine,
            me,
            services,
            looked_up: &[],
            mappings: &[],
            group: None,
            guard: None,
            ports: &[],
        });
        r.lines()
            .find(|l| l.contains("ip daddr 10.30.40.40"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let all = [entry(vec![
        other_cluster.clone(),
        far.clone(),
        near.clone(),
    ])];
    let me = Some(NetCoord([0.0, 1.0, 0.0]));
    assert_eq!(
        closest(&all, me),
        "ip daddr 10.30.40.40 dnat ip to 10.18.0.130"
    );
    // Without a coordinate of its own yet: this cluster's before others.
    assert!(closest(&all, None).ends_with("10.18.0.2"));
    // Only another cluster's instance left: that one.
    let only = [entry(vec![other_cluster])];
    assert!(closest(&only, me).ends_with("10.18.64.2"));
}

#[test]
fn with_a_log_group_misses_are_handed_over_and_looked_up_services_logged() {
    let mine = Cidr {
        addr: Ipv4Addr::new(10, 18, 0, 64),
        len: 26,
    };
    let own = ServiceEntry {
        name: "a.b.own.d".into(),
        service: "own".into(),
        rr_ip: Some(u32::from(Ipv4Addr::new(10, 30, 1, 1))),
        closest_ip: None,
        instances: vec![],
        rr_ip6: Some(v6("fdff:2000::7")),
        closest_ip6: None,
    };
    let foreign = ServiceEntry {
        name: "a.b.far.d".into(),
        service: "far".into(),
        rr_ip: Some(u32::from(Ipv4Addr::new(10, 30, 30, 30))),
        closest_ip: None,
        instances: vec![endpoint(0, [10, 18, 64, 2], InstanceState::Running)],
        rr_ip6: None,
        closest_ip6: None,
    };
    // Looked up before the table came (a restarted worker): the table's alone.
    let own_seen = ServiceEntry {
        instances: vec![endpoint(0, [10, 18, 64, 9], InstanceState::Running)],
        ..own.clone()
    };
    let r = ruleset(&Tables {
        table: "t",
        subnet: mine,
        me: None,
        services: &[own],
        looked_up: &[foreign, own_seen],
        mappings: &[],
        group: Some(77),
        guard: None,
        ports: &[],
    });
    for want in [
        "ip daddr 10.30.30.30 log group 77 dnat ip to 10.18.64.2",
        "type filter hook prerouting priority raw; policy accept;",
        "type filter hook output priority raw; policy accept;",
        // The cluster's own service is known even with nothing running.
        "ip daddr 10.30.0.0/16 ip daddr != { 10.30.1.1, 10.30.30.30, 10.30.0.2 } limit rate 50/second burst 50 packets log group 77 drop",
        "ip daddr 10.30.0.0/16 ip daddr != { 10.30.1.1, 10.30.30.30, 10.30.0.2 } drop",
        "ip6 daddr fdff::/17 ip6 daddr != { fdff:2000::7, fdff::2 } limit rate 50/second burst 50 packets log group 77 drop",
    ] {
        assert!(r.contains(want), "{want} missing from\n{r}");
    }
    assert!(
        !r.contains("10.30.1.1 dnat") && !r.contains("10.30.1.1 log group 77 dnat"),
        "nothing to translate to: {r}"
    );
}

#[test]
fn instances_are_kept_from_the_worker_and_the_cluster_s_port() {
    let r = ruleset(&Tables {
        table: "g",
        subnet: Cidr {
            addr: Ipv4Addr::new(10, 18, 0, 0),
            len: 26,
        },
        me: None,
        services: &[],
        looked_up: &[],
        mappings: &[],
        group: None,
        guard: Some(Guard {
            bridge: "gabcdeb",
            cluster: Some("10.31.0.1:10100".parse().unwrap()),
        }),
        ports: &[],
    });
    // Even with no service to translate the table stays, with both chains.
    assert!(
        r.contains("chain guard_in {\n    type filter hook input"),
        "{r}"
    );
    assert!(r.contains("iifname \"gabcdeb\" ct state new drop"), "{r}");
    assert!(
        r.contains("iifname \"gabcdeb\" meta l4proto { icmp, ipv6-icmp } accept"),
        "{r}"
    );
    let fwd = &r[r.find("chain guard_fwd").unwrap()..];
    assert!(
        fwd.contains("iifname \"gabcdeb\" ip daddr 10.31.0.1 udp dport 10100 drop"),
        "{r}"
    );
}

#[test]
fn each_instance_port_sends_only_with_its_own_mac_and_addresses() {
    let ports = [Port {
        link: "g12345v0000abcd".into(),
        mac: [0x02, 0x47, 10, 18, 0, 2],
        v4: Ipv4Addr::new(10, 18, 0, 2),
        v6: Some("fc00::2".parse().unwrap()),
    }];
    let with_ports = Tables {
        table: "grove_g12345",
        subnet: Cidr {
            addr: Ipv4Addr::new(10, 18, 0, 0),
            len: 26,
        },
        me: None,
        services: &[],
        looked_up: &[],
        mappings: &[],
        group: None,
        guard: None,
        ports: &ports,
    };
    let script = ruleset(&with_ports);
    for line in [
        "table bridge grove_g12345 {",
        "iifname \"g12345v0000abcd\" jump p0",
        "ether saddr != 02:47:0a:12:00:02 drop",
        "arp saddr ether != 02:47:0a:12:00:02 drop",
        "arp saddr ip != 10.18.0.2 drop",
        "ip saddr != 10.18.0.2 drop",
        "ip6 saddr != { fe80::47:aff:fe12:2, ::, fc00::2 } drop",
        "nd-neighbor-advert @th,64,128 != { 0xfe8000000000000000470afffe120002, 0xfc000000000000000000000000000002 } drop",
    ] {
        assert!(script.contains(line), "{line:?} not in:\n{script}");
    }
    // Without instances the table goes.
    let none = ruleset(&Tables {
        ports: &[],
        ..with_ports
    });
    assert!(none.starts_with("table bridge grove_g12345\ndelete table bridge grove_g12345\n"));
    assert!(!none.contains("jump"));
}
