//! Unpacking a layer (a tar, gzip-compressed or not) into a directory that overlayfs
//! stacks as a lower layer.
//!
//! OCI whiteouts become overlayfs ones: `.wh.NAME` → a 0:0 character device `NAME`,
//! `.wh..wh..opq` → the directory marked opaque (`trusted.overlay.opaque=y`). A layer
//! is hostile until unpacked, and nothing it holds is written, changed or removed
//! outside the directory: every create, remove (of a whiteout's target or an entry
//! being replaced), chown, chmod and link is made relative to a handle of the entry's
//! parent directory, found with `openat2(RESOLVE_IN_ROOT)` ([`crate::confined`]), so
//! a symlink in the layer (`x -> /`, `x -> ../../..`) leads to the layer's own root,
//! never out of it, and the entry itself is never followed. Names with `..` and hard
//! links to absolute or outside paths are refused besides. Device nodes and FIFOs are
//! skipped (a container gets its /dev from the runtime), sparse entries are refused,
//! and the unpacked bytes and the number of entries are bounded ([`Limits`]), so a
//! small compressed layer cannot fill the disk. A leading `/` means the layer's root,
//! as Docker reads it.

use crate::confined::{self, Scope};
use crate::defence::{self, Defence};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Bounds on what one layer may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the uncompressed archive (headers and data).
    pub max_bytes: u64,
    /// Entries.
    pub max_entries: u64,
}

impl Default for Limits {
    /// 16 GiB and a million entries: beyond any image an edge node runs.
    fn default() -> Self {
        Self {
            max_bytes: 16 << 30,
            max_entries: 1 << 20,
        }
    }
}

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading the archive.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Writing one entry.
    #[error("layer entry {entry:?}: {source}")]
    Entry {
        /// The entry's name.
        entry: String,
        /// Why.
        source: std::io::Error,
    },
    /// An entry that would land outside the layer.
    #[error("layer entry {0:?} points outside the layer")]
    Escape(String),
    /// Over [`Limits`].
    #[error("layer is larger than allowed: {0}")]
    TooLarge(String),
    /// An entry of a kind that is not unpacked.
    #[error("layer entry {0:?}: {1}")]
    Unsupported(String, &'static str),
}

/// A reader that fails (rather than ends) past `left` bytes, so a truncated stream is
/// never taken for a complete one.
struct Bounded<R> {
    inner: R,
    left: u64,
    max: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("over {} bytes uncompressed", self.max),
            )
        })?;
        Ok(n)
    }
}

/// A path inside the layer, or `None` for the layer's root itself.
fn inside(name: &Path) -> Result<Option<PathBuf>, LayerError> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            // Leading `/` and `./` mean the layer's root, as Docker reads them.
            Component::CurDir | Component::RootDir => {}
            Component::Prefix(_) | Component::ParentDir => {
                return Err(LayerError::Escape(name.display().to_string()));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// `name` with its root and `.` components dropped (`..` kept): what a layer names
/// when nobody checks its names.
fn unchecked(name: &Path) -> Option<PathBuf> {
    let out: PathBuf = name
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Ownership, mode and time of an entry.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: libc::time_t,
    /// Set the owner (only root can).
    chown: bool,
}

/// Where entries are written: each call names an entry by its parent directory
/// (relative to the layer) and its own name, replaces what is there, and follows
/// nothing at the entry itself.
trait Tree {
    fn file(
        &mut self,
        parent: &Path,
        name: &OsStr,
        data: &mut dyn Read,
        m: Meta,
    ) -> std::io::Result<()>;
    fn dir(&mut self, parent: &Path, name: &OsStr, m: Meta) -> std::io::Result<()>;
    fn symlink(
        &mut self,
        parent: &Path,
        name: &OsStr,
        target: &Path,
        m: Meta,
    ) -> std::io::Result<()>;
    /// A hard link to the entry `target` names (itself, never what it points to).
    fn hardlink(&mut self, parent: &Path, name: &OsStr, target: &Path) -> std::io::Result<()>;
    /// An overlayfs whiteout: a 0:0 character device with no permissions.
    fn whiteout(&mut self, parent: &Path, name: &OsStr) -> std::io::Result<()> {
        self.node(parent, name, nix::sys::stat::SFlag::S_IFCHR, 0, 0)
    }
    fn opaque(&mut self, dir: &Path) -> std::io::Result<()>;
    /// A device node or FIFO with `mode` (a layer's own only when entry checks are
    /// off: test builds).
    fn node(
        &mut self,
        parent: &Path,
        name: &OsStr,
        kind: nix::sys::stat::SFlag,
        mode: u32,
        dev: u64,
    ) -> std::io::Result<()>;
}

/// The layer's directory through handles: every path resolved inside it.
struct Confined {
    root: OwnedFd,
    /// The last parent directory used, and its handle (entries come grouped).
    last: Option<(PathBuf, OwnedFd)>,
}

const DIR_MODE: u32 = 0o755;

impl Confined {
    fn open(dir: &Path) -> std::io::Result<Self> {
        Ok(Self {
            root: confined::open_root(dir)?,
            last: None,
        })
    }

    fn parent(&mut self, parent: &Path) -> std::io::Result<std::os::fd::RawFd> {
        if self.last.as_ref().is_none_or(|(p, _)| p != parent) {
            let fd = confined::make_dirs(
                self.root.as_fd(),
                parent,
                Mode::from_bits_truncate(DIR_MODE),
                Scope::SameMount,
            )?;
            self.last = Some((parent.to_path_buf(), fd));
        }
        Ok(self.last.as_ref().map_or(-1, |(_, fd)| fd.as_raw_fd()))
    }

    /// Remove what is at `name` in `parent` (a directory only when `keep_dir` is
    /// false); whether a directory stays there.
    fn clear(&mut self, parent: &Path, name: &OsStr, keep_dir: bool) -> std::io::Result<bool> {
        let p = self.parent(parent)?;
        // SAFETY: `p` is the handle held in `self.last`, alive for this call.
        let pfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(p) };
        match confined::kind(pfd, name)? {
            Some(nix::sys::stat::SFlag::S_IFDIR) if keep_dir => Ok(true),
            None => Ok(false),
            Some(k) => {
                confined::remove_all(pfd, name)?;
                if k == nix::sys::stat::SFlag::S_IFDIR {
                    // A cached handle below it would now point at nothing.
                    self.last = None;
                }
                Ok(false)
            }
        }
    }

    fn fd_of(&mut self, parent: &Path) -> std::io::Result<std::os::fd::RawFd> {
        self.parent(parent)
    }
}

fn nix_io(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from(e)
}

/// Owner, mode and times of an open entry.
fn apply(fd: std::os::fd::BorrowedFd<'_>, m: Meta) -> std::io::Result<()> {
    use nix::sys::time::TimeSpec;
    if m.chown {
        nix::unistd::fchown(
            fd.as_raw_fd(),
            Some(nix::unistd::Uid::from_raw(m.uid)),
            Some(nix::unistd::Gid::from_raw(m.gid)),
        )
        .map_err(nix_io)?;
    }
    // After the owner: a chown clears set-user-id bits.
    nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(m.mode & 0o7777))
        .map_err(nix_io)?;
    let t = TimeSpec::new(m.mtime, 0);
    nix::sys::stat::futimens(fd.as_raw_fd(), &t, &t).map_err(nix_io)
}

impl Tree for Confined {
    fn file(
        &mut self,
        parent: &Path,
        name: &OsStr,
        data: &mut dyn Read,
        m: Meta,
    ) -> std::io::Result<()> {
        self.clear(parent, name, false)?;
        let p = self.fd_of(parent)?;
        let fd = nix::fcntl::openat(
            Some(p),
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(nix_io)?;
        // SAFETY: openat just returned this descriptor; nobody else owns it.
        let mut f =
            std::fs::File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        std::io::copy(data, &mut f)?;
        apply(f.as_fd(), m)
    }

    fn dir(&mut self, parent: &Path, name: &OsStr, m: Meta) -> std::io::Result<()> {
        if !self.clear(parent, name, true)? {
            let p = self.fd_of(parent)?;
            nix::sys::stat::mkdirat(Some(p), name, Mode::from_bits_truncate(DIR_MODE))
                .map_err(nix_io)?;
        }
        let p = self.fd_of(parent)?;
        let fd = nix::fcntl::openat(
            Some(p),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(nix_io)?;
        // SAFETY: as above.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        apply(fd.as_fd(), m)
    }

    fn symlink(
        &mut self,
        parent: &Path,
        name: &OsStr,
        target: &Path,
        m: Meta,
    ) -> std::io::Result<()> {
        use nix::fcntl::AtFlags;
        self.clear(parent, name, false)?;
        let p = self.fd_of(parent)?;
        nix::unistd::symlinkat(target, Some(p), name).map_err(nix_io)?;
        if m.chown {
            nix::unistd::fchownat(
                Some(p),
                name,
                Some(nix::unistd::Uid::from_raw(m.uid)),
                Some(nix::unistd::Gid::from_raw(m.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(nix_io)?;
        }
        let t = nix::sys::time::TimeSpec::new(m.mtime, 0);
        nix::sys::stat::utimensat(
            Some(p),
            name,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(nix_io)?;
        // A handle cached below this name would now be stale.
        self.last = self.last.take().filter(|(lp, _)| lp == parent);
        Ok(())
    }

    fn hardlink(&mut self, parent: &Path, name: &OsStr, target: &Path) -> std::io::Result<()> {
        let (Some(tname), tparent) = (target.file_name(), target.parent().unwrap_or(Path::new("")))
        else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a hard link to {}", target.display()),
            ));
        };
        let tdir = confined::resolve(
            self.root.as_fd(),
            tparent,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Scope::SameMount,
        )?;
        self.clear(parent, name, false)?;
        let p = self.fd_of(parent)?;
        nix::unistd::linkat(
            Some(tdir.as_raw_fd()),
            tname,
            Some(p),
            name,
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(nix_io)
    }

    fn node(
        &mut self,
        parent: &Path,
        name: &OsStr,
        kind: nix::sys::stat::SFlag,
        mode: u32,
        dev: u64,
    ) -> std::io::Result<()> {
        self.clear(parent, name, false)?;
        let p = self.fd_of(parent)?;
        nix::sys::stat::mknodat(Some(p), name, kind, Mode::from_bits_truncate(mode), dev)
            .map_err(nix_io)
    }

    fn opaque(&mut self, dir: &Path) -> std::io::Result<()> {
        let fd = confined::make_dirs(
            self.root.as_fd(),
            dir,
            Mode::from_bits_truncate(DIR_MODE),
            Scope::SameMount,
        )?;
        set_xattr(fd.as_fd(), "trusted.overlay.opaque", b"y")
    }
}

fn set_xattr(fd: std::os::fd::BorrowedFd<'_>, name: &str, value: &[u8]) -> std::io::Result<()> {
    let n = std::ffi::CString::new(name)?;
    // SAFETY: a valid descriptor, a NUL-terminated name and a value slice of the
    // length given, all alive across the call.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Unpack `data` (tar, optionally gzip) into `dir`, which must exist and be empty,
/// within the default [`Limits`].
pub fn unpack(data: impl Read, dir: &Path) -> Result<(), LayerError> {
    unpack_with(data, dir, Limits::default())
}

/// Unpack `data` into `dir` within `limits`.
pub fn unpack_with(data: impl Read, dir: &Path, limits: Limits) -> Result<(), LayerError> {
    let mut tree: Box<dyn Tree> = if defence::on(Defence::LayerPaths) {
        Box::new(Confined::open(dir)?)
    } else {
        naive(dir)
    };
    let mut data = BufReader::new(data);
    let gz = data.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(data))
    } else {
        Box::new(data)
    };
    let reader = Bounded {
        inner: reader,
        left: limits.max_bytes,
        max: limits.max_bytes,
    };
    // Some tools (umoci 0.4) end a layer right after the last file's data, without the
    // block padding and the two zero blocks that end a tar. The layer's digest is
    // already checked, so supply them: a complete archive never reads them.
    let reader = reader.chain(std::io::repeat(0).take(3 * 512));
    let mut archive = tar::Archive::new(reader);
    let chown = nix::unistd::geteuid().is_root();
    let check_names = defence::on(Defence::LayerEntries);
    let mut entries = 0u64;
    let too_large = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::FileTooLarge {
            LayerError::TooLarge(e.to_string())
        } else {
            LayerError::Io(e)
        }
    };
    for entry in archive.entries().map_err(too_large)? {
        let mut entry = entry.map_err(too_large)?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(LayerError::TooLarge(format!(
                "over {} entries",
                limits.max_entries
            )));
        }
        let raw = entry.path()?.into_owned();
        let shown = raw.display().to_string();
        let header = entry.header();
        let kind = header.entry_type();
        if kind.is_gnu_sparse() {
            return Err(LayerError::Unsupported(
                shown,
                "sparse files are not unpacked",
            ));
        }
        let size = header.size()?;
        if size > limits.max_bytes {
            return Err(LayerError::TooLarge(format!(
                "entry {shown} says {size} bytes"
            )));
        }
        let meta = Meta {
            mode: header.mode()?,
            uid: u32::try_from(header.uid()?).unwrap_or(u32::MAX),
            gid: u32::try_from(header.gid()?).unwrap_or(u32::MAX),
            mtime: libc::time_t::try_from(header.mtime()?).unwrap_or(libc::time_t::MAX),
            chown,
        };
        let rel = if check_names {
            inside(&raw)?
        } else {
            unchecked(&raw)
        };
        let Some(rel) = rel else { continue };
        let name: OsString = rel.file_name().map(OsStr::to_os_string).unwrap_or_default();
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        let at = |source: std::io::Error| LayerError::Entry {
            entry: shown.clone(),
            source,
        };
        let name_str = name.to_string_lossy();
        if name_str == OPAQUE {
            tree.opaque(&parent).map_err(at)?;
            continue;
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(LayerError::Unsupported(
                    shown,
                    "a whiteout must name an entry",
                ));
            }
            tree.whiteout(&parent, OsStr::new(hidden)).map_err(at)?;
            continue;
        }
        if name.is_empty() || name == ".." {
            return Err(LayerError::Escape(shown));
        }
        if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
            // A container gets its /dev from the runtime; a layer's nodes are dropped.
            if check_names {
                continue;
            }
            let (major, minor) = (
                header.device_major()?.unwrap_or(0),
                header.device_minor()?.unwrap_or(0),
            );
            let sflag = if kind.is_block_special() {
                nix::sys::stat::SFlag::S_IFBLK
            } else if kind.is_character_special() {
                nix::sys::stat::SFlag::S_IFCHR
            } else {
                nix::sys::stat::SFlag::S_IFIFO
            };
            let dev = nix::sys::stat::makedev(u64::from(major), u64::from(minor));
            tree.node(&parent, &name, sflag, meta.mode & 0o777, dev)
                .map_err(at)?;
            continue;
        }
        if kind.is_dir() {
            tree.dir(&parent, &name, meta).map_err(at)?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name()?
                .ok_or_else(|| LayerError::Unsupported(shown.clone(), "a symlink to nothing"))?
                .into_owned();
            tree.symlink(&parent, &name, &target, meta).map_err(at)?;
        } else if kind.is_hard_link() {
            let target = entry
                .link_name()?
                .ok_or_else(|| LayerError::Escape(shown.clone()))?
                .into_owned();
            let target = if check_names {
                if target.is_absolute() {
                    return Err(LayerError::Escape(target.display().to_string()));
                }
                inside(&target)?.ok_or_else(|| LayerError::Escape(shown.clone()))?
            } else {
                target
            };
            tree.hardlink(&parent, &name, &target).map_err(at)?;
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            tree.file(&parent, &name, &mut entry, meta).map_err(|e| {
                if e.kind() == std::io::ErrorKind::FileTooLarge {
                    LayerError::TooLarge(e.to_string())
                } else {
                    at(e)
                }
            })?;
        } else if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            continue;
        } else {
            return Err(LayerError::Unsupported(
                shown,
                "an entry of an unknown kind",
            ));
        }
    }
    Ok(())
}

/// The layer's directory through string-joined paths, following every symlink: what
/// `GROVE_DEFENCES_OFF=layer-paths` makes of an unpack, so that the escape suite sees
/// the hostile layers succeed without the defence. Only in test builds.
#[cfg(feature = "defences-off")]
fn naive(dir: &Path) -> Box<dyn Tree> {
    Box::new(naive::Naive(dir.to_path_buf()))
}

#[cfg(not(feature = "defences-off"))]
fn naive(_: &Path) -> Box<dyn Tree> {
    unreachable!("every defence is on in this build")
}

#[cfg(feature = "defences-off")]
mod naive {
    use super::{Meta, Tree};
    use std::ffi::OsStr;
    use std::io::Read;
    use std::path::{Path, PathBuf};

    pub(super) struct Naive(pub(super) PathBuf);

    impl Naive {
        fn at(&self, parent: &Path, name: &OsStr) -> std::io::Result<PathBuf> {
            let p = self.0.join(parent);
            std::fs::create_dir_all(&p)?;
            Ok(p.join(name))
        }
    }

    fn clear(p: &Path) -> std::io::Result<()> {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
            Ok(_) => std::fs::remove_file(p),
            Err(_) => Ok(()),
        }
    }

    fn meta(p: &Path, m: Meta) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if m.chown {
            std::os::unix::fs::chown(p, Some(m.uid), Some(m.gid))?;
        }
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m.mode & 0o7777))
    }

    impl Tree for Naive {
        fn file(
            &mut self,
            parent: &Path,
            name: &OsStr,
            data: &mut dyn Read,
            m: Meta,
        ) -> std::io::Result<()> {
            let p = self.at(parent, name)?;
            clear(&p)?;
            std::io::copy(data, &mut std::fs::File::create(&p)?)?;
            meta(&p, m)
        }
        fn dir(&mut self, parent: &Path, name: &OsStr, m: Meta) -> std::io::Result<()> {
            let p = self.at(parent, name)?;
            std::fs::create_dir_all(&p)?;
            meta(&p, m)
        }
        fn symlink(
            &mut self,
            parent: &Path,
            name: &OsStr,
            target: &Path,
            _: Meta,
        ) -> std::io::Result<()> {
            let p = self.at(parent, name)?;
            clear(&p)?;
            std::os::unix::fs::symlink(target, p)
        }
        fn hardlink(&mut self, parent: &Path, name: &OsStr, target: &Path) -> std::io::Result<()> {
            let p = self.at(parent, name)?;
            clear(&p)?;
            std::fs::hard_link(self.0.join(target), p)
        }
        fn node(
            &mut self,
            parent: &Path,
            name: &OsStr,
            kind: nix::sys::stat::SFlag,
            mode: u32,
            dev: u64,
        ) -> std::io::Result<()> {
            let p = self.at(parent, name)?;
            clear(&p)?;
            nix::sys::stat::mknod(
                &p,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(mode),
                dev,
            )
            .map_err(std::io::Error::from)
        }
        fn opaque(&mut self, dir: &Path) -> std::io::Result<()> {
            let p = self.0.join(dir);
            std::fs::create_dir_all(&p)?;
            let f = std::fs::File::open(&p)?;
            super::set_xattr(std::os::fd::AsFd::as_fd(&f), "trusted.overlay.opaque", b"y")
        }
    }
}

#[cfg(test)]
mod tests;
