//! The root's decisions on a store in memory, at chosen moments: no socket, no clock.

use super::*;
use crate::metrics::Metrics;
use crate::store::{AppRow, InstanceRow, NewService, ServiceRow, Store};
use grove_proto::msg::{self, Capacity, NodeCommand};
use std::collections::HashSet;

/// Unix seconds of the scenes below.
const T0: i64 = 1_800_000_000;

fn capacity() -> Vec<u8> {
    msg::to_cbor(&vec![Capacity {
        arch: std::env::consts::ARCH.into(),
        virtualization: "container".into(),
        nodes: 2,
        free_millicpus: 8000,
        free_memory_mib: 8192,
        max_free_millicpus: 4000,
        max_free_memory_mib: 4096,
        free_vgpus: None,
        max_free_vgpus: None,
    }])
}

/// A store with clusters `a` (id 1) and `b` (id 2), both reporting at `T0` with room,
/// and an application with one service (`extra` merged into its microservice).
fn scene(extra: serde_json::Value) -> (Store, AppRow, ServiceRow) {
    let mut db = Store::in_memory().unwrap();
    for name in ["a", "b"] {
        let c = db.register_cluster(name, None).unwrap();
        db.record_report(c.id, Some(&capacity()), T0).unwrap();
    }
    let mut ms = serde_json::json!({
        "microservice_name": "web", "microservice_namespace": "test",
        "virtualization": "container", "code": "docker.io/library/nginx:latest",
        "memory": 100, "vcpus": 1
    });
    if let (Some(m), Some(e)) = (ms.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    let owner = db
        .create_user("alice", "", "-", &["ROLE_APP_PROVIDER".into()], None)
        .unwrap();
    let (app, services) = db
        .create_application(
            &owner.id,
            "shop",
            "test",
            "",
            "{}",
            &[NewService {
                name: "web".into(),
                namespace: "test".into(),
                spec: ms.to_string(),
                rr_ip: None,
                closest_ip: None,
                rr_ip_v6: None,
                closest_ip_v6: None,
            }],
        )
        .unwrap();
    let s = services.into_iter().next().unwrap();
    (db, app, s)
}

fn place(db: &mut Store, app: &AppRow, s: &ServiceRow, now: i64) -> InstanceRow {
    place_new_instance(db, &Metrics::default(), app, s, now).unwrap()
}

#[test]
fn placement_picks_a_reporting_cluster_and_fails_with_oakestras_reason_when_none_is() {
    let (mut db, app, s) = scene(serde_json::json!({}));
    let i = place(&mut db, &app, &s, T0 + 1);
    assert_eq!(i.status, "CLUSTER_SCHEDULED");
    assert!(i.cluster.is_some());
    // Every cluster silent for longer than the loss timeout: nowhere to go.
    let i = place(&mut db, &app, &s, T0 + CLUSTER_LOST_AFTER_SECS + 1);
    assert_eq!((i.status.as_str(), i.cluster), ("FAILED", None));
    assert_eq!(i.reason.as_deref(), Some("NoActiveClusterWithCapacity"));
}

#[test]
fn placement_honours_a_direct_constraint_naming_a_cluster() {
    let (mut db, app, s) = scene(serde_json::json!({
        "constraints": [{"type": "direct", "cluster": "b"}]
    }));
    let b = db
        .clusters()
        .unwrap()
        .into_iter()
        .find(|c| c.name == "b")
        .unwrap();
    assert_eq!(place(&mut db, &app, &s, T0 + 1).cluster, Some(b.id));
}

#[test]
fn cluster_views_count_a_cluster_active_until_its_loss_timeout() {
    let (db, _, _) = scene(serde_json::json!({}));
    let rows = db.clusters().unwrap();
    let active = |now| {
        cluster_views(&rows, now)
            .iter()
            .filter(|v| v.active)
            .count()
    };
    assert_eq!(active(T0 + CLUSTER_LOST_AFTER_SECS - 1), 2);
    assert_eq!(active(T0 + CLUSTER_LOST_AFTER_SECS), 0);
    // A shorter loss timeout (the `--cluster-lost-after` of tests) counts sooner.
    assert_eq!(
        views_at(&rows, T0 + 5, 5)
            .iter()
            .filter(|v| v.active)
            .count(),
        0
    );
}

#[test]
fn a_lost_clusters_instances_move_to_one_that_reports_and_fail_when_none_does() {
    let (mut db, app, s) = scene(serde_json::json!({}));
    let i = place(&mut db, &app, &s, T0 + 1);
    let from = i.cluster.unwrap();
    let other = if from == 1 { 2 } else { 1 };
    // Only the other cluster keeps reporting.
    db.record_report(other, Some(&capacity()), T0 + 20).unwrap();
    let changed = reschedule_lost(&mut db, T0 + 21, CLUSTER_LOST_AFTER_SECS);
    assert_eq!(changed.clusters, HashSet::from([from, other]));
    assert_eq!(changed.services, HashSet::from([s.id.clone()]));
    let moved = &db.instances(Some(&s.id)).unwrap()[0];
    assert_eq!(moved.cluster, Some(other));
    // Nothing left to move from the lost one: a second pass changes nothing.
    let again = reschedule_lost(&mut db, T0 + 22, CLUSTER_LOST_AFTER_SECS);
    assert!(again.clusters.is_empty(), "{again:?}");
    // Both lost: the instance fails with the scheduler's reason.
    let changed = reschedule_lost(&mut db, T0 + 60, CLUSTER_LOST_AFTER_SECS);
    assert_eq!(changed.clusters, HashSet::from([other]));
    let failed = &db.instances(Some(&s.id)).unwrap()[0];
    assert_eq!((failed.status.as_str(), failed.cluster), ("FAILED", None));
}

fn row(number: u32, generation: i64, status: &str) -> InstanceRow {
    InstanceRow {
        service: "s".into(),
        number,
        status: status.into(),
        reason: None,
        cluster: Some(1),
        node: None,
        ip: None,
        generation,
        updated_at: 0,
        ip6: None,
        addr: None,
        addr6: None,
    }
}

#[test]
fn a_rollout_adds_one_new_instance_at_a_time_and_removes_an_old_one_after_it_runs() {
    // Two old instances, target two: first one new instance is added.
    let old = [row(0, 1, "RUNNING"), row(1, 1, "RUNNING")];
    assert_eq!(next_rollout_step(2, 2, &old), Rollout::Add);
    // It does not run yet: wait.
    let mut three = old.to_vec();
    three.push(row(2, 2, "CREATING"));
    assert_eq!(next_rollout_step(2, 2, &three), Rollout::Wait);
    // It runs: one old one goes (the service had one extra, never one fewer).
    three[2].status = "RUNNING".into();
    assert_eq!(next_rollout_step(2, 2, &three), Rollout::Remove(0));
    // Ended instances count for nothing; with no old one left, it is over.
    let done = [
        row(0, 1, "UNDEPLOYED"),
        row(2, 2, "RUNNING"),
        row(3, 2, "RUNNING"),
    ];
    assert_eq!(next_rollout_step(2, 2, &done), Rollout::Finished);
}

#[test]
fn rollout_steps_applied_to_the_store_replace_every_old_instance() {
    let (mut db, app, s) = scene(serde_json::json!({}));
    for _ in 0..2 {
        place(&mut db, &app, &s, T0 + 1);
    }
    let spec = serde_json::json!({
        "microservice_name": "web", "microservice_namespace": "test",
        "virtualization": "container", "code": "docker.io/library/nginx:1.27",
        "memory": 100, "vcpus": 1
    });
    db.replace_service_spec(&s.id, &spec.to_string()).unwrap();
    let metrics = Metrics::default();
    let mut steps = 0;
    while !db.rollouts().unwrap().is_empty() {
        steps += 1;
        assert!(steps < 20, "the rollout does not end");
        let changed = rollout_step(&mut db, &metrics, T0 + 2);
        // Each new instance runs as soon as it is placed (its cluster reported it).
        for i in db.instances(Some(&s.id)).unwrap() {
            if i.status == "CLUSTER_SCHEDULED" {
                db.set_instance_status(&s.id, i.number, "RUNNING", None, i.cluster, None)
                    .unwrap();
            }
        }
        let live = db
            .instances(Some(&s.id))
            .unwrap()
            .into_iter()
            .filter(|i| i.status == "RUNNING")
            .count();
        assert!((2..=3).contains(&live), "{live} running after {changed:?}");
    }
    let generation = db.service(&s.id).unwrap().generation;
    let instances = db.instances(Some(&s.id)).unwrap();
    assert_eq!(instances.len(), 2, "{instances:?}");
    assert!(instances.iter().all(|i| i.generation == generation));
}

fn peer(n: u32) -> msg::NodePeer {
    msg::NodePeer {
        node: msg::NodeId(n),
        underlay: format!("192.0.2.{n}:10100"),
        subnet_v4: msg::Ipv4Prefix {
            addr: 0x0A12_0000 + (n << 6),
            len: 26,
        },
        subnet_v6: msg::Ipv6Prefix {
            addr: [0; 16],
            len: 64,
        },
    }
}

#[test]
fn the_directory_makes_two_clusters_reach_each_other_only_while_one_wants_the_others_service() {
    let mut reach = ClusterPeering::default();
    assert!(reach.workers(1, vec![peer(1)]));
    assert!(reach.workers(2, vec![peer(2)]));
    assert!(!reach.workers(2, vec![peer(2)]), "the same workers again");
    // Cluster 1 observes a service running on cluster 2: each reaches the other.
    assert!(reach.observe(1, "svc".into(), true));
    let hosts = vec![(1, HashSet::from([2]))];
    let mut changed = reach.recompute(&hosts);
    changed.sort_unstable();
    assert_eq!(changed, vec![1, 2]);
    assert_eq!(reach.peers_of(1), vec![peer(2)]);
    assert_eq!(reach.peers_of(2), vec![peer(1)]);
    assert!(reach.recompute(&hosts).is_empty(), "nothing new");
    // The observation ends: neither reaches the other any more.
    assert!(reach.observe(1, "svc".into(), false));
    let mut changed = reach.recompute(&[]);
    changed.sort_unstable();
    assert_eq!(changed, vec![1, 2]);
    assert!(reach.peers_of(1).is_empty() && reach.peers_of(2).is_empty());
}

#[test]
fn a_service_hosted_where_it_is_wanted_needs_no_reach() {
    let mut reach = ClusterPeering::default();
    reach.workers(1, vec![peer(1)]);
    reach.observe(1, "svc".into(), true);
    assert!(reach.recompute(&[(1, HashSet::from([1]))]).is_empty());
}

#[test]
fn a_clusters_command_set_holds_its_instances_with_their_specs_and_entries_their_addresses() {
    let (mut db, app, s) = scene(serde_json::json!({"stop_grace_s": 9}));
    let i = place(&mut db, &app, &s, T0 + 1);
    let here = i.cluster.unwrap();
    let other = if here == 1 { 2 } else { 1 };
    let set = commands_for(&db, here, 7, vec![peer(5)]);
    assert_eq!(set.generation, 7);
    assert_eq!(set.peers, Some(vec![peer(5)]));
    let [NodeCommand::Deploy(spec)] = set.commands.as_slice() else {
        panic!("{:?}", set.commands);
    };
    assert_eq!(spec.name, "shop.test.web.test");
    assert_eq!(spec.stop_grace_s, Some(9));
    assert_eq!(spec.ip, i.ip);
    assert!(commands_for(&db, other, 7, vec![]).commands.is_empty());
    // The directory lists it with its cluster and the service's addresses.
    let entry = entry_for(&db, &app, &s);
    assert_eq!(entry.rr_ip, Some(s.rr_ip));
    assert_eq!(entry.instances.len(), 1);
    assert_eq!(entry.instances[0].cluster, msg::ClusterId(here));
}

/// The orchestration imports neither the API nor the link that call it, and nothing
/// but the root's entry point imports the API: no import cycle runs through it.
#[test]
fn orchestration_imports_neither_the_api_nor_the_link_and_only_lib_imports_the_api() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    assert!(
        files.len() > 10,
        "sources not found under {}",
        src.display()
    );
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&f).unwrap();
        // (This file names what it looks for.)
        if rel == "orchestrate/tests.rs" {
            continue;
        }
        if rel.starts_with("orchestrate/") {
            for banned in [
                "crate::api",
                "crate::clusters_link",
                "crate::state",
                "crate::coap_api",
            ] {
                assert!(!text.contains(banned), "{rel} imports {banned}");
            }
        }
        if !rel.starts_with("api/") && rel != "lib.rs" {
            assert!(!text.contains("crate::api"), "{rel} imports the API");
        }
    }
}
