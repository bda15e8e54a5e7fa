use super::*;
use grove_proto::link::PeerKey;
use grove_proto::link::upper::KeyStore;

#[test]
fn a_worker_with_room_for_more_instances_gets_an_aligned_larger_subnet() {
    assert_eq!(
        [
            None,
            Some(61),
            Some(62),
            Some(100),
            Some(125),
            Some(126),
            Some(2000)
        ]
        .map(subnet_size),
        [1, 1, 2, 2, 2, 4, 16]
    );
    let mut s = Store::in_memory().unwrap();
    let v = vec!["container".to_owned()];
    let nn = |name: &'static str, subnet_size: u32| NewNode {
        name,
        arch: "x86_64",
        cpus: 4,
        memory_mib: 4096,
        virtualizations: &v,
        location: None,
        secret: b"s",
        salt: b"t",
        subnet_size,
        limits: None,
    };
    let a = s.register_node(&nn("a", 1), 8).unwrap();
    let big = s.register_node(&nn("big", 2), 8).unwrap();
    let c = s.register_node(&nn("c", 1), 8).unwrap();
    let huge = s.register_node(&nn("huge", 4), 8).unwrap();
    let got = [a, big, c, huge].map(|n| (n.subnet, n.subnet_size));
    assert_eq!(got, [(0, 1), (2, 2), (1, 1), (4, 4)]);
    assert!(matches!(
        s.register_node(&nn("more", 2), 8),
        Err(StoreError::Exhausted(_))
    ));
}

#[test]
fn nodes_keep_their_subnet_and_instances_their_placement() {
    let mut s = Store::in_memory().unwrap();
    let v = vec!["container".to_owned()];
    let nn = |name: &'static str, arch: &'static str| NewNode {
        name,
        arch,
        cpus: 4,
        memory_mib: 4096,
        virtualizations: &v,
        location: None,
        secret: b"s",
        salt: b"t",
        subnet_size: 1,
        limits: None,
    };
    let a = s.register_node(&nn("a", "x86_64"), 2).unwrap();
    let b = s.register_node(&nn("b", "x86_64"), 2).unwrap();
    assert_eq!((a.subnet, b.subnet), (0, 1));
    let a2 = s.register_node(&nn("a", "aarch64"), 2).unwrap();
    assert_eq!((a2.id, a2.subnet, a2.arch.as_str()), (a.id, 0, "aarch64"));
    assert!(matches!(
        s.register_node(&nn("c", "x"), 2),
        Err(StoreError::Exhausted(_))
    ));
    assert!(s.upsert_instance("svc", 0, b"spec").unwrap());
    assert!(
        !s.upsert_instance("svc", 0, b"spec").unwrap(),
        "unchanged spec is no change"
    );
    s.place("svc", 0, Some(b.id), "NODE_SCHEDULED", None)
        .unwrap();
    assert!(
        !s.report_status("svc", 0, a.id, "RUNNING", None, None)
            .unwrap(),
        "only the node it is on speaks for it"
    );
    assert!(
        s.report_status("svc", 0, b.id, "RUNNING", None, Some(7))
            .unwrap()
    );
    assert_eq!(s.instances().unwrap()[0].status, "RUNNING");
    assert_eq!(s.instance_node("svc", 0).unwrap(), Some(b.id));
    assert_eq!(s.instance_node("svc", 1).unwrap(), None);
    assert_eq!(s.remove_instance("svc", 0).unwrap(), Some(b.id));
    assert_eq!(s.instance_node("svc", 0).unwrap(), None);
    assert!(s.instances().unwrap().is_empty());
}

#[test]
fn a_new_key_waits_until_used_and_eviction_hides_the_worker() {
    let mut s = Store::in_memory().unwrap();
    let n = NewNode {
        name: "w1",
        arch: "x86_64",
        cpus: 2,
        memory_mib: 1024,
        virtualizations: &[],
        location: None,
        secret: b"old",
        salt: b"s0",
        subnet_size: 1,
        limits: None,
    };
    let row = s.register_node(&n, 64).unwrap();
    assert_eq!((row.key_gen, row.pending.clone()), (0, None));
    s.request_rekey(row.id).unwrap();
    assert!(s.node(row.id).unwrap().rekey);
    assert_eq!(s.rekey_requested().unwrap(), [row.id]);
    let candidate = |secret: &[u8], salt: &[u8]| PeerKey {
        generation: 0,
        secret: secret.to_vec(),
        salt: salt.to_vec(),
    };
    let (k, fresh) = s.begin_rekey(row.id, &candidate(b"new", b"s1")).unwrap();
    assert_eq!(
        (k.generation, k.secret.as_slice(), fresh),
        (1, &b"new"[..], true)
    );
    let (again, fresh) = s.begin_rekey(row.id, &candidate(b"other", b"s2")).unwrap();
    assert_eq!(
        (again.generation, again.secret, again.salt, fresh),
        (1, b"new".to_vec(), b"s1".to_vec(), false),
        "the same pending key"
    );
    let r = s.node(row.id).unwrap();
    assert_eq!(
        (r.secret.as_slice(), r.key_gen),
        (&b"old"[..], 0),
        "the old key stays in use"
    );
    assert_eq!(r.pending, Some((b"new".to_vec(), b"s1".to_vec())));
    assert!(!s.commit_rekey(row.id, 2).unwrap(), "no such generation");
    assert!(s.commit_rekey(row.id, 1).unwrap());
    let r = s.node(row.id).unwrap();
    assert_eq!(
        (r.secret.as_slice(), r.key_gen, r.pending, r.rekey),
        (&b"new"[..], 1, None, false)
    );
    assert!(!s.commit_rekey(row.id, 1).unwrap(), "once");
    assert_eq!(s.node_named("w1").unwrap(), row.id);
    s.evict_node(row.id).unwrap();
    assert!(s.nodes().unwrap().is_empty());
    assert_eq!(s.evicted_nodes().unwrap(), [(row.id, 1)]);
    s.delete_node(row.id).unwrap();
    assert!(s.evicted_nodes().unwrap().is_empty());
    assert!(s.node_named("w1").is_err());
}

#[test]
fn worker_tokens_expire_and_are_single_use_when_asked() {
    let mut s = Store::in_memory().unwrap();
    s.create_worker_token("t1", b"x", 100, true).unwrap();
    assert_eq!(s.live_worker_tokens(50).unwrap().len(), 1);
    assert!(s.use_worker_token("t1", 50).unwrap());
    assert!(!s.use_worker_token("t1", 50).unwrap());
    s.create_worker_token("t2", b"x", 100, false).unwrap();
    assert!(s.use_worker_token("t2", 50).unwrap() && s.use_worker_token("t2", 60).unwrap());
    assert!(!s.use_worker_token("t2", 100).unwrap(), "expired");
}
