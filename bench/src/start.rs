//! Container start against crun, both with the same defences: the same busybox root
//! file system, `/bin/true` run again and again in new mount, PID, UTS, IPC, network,
//! cgroup and user namespaces (container root an unprivileged host uid), a memory
//! cgroup and a pids limit, Docker's default capabilities minus NET_RAW and MKNOD,
//! no_new_privs, the OCI runtimes' masked and read-only paths, and Grove's seccomp
//! allow-list (Docker's default profile) — Grove's runtime path (the agent's launch:
//! idmapped layer, overlayfs, cgroup, clone, pivot_root, exec; then wait and remove)
//! against `crun run` (Debian's crun) with the equivalent `config.json` — alternated in
//! one run. Bounded writable layers (a btrfs subvolume with a quota group each) are
//! measured apart: their one-time setup and their cost per container.

use crate::Ctx;
use crate::report::{Row, Section, Stats, Target};
use grove_agent::container::{self, LaunchSpec, Limits, Paths, seccomp};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const MEMORY: u64 = 64 << 20;

/// Grove's default capabilities, as crun names them.
const CAPS: [&str; 12] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];

/// The host ids crun's container maps its 65536 ids to (away from Grove's pool's
/// first slots).
const CRUN_IDS: u32 = 0x4000_0000;

/// Grove's seccomp allow-list as an OCI `linux.seccomp` section (what Docker writes
/// from its default profile): the same calls, argument rules and errnos.
fn seccomp_section() -> serde_json::Value {
    let names: Vec<&str> = seccomp::allowed().map(|(n, _)| n).collect();
    let masked_zero = |name: &str, mask: u32| {
        json!({"names": [name], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 0, "valueTwo": mask, "op": "SCMP_CMP_MASKED_EQ"}]})
    };
    let mut rules = vec![
        json!({"names": names, "action": "SCMP_ACT_ALLOW"}),
        masked_zero("clone", seccomp::NAMESPACE_FLAGS),
        masked_zero("unshare", seccomp::UNSHARE_FLAGS),
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}),
        json!({"names": ["socket"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": seccomp::AF_VSOCK, "op": "SCMP_CMP_NE"}]}),
    ];
    for v in seccomp::PERSONALITIES {
        rules.push(json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}]}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": rules,
    })
}

/// crun's bundle configuration equivalent to what Grove's launch does.
fn crun_config() -> serde_json::Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/true"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}, {"type": "user"}
            ],
            "uidMappings": [{"containerID": 0, "hostID": CRUN_IDS, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": CRUN_IDS, "size": 65536}],
            "resources": {"memory": {"limit": MEMORY, "swap": MEMORY}, "pids": {"limit": 1024}},
            "cgroupsPath": "/grove-bench-crun",
            "maskedPaths": container::rootfs::MASKED,
            "readonlyPaths": container::rootfs::READ_ONLY,
            "seccomp": seccomp_section()
        }
    })
}

fn launch_spec(id: &str, rootfs: &Path) -> LaunchSpec {
    LaunchSpec {
        id: id.to_owned(),
        layers: vec![rootfs.display().to_string()],
        argv: vec!["/bin/true".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        hostname: "bench".into(),
        limits: Limits {
            memory_bytes: MEMORY,
            millicpus: 0,
            pids: container::spec::DEFAULT_PIDS,
        },
        privileged: false,
        netns: None,
        userns: Some(container::userns::IdPool::default()),
        address: None,
        storage_bytes: 0,
    }
}

/// The size of the bounded writable layer in the runs that have one.
const BOUNDED: u64 = 64 << 20;

/// Grove's path once: launch, wait, remove; with a bounded writable layer when
/// `bounded`. The caller must be single-threaded.
fn grove_once(id: &str, rootfs: &Path, state: &Path, bounded: bool) -> Result<(), String> {
    let containers = state.join("containers");
    let paths = Paths {
        log: None,
        ..Paths::of(&containers, id)
    };
    let mut spec = launch_spec(id, rootfs);
    if bounded {
        spec.storage_bytes = BOUNDED;
    }
    let (pid, _group) = container::launch(&spec, &paths).map_err(|e| e.to_string())?;
    let status = loop {
        match nix::sys::wait::waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => {}
            other => break other.map_err(|e| format!("wait: {e}"))?,
        }
    };
    container::remove(&containers, id)?;
    match status {
        nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
        other => Err(format!("/bin/true in Grove's container: {other:?}")),
    }
}

fn timed(f: impl FnOnce() -> Result<(), String>) -> Result<f64, String> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn crun_once(bundle: &Path, id: &str) -> Result<(), String> {
    let out = Command::new("crun")
        .args(["--cgroup-manager=cgroupfs", "run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .output()
        .map_err(|e| format!("crun: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "crun run: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The internal process that alternates the three (single-threaded, as launch needs):
/// args ROOTFS BUNDLE STATE RUNS; prints the times as JSON.
pub fn ab_process(args: &[String]) -> i32 {
    let [rootfs, bundle, state, runs] = args else {
        eprintln!("start-ab ROOTFS BUNDLE STATE RUNS");
        return 2;
    };
    let (rootfs, bundle, state) = (Path::new(rootfs), Path::new(bundle), Path::new(state));
    let runs: usize = runs.parse().unwrap_or(0);
    container::cgroup::scope_to(state);
    let Ok(me) = std::env::current_exe() else {
        return 1;
    };
    // The file system of bounded layers, made and mounted once: its own row.
    let setup = Instant::now();
    if let Err(e) = container::quota::ensure(state, 4096) {
        eprintln!("bounded layers: {e}");
        return 1;
    }
    let setup_ms = setup.elapsed().as_secs_f64() * 1000.0;
    let mut t: [Vec<f64>; 4] = Default::default();
    for i in 0..runs {
        // A, B, C and D in turn, the order rotated each round.
        for k in 0..4 {
            let which = (i + k) % 4;
            let id = format!("bench-{i}-{which}");
            let r = match which {
                0 => timed(|| grove_once(&id, rootfs, state, false)),
                1 => timed(|| crun_once(bundle, &id)),
                3 => timed(|| grove_once(&id, rootfs, state, true)),
                _ => timed(|| {
                    let ok = Command::new(&me)
                        .args(["--internal", "launch-once", "--internal-args"])
                        .arg(rootfs)
                        .arg(state)
                        .arg(&id)
                        .status()
                        .is_ok_and(|s| s.success());
                    if ok {
                        Ok(())
                    } else {
                        Err("grove-bench launch-once failed".into())
                    }
                }),
            };
            match r {
                Ok(ms) => t[which].push(ms),
                Err(e) => {
                    eprintln!("{e}");
                    return 1;
                }
            }
        }
    }
    container::quota::release(state);
    println!(
        "{}",
        json!({"grove": t[0], "crun": t[1], "grove_cmd": t[2], "grove_bounded": t[3], "bounded_setup": [setup_ms]})
    );
    0
}

/// Grove's path once in a process of its own (the way `crun run` is one): args ROOTFS
/// STATE ID.
pub fn launch_once_process(args: &[String]) -> i32 {
    let [rootfs, state, id] = args else {
        return 2;
    };
    container::cgroup::scope_to(Path::new(state));
    match grove_once(id, Path::new(rootfs), Path::new(state), false) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Let crun run on a hybrid cgroup tree: cgroup2 here holds only `hugetlb`, which crun
/// refuses ("cgroups in hybrid mode not supported"); mounting hugetlb as a v1
/// hierarchy of its own takes it out of cgroup2. Returns what to unmount afterwards.
fn hugetlb_aside(dir: &Path) -> Result<Option<PathBuf>, String> {
    let unified =
        std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
    if !unified.split_whitespace().any(|c| c == "hugetlb") {
        return Ok(None);
    }
    let at = dir.join("hugetlb");
    std::fs::create_dir_all(&at).map_err(|e| e.to_string())?;
    let ok = Command::new("mount")
        .args(["-t", "cgroup", "-o", "hugetlb", "cgroup"])
        .arg(&at)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(Some(at))
    } else {
        Err("cannot mount the hugetlb controller as a v1 hierarchy for crun".into())
    }
}

/// Run it.
pub fn run(ctx: &Ctx) -> Result<Section, String> {
    let dir = ctx.dir("start");
    let runs = ctx.pick(100, 10);
    // The busybox root file system, unpacked from the OCI layout by umoci (a bundle
    // crun can run; Grove takes the same directory as its image layer).
    let layout = dir.join("layout");
    crate::site::images()?
        .write_layout(&layout)
        .map_err(|e| e.to_string())?;
    let bundle = dir.join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:busybox", layout.display()))
        .arg(&bundle)
        .output()
        .map_err(|e| format!("umoci: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "umoci unpack: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    std::fs::write(bundle.join("config.json"), crun_config().to_string())
        .map_err(|e| e.to_string())?;
    // crun's container root (an unprivileged host uid) must reach its root file system:
    // umoci makes the bundle 0700.
    {
        use std::os::unix::fs::PermissionsExt;
        for d in [&dir, &bundle] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
        }
    }
    let rootfs = bundle.join("rootfs");
    let state = dir.join("state");
    let aside = hugetlb_aside(&dir)?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(me)
        .args(["--internal", "start-ab", "--internal-args"])
        .arg(&rootfs)
        .arg(&bundle)
        .arg(&state)
        .arg(runs.to_string())
        .output()
        .map_err(|e| e.to_string());
    if let Some(at) = &aside {
        let _ = Command::new("umount").arg(at).status();
    }
    let out = out?;
    if !out.status.success() {
        return Err(format!(
            "the start benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let times: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("its output: {e}"))?;
    let series = |k: &str| -> Result<Stats, String> {
        let v: Vec<f64> = times[k]
            .as_array()
            .ok_or("no times")?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        Stats::of(&v).ok_or_else(|| "no runs".into())
    };
    let (g, c, gc) = (series("grove")?, series("crun")?, series("grove_cmd")?);
    let (gb, setup) = (series("grove_bounded")?, series("bounded_setup")?);
    let crun_fig = c.latency("ms");
    let crun_version = Command::new("crun")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    Ok(Section {
        title: "3. Container start against crun".into(),
        intro: format!(
            "{runs} rounds, each running `/bin/true` once per contender in rotating order, in \
             one process tree, both sides with the same defences: the busybox root file \
             system unpacked by `umoci unpack`; new mount, PID, UTS, IPC, network, cgroup \
             and user namespaces (container root = an unprivileged host uid; Grove takes \
             a slot of its id pool under its lock and maps the layer with an idmapped \
             mount, crun maps a fixed range and leaves the layer's owners unmapped); a 64 \
             MiB memory cgroup and a pids limit; Docker's default capabilities minus \
             NET_RAW and MKNOD; no_new_privs; the masked and read-only /proc and /sys \
             paths; Grove's seccomp allow-list, which crun gets as the `linux.seccomp` of \
             its `config.json` (Docker's default profile, the same calls and argument \
             rules). *In the supervisor*: the agent's own launch path as its supervisor \
             runs it, in-process, then wait and remove (cgroup, id slot, files). *As a \
             command*: the same in a new process each time (`grove-bench` started like \
             `crun run` is). *Bounded*: in the supervisor, with a 64 MiB writable layer \
             (a btrfs subvolume with a quota group). crun: `crun --cgroup-manager=cgroupfs \
             run` ({crun_version}); on this hybrid cgroup tree the `hugetlb` controller is \
             mounted as a v1 hierarchy of its own first, as crun requires."
        ),
        rows: vec![
            Row::new(
                "start.grove.supervisor",
                "Grove, in the supervisor: create, run /bin/true, wait, remove",
                g.latency("ms"),
                g.n,
            )
            .peer(crun_fig.clone(), g.p50, c.p50)
            .target(g.p50 / c.p50, Target::AtMost(1.0), "ratio ≤ 1.0"),
            Row::new(
                "start.grove.command",
                "Grove, as a command of its own",
                gc.latency("ms"),
                gc.n,
            )
            .peer(crun_fig.clone(), gc.p50, c.p50),
            Row::new(
                "start.grove.bounded",
                "Grove, in the supervisor, with a bounded writable layer",
                gb.latency("ms"),
                gb.n,
            )
            .peer(crun_fig, gb.p50, c.p50),
            Row::new(
                "start.bounded.setup",
                "Bounded layers' file system: made (mkfs.btrfs on a sparse image) and mounted, once per worker",
                format!("{:.0} ms", setup.p50),
                1,
            ),
        ],
        notes: vec!["Ratios are of medians.".into()],
        ..Section::default()
    })
}
