//! `grove-agent` entry point.

fn main() {
    let args = grove_proto::config::parse::<grove_agent::Args>("grove-agent");
    match grove_agent::run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("grove-agent: {e}");
            std::process::exit(1);
        }
    }
}
