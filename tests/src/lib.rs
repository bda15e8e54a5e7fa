//! Shared helpers of Grove's end-to-end and interop tests.
//!
//! Tests that need an outside tool (libcoap's client, aiocoap in a venv, root) find it
//! here. Outside CI a missing tool makes the test print why and return; with
//! `CI=true` it fails instead, so CI can never pass by skipping.

pub mod daemons;
pub mod oci;
pub mod registry;
pub mod relay;
pub mod testbed;

use grove_proto::coap::driver::{self, Handle, Router};
use grove_proto::coap::{Config, Endpoint};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Whether we run in CI, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Report a missing prerequisite: panic in CI, else say so and let the test return.
pub fn missing(what: &str) {
    let msg = format!("{what} is not available: run `bash scripts/test-deps.sh` (as root) first");
    if in_ci() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED (not in CI): {msg}");
}

/// Whether this process runs as root; if not, [`missing`] says so (and fails in CI).
pub fn have_root(what: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false);
    if !root {
        missing(&format!("root (for {what})"));
    }
    root
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Find an executable on PATH.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        missing(name);
    }
    found
}

/// The Python of the test venv that has aiocoap with OSCORE (`GROVE_VENV` or `.venv`).
pub fn aiocoap_python() -> Option<PathBuf> {
    let venv = std::env::var_os("GROVE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"));
    let py = venv.join("bin/python");
    let ok = std::process::Command::new(&py)
        .args(["-c", "import aiocoap.oscore, cbor2, cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(py)
    } else {
        missing(&format!("aiocoap[oscore] in {}", venv.display()));
        None
    }
}

/// A script of the interop suite.
pub fn interop_script(name: &str) -> PathBuf {
    repo_root().join("tests/interop").join(name)
}

/// A CoAP server on 127.0.0.1 (port chosen by the OS) with `router`.
pub async fn serve(router: Router, cfg: Config) -> Handle {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let (handle, _task) = driver::spawn(socket, Endpoint::new(cfg), router).expect("driver");
    handle
}

/// A client endpoint on 127.0.0.1.
pub async fn client(cfg: Config) -> Handle {
    serve(Router::new(), cfg).await
}

/// Output of a finished helper process.
#[derive(Debug)]
pub struct Output {
    /// Exit status success.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Run a command to completion with a time limit.
pub async fn run(program: &Path, args: &[&str], limit: Duration) -> Output {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(limit, child).await {
        Ok(Ok(o)) => Output {
            success: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("cannot run {}: {e}", program.display()),
        Err(_) => panic!(
            "{} {args:?} did not finish within {limit:?}",
            program.display()
        ),
    }
}

/// A deterministic test body of `len` bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b"grove-interop-"[i % 14]).collect()
}

/// The inputs of a fuzz corpus directory, by file name, sorted: the fuzzers' corpora
/// are replayed on stable Rust as tests, so every input they kept (and every crash
/// they found, once fixed) stays one.
pub fn corpus(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .map(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, data)
        })
        .collect();
    v.sort();
    v
}
