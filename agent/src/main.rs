//! `grove-agent` entry point.

fn main() {
    let args = grove_proto::config::parse::<grove_agent::Args>("grove-agent");
    if let Err(e) = grove_agent::run(args) {
        eprintln!("grove-agent: {e}");
        std::process::exit(1);
    }
}
