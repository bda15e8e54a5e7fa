//! `grove-root`: the root orchestrator (Oakestra-compatible HTTP API, SQLite, root
//! scheduler, cluster link).
//!
//! The HTTP API ([`api`]) and the cluster link ([`clusters_link`], CoAP + OSCORE, with
//! the CoAP user API of [`coap_api`]) are shells around the shared [`state`]; both call
//! the orchestration ([`orchestrate`]: placement, command sets, the directory, lost
//! clusters, rollouts), which imports neither. Below them: the root scheduler
//! ([`scheduler`]), the SLA parser with field-path errors ([`sla`]), the SQLite store
//! ([`store`]), authentication ([`auth`]) and the login limit ([`limit`]).

pub mod api;
pub mod auth;
pub mod clusters_link;
pub mod coap_api;
#[doc(hidden)]
pub mod fuzzing;
pub mod limit;
pub mod metrics;
pub mod orchestrate;
pub mod scheduler;
pub mod sla;
pub mod state;
pub mod store;

use clap::Parser;

/// Command line of `grove-root` (flags as in DESIGN.md).
#[derive(Debug, Parser)]
#[command(name = "grove-root", version, about = "Grove root orchestrator")]
pub struct Args {
    /// Configuration file (TOML).
    #[arg(long, env = "GROVE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// State directory.
    #[arg(long, env = "GROVE_DATA_DIR", default_value = "/var/lib/grove-root")]
    pub data_dir: std::path::PathBuf,
    /// HTTP API address.
    #[arg(long, env = "GROVE_HTTP", default_value = "0.0.0.0:10000")]
    pub http: std::net::SocketAddr,
    /// CoAP address.
    #[arg(long, env = "GROVE_COAP", default_value = "0.0.0.0:10000")]
    pub coap: std::net::SocketAddr,
    /// Seconds without a report after which a cluster is lost (its instances move).
    #[arg(
        long,
        env = "GROVE_CLUSTER_LOST_AFTER",
        default_value_t = 15,
        hide = true
    )]
    pub cluster_lost_after: i64,
    /// PEM certificate chain: serve the HTTP API over TLS (with --tls-key).
    #[arg(long, env = "GROVE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert (keep it 0600).
    #[arg(long, env = "GROVE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Password of the `Admin` user created on first start.
    #[arg(long, env = "GROVE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
}

/// Open the data directory: the database, the token key and the first Admin.
pub fn open_state(args: &Args) -> Result<api::Shared, String> {
    grove_proto::util::private_dir(&args.data_dir)
        .map_err(|e| format!("{}: {e}", args.data_dir.display()))?;
    let mut store =
        store::Store::open(&args.data_dir.join("root.db")).map_err(|e| e.to_string())?;
    let keys = auth::AuthKeys::load_or_create(&args.data_dir).map_err(|e| e.to_string())?;
    let created = auth::bootstrap_admin(&mut store, &args.data_dir, args.admin_password.as_deref())
        .map_err(|e| e.to_string())?;
    if created.is_some() {
        // The password itself never goes to the log (journals are read by many).
        tracing::warn!(
            file = %args.data_dir.join("initial-admin-password").display(),
            "created user Admin with a random password, written to the file (0600)"
        );
    }
    Ok(std::sync::Arc::new(api::AppState {
        store: std::sync::Mutex::new(store),
        keys,
        link: std::sync::OnceLock::new(),
        peering: std::sync::Mutex::default(),
        logins: std::sync::Mutex::default(),
        metrics: metrics::Metrics::default(),
    }))
}

/// A running root's addresses.
#[derive(Debug, Clone)]
pub struct Running {
    /// The HTTP API.
    pub http: std::net::SocketAddr,
    /// The CoAP link and user API.
    pub coap: std::net::SocketAddr,
    /// Its state.
    pub state: api::Shared,
}

/// Open the state, bind the HTTP API and the CoAP link as `args` say, and serve them
/// on the current tokio runtime until it stops.
pub async fn start(args: &Args) -> Result<Running, String> {
    let state = open_state(args)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(api::tls::config(c, k)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.http))?;
    let udp = tokio::net::UdpSocket::bind(args.coap)
        .await
        .map_err(|e| format!("cannot listen on udp {}: {e}", args.coap))?;
    grove_proto::coap::driver::widen_buffers(&udp, grove_proto::coap::driver::SERVER_BUFFERS);
    let l = clusters_link::start(
        state.clone(),
        udp,
        args.data_dir.clone(),
        args.cluster_lost_after,
        api::router(state.clone()),
    )
    .await
    .map_err(|e| e.to_string())?;
    let coap = l.local_addr();
    let _ = state.link.set(l);
    let http = listener.local_addr().map_err(|e| e.to_string())?;
    match tls {
        Some(cfg) => {
            let l = api::tls::TlsListener::new(listener, cfg).map_err(|e| e.to_string())?;
            tokio::spawn(api::serve_tls(l, state.clone(), std::future::pending()));
        }
        None => {
            tokio::spawn(api::serve(listener, state.clone(), std::future::pending()));
        }
    }
    Ok(Running { http, coap, state })
}

/// Run the root: the HTTP API and the cluster link, until Ctrl-C.
pub fn run(args: Args) -> Result<(), String> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let r = start(&args).await?;
        tracing::info!(http = %r.http, coap = %r.coap, docs = "/api/docs", "grove-root serving the API and the cluster link");
        grove_proto::service::ready();
        grove_proto::service::spawn_watchdog();
        let _ = tokio::signal::ctrl_c().await;
        Ok(())
    })
}
