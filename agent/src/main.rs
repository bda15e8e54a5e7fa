//! `grove-agent` entry point.
use clap::{CommandFactory, FromArgMatches};

fn main() {
    let flags: Vec<grove_proto::config::Flag> = grove_agent::Args::command()
        .get_arguments()
        .map(|a| grove_proto::config::Flag {
            id: a.get_id().to_string(),
            takes_value: a.get_action().takes_values(),
        })
        .collect();
    let argv = match grove_proto::config::args_with_config(std::env::args().collect(), &flags) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("grove-agent: {e}");
            std::process::exit(2);
        }
    };
    let args =
        grove_agent::Args::from_arg_matches(&grove_agent::Args::command().get_matches_from(argv))
            .unwrap_or_else(|e| e.exit());
    if let Err(e) = grove_agent::run(args) {
        eprintln!("grove-agent: {e}");
        std::process::exit(1);
    }
}
