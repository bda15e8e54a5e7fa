//! `grove-root` entry point.

fn main() {
    let args = grove_proto::config::parse::<grove_root::Args>("grove-root");
    if let Err(e) = grove_root::run(args) {
        eprintln!("grove-root: {e}");
        std::process::exit(1);
    }
}
