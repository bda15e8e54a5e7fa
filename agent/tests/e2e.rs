//! Root and cluster (in this process) with real `grove-agent --runtime sim` processes:
//! an API deploy runs on a worker; SIGKILL that worker and the instance runs on the
//! other one within 8 s.

use clap::Parser;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn http(base: &str, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
    let mut req = ureq::request(method, &format!("{base}{path}")).timeout(Duration::from_secs(20));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    r.into_json().unwrap()
}

fn agent(cluster: std::net::SocketAddr, token: &str, name: &str, dir: &std::path::Path) -> Child {
    agent_at(cluster, token, name, dir, None)
}

fn agent_at(
    cluster: std::net::SocketAddr,
    token: &str,
    name: &str,
    dir: &std::path::Path,
    location: Option<&str>,
) -> Child {
    let c = cluster.to_string();
    let mut args = vec![
        "--runtime",
        "sim",
        "--cluster",
        &c,
        "--name",
        name,
        "--join-token",
        token,
    ];
    if let Some(l) = location {
        args.extend(["--location", l]);
    }
    Command::new(env!("CARGO_BIN_EXE_grove-agent"))
        .args(args)
        .arg("--state-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

fn root_args(dir: &std::path::Path, http: &str, coap: &str) -> grove_root::Args {
    grove_root::Args::parse_from([
        "grove-root",
        "--data-dir",
        dir.join("root").to_str().unwrap(),
        "--admin-password",
        "Admin",
        "--http",
        http,
        "--coap",
        coap,
    ])
}

/// Admin's access token and a cluster join token.
fn admin_and_cluster_token(base: &str) -> (String, String) {
    let login = json!({"username": "Admin", "password": "Admin"});
    let t = http(base, "POST", "/api/auth/login", None, Some(login))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = http(
        base,
        "POST",
        "/api/clusters/token",
        Some(&t),
        Some(json!({})),
    )["token"]
        .as_str()
        .unwrap()
        .to_owned();
    (t, c)
}

fn seed() -> Value {
    serde_json::from_str(include_str!("../../root/tests/seed_sla.json")).unwrap()
}

fn two_workers_active(base: &str, t: &str) -> bool {
    let active = http(base, "GET", "/api/clusters/active", Some(t), None);
    active[0]["aggregation_per_architecture"][0]["active_nodes"].as_u64() == Some(2)
}

fn holds(dir: &std::path::Path, service: &str) -> bool {
    std::fs::read(dir.join("sim-instances.cbor"))
        .map(|b| b.windows(service.len()).any(|w| w == service.as_bytes()))
        .unwrap_or(false)
}

fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_api_deploy_runs_on_a_worker_and_moves_when_the_worker_is_killed() {
    let st = stack("move");
    let (base, t, caddr, wtoken, dir) = (
        st.base.clone(),
        st.admin.clone(),
        st.cluster,
        st.worker_token.clone(),
        st.dir.clone(),
    );
    let (d1, d2) = (dir.join("w1"), dir.join("w2"));
    let mut a1 = agent(caddr, &wtoken, "w1", &d1);
    let mut a2 = agent(caddr, &wtoken, "w2", &d2);
    wait_until(20, "the cluster reporting two workers", || {
        two_workers_active(&base, &t)
    });

    let apps = http(&base, "POST", "/api/application/", Some(&t), Some(seed()));
    let sid = apps[0]["microservices"][1].as_str().unwrap().to_owned();
    let inst = http(
        &base,
        "POST",
        &format!("/api/service/{sid}/instance"),
        Some(&t),
        None,
    );
    assert_eq!(inst["status"], "CLUSTER_SCHEDULED", "{inst}");
    let running = |base: &str| {
        let svc = http(base, "GET", &format!("/api/service/{sid}"), Some(&t), None);
        let i = &svc["instance_list"][0];
        (i["status"].as_str() == Some("RUNNING"))
            .then(|| i["worker_id"].as_str().unwrap_or_default().to_owned())
    };
    let mut first = None;
    wait_until(20, "the instance RUNNING", || {
        first = running(&base);
        first.is_some()
    });
    let first = first.unwrap();
    let (victim, survivor_dir) = if holds(&d1, &sid) {
        (&mut a1, &d2)
    } else {
        (&mut a2, &d1)
    };

    let killed = Instant::now();
    victim.kill().unwrap();
    victim.wait().unwrap();
    wait_until(30, "the instance RUNNING on the other worker", || {
        running(&base).is_some_and(|w| w != first) && holds(survivor_dir, &sid)
    });
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(8), "moved after {took:?}");
    eprintln!("instance RUNNING on the other worker {took:?} after the SIGKILL");
    let _ = a1.kill();
    let _ = a2.kill();
    let _ = a1.wait();
    let _ = a2.wait();
    drop(st);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Root (in-process), cluster (in-process) and a logged-in admin token.
struct Stack {
    base: String,
    admin: String,
    cluster: std::net::SocketAddr,
    worker_token: String,
    dir: std::path::PathBuf,
    _rt: tokio::runtime::Runtime,
}

fn stack(name: &str) -> Stack {
    let dir = std::env::temp_dir().join(format!("grove-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = runtime(2);
    let root = rt
        .block_on(grove_root::start(&root_args(
            &dir,
            "127.0.0.1:0",
            "127.0.0.1:0",
        )))
        .unwrap();
    let base = format!("http://{}", root.http);
    let (admin, ctoken) = admin_and_cluster_token(&base);
    let cdir = dir.join("cluster");
    std::fs::create_dir_all(&cdir).unwrap();
    let mut store = grove_cluster::store::Store::open(&cdir.join("cluster.db")).unwrap();
    let worker_token = grove_cluster::daemon::make_worker_token(&mut store, 600, false).unwrap();
    let socket = rt
        .block_on(tokio::net::UdpSocket::bind("127.0.0.1:0"))
        .unwrap();
    let cluster = socket.local_addr().unwrap();
    let settings = grove_cluster::daemon::Settings {
        root: root.coap,
        name: "edge".into(),
        location: None,
        data_dir: cdir,
        join_token: Some(ctoken),
    };
    rt.block_on(grove_cluster::daemon::start(settings, store, socket))
        .unwrap();
    Stack {
        base,
        admin,
        cluster,
        worker_token,
        dir,
        _rt: rt,
    }
}

#[test]
fn direct_and_geo_constraints_place_through_the_whole_stack() {
    let s = stack("constraints");
    let (d1, d2) = (s.dir.join("munich"), s.dir.join("berlin"));
    let mut a1 = agent_at(
        s.cluster,
        &s.worker_token,
        "munich",
        &d1,
        Some("48.14,11.58"),
    );
    let mut a2 = agent_at(
        s.cluster,
        &s.worker_token,
        "berlin",
        &d2,
        Some("52.52,13.40"),
    );
    wait_until(20, "the cluster reporting two workers", || {
        two_workers_active(&s.base, &s.admin)
    });
    let mut sla = seed();
    // curl only on berlin (direct), nginx within 50 km of Garching (geo: munich).
    sla["applications"][0]["microservices"][0]["constraints"] =
        json!([{"type": "direct", "node": "berlin"}]);
    sla["applications"][0]["microservices"][1]["constraints"] =
        json!([{"type": "geo", "location": "48.26,11.67", "threshold": 50}]);
    let apps = http(
        &s.base,
        "POST",
        "/api/application/",
        Some(&s.admin),
        Some(sla),
    );
    let curl = apps[0]["microservices"][0].as_str().unwrap().to_owned();
    let nginx = apps[0]["microservices"][1].as_str().unwrap().to_owned();
    for _ in 0..2 {
        http(
            &s.base,
            "POST",
            &format!("/api/service/{curl}/instance"),
            Some(&s.admin),
            None,
        );
        http(
            &s.base,
            "POST",
            &format!("/api/service/{nginx}/instance"),
            Some(&s.admin),
            None,
        );
    }
    wait_until(20, "all four instances placed", || {
        let both = |d: &std::path::Path, sid: &str| {
            std::fs::read(d.join("sim-instances.cbor"))
                .map(|b| {
                    b.windows(sid.len())
                        .filter(|w| *w == sid.as_bytes())
                        .count()
                })
                .unwrap_or(0)
        };
        both(&d2, &curl) == 2 && both(&d1, &nginx) == 2
    });
    assert!(
        !holds(&d1, &curl),
        "curl went to munich despite the direct constraint"
    );
    assert!(
        !holds(&d2, &nginx),
        "nginx went to berlin despite the geo constraint"
    );
    for a in [&mut a1, &mut a2] {
        let _ = a.kill();
        let _ = a.wait();
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_root_away_for_60_seconds_loses_nothing_and_is_caught_up_within_a_report() {
    let dir = std::env::temp_dir().join(format!("grove-e2e-{}-outage", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let coap_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root_args = root_args(
        &dir,
        &format!("127.0.0.1:{http_port}"),
        &format!("127.0.0.1:{coap_port}"),
    );
    // The root runs on a runtime of its own, so that dropping it stops the root whole.
    let root_rt = runtime(1);
    let root = root_rt.block_on(grove_root::start(&root_args)).unwrap();
    let base = format!("http://{}", root.http);
    let (t, ctoken) = admin_and_cluster_token(&base);
    let rt = runtime(2);
    let cdir = dir.join("cluster");
    std::fs::create_dir_all(&cdir).unwrap();
    let mut store = grove_cluster::store::Store::open(&cdir.join("cluster.db")).unwrap();
    let wtoken = grove_cluster::daemon::make_worker_token(&mut store, 600, false).unwrap();
    let socket = rt
        .block_on(tokio::net::UdpSocket::bind("127.0.0.1:0"))
        .unwrap();
    let caddr = socket.local_addr().unwrap();
    let settings = grove_cluster::daemon::Settings {
        root: root.coap,
        name: "edge".into(),
        location: None,
        data_dir: cdir,
        join_token: Some(ctoken),
    };
    rt.block_on(grove_cluster::daemon::start(settings, store, socket))
        .unwrap();
    let (d1, d2) = (dir.join("w1"), dir.join("w2"));
    let mut a1 = agent(caddr, &wtoken, "w1", &d1);
    let mut a2 = agent(caddr, &wtoken, "w2", &d2);
    wait_until(20, "the cluster reporting two workers", || {
        two_workers_active(&base, &t)
    });
    let apps = http(&base, "POST", "/api/application/", Some(&t), Some(seed()));
    let sid = apps[0]["microservices"][1].as_str().unwrap().to_owned();
    http(
        &base,
        "POST",
        &format!("/api/service/{sid}/instance"),
        Some(&t),
        None,
    );
    let worker = |base: &str| {
        let svc = http(base, "GET", &format!("/api/service/{sid}"), Some(&t), None);
        let i = &svc["instance_list"][0];
        (i["status"].as_str() == Some("RUNNING"))
            .then(|| i["worker_id"].as_str().unwrap_or_default().to_owned())
    };
    let mut first = None;
    wait_until(20, "the instance RUNNING", || {
        first = worker(&base);
        first.is_some()
    });
    let first = first.unwrap();

    // The root goes away; meanwhile the worker running the instance dies and the cluster
    // moves it on its own.
    drop(root_rt);
    let (victim, survivor_dir) = if holds(&d1, &sid) {
        (&mut a1, &d2)
    } else {
        (&mut a2, &d1)
    };
    victim.kill().unwrap();
    victim.wait().unwrap();
    wait_until(
        20,
        "the cluster moving the instance without the root",
        || holds(survivor_dir, &sid),
    );
    // The outage itself: the root stays down for 60 s in all.
    std::thread::sleep(Duration::from_secs(60));

    // The root returns on the same addresses with the same data: nothing is lost and the
    // move is known within one report period (5 s).
    let root_rt = runtime(1);
    root_rt.block_on(grove_root::start(&root_args)).unwrap();
    let back = Instant::now();
    wait_until(30, "the root catching up", || {
        worker(&base).is_some_and(|w| w != first)
    });
    let took = back.elapsed();
    assert!(took < Duration::from_secs(6), "caught up after {took:?}");
    assert_eq!(
        http(&base, "GET", "/api/applications/", Some(&t), None)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let active = http(&base, "GET", "/api/clusters/active", Some(&t), None);
    assert_eq!(
        active.as_array().unwrap().len(),
        1,
        "the cluster is still active"
    );
    eprintln!("root caught up {took:?} after its return");
    for a in [&mut a1, &mut a2] {
        let _ = a.kill();
        let _ = a.wait();
    }
    drop(rt);
    drop(root_rt);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cluster_killed_and_restarted_keeps_its_workers_and_instances() {
    let dir =
        std::env::temp_dir().join(format!("grove-e2e-{}-cluster-restart", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let root_rt = runtime(1);
    let root = root_rt
        .block_on(grove_root::start(&root_args(
            &dir,
            "127.0.0.1:0",
            "127.0.0.1:0",
        )))
        .unwrap();
    let base = format!("http://{}", root.http);
    let (t, ctoken) = admin_and_cluster_token(&base);
    let cdir = dir.join("cluster");
    std::fs::create_dir_all(&cdir).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let caddr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let settings = grove_cluster::daemon::Settings {
        root: root.coap,
        name: "edge".into(),
        location: None,
        data_dir: cdir.clone(),
        join_token: Some(ctoken),
    };
    let start_cluster = |settings: grove_cluster::daemon::Settings| {
        let rt = runtime(1);
        let store = grove_cluster::store::Store::open(&cdir.join("cluster.db")).unwrap();
        let socket = rt.block_on(tokio::net::UdpSocket::bind(caddr)).unwrap();
        rt.block_on(grove_cluster::daemon::start(settings, store, socket))
            .unwrap();
        rt
    };
    let wtoken = {
        let mut store = grove_cluster::store::Store::open(&cdir.join("cluster.db")).unwrap();
        grove_cluster::daemon::make_worker_token(&mut store, 600, false).unwrap()
    };
    let cluster_rt = start_cluster(settings.clone());
    let (d1, d2) = (dir.join("w1"), dir.join("w2"));
    let mut a1 = agent(caddr, &wtoken, "w1", &d1);
    let mut a2 = agent(caddr, &wtoken, "w2", &d2);
    wait_until(20, "the cluster reporting two workers", || {
        two_workers_active(&base, &t)
    });
    let apps = http(&base, "POST", "/api/application/", Some(&t), Some(seed()));
    let sid = apps[0]["microservices"][1].as_str().unwrap().to_owned();
    http(
        &base,
        "POST",
        &format!("/api/service/{sid}/instance"),
        Some(&t),
        None,
    );
    let state = |n: u32| {
        let svc = http(&base, "GET", &format!("/api/service/{sid}"), Some(&t), None);
        let i = &svc["instance_list"][n as usize];
        (
            i["status"].as_str().unwrap_or_default().to_owned(),
            i["worker_id"].as_str().unwrap_or_default().to_owned(),
        )
    };
    wait_until(20, "the instance RUNNING", || state(0).0 == "RUNNING");
    let before = state(0);
    let files =
        |d: &std::path::Path| std::fs::read(d.join("sim-instances.cbor")).unwrap_or_default();
    let (f1, f2) = (files(&d1), files(&d2));

    // The cluster dies without a word (its runtime is dropped: no shutdown code runs)
    // and comes back on the same address with the same database, no token needed.
    drop(cluster_rt);
    let cluster_rt = start_cluster(grove_cluster::daemon::Settings {
        join_token: None,
        ..settings
    });
    // Its workers are still its workers: a report made after the loss timeout (6 s)
    // still counts both, so their heartbeats reached the restarted cluster.
    let restarted = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    wait_until(
        30,
        "a report after the loss timeout with both workers",
        || {
            let active = http(&base, "GET", "/api/clusters/active", Some(&t), None);
            active[0]["last_modified_timestamp"]
                .as_u64()
                .is_some_and(|ts| ts >= restarted + 7)
                && active[0]["aggregation_per_architecture"][0]["active_nodes"].as_u64() == Some(2)
        },
    );
    // And what runs is not deployed again.
    assert_eq!(state(0), before, "the instance kept its worker and status");
    assert_eq!((files(&d1), files(&d2)), (f1, f2), "nothing was redeployed");
    // And it keeps working: a new instance reaches a worker and runs.
    http(
        &base,
        "POST",
        &format!("/api/service/{sid}/instance"),
        Some(&t),
        None,
    );
    wait_until(40, "a new instance RUNNING after the restart", || {
        state(1).0 == "RUNNING"
    });
    for a in [&mut a1, &mut a2] {
        let _ = a.kill();
        let _ = a.wait();
    }
    drop(cluster_rt);
    drop(root_rt);
    let _ = std::fs::remove_dir_all(&dir);
}
