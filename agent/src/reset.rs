//! `grove-agent reset`: a worker taken out for good leaves nothing behind — its
//! containers (through their supervisor, started if none runs so that it adopts what
//! still runs), the supervisor, its links, its nftables table and its state directory.

use crate::net::netlink::Kernel;
use crate::net::{Names, nat};
use crate::supervisor::{self, Reply, Request};
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether process `pid` still runs (a zombie waiting for its parent does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

/// Remove everything agent `name` with state in `dir` made on this machine.
pub fn run(dir: &Path, name: &str) -> Result<(), String> {
    if dir.join("native-instances.cbor").exists() || supervisor::socket_path(dir).exists() {
        supervisor::ensure(dir)?;
        let list = match supervisor::call(dir, &Request::List)? {
            Reply::List(l) => l,
            other => return Err(format!("unexpected supervisor answer {other:?}")),
        };
        for e in list {
            match supervisor::call(dir, &Request::Remove(e.id.clone()))? {
                Reply::Error(err) => return Err(format!("removing container {}: {err}", e.id)),
                _ => tracing::info!(container = %e.id, "removed"),
            }
        }
        let pid = std::fs::read_to_string(dir.join("supervisor.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    crate::container::quota::release(dir);
    let names = Names::of(name);
    crate::net::remove_agent(&mut Kernel, &names)?;
    // An empty rule set deletes the table (whether it exists or not).
    nat::apply(&nat::ruleset(&nat::Tables {
        table: &names.nat_table(),
        subnet: crate::net::Cidr {
            addr: std::net::Ipv4Addr::UNSPECIFIED,
            len: 0,
        },
        me: None,
        services: &[],
        looked_up: &[],
        mappings: &[],
        group: None,
        guard: None,
        ports: &[],
    }))?;
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("{}: {e}", dir.display()));
        }
        _ => {}
    }
    tracing::info!(agent = name, "reset: nothing of this worker is left");
    Ok(())
}
