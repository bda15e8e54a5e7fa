//! `grove`: the command-line client of the root API, and `grove up` (the whole system
//! on this machine).

pub mod up;

use clap::{Parser, Subcommand};

/// The `grove` command.
#[derive(Debug, Parser)]
#[command(
    name = "grove",
    version,
    about = "Grove: a lightweight hierarchical edge orchestrator"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run Grove on this machine (root, cluster, two workers in network namespaces)
    /// and deploy the seed's application; Ctrl-C stops it and removes what it made.
    Up(up::UpArgs),
}

/// Run a command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Up(a) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("grove up: cannot start the runtime: {e}");
                    return 1;
                }
            };
            match rt.block_on(up::up(a)) {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => {
                    eprintln!("grove up: {e}");
                    1
                }
            }
        }
    }
}
