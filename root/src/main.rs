//! `grove-root` entry point.
use clap::Parser;

fn main() {
    if let Err(e) = grove_root::run(grove_root::Args::parse()) {
        eprintln!("grove-root: {e}");
        std::process::exit(1);
    }
}
