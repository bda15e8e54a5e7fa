//! `grove-agent` entry point.
use clap::Parser;

fn main() {
    if let Err(e) = grove_agent::run(grove_agent::Args::parse()) {
        eprintln!("grove-agent: {e}");
        std::process::exit(1);
    }
}
