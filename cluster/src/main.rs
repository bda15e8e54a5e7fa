//! `grove-cluster` entry point.

fn main() {
    let args = grove_proto::config::parse::<grove_cluster::Args>("grove-cluster");
    if let Err(e) = grove_cluster::run(args) {
        eprintln!("grove-cluster: {e}");
        std::process::exit(1);
    }
}
