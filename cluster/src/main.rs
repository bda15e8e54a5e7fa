//! `grove-cluster` entry point.
use clap::Parser;

fn main() {
    if let Err(e) = grove_cluster::run(grove_cluster::Args::parse()) {
        eprintln!("grove-cluster: {e}");
        std::process::exit(1);
    }
}
