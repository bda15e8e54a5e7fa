//! `grove-cluster`: the cluster orchestrator (node registry, cluster scheduler, failure
//! detection, root link).
//!
//! The node link and registry, placement, loss handling and the root link live in
//! [`daemon`]; the scheduler in [`scheduler`]; SQLite in [`store`].

pub mod daemon;
pub mod metrics;
pub mod scheduler;
pub mod store;

use clap::Parser;

/// Command line of `grove-cluster` (flags as in DESIGN.md).
#[derive(Debug, Parser)]
#[command(name = "grove-cluster", version, about = "Grove cluster orchestrator")]
pub struct Args {
    /// Something other than running the cluster.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Configuration file (TOML).
    #[arg(long, env = "GROVE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// The root's CoAP address, HOST[:PORT] (port 10000 by default).
    #[arg(long, env = "GROVE_ROOT")]
    pub root: Option<String>,
    /// This cluster's name.
    #[arg(long, env = "GROVE_NAME")]
    pub name: Option<String>,
    /// Location, LAT,LON.
    #[arg(long, env = "GROVE_LOCATION")]
    pub location: Option<String>,
    /// State directory.
    #[arg(long, env = "GROVE_DATA_DIR", default_value = "/var/lib/grove-cluster")]
    pub data_dir: std::path::PathBuf,
    /// CoAP address for workers.
    #[arg(long, env = "GROVE_COAP", default_value = "0.0.0.0:10100")]
    pub coap: std::net::SocketAddr,
    /// Join token issued by the root (first start only).
    #[arg(long, env = "GROVE_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Seconds before an instance its worker has not confirmed is placed elsewhere.
    #[arg(long, env = "GROVE_SCHEDULE_TIMEOUT_SECS", default_value_t = daemon::SCHEDULE_TIMEOUT.as_secs())]
    pub schedule_timeout_secs: u64,
    /// Seconds an instance may stay CREATING (pulling its image) before it is placed
    /// elsewhere.
    #[arg(long, env = "GROVE_CREATE_TIMEOUT_SECS", default_value_t = daemon::CREATE_TIMEOUT.as_secs())]
    pub create_timeout_secs: u64,
    /// Seconds a directory entry of another cluster's service stays observed at the
    /// root after the last of this cluster's workers stopped observing it.
    #[arg(long, env = "GROVE_DIRECTORY_IDLE_SECS", default_value_t = daemon::DIRECTORY_IDLE.as_secs())]
    pub directory_idle_secs: u64,
    /// Workers this cluster expects at most: the root sizes its block of worker
    /// subnets to hold them (256 per /18, up to 4,096).
    #[arg(long, env = "GROVE_MAX_WORKERS")]
    pub max_workers: Option<u32>,
    /// Serve Prometheus metrics over HTTP at ADDR:PORT (`/metrics`; best kept on a
    /// local or management address). Off by default.
    #[arg(long, env = "GROVE_METRICS")]
    pub metrics: Option<std::net::SocketAddr>,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print a worker join token for `grove-agent --join-token` (or list, revoke).
    Token {
        /// List or revoke instead.
        #[command(subcommand)]
        action: Option<TokenAction>,
        /// Seconds it stays valid.
        #[arg(long, default_value_t = 3600)]
        expires_in_secs: i64,
        /// Let several workers join with it (default: single use).
        #[arg(long)]
        reusable: bool,
    },
    /// The registered workers: list, evict, re-key.
    Node {
        /// What to do.
        #[command(subcommand)]
        action: NodeAction,
    },
}

/// `grove-cluster token …`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenAction {
    /// The join tokens that may still be used, and those used or expired within a day
    /// (never their secrets).
    Ls,
    /// Revoke a join token by its id (the part before the dot): no worker joins with
    /// it from now on.
    Revoke {
        /// The token's id.
        id: String,
    },
}

/// `grove-cluster node …`.
#[derive(Debug, clap::Subcommand)]
pub enum NodeAction {
    /// Every registered worker.
    Ls,
    /// Evict a worker: its key stops working at once (the running cluster drops it
    /// within half a second), its instances move to other workers, and it can join
    /// again only with a new token.
    Evict {
        /// Name or id.
        node: String,
    },
    /// Give a worker a new key without downtime: it switches with its next heartbeat,
    /// and its old key stops working.
    Rekey {
        /// Name or id.
        node: String,
    },
}

fn subcommand(cmd: Command, store: &mut store::Store) -> Result<(), String> {
    let now = store::now_secs();
    match cmd {
        Command::Token {
            action: None,
            expires_in_secs,
            reusable,
        } => {
            if expires_in_secs <= 0 {
                return Err("--expires-in-secs must be positive".into());
            }
            println!(
                "{}",
                daemon::make_worker_token(store, expires_in_secs, !reusable)?
            );
        }
        Command::Token {
            action: Some(TokenAction::Ls),
            ..
        } => {
            println!(
                "{:<18} {:<8} {:<6} {:<6} EXPIRES",
                "ID", "USABLE", "SINGLE", "USED"
            );
            for t in store.worker_tokens(now).map_err(|e| e.to_string())? {
                let usable = t.expires_at > now && !(t.single_use && t.used);
                let left = t.expires_at - now;
                let expires = if left > 0 {
                    format!("in {left} s")
                } else {
                    format!("{} s ago", -left)
                };
                println!(
                    "{:<18} {:<8} {:<6} {:<6} {expires}",
                    t.id, usable, t.single_use, t.used
                );
            }
        }
        Command::Token {
            action: Some(TokenAction::Revoke { id }),
            ..
        } => {
            let id = id.split('.').next().unwrap_or_default().to_owned();
            store
                .revoke_worker_token(&id)
                .map_err(|e| format!("token {id}: {e}"))?;
            println!("revoked {id}");
        }
        Command::Node { action } => {
            let find = |store: &store::Store, n: &str| {
                store
                    .node_named(n)
                    .map_err(|e| format!("worker {n:?}: {e}"))
            };
            match action {
                NodeAction::Ls => {
                    println!(
                        "{:<6} {:<24} {:<8} {:<5} {:<8} KEY",
                        "ID", "NAME", "ARCH", "CPUS", "MEM_MIB"
                    );
                    for n in store.nodes().map_err(|e| e.to_string())? {
                        let key = match (&n.pending, n.rekey) {
                            (Some(_), _) => format!("{} (next handed out)", n.key_gen),
                            (None, true) => format!("{} (re-key asked)", n.key_gen),
                            (None, false) => n.key_gen.to_string(),
                        };
                        println!(
                            "{:<6} {:<24} {:<8} {:<5} {:<8} {key}",
                            n.id, n.name, n.arch, n.cpus, n.memory_mib
                        );
                    }
                }
                NodeAction::Evict { node } => {
                    let id = find(store, &node)?;
                    store.evict_node(id).map_err(|e| e.to_string())?;
                    println!("evicted worker {id} ({node})");
                }
                NodeAction::Rekey { node } => {
                    let id = find(store, &node)?;
                    store.request_rekey(id).map_err(|e| e.to_string())?;
                    println!("worker {id} ({node}) gets a new key with its next heartbeat");
                }
            }
        }
    }
    Ok(())
}

/// Run the cluster (or a subcommand).
pub fn run(args: Args) -> Result<(), String> {
    grove_proto::util::private_dir(&args.data_dir)
        .map_err(|e| format!("{}: {e}", args.data_dir.display()))?;
    let db = args.data_dir.join("cluster.db");
    let mut store = store::Store::open(&db).map_err(|e| format!("{}: {e}", db.display()))?;
    if let Some(cmd) = args.command {
        return subcommand(cmd, &mut store);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    let root = args
        .root
        .as_deref()
        .ok_or("--root HOST[:PORT] is required")?;
    let name = args.name.clone().ok_or("--name is required")?;
    let root = {
        use std::net::ToSocketAddrs;
        let with_port = if root.contains(':') {
            root.to_owned()
        } else {
            format!("{root}:10000")
        };
        with_port
            .to_socket_addrs()
            .map_err(|e| format!("--root {root}: {e}"))?
            .next()
            .ok_or(format!("--root {root}: no address"))?
    };
    let location = args
        .location
        .as_deref()
        .map(grove_proto::util::parse_location)
        .transpose()?;
    let settings = daemon::Settings {
        root,
        name,
        location,
        data_dir: args.data_dir.clone(),
        join_token: args.join_token.clone(),
        schedule_timeout: std::time::Duration::from_secs(args.schedule_timeout_secs.max(1)),
        create_timeout: std::time::Duration::from_secs(args.create_timeout_secs.max(1)),
        directory_idle: std::time::Duration::from_secs(args.directory_idle_secs),
        max_workers: args.max_workers,
        metrics: args.metrics.is_some(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let socket = tokio::net::UdpSocket::bind(args.coap)
            .await
            .map_err(|e| format!("cannot listen on udp {}: {e}", args.coap))?;
        grove_proto::coap::driver::widen_buffers(
            &socket,
            grove_proto::coap::driver::SERVER_BUFFERS,
        );
        let metrics = match args.metrics {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .map_err(|e| format!("--metrics {a}: {e}"))?,
            ),
            None => None,
        };
        let cluster = daemon::start(settings, store, socket).await?;
        if let Some(l) = metrics {
            tokio::spawn(daemon::serve_metrics(cluster, l));
        }
        // Serving its workers (the root link goes on in the background).
        grove_proto::service::ready();
        grove_proto::service::spawn_watchdog();
        let _ = tokio::signal::ctrl_c().await;
        Ok(())
    })
}
