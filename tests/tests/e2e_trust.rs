//! Trust over time, with every daemon a real process: worker join tokens (none, bad,
//! expired, revoked, used), eviction, re-keying without downtime, and an eavesdropper
//! on the worker's link replaying what it recorded.

mod support;

use grove_proto::coap::driver::{self, Router};
use grove_proto::coap::{Code, Config, Endpoint, Request, SendOptions};
use grove_proto::msg::{self, NodeRegistered};
use grove_proto::oscore::{ContextParams, MemoryContextStore, PersistedState, SecurityContext};
use grove_proto::paths;
use grove_tests::relay::{self, Link};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Agent, Cluster, Root, bin, scratch, wait_until};

/// `grove-cluster --data-dir DIR ARGS…`: its output, failing the test if it fails.
fn cli(cluster: &Cluster, args: &[&str]) -> String {
    let out = Command::new(bin("grove-cluster"))
        .arg("--data-dir")
        .arg(&cluster.dir)
        .args(args)
        .output()
        .expect("grove-cluster");
    assert!(
        out.status.success(),
        "grove-cluster {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The id the cluster gave worker `name`, from `grove-cluster node ls`.
fn node_id(cluster: &Cluster, name: &str) -> Option<u32> {
    cli(cluster, &["node", "ls"])
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&name))
        .and_then(|f| f.first()?.parse().ok())
}

/// A worker's KEY column in `grove-cluster node ls`.
fn key_of(cluster: &Cluster, name: &str) -> String {
    cli(cluster, &["node", "ls"])
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .map(|l| l.split_whitespace().skip(5).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[test]
fn registration_without_a_live_token_is_refused_and_creates_nothing() {
    let dir = scratch("trust-tokens");
    let root = Root::start(&dir, &[]);
    let cluster = Cluster::start(&dir, "edge", &root, &[]);
    // The test cluster's own reusable token works (the control case below).
    let expired = cli(&cluster, &["token", "--expires-in-secs", "1"])
        .trim()
        .to_owned();
    let revoked = cli(&cluster, &["token"]).trim().to_owned();
    let id = revoked.split('.').next().unwrap().to_owned();
    assert!(cli(&cluster, &["token", "revoke", &id]).contains("revoked"));
    let ls = cli(&cluster, &["token", "ls"]);
    assert!(!ls.contains(&id), "a revoked token is listed:\n{ls}");
    assert!(
        !ls.contains(expired.split('.').nth(1).unwrap()),
        "token ls shows a secret:\n{ls}"
    );
    let expired_id = expired.split('.').next().unwrap().to_owned();
    wait_until(10, "the short token to expire", || {
        cli(&cluster, &["token", "ls"])
            .lines()
            .any(|l| l.starts_with(&expired_id) && l.split_whitespace().nth(1) == Some("false"))
    });
    let forged = "0011223344556677.00112233445566778899aabbccddeeff";
    let cases: [(&str, Option<&str>, &str); 4] = [
        ("none", None, "no --join-token"),
        ("forged", Some(forged), "does not know this join token"),
        ("expired", Some(&expired), "join token"),
        ("revoked", Some(&revoked), "join token"),
    ];
    std::thread::scope(|s| {
        let tries: Vec<_> = cases
            .iter()
            .map(|(name, token, _)| {
                let d = dir.clone();
                s.spawn(move || support::join_attempt(&d, name, cluster.addr, *token))
            })
            .collect();
        for ((name, _, why), t) in cases.iter().zip(tries) {
            let (stayed, said) = t.join().unwrap();
            assert!(!stayed, "{name}: the worker joined:\n{said}");
            assert!(
                said.contains(why),
                "{name}: the refusal does not say why:\n{said}"
            );
            assert!(
                !dir.join(name).join("node.cbor").exists(),
                "{name}: credentials kept"
            );
        }
    });
    assert_eq!(node_id(&cluster, "none"), None);
    for (name, ..) in &cases {
        assert_eq!(node_id(&cluster, name), None, "{name} was registered");
    }
    assert_eq!(root.active_workers(), 0);
    // A single-use token joins one worker, then no other.
    let once = cli(&cluster, &["token"]).trim().to_owned();
    let (stayed, said) = support::join_attempt(&dir, "first", cluster.addr, Some(&once));
    assert!(stayed, "a live token was refused:\n{said}");
    let (stayed, said) = support::join_attempt(&dir, "second", cluster.addr, Some(&once));
    assert!(
        !stayed && said.contains("expired, used or revoked"),
        "{said}"
    );
    assert!(node_id(&cluster, "first").is_some() && node_id(&cluster, "second").is_none());

    // Key material stays private to its daemon, and no log holds any of it.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    for (file, want) in [
        (dir.join("root"), 0o700),
        (dir.join("root/jwt.key"), 0o600),
        (dir.join("root/root.db"), 0o600),
        (dir.join("root/root.db-wal"), 0o600),
        (cluster.dir.clone(), 0o700),
        (cluster.dir.join("cluster.db"), 0o600),
        (cluster.dir.join("cluster.db-wal"), 0o600),
        (dir.join("first/node.cbor"), 0o600),
    ] {
        assert_eq!(mode(&file).ok(), Some(want), "{}", file.display());
    }
    let reg = registration(&dir, "first");
    let creds = reg.credentials.expect("credentials");
    let secrets = [
        grove_proto::util::hex(&creds.master_secret),
        once.split('.').nth(1).unwrap().to_owned(),
        revoked.split('.').nth(1).unwrap().to_owned(),
    ];
    for log in ["root.log", "edge.log"] {
        let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{log} holds a secret");
        }
    }
}

/// Worker `name`'s stored registration (its key).
fn registration(dir: &Path, name: &str) -> NodeRegistered {
    msg::from_cbor(&std::fs::read(dir.join(name).join("node.cbor")).expect("node.cbor"))
        .expect("a registration")
}

/// Ask the cluster for worker `reg`'s commands with `reg`'s key (see [`probe_key`]).
fn probe(cluster: SocketAddr, reg: &NodeRegistered) -> Code {
    let t = Instant::now();
    let creds = reg.credentials.clone().expect("credentials");
    let code = probe_key(cluster, creds, &paths::node_commands(reg.node));
    eprintln!("probe answered {code} in {:?}", t.elapsed());
    code
}

/// GET `path` at `server` under `creds`, from a client of our own whose sequence
/// numbers start far above any the key's holder used (so only a missing key, not the
/// replay window, can refuse it). The answer's code.
fn probe_key(server: SocketAddr, creds: msg::Credentials, path: &str) -> Code {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (h, _) = driver::spawn(sock, Endpoint::new(Config::default()), Router::new()).unwrap();
        let high = PersistedState {
            seq_ceiling: 1 << 30,
            window_used: false,
        };
        let params = ContextParams::from(creds);
        let ctx = SecurityContext::new(&params, Box::new(MemoryContextStore(Some(high)))).unwrap();
        let key = h.add_context(ctx).await.unwrap();
        h.request(server, Request::get(path), SendOptions::secure(key))
            .await
            .expect("an answer")
            .code
    })
}

fn running_on(root: &Root, service: &str) -> Vec<String> {
    root.instances(service)
        .iter()
        .filter(|i| i["status"] == "RUNNING")
        .map(|i| i["worker_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The seed's nginx service without its host port (several instances on a worker).
fn nginx(root: &Root) -> String {
    let ids = root.deploy_seed(|sla| {
        for ms in sla["applications"][0]["microservices"]
            .as_array_mut()
            .unwrap()
        {
            ms["port"] = json!("");
        }
    });
    ids[1].clone()
}

#[test]
fn an_evicted_worker_is_refused_at_once_and_its_instances_move() {
    let dir = scratch("trust-evict");
    let root = Root::start(&dir, &[]);
    let cluster = Cluster::start(&dir, "edge", &root, &[]);
    let room = ["--cpus", "8", "--memory-mib", "8192"];
    let agents: Vec<Agent> = ["w1", "w2"]
        .iter()
        .map(|n| Agent::start(&dir, n, cluster.addr, &cluster.worker_token, &room))
        .collect();
    wait_until(30, "both workers", || root.active_workers() == 2);
    let service = nginx(&root);
    root.add_instance(&service);
    wait_until(20, "the instance RUNNING", || {
        running_on(&root, &service).len() == 1
    });
    let on = running_on(&root, &service)[0].clone();
    let (victim, other) = if on == format!("node-{}", node_id(&cluster, "w1").unwrap()) {
        (&agents[0], &agents[1])
    } else {
        (&agents[1], &agents[0])
    };
    let old = registration(&dir, &victim.name);
    let evicted_at = Instant::now();
    cli(&cluster, &["node", "evict", &victim.name]);
    // Its next message is refused: its heartbeats (every 2 s) get 4.01.
    wait_until(5, "the evicted worker told its key is refused", || {
        victim.daemon.log().contains("refuses this worker's key")
    });
    assert_eq!(
        probe(cluster.addr, &old),
        Code::UNAUTHORIZED,
        "the evicted key still works"
    );
    let other_id = format!("node-{}", node_id(&cluster, &other.name).unwrap());
    wait_until(15, "its instance RUNNING on the other worker", || {
        running_on(&root, &service) == [other_id.clone()]
    });
    eprintln!("evicted; instance moved in {:?}", evicted_at.elapsed());
    assert_eq!(
        node_id(&cluster, &victim.name),
        None,
        "node ls lists the evicted worker"
    );
    wait_until(30, "the root counting one worker", || {
        root.active_workers() == 1
    });
}

#[test]
fn a_rekeyed_worker_keeps_working_and_its_old_key_does_not() {
    let dir = scratch("trust-rekey");
    let root = Root::start(&dir, &[]);
    let mut cluster = Cluster::start(&dir, "edge", &root, &[]);
    let room = ["--cpus", "8", "--memory-mib", "8192"];
    let w1 = Agent::start(&dir, "w1", cluster.addr, &cluster.worker_token, &room);
    let mut w2 = Agent::start(&dir, "w2", cluster.addr, &cluster.worker_token, &room);
    wait_until(30, "both workers", || root.active_workers() == 2);
    // The probe works: a key that is good (w2's, its agent stopped) is answered.
    w2.daemon.kill();
    assert_eq!(
        probe(cluster.addr, &registration(&dir, "w2")),
        Code::CONTENT
    );

    let old = registration(&dir, "w1");
    assert_eq!(key_of(&cluster, "w1"), "0");
    cli(&cluster, &["node", "rekey", "w1"]);
    wait_until(15, "w1 on its new key", || key_of(&cluster, "w1") == "1");
    let new = registration(&dir, "w1");
    assert_ne!(
        old.credentials, new.credentials,
        "the worker stored its new key"
    );
    assert_eq!(new.node, old.node);
    assert_eq!(
        probe(cluster.addr, &old),
        Code::UNAUTHORIZED,
        "the old key still works"
    );
    // Working all along: it runs what it is given now, and never went missing.
    let service = nginx(&root);
    root.add_instance(&service);
    let w1_id = format!("node-{}", old.node.0);
    wait_until(20, "a new instance RUNNING on w1", || {
        running_on(&root, &service) == [w1_id.clone()]
    });
    assert!(
        !w1.daemon.log().contains("refuses this worker's key"),
        "{}",
        w1.daemon.log()
    );
    // A cluster killed and restarted knows the new key (and not the old one).
    cluster.daemon.kill();
    cluster.daemon.restart();
    root.add_instance(&service);
    wait_until(
        30,
        "another instance RUNNING on w1 after the cluster's restart",
        || running_on(&root, &service).len() == 2,
    );
    assert_eq!(probe(cluster.addr, &old), Code::UNAUTHORIZED);
    assert!(!w1.daemon.log().contains("refuses this worker's key"));
}

/// The CoAP message type of a datagram (0 CON, 1 NON, 2 ACK, 3 RST) and its message id.
fn kind(d: &[u8]) -> Option<(u8, u16)> {
    (d.len() >= 4).then(|| ((d[0] >> 4) & 3, u16::from_be_bytes([d[2], d[3]])))
}

#[test]
fn replayed_commands_and_requests_are_rejected() {
    let dir = scratch("trust-replay");
    let root = Root::start(&dir, &[]);
    let cluster = Cluster::start(&dir, "edge", &root, &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let tap = rt
        .block_on(relay::start(any, cluster.addr, Link::default(), 5))
        .unwrap();
    tap.capture(true);
    let w1 = Agent::start(
        &dir,
        "w1",
        tap.addr,
        &cluster.worker_token,
        &["--cpus", "8", "--memory-mib", "8192"],
    );
    wait_until(30, "the worker", || root.active_workers() == 1);
    let service = nginx(&root);
    root.add_instance(&service);
    wait_until(20, "the instance RUNNING", || {
        running_on(&root, &service).len() == 1
    });
    assert_eq!(w1.holds(&service), 1);
    // Everything the cluster sent that carried a command set so far: its confirmable
    // notifications (and the observation's answers).
    let recorded = tap.captured();
    let commands: Vec<Vec<u8>> = recorded
        .iter()
        .filter(|c| {
            !c.up && kind(&c.data).is_some_and(|(t, _)| t == 0 || t == 2) && c.data.len() > 40
        })
        .map(|c| c.data.clone())
        .collect();
    assert!(!commands.is_empty(), "no command set recorded");
    let client = recorded.iter().find(|c| c.up).unwrap().client;
    // The instance goes; the worker stops it.
    root.api(
        "DELETE",
        &format!("/api/service/{service}/instance/0"),
        None,
    );
    wait_until(20, "the worker to stop the instance", || {
        w1.holds(&service) == 0
    });

    // Replayed to the worker, as confirmable messages under fresh message ids (the id
    // is outside the protection), the old command sets must change nothing.
    let before = tap.captured().len();
    let mut mids = Vec::new();
    for (i, c) in commands.iter().enumerate() {
        let mut d = c.clone();
        d[0] &= !0x30; // CON
        let mid = 0xA000u16 + u16::try_from(i).unwrap();
        d[2..4].copy_from_slice(&mid.to_be_bytes());
        mids.push(mid);
        rt.block_on(tap.inject_down(client, &d)).unwrap();
    }
    // The worker answered each (so each was read), then sent two more heartbeats.
    wait_until(
        10,
        "the worker to answer the replays and heartbeat twice",
        || {
            let after = &tap.captured()[before..];
            let answered = mids.iter().all(|m| {
                after.iter().any(|c| {
                    c.up && kind(&c.data).is_some_and(|(t, id)| (t == 2 || t == 3) && id == *m)
                })
            });
            let beats = after
                .iter()
                .filter(|c| c.up && kind(&c.data).is_some_and(|(t, _)| t == 1))
                .count();
            answered && beats >= 2
        },
    );
    assert_eq!(
        w1.holds(&service),
        0,
        "a replayed command set started the instance again"
    );
    assert!(running_on(&root, &service).is_empty());

    // A request the worker made, replayed to the cluster from elsewhere, is refused.
    let request = recorded
        .iter()
        .find(|c| c.up && kind(&c.data).is_some_and(|(t, _)| t == 0))
        .expect("a confirmable request of the worker's")
        .data
        .clone();
    let answer = rt.block_on(async {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.send_to(&request, cluster.addr).await.unwrap();
        let mut b = vec![0u8; 2048];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut b))
            .await
            .expect("an answer to the replay")
            .unwrap();
        b.truncate(n);
        b
    });
    assert_eq!(
        answer[1], 0x81,
        "a replayed request was not answered 4.01: {answer:02x?}"
    );
}

/// A cluster's stored registration at its root (its key), read from its database.
fn cluster_registration(cluster: &Cluster) -> msg::ClusterRegistered {
    let db = rusqlite::Connection::open(cluster.dir.join("cluster.db")).unwrap();
    let b: Vec<u8> = db
        .query_row(
            "SELECT value FROM root_link WHERE key = 'registered'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    msg::from_cbor(&b).unwrap()
}

/// As [`probe`], for a cluster's key at its root.
fn probe_root(root: SocketAddr, reg: &msg::ClusterRegistered) -> Code {
    let creds = reg.credentials.clone().expect("credentials");
    probe_key(root, creds, &paths::cluster_commands(reg.cluster))
}

#[test]
fn clusters_are_rekeyed_without_downtime_and_evicted_at_once() {
    let dir = scratch("trust-clusters");
    let root = Root::start(&dir, &[]);
    let room = ["--cpus", "8", "--memory-mib", "8192"];
    let c1 = Cluster::start(&dir, "c1", &root, &[]);
    let c2 = Cluster::start(&dir, "c2", &root, &[]);
    let _w1 = Agent::start(&dir, "w1", c1.addr, &c1.worker_token, &room);
    let _w2 = Agent::start(&dir, "w2", c2.addr, &c2.worker_token, &room);
    wait_until(40, "both clusters with a worker", || {
        root.active_workers() == 2
    });
    let id_of = |name: &str| {
        root.api("GET", "/api/clusters/", None)
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cluster_name"] == name)
            .and_then(|c| c["cluster_id"].as_u64())
            .unwrap()
    };
    let (id1, id2) = (id_of("c1"), id_of("c2"));
    // Instances name their cluster as text.
    let (in1, in2) = (json!(id1.to_string()), json!(id2.to_string()));

    // Re-key c1: it takes the new key with a report, the old one stops working, and
    // the cluster keeps deploying.
    let old = cluster_registration(&c1);
    root.api("POST", &format!("/api/clusters/{id1}/rekey"), None);
    let generation = |id: u64| {
        root.api("GET", "/api/clusters/", None)
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cluster_id"] == id)
            .and_then(|c| c["key_generation"].as_u64())
    };
    wait_until(20, "c1 on its new key", || generation(id1) == Some(1));
    assert_ne!(cluster_registration(&c1).credentials, old.credentials);
    assert_eq!(
        probe_root(root.coap, &old),
        Code::UNAUTHORIZED,
        "the old key still works"
    );
    let ids = root.deploy_seed(|sla| {
        let ms = &mut sla["applications"][0]["microservices"];
        ms[1]["port"] = json!("");
        ms[1]["constraints"] = json!([{"type": "direct", "cluster": "c2"}]);
    });
    root.add_instance(&ids[1]);
    wait_until(20, "an instance RUNNING in c2", || {
        root.instances(&ids[1])
            .iter()
            .any(|i| i["status"] == "RUNNING" && i["cluster_id"] == in2)
    });
    let dropped = root.instances(&ids[1]);
    assert_eq!(dropped.len(), 1);

    // Evict c2: its key stops working at once, and its instance moves to c1 (the
    // constraint named c2: it is placed by the root's scheduler elsewhere, or fails).
    let key2 = cluster_registration(&c2);
    assert_eq!(
        probe_root(root.coap, &key2),
        Code::CONTENT,
        "the probe works with a good key"
    );
    root.api("DELETE", &format!("/api/clusters/{id2}"), None);
    assert_eq!(
        probe_root(root.coap, &key2),
        Code::UNAUTHORIZED,
        "the evicted key still works"
    );
    wait_until(10, "the evicted cluster told its key is refused", || {
        c2.daemon.log().contains("refuses this cluster's key")
    });
    let cl = root.api("GET", "/api/clusters/", None);
    let c2_doc = cl
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster_id"] == id2)
        .unwrap()
        .clone();
    assert_eq!(
        (c2_doc["evicted"].clone(), c2_doc["active"].clone()),
        (json!(true), json!(false))
    );
    wait_until(10, "the instance no longer in c2", || {
        root.instances(&ids[1])
            .iter()
            .all(|i| i["cluster_id"] != in2)
    });
    // c1, re-keyed, still serves: an instance without constraint runs there.
    root.add_instance(&ids[0]);
    wait_until(20, "an instance RUNNING in c1", || {
        root.instances(&ids[0])
            .iter()
            .any(|i| i["status"] == "RUNNING" && i["cluster_id"] == in1)
    });
}
