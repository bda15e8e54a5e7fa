//! The real `grove-agent --runtime sim` against a test cluster that speaks the real
//! protocol: join, heartbeats, commands, status changes, SIGKILL and resume.

use grove_proto::coap::driver::{self, Handle, Incoming, Router};
use grove_proto::coap::{Code, Config, Endpoint, Method, Response};
use grove_proto::msg::{
    self, Credentials, Heartbeat, InstanceRef, InstanceSpec, InstanceState, NodeCommand,
    NodeCommands, NodeId, NodeRegistered, RegisterNode,
};
use grove_proto::oscore::{ContextParams, SecurityContext};
use grove_proto::paths;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN_ID: [u8; 8] = *b"wtok0001";
const SECRET: &[u8] = b"worker join secret";

struct Seen {
    joins: u32,
    heartbeats: Vec<u32>,
    changes: Vec<(u32, InstanceState)>,
    commands: NodeCommands,
}

type Shared = Arc<Mutex<Seen>>;

fn creds() -> Credentials {
    Credentials {
        master_secret: vec![9; 32],
        master_salt: vec![1; 8],
        sender_id: 7u32.to_be_bytes().to_vec(),
        recipient_id: vec![],
    }
}

fn our_side() -> ContextParams {
    let c = creds();
    ContextParams {
        master_secret: c.master_secret,
        master_salt: c.master_salt,
        sender_id: vec![],
        recipient_id: c.sender_id,
        id_context: None,
    }
}

async fn cluster(seen: Shared) -> Handle {
    let (s1, s2, s3) = (seen.clone(), seen.clone(), seen.clone());
    let router = Router::new()
        .route(Method::Post, paths::NODES, move |inc: Incoming| {
            let seen = s1.clone();
            async move {
                let joining = inc
                    .security
                    .as_ref()
                    .is_some_and(|k| k.id_context.is_some());
                let _: RegisterNode = msg::from_cbor(&inc.request.payload).unwrap();
                let mut s = seen.lock().unwrap();
                if !joining || s.joins > 0 {
                    return Response::error(Code::FORBIDDEN, "token used");
                }
                s.joins += 1;
                let reg = NodeRegistered {
                    version: msg::PROTOCOL_VERSION,
                    node: NodeId(7),
                    subnet_v4: msg::Ipv4Prefix {
                        addr: 0x0A12_0000,
                        len: 26,
                    },
                    subnet_v6: msg::Ipv6Prefix {
                        addr: [0xfc, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                        len: 120,
                    },
                    timing: msg::Timing {
                        heartbeat_ms: 300,
                        missed_before_lost: 3,
                    },
                    credentials: Some(creds()),
                };
                Response {
                    code: Code::CREATED,
                    ..Response::cbor(msg::to_cbor(&reg))
                }
            }
        })
        .route(
            Method::Post,
            "/v1/nodes/{id}/status",
            move |inc: Incoming| {
                let seen = s2.clone();
                async move {
                    let hb: Heartbeat = msg::from_cbor(&inc.request.payload).unwrap();
                    let mut s = seen.lock().unwrap();
                    if hb.changes.is_empty() {
                        s.heartbeats.push(hb.seq);
                    }
                    for c in hb.changes {
                        s.changes.push((c.instance.instance, c.state));
                    }
                    Response::new(Code::CHANGED)
                }
            },
        )
        .observable("/v1/nodes/{id}/commands", move |_inc: Incoming| {
            let seen = s3.clone();
            async move { Response::cbor(msg::to_cbor(&seen.lock().unwrap().commands)) }
        });
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (h, _) = driver::spawn(sock, Endpoint::new(Config::default()), router).unwrap();
    h.add_join_token(TOKEN_ID.to_vec(), SECRET.to_vec());
    // The long-term context the registration hands out, installed up front.
    h.add_context(SecurityContext::in_memory(&our_side())).await;
    h
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn agent(cluster: std::net::SocketAddr, dir: &std::path::Path) -> Child {
    let token = format!("{}.{}", hex(&TOKEN_ID), hex(SECRET));
    Command::new(env!("CARGO_BIN_EXE_grove-agent"))
        .args([
            "--runtime",
            "sim",
            "--cluster",
            &cluster.to_string(),
            "--name",
            "pi-1",
        ])
        .args([
            "--location",
            "48.26,11.67",
            "--join-token",
            &token,
            "--state-dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn spec(n: u32, cmd: &[&str]) -> NodeCommand {
    NodeCommand::Deploy(InstanceSpec {
        instance: InstanceRef {
            service: "svc".into(),
            instance: n,
        },
        name: "a.b.c.d".into(),
        image: "busybox".into(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        env: vec![],
        memory_mib: 64,
        millicpus: 100,
        ports: None,
        one_shot: false,
        ip: Some(0x0A12_0002 + n),
        nodes: None,
        geo: None,
        latency: None,
        rr_ip: None,
        closest_ip: None,
        ip6: None,
        rr_ip6: None,
        closest_ip6: None,
        storage_mib: None,
        stop_grace_s: None,
    })
}

async fn wait(seen: &Shared, secs: u64, what: &str, cond: impl Fn(&Seen) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond(&seen.lock().unwrap()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn push(c: &Handle, seen: &Shared, cmds: NodeCommands) -> usize {
    let body = msg::to_cbor(&cmds);
    seen.lock().unwrap().commands = cmds;
    c.notify(&paths::node_commands(NodeId(7)), Response::cbor(body))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_joins_runs_commands_reports_and_resumes_after_sigkill() {
    let dir = std::env::temp_dir().join(format!("grove-agent-loop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let seen: Shared = Arc::new(Mutex::new(Seen {
        joins: 0,
        heartbeats: vec![],
        changes: vec![],
        commands: NodeCommands {
            generation: 0,
            commands: vec![],
            peers: None,
            services: None,
            ..Default::default()
        },
    }));
    let c = cluster(seen.clone()).await;
    let mut child = agent(c.local_addr(), &dir);

    wait(&seen, 20, "join and two heartbeats", |s| {
        s.joins == 1 && s.heartbeats.len() >= 2
    })
    .await;
    let hb = seen.lock().unwrap().heartbeats.clone();
    assert!(
        hb.windows(2).all(|w| w[1] > w[0]),
        "heartbeat sequence {hb:?}"
    );

    // Wait until the agent observes its commands, then deploy two instances.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let two = NodeCommands {
        generation: 1,
        commands: vec![spec(0, &["sh"]), spec(1, &["sim:exit=1"])],
        peers: None,
        services: None,
        ..Default::default()
    };
    while push(&c, &seen, two.clone()).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never observed its commands"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait(&seen, 10, "instance 0 RUNNING and instance 1 DEAD", |s| {
        s.changes.contains(&(0, InstanceState::Running))
            && s.changes.contains(&(1, InstanceState::Dead))
    })
    .await;

    // Take instance 0 out of the set: it is stopped and reported.
    push(
        &c,
        &seen,
        NodeCommands {
            generation: 2,
            commands: vec![spec(1, &["sim:exit=1"])],
            peers: None,
            services: None,
            ..Default::default()
        },
    )
    .await;
    wait(&seen, 10, "instance 0 UNDEPLOYED", |s| {
        s.changes.contains(&(0, InstanceState::Undeployed))
    })
    .await;

    // SIGKILL, restart: no second join (the token is used), heartbeats resume, and
    // nothing already there is deployed again.
    child.kill().unwrap();
    child.wait().unwrap();
    let (before, beats) = {
        let s = seen.lock().unwrap();
        (s.changes.len(), s.heartbeats.len())
    };
    let mut child = agent(c.local_addr(), &dir);
    wait(&seen, 20, "heartbeats after the restart", |s| {
        s.heartbeats.len() >= beats + 2
    })
    .await;
    assert_eq!(
        seen.lock().unwrap().joins,
        1,
        "a restarted agent uses its stored credentials"
    );
    let after: Vec<_> = seen.lock().unwrap().changes[before..].to_vec();
    assert!(
        !after.iter().any(|(_, st)| *st == InstanceState::Creating),
        "re-deployed after restart: {after:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_flags_are_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_grove-agent"))
        .args([
            "--runtime",
            "sim",
            "--cluster",
            "127.0.0.1:9",
            "--location",
            "91,0",
            "--state-dir",
            "/tmp/x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--location 91,0"));
    let out = Command::new(env!("CARGO_BIN_EXE_grove-agent"))
        .args(["--runtime", "podman", "--cluster", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--runtime podman"));
}
