//! `grove-agent`: the worker agent (containers on namespaces and cgroups, overlay via
//! netlink, heartbeats and commands over CoAP).
//!
//! Built so far: the control loop ([`control`]) with the simulated runtime
//! ([`runtime::SimRuntime`], `--runtime sim`); the native container runtime and the
//! overlay come with their issues.

pub mod confined;
pub mod container;
pub mod control;
pub use grove_proto::defence;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod limits;
pub mod logs;
pub mod native;
pub mod net;
pub mod oneshot;
pub mod reset;
pub mod runtime;
pub mod supervisor;

use clap::Parser;

/// Command line of `grove-agent` (flags as in DESIGN.md).
#[derive(Debug, Parser)]
#[command(name = "grove-agent", version, about = "Grove worker agent")]
pub struct Args {
    /// Something other than running the agent.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Configuration file (TOML; keys are the long flag names).
    #[arg(long, env = "GROVE_CONFIG", global = true)]
    pub config: Option<std::path::PathBuf>,
    /// The cluster's CoAP address, HOST[:PORT].
    #[arg(long, env = "GROVE_CLUSTER")]
    pub cluster: Option<String>,
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
    /// Instances' networking: `kernel` (a bridge and a veth pair per instance, in
    /// this worker's subnet) or `none` (each instance alone in its namespace).
    #[arg(long, env = "GROVE_DATA_PLANE", default_value = "kernel")]
    pub data_plane: String,
    /// Seconds an image no instance uses is kept (so a redeploy finds it cached).
    #[arg(long, env = "GROVE_IMAGE_KEEP_SECS", default_value_t = 600)]
    pub image_keep_secs: u64,
    /// Seconds a looked-up service of another cluster is kept without a new flow to it.
    #[arg(long, env = "GROVE_LOOKUP_IDLE_SECS", default_value_t = 60)]
    pub lookup_idle_secs: u64,
    /// Images of REGISTRY come from URL first, as containerd's registry mirrors
    /// (`docker.io=http://127.0.0.1:5000`); may repeat.
    #[arg(long = "registry-mirror", value_name = "REGISTRY=URL", global = true)]
    pub registry_mirrors: Vec<String>,
    /// A registry (HOST[:PORT]) reached over plain HTTP; may repeat.
    #[arg(long = "insecure-registry", value_name = "HOST", global = true)]
    pub insecure_registries: Vec<String>,
    /// CA certificates (PEM) trusted for registries besides the system's.
    #[arg(long, env = "GROVE_REGISTRY_CA", global = true)]
    pub registry_ca: Option<std::path::PathBuf>,
    /// Credentials for a registry; may repeat.
    #[arg(
        long = "registry-auth",
        value_name = "HOST=USER:PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub registry_auth: Vec<String>,
    /// Memory of a service that sets none, MiB (0: unbounded).
    #[arg(
        long,
        env = "GROVE_DEFAULT_MEMORY_MIB",
        default_value_t = 512,
        global = true
    )]
    pub default_memory_mib: u32,
    /// CPUs of a service that sets none (0: unbounded).
    #[arg(
        long,
        env = "GROVE_DEFAULT_VCPUS",
        default_value_t = 1.0,
        global = true
    )]
    pub default_vcpus: f32,
    /// Writable layer of a service that sets no `storage`, MiB (0: unbounded).
    #[arg(
        long,
        env = "GROVE_DEFAULT_STORAGE_MIB",
        default_value_t = 1024,
        global = true
    )]
    pub default_storage_mib: u32,
    /// Size of the file system (a sparse image in the state directory) holding every
    /// bounded writable layer, MiB.
    #[arg(
        long,
        env = "GROVE_STORAGE_POOL_MIB",
        default_value_t = 16384,
        global = true
    )]
    pub storage_pool_mib: u64,
    /// Host ports port mappings may use, FIRST-LAST (below 1024 only if FIRST is).
    #[arg(long, env = "GROVE_HOST_PORTS", default_value = "1024-65535")]
    pub host_ports: String,
    /// A directory whose OCI layouts (`oci:`, `oci-archive:`) an SLA may name; may
    /// repeat (none by default; `grove-agent run` reads any path).
    #[arg(long = "oci-dir", value_name = "DIR")]
    pub oci_dirs: Vec<std::path::PathBuf>,
    /// The only registries an SLA may name, comma-separated (default: any but the
    /// worker's own loopback and link-local addresses).
    #[arg(long, value_delimiter = ',', env = "GROVE_ALLOWED_REGISTRIES")]
    pub allowed_registries: Vec<String>,
    /// Largest size of the image store, MiB (unused images are collected first; 0:
    /// unbounded).
    #[arg(long, env = "GROVE_IMAGE_STORE_MIB", default_value_t = 8192)]
    pub image_store_mib: u64,
    /// First host id of the pool containers' user namespaces come from.
    #[arg(
        long,
        env = "GROVE_USERNS_BASE",
        default_value_t = 524_288,
        global = true
    )]
    pub userns_base: u32,
    /// Host ids per container (at least 65536).
    #[arg(
        long,
        env = "GROVE_USERNS_IDS",
        default_value_t = 65_536,
        global = true
    )]
    pub userns_ids: u32,
    /// Containers the pool holds (default: up to host id 0x6FFFFFFF, systemd's
    /// container range).
    #[arg(long, env = "GROVE_USERNS_SLOTS", global = true)]
    pub userns_slots: Option<u32>,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run one container in the foreground, as `docker run --rm`: its output passed
    /// through, its exit code returned (diagnosing a node; benchmarking).
    Run {
        /// Memory limit, MB.
        #[arg(long)]
        memory: Option<u32>,
        /// CPUs (fractions allowed: 0.5).
        #[arg(long)]
        vcpus: Option<f32>,
        /// The image (`busybox`, `127.0.0.1:5000/app:1`, `oci:/path:tag`).
        image: String,
        /// Command and arguments (default: the image's).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// The container supervisor (started by the agent; survives its restarts).
    #[command(hide = true)]
    Supervise,
    /// Take this worker out for good (the agent stopped first): remove its containers,
    /// their supervisor, its network objects and nftables table (those of `--name`),
    /// and its state directory. Joining again needs a new token.
    Reset,
}

impl Args {
    /// The registry settings from the flags.
    pub fn registry_config(&self) -> Result<image::RegistryConfig, String> {
        let mut cfg = image::RegistryConfig {
            ca_file: self.registry_ca.clone(),
            insecure: self.insecure_registries.iter().cloned().collect(),
            ..image::RegistryConfig::default()
        };
        for m in &self.registry_mirrors {
            cfg.add_mirror(m)?;
        }
        for a in &self.registry_auth {
            cfg.add_auth(a)?;
        }
        Ok(cfg)
    }
}

impl Args {
    /// The containment settings from the flags.
    pub fn containment(&self) -> Result<limits::Containment, String> {
        let slots = self.userns_slots.unwrap_or_else(|| {
            0x7000_0000u32.saturating_sub(self.userns_base) / self.userns_ids.max(1)
        });
        let ids = container::userns::IdPool {
            base: self.userns_base,
            size: self.userns_ids,
            slots,
        };
        ids.check()
            .map_err(|e| format!("--userns-base/--userns-ids/--userns-slots: {e}"))?;
        if !(0.0..=1024.0).contains(&self.default_vcpus) {
            return Err(format!("--default-vcpus {}: 0 to 1024", self.default_vcpus));
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let default_millicpus = (self.default_vcpus * 1000.0).round() as u32;
        Ok(limits::Containment {
            ids,
            default_memory_mib: self.default_memory_mib,
            default_millicpus,
            default_storage_mib: self.default_storage_mib,
            storage_pool_mib: self.storage_pool_mib.max(256),
            host_ports: limits::parse_range(&self.host_ports)
                .map_err(|e| format!("--host-ports {e}"))?,
            oci_dirs: self.oci_dirs.clone(),
            allowed_registries: self.allowed_registries.clone(),
            image_store_mib: self.image_store_mib,
        })
    }
}

/// The agent's name: `--name`, else the host name.
fn agent_name(args: &Args) -> String {
    args.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "worker".into())
    })
}

/// Run the agent until Ctrl-C (or a subcommand); returns the exit code.
pub fn run(args: Args) -> Result<i32, String> {
    // `run` prints only what goes wrong; the daemon says what it does.
    let quiet = matches!(args.command, Some(Command::Run { .. }));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| if quiet { "warn" } else { "info" }.into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match &args.command {
        Some(Command::Run {
            memory,
            vcpus,
            image,
            cmd,
        }) => {
            let millicpus = vcpus.map(|v| {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let m = (v * 1000.0).round().max(1.0) as u32;
                m
            });
            return oneshot::run(&args, image, cmd, *memory, millicpus);
        }
        Some(Command::Supervise) => return supervisor::run(&args.state_dir).map(|()| 0),
        Some(Command::Reset) => {
            return reset::run(&args.state_dir, &agent_name(&args)).map(|()| 0);
        }
        None => {}
    }
    let cluster = args
        .cluster
        .as_deref()
        .ok_or("--cluster HOST[:PORT] is required")?;
    let cluster = {
        use std::net::ToSocketAddrs;
        let with_port = if cluster.contains(':') {
            cluster.to_owned()
        } else {
            format!("{cluster}:10100")
        };
        with_port
            .to_socket_addrs()
            .map_err(|e| format!("--cluster {cluster}: {e}"))?
            .next()
            .ok_or_else(|| format!("--cluster {cluster}: no address"))?
    };
    let location = args
        .location
        .as_deref()
        .map(grove_proto::util::parse_location)
        .transpose()?;
    let name = agent_name(&args);
    let containment = args.containment()?;
    let mut unenforced: Vec<&'static str> = Vec::new();
    let runtime: Box<dyn runtime::Runtime> = match args.runtime.as_str() {
        "sim" => Box::new(runtime::SimRuntime::open(
            args.state_dir.join("sim-instances.cbor"),
        )),
        "native" => {
            let wired = match args.data_plane.as_str() {
                "kernel" => true,
                "none" => false,
                other => return Err(format!("--data-plane {other}: use kernel or none")),
            };
            let rt = native::NativeRuntime::open(
                &args.state_dir,
                args.registry_config()?,
                containment.clone(),
            )?;
            unenforced = rt.unenforced().to_vec();
            Box::new(
                rt.wired(wired)
                    .lookup_idle(std::time::Duration::from_secs(args.lookup_idle_secs))
                    .image_keep(std::time::Duration::from_secs(args.image_keep_secs)),
            )
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
        limits: Some(containment.advertise(&unenforced)),
        tick: control::TICK,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(control::run(settings, runtime, async {
        let _ = tokio::signal::ctrl_c().await;
    }))
    .map_err(|e| e.to_string())?;
    Ok(0)
}
