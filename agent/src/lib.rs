//! `grove-agent`: the worker agent (containers on namespaces and cgroups, overlay via
//! netlink, heartbeats and commands over CoAP).
//!
//! Built so far: the control loop ([`control`]) with the simulated runtime
//! ([`runtime::SimRuntime`], `--runtime sim`); the native container runtime and the
//! overlay come with their issues.

pub mod control;
pub mod image;
pub mod runtime;

use clap::Parser;

/// Command line of `grove-agent` (flags as in DESIGN.md).
#[derive(Debug, Parser)]
#[command(name = "grove-agent", version, about = "Grove worker agent")]
pub struct Args {
    /// The cluster's CoAP address, HOST[:PORT].
    #[arg(long, env = "GROVE_CLUSTER")]
    pub cluster: String,
    /// This worker's name (default: the hostname).
    #[arg(long, env = "GROVE_NAME")]
    pub name: Option<String>,
    /// Location, LAT,LON.
    #[arg(long, env = "GROVE_LOCATION")]
    pub location: Option<String>,
    /// State directory.
    #[arg(long, env = "GROVE_STATE_DIR", default_value = "/var/lib/grove")]
    pub state_dir: std::path::PathBuf,
    /// Join token issued by the cluster.
    #[arg(long, env = "GROVE_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Room for this many instances (sizes the subnet).
    #[arg(long, env = "GROVE_MAX_INSTANCES")]
    pub max_instances: Option<u16>,
    /// CPUs offered to the cluster (default: all of this machine's).
    #[arg(long, env = "GROVE_CPUS")]
    pub cpus: Option<u16>,
    /// Memory offered to the cluster, MiB (default: all of this machine's).
    #[arg(long, env = "GROVE_MEMORY_MIB")]
    pub memory_mib: Option<u32>,
    /// Container runtime: native or sim.
    #[arg(long, env = "GROVE_RUNTIME", default_value = "native")]
    pub runtime: String,
}

fn parse_location(s: &str) -> Result<grove_proto::msg::GeoPoint, String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("--location {s}: expected LAT,LON"))?;
    let (lat, lon) = (a.trim().parse::<f32>(), b.trim().parse::<f32>());
    match (lat, lon) {
        (Ok(lat), Ok(lon)) if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) => {
            Ok(grove_proto::msg::GeoPoint { lat, lon })
        }
        _ => Err(format!(
            "--location {s}: latitude -90..90, longitude -180..180"
        )),
    }
}

/// Run the agent until Ctrl-C.
pub fn run(args: Args) -> Result<(), String> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    let cluster = {
        use std::net::ToSocketAddrs;
        let with_port = if args.cluster.contains(':') {
            args.cluster.clone()
        } else {
            format!("{}:10100", args.cluster)
        };
        with_port
            .to_socket_addrs()
            .map_err(|e| format!("--cluster {}: {e}", args.cluster))?
            .next()
            .ok_or_else(|| format!("--cluster {}: no address", args.cluster))?
    };
    let location = args.location.as_deref().map(parse_location).transpose()?;
    let name = args.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "worker".into())
    });
    let runtime: Box<dyn runtime::Runtime> = match args.runtime.as_str() {
        "sim" => Box::new(runtime::SimRuntime::open(
            args.state_dir.join("sim-instances.cbor"),
        )),
        "native" => {
            return Err(
                "the native container runtime is not built yet: run with --runtime sim".into(),
            );
        }
        other => return Err(format!("--runtime {other}: use native or sim")),
    };
    std::fs::create_dir_all(&args.state_dir)
        .map_err(|e| format!("{}: {e}", args.state_dir.display()))?;
    let settings = control::Settings {
        cluster,
        name,
        join_token: args.join_token.clone(),
        state_dir: args.state_dir.clone(),
        location,
        max_instances: args.max_instances,
        cpus: args.cpus,
        memory_mib: args.memory_mib,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(control::run(settings, runtime, async {
        let _ = tokio::signal::ctrl_c().await;
    }))
    .map_err(|e| e.to_string())
}
