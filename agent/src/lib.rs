//! `grove-agent`: the worker agent (containers on namespaces and cgroups, overlay via
//! netlink, heartbeats and commands over CoAP).
//!
//! Only the command line exists so far (the cluster and runtime issues build the rest);
//! the binary says so and exits non-zero.

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
    /// Container runtime: native or sim.
    #[arg(long, env = "GROVE_RUNTIME", default_value = "native")]
    pub runtime: String,
}

/// Run the agent; not implemented yet.
pub fn run(_args: Args) -> Result<(), String> {
    Err(
        "grove-agent is not implemented yet: this build has only the tier protocol \
         (use `grove up` to see it work)"
            .into(),
    )
}
