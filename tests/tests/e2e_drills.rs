//! The whole system on the multi-host test bed (each host a network namespace made by
//! the test): the seed's SLA unchanged through the HTTP API as the seed's README does
//! it, failure drills, and a bad link. Images are the seed's, as `grove up` makes its
//! stand-ins, served by a real `docker-registry` as the workers' `docker.io` mirror.
//! Needs root (fails under CI without it).

#[path = "support/seed.rs"]
mod seed;
mod support;

use grove_tests::relay::{self, Link, Shape};
use grove_tests::testbed::TestBed;
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Agent, Cluster, Root, scratch, wait_until};

/// The worker (index into `agents`) whose state holds a container of `service`, and
/// that container's PID.
fn container_of(agents: &[Agent], service: &str) -> Option<(usize, String)> {
    agents.iter().enumerate().find_map(|(i, a)| {
        let d = std::fs::read_dir(a.dir.join("containers")).ok()?;
        let pid = d
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(service))
            .and_then(|e| std::fs::read_to_string(e.path().join("pid")).ok())?;
        Some((i, pid.split_whitespace().next()?.to_owned()))
    })
}

/// `curl http://10.30.30.30/` run by the client inside its container (its every
/// namespace and its root, as `docker exec` would); the body, or empty.
fn curl_from(pid: &str) -> String {
    let out = Command::new("nsenter")
        .args([
            "--target", pid, "--mount", "--uts", "--ipc", "--net", "--pid",
        ])
        .args(["--root", "--wd", "curl", "-s", "http://10.30.30.30/"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Every instance of `services` RUNNING: their workers (`worker_id`), in order.
fn all_running(root: &Root, services: &[String]) -> Option<Vec<String>> {
    let mut workers = Vec::new();
    for s in services {
        let list = root.instances(s);
        if list.is_empty() {
            return None;
        }
        for i in list {
            if i["status"] != "RUNNING" {
                return None;
            }
            workers.push(i["worker_id"].as_str()?.to_owned());
        }
    }
    Some(workers)
}

#[test]
fn the_seed_unchanged_through_the_api_and_a_worker_host_killed() {
    let Some(bed) = TestBed::new("sd", 3) else {
        return;
    };
    if grove_tests::tool("nsenter").is_none() {
        return;
    }
    let dir = scratch("seed");
    bed.enter(0);
    let Some(registry) = seed::seed_registry(&bed, &dir) else {
        return;
    };
    let flags = support::native_flags(registry.addr);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (root, cluster, mut agents) = support::control_and_workers(&bed, &dir, &flags);

    // As the seed's README: log in (Root::start did), post the SLA unchanged, one
    // instance per service, poll until RUNNING.
    let services = root.deploy_seed(|_| {});
    for s in &services {
        root.add_instance(s);
    }
    let started = Instant::now();
    wait_until(60, "every instance RUNNING", || {
        all_running(&root, &services).is_some()
    });
    eprintln!(
        "the seed's application RUNNING {:?} after the instances were asked for",
        started.elapsed()
    );
    let (client, server) = (&services[0], &services[1]);
    let (_, pid) = container_of(&agents, client).expect("the client's container");
    let mut answer = String::new();
    wait_until(20, "the client's answer through 10.30.30.30", || {
        answer = curl_from(&pid);
        answer.starts_with("Welcome to")
    });
    assert!(answer.contains(&format!("{server}-0")), "{answer}");

    // A worker host killed: every process of it (agent, supervisor, containers) and
    // its namespace. What ran there runs on the other worker within 8 s.
    let (victim, _) = container_of(&agents, server).expect("the server's container");
    let before = all_running(&root, &services).unwrap();
    let victim_node = root.instances(server)[0]["worker_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = &mut agents[victim];
    a.daemon.kill();
    let mut pids: Vec<String> = std::fs::read_dir(a.dir.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("pid")).ok())
        .filter_map(|p| p.split_whitespace().next().map(str::to_owned))
        .collect();
    pids.extend(std::fs::read_to_string(a.dir.join("supervisor.pid")).ok());
    let killed = Instant::now();
    for p in &pids {
        let _ = Command::new("kill").args(["-9", p.trim()]).status();
    }
    let _ = Command::new("ip")
        .args(["netns", "del", &bed.hosts[1 + victim].ns])
        .status();
    wait_until(
        20,
        "every instance RUNNING away from the killed host",
        || all_running(&root, &services).is_some_and(|w| w.iter().all(|n| *n != victim_node)),
    );
    let took = killed.elapsed();
    eprintln!("instances of the killed host RUNNING elsewhere {took:?} after ({before:?})");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let survivor = 1 - victim;
    // (The killed host's state directory still lists its dead containers.)
    let (_, pid) = container_of(std::slice::from_ref(&agents[survivor]), client)
        .expect("the client's container on the surviving worker");
    wait_until(20, "the client's answer through 10.30.30.30 again", || {
        curl_from(&pid).starts_with("Welcome to")
    });

    // DELETE /api/application/<id>: every instance, link and rule goes.
    let apps = root.api("GET", "/api/applications/", None);
    let app = apps[0]["applicationID"].as_str().unwrap().to_owned();
    root.api("DELETE", &format!("/api/application/{app}"), None);
    let host = &bed.hosts[1 + survivor];
    wait_until(
        30,
        "no container, instance link or translation rule left",
        || {
            let containers = std::fs::read_dir(agents[survivor].dir.join("containers"))
                .map(|d| d.count())
                .unwrap_or(0);
            let (_, links) = host.run(&["ip", "-o", "link", "show"]);
            let (_, rules) = host.run(&["nft", "list", "ruleset"]);
            let instance_links = links
                .lines()
                .filter_map(|l| l.split(':').nth(1))
                .any(|n| n.trim().len() >= 15 && n.trim().as_bytes()[6] == b'v');
            containers == 0 && !instance_links && !rules.contains("dnat ip")
        },
    );
    let apps = root.api("GET", "/api/applications/", None);
    assert!(apps.as_array().is_some_and(Vec::is_empty), "{apps}");
    drop((agents, cluster, root, registry));
    let _ = std::fs::remove_dir_all(&dir);
    drop(bed);
}

#[test]
fn the_seed_deploys_over_a_bad_link_between_cluster_and_worker() {
    let Some(bed) = TestBed::new("bl", 2) else {
        return;
    };
    let dir = scratch("bad-link");
    bed.enter(0);
    let Some(registry) = seed::seed_registry(&bed, &dir) else {
        return;
    };
    let root = Root::start(&dir, &[]);
    let cluster_addr = SocketAddr::new(bed.hosts[0].ip.into(), support::free_udp().port());
    let cluster = Cluster::start_at(&dir, "edge", &root, cluster_addr, &[]);
    // 20 % of datagrams lost and 100 ms added, each way, between the worker and its
    // cluster (a relay on host 0 in their path; this kernel has no netem).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let bad = Link::symmetric(Shape {
        delay: Duration::from_millis(100),
        jitter: Duration::ZERO,
        loss_pct: 20.0,
    });
    let front = SocketAddr::new(bed.hosts[0].ip.into(), 0);
    let link = rt
        .block_on(relay::start(front, cluster_addr, bad, 7))
        .unwrap();
    let flags = support::native_flags(registry.addr);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let agent = Agent::start_in(
        Some(&bed.hosts[1]),
        &dir,
        "far",
        link.addr,
        &cluster.worker_token,
        &flags,
    );
    wait_until(60, "the worker over the bad link", || {
        root.active_workers() == 1
    });
    let services = root.deploy_seed(|_| {});
    let started = Instant::now();
    for s in &services {
        root.add_instance(s);
    }
    wait_until(120, "every instance RUNNING over the bad link", || {
        all_running(&root, &services).is_some()
    });
    let took = started.elapsed();
    let dropped = link.stats.dropped();
    eprintln!(
        "the seed's application RUNNING {took:?} after it was asked for, over 100 ms and 20 % loss each way ({dropped} datagrams dropped)"
    );
    let apps = root.api("GET", "/api/applications/", None);
    let app = apps[0]["applicationID"].as_str().unwrap().to_owned();
    root.api("DELETE", &format!("/api/application/{app}"), None);
    wait_until(60, "the containers gone over the bad link", || {
        std::fs::read_dir(agent.dir.join("containers"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    });
    drop((agent, link, cluster, root, registry));
    let _ = std::fs::remove_dir_all(&dir);
    drop(bed);
}

#[test]
fn two_clusters_place_by_direct_and_geo_and_a_killed_cluster_s_instances_move() {
    // Control plane on host 0; four workers (simulated containers: placement is the
    // point) on hosts 1–4, two per cluster.
    let Some(bed) = TestBed::new("tc", 5) else {
        return;
    };
    let dir = scratch("two-clusters");
    bed.enter(0);
    let root = Root::start(&dir, &[]);
    let place = |name: &str, loc: &str| {
        let addr = SocketAddr::new(bed.hosts[0].ip.into(), support::free_udp().port());
        let c = Cluster::start_at(&dir, name, &root, addr, &["--location", loc]);
        (c, addr)
    };
    let (munich, munich_addr) = place("munich", "48.14,11.58");
    let workers = [
        ("m1", 1, "48.26,11.67"),
        ("m2", 2, "48.15,11.57"),
        ("b1", 3, "52.52,13.40"),
        ("b2", 4, "52.50,13.45"),
    ];
    let start = |(name, host, loc): (&str, usize, &str), addr: SocketAddr, token: &str| {
        Agent::start_in(
            Some(&bed.hosts[host]),
            &dir,
            name,
            addr,
            token,
            &["--location", loc],
        )
    };
    let mut agents: Vec<Agent> = workers[..2]
        .iter()
        .map(|w| start(*w, munich_addr, &munich.worker_token))
        .collect();
    wait_until(30, "munich's workers", || root.active_workers() == 2);
    // An unconstrained service while munich is the only cluster: it lands there.
    let ids = root.deploy_seed(|sla| {
        let ms = &mut sla["applications"][0]["microservices"];
        ms[0]["port"] = json!(null);
        ms[1]["port"] = json!(null);
    });
    let loose = &ids[0];
    root.add_instance(loose);
    wait_until(20, "the unconstrained instance RUNNING in munich", || {
        all_running(&root, std::slice::from_ref(loose)).is_some()
    });
    let munich_id = root.instances(loose)[0]["cluster_id"].clone();

    let (berlin, berlin_addr) = place("berlin", "52.52,13.40");
    agents.extend(
        workers[2..]
            .iter()
            .map(|w| start(*w, berlin_addr, &berlin.worker_token)),
    );
    wait_until(30, "all four workers", || root.active_workers() == 4);

    // `direct` to a cluster, and `geo` near Berlin.
    root.deploy_seed(|sla| {
        let app = &mut sla["applications"][0];
        app["application_name"] = json!("placed");
        let ms = &mut app["microservices"];
        ms[0]["port"] = json!(null);
        ms[1]["port"] = json!(null);
        ms[0]["addresses"] = json!({});
        ms[1]["addresses"] = json!({});
        ms[0]["constraints"] = json!([{"type": "direct", "cluster": "berlin"}]);
        ms[1]["constraints"] = json!([{"type": "geo", "location": "52.50,13.40", "threshold": 20}]);
    });
    // (The API answers a post with every application of the user.)
    let apps = root.api("GET", "/api/applications/", None);
    let ids2: Vec<String> = apps
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["application_name"] == "placed")
        .expect("the second application")["microservices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    for s in &ids2 {
        root.add_instance(s);
    }
    wait_until(20, "the constrained instances RUNNING", || {
        all_running(&root, &ids2).is_some()
    });
    let berlin_id = root.instances(&ids2[0])[0]["cluster_id"].clone();
    assert_ne!(
        berlin_id,
        munich_id,
        "{}\n{}\n{}",
        root.api("GET", "/api/clusters", None),
        root.api("GET", &format!("/api/service/{}", ids2[0]), None),
        root.api("GET", &format!("/api/service/{loose}"), None)
    );
    assert_eq!(
        root.instances(&ids2[1])[0]["cluster_id"],
        berlin_id,
        "geo: near Berlin"
    );
    assert!(agents[2].holds(&ids2[1]) + agents[3].holds(&ids2[1]) == 1);

    // munich's cluster killed: its instance RUNNING in berlin within 20 s.
    let mut munich = munich;
    munich.daemon.kill();
    let killed = Instant::now();
    wait_until(40, "the instance RUNNING in the other cluster", || {
        root.instances(loose)
            .first()
            .is_some_and(|i| i["status"] == "RUNNING" && i["cluster_id"] == berlin_id)
    });
    let took = killed.elapsed();
    eprintln!("a killed cluster's instance RUNNING in the other cluster {took:?} after");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    drop((agents, munich, berlin, root));
    let _ = std::fs::remove_dir_all(&dir);
    drop(bed);
}

/// Each container of `agent`: (container id, PID and start time), sorted.
fn containers(agent: &Agent) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(agent.dir.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = std::fs::read_to_string(e.path().join("pid")).ok()?;
            // Only live ones (a dead container's directory may linger until removed).
            let p = pid.split_whitespace().next()?.to_owned();
            Path::new(&format!("/proc/{p}")).exists().then(|| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    pid.trim().to_owned(),
                )
            })
        })
        .collect();
    v.sort();
    v
}

#[test]
fn daemons_sigkilled_and_the_root_away_for_a_minute_lose_nothing_and_run_nothing_twice() {
    let Some(bed) = TestBed::new("dk", 3) else {
        return;
    };
    let dir = scratch("drills");
    bed.enter(0);
    let Some(registry) = seed::seed_registry(&bed, &dir) else {
        return;
    };
    let flags = support::native_flags(registry.addr);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (mut root, mut cluster, mut agents) = support::control_and_workers(&bed, &dir, &flags);
    let services = root.deploy_seed(|_| {});
    // One instance each: the seed maps host ports (9080, 6080), so a worker holds at
    // most one of each, and one worker can take over everything.
    for s in &services {
        root.add_instance(s);
    }
    wait_until(60, "every instance RUNNING", || {
        all_running(&root, &services).is_some()
    });
    let running = |agents: &[Agent]| agents.iter().map(containers).collect::<Vec<_>>();
    let before = running(&agents);
    let placed = all_running(&root, &services).unwrap();
    assert_eq!(before.iter().map(Vec::len).sum::<usize>(), 2, "{before:?}");

    // Each daemon SIGKILLed and restarted in turn: the same containers (same
    // processes) keep running, none twice, and the API says what it said.
    root.daemon.kill();
    root.daemon.restart();
    root.wait_serving();
    cluster.daemon.kill();
    cluster.daemon.restart();
    for a in &mut agents {
        a.daemon.kill();
        a.daemon.restart();
    }
    wait_until(
        30,
        "the workers back with their cluster, the cluster with the root",
        || {
            root.active_workers() == 2
                && agents
                    .iter()
                    .all(|a| a.daemon.log().matches("converged").count() >= 2)
        },
    );
    assert_eq!(
        running(&agents),
        before,
        "the same containers, none restarted or added"
    );
    assert_eq!(all_running(&root, &services), Some(placed.clone()));

    // The root away for a minute; meanwhile a worker's agent dies and the cluster
    // moves its instances on its own. The other worker's containers are untouched;
    // the root, back, knows the move within a report.
    root.daemon.kill();
    let gone = Instant::now();
    let victim = agents
        .iter()
        .position(|a| !containers(a).is_empty())
        .unwrap();
    let survivor = 1 - victim;
    agents[victim].daemon.kill();
    wait_until(
        30,
        "the cluster moving the instances without the root",
        || containers(&agents[survivor]).len() == 2,
    );
    let untouched = containers(&agents[survivor]);
    std::thread::sleep(Duration::from_secs(60).saturating_sub(gone.elapsed()));
    root.daemon.restart();
    let back = Instant::now();
    root.wait_serving();
    wait_until(30, "the root catching up", || {
        all_running(&root, &services).is_some_and(|w| w.iter().all(|n| w[0] == *n))
    });
    eprintln!("the root caught up {:?} after its return", back.elapsed());
    assert!(back.elapsed() < Duration::from_secs(10));
    let now = containers(&agents[survivor]);
    assert!(
        untouched.iter().all(|c| now.contains(c)),
        "the workloads ran on untouched:\n{untouched:?}\n{now:?}"
    );
    // The dead agent back: what moved away is stopped there, so nothing runs twice.
    agents[victim].daemon.restart();
    wait_until(30, "the returning worker stopping what moved away", || {
        containers(&agents[victim]).is_empty()
    });
    assert_eq!(containers(&agents[survivor]).len(), 2);
    drop((agents, cluster, root, registry));
    let _ = std::fs::remove_dir_all(&dir);
    drop(bed);
}
