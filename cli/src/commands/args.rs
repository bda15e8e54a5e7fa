//! The client commands' arguments, as clap parses them.

use super::*;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

/// Options every client command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The root's API (default: the one `grove login` saved).
    #[arg(long, global = true, env = "GROVE_ROOT")]
    pub root: Option<String>,
    /// How to print results.
    #[arg(
        long,
        short,
        global = true,
        value_enum,
        default_value = "table",
        env = "GROVE_OUTPUT"
    )]
    pub output: Output,
}

/// `grove app …`.
#[derive(Debug, Subcommand)]
pub enum AppCmd {
    /// Deploy an SLA (Oakestra's v2.0 descriptor): create its applications and
    /// services, start instances, and show each instance's progress until every one
    /// is RUNNING or one failed.
    Deploy {
        /// The SLA file (`-`: standard input).
        sla: String,
        /// Instances to start per service.
        #[arg(long, default_value_t = 1)]
        instances: u32,
        /// Return once the instances are asked for.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Your applications (every user's with --all, for Admin).
    Ls {
        /// Every user's (Admin).
        #[arg(long)]
        all: bool,
    },
    /// An application and its services.
    Show {
        /// Name, name.namespace, or id.
        app: String,
    },
    /// Delete an application, its services and instances.
    Rm {
        /// Name, name.namespace, or id.
        app: String,
    },
}

/// `grove service …`.
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Your services.
    Ls {
        /// Only this application's.
        #[arg(long)]
        app: Option<String>,
    },
    /// A service and its instances.
    Show {
        /// Name, app.name, or id.
        service: String,
    },
    /// Replace a service's spec (a microservice of the SLA, as JSON): its instances are
    /// replaced one at a time, never fewer running than before; shows the progress
    /// until every instance runs the new spec.
    Update {
        /// Name, app.name, or id.
        service: String,
        /// The new spec (`-`: standard input).
        spec: String,
        /// Return once the update is asked for.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Add or remove instances until the service has this many.
    Scale {
        /// Name, app.name, or id.
        service: String,
        /// How many instances.
        instances: u32,
    },
    /// Delete a service and its instances.
    Rm {
        /// Name, app.name, or id.
        service: String,
    },
}

/// `grove instance …`.
#[derive(Debug, Subcommand)]
pub enum InstanceCmd {
    /// Start one more instance of a service.
    Add {
        /// Name, app.name, or id.
        service: String,
    },
    /// Remove an instance.
    Rm {
        /// Name, app.name, or id.
        service: String,
        /// Its number.
        number: u32,
    },
}

/// `grove cluster …`.
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Every cluster, with its aggregate capacity.
    Ls,
}

/// `grove node …`.
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Workers with their usage, asked of their clusters.
    Ls {
        /// Only this cluster's (name or id).
        #[arg(long)]
        cluster: Option<String>,
    },
}

/// `grove token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// A join token: for `grove-cluster --join-token`, or with --cluster for that
    /// cluster's `grove-agent --join-token`. Prints the token.
    Create {
        /// A worker token of this cluster (name or id).
        #[arg(long)]
        cluster: Option<String>,
        /// Valid for this long.
        #[arg(long, default_value_t = 3600)]
        expires_in_secs: u64,
        /// Good for many joins (default: one).
        #[arg(long)]
        reusable: bool,
    },
    /// Join tokens (never their secrets).
    Ls {
        /// This cluster's worker tokens (name or id).
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Revoke a join token.
    Revoke {
        /// Its id (or the whole token).
        id: String,
        /// A worker token of this cluster (name or id).
        #[arg(long)]
        cluster: Option<String>,
    },
}

/// `grove logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Name, app.name, or id.
    pub service: String,
    /// Which instance.
    #[arg(long, short, default_value_t = 0)]
    pub instance: u32,
    /// Keep printing what is written.
    #[arg(long, short)]
    pub follow: bool,
    /// How many bytes of the end to print first.
    #[arg(long, default_value_t = 16384)]
    pub tail: u32,
}

/// `grove login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User name.
    #[arg(long, short, default_value = "Admin")]
    pub username: String,
    /// Organization to log in to.
    #[arg(long)]
    pub organization: Option<String>,
    /// Read the password from standard input (else `GROVE_PASSWORD`, else a prompt).
    #[arg(long)]
    pub password_stdin: bool,
    /// The CA certificate (PEM) that signed the root's HTTPS certificate.
    #[arg(long)]
    pub ca_cert: Option<std::path::PathBuf>,
}
