//! The container's filesystem view, built inside its new mount namespace before the
//! container's process joins its user namespace: the image's layers (each an
//! idmapped mount when the container has its own user namespace, so one unpacked copy
//! serves every container with its owners right inside) under overlayfs with a
//! per-instance upper dir; /proc with the OCI runtimes' masked and read-only paths; a
//! minimal /dev; read-only /sys with the container's own cgroup hierarchies; its
//! /etc/hostname and /etc/hosts; then pivot_root into it.
//!
//! Every mount target inside the root is found with `openat2(RESOLVE_IN_ROOT)` and
//! mounted onto that handle with the file-descriptor mount API, so an image whose
//! `/etc/hostname` or `/dev` is a symlink to a host path gets the target inside its
//! own root, never on the host. The system calls go through [`Sys`], so the sequence
//! is unit-tested with a recording fake without privileges; the privileged suites run
//! it for real.

use super::mountapi::{self, Attrs};
use crate::confined::{self, Scope};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// What a mount target is made as when missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// An empty file.
    File,
}

/// The system calls of rootfs setup. Paths named `host` are the agent's own; paths
/// named `target` are inside the container's root (absolute, as the container sees
/// them).
pub trait Sys {
    /// Make every mount of this namespace private (nothing propagates to the host).
    fn private_mounts(&mut self) -> io::Result<()>;
    /// mkdir -p of a directory of the agent's.
    fn mkdir(&mut self, host: &Path) -> io::Result<()>;
    /// Give a directory of the agent's to the container's root (host ids).
    fn chown(&mut self, host: &Path, uid: u32, gid: u32) -> io::Result<()>;
    /// Bind layer `layer` read-only at `at`, its ids mapped into the container's user
    /// namespace when `idmap`.
    fn bind_layer(&mut self, layer: &Path, at: &Path, idmap: bool) -> io::Result<()>;
    /// Mount overlayfs with `data` at `host` (no device nodes when `nodev`).
    fn overlay(&mut self, data: &str, host: &Path, nodev: bool) -> io::Result<()>;
    /// From now on, targets are resolved inside `host`.
    fn enter_root(&mut self, host: &Path) -> io::Result<()>;
    /// Mount a new `fstype` with `options` on `target` (a directory, made if missing).
    fn mount_in(
        &mut self,
        fstype: &str,
        options: &str,
        target: &str,
        attrs: Attrs,
    ) -> io::Result<()>;
    /// Bind `host` (a file or directory) onto `target` (made as `kind` if missing).
    fn bind_in(&mut self, host: &Path, target: &str, kind: Kind, attrs: Attrs) -> io::Result<()>;
    /// Make `target` read-only (and nosuid, nodev, noexec) where it exists; whether it
    /// does.
    fn read_only_in(&mut self, target: &str) -> io::Result<bool>;
    /// Hide `target` where it exists: /dev/null over a file, an empty read-only tmpfs
    /// over a directory; whether it exists.
    fn mask_in(&mut self, target: &str) -> io::Result<bool>;
    /// symlink(2) `link` → `to` inside the root.
    fn symlink_in(&mut self, to: &str, link: &str) -> io::Result<()>;
    /// sethostname(2).
    fn sethostname(&mut self, name: &str) -> io::Result<()>;
    /// pivot_root into `host`, the old root detached.
    fn pivot(&mut self, host: &Path) -> io::Result<()>;
}

/// Where one container's filesystem lives on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    /// The writable layer.
    pub upper: PathBuf,
    /// overlayfs' work dir.
    pub work: PathBuf,
    /// Where the root is assembled.
    pub merged: PathBuf,
    /// Where the layers are bound (idmapped) for overlayfs.
    pub lower: PathBuf,
}

impl Dirs {
    /// The dirs under a container's own directory.
    pub fn under(dir: &Path) -> Self {
        Self {
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("rootfs"),
            lower: dir.join("lower"),
        }
    }
}

/// A cgroup hierarchy the container sees: where under /sys/fs/cgroup, of which type,
/// with which controllers (v1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Its directory under /sys/fs/cgroup (empty: /sys/fs/cgroup itself).
    pub at: String,
    /// `cgroup` or `cgroup2`.
    pub fstype: String,
    /// Mount options naming it (`memory`, `cpu,cpuacct`, `name=systemd`).
    pub options: String,
}

/// The cgroup hierarchies mounted under /sys/fs/cgroup on this machine, from a
/// `/proc/self/mountinfo` text.
pub fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mut r = right.split_whitespace();
        let (Some(fstype), _, Some(opts)) = (r.next(), r.next(), r.next()) else {
            continue;
        };
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let Some(at) = point
            .strip_prefix("/sys/fs/cgroup")
            .filter(|a| a.is_empty() || a.starts_with('/'))
        else {
            continue;
        };
        let options = if fstype == "cgroup" {
            opts.split(',')
                .filter(|o| {
                    !matches!(*o, "rw" | "ro" | "xattr" | "clone_children" | "noprefix")
                        && !o.starts_with("release_agent=")
                })
                .collect::<Vec<_>>()
                .join(",")
        } else {
            String::new()
        };
        out.push(Hierarchy {
            at: at.trim_start_matches('/').to_owned(),
            fstype: fstype.to_owned(),
            options,
        });
    }
    out
}

/// Files under /proc and /sys hidden from a container (runc's and crun's masked paths).
pub const MASKED: [&str; 9] = [
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/scsi",
    "/proc/acpi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths under /proc a container may read but not write.
pub const READ_ONLY: [&str; 6] = [
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/asound",
];

const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// What to build.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// The image's layer directories, bottom first.
    pub layers: &'a [String],
    /// Where.
    pub dirs: &'a Dirs,
    /// The UTS host name.
    pub hostname: &'a str,
    /// The container's own user namespace: the host ids of its root (layers idmapped,
    /// the upper dir given to its root).
    pub root_ids: Option<(u32, u32)>,
    /// The cgroup hierarchies to mount (read-only) under /sys/fs/cgroup.
    pub cgroups: &'a [Hierarchy],
    /// Mask and write-protect /proc and /sys as the OCI runtimes do.
    pub mask: bool,
    /// No device node opens on the root (its overlay is `nodev`).
    pub nodev: bool,
    /// Files of the agent's bound onto targets inside (`/etc/hostname`, `/etc/hosts`).
    pub files: &'a [(PathBuf, &'static str)],
}

/// Build the root and pivot into it; the caller is in a new mount namespace.
pub fn enter(sys: &mut dyn Sys, plan: &Plan<'_>) -> io::Result<()> {
    let dirs = plan.dirs;
    sys.private_mounts()?;
    for d in [&dirs.upper, &dirs.work, &dirs.merged] {
        sys.mkdir(d)?;
    }
    if let Some((uid, gid)) = plan.root_ids {
        sys.chown(&dirs.upper, uid, gid)?;
    }
    // overlayfs lists the top layer first.
    let mut lower = Vec::new();
    for (i, layer) in plan.layers.iter().enumerate().rev() {
        if plan.root_ids.is_some() {
            let at = dirs.lower.join(i.to_string());
            sys.mkdir(&at)?;
            sys.bind_layer(Path::new(layer), &at, true)?;
            lower.push(at.display().to_string());
        } else {
            lower.push(layer.clone());
        }
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        dirs.upper.display(),
        dirs.work.display()
    );
    sys.overlay(&data, &dirs.merged, plan.nodev)?;
    sys.enter_root(&dirs.merged)?;
    let quiet = Attrs::QUIET;
    // Owned by the container's root, as it would be without a user namespace.
    let (own, tty) = match plan.root_ids {
        Some((uid, gid)) => (format!(",uid={uid},gid={gid}"), gid + 5),
        None => (String::new(), 5),
    };
    sys.mount_in("proc", "", "/proc", quiet)?;
    // No device node in /dev opens but the six bound here.
    sys.mount_in(
        "tmpfs",
        &format!("mode=755,size=65536k{own}"),
        "/dev",
        quiet,
    )?;
    let dev = Attrs {
        nodev: false,
        ..quiet
    };
    for d in DEVICES {
        sys.bind_in(
            &Path::new("/dev").join(d),
            &format!("/dev/{d}"),
            Kind::File,
            dev,
        )?;
    }
    sys.mount_in(
        "devpts",
        &format!("newinstance,ptmxmode=0666,mode=0620,gid={tty}"),
        "/dev/pts",
        Attrs {
            nodev: false,
            ..quiet
        },
    )?;
    sys.symlink_in("pts/ptmx", "/dev/ptmx")?;
    sys.mount_in(
        "tmpfs",
        &format!("mode=1777,size=65536k{own}"),
        "/dev/shm",
        quiet,
    )?;
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        sys.symlink_in(to, &format!("/dev/{name}"))?;
    }
    sys.mount_in("sysfs", "", "/sys", quiet.read_only())?;
    mount_cgroups(sys, plan.cgroups)?;
    if plan.mask {
        for p in MASKED {
            sys.mask_in(p)?;
        }
        for p in READ_ONLY {
            sys.read_only_in(p)?;
        }
    }
    for (host, target) in plan.files {
        sys.bind_in(host, target, Kind::File, quiet)?;
    }
    sys.sethostname(plan.hostname)?;
    sys.pivot(&dirs.merged)
}

/// The hierarchies, read-only, under /sys/fs/cgroup: cgroup2 at its root on a pure v2
/// machine, else a tmpfs holding each one as the host has it.
fn mount_cgroups(sys: &mut dyn Sys, list: &[Hierarchy]) -> io::Result<()> {
    let ro = Attrs::QUIET.read_only();
    if list.is_empty() {
        return Ok(());
    }
    if let Some(v2) = list.iter().find(|h| h.at.is_empty()) {
        return sys.mount_in(&v2.fstype, &v2.options, "/sys/fs/cgroup", ro);
    }
    sys.mount_in("tmpfs", "mode=755,size=64k", "/sys/fs/cgroup", Attrs::QUIET)?;
    for h in list {
        sys.mount_in(
            &h.fstype,
            &h.options,
            &format!("/sys/fs/cgroup/{}", h.at),
            ro,
        )?;
    }
    sys.read_only_in("/sys/fs/cgroup")?;
    Ok(())
}

/// The real system calls; targets resolved inside the root with `openat2`.
#[derive(Debug)]
pub struct RealSys<'a> {
    /// The container's user namespace (for idmapped layers).
    pub userns: Option<BorrowedFd<'a>>,
    /// A handle of the container's directory on the host (the pivot starts there).
    home: BorrowedFd<'a>,
    root: Option<OwnedFd>,
    merged: PathBuf,
}

impl<'a> RealSys<'a> {
    /// With the container's user namespace, if it has one, and a handle of its
    /// directory.
    pub fn new(userns: Option<BorrowedFd<'a>>, home: BorrowedFd<'a>) -> Self {
        Self {
            userns,
            home,
            root: None,
            merged: PathBuf::new(),
        }
    }

    fn root(&self) -> io::Result<BorrowedFd<'_>> {
        self.root
            .as_ref()
            .map(AsFd::as_fd)
            .ok_or_else(|| io::Error::other("no root entered"))
    }

    /// A handle of `target` inside the root, made as `kind` if missing.
    fn target(&self, target: &str, kind: Kind) -> io::Result<OwnedFd> {
        if !crate::defence::on(crate::defence::Defence::MountTargets) {
            return naive_target(&self.merged, target, kind);
        }
        let root = self.root()?;
        let rel = Path::new(target.trim_start_matches('/'));
        let mode = Mode::from_bits_truncate(0o755);
        match kind {
            Kind::Dir => confined::make_dirs(root, rel, mode, Scope::AnyMount),
            Kind::File => file_in_root(root, rel),
        }
        .map_err(|e| io::Error::new(e.kind(), format!("{target}: {e}")))
    }

    /// A handle of an existing `target` inside the root.
    fn existing(&self, target: &str) -> io::Result<Option<OwnedFd>> {
        let rel = Path::new(target.trim_start_matches('/'));
        let r = if crate::defence::on(crate::defence::Defence::MountTargets) {
            confined::resolve(self.root()?, rel, OFlag::O_PATH, Scope::AnyMount)
        } else {
            nix::fcntl::open(
                &self.merged.join(rel),
                OFlag::O_PATH | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map(owned)
            .map_err(io::Error::from)
        };
        match r {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(io::Error::new(e.kind(), format!("{target}: {e}"))),
        }
    }
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: a descriptor just returned by open, owned by nobody else.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

/// File `rel` inside `root`: found, or made empty (0644) where it would be; a dangling
/// symlink on the way is followed inside the root (at most 40 times), as Docker does.
fn file_in_root(root: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let mut path = rel.to_path_buf();
    for _ in 0..40 {
        match confined::resolve(root, &path, OFlag::O_PATH, Scope::AnyMount) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let parent_rel = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("no file name"))?
            .to_os_string();
        let parent = confined::make_dirs(
            root,
            &parent_rel,
            Mode::from_bits_truncate(0o755),
            Scope::AnyMount,
        )?;
        match nix::fcntl::openat(
            Some(parent.as_raw_fd()),
            name.as_os_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        ) {
            Ok(fd) => return Ok(owned(fd)),
            Err(nix::errno::Errno::EEXIST) => {
                // A symlink that leads nowhere: go where it points, inside.
                let link = nix::fcntl::readlinkat(Some(parent.as_raw_fd()), name.as_os_str())
                    .map_err(io::Error::from)?;
                let link = PathBuf::from(link);
                path = if link.is_absolute() {
                    link
                } else {
                    parent_rel.join(link)
                };
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other("too many levels of symlinks"))
}

/// A target by its path joined to the root's, every symlink followed wherever it
/// leads: what `GROVE_DEFENCES_OFF=mount-targets` makes of mounts (test builds only).
#[cfg(feature = "defences-off")]
fn naive_target(merged: &Path, target: &str, kind: Kind) -> io::Result<OwnedFd> {
    let p = merged.join(target.trim_start_matches('/'));
    match kind {
        Kind::Dir => std::fs::create_dir_all(&p)?,
        Kind::File => {
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&p)
                .map(drop)?;
        }
    }
    nix::fcntl::open(&p, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map(owned)
        .map_err(io::Error::from)
}

#[cfg(not(feature = "defences-off"))]
fn naive_target(_: &Path, _: &str, _: Kind) -> io::Result<OwnedFd> {
    unreachable!("every defence is on in this build")
}

fn ctx(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl Sys for RealSys<'_> {
    fn private_mounts(&mut self) -> io::Result<()> {
        use nix::mount::MsFlags;
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("make / private: {e}")))
    }

    fn mkdir(&mut self, host: &Path) -> io::Result<()> {
        std::fs::create_dir_all(host).map_err(ctx(host.display().to_string()))
    }

    fn chown(&mut self, host: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::chown(host, Some(uid), Some(gid))
            .map_err(ctx(host.display().to_string()))
    }

    fn bind_layer(&mut self, layer: &Path, at: &Path, idmap: bool) -> io::Result<()> {
        let m = mountapi::clone_tree(layer, false)?;
        let userns = if idmap { self.userns } else { None };
        mountapi::set_attrs(m.as_fd(), Attrs::QUIET.read_only(), userns).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "layer {}: {e} (the kernel or the file system of the state dir cannot \
                     map its owners into a user namespace)",
                    layer.display()
                ),
            )
        })?;
        mountapi::attach_at(m.as_fd(), at)
    }

    fn overlay(&mut self, data: &str, host: &Path, nodev: bool) -> io::Result<()> {
        use nix::mount::MsFlags;
        let flags = if nodev {
            MsFlags::MS_NODEV
        } else {
            MsFlags::empty()
        };
        nix::mount::mount(Some("overlay"), host, Some("overlay"), flags, Some(data)).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("overlay on {}: {e}", host.display()),
            )
        })
    }

    fn enter_root(&mut self, host: &Path) -> io::Result<()> {
        self.root = Some(confined::open_root(host)?);
        self.merged = host.to_path_buf();
        Ok(())
    }

    fn mount_in(
        &mut self,
        fstype: &str,
        options: &str,
        target: &str,
        attrs: Attrs,
    ) -> io::Result<()> {
        let at = self.target(target, Kind::Dir)?;
        let m = mountapi::new_fs(fstype, options, attrs)
            .map_err(ctx(format!("{fstype} on {target}")))?;
        mountapi::attach(m.as_fd(), at.as_fd()).map_err(ctx(format!("{fstype} on {target}")))
    }

    fn bind_in(&mut self, host: &Path, target: &str, kind: Kind, attrs: Attrs) -> io::Result<()> {
        let at = self.target(target, kind)?;
        let m = mountapi::clone_tree(host, false)?;
        mountapi::set_attrs(m.as_fd(), attrs, None)?;
        mountapi::attach(m.as_fd(), at.as_fd())
            .map_err(ctx(format!("{} on {target}", host.display())))
    }

    fn read_only_in(&mut self, target: &str) -> io::Result<bool> {
        let Some(at) = self.existing(target)? else {
            return Ok(false);
        };
        let m = mountapi::clone_at(at.as_fd(), true)?;
        mountapi::set_attrs(m.as_fd(), Attrs::QUIET.read_only(), None)?;
        mountapi::attach(m.as_fd(), at.as_fd()).map_err(ctx(format!("read-only {target}")))?;
        Ok(true)
    }

    fn mask_in(&mut self, target: &str) -> io::Result<bool> {
        let Some(at) = self.existing(target)? else {
            return Ok(false);
        };
        let st = nix::sys::stat::fstat(at.as_raw_fd()).map_err(io::Error::from)?;
        let is_dir = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
            .contains(nix::sys::stat::SFlag::S_IFDIR);
        let m = if is_dir {
            mountapi::new_fs("tmpfs", "size=0,mode=555", Attrs::QUIET.read_only())?
        } else {
            // /dev/null reads as empty only where device nodes open.
            let m = mountapi::clone_tree(Path::new("/dev/null"), false)?;
            let attrs = Attrs {
                nodev: false,
                ..Attrs::QUIET.read_only()
            };
            mountapi::set_attrs(m.as_fd(), attrs, None)?;
            m
        };
        mountapi::attach(m.as_fd(), at.as_fd()).map_err(ctx(format!("mask {target}")))?;
        Ok(true)
    }

    fn symlink_in(&mut self, to: &str, link: &str) -> io::Result<()> {
        let rel = Path::new(link.trim_start_matches('/'));
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::other("no link name"))?;
        let dir = if crate::defence::on(crate::defence::Defence::MountTargets) {
            confined::make_dirs(
                self.root()?,
                parent,
                Mode::from_bits_truncate(0o755),
                Scope::AnyMount,
            )?
        } else {
            naive_target(&self.merged, &parent.display().to_string(), Kind::Dir)?
        };
        match nix::unistd::symlinkat(to, Some(dir.as_raw_fd()), name) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(e) => Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("symlink {link}: {e}"),
            )),
        }
    }

    fn sethostname(&mut self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(io::Error::from)
    }

    fn pivot(&mut self, host: &Path) -> io::Result<()> {
        self.root = None;
        // Into the root from the container's own directory, by its handle.
        nix::unistd::fchdir(self.home.as_raw_fd()).map_err(io::Error::from)?;
        let name = host.file_name().unwrap_or(host.as_os_str());
        nix::unistd::chdir(name).map_err(io::Error::from)?;
        nix::unistd::pivot_root(".", ".")
            .map_err(|e| io::Error::other(format!("pivot_root: {e}")))?;
        nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| io::Error::other(format!("detach the old root: {e}")))?;
        nix::unistd::chdir("/").map_err(io::Error::from)
    }
}

#[cfg(test)]
pub(crate) mod tests;
