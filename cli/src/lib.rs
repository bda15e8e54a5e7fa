//! `grove`: the command-line client of the root API, and `grove up` (the whole system
//! on this machine).

pub mod client;
pub mod commands;
pub mod progress;
pub mod up;

use clap::{CommandFactory, Parser, Subcommand};
use commands::{
    AppCmd, ClusterCmd, Global, InstanceCmd, LoginArgs, LogsArgs, NodeCmd, ServiceCmd, TokenCmd,
};

/// The `grove` command.
#[derive(Debug, Parser)]
#[command(
    name = "grove",
    version,
    about = "Grove: a lightweight hierarchical edge orchestrator"
)]
pub struct Cli {
    /// Options of the client commands.
    #[command(flatten)]
    pub global: Global,
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
    /// Log in to a root; its URL and the tokens are kept in ~/.config/grove/config.toml.
    Login(LoginArgs),
    /// Revoke the saved tokens and forget them.
    Logout,
    /// Applications: deploy an SLA, list, show, delete.
    #[command(subcommand)]
    App(AppCmd),
    /// Services: list, show, scale, delete.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Instances of a service: add, remove.
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// An instance's log, read by its worker (through its cluster) on request.
    Logs(LogsArgs),
    /// Clusters.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Workers, asked of their clusters.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Join tokens of clusters, and (with --cluster) of a cluster's workers.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Print a shell completion script (`grove completions bash > /etc/bash_completion.d/grove`).
    Completions {
        /// For which shell.
        shell: clap_complete::Shell,
    },
}

/// Run a command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let g = &cli.global;
    let done = match &cli.command {
        Command::Up(_) => return up_command(cli),
        Command::Login(a) => commands::login(g, a),
        Command::Logout => commands::logout(g),
        Command::App(c) => commands::app(g, c),
        Command::Service(c) => commands::service(g, c),
        Command::Instance(c) => commands::instance(g, c),
        Command::Logs(a) => commands::logs(g, a),
        Command::Cluster(c) => commands::cluster(g, c),
        Command::Node(c) => commands::node(g, c),
        Command::Token(c) => commands::token(g, c),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "grove", &mut std::io::stdout());
            Ok(())
        }
    };
    match done {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("grove: {e}");
            1
        }
    }
}

fn up_command(cli: Cli) -> i32 {
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
        _ => 1,
    }
}
