//! `grove-cluster`: the cluster orchestrator (node registry, cluster scheduler, failure
//! detection, root link).
//!
//! Built so far: the command line and the cluster scheduler ([`scheduler`]); the
//! registry, links and storage are still to come, so the binary says so and exits
//! non-zero.

pub mod scheduler;

use clap::Parser;

/// Command line of `grove-cluster` (flags as in DESIGN.md).
#[derive(Debug, Parser)]
#[command(name = "grove-cluster", version, about = "Grove cluster orchestrator")]
pub struct Args {
    /// The root's CoAP address, HOST[:PORT].
    #[arg(long, env = "GROVE_ROOT")]
    pub root: String,
    /// This cluster's name.
    #[arg(long, env = "GROVE_NAME")]
    pub name: String,
    /// Location, LAT,LON.
    #[arg(long, env = "GROVE_LOCATION")]
    pub location: Option<String>,
    /// State directory.
    #[arg(long, env = "GROVE_DATA_DIR", default_value = "/var/lib/grove-cluster")]
    pub data_dir: std::path::PathBuf,
    /// CoAP address.
    #[arg(long, env = "GROVE_COAP", default_value = "0.0.0.0:10100")]
    pub coap: std::net::SocketAddr,
    /// Join token issued by the root.
    #[arg(long, env = "GROVE_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
}

/// Run the cluster; not implemented yet.
pub fn run(_args: Args) -> Result<(), String> {
    Err(
        "grove-cluster is not implemented yet: this build has only the tier protocol \
         (use `grove up` to see it work)"
            .into(),
    )
}
