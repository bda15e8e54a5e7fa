//! Starting a container: clone(2) into new mount, PID, UTS, IPC (and network)
//! namespaces; the child waits until its parent has put it in its cgroup, enters a
//! cgroup namespace of its own, builds its root (`rootfs.rs`), joins the user
//! namespace made for it (`userns.rs`) last, so every other namespace stays owned by
//! the host; then it installs the seccomp filter, drops capabilities, becomes the
//! image's user, sets `no_new_privs`, closes every descriptor the workload must not
//! inherit, enters its working directory (resolved inside its root, no magic links)
//! and forks: its child execs the workload, whose output goes straight to the
//! instance's log file, and it stays as the container's init (`init.rs`). The caller
//! must be single-threaded (the supervisor, or `grove-agent run`): the child runs Rust
//! code between clone and exec.

use super::cgroup::Group;
use super::rootfs::{self, Dirs, Plan, RealSys};
use super::spec::LaunchSpec;
use super::userns::{self, UsernsError};
use crate::defence::{self, Defence};
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Docker's default capabilities (its `defaultCapabilities`) but NET_RAW (ping works
/// through ICMP datagram sockets, `ping_group_range` is open in the container's network
/// namespace) and MKNOD (no device node would open: the root and /dev are `nodev`).
pub const DEFAULT_CAPS: [u32; 12] = [
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    18, // SYS_CHROOT
    29, // AUDIT_WRITE
    31, // SETFCAP
];

/// Why a container could not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Neither the image nor the SLA gives a command.
    #[error("no command to run")]
    NoCommand,
    /// A file of the container's on the host.
    #[error("{path}: {source}")]
    File {
        /// Which.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its cgroup.
    #[error("{0}")]
    Cgroup(String),
    /// Its user namespace.
    #[error(transparent)]
    Userns(#[from] UsernsError),
    /// Its bounded writable layer.
    #[error("storage: {0}")]
    Storage(String),
    /// A system call of the parent's.
    #[error("{step}: {source}")]
    Sys {
        /// What it was for.
        step: &'static str,
        /// Why it failed.
        source: nix::Error,
    },
    /// What the child said went wrong before the workload ran.
    #[error("{0}")]
    Child(String),
}

fn sys(step: &'static str) -> impl FnOnce(nix::Error) -> LaunchError {
    move |source| LaunchError::Sys { step, source }
}

fn file(path: &Path) -> impl FnOnce(std::io::Error) -> LaunchError + '_ {
    move |source| LaunchError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Files of one container under its directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The container's directory.
    pub dir: PathBuf,
    /// Its log (stdout and stderr); `None`: the caller's stdout and stderr.
    pub log: Option<PathBuf>,
    /// The file system of bounded writable layers (`quota.rs`), where it is mounted.
    pub bounded: PathBuf,
}

/// Where the bounded layers of the containers under `containers` (a state directory's
/// `containers/`) live: the state directory's `upper/`.
pub fn bounded_fs(containers: &Path) -> PathBuf {
    super::quota::mount_point(containers.parent().unwrap_or(containers))
}

impl Paths {
    /// The files of container `id` under `containers`.
    pub fn of(containers: &Path, id: &str) -> Self {
        let dir = containers.join(id);
        Self {
            log: Some(dir.join("log")),
            dir,
            bounded: bounded_fs(containers),
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

/// Settings of a container's own network namespace, as Docker makes them: any port
/// may be bound (its root is not root on the host, and the namespace is not its own to
/// configure) and any group may ping through ICMP datagram sockets (NET_RAW is gone).
pub fn netns_defaults() -> Result<(), String> {
    for (file, value) in [
        ("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0"),
        ("/proc/sys/net/ipv4/ping_group_range", "0 2147483647"),
    ] {
        std::fs::write(file, value).map_err(|e| format!("{file}: {e}"))?;
    }
    Ok(())
}

/// What the child needs besides the spec.
struct Child<'a> {
    spec: &'a LaunchSpec,
    plan: Plan<'a>,
    netns: Option<&'a OwnedFd>,
    userns: Option<&'a OwnedFd>,
    /// The container's directory on the host.
    home: &'a Path,
    log: Option<&'a OwnedFd>,
    null: &'a OwnedFd,
    err: &'a OwnedFd,
    /// Where the error pipe is now (descriptor 3 once the others are closed).
    err_fd: std::cell::Cell<std::os::fd::RawFd>,
    contained: bool,
}

/// Everything the child does; an error is its message to the parent.
fn child_setup(c: &Child<'_>) -> Result<std::convert::Infallible, String> {
    let spec = c.spec;
    // Its cgroup, as it was put in it, is the root of what it sees.
    if defence::on(Defence::CgroupNs) {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| format!("cgroup namespace: {e}"))?;
    }
    match c.netns {
        Some(fd) => nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("join the network namespace: {e}"))?,
        None => {
            loopback_up()?;
            netns_defaults()?;
        }
    }
    // Opened here, in the new mount namespace (a handle from before the clone would
    // lead into the host's mounts), and held until the workload runs.
    let home = crate::confined::open_root(c.home).map_err(|e| e.to_string())?;
    let mut real = RealSys::new(c.userns.map(AsFd::as_fd), home.as_fd());
    rootfs::enter(&mut real, &c.plan).map_err(|e| format!("root file system: {e}"))?;
    drop(real);
    nix::unistd::dup2(c.null.as_raw_fd(), 0).map_err(|e| format!("dup2: {e}"))?;
    if let Some(log) = c.log {
        for to in [1, 2] {
            nix::unistd::dup2(log.as_raw_fd(), to).map_err(|e| format!("dup2: {e}"))?;
        }
    }
    // Last of its namespaces: from here on it is root only inside.
    if let Some(ns) = c.userns {
        nix::sched::setns(ns, CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("join the user namespace: {e}"))?;
    }
    // The filter goes on while the process still holds its capabilities (without
    // `no_new_privs` the kernel asks for CAP_SYS_ADMIN); every call made from here to
    // the exec is one it allows.
    if c.contained && defence::on(Defence::Seccomp) {
        super::seccomp::load().map_err(|e| e.to_string())?;
    }
    if c.contained && defence::on(Defence::Caps) {
        restrict_caps(&DEFAULT_CAPS)?;
    }
    let gid = nix::unistd::Gid::from_raw(spec.gid);
    nix::unistd::setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setgid {}: {e}", spec.gid))?;
    let uid = nix::unistd::Uid::from_raw(spec.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| match (e, c.userns) {
        (nix::errno::Errno::EINVAL, Some(_)) => format!(
            "user {} is not one of the 65536 ids of the container's user namespace",
            spec.uid
        ),
        _ => format!("setuid {}: {e}", spec.uid),
    })?;
    if c.contained && defence::on(Defence::NoNewPrivs) {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
        }
    }
    // Nothing of the runtime's reaches the workload: not even while it is looked up,
    // a descriptor the working directory could be taken from (CVE-2024-21626).
    if defence::on(Defence::Fds) {
        let keep = c.err.as_raw_fd();
        if keep != 3 {
            // SAFETY: dup3 onto 3 of a valid descriptor; whatever 3 was is closed.
            if unsafe { libc::dup3(keep, 3, libc::O_CLOEXEC) } < 0 {
                return Err(format!("dup3: {}", std::io::Error::last_os_error()));
            }
            c.err_fd.set(3);
        }
        // The handle of the container's directory goes with the rest: forgotten, not
        // dropped (its descriptor is closed below).
        std::mem::forget(home);
        // SAFETY: closes descriptors only; the ones still needed are 0, 1, 2 and 3,
        // and no owner of a closed one drops it after this (this process execs or
        // exits).
        if unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) } != 0 {
            return Err(format!("close_range: {}", std::io::Error::last_os_error()));
        }
    }
    enter_workdir(&spec.cwd)?;
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
    let program = cstr(&program)?;
    if !defence::on(Defence::Init) {
        let e = nix::unistd::execve(&program, &argv, &env).unwrap_err();
        return Err(format!("exec {}: {e}", program.to_string_lossy()));
    }
    // PID 1 stays behind as the container's init; the workload is its child.
    super::init::hold()?;
    // SAFETY: this process is single-threaded (a clone of the single-threaded
    // supervisor), so the child may go on running Rust code until its exec.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork the workload: {e}"))? {
        nix::unistd::ForkResult::Child => {
            super::init::release()?;
            let e = nix::unistd::execve(&program, &argv, &env).unwrap_err();
            Err(format!("exec {}: {e}", program.to_string_lossy()))
        }
        nix::unistd::ForkResult::Parent { child } => {
            // The error pipe is the workload's to close (by its exec) or to write.
            let _ = nix::unistd::close(c.err_fd.get());
            super::init::serve(child.as_raw())
        }
    }
}

/// Enter the working directory `cwd` (made, as the workload's user, when missing),
/// resolved inside the root with no magic link (`/proc/self/fd/N` cannot lead out).
fn enter_workdir(cwd: &str) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("working dir {cwd}: {e}");
    if !defence::on(Defence::Workdir) {
        if nix::unistd::chdir(cwd).is_err() {
            std::fs::create_dir_all(cwd).map_err(|e| fail(&e))?;
            nix::unistd::chdir(cwd).map_err(|e| fail(&e))?;
        }
        return Ok(());
    }
    use crate::confined::{self, Scope};
    let root = confined::open_root(Path::new("/")).map_err(|e| fail(&e))?;
    let rel = Path::new(cwd.trim_start_matches('/'));
    let dir = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY;
    let fd = match confined::resolve(root.as_fd(), rel, dir, Scope::AnyMount) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => confined::make_dirs(
            root.as_fd(),
            rel,
            nix::sys::stat::Mode::from_bits_truncate(0o755),
            Scope::AnyMount,
        )
        .map_err(|e| fail(&e))?,
        Err(e) => return Err(fail(&e)),
    };
    nix::unistd::fchdir(fd.as_raw_fd()).map_err(|e| fail(&e))
}

/// The host name file and the hosts file of a container, in its directory.
fn name_files(spec: &LaunchSpec, dir: &Path) -> Result<Vec<(PathBuf, &'static str)>, LaunchError> {
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    match spec.address {
        Some(a) => hosts += &format!("{}\t{}\n", std::net::Ipv4Addr::from(a), spec.hostname),
        None => hosts += &format!("127.0.1.1\t{}\n", spec.hostname),
    }
    let mut out = Vec::new();
    for (name, body, target) in [
        ("hostname", format!("{}\n", spec.hostname), "/etc/hostname"),
        ("hosts", hosts, "/etc/hosts"),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, body).map_err(file(&p))?;
        out.push((p, target));
    }
    Ok(out)
}

/// Start container `spec` with its files under `paths`; returns its PID (on the host).
/// The cgroup is made first and the child enters it before it runs anything.
pub fn launch(spec: &LaunchSpec, paths: &Paths) -> Result<(Pid, Group), LaunchError> {
    if spec.argv.is_empty() {
        return Err(LaunchError::NoCommand);
    }
    std::fs::create_dir_all(&paths.dir).map_err(file(&paths.dir))?;
    let contained = !spec.privileged;
    let group = Group::create(&spec.id, &spec.limits).map_err(LaunchError::Cgroup)?;
    let started = start(spec, paths, contained, &group);
    if started.is_err() {
        let _ = group.destroy();
        userns::give_back(&paths.dir.join(super::IDS_FILE));
    }
    started.map(|pid| (pid, group))
}

fn start(
    spec: &LaunchSpec,
    paths: &Paths,
    contained: bool,
    group: &Group,
) -> Result<Pid, LaunchError> {
    let log: Option<OwnedFd> = match &paths.log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(file(p))?
                .into(),
        ),
        None => None,
    };
    let null: OwnedFd = std::fs::File::open("/dev/null")
        .map_err(file(Path::new("/dev/null")))?
        .into();
    let netns: Option<OwnedFd> = match &spec.netns {
        Some(p) => Some(std::fs::File::open(p).map_err(file(Path::new(p)))?.into()),
        None => None,
    };
    // Its own range of host ids, and the user namespace mapping them.
    let lease = match &spec.userns {
        Some(pool) if contained && defence::on(Defence::UserNs) => {
            Some(userns::take(pool, &paths.dir.join(super::IDS_FILE))?)
        }
        _ => None,
    };
    let userns = lease
        .as_ref()
        .map(|l| userns::make(l.first, l.count))
        .transpose()?;
    let files = name_files(spec, &paths.dir)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(file(Path::new("/proc/self/mountinfo")))?;
    let cgroups = rootfs::hierarchies(&mountinfo);
    let mut dirs = Dirs::under(&paths.dir);
    // A bounded writable layer: upper and work in a subvolume of its own size.
    if spec.storage_bytes > 0 {
        let fs = &paths.bounded;
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .is_ok_and(|m| m.contains(&format!(" {} ", fs.display())));
        if !mounted {
            return Err(LaunchError::Storage(format!(
                "a writable layer of {} MiB was asked for, and this worker has no file \
                 system of bounded layers at {}",
                spec.storage_bytes >> 20,
                fs.display()
            )));
        }
        let sub = super::quota::bounded_dir(fs, &spec.id, spec.storage_bytes)
            .map_err(|e| LaunchError::Storage(e.to_string()))?;
        dirs.upper = sub.join("upper");
        dirs.work = sub.join("work");
    }
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    let child = Child {
        spec,
        plan: Plan {
            layers: &spec.layers,
            dirs: &dirs,
            hostname: &spec.hostname,
            root_ids: lease.as_ref().map(|l| (l.first, l.first)),
            cgroups: &cgroups,
            mask: contained && defence::on(Defence::ProcSys),
            nodev: defence::on(Defence::NoDev),
            files: &files,
        },
        netns: netns.as_ref(),
        userns: userns.as_ref(),
        home: &paths.dir,
        log: log.as_ref(),
        null: &null,
        err: &err_w,
        err_fd: std::cell::Cell::new(err_w.as_raw_fd()),
        contained,
    };
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if defence::on(Defence::PidNs) {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    if netns.is_none() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let mut stack = vec![0u8; 1 << 20];
    let run = Box::new(|| -> isize {
        // Wait until the parent put us in the cgroup (EOF: it gave up).
        let mut b = [0u8; 1];
        let mut go =
            std::fs::File::from(go_r.try_clone().unwrap_or_else(|_| std::process::abort()));
        if go.read(&mut b).ok() != Some(1) {
            return 126;
        }
        drop(go);
        let Err(err) = child_setup(&child);
        let fd = child.err_fd.get();
        // SAFETY: a descriptor of the error pipe, owned by this child until it exits.
        let mut w = std::mem::ManuallyDrop::new(std::fs::File::from(unsafe {
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }));
        let _ = w.write_all(err.as_bytes());
        127
    });
    // SAFETY: the caller is single-threaded (documented above), so the child may run
    // Rust code; the stack outlives the child's use of it until exec or exit, as the
    // parent waits for that on the error pipe before returning.
    let pid = unsafe { nix::sched::clone(run, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(sys("clone"))?;
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
        return Err(LaunchError::Child(why));
    }
    Ok(pid)
}
