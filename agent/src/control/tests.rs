use super::*;

#[test]
fn tokens_are_checked_for_shape() {
    assert!(parse_token("0011223344556677.abcd").is_ok());
    assert!(matches!(
        parse_token("0011.abcd"),
        Err(ControlError::BadToken)
    ));
    assert!(matches!(
        parse_token("nonsense"),
        Err(ControlError::BadToken)
    ));
    assert!(matches!(
        parse_token("0011223344556677.xyz"),
        Err(ControlError::BadToken)
    ));
}

#[test]
fn a_late_older_command_set_is_ignored() {
    let set = |generation| {
        msg::to_cbor(&NodeCommands {
            generation,
            commands: Vec::new(),
            peers: None,
            services: None,
            ..Default::default()
        })
    };
    let t0 = std::time::Instant::now();
    let mut lower: grove_proto::link::lower::Lower<()> =
        grove_proto::link::lower::Lower::new(LowerConfig::default(), t0, true, &mut OsRandom);
    let mut take = |g| lower.commands(g);
    assert!(newer(&set(5), &mut take).is_some());
    assert!(
        newer(&set(4), &mut take).is_none(),
        "older than the one applied"
    );
    assert!(
        newer(&set(5), &mut take).is_some(),
        "the same again is harmless"
    );
    assert!(newer(&set(9), &mut take).is_some());
    assert!(newer(b"not cbor", &mut take).is_none());
    assert_eq!(lower.generation(), Some(9));
}

#[test]
fn a_set_without_a_changed_part_asks_for_everything_again() {
    let peer = |n: u32, at: &str| msg::NodePeer {
        node: NodeId(n),
        underlay: at.into(),
        subnet_v4: msg::Ipv4Prefix {
            addr: n << 6,
            len: 26,
        },
        subnet_v6: msg::Ipv6Prefix {
            addr: [0; 16],
            len: 120,
        },
    };
    let one = vec![peer(1, "10.0.0.1")];
    let two = vec![peer(1, "10.0.0.1"), peer(2, "10.0.0.2")];
    let mut held = HeldParts::default();
    let mut full = NodeCommands {
        peers: Some(one.clone()),
        services: Some(Vec::new()),
        peers_digest: Some(msg::digest_of(&one)),
        services_digest: Some([2; 8]),
        ..Default::default()
    };
    assert!(!held_parts(&mut full, &mut held));
    let mut same = NodeCommands {
        peers_digest: Some(msg::digest_of(&one)),
        services_digest: Some([2; 8]),
        ..Default::default()
    };
    assert!(
        !held_parts(&mut same, &mut held),
        "nothing left out changed"
    );
    // A delta from the peers held: applied, and handed on whole.
    let mut delta = NodeCommands {
        peers_digest: Some(msg::digest_of(&two)),
        services_digest: Some([2; 8]),
        peers_base: Some(msg::digest_of(&one)),
        peers_added: Some(vec![peer(2, "10.0.0.2")]),
        ..Default::default()
    };
    assert!(!held_parts(&mut delta, &mut held));
    assert_eq!(delta.peers.as_ref(), Some(&two));
    assert_eq!(held.peers, two);
    // A delta from peers not held, a delta that does not end at its digest, and a
    // changed part left out: each asks for everything.
    let mut wrong_base = delta.clone();
    wrong_base.peers = None;
    assert!(held_parts(&mut wrong_base, &mut held));
    let mut bad_end = NodeCommands {
        peers_digest: Some([9; 8]),
        peers_base: Some(msg::digest_of(&two)),
        peers_added: Some(vec![]),
        ..Default::default()
    };
    assert!(held_parts(&mut bad_end, &mut held));
    let mut missed = NodeCommands {
        peers_digest: Some(msg::digest_of(&two)),
        services_digest: Some([3; 8]),
        ..Default::default()
    };
    assert!(
        held_parts(&mut missed, &mut held),
        "the services changed unseen"
    );
    let mut old_cluster = NodeCommands::default();
    assert!(
        !held_parts(&mut old_cluster, &mut held),
        "no digests: nothing to check"
    );
}

#[test]
fn the_instance_digest_ignores_order() {
    let a = (
        InstanceRef {
            service: "s".into(),
            instance: 0,
        },
        msg::InstanceState::Running,
    );
    let b = (
        InstanceRef {
            service: "s".into(),
            instance: 1,
        },
        msg::InstanceState::Running,
    );
    assert_eq!(digest(&[a.clone(), b.clone()]), digest(&[b, a.clone()]));
    assert_ne!(digest(std::slice::from_ref(&a)), digest(&[]));
}
