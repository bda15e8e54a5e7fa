//! The control plane end to end as users run it: a real `grove-root`, real
//! `grove-cluster`s and `grove-agent --runtime sim` processes on loopback, driven
//! through the HTTP API; links shaped by the link emulator; daemons killed with SIGKILL.

mod support;

use grove_tests::relay::{self, Link, Shape};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{Agent, Cluster, Root, scratch, wait_until};

/// Instance `n` of a service: (status, worker id).
fn state(root: &Root, service: &str, n: usize) -> (String, String) {
    let list = root.instances(service);
    let i = list.get(n).cloned().unwrap_or(Value::Null);
    let s = |k: &str| i[k].as_str().unwrap_or_default().to_owned();
    (
        s("status"),
        i["worker_id"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| i["worker_id"].to_string()),
    )
}

fn running(root: &Root, service: &str, n: usize) -> Option<String> {
    let (st, w) = state(root, service, n);
    (st == "RUNNING").then_some(w)
}

/// Post the seed's SLA changed by `edit`, without its port mappings: these tests put
/// several instances of a service on one worker, and a host port has one user there.
fn deploy(root: &Root, edit: impl FnOnce(&mut Value)) -> Vec<String> {
    root.deploy_seed(|sla| {
        for ms in sla["applications"][0]["microservices"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            ms["port"] = json!("");
        }
        edit(sla);
    })
}

/// Root, one cluster, agents `names` joined directly, each with room for more
/// instances than any test asks for (the machine running the tests may be small).
fn one_cluster(test: &str, names: &[&str]) -> (std::path::PathBuf, Root, Cluster, Vec<Agent>) {
    let dir = scratch(test);
    let root = Root::start(&dir, &[]);
    let cluster = Cluster::start(&dir, "edge", &root, &[]);
    let agents: Vec<Agent> = names
        .iter()
        .map(|n| {
            let room = ["--cpus", "16", "--memory-mib", "16384"];
            Agent::start(&dir, n, cluster.addr, &cluster.worker_token, &room)
        })
        .collect();
    let want = names.len() as u64;
    wait_until(30, "the cluster reporting every worker", || {
        root.active_workers() == want
    });
    (dir, root, cluster, agents)
}

#[test]
fn an_agent_killed_has_its_instances_running_on_another_worker_within_8_s() {
    let (dir, root, _cluster, mut agents) = one_cluster("move", &["w1", "w2"]);
    let sid = deploy(&root, |_| {})[1].clone();
    let inst = root.add_instance(&sid);
    assert_eq!(inst["status"], "CLUSTER_SCHEDULED", "{inst}");
    let mut first = None;
    wait_until(20, "the instance RUNNING", || {
        first = running(&root, &sid, 0);
        first.is_some()
    });
    let first = first.unwrap();
    let victim = agents.iter().position(|a| a.holds(&sid) == 1).unwrap();
    let survivor = 1 - victim;

    let killed = Instant::now();
    agents[victim].daemon.kill();
    wait_until(30, "the instance RUNNING on the other worker", || {
        running(&root, &sid, 0).is_some_and(|w| w != first) && agents[survivor].holds(&sid) == 1
    });
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(8), "moved after {took:?}");
    eprintln!("instance RUNNING on the other worker {took:?} after the SIGKILL");

    // The killed worker comes back: it is told to stop what was moved away.
    agents[victim].daemon.restart();
    wait_until(
        20,
        "the returning worker dropping the moved instance",
        || agents[victim].holds(&sid) == 0,
    );
    assert_eq!(agents[survivor].holds(&sid), 1);

    // With every worker gone the root hears the cluster has none left (and so stops
    // sending it instances).
    for a in &mut agents {
        a.daemon.kill();
    }
    wait_until(30, "the root seeing no active worker", || {
        root.active_workers() == 0
    });
    drop((root, agents));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn direct_and_geo_constraints_place_through_the_whole_stack() {
    let dir = scratch("constraints");
    let root = Root::start(&dir, &[]);
    let cluster = Cluster::start(&dir, "edge", &root, &[]);
    let t = &cluster.worker_token;
    let munich = Agent::start(
        &dir,
        "munich",
        cluster.addr,
        t,
        &["--location", "48.14,11.58"],
    );
    let berlin = Agent::start(
        &dir,
        "berlin",
        cluster.addr,
        t,
        &["--location", "52.52,13.40"],
    );
    wait_until(30, "two workers", || root.active_workers() == 2);
    // curl only on berlin (direct), nginx within 50 km of Garching (geo: munich).
    let ids = deploy(&root, |sla| {
        let ms = &mut sla["applications"][0]["microservices"];
        ms[0]["constraints"] = json!([{"type": "direct", "node": "berlin"}]);
        ms[1]["constraints"] = json!([{"type": "geo", "location": "48.26,11.67", "threshold": 50}]);
    });
    let (curl, nginx) = (&ids[0], &ids[1]);
    for _ in 0..2 {
        root.add_instance(curl);
        root.add_instance(nginx);
    }
    wait_until(20, "all four instances placed", || {
        berlin.holds(curl) == 2 && munich.holds(nginx) == 2
    });
    assert_eq!(
        munich.holds(curl),
        0,
        "curl went to munich despite `direct`"
    );
    assert_eq!(berlin.holds(nginx), 0, "nginx went to berlin despite `geo`");
    drop((root, munich, berlin));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn latency_placement_follows_the_measured_round_trips_not_the_map() {
    let dir = scratch("latency");
    let root = Root::start(&dir, &[]);
    let cluster = Cluster::start(&dir, "edge", &root, &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Each worker reaches the cluster through a link of its own: `near` 10 ms round
    // trip, `far` 120 ms (with jitter), although on the map `far` (Garching) is closer
    // to the users in Munich than `near` (Augsburg). `gateway` sits in Munich with the
    // users; too small to host, it stands for them.
    let link = |one_way_ms: u64, jitter_ms: u64| {
        Link::symmetric(Shape {
            delay: Duration::from_millis(one_way_ms),
            jitter: Duration::from_millis(jitter_ms),
            loss_pct: 0.0,
        })
    };
    let any = "127.0.0.1:0".parse().unwrap();
    let near_link = rt
        .block_on(relay::start(any, cluster.addr, link(5, 1), 11))
        .unwrap();
    let far_link = rt
        .block_on(relay::start(any, cluster.addr, link(60, 10), 12))
        .unwrap();
    let t = &cluster.worker_token;
    let _gateway = Agent::start(
        &dir,
        "gateway",
        cluster.addr,
        t,
        &["--location", "48.14,11.58", "--cpus", "1"],
    );
    let near = Agent::start(
        &dir,
        "near",
        near_link.addr,
        t,
        &["--location", "48.37,10.90", "--cpus", "5"],
    );
    let far = Agent::start(
        &dir,
        "far",
        far_link.addr,
        t,
        &["--location", "48.25,11.65", "--cpus", "2"],
    );
    wait_until(30, "three workers", || root.active_workers() == 3);
    // nginx needs 2 CPUs and at most 40 ms to Munich: only `near` qualifies.
    let ids = deploy(&root, |sla| {
        let ms = &mut sla["applications"][0]["microservices"];
        ms[1]["vcpus"] = json!(2);
        ms[1]["constraints"] =
            json!([{"type": "latency", "location": "48.14,11.58", "threshold": 40}]);
        ms[0]["vcpus"] = json!(2);
    });
    let (curl, nginx) = (&ids[0], &ids[1]);
    root.add_instance(nginx);
    wait_until(30, "nginx RUNNING", || running(&root, nginx, 0).is_some());
    assert_eq!(
        near.holds(nginx),
        1,
        "nginx is not on the low-latency worker"
    );
    assert_eq!(far.holds(nginx), 0);
    // Without the constraint the best fit is `far` (it would be full, `near` would keep
    // 1 of 3 spare CPUs): so it was the constraint that chose.
    root.add_instance(curl);
    wait_until(30, "curl RUNNING", || running(&root, curl, 0).is_some());
    assert_eq!(far.holds(curl), 1, "best fit without a latency constraint");
    drop((root, near, far, near_link, far_link));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn capacity_and_spread_hold_through_the_whole_stack() {
    let dir = scratch("capacity");
    let root = Root::start(&dir, &[]);
    let cluster = Cluster::start(&dir, "edge", &root, &[]);
    let t = &cluster.worker_token;
    let small = Agent::start(&dir, "small", cluster.addr, t, &["--cpus", "1"]);
    let big = Agent::start(&dir, "big", cluster.addr, t, &["--cpus", "4"]);
    let other = Agent::start(&dir, "other", cluster.addr, t, &["--cpus", "4"]);
    wait_until(30, "three workers", || root.active_workers() == 3);
    let ids = deploy(&root, |sla| {
        sla["applications"][0]["microservices"][1]["vcpus"] = json!(2);
    });
    let (curl, nginx) = (&ids[0], &ids[1]);
    // Three replicas of curl (1 CPU each) spread over the three workers.
    for _ in 0..3 {
        root.add_instance(curl);
    }
    wait_until(20, "three curl replicas RUNNING", || {
        (0..3).all(|n| running(&root, curl, n).is_some())
    });
    assert_eq!(
        [small.holds(curl), big.holds(curl), other.holds(curl)],
        [1, 1, 1],
        "replicas of one service spread over the workers"
    );
    // Now `small` is full and `big`/`other` have 3 CPUs free each: nginx (2 CPUs)
    // fits one on each, never on `small`, and a third finds no room.
    for _ in 0..3 {
        root.add_instance(nginx);
    }
    wait_until(30, "two nginx RUNNING and one FAILED", || {
        let s: Vec<String> = (0..3).map(|n| state(&root, nginx, n).0).collect();
        s.iter().filter(|s| *s == "RUNNING").count() == 2 && s.iter().any(|s| s == "FAILED")
    });
    assert_eq!(small.holds(nginx), 0, "a full worker was given more");
    assert_eq!((big.holds(nginx), other.holds(nginx)), (1, 1));
    let failed = root
        .instances(nginx)
        .into_iter()
        .find(|i| i["status"] == "FAILED")
        .unwrap();
    // The cluster's reason; or the root's, had a report shown it the full cluster first.
    assert!(
        ["NO_WORKER_CAPACITY", "NoActiveClusterWithCapacity"]
            .contains(&failed["status_detail"].as_str().unwrap_or_default()),
        "{failed}"
    );
    drop((root, small, big, other));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_instance_stuck_in_creating_is_placed_again_elsewhere() {
    let dir = scratch("stuck");
    let root = Root::start(&dir, &[]);
    let cluster = Cluster::start(&dir, "edge", &root, &["--create-timeout-secs", "5"]);
    let t = &cluster.worker_token;
    let a = Agent::start(&dir, "a", cluster.addr, t, &["--cpus", "16"]);
    let b = Agent::start(&dir, "b", cluster.addr, t, &["--cpus", "16"]);
    wait_until(30, "two workers", || root.active_workers() == 2);
    // `sim:stuck` hangs in CREATING wherever it runs (an image pull that never ends).
    let ids = deploy(&root, |sla| {
        sla["applications"][0]["microservices"][1]["cmd"] = json!(["sim:stuck"]);
    });
    let nginx = &ids[1];
    root.add_instance(nginx);
    wait_until(20, "the instance CREATING on a worker", || {
        state(&root, nginx, 0).0 == "CREATING"
    });
    let (first, second) = if a.holds(nginx) == 1 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let w1 = state(&root, nginx, 0).1;
    wait_until(20, "the instance taken to the other worker", || {
        second.holds(nginx) == 1 && first.holds(nginx) == 0
    });
    wait_until(10, "the API showing the new worker", || {
        let (st, w) = state(&root, nginx, 0);
        w != w1 && st == "CREATING"
    });
    drop((root, a, b, cluster));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cluster_killed_with_sigkill_resumes_with_its_workers_and_instances() {
    let (dir, root, mut cluster, agents) = one_cluster("cluster-kill", &["w1", "w2"]);
    let sid = deploy(&root, |_| {})[1].clone();
    root.add_instance(&sid);
    wait_until(20, "the instance RUNNING", || {
        running(&root, &sid, 0).is_some()
    });
    let before = state(&root, &sid, 0);
    let records: Vec<Vec<u8>> = agents.iter().map(Agent::records).collect();

    cluster.daemon.kill();
    cluster.daemon.restart();
    let restarted = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Its workers are still its workers: a report made after the loss timeout (6 s)
    // still counts both, so their heartbeats reached the restarted cluster.
    wait_until(
        30,
        "a report after the loss timeout with both workers",
        || {
            let active = root.api("GET", "/api/clusters/active", None);
            active[0]["last_modified_timestamp"]
                .as_u64()
                .is_some_and(|ts| ts >= restarted + 7)
                && root.active_workers() == 2
        },
    );
    assert_eq!(
        state(&root, &sid, 0),
        before,
        "the instance kept its worker"
    );
    let now: Vec<Vec<u8>> = agents.iter().map(Agent::records).collect();
    assert_eq!(now, records, "nothing was deployed again or stopped");
    // And it keeps placing.
    root.add_instance(&sid);
    wait_until(30, "a new instance RUNNING after the restart", || {
        running(&root, &sid, 1).is_some()
    });
    drop((root, cluster, agents));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_root_away_for_60_seconds_loses_nothing_and_is_caught_up_within_a_report() {
    let (dir, mut root, _cluster, mut agents) = one_cluster("root-away", &["w1", "w2"]);
    let sid = deploy(&root, |_| {})[1].clone();
    root.add_instance(&sid);
    let mut first = None;
    wait_until(20, "the instance RUNNING", || {
        first = running(&root, &sid, 0);
        first.is_some()
    });
    let first = first.unwrap();

    // The root dies; meanwhile the worker running the instance dies too and the cluster
    // moves the instance on its own.
    root.daemon.kill();
    let victim = agents.iter().position(|a| a.holds(&sid) == 1).unwrap();
    agents[victim].daemon.kill();
    let survivor = &agents[1 - victim];
    wait_until(
        20,
        "the cluster moving the instance without the root",
        || survivor.holds(&sid) == 1,
    );
    // The outage itself: the root stays down for 60 s in all.
    std::thread::sleep(Duration::from_secs(60));

    // The root returns with the same data: nothing is lost, and the move is known
    // within one report period (5 s).
    root.daemon.restart();
    let back = Instant::now();
    root.wait_serving();
    wait_until(30, "the root catching up", || {
        running(&root, &sid, 0).is_some_and(|w| w != first)
    });
    let took = back.elapsed();
    assert!(took < Duration::from_secs(6), "caught up after {took:?}");
    let apps = root.api("GET", "/api/applications/", None);
    assert_eq!(apps.as_array().unwrap().len(), 1, "the application is kept");
    let active = root.api("GET", "/api/clusters/active", None);
    assert_eq!(active.as_array().unwrap().len(), 1, "the cluster is active");
    eprintln!("root caught up {took:?} after its return");
    drop((root, agents));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn workers_look_services_up_in_their_cluster_and_are_told_of_changes_even_without_the_root() {
    use grove_proto::coap::{Code, Config, Request, SendOptions};
    use grove_proto::msg::{self, InstanceState, ServiceEntry};
    use grove_proto::paths;

    let (dir, mut root, cluster, mut agents) = one_cluster("directory", &["w1", "w2"]);
    let nginx = deploy(&root, |_| {})[1].clone();
    root.add_instance(&nginx);
    root.add_instance(&nginx);
    wait_until(20, "two nginx RUNNING", || {
        (0..2).all(|n| running(&root, &nginx, n).is_some())
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The test joins as a worker (too small to be given anything) to ask as one.
        let c = grove_tests::client(Config::default()).await;
        let probe = grove_agent::control::Settings {
            cluster: cluster.addr,
            name: "probe".into(),
            join_token: Some(cluster.worker_token.clone()),
            state_dir: dir.join("probe"),
            location: None,
            max_instances: None,
            cpus: Some(1),
            memory_mib: Some(16),
            limits: None,
            tick: grove_agent::control::TICK,
        };
        let reg = grove_agent::control::join(&c, &probe).await.unwrap();
        let ctx = grove_agent::control::link_context(&reg, &dir.join("probe.seq")).unwrap();
        let key = c.add_context(ctx).await.unwrap();
        let secure = || SendOptions::secure(key.clone());
        let running_in = |e: &ServiceEntry| {
            e.instances
                .iter()
                .filter(|i| i.state == InstanceState::Running)
                .count()
        };

        let name = paths::service("clientsrvr.test.nginx.test");
        let mut obs = c
            .observe(cluster.addr, Request::get(&name), secure())
            .await
            .unwrap();
        assert_eq!(obs.first.code, Code::CONTENT);
        let e: ServiceEntry = msg::from_cbor(&obs.first.payload).unwrap();
        assert_eq!(
            (e.service.as_str(), e.rr_ip),
            (nginx.as_str(), Some(0x0A1E_1E1E))
        );
        assert_eq!(running_in(&e), 2, "{e:?}");

        let ip = paths::service_by_ip("10.30.30.30".parse().unwrap());
        let r = c
            .request(cluster.addr, Request::get(&ip), secure())
            .await
            .unwrap();
        let by_ip: ServiceEntry = msg::from_cbor(&r.payload).unwrap();
        assert_eq!(by_ip.service, nginx);
        let r = c
            .request(
                cluster.addr,
                Request::get(&paths::service("no.such.service.here")),
                secure(),
            )
            .await
            .unwrap();
        assert_eq!(r.code, Code::NOT_FOUND);
        // Without a worker's credentials nobody learns anything.
        let r = c
            .request(cluster.addr, Request::get(&name), SendOptions::default())
            .await
            .unwrap();
        assert_eq!(r.code, Code::UNAUTHORIZED);

        // A third instance: the observing worker is told.
        root.add_instance(&nginx);
        let mut next = async |what: &str, want: &dyn Fn(&ServiceEntry) -> bool| {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let n = tokio::time::timeout_at(deadline, obs.notifications.recv())
                    .await
                    .unwrap_or_else(|_| panic!("no notification: {what}"))
                    .expect("observation ended");
                let e: ServiceEntry = msg::from_cbor(&n.payload).unwrap();
                if want(&e) {
                    return e;
                }
            }
        };
        next("a third instance RUNNING", &|e| running_in(e) == 3).await;

        // The root goes away and a worker dies: the cluster moves its instances and
        // tells the observer on its own.
        root.daemon.kill();
        let victim = agents.iter().position(|a| a.holds(&nginx) > 0).unwrap();
        let registered: msg::NodeRegistered =
            msg::from_cbor(&std::fs::read(agents[victim].dir.join("node.cbor")).unwrap()).unwrap();
        let dead = format!("node-{}", registered.node.0);
        agents[victim].daemon.kill();
        next("the dead worker's instances RUNNING elsewhere", &|e| {
            running_in(e) == 3 && e.instances.iter().all(|i| i.worker != dead)
        })
        .await;
    });
    drop((root, agents, cluster));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rolling_update_replaces_instances_on_the_workers_without_dropping_below_the_count() {
    let (dir, root, _cluster, agents) = one_cluster("rolling", &["w1", "w2"]);
    let nginx = deploy(&root, |_| {})[1].clone();
    root.add_instance(&nginx);
    root.add_instance(&nginx);
    wait_until(20, "two nginx RUNNING", || {
        (0..2).all(|n| running(&root, &nginx, n).is_some())
    });
    let mut ms = support::seed()["applications"][0]["microservices"][1].clone();
    ms["memory"] = json!(256);
    root.api("PUT", &format!("/api/service/{nginx}"), Some(ms));
    let mut fewest = usize::MAX;
    wait_until(60, "both instances replaced by RUNNING new ones", || {
        let list = root.instances(&nginx);
        let up = list.iter().filter(|i| i["status"] == "RUNNING").count();
        fewest = fewest.min(up);
        list.len() == 2
            && list
                .iter()
                .all(|i| i["status"] == "RUNNING" && i["generation"] == 2)
    });
    assert!(fewest >= 2, "only {fewest} RUNNING during the rollout");
    // The workers run exactly the new ones.
    wait_until(10, "the old instances gone from the workers", || {
        agents.iter().map(|a| a.holds(&nginx)).sum::<usize>() == 2
    });
    drop((root, agents));
    let _ = std::fs::remove_dir_all(&dir);
}
