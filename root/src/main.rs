//! `grove-root` entry point.
use clap::{CommandFactory, FromArgMatches};

fn main() {
    let flags: Vec<grove_proto::config::Flag> = grove_root::Args::command()
        .get_arguments()
        .map(|a| grove_proto::config::Flag {
            id: a.get_id().to_string(),
            takes_value: a.get_action().takes_values(),
        })
        .collect();
    let argv = match grove_proto::config::args_with_config(std::env::args().collect(), &flags) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("grove-root: {e}");
            std::process::exit(2);
        }
    };
    let args =
        grove_root::Args::from_arg_matches(&grove_root::Args::command().get_matches_from(argv))
            .unwrap_or_else(|e| e.exit());
    if let Err(e) = grove_root::run(args) {
        eprintln!("grove-root: {e}");
        std::process::exit(1);
    }
}
