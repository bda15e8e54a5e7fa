//! The kernel's file-descriptor mount API (Linux 5.2; idmapped mounts 5.12): a file
//! system made with `fsopen`/`fsconfig`/`fsmount`, a tree copied with `open_tree`, its
//! flags (and id mapping) set with `mount_setattr`, and either attached with
//! `move_mount` onto a directory *handle*, so that no mount target is ever looked up
//! by a path an image could have redirected. nix has no wrappers for these; each is
//! one `syscall(2)`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

const OPEN_TREE_CLONE: libc::c_uint = 0x01;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const FSOPEN_CLOEXEC: libc::c_uint = 0x01;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x01;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Mount attributes (`MOUNT_ATTR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attrs {
    /// Read-only.
    pub rdonly: bool,
    /// No set-user-id.
    pub nosuid: bool,
    /// No device nodes.
    pub nodev: bool,
    /// No execution.
    pub noexec: bool,
}

impl Attrs {
    /// nosuid, nodev, noexec.
    pub const QUIET: Attrs = Attrs {
        rdonly: false,
        nosuid: true,
        nodev: true,
        noexec: true,
    };

    /// Read-only besides.
    pub const fn read_only(self) -> Attrs {
        Attrs {
            rdonly: true,
            ..self
        }
    }

    fn bits(self) -> u64 {
        let mut b = 0;
        for (on, bit) in [
            (self.rdonly, 0x01),
            (self.nosuid, 0x02),
            (self.nodev, 0x04),
            (self.noexec, 0x08),
        ] {
            if on {
                b |= bit;
            }
        }
        b
    }
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

fn check(r: libc::c_long, what: &str) -> io::Result<libc::c_long> {
    if r < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(r)
    }
}

fn fd_from(r: libc::c_long) -> OwnedFd {
    // SAFETY: the syscall returned a new descriptor that nobody else owns.
    unsafe { OwnedFd::from_raw_fd(RawFd::try_from(r).unwrap_or(-1)) }
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte"))
}

fn path_c(p: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte"))
}

/// A new, detached mount of file system `fstype` with `options` (`key=value` or a
/// bare flag, comma-separated).
pub fn new_fs(fstype: &str, options: &str, attrs: Attrs) -> io::Result<OwnedFd> {
    let t = cstr(fstype)?;
    // SAFETY: a NUL-terminated name and integer flags.
    let r = unsafe { libc::syscall(libc::SYS_fsopen, t.as_ptr(), FSOPEN_CLOEXEC) };
    let fs = fd_from(check(r, &format!("fsopen {fstype}"))?);
    for opt in options.split(',').filter(|o| !o.is_empty()) {
        let (k, v) = match opt.split_once('=') {
            Some((k, v)) => (cstr(k)?, Some(cstr(v)?)),
            None => (cstr(opt)?, None),
        };
        let (cmd, value) = match &v {
            Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
            None => (FSCONFIG_SET_FLAG, std::ptr::null()),
        };
        // SAFETY: a valid fs context, NUL-terminated key and value (or null for a
        // flag), aux 0.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                cmd,
                k.as_ptr(),
                value,
                0,
            )
        };
        check(r, &format!("{fstype} option {opt}"))?;
    }
    // SAFETY: as above; the create command takes no key or value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    };
    check(r, &format!("create {fstype}"))?;
    // SAFETY: a created fs context and integer flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            attrs.bits(),
        )
    };
    let m = check(r, &format!("fsmount {fstype}"))?;
    Ok(fd_from(m))
}

/// A detached copy of the mount tree at `path` (recursive when `recursive`).
pub fn clone_tree(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let p = path_c(path)?;
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: AT_FDCWD with a NUL-terminated path and integer flags.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, p.as_ptr(), flags) };
    let r = check(r, &format!("open_tree {}", path.display()))?;
    Ok(fd_from(r))
}

/// A detached copy of the mount at the handle `at` (itself, not what is under it).
pub fn clone_at(at: BorrowedFd<'_>, recursive: bool) -> io::Result<OwnedFd> {
    let empty = cstr("")?;
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: a valid descriptor with an empty path and AT_EMPTY_PATH.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, at.as_raw_fd(), empty.as_ptr(), flags) };
    let r = check(r, "open_tree")?;
    Ok(fd_from(r))
}

/// Set `attrs` on detached mount `m` (recursively), and map its ids through user
/// namespace `userns` when given.
pub fn set_attrs(
    m: BorrowedFd<'_>,
    attrs: Attrs,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut a = MountAttr {
        attr_set: attrs.bits(),
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if let Some(ns) = userns {
        a.attr_set |= MOUNT_ATTR_IDMAP;
        a.userns_fd = u64::try_from(ns.as_raw_fd()).unwrap_or(0);
    }
    let empty = cstr("")?;
    // SAFETY: a valid mount descriptor, an empty path with AT_EMPTY_PATH, and a
    // mount_attr of the size given, alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            m.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &raw const a,
            size_of::<MountAttr>(),
        )
    };
    let what = if userns.is_some() {
        "an idmapped mount (mount_setattr)"
    } else {
        "mount_setattr"
    };
    check(r, what)?;
    Ok(())
}

/// Attach detached mount `m` onto the directory or file handle `target`.
pub fn attach(m: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    let empty = cstr("")?;
    // SAFETY: two valid descriptors with empty paths and the EMPTY_PATH flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            m.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    check(r, "move_mount")?;
    Ok(())
}

/// Attach detached mount `m` at `path` (a path of the agent's own).
pub fn attach_at(m: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let empty = cstr("")?;
    let p = path_c(path)?;
    // SAFETY: a valid descriptor with an empty path, AT_FDCWD with a NUL-terminated
    // path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            m.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            p.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(r, &format!("move_mount to {}", path.display()))?;
    Ok(())
}
