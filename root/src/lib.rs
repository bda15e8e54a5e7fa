//! `grove-root`: the root orchestrator (Oakestra-compatible HTTP API, SQLite, root
//! scheduler, cluster link).
//!
//! Built so far: the command line, the root scheduler ([`scheduler`]) and the SLA
//! parser with field-path errors ([`sla`]), the SQLite store ([`store`]) and
//! authentication ([`auth`]). The API,
//! storage and cluster link are still to come; the binary says so and exits non-zero
//! rather than pretending to run.

pub mod auth;
pub mod scheduler;
pub mod sla;
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
    /// Password of the `Admin` user created on first start.
    #[arg(long, env = "GROVE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
}

/// Run the root; not implemented yet.
pub fn run(_args: Args) -> Result<(), String> {
    Err(
        "grove-root is not implemented yet: this build has only the tier protocol \
         (use `grove up` to see it work)"
            .into(),
    )
}
