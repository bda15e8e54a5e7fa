//! `grove` entry point. `grove up` runs the tiers as children of this same binary:
//! with `GROVE_AS` set to `root`, `cluster` or `agent` it is that daemon, with the
//! daemon's own flags (and the agent's supervisor, which inherits the variable).

use clap::Parser;

fn main() {
    let as_daemon = std::env::var("GROVE_AS").ok();
    let code = match as_daemon.as_deref() {
        Some("root") => {
            let args = grove_proto::config::parse::<grove_root::Args>("grove-root");
            daemon("grove-root", grove_root::run(args).map(|()| 0))
        }
        Some("cluster") => {
            let args = grove_proto::config::parse::<grove_cluster::Args>("grove-cluster");
            daemon("grove-cluster", grove_cluster::run(args).map(|()| 0))
        }
        Some("agent") => {
            let args = grove_proto::config::parse::<grove_agent::Args>("grove-agent");
            daemon("grove-agent", grove_agent::run(args))
        }
        _ => grove_cli::run(grove_cli::Cli::parse()),
    };
    std::process::exit(code);
}

fn daemon(name: &str, r: Result<i32, String>) -> i32 {
    r.unwrap_or_else(|e| {
        eprintln!("{name}: {e}");
        1
    })
}
