//! Starting a container: clone(2) into new mount, PID, UTS, IPC (and network)
//! namespaces; the child waits until its parent has put it in its cgroup, builds its
//! root, drops privileges and execs the workload, whose output goes straight to the
//! instance's log file. The caller must be single-threaded (the supervisor, or
//! `grove-agent run`): the child runs Rust code between clone and exec.

use super::cgroup::Group;
use super::rootfs::{self, Dirs, RealSys};
use super::spec::LaunchSpec;
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Docker's default capabilities (its `defaultCapabilities`) but MKNOD: Docker stops
/// device nodes with its device controller, which cgroup v2 does not have without
/// eBPF; here no device node can be made (and none would open: the root and /dev are
/// `nodev`).
const DEFAULT_CAPS: [u32; 13] = [
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    13, // NET_RAW
    18, // SYS_CHROOT
    29, // AUDIT_WRITE
    31, // SETFCAP
];

/// Files of one container under its directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The container's directory.
    pub dir: PathBuf,
    /// Its log (stdout and stderr); `None`: the caller's stdout and stderr.
    pub log: Option<PathBuf>,
}

impl Paths {
    /// The files of container `id` under `containers`.
    pub fn of(containers: &Path, id: &str) -> Self {
        let dir = containers.join(id);
        Self {
            log: Some(dir.join("log")),
            dir,
        }
    }
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Keep only `keep` in the bounding set, and as effective, permitted and inheritable.
fn restrict_caps(keep: &[u32]) -> Result<(), String> {
    for cap in 0..=last_cap() {
        if !keep.contains(&cap) {
            // SAFETY: prctl with integer arguments only.
            let r =
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
            if r != 0 {
                return Err(format!(
                    "drop capability {cap}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    let mut mask = [0u32; 2];
    for c in keep {
        mask[(c / 32) as usize] |= 1 << (c % 32);
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [0, 1].map(|i| Data {
        effective: mask[i],
        permitted: mask[i],
        inheritable: 0,
    });
    // SAFETY: header and data are the layouts capset(2) expects for version 3 (two
    // data structs), alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) };
    if r != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    Ok(())
}

/// Bring `lo` up in the current network namespace.
fn loopback_up() -> Result<(), String> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = libc::c_char::try_from(*s).unwrap_or(0);
    }
    // SAFETY: a valid socket and a valid ifreq naming `lo`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(format!("lo flags: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the union holds flags after SIOCGIFFLAGS.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(format!("lo up: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `argv[0]` found on the container's PATH (after the pivot).
fn resolve(program: &str, env: &[String]) -> Result<String, String> {
    if program.contains('/') {
        return Ok(program.to_owned());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
        .find(|p| {
            nix::unistd::access(p.as_str(), nix::unistd::AccessFlags::X_OK).is_ok()
                && !Path::new(p).is_dir()
        })
        .ok_or_else(|| format!("{program}: not found on PATH {path}"))
}

/// Everything the child does; an error is its message to the parent.
fn child_setup(
    spec: &LaunchSpec,
    paths: &Paths,
    netns: Option<&OwnedFd>,
    log: Option<&OwnedFd>,
    null: &OwnedFd,
) -> Result<std::convert::Infallible, String> {
    match netns {
        Some(fd) => nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("join the network namespace: {e}"))?,
        None => loopback_up()?,
    }
    rootfs::enter(
        &mut RealSys,
        &spec.layers,
        &Dirs::under(&paths.dir),
        &spec.hostname,
    )
    .map_err(|e| e.to_string())?;
    nix::unistd::dup2(null.as_raw_fd(), 0).map_err(|e| format!("dup2: {e}"))?;
    if let Some(log) = log {
        for to in [1, 2] {
            nix::unistd::dup2(log.as_raw_fd(), to).map_err(|e| format!("dup2: {e}"))?;
        }
    }
    if !spec.privileged {
        restrict_caps(&DEFAULT_CAPS)?;
    }
    let gid = nix::unistd::Gid::from_raw(spec.gid);
    nix::unistd::setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setgid(gid).map_err(|e| format!("setgid {}: {e}", spec.gid))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(spec.uid))
        .map_err(|e| format!("setuid {}: {e}", spec.uid))?;
    if !spec.privileged {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
        }
    }
    if nix::unistd::chdir(spec.cwd.as_str()).is_err() {
        std::fs::create_dir_all(&spec.cwd).map_err(|e| format!("working dir {}: {e}", spec.cwd))?;
        nix::unistd::chdir(spec.cwd.as_str())
            .map_err(|e| format!("working dir {}: {e}", spec.cwd))?;
    }
    let program = resolve(&spec.argv[0], &spec.env)?;
    let argv = spec
        .argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = spec
        .env
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let e = nix::unistd::execve(&cstr(&program)?, &argv, &env).unwrap_err();
    Err(format!("exec {program}: {e}"))
}

/// Start container `spec` with its files under `paths`; returns its PID (on the host).
/// The cgroup is made first and the child enters it before it runs anything.
pub fn launch(spec: &LaunchSpec, paths: &Paths) -> Result<(Pid, Group), String> {
    if spec.argv.is_empty() {
        return Err("no command to run".into());
    }
    std::fs::create_dir_all(&paths.dir).map_err(|e| format!("{}: {e}", paths.dir.display()))?;
    let group = Group::create(&spec.id, &spec.limits)?;
    let log: Option<OwnedFd> = match &paths.log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .into(),
        ),
        None => None,
    };
    let null: OwnedFd = std::fs::File::open("/dev/null")
        .map_err(|e| e.to_string())?
        .into();
    let netns: Option<OwnedFd> = match &spec.netns {
        Some(p) => Some(
            std::fs::File::open(p)
                .map_err(|e| format!("{p}: {e}"))?
                .into(),
        ),
        None => None,
    };
    let (go_r, go_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if netns.is_none() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let mut stack = vec![0u8; 1 << 20];
    let child = Box::new(|| -> isize {
        // Wait until the parent put us in the cgroup (EOF: it gave up).
        let mut b = [0u8; 1];
        let mut go =
            std::fs::File::from(go_r.try_clone().unwrap_or_else(|_| std::process::abort()));
        if go.read(&mut b).ok() != Some(1) {
            return 126;
        }
        let Err(err) = child_setup(spec, paths, netns.as_ref(), log.as_ref(), &null);
        let mut w =
            std::fs::File::from(err_w.try_clone().unwrap_or_else(|_| std::process::abort()));
        let _ = w.write_all(err.as_bytes());
        127
    });
    // SAFETY: the caller is single-threaded (documented above), so the child may run
    // Rust code; the stack outlives the child's use of it until exec or exit, as the
    // parent waits for that on the error pipe before returning.
    let pid = unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|e| format!("clone: {e}"))?;
    drop(go_r);
    drop(err_w);
    let started = group
        .add(u32::try_from(pid.as_raw()).unwrap_or(0))
        .and_then(|()| {
            let mut go = std::fs::File::from(go_w);
            go.write_all(b"g").map_err(|e| e.to_string())
        });
    let mut why = String::new();
    let _ = std::fs::File::from(err_r).read_to_string(&mut why);
    if let Err(e) = started {
        why = e;
    }
    if !why.is_empty() {
        let _ = nix::sys::wait::waitpid(pid, None);
        let _ = group.destroy();
        return Err(why);
    }
    Ok((pid, group))
}
