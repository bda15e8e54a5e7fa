//! The escape suite: what a workload, an image or a frame on the bridge could do to
//! its worker, each attack performed against real containers started by the agent's
//! runtime (`grove-agent run`, its foreground path; a native agent under a cluster
//! for the network and host-port attacks), and asserted to fail.
//!
//! [`TABLE`] says which defences block each attack. Every attack runs three ways:
//! - with every defence on: it must fail;
//! - with the defences of its row switched off (`GROVE_DEFENCES_OFF`, read only by
//!   test builds: `agent/src/defence.rs`): it must succeed — harmlessly (drop_caches,
//!   /proc/keys, a victim file in a scratch directory, a scratch copy of the runtime),
//!   so that the attack is shown to be real and the row complete;
//! - with each defence of its row alone on: it must fail again, so each holds on its
//!   own.
//!
//! A path the running kernel lacks prints "not present on this kernel": the only
//! outcome that is not a pass or a failure. Needs root; under `CI=true` it fails
//! rather than skips.

mod support;

use grove_tests::oci::{Entry, derive, tar};
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use support::{Agent, Root, bin, scratch, wait_for, wait_until};

/// Attack → the defences that block it (names of `agent/src/defence.rs`).
const TABLE: &[(&str, &[&str])] = &[
    ("sysctl_write", &["proc-sys", "userns"]),
    ("core_pattern_write", &["proc-sys", "userns"]),
    ("proc_keys_read", &["proc-sys"]),
    ("proc_timer_list_read", &["proc-sys", "userns"]),
    ("runtime_exe_overwrite_cve_2019_5736", &["userns", "init"]),
    (
        "leaked_directory_as_workdir_cve_2024_21626",
        &["fds", "workdir"],
    ),
    (
        "cgroup_release_agent_cve_2022_0492",
        &["seccomp", "caps", "userns", "cgroupns"],
    ),
    ("mount_proc_or_sysfs", &["seccomp", "caps", "userns"]),
    ("unshare_user_namespace", &["seccomp", "userns"]),
    ("keyctl", &["seccomp"]),
    ("ptrace_host_process", &["pidns", "caps", "userns"]),
    ("mknod_block_device", &["caps", "userns", "nodev"]),
    ("host_cgroup_tree_read", &["cgroupns"]),
    ("mount_target_symlink_out", &["mount-targets"]),
    ("layer_symlinked_parent", &["layer-paths"]),
    ("layer_replace_through_symlinked_parent", &["layer-paths"]),
    ("layer_relative_symlink_out", &["layer-paths"]),
    ("layer_hard_link_out", &["layer-entries", "layer-paths"]),
    ("layer_dot_dot_name", &["layer-entries", "layer-paths"]),
    ("layer_whiteout_outside", &["layer-paths"]),
    ("layer_device_node", &["layer-entries", "nodev"]),
    ("memory_hog_without_limits", &["limits"]),
    ("disk_filler_without_limits", &["limits"]),
    ("fork_bomb", &["pids"]),
    ("setuid_binary_raises_its_user", &["no-new-privs"]),
    ("ip_spoofing_on_the_bridge", &["bridge"]),
    ("mac_spoofing_on_the_bridge", &["bridge"]),
    ("arp_spoofing_on_the_bridge", &["bridge"]),
    ("host_port_capture_of_22", &["host-ports"]),
    ("host_port_capture_of_4789", &["host-ports"]),
];

/// How one run of an attack ended.
#[derive(Debug)]
enum Outcome {
    /// It worked (the evidence).
    Escaped(String),
    /// It did not (why).
    Blocked(String),
    /// What it needs is not on this kernel.
    Absent(String),
}

/// One attack's world: a scratch directory with the base test image (busybox), the
/// probe program, and a fresh state directory per run.
struct Scene {
    dir: PathBuf,
    base: PathBuf,
    runs: std::cell::Cell<u32>,
}

impl Scene {
    fn new(name: &str) -> Option<Self> {
        if !grove_tests::have_root("the escape suite") {
            return None;
        }
        let dir = scratch(&format!("escape-{name}"));
        let base = grove_tests::registry::make_images(&dir.join("base"))?;
        Some(Self {
            dir,
            base,
            runs: std::cell::Cell::new(0),
        })
    }

    /// A fresh state directory (its own image store: a layer unpacked once is not
    /// unpacked again).
    fn state(&self) -> PathBuf {
        let n = self.runs.get();
        self.runs.set(n + 1);
        self.dir.join(format!("state-{n}"))
    }

    /// An image: the base with `layers` on top and its configuration edited.
    fn image(
        &self,
        name: &str,
        layers: &[Vec<u8>],
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> String {
        let l = derive(&self.base, &self.dir.join(name), layers, edit);
        format!("oci:{}:latest", l.display())
    }

    /// The base image with the probe program as /bin/probe.
    fn with_probe(&self) -> String {
        let probe = compile(&self.dir, "probe.c", &["-static", "-O2"]);
        let bytes = std::fs::read(&probe).expect("probe");
        self.image(
            "probe-image",
            &[tar(&[Entry::File("bin/probe", &bytes, 0o755)])],
            |_| {},
        )
    }

    /// `grove-agent run` of `image` with `args` in a fresh state, `off` switched off;
    /// (exit code, stdout + stderr), and the state directory.
    fn run(
        &self,
        off: &[&str],
        flags: &[&str],
        image: &str,
        cmd: &[&str],
    ) -> (i32, String, PathBuf) {
        let state = self.state();
        let out = Command::new(bin("grove-agent"))
            .env("GROVE_DEFENCES_OFF", off.join(","))
            .arg("--state-dir")
            .arg(&state)
            .args(flags)
            .arg("run")
            .arg(image)
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("grove-agent run");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text, state)
    }

    /// A shell script in the base image: its output says ESCAPED, BLOCKED or ABSENT.
    /// A container that did not run at all fails the test: an attack is blocked only
    /// by what it tried.
    fn script(&self, off: &[&str], flags: &[&str], image: &str, script: &str) -> Outcome {
        let o = self.started_or_not(off, flags, image, script);
        if let Outcome::Blocked(text) = &o {
            assert!(
                text.contains("BLOCKED"),
                "the container did not run (GROVE_DEFENCES_OFF={}):\n{text}",
                off.join(",")
            );
        }
        o
    }

    /// As [`Scene::script`], where a container that is refused at start counts as
    /// blocked (the defence is the refusal).
    fn started_or_not(&self, off: &[&str], flags: &[&str], image: &str, script: &str) -> Outcome {
        let (_, text, state) = self.run(off, flags, image, &["sh", "-c", script]);
        forget(&state);
        said(text)
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // A run that panicked may have left its bounded layers mounted.
        for n in 0..self.runs.get() {
            forget(&self.dir.join(format!("state-{n}")));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Let go of what a run left mounted (its bounded layers) before its state goes.
fn forget(state: &Path) {
    grove_agent::container::quota::release(state);
}

/// What a script said.
fn said(text: String) -> Outcome {
    if text.contains("ESCAPED") {
        Outcome::Escaped(text)
    } else if text.contains("ABSENT") {
        Outcome::Absent(text)
    } else {
        Outcome::Blocked(text)
    }
}

/// Compile `tests/fixtures/escape/<src>` with `cc` into `dir`.
fn compile(dir: &Path, src: &str, flags: &[&str]) -> PathBuf {
    let out = dir.join(src.trim_end_matches(".c"));
    if out.exists() {
        return out;
    }
    let status = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(
            grove_tests::repo_root()
                .join("tests/fixtures/escape")
                .join(src),
        )
        .status()
        .expect("cc (scripts/test-deps.sh installs gcc and libc6-dev)");
    assert!(status.success(), "compiling {src}");
    out
}

/// Run `attack` with every defence on, with its row's defences off, and with each of
/// them alone on; assert what the table says.
fn check(name: &str, attack: impl Fn(&[&str]) -> Outcome) {
    let row = TABLE
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("{name} is not in the table"));
    let defences = row.1;
    let mut runs: Vec<(String, Vec<&str>, bool)> = vec![("every defence on".into(), vec![], false)];
    runs.push((
        format!("{} off", defences.join(", ")),
        defences.to_vec(),
        true,
    ));
    if defences.len() > 1 {
        for d in defences {
            let off: Vec<&str> = defences.iter().copied().filter(|x| x != d).collect();
            runs.push((format!("{d} alone"), off, false));
        }
    }
    for (what, off, escapes) in runs {
        match attack(&off) {
            Outcome::Absent(why) => {
                println!("{name}: not present on this kernel ({})", why.trim());
                return;
            }
            Outcome::Escaped(ev) if !escapes => {
                panic!("{name} with {what}: the attack worked:\n{ev}")
            }
            Outcome::Blocked(why) if escapes => panic!(
                "{name} with {what}: the attack failed, so the row does not name every \
                 defence that blocks it (or the attack is not real):\n{why}"
            ),
            Outcome::Escaped(_) => println!("{name}: succeeds with {what}, as it must"),
            Outcome::Blocked(_) => println!("{name}: blocked with {what}"),
        }
    }
}

macro_rules! attack {
    ($name:ident, |$scene:ident, $off:ident| $body:expr) => {
        #[test]
        fn $name() {
            let Some($scene) = Scene::new(stringify!($name)) else {
                return;
            };
            check(stringify!($name), |$off: &[&str]| $body);
        }
    };
}

fn busybox(s: &Scene) -> String {
    format!("oci:{}:latest", s.base.display())
}

attack!(sysctl_write, |s, off| s.script(
    off,
    &[],
    &busybox(&s),
    "if echo 1 > /proc/sys/vm/drop_caches; then echo ESCAPED; else echo BLOCKED; fi"
));

attack!(core_pattern_write, |s, off| {
    s.script(
    off,
    &[],
    &busybox(&s),
    // The value it had, written back: the write is the attack, not the value.
    "v=$(cat /proc/sys/kernel/core_pattern); \
     if printf '%s\\n' \"$v\" > /proc/sys/kernel/core_pattern; then echo ESCAPED; else echo BLOCKED; fi"
)
});

/// Read a file of /proc that the OCI runtimes mask: escaped when it is the kernel's
/// (not /dev/null over it) and reads.
fn masked_read(s: &Scene, off: &[&str], file: &str) -> Outcome {
    s.script(
        off,
        &[],
        &busybox(s),
        &format!(
            "[ -e {file} ] || {{ echo ABSENT {file}; exit 0; }}; \
             if [ ! -c {file} ] && head -c 64 {file} >/dev/null; then echo ESCAPED; else echo BLOCKED; fi"
        ),
    )
}

attack!(proc_keys_read, |s, off| masked_read(&s, off, "/proc/keys"));
attack!(proc_timer_list_read, |s, off| masked_read(
    &s,
    off,
    "/proc/timer_list"
));

attack!(cgroup_release_agent_cve_2022_0492, |s, off| {
    s.script(
    off,
    &[],
    &busybox(&s),
    // A named hierarchy of its own: a release agent set there runs nothing of the
    // host's hierarchies.
    "mkdir -p /tmp/cg; \
     if mount -t cgroup -o none,name=grove-escape cgroup /tmp/cg && echo /bin/true > /tmp/cg/release_agent; \
     then echo ESCAPED; umount /tmp/cg; else echo BLOCKED; fi"
)
});

attack!(mount_proc_or_sysfs, |s, off| {
    s.script(
    off,
    &[],
    &busybox(&s),
    "mkdir -p /tmp/p /tmp/s; \
     if mount -t proc proc /tmp/p || mount -t sysfs sysfs /tmp/s; then echo ESCAPED; else echo BLOCKED; fi"
)
});

attack!(unshare_user_namespace, |s, off| s.script(
    off,
    &[],
    &busybox(&s),
    "if unshare -U true; then echo ESCAPED; else echo BLOCKED; fi"
));

attack!(keyctl, |s, off| {
    let image = s.with_probe();
    s.script(off, &[], &image, "probe keyctl")
});

attack!(host_cgroup_tree_read, |s, off| {
    s.script(
    off,
    &[],
    &busybox(&s),
    // The host's hierarchy holds Grove's own groups (and every other workload's).
    "if find /sys/fs/cgroup -maxdepth 3 -name grove | grep -q .; then echo ESCAPED; else echo BLOCKED; fi"
)
});

attack!(ptrace_host_process, |s, off| {
    let image = s.with_probe();
    // A process of the host's, as root: the target.
    let mut victim = Command::new("sleep").arg("300").spawn().expect("sleep");
    let pid = victim.id().to_string();
    let o = s.script(off, &[], &image, &format!("probe ptrace {pid}"));
    let _ = victim.kill();
    let _ = victim.wait();
    o
});

/// A block device of the host's standing in for its disk: a loop device over a
/// scratch file that starts with a marker (reading the machine's real disk is
/// refused to everyone on the machines this suite runs on).
struct Disk {
    dev: PathBuf,
    major: u32,
    minor: u32,
}

const DISK_MARKER: &str = "GROVE-HOST-DISK";

impl Disk {
    fn new(s: &Scene) -> Self {
        let img = s.dir.join("disk.img");
        std::fs::write(&img, DISK_MARKER).expect("disk image");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .expect("disk image");
        f.set_len(1 << 20).expect("disk size");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&img)
            .output()
            .expect("losetup");
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let rdev = std::fs::metadata(&dev).expect("loop device").rdev();
        Self {
            dev,
            major: libc::major(rdev),
            minor: libc::minor(rdev),
        }
    }

    /// A shell test that the device node at `path` reads the host's disk.
    fn reads(path: &str) -> String {
        format!("head -c 15 {path} 2>/dev/null | grep -q {DISK_MARKER}")
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

attack!(mknod_block_device, |s, off| {
    let disk = Disk::new(&s);
    s.script(
        off,
        &[],
        &busybox(&s),
        &format!(
            "if mknod /tmp/disk b {} {} && {}; then echo ESCAPED; else echo BLOCKED; fi",
            disk.major,
            disk.minor,
            Disk::reads("/tmp/disk")
        ),
    )
});

attack!(memory_hog_without_limits, |s, off| s.script(
    off,
    &["--default-memory-mib", "32"],
    &busybox(&s),
    // Killed by the OOM killer before the last line: the first says it ran.
    "echo BLOCKED unless it survives; a=$(head -c 100000000 /dev/zero | tr '\\0' x); echo ESCAPED"
));

attack!(disk_filler_without_limits, |s, off| {
    s.script(
    off,
    &["--default-storage-mib", "16"],
    &busybox(&s),
    "if dd if=/dev/zero of=/fill bs=1M count=64 2>/dev/null; then echo ESCAPED; else echo BLOCKED; fi"
)
});

attack!(fork_bomb, |s, off| s.script(
    off,
    &[],
    &busybox(&s),
    // Bounded, so that it is harmless without the limit (1024 processes by default).
    "( i=0; while [ $i -lt 1500 ]; do sleep 30 & i=$((i+1)); done ) 2>/dev/null; \
     set -- /proc/[0-9]*; if [ $# -gt 1400 ]; then echo ESCAPED; else echo BLOCKED $#; fi"
));

attack!(setuid_binary_raises_its_user, |s, off| {
    let image = s.with_probe();
    s.script(
        off,
        &[],
        &image,
        // A set-user-id root copy of the probe (busybox drops such privileges by
        // itself), run by an unprivileged user of the image.
        "cp /bin/probe /tmp/suid && chmod 4755 /tmp/suid && \
         u=$(su nobody -s /bin/sh -c '/tmp/suid euid'); \
         if [ \"$u\" = 0 ]; then echo ESCAPED; else echo BLOCKED as $u; fi",
    )
});

attack!(leaked_directory_as_workdir_cve_2024_21626, |s, off| {
    // The attacker guesses the descriptor, as the CVE's exploit did.
    let mut last = String::new();
    for n in 3..=12 {
        let image = s.image(&format!("workdir-{n}"), &[], |c| {
            c["config"]["WorkingDir"] = serde_json::json!(format!("/proc/self/fd/{n}"));
        });
        // Outside its root, the working directory is the container's directory on
        // the host: it holds `rootfs` and the `hosts` and `hostname` files side by
        // side.
        match s.started_or_not(
            off,
            &[],
            &image,
            "if [ -d rootfs ] && [ -f hosts ] && [ -f hostname ] && [ -d ../../images ]; then echo ESCAPED $PWD; else echo BLOCKED; fi",
        ) {
            Outcome::Escaped(e) => return Outcome::Escaped(format!("descriptor {n}: {e}")),
            Outcome::Blocked(b) | Outcome::Absent(b) => last = b,
        }
    }
    Outcome::Blocked(last)
});

/// A victim directory on the host with a file in it.
fn victim(s: &Scene, name: &str) -> PathBuf {
    let v = s.dir.join(name);
    let _ = std::fs::remove_dir_all(&v);
    std::fs::create_dir_all(&v).expect("victim");
    std::fs::write(v.join("secret"), b"keep").expect("victim file");
    v
}

/// Whether anything in `v` changed: a new entry, or `secret` not the same file.
fn touched(v: &Path) -> Option<String> {
    let names: Vec<String> = std::fs::read_dir(v)
        .expect("victim dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names != ["secret"] {
        return Some(format!("the victim directory holds {names:?}"));
    }
    let m = std::fs::symlink_metadata(v.join("secret")).expect("secret");
    if !m.is_file()
        || m.nlink() != 1
        || std::fs::read(v.join("secret")).ok().as_deref() != Some(b"keep")
    {
        return Some(format!("the victim file was changed or linked: {m:?}"));
    }
    None
}

/// An image whose top layer `layer` makes against a fresh victim directory (its
/// path given), pulled and run; escaped when anything in the victim changed.
fn layer_attack(s: &Scene, off: &[&str], layer: impl FnOnce(&str) -> Vec<u8>) -> Outcome {
    let v = victim(s, "victim");
    let image = s.image(
        &format!("hostile-{}", s.runs.get()),
        &[layer(&v.display().to_string())],
        |_| {},
    );
    let (_, text, state) = s.run(off, &[], &image, &["true"]);
    forget(&state);
    match touched(&v) {
        Some(e) => Outcome::Escaped(e),
        None => Outcome::Blocked(text),
    }
}

attack!(layer_symlinked_parent, |s, off| layer_attack(
    &s,
    off,
    |v| { tar(&[Entry::Symlink("x", v), Entry::File("x/new", b"x", 0o644)]) }
));

// The layer of the report: `x -> /somewhere`, then an entry `x/name` replaces (removes)
// /somewhere/name.
attack!(layer_replace_through_symlinked_parent, |s, off| {
    layer_attack(&s, off, |v| {
        tar(&[
            Entry::Symlink("x", v),
            Entry::File("x/secret", b"pwned", 0o644),
        ])
    })
});

attack!(layer_relative_symlink_out, |s, off| layer_attack(
    &s,
    off,
    |v| {
        tar(&[
            Entry::Symlink("up", "../../../../../../../../../../../.."),
            Entry::File(&format!("up{v}/new"), b"x", 0o644),
        ])
    }
));

attack!(layer_hard_link_out, |s, off| layer_attack(&s, off, |v| {
    tar(&[Entry::Link("h", &format!("{v}/secret"))])
}));

attack!(layer_dot_dot_name, |s, off| layer_attack(&s, off, |v| {
    tar(&[Entry::File(
        &format!("../../../../../../../../../../../..{v}/new"),
        b"x",
        0o644,
    )])
}));

attack!(layer_whiteout_outside, |s, off| layer_attack(
    &s,
    off,
    |v| {
        tar(&[
            Entry::Symlink("w", v),
            Entry::File("w/.wh.secret", b"", 0o644),
        ])
    }
));

// /etc/hostname and /etc/hosts are mount targets of the runtime's: symlinks out of the
// root, absolute and relative.
attack!(mount_target_symlink_out, |s, off| layer_attack(
    &s,
    off,
    |v| {
        tar(&[
            Entry::Dir("etc"),
            Entry::Symlink("etc/hostname", &format!("{v}/pwned")),
            Entry::Symlink(
                "etc/hosts",
                &format!("../../../../../../../../../../..{v}/pwned-hosts"),
            ),
        ])
    }
));

attack!(layer_device_node, |s, off| {
    let disk = Disk::new(&s);
    let image = s.image(
        &format!("device-{}", s.runs.get()),
        &[tar(&[Entry::Block("disk", disk.major, disk.minor)])],
        |_| {},
    );
    s.script(
        off,
        &[],
        &image,
        &format!(
            "if {}; then echo ESCAPED; else echo BLOCKED; fi",
            Disk::reads("/disk")
        ),
    )
});

attack!(runtime_exe_overwrite_cve_2019_5736, |s, off| {
    // The runtime is a scratch copy of the agent's binary (what succeeds writes it).
    let runtime = s.dir.join(format!("runtime-{}", s.runs.get()));
    std::fs::copy(bin("grove-agent"), &runtime).expect("runtime copy");
    let before = std::fs::read(&runtime).expect("runtime");
    let fake_ld = compile(
        &s.dir,
        "fake-ld.c",
        &[
            "-nostdlib",
            "-static",
            "-fno-pie",
            "-no-pie",
            "-fno-stack-protector",
            "-O2",
        ],
    );
    let ld = std::fs::read(&fake_ld).expect("fake ld");
    let payload = b"i=0\nwhile [ $i -lt 60 ]; do\n  if printf 'GROVE-ESCAPED' >> /proc/self/fd/3 2>/dev/null; then echo ESCAPED; exit 0; fi\n  i=$((i+1)); sleep 0.05\ndone\necho BLOCKED\n";
    let image = s.image(
        &format!("exe-{}", s.runs.get()),
        &[tar(&[
            Entry::Dir("lib64"),
            Entry::File("lib64/ld-linux-x86-64.so.2", &ld, 0o755),
            Entry::File("entry", b"#!/proc/self/exe\n", 0o755),
            Entry::File("payload", payload, 0o755),
        ])],
        |c| {
            c["config"]["Entrypoint"] = serde_json::json!(["/entry"]);
            c["config"]["Cmd"] = serde_json::Value::Null;
        },
    );
    let state = s.state();
    let mut child = Command::new(&runtime)
        .env("GROVE_DEFENCES_OFF", off.join(","))
        .arg("--state-dir")
        .arg(&state)
        .arg("run")
        .arg(&image)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runtime copy run");
    let run_pid = child.id();
    // Once the container holds the runtime's binary, the runtime goes (as `runc run`
    // exits while its container lives on); the binary is no longer busy.
    let mut out = child.stdout.take().expect("stdout");
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    use std::io::Read;
    while !seen.contains("READY") && !seen.contains("NO-EXE") {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = out.read_to_string(&mut seen);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    grove_agent::container::cgroup::scope_to(&state);
    let _ = grove_agent::container::remove(&state.join("containers"), &format!("run-{run_pid}"));
    forget(&state);
    let after = std::fs::read(&runtime).expect("runtime");
    if after != before {
        Outcome::Escaped(format!("the runtime's binary was written: {seen}"))
    } else {
        Outcome::Blocked(format!("{seen}{err}"))
    }
});

/// The table names each attack once and only the defences there are.
#[test]
fn the_table_names_real_defences_and_every_attack_once() {
    let mut names = std::collections::HashSet::new();
    for (attack, defences) in TABLE {
        assert!(names.insert(*attack), "{attack} twice");
        assert!(!defences.is_empty(), "{attack} names no defence");
        for d in *defences {
            assert!(
                grove_agent::defence::Defence::named(d).is_some(),
                "{attack}: no defence {d}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// The network: instances of a native agent on the test bed, wired to its bridge.

/// `cmd` run as host root inside the network namespace of process `pid`; its output.
fn in_netns(pid: &str, cmd: &[&str]) -> (bool, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("nsenter");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The containers of `agents` now: (pid, IPv4 address, MAC) of each.
fn wired(agents: &[Agent]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for a in agents {
        for e in std::fs::read_dir(a.dir.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Some(pid) = std::fs::read_to_string(e.path().join("pid"))
                .ok()
                .and_then(|p| p.split_whitespace().next().map(str::to_owned))
            else {
                continue;
            };
            let (_, addr) = in_netns(&pid, &["ip", "-o", "-4", "addr", "show", "eth0"]);
            let (_, link) = in_netns(&pid, &["ip", "-o", "link", "show", "eth0"]);
            let ip = addr.split_whitespace().skip_while(|w| *w != "inet").nth(1);
            let mac = link
                .split_whitespace()
                .skip_while(|w| *w != "link/ether")
                .nth(1);
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push((
                    pid,
                    ip.split('/').next().unwrap_or_default().to_owned(),
                    mac.to_owned(),
                ));
            }
        }
    }
    out
}

/// Whether an ICMP echo from the namespace of `from` (pinged from source address
/// `src`) reaches the namespace of `to` with source `seen_ip` and source MAC `seen_mac`:
/// counted there by an nftables rule (ping answers would go to whoever `src` is).
fn reaches(from: &str, src: &str, to: &str, to_ip: &str, seen_ip: &str, seen_mac: &str) -> bool {
    let rules = format!(
        "table inet grove_probe\ndelete table inet grove_probe\ntable inet grove_probe {{\n  chain input {{\n    type filter hook input priority -300; policy accept;\n    ether saddr {seen_mac} ip saddr {seen_ip} icmp type echo-request counter\n  }}\n}}\n"
    );
    let mut nft = Command::new("nsenter")
        .arg(format!("--net=/proc/{to}/ns/net"))
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    use std::io::Write;
    nft.stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("rules");
    assert!(nft.wait().expect("nft").success(), "probe rules");
    let _ = in_netns(
        from,
        &["busybox", "ping", "-c", "2", "-W", "1", "-I", src, to_ip],
    );
    let (_, counted) = in_netns(to, &["nft", "list", "table", "inet", "grove_probe"]);
    let _ = in_netns(to, &["nft", "delete", "table", "inet", "grove_probe"]);
    !counted.contains("packets 0 ") && counted.contains("packets ")
}

/// The three spoofing attacks from instance `a`'s namespace: (IP, MAC, ARP) each
/// escaped or not.
fn spoof(
    a: &(String, String, String),
    b: &(String, String, String),
    c: &(String, String, String),
) -> [Outcome; 3] {
    let (pa, ip_a, mac_a) = a;
    let (_, ip_b, mac_b) = b;
    let (pc, ip_c, _) = c;
    // Everyone knows everyone's MAC first (so what is sent is the spoofed frame alone).
    for (x, y) in [(pa, ip_c), (pc, ip_b), (pa, ip_b)] {
        let _ = in_netns(x, &["busybox", "ping", "-c", "1", "-W", "1", y]);
    }
    // IP: a sends as b.
    let _ = in_netns(
        pa,
        &["ip", "addr", "add", &format!("{ip_b}/32"), "dev", "eth0"],
    );
    let ip = if reaches(pa, ip_b, pc, ip_c, ip_b, mac_a) {
        Outcome::Escaped(format!(
            "{ip_c} got an echo from {ip_b} sent by another instance"
        ))
    } else {
        Outcome::Blocked("nothing arrived".into())
    };
    let _ = in_netns(
        pa,
        &["ip", "addr", "del", &format!("{ip_b}/32"), "dev", "eth0"],
    );
    // MAC: a sends with b's MAC.
    let _ = in_netns(pa, &["ip", "link", "set", "eth0", "address", mac_b]);
    let mac = if reaches(pa, ip_a, pc, ip_c, ip_a, mac_b) {
        Outcome::Escaped(format!(
            "{ip_c} got a frame from MAC {mac_b} sent by another instance"
        ))
    } else {
        Outcome::Blocked("nothing arrived".into())
    };
    let _ = in_netns(pa, &["ip", "link", "set", "eth0", "address", mac_a]);
    // ARP: a says b's address is at a's MAC; c's cache held b's. (An entry updated
    // within the last second is not overridden: the claim is repeated a while.)
    // (arping sends from an address of its own: a holds b's for the attack.)
    let _ = in_netns(
        pa,
        &["ip", "addr", "add", &format!("{ip_b}/32"), "dev", "eth0"],
    );
    let mut neigh = String::new();
    let claimed = wait_for(4, || {
        let _ = in_netns(
            pa,
            &[
                "busybox", "arping", "-U", "-c", "1", "-w", "1", "-I", "eth0", "-s", ip_b, ip_b,
            ],
        );
        neigh = in_netns(pc, &["ip", "neigh", "show", ip_b]).1;
        neigh.contains(mac_a.as_str())
    });
    let _ = in_netns(
        pa,
        &["ip", "addr", "del", &format!("{ip_b}/32"), "dev", "eth0"],
    );
    let arp = if claimed {
        Outcome::Escaped(format!("{ip_c}'s neighbour cache: {neigh}"))
    } else {
        Outcome::Blocked(neigh)
    };
    // Put c's cache right again for the next round.
    let _ = in_netns(pc, &["ip", "neigh", "flush", "dev", "eth0"]);
    [ip, mac, arp]
}

/// Restart `agents` with `off` switched off, and wait until they run their instances
/// again with their tables made anew.
fn restart_agents(agents: &mut [Agent], off: &[&str]) {
    for a in agents.iter_mut() {
        a.daemon.kill();
        a.daemon.set_env("GROVE_DEFENCES_OFF", &off.join(","));
        a.daemon.restart();
    }
    wait_until(30, "the agents joined again", || {
        agents.iter().all(|a| {
            let log = a.dir.parent().expect("dir").join(format!("{}.log", a.name));
            std::fs::read_to_string(&log).is_ok_and(|l| l.matches("worker joined").count() >= 2)
        })
    });
}

/// Assert an outcome as the table says for `name` with `off` switched off.
fn expect(name: &str, off: &[&str], o: &Outcome) {
    let row = TABLE
        .iter()
        .find(|(n, _)| *n == name)
        .expect("in the table")
        .1;
    let escapes = row.iter().all(|d| off.contains(d));
    match (o, escapes) {
        (Outcome::Escaped(e), false) => panic!("{name} with {off:?} off: the attack worked: {e}"),
        (Outcome::Blocked(b) | Outcome::Absent(b), true) => {
            panic!(
                "{name} with {off:?} off: the attack failed, the row is incomplete or the attack not real: {b}"
            )
        }
        _ => println!(
            "{name} with {off:?} off: {}",
            if escapes {
                "succeeds, as it must"
            } else {
                "blocked"
            }
        ),
    }
}

#[test]
fn ip_mac_and_arp_spoofing_on_the_bridge() {
    let Some((bed, dir, registry)) = support::bed_with_busybox("esc", "escape-bridge") else {
        return;
    };
    let flags = support::native_flags(registry.addr);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // One worker: the three instances share its bridge.
    let (root, _cluster, mut agents) = support::control_and_workers(&bed, &dir, &flags);
    let ids = root.deploy_seed(|sla| {
        let ms = &mut sla["applications"][0]["microservices"];
        ms[1]["code"] = json!("docker.io/library/busybox:latest");
        ms[1]["cmd"] = json!(["sleep", "100000"]);
        ms[1]["port"] = json!("");
    });
    for _ in 0..6 {
        root.add_instance(&ids[1]);
    }
    wait_until(60, "six instances RUNNING", || {
        root.instances(&ids[1])
            .iter()
            .filter(|i| i["status"] == "RUNNING")
            .count()
            == 6
            && wired(&agents).len() == 6
    });
    for off in [&[][..], &["bridge"][..]] {
        restart_agents(&mut agents, off);
        // Three instances on one worker.
        let on_one = agents
            .iter()
            .map(|a| wired(std::slice::from_ref(a)))
            .find(|w| w.len() >= 3)
            .expect("three instances on one worker");
        let [ip, mac, arp] = spoof(&on_one[0], &on_one[1], &on_one[2]);
        expect("ip_spoofing_on_the_bridge", off, &ip);
        expect("mac_spoofing_on_the_bridge", off, &mac);
        expect("arp_spoofing_on_the_bridge", off, &arp);
    }
    drop(bed);
}

/// POST an SLA; the body of a refusal, or the service ids.
fn post_sla(root: &Root, sla: serde_json::Value) -> Result<Vec<String>, String> {
    let r = ureq::post(&format!("{}/api/application/", root.base))
        .set("Authorization", &format!("Bearer {}", root.token()))
        .send_json(sla);
    match r {
        Ok(r) => {
            let v: serde_json::Value = r.into_json().map_err(|e| e.to_string())?;
            Ok(v[0]["microservices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect())
        }
        Err(ureq::Error::Status(_, r)) => Err(r.into_string().unwrap_or_default()),
        Err(e) => Err(e.to_string()),
    }
}

/// The seed with its server on host port `port` (to the container's 80), answering
/// there with `grove-captured`.
fn seed_on(port: &str) -> serde_json::Value {
    let mut sla = support::seed();
    let ms = &mut sla["applications"][0]["microservices"];
    ms[1]["code"] = json!("docker.io/library/busybox:latest");
    ms[1]["cmd"] = json!([
        "sh",
        "-c",
        "mkdir -p /www && echo grove-captured > /www/index.html && \
         (while :; do echo grove-captured | nc -u -l -p 80; done &) && exec httpd -f -p 80 -h /www"
    ]);
    ms[1]["port"] = json!(port);
    ms[0]["microservice_name"] = json!("unused");
    sla["applications"][0]["microservices"] = json!([ms[1].clone()]);
    sla
}

#[test]
fn host_port_capture_of_22_and_4789() {
    let Some((bed, dir, registry)) = support::bed_with_busybox("esp", "escape-ports") else {
        return;
    };
    let flags = support::native_flags(registry.addr);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (mut root, _cluster, mut agents) = support::control_and_workers(&bed, &dir, &flags);
    for off in [&[][..], &["host-ports"][..]] {
        root.daemon.kill();
        root.daemon.set_env("GROVE_DEFENCES_OFF", &off.join(","));
        root.daemon.restart();
        root.wait_serving();
        restart_agents(&mut agents, off);
        for (name, port) in [
            ("host_port_capture_of_22", "22:80/tcp"),
            ("host_port_capture_of_4789", "4789:80/tcp"),
        ] {
            let o = match post_sla(&root, seed_on(port)) {
                Err(refusal) => Outcome::Blocked(format!("the root refused it: {refusal}")),
                Ok(ids) => {
                    let svc = ids[0].clone();
                    root.add_instance(&svc);
                    let mut status = String::new();
                    wait_until(60, "the instance placed or refused", || {
                        let i = root.instances(&svc);
                        status = format!("{} {}", i[0]["status"], i[0]["status_detail"]);
                        i[0]["status"] == "RUNNING" || i[0]["status"] == "FAILED"
                    });
                    let o = if status.contains("RUNNING") {
                        // Reach the workers' port from host 0 (this thread's), which
                        // is neither of them.
                        let got = wait_for(10, || {
                            bed.hosts[1..].iter().any(|h| {
                                let w = h.ip.to_string();
                                let port = port.split(':').next().unwrap_or_default();
                                // (Debian's busybox 1.35 wget crashes with `-O -` or `-T`.)
                                let cmd = format!(
                                    "rm -f /tmp/grove-capture; timeout 3 busybox wget -q -O /tmp/grove-capture http://{w}:{port}/; cat /tmp/grove-capture"
                                );
                                Command::new("sh")
                                    .args(["-c", &cmd])
                                    .output()
                                    .is_ok_and(|o| {
                                        String::from_utf8_lossy(&o.stdout)
                                            .contains("grove-captured")
                                    })
                            })
                        });
                        if got {
                            Outcome::Escaped(format!(
                                "the worker's {port} answered from the container"
                            ))
                        } else {
                            let rules: Vec<String> = bed.hosts[1..]
                                .iter()
                                .map(|h| {
                                    let o = h
                                        .command(Path::new("nft"))
                                        .args(["list", "ruleset"])
                                        .output();
                                    let all = o
                                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                                        .unwrap_or_default();
                                    let mapped: Vec<&str> =
                                        all.lines().filter(|l| l.contains("dport")).collect();
                                    format!("{}: {}", h.ip, mapped.join(" | "))
                                })
                                .collect();
                            Outcome::Blocked(format!(
                                "placed, but nothing answered: {status}\n{}",
                                rules.join("\n")
                            ))
                        }
                    } else {
                        Outcome::Blocked(status)
                    };
                    let apps = root.api("GET", "/api/applications/", None);
                    for a in apps.as_array().into_iter().flatten() {
                        if let Some(id) = a["applicationID"].as_str() {
                            root.api("DELETE", &format!("/api/application/{id}"), None);
                        }
                    }
                    o
                }
            };
            if off.is_empty() {
                match &o {
                    Outcome::Blocked(why) if port.starts_with("4789") => {
                        assert!(
                            why.contains("one of Grove's own"),
                            "refused, but not as Grove's own: {why}"
                        )
                    }
                    Outcome::Blocked(why) => assert!(
                        why.contains("NO_QUALIFIED_WORKER_FOUND") && why.contains("22"),
                        "refused, but not naming the port: {why}"
                    ),
                    Outcome::Escaped(_) | Outcome::Absent(_) => {}
                }
            }
            expect(name, off, &o);
        }
    }
    drop(bed);
}
