//! Paths resolved inside a directory, never outside it.
//!
//! [`resolve`] is `openat2(2)` with `RESOLVE_IN_ROOT`: every symlink, absolute or
//! relative, and every `..` is resolved as if the directory were `/`, so nothing a
//! hostile image holds can lead out of it; magic links (`/proc/self/fd/N`) are
//! refused. The other calls take such a handle and name one entry in it, and never
//! follow that entry if it is a link. Image layers are unpacked with these, mount
//! targets inside a container's root are found with these, and files of an image
//! the agent reads for itself (`/etc/passwd`) are opened with these.

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Deepest directory tree [`remove_all`] goes into.
const MAX_DEPTH: usize = 256;

/// How far [`resolve`] may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Inside the root, on the root's own file system (a layer).
    SameMount,
    /// Inside the root, across mounts under it (a container's root with its /proc).
    AnyMount,
}

fn errno(e: Errno) -> io::Error {
    io::Error::from(e)
}

fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and is owned by no one
    // else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Open directory `path` (a path of the agent's own, not of an image) as a root.
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(owned)
    .map_err(|e| io::Error::new(errno(e).kind(), format!("{}: {e}", path.display())))
}

/// `rel` as a path of plain names (a leading `/` and `.` dropped), or an error naming
/// it if it holds `..`.
pub fn plain(rel: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: `..` is not allowed", rel.display()),
                ));
            }
        }
    }
    Ok(out)
}

/// Open `rel` inside `root` (with `flags`; `O_CLOEXEC` always), every component
/// resolved as if `root` were `/`.
pub fn resolve(
    root: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlag,
    scope: Scope,
) -> io::Result<OwnedFd> {
    let mut resolve = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    if scope == Scope::SameMount {
        resolve |= ResolveFlag::RESOLVE_NO_XDEV;
    }
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(resolve);
    nix::fcntl::openat2(root.as_raw_fd(), rel, how)
        .map(owned)
        .map_err(openat2_errno)
}

/// An `openat2` error; a kernel (or emulator) without the call says what is needed.
fn openat2_errno(e: Errno) -> io::Error {
    if e == Errno::ENOSYS {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "openat2(2) is not available: the agent needs Linux 5.12 or newer",
        )
    } else {
        errno(e)
    }
}

/// Directory `rel` inside `root`, made (with `mode`) where missing, each component
/// resolved inside `root` (a symlinked component leads where it points, inside; `..`
/// stops at the root).
pub fn make_dirs(
    root: BorrowedFd<'_>,
    rel: &Path,
    mode: Mode,
    scope: Scope,
) -> io::Result<OwnedFd> {
    let dir = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
    let mut cur = resolve(root, Path::new(""), dir, scope)?;
    let mut prefix = PathBuf::new();
    for c in rel.components() {
        let name = match c {
            Component::Normal(n) => n,
            Component::ParentDir => {
                prefix.push("..");
                cur = resolve(root, &prefix, dir, scope)?;
                continue;
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
        };
        prefix.push(name);
        match resolve(root, &prefix, dir, scope) {
            Ok(fd) => cur = fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                match nix::sys::stat::mkdirat(Some(cur.as_raw_fd()), name, mode) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(errno(e)),
                }
                cur = resolve(root, &prefix, dir, scope).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("{}: {e} (a symlink that leads nowhere?)", prefix.display()),
                    )
                })?;
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", prefix.display()),
                ));
            }
        }
    }
    Ok(cur)
}

/// What `name` in `dir` is, not following a link; `None` when absent.
pub fn kind(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<SFlag>> {
    match nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => Ok(Some(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

/// Remove entry `name` of `dir`: a file, a link (never what it points to) or a whole
/// directory tree, each step relative to a handle of the directory it is in.
pub fn remove_all(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    remove_at(dir, name, 0)
}

fn remove_at(dir: BorrowedFd<'_>, name: &OsStr, depth: usize) -> io::Result<()> {
    use nix::unistd::{UnlinkatFlags, unlinkat};
    match kind(dir, name)? {
        None => Ok(()),
        Some(SFlag::S_IFDIR) => {
            if depth >= MAX_DEPTH {
                return Err(io::Error::other(format!(
                    "a directory tree deeper than {MAX_DEPTH}"
                )));
            }
            let sub = nix::fcntl::openat(
                Some(dir.as_raw_fd()),
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map(owned)
            .map_err(errno)?;
            let names: Vec<std::ffi::OsString> = {
                use std::os::fd::IntoRawFd;
                let listing = sub.try_clone()?;
                let mut d = nix::dir::Dir::from_fd(listing.into_raw_fd()).map_err(errno)?;
                d.iter()
                    .filter_map(Result::ok)
                    .map(|e| {
                        use std::os::unix::ffi::OsStrExt;
                        OsStr::from_bytes(e.file_name().to_bytes()).to_os_string()
                    })
                    .filter(|n| n != "." && n != "..")
                    .collect()
            };
            for n in names {
                remove_at(sub.as_fd(), &n, depth + 1)?;
            }
            unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir).map_err(errno)
        }
        Some(_) => unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir).map_err(errno),
    }
}

/// Read at most `max` bytes of file `rel` inside `root`, refusing any symlink on the
/// way (an image's `/etc/passwd -> /etc/shadow` must not make the agent read its own
/// machine's, nor a lower layer's file stand in for a missing one).
pub fn read_small(root: &Path, rel: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let root = open_root(root)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let fd = nix::fcntl::openat2(root.as_raw_fd(), &plain(rel)?, how)
        .map(owned)
        .map_err(openat2_errno)?;
    let mut v = Vec::new();
    std::fs::File::from(fd).take(max).read_to_end(&mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("grove-confined-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn symlinks_out_of_the_root_resolve_inside_it() {
        let d = scratch("resolve");
        let root = d.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(d.join("outside")).unwrap();
        std::os::unix::fs::symlink("/", root.join("up")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("rel")).unwrap();
        std::os::unix::fs::symlink(d.join("outside"), root.join("abs")).unwrap();
        let fd = open_root(&root).unwrap();
        let dir = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
        // `up/etc` and `rel/etc` are the root's own etc.
        for p in ["up/etc", "rel/etc", "etc/../../../etc"] {
            use std::os::unix::fs::MetadataExt;
            let got = resolve(fd.as_fd(), Path::new(p), dir, Scope::SameMount).unwrap();
            let want = std::fs::metadata(root.join("etc")).unwrap();
            let got = std::fs::File::from(got).metadata().unwrap();
            assert_eq!(got.ino(), want.ino(), "{p}");
        }
        // The absolute link names a directory that does not exist inside.
        let e = resolve(fd.as_fd(), Path::new("abs"), dir, Scope::SameMount).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        // make_dirs through the absolute link makes it inside, not outside.
        make_dirs(
            fd.as_fd(),
            Path::new("abs/new"),
            Mode::from_bits_truncate(0o755),
            Scope::SameMount,
        )
        .unwrap_err();
        assert!(!d.join("outside/new").exists());
        make_dirs(
            fd.as_fd(),
            Path::new("up/made/deep"),
            Mode::from_bits_truncate(0o755),
            Scope::SameMount,
        )
        .unwrap();
        assert!(root.join("made/deep").is_dir());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn remove_all_removes_a_link_and_never_what_it_points_to() {
        let d = scratch("remove");
        let root = d.join("root");
        std::fs::create_dir_all(root.join("tree/a/b")).unwrap();
        std::fs::write(root.join("tree/a/b/f"), b"x").unwrap();
        std::fs::create_dir_all(d.join("victim")).unwrap();
        std::fs::write(d.join("victim/keep"), b"keep").unwrap();
        std::os::unix::fs::symlink(d.join("victim"), root.join("tree/a/out")).unwrap();
        std::os::unix::fs::symlink(d.join("victim"), root.join("link")).unwrap();
        let fd = open_root(&root).unwrap();
        remove_all(fd.as_fd(), OsStr::new("tree")).unwrap();
        remove_all(fd.as_fd(), OsStr::new("link")).unwrap();
        remove_all(fd.as_fd(), OsStr::new("absent")).unwrap();
        assert!(!root.join("tree").exists() && !root.join("link").exists());
        assert_eq!(std::fs::read(d.join("victim/keep")).unwrap(), b"keep");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn small_reads_refuse_symlinks_and_dot_dot() {
        let d = scratch("read");
        let root = d.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), b"root:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::write(d.join("host-passwd"), b"intruder\n").unwrap();
        std::os::unix::fs::symlink(d.join("host-passwd"), root.join("etc/evil")).unwrap();
        std::os::unix::fs::symlink("etc", root.join("etc2")).unwrap();
        assert!(
            read_small(&root, Path::new("/etc/passwd"), 64)
                .unwrap()
                .starts_with(b"root")
        );
        assert!(read_small(&root, Path::new("etc/evil"), 64).is_err());
        assert!(read_small(&root, Path::new("etc2/passwd"), 64).is_err());
        assert!(read_small(&root, Path::new("../host-passwd"), 64).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
