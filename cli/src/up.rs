//! `grove up`: the tier link on this machine.
//!
//! A cluster endpoint and `--workers` agents on loopback, each agent behind a relay that
//! drops `--loss` % of datagrams each way. Each agent joins with a join token (its
//! registration protected by the token-derived OSCORE context), receives long-term
//! OSCORE credentials, observes its command resource and sends a heartbeat every 2 s.
//! The cluster publishes a new command generation every 5 s. A status line every 2 s
//! shows the link working; Ctrl-C (or `--duration`) ends it with a summary.

use clap::Args;
use grove_proto::coap::ExchangeError;
use grove_proto::coap::driver::{self, Handle, Incoming, Router};
use grove_proto::coap::{
    Code, Config, Endpoint, LinkParams, Method, Request, Response, SendOptions,
};
use grove_proto::msg::{
    self, Credentials, Heartbeat, NetCoord, NodeCommands, NodeId, NodeRegistered, RegisterNode,
};
use grove_proto::oscore::{ContextParams, FileContextStore, SecurityContext, join_context};
use grove_proto::paths;
use grove_tests::relay::{self, Link, Shape};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Options of `grove up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Folder for the run's state (OSCORE sequence files).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("grove-up"))]
    pub dir: PathBuf,
    /// Number of worker agents.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Percentage of datagrams the relays drop in each direction.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u8).range(0..=90))]
    pub loss: u8,
    /// Stop after this many seconds instead of at Ctrl-C.
    #[arg(long)]
    pub duration: Option<u64>,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // Without an OS RNG the demo still works, just with predictable keys.
    let _ = getrandom::getrandom(&mut b);
    b
}

fn link() -> LinkParams {
    LinkParams {
        ack_timeout: Duration::from_secs(1),
        max_retransmit: 6,
        ..LinkParams::default()
    }
}

#[derive(Debug, Default)]
struct ClusterState {
    handle: OnceLock<Handle>,
    next_node: AtomicU32,
    heartbeats: AtomicU64,
    generation: AtomicU64,
    nodes: Mutex<HashMap<String, u32>>,
}

/// The worker's IPv6 /120 in fc00::/16: the node id in the bits above the last octet.
fn v6_subnet(id: u32) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfc;
    a[11..15].copy_from_slice(&id.to_be_bytes());
    a
}

async fn register(st: Arc<ClusterState>, inc: Incoming) -> Response {
    if inc.security.as_ref().is_none_or(|k| k.id_context.is_none()) {
        return Response::error(Code::FORBIDDEN, "registration needs a join token");
    }
    let reg: RegisterNode = match msg::from_cbor(&inc.request.payload) {
        Ok(r) => r,
        Err(e) => return Response::error(Code::BAD_REQUEST, &e.to_string()),
    };
    if let Err(diag) = msg::check_version(reg.version) {
        return Response::error(Code::NOT_ACCEPTABLE, &diag);
    }
    let id = {
        let mut nodes = st.nodes.lock().unwrap_or_else(|p| p.into_inner());
        *nodes
            .entry(reg.name.clone())
            .or_insert_with(|| st.next_node.fetch_add(1, Ordering::SeqCst) + 1)
    };
    let creds = Credentials {
        master_secret: random::<32>().to_vec(),
        master_salt: random::<8>().to_vec(),
        sender_id: id.to_be_bytes().to_vec(),
        recipient_id: Vec::new(),
    };
    let ours = ContextParams {
        master_secret: creds.master_secret.clone(),
        master_salt: creds.master_salt.clone(),
        sender_id: creds.recipient_id.clone(),
        recipient_id: creds.sender_id.clone(),
        id_context: None,
    };
    let Some(h) = st.handle.get() else {
        return Response::error(Code::SERVICE_UNAVAILABLE, "starting");
    };
    h.add_context(SecurityContext::in_memory(&ours)).await;
    let answer = NodeRegistered {
        version: msg::PROTOCOL_VERSION,
        node: NodeId(id),
        subnet_v4: msg::Ipv4Prefix {
            addr: 0x0A12_0000 + id * 64,
            len: 26,
        },
        subnet_v6: msg::Ipv6Prefix {
            addr: v6_subnet(id),
            len: 120,
        },
        timing: msg::Timing {
            heartbeat_ms: 2000,
            missed_before_lost: 3,
        },
        credentials: Some(creds),
    };
    Response {
        code: Code::CREATED,
        ..Response::cbor(msg::to_cbor(&answer))
    }
}

async fn start_cluster(
    st: Arc<ClusterState>,
    token_id: &[u8],
    secret: &[u8],
) -> std::io::Result<Handle> {
    let (s1, s2, s3) = (st.clone(), st.clone(), st.clone());
    let router = Router::new()
        .route(Method::Post, paths::NODES, move |inc| {
            register(s1.clone(), inc)
        })
        .route(Method::Post, "/v1/nodes/{id}/status", move |inc| {
            let st = s2.clone();
            async move {
                if let Err(r) = grove_proto::util::speaks_for(&inc, "node") {
                    return r;
                }
                match msg::from_cbor::<Heartbeat>(&inc.request.payload) {
                    Ok(_) => {
                        st.heartbeats.fetch_add(1, Ordering::Relaxed);
                        Response::new(Code::CHANGED)
                    }
                    Err(e) => Response::error(Code::BAD_REQUEST, &e.to_string()),
                }
            }
        })
        .observable("/v1/nodes/{id}/commands", move |inc| {
            let st = s3.clone();
            async move {
                if let Err(r) = grove_proto::util::speaks_for(&inc, "node") {
                    return r;
                }
                let cmds = NodeCommands {
                    generation: st.generation.load(Ordering::SeqCst),
                    commands: vec![],
                    peers: None,
                    services: None,
                };
                Response::cbor(msg::to_cbor(&cmds))
            }
        });
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let cfg = Config {
        link: link(),
        seed: u64::from_le_bytes(random::<8>()),
        ..Config::default()
    };
    let (h, _) = driver::spawn(socket, Endpoint::new(cfg), router)?;
    h.add_join_token(token_id.to_vec(), secret.to_vec());
    let _ = st.handle.set(h.clone());
    Ok(h)
}

#[derive(Debug, Default)]
struct AgentState {
    joined: AtomicBool,
    node: AtomicU32,
    generation: AtomicU64,
    heartbeats: AtomicU64,
    error: Mutex<Option<String>>,
}

/// The heartbeat of a demo worker: fixed usage, no instance change.
fn demo_heartbeat(node: NodeId, seq: u32) -> Heartbeat {
    Heartbeat {
        node,
        seq,
        cpu_centi_pct: 1200,
        mem_used_mib: 900,
        mem_total_mib: 4096,
        disk_used_mib: 5000,
        disk_total_mib: 32_000,
        running: 0,
        coord: NetCoord([0.0; 3]),
        digest: [0; 8],
        changes: vec![],
        instances: None,
    }
}

/// Repeat `op` after a timeout until it succeeds or the run stops.
async fn retry<T, F, Fut>(stop: &AtomicBool, what: &str, op: F) -> Result<T, String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, ExchangeError>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if stop.load(Ordering::SeqCst) => return Err(format!("{what}: {e}")),
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn agent(
    n: u32,
    cluster: SocketAddr,
    token: ([u8; 8], [u8; 16]),
    dir: PathBuf,
    st: Arc<AgentState>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let cfg = Config {
        link: link(),
        seed: u64::from_le_bytes(random::<8>()),
        ..Config::default()
    };
    let (c, _) =
        driver::spawn(socket, Endpoint::new(cfg), Router::new()).map_err(|e| e.to_string())?;
    let join = join_context(&token.0, &token.1, &random::<8>(), true);
    let join_key = c
        .add_context(SecurityContext::in_memory(&join))
        .await
        .ok_or("driver stopped")?;
    let reg = RegisterNode {
        version: msg::PROTOCOL_VERSION,
        name: format!("worker-{n}"),
        arch: std::env::consts::ARCH.into(),
        cpus: 4,
        memory_mib: 4096,
        disk_mib: 32_000,
        virtualizations: vec!["container".into()],
        location: Some(msg::GeoPoint {
            lat: 48.26,
            lon: 11.67,
        }),
        max_instances: None,
        underlay: None,
    };
    // A real agent keeps trying with back-off; a lost exchange is only a timeout.
    let req = Request::post_cbor(paths::NODES, msg::to_cbor(&reg));
    let resp = retry(&stop, "registration", || {
        c.request(cluster, req.clone(), SendOptions::secure(join_key.clone()))
    })
    .await?;
    if !resp.code.is_success() {
        return Err(format!(
            "registration refused: {} {}",
            resp.code,
            String::from_utf8_lossy(&resp.payload)
        ));
    }
    c.remove_context(join_key);
    let reg: NodeRegistered = msg::from_cbor(&resp.payload).map_err(|e| e.to_string())?;
    let creds = reg
        .credentials
        .ok_or("registration answer without credentials")?;
    let node = reg.node;
    let state_dir = dir.join(format!("worker-{n}"));
    std::fs::create_dir_all(&state_dir).map_err(|e| format!("{}: {e}", state_dir.display()))?;
    let seq_file = state_dir.join("cluster.oscore-seq");
    let _ = std::fs::remove_file(&seq_file);
    let params = ContextParams::from(creds);
    let ctx = SecurityContext::new(&params, Box::new(FileContextStore::new(&seq_file)))
        .map_err(|e| e.to_string())?;
    let key = c.add_context(ctx).await.ok_or("driver stopped")?;
    st.node.store(node.0, Ordering::SeqCst);
    st.joined.store(true, Ordering::SeqCst);

    let mut obs = retry(&stop, "observe", || {
        c.observe(
            cluster,
            Request::get(&paths::node_commands(node)),
            SendOptions::secure(key.clone()),
        )
    })
    .await?;
    let apply = |st: &AgentState, body: &[u8]| {
        if let Ok(cmds) = msg::from_cbor::<NodeCommands>(body) {
            st.generation.fetch_max(cmds.generation, Ordering::SeqCst);
        }
    };
    apply(&st, &obs.first.payload);
    let st2 = st.clone();
    tokio::spawn(async move {
        while let Some(n) = obs.notifications.recv().await {
            apply(&st2, &n.payload);
        }
    });
    let mut seq = 0u32;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        seq += 1;
        let hb = demo_heartbeat(node, seq);
        let req = Request::post_cbor(&paths::node_status(node), msg::to_cbor(&hb));
        let opts = SendOptions {
            non_confirmable: true,
            security: Some(key.clone()),
        };
        let c2 = c.clone();
        tokio::spawn(async move {
            let _ = c2.request(cluster, req, opts).await;
        });
        st.heartbeats.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Run the demo; `Ok(true)` when every agent joined and converged.
pub async fn up(a: UpArgs) -> Result<bool, String> {
    std::fs::create_dir_all(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    let token = (random::<8>(), random::<16>());
    let cst = Arc::new(ClusterState::default());
    let cluster = start_cluster(cst.clone(), &token.0, &token.1)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "grove up: the tier link on this machine (state in {})",
        a.dir.display()
    );
    println!(
        "  cluster on {} (CoAP+OSCORE), {} worker agents, each behind a relay dropping {}% of datagrams each way",
        cluster.local_addr(),
        a.workers,
        a.loss
    );
    println!("  root, HTTP API and containers are not built yet; Ctrl-C stops");
    let stop = Arc::new(AtomicBool::new(false));
    let mut agents = Vec::new();
    let mut relays = Vec::new();
    for n in 1..=a.workers {
        let r = relay::start(
            "127.0.0.1:0".parse().map_err(|_| "bad address")?,
            cluster.local_addr(),
            Link::symmetric(Shape::loss(f64::from(a.loss))),
            u64::from(n) * 7919,
        )
        .await
        .map_err(|e| e.to_string())?;
        let via = r.addr;
        relays.push(r);
        let st = Arc::new(AgentState::default());
        agents.push(st.clone());
        let (dir, stop) = (a.dir.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = agent(n, via, token, dir, st.clone(), stop).await {
                *st.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        });
    }
    // Seconds are counted in ticks (a late tick is caught up, never skipped), so the
    // command generations follow the schedule even on a loaded machine.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut secs, mut ticks) = (0u64, 0u64);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tick.tick() => {}
        }
        secs = ticks;
        ticks += 1;
        if secs > 0 && secs % 5 == 0 {
            let g = cst.generation.fetch_add(1, Ordering::SeqCst) + 1;
            for st in &agents {
                let id = st.node.load(Ordering::SeqCst);
                if id != 0 {
                    let body = msg::to_cbor(&NodeCommands {
                        generation: g,
                        commands: vec![],
                        peers: None,
                        services: None,
                    });
                    cluster
                        .notify(&paths::node_commands(NodeId(id)), Response::cbor(body))
                        .await;
                }
            }
        }
        if secs % 2 == 0 {
            status(secs, &cst, &agents, &cluster).await;
        }
        if a.duration.is_some_and(|d| secs >= d) {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    // Let the last commands reach every agent (at most one retransmission span).
    let want = cst.generation.load(Ordering::SeqCst);
    let grace = Instant::now() + link().max_transmit_span();
    while Instant::now() < grace
        && !agents
            .iter()
            .all(|s| s.generation.load(Ordering::SeqCst) >= want)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    status(secs, &cst, &agents, &cluster).await;
    let sent: u64 = agents
        .iter()
        .map(|s| s.heartbeats.load(Ordering::Relaxed))
        .sum();
    let dropped: u64 = relays.iter().map(|r| r.stats.dropped()).sum();
    let forwarded: u64 = relays.iter().map(|r| r.stats.forwarded()).sum();
    let joined = agents
        .iter()
        .filter(|s| s.joined.load(Ordering::SeqCst))
        .count();
    let converged = agents
        .iter()
        .filter(|s| s.generation.load(Ordering::SeqCst) >= want)
        .count();
    println!("summary:");
    println!(
        "  agents joined with their token and got long-term OSCORE contexts: {joined}/{}",
        agents.len()
    );
    println!(
        "  agents holding the latest command generation ({want}): {converged}/{}",
        agents.len()
    );
    println!(
        "  heartbeats (non-confirmable) delivered: {}/{sent}; relays dropped {dropped} of {} datagrams",
        cst.heartbeats.load(Ordering::Relaxed),
        dropped + forwarded
    );
    let idle = demo_heartbeat(NodeId(1), 1000);
    println!(
        "  an idle heartbeat body is {} bytes of CBOR",
        msg::to_cbor(&idle).len()
    );
    for (i, s) in agents.iter().enumerate() {
        if let Some(e) = s.error.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            println!("  worker-{}: {e}", i + 1);
        }
    }
    Ok(joined == agents.len() && converged == agents.len())
}

async fn status(secs: u64, cst: &ClusterState, agents: &[Arc<AgentState>], cluster: &Handle) {
    let joined = agents
        .iter()
        .filter(|s| s.joined.load(Ordering::SeqCst))
        .count();
    let gen_now = cst.generation.load(Ordering::SeqCst);
    let have: Vec<String> = agents
        .iter()
        .map(|s| s.generation.load(Ordering::SeqCst).to_string())
        .collect();
    let sent: u64 = agents
        .iter()
        .map(|s| s.heartbeats.load(Ordering::Relaxed))
        .sum();
    let stats = cluster.stats().await;
    println!(
        "t={secs:>3}s  joined {joined}/{}  heartbeats {}/{sent}  commands gen {gen_now}, agents have [{}]  cluster: retransmissions {}, duplicates {}, oscore-rejected {}",
        agents.len(),
        cst.heartbeats.load(Ordering::Relaxed),
        have.join(","),
        stats.retransmissions,
        stats.duplicates,
        stats.oscore_rejected,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use grove_proto::coap::ContextKey;

    fn joining(payload: Vec<u8>) -> Incoming {
        Incoming {
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            request: Request::post_cbor(paths::NODES, payload),
            security: Some(ContextKey {
                id_context: Some(vec![1; 16]),
                recipient_id: vec![1],
            }),
            params: vec![],
        }
    }

    fn registration(major: u16) -> Vec<u8> {
        msg::to_cbor(&RegisterNode {
            version: msg::ProtocolVersion { major, minor: 0 },
            name: "pi-1".into(),
            arch: "aarch64".into(),
            cpus: 4,
            memory_mib: 4096,
            disk_mib: 30_000,
            virtualizations: vec!["container".into()],
            location: None,
            max_instances: None,
            underlay: None,
        })
    }

    #[tokio::test]
    async fn an_agent_of_another_major_version_gets_4_06_naming_both_versions() {
        let st = Arc::new(ClusterState::default());
        let r = register(st, joining(registration(2))).await;
        assert_eq!(r.code, Code::NOT_ACCEPTABLE);
        let text = String::from_utf8(r.payload).unwrap();
        assert!(text.contains("2.0") && text.contains("1.0"), "{text}");
    }

    #[tokio::test]
    async fn a_registration_that_is_not_cbor_gets_4_00_naming_the_message() {
        let st = Arc::new(ClusterState::default());
        let r = register(st, joining(vec![0xff, 0x13])).await;
        assert_eq!(r.code, Code::BAD_REQUEST);
        assert!(
            String::from_utf8(r.payload)
                .unwrap()
                .contains("RegisterNode")
        );
    }

    #[tokio::test]
    async fn a_registration_without_a_join_token_is_forbidden() {
        let st = Arc::new(ClusterState::default());
        let mut inc = joining(registration(1));
        inc.security = Some(ContextKey {
            id_context: None,
            recipient_id: vec![0, 0, 0, 9],
        });
        assert_eq!(register(st, inc).await.code, Code::FORBIDDEN);
    }
}
