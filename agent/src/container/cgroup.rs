//! A container's control group with cgroups-rs: memory (no swap beyond it), CPU quota,
//! pids; the hierarchy (v1, hybrid or v2) detected, never assumed. Figures and the OOM
//! count are read from the controller files.

use super::spec::Limits;
use cgroups_rs::{Cgroup, CgroupPid, MaxValue, cgroup_builder::CgroupBuilder, hierarchies};
use std::path::PathBuf;

const PERIOD_US: u64 = 100_000;

/// Where Grove's containers' groups live inside each hierarchy.
pub const PARENT: &str = "grove";

/// This process's agent's part of [`PARENT`] (see [`scope_to`]).
static SCOPE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Put this process's groups under `grove/<8 hex of the state directory>/`: several
/// agents on one machine (a test bed, `grove up`) run instances with the same ids, and
/// must never share (or kill) each other's groups. Every process of one agent (the
/// agent, its supervisor, `grove-agent run`) has the same state directory.
pub fn scope_to(state_dir: &std::path::Path) {
    let path = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let h = path.to_string_lossy().bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let _ = SCOPE.set(format!("{PARENT}/{h:08x}"));
}

/// One container's group.
#[derive(Debug)]
pub struct Group {
    cg: Cgroup,
    name: String,
}

fn v2() -> bool {
    hierarchies::is_cgroup2_unified_mode()
}

/// A controller file of group `name` (`controller` names the v1 hierarchy).
fn file(name: &str, controller: &str, v1: &str, v2_name: &str) -> PathBuf {
    if v2() {
        PathBuf::from("/sys/fs/cgroup").join(name).join(v2_name)
    } else {
        PathBuf::from("/sys/fs/cgroup")
            .join(controller)
            .join(name)
            .join(v1)
    }
}

fn read_u64(p: &PathBuf) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// A `key value` line of a flat-keyed controller file.
fn keyed(p: &PathBuf, key: &str) -> Option<u64> {
    std::fs::read_to_string(p)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

/// The controllers Grove enforces limits with (`memory`, `cpu`, `pids`) that this
/// machine's kernel does not offer, from `/proc/self/mountinfo` (v1 and hybrid) or
/// the root's `cgroup.controllers` (v2). Raspberry Pi OS boots some kernels without
/// the memory controller until `cgroup_enable=memory cgroup_memory=1` is on the
/// kernel command line.
pub fn missing_controllers() -> Vec<&'static str> {
    let mut have: Vec<String> = Vec::new();
    if v2() {
        if let Ok(c) = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers") {
            have.extend(c.split_whitespace().map(str::to_owned));
        }
    } else if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in m.lines() {
            let Some((_, right)) = line.split_once(" - ") else {
                continue;
            };
            let mut r = right.split_whitespace();
            if r.next() == Some("cgroup") {
                if let Some(opts) = r.nth(1) {
                    have.extend(opts.split(',').map(str::to_owned));
                }
            }
        }
    }
    let hidden = hidden_for_tests();
    ["memory", "cpu", "pids"]
        .into_iter()
        .filter(|c| !have.iter().any(|h| h == c) || hidden.iter().any(|h| h == c))
        .collect()
}

/// Controllers a test build pretends this kernel lacks (`GROVE_TEST_HIDE_CONTROLLERS`).
#[cfg(feature = "defences-off")]
fn hidden_for_tests() -> Vec<String> {
    std::env::var("GROVE_TEST_HIDE_CONTROLLERS")
        .unwrap_or_default()
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(not(feature = "defences-off"))]
fn hidden_for_tests() -> Vec<String> {
    Vec::new()
}

/// What the kernel says to do about a missing controller.
pub fn fix_for(controller: &str) -> &'static str {
    match controller {
        "memory" => {
            "add `cgroup_enable=memory cgroup_memory=1` to the kernel command line \
             (/boot/firmware/cmdline.txt on Raspberry Pi OS) and reboot"
        }
        _ => "use a kernel built with this cgroup controller",
    }
}

impl Group {
    /// The group of container `id`.
    pub fn name_of(id: &str) -> String {
        format!("{}/{id}", SCOPE.get().map_or(PARENT, String::as_str))
    }

    /// Create (or take over) the group of container `id` with `limits`.
    pub fn create(id: &str, limits: &Limits) -> Result<Self, String> {
        let name = Self::name_of(id);
        // Without a cgroup file system the builder makes nothing and says nothing:
        // the limits would silently not hold.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        if !mounts
            .lines()
            .any(|l| matches!(l.split_whitespace().nth(2), Some("cgroup" | "cgroup2")))
        {
            return Err(
                "no cgroup file system is mounted (under `ip netns exec`, which \
                        mounts a /sys of its own? enter the namespace with \
                        `nsenter --net=/run/netns/NAME` instead)"
                    .into(),
            );
        }
        let mut b = CgroupBuilder::new(&name);
        // A limit of a controller the kernel lacks is not asked for (the worker says
        // it cannot enforce it, and the cluster places nothing here that sets it).
        let missing = missing_controllers();
        let limits = &Limits {
            memory_bytes: if missing.contains(&"memory") {
                0
            } else {
                limits.memory_bytes
            },
            millicpus: if missing.contains(&"cpu") {
                0
            } else {
                limits.millicpus
            },
            pids: if missing.contains(&"pids") {
                0
            } else {
                limits.pids
            },
        };
        if limits.memory_bytes > 0 {
            let m = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
            b = b.memory().memory_hard_limit(m).done();
        }
        if limits.millicpus > 0 {
            let quota =
                i64::from(limits.millicpus) * i64::try_from(PERIOD_US / 1000).unwrap_or(100);
            b = b.cpu().period(PERIOD_US).quota(quota).done();
        }
        if limits.pids > 0 {
            b = b
                .pid()
                .maximum_number_of_processes(MaxValue::Value(i64::from(limits.pids)))
                .done();
        }
        let cg = b
            .build(hierarchies::auto())
            .map_err(|e| format!("cgroup {name}: {e}"))?;
        let g = Self { cg, name };
        if limits.memory_bytes > 0 {
            // No swap beyond the memory limit: the limit is the limit.
            let (swap, value) = if v2() {
                (
                    file(&g.name, "memory", "", "memory.swap.max"),
                    "0".to_owned(),
                )
            } else {
                (
                    file(&g.name, "memory", "memory.memsw.limit_in_bytes", ""),
                    limits.memory_bytes.to_string(),
                )
            };
            if swap.exists() {
                std::fs::write(&swap, value).map_err(|e| format!("{}: {e}", swap.display()))?;
            }
        }
        Ok(g)
    }

    /// The group of container `id` as it exists (after a restart).
    pub fn load(id: &str) -> Self {
        let name = Self::name_of(id);
        Self {
            cg: Cgroup::load(hierarchies::auto(), &name),
            name,
        }
    }

    /// Put process `pid` (and its future children) in the group.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        self.cg
            .add_task_by_tgid(CgroupPid::from(u64::from(pid)))
            .map_err(|e| format!("cgroup {}: add {pid}: {e}", self.name))
    }

    /// Processes in the group.
    pub fn pids(&self) -> Vec<u32> {
        self.cg
            .procs()
            .into_iter()
            .filter_map(|p| u32::try_from(p.pid).ok())
            .collect()
    }

    /// How many processes the kernel's OOM killer killed in the group.
    pub fn oom_kills(&self) -> u64 {
        if v2() {
            keyed(
                &file(&self.name, "memory", "", "memory.events"),
                "oom_kill ",
            )
            .unwrap_or(0)
        } else {
            keyed(
                &file(&self.name, "memory", "memory.oom_control", ""),
                "oom_kill ",
            )
            .unwrap_or(0)
        }
    }

    /// Memory in use, bytes.
    pub fn memory_bytes(&self) -> u64 {
        if v2() {
            read_u64(&file(&self.name, "memory", "", "memory.current")).unwrap_or(0)
        } else {
            read_u64(&file(&self.name, "memory", "memory.usage_in_bytes", "")).unwrap_or(0)
        }
    }

    /// CPU time used, microseconds.
    pub fn cpu_usec(&self) -> u64 {
        if v2() {
            keyed(&file(&self.name, "cpu", "", "cpu.stat"), "usage_usec ").unwrap_or(0)
        } else {
            read_u64(&file(&self.name, "cpuacct", "cpuacct.usage", "")).unwrap_or(0) / 1000
        }
    }

    /// SIGKILL every process in the group and remove it.
    pub fn destroy(&self) -> Result<(), String> {
        // Killed processes leave their group as they finish exiting: wait for that
        // (5 s at most, a loaded machine is slow) before removing it.
        for _ in 0..250 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(p).unwrap_or(0)),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut last = Ok(());
        for _ in 0..50 {
            last = self.cg.delete();
            if last.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        last.map_err(|e| format!("cgroup {}: remove: {e}", self.name))
    }
}
