//! `grove` entry point.
use clap::Parser;

fn main() {
    let cli = grove_cli::Cli::parse();
    std::process::exit(grove_cli::run(cli));
}
