//! Unpacking a layer (a tar, gzip-compressed or not) into a directory that overlayfs
//! stacks as a lower layer.
//!
//! OCI whiteouts become overlayfs ones: `.wh.NAME` → a 0:0 character device `NAME`,
//! `.wh..wh..opq` → the directory marked opaque (`trusted.overlay.opaque=y`). A layer
//! is hostile until unpacked, and nothing it holds is written outside the directory:
//! `..` is refused, links may only point inside it (the tar crate checks every parent
//! against the directory, so a symlinked parent cannot lead out, nor a chain of them),
//! an entry replacing a symlink replaces the link and never what it points to,
//! whiteouts and opaque marks go through the same parent check, device nodes and FIFOs
//! are skipped (a container gets its /dev from the runtime), sparse entries are
//! refused, and the unpacked bytes and the number of entries are bounded
//! ([`Limits`]), so a small compressed layer cannot fill the disk. A leading `/` means
//! the layer's root, as Docker reads it.

use std::io::{BufRead, BufReader, Read};
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
    /// Reading or writing.
    #[error("{0}")]
    Io(#[from] std::io::Error),
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

/// `dir/rel` as a directory that is really inside `dir`: missing components are made,
/// a symlinked one is followed only when it resolves inside `dir`.
fn contained_dir(dir: &Path, rel: &Path) -> Result<PathBuf, LayerError> {
    let root = dir.canonicalize()?;
    let mut at = root.clone();
    for c in rel.components() {
        let next = at.join(c);
        match std::fs::symlink_metadata(&next) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&next)?,
            Err(e) => return Err(e.into()),
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                let real = next.canonicalize().map_err(|_| escape(rel))?;
                if !real.starts_with(&root) || !real.is_dir() {
                    return Err(escape(rel));
                }
                at = real;
                continue;
            }
            Ok(_) => {
                return Err(LayerError::Io(std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    format!("{}: not a directory", rel.display()),
                )));
            }
        }
        at = next;
    }
    Ok(at)
}

fn escape(p: &Path) -> LayerError {
    LayerError::Escape(p.display().to_string())
}

fn mark_opaque(dir: &Path) -> std::io::Result<()> {
    nix::sys::stat::lstat(dir).map_err(std::io::Error::from)?;
    xattr_set(dir, "trusted.overlay.opaque", b"y")
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let n = std::ffi::CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and live across the call; value is a
    // valid slice of the length given.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
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

fn whiteout(path: &Path) -> std::io::Result<()> {
    use nix::sys::stat::{Mode, SFlag, mknod};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path)?,
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    mknod(path, SFlag::S_IFCHR, Mode::empty(), 0).map_err(std::io::Error::from)
}

/// Unpack `data` (tar, optionally gzip) into `dir`, which must exist and be empty,
/// within the default [`Limits`].
pub fn unpack(data: impl Read, dir: &Path) -> Result<(), LayerError> {
    unpack_with(data, dir, Limits::default())
}

/// Unpack `data` into `dir` within `limits`.
pub fn unpack_with(data: impl Read, dir: &Path, limits: Limits) -> Result<(), LayerError> {
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
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
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
        if entry.header().entry_type().is_gnu_sparse() {
            return Err(LayerError::Unsupported(
                raw.display().to_string(),
                "sparse files are not unpacked",
            ));
        }
        let size = entry.header().size()?;
        if size > limits.max_bytes {
            return Err(LayerError::TooLarge(format!(
                "entry {} says {size} bytes",
                raw.display()
            )));
        }
        let Some(rel) = inside(&raw)? else { continue };
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == OPAQUE {
            mark_opaque(&contained_dir(dir, &parent)?)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(LayerError::Unsupported(
                    raw.display().to_string(),
                    "a whiteout must name an entry",
                ));
            }
            whiteout(&contained_dir(dir, &parent)?.join(hidden))?;
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
            continue;
        }
        if kind.is_hard_link() {
            let target = entry
                .link_name()?
                .ok_or_else(|| LayerError::Escape(raw.display().to_string()))?;
            if inside(&target)?.is_none() {
                return Err(LayerError::Escape(target.display().to_string()));
            }
        }
        // A later entry replaces an earlier one: when that was a symlink, replace the
        // link itself, never what it points to (a directory entry over a symlink would
        // otherwise change the mode and times of its target).
        let at = dir.join(&rel);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&at)?;
        }
        if !entry.unpack_in(dir).map_err(too_large)? {
            return Err(LayerError::Escape(raw.display().to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // set_path refuses `..`; write the raw name to test hostile archives.
            let name = h.as_gnu_mut().unwrap();
            name.name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("grove-layer-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn files_dirs_and_links_land_inside_gzip_or_not() {
        use tar::EntryType as T;
        let t = tar_of(&[
            ("etc/", T::Directory, b"", None),
            ("etc/hostname", T::Regular, b"box\n", None),
            ("bin/", T::Directory, b"", None),
            ("bin/sh", T::Symlink, b"", Some("busybox")),
            ("etc/alias", T::Link, b"", Some("etc/hostname")),
        ]);
        let d = scratch("plain");
        unpack(&t[..], &d).unwrap();
        assert_eq!(std::fs::read(d.join("etc/hostname")).unwrap(), b"box\n");
        assert_eq!(std::fs::read(d.join("etc/alias")).unwrap(), b"box\n");
        assert_eq!(
            std::fs::read_link(d.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &t).unwrap();
        let d2 = scratch("gz");
        unpack(&gz.finish().unwrap()[..], &d2).unwrap();
        assert_eq!(std::fs::read(d2.join("etc/hostname")).unwrap(), b"box\n");
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&d2);
    }

    /// A directory outside the layer with a file in it, to see that nothing touched it.
    struct Victim {
        dir: PathBuf,
    }

    impl Victim {
        fn new(name: &str) -> Self {
            use std::os::unix::fs::PermissionsExt;
            let dir = scratch(name);
            std::fs::write(dir.join("secret"), b"keep").unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            Self { dir }
        }

        fn path(&self) -> &str {
            self.dir.to_str().unwrap()
        }

        fn assert_untouched(&self, case: &str) {
            use std::os::unix::fs::PermissionsExt;
            let names: Vec<_> = std::fs::read_dir(&self.dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["secret"], "{case}: files appeared outside");
            assert_eq!(
                std::fs::read(self.dir.join("secret")).unwrap(),
                b"keep",
                "{case}: a file outside was changed"
            );
            let mode = std::fs::metadata(&self.dir).unwrap().permissions().mode() & 0o7777;
            assert_eq!(
                mode, 0o700,
                "{case}: the mode of a directory outside changed"
            );
        }
    }

    impl Drop for Victim {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn hostile_layers_cannot_touch_anything_outside_the_layer() {
        use tar::EntryType as T;
        let v = Victim::new("victim");
        let out = v.path();
        let secret = format!("{out}/secret");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "path traversal",
                tar_of(&[("../secret", T::Regular, b"x", None)]),
            ),
            (
                "deep path traversal",
                tar_of(&[("a/../../../secret", T::Regular, b"x", None)]),
            ),
            (
                "absolute symlink as a parent",
                tar_of(&[
                    ("out", T::Symlink, b"", Some(out)),
                    ("out/new", T::Regular, b"x", None),
                ]),
            ),
            (
                "chained symlinks leading out",
                tar_of(&[
                    ("b", T::Symlink, b"", Some(out)),
                    ("a", T::Symlink, b"", Some("b")),
                    ("a/new", T::Regular, b"x", None),
                ]),
            ),
            (
                "relative symlink leading out",
                tar_of(&[
                    ("up", T::Symlink, b"", Some("../../../../../../../..")),
                    ("up/tmp/new", T::Regular, b"x", None),
                ]),
            ),
            (
                "hard link out by ..",
                tar_of(&[("h", T::Link, b"", Some("../../etc/passwd"))]),
            ),
            (
                "hard link to an absolute path",
                tar_of(&[("h", T::Link, b"", Some(secret.as_str()))]),
            ),
            (
                "hard link through a symlinked parent",
                tar_of(&[
                    ("s", T::Symlink, b"", Some(out)),
                    ("h", T::Link, b"", Some("s/secret")),
                ]),
            ),
            (
                "file over a symlink to a file outside",
                tar_of(&[
                    ("f", T::Symlink, b"", Some(secret.as_str())),
                    ("f", T::Regular, b"x", None),
                ]),
            ),
            (
                "directory over a symlink to a directory outside",
                tar_of(&[
                    ("d", T::Symlink, b"", Some(out)),
                    ("d", T::Directory, b"", None),
                ]),
            ),
            (
                "whiteout through a symlinked parent",
                tar_of(&[
                    ("w", T::Symlink, b"", Some(out)),
                    ("w/.wh.secret", T::Regular, b"", None),
                ]),
            ),
            (
                "opaque mark through a symlinked parent",
                tar_of(&[
                    ("o", T::Symlink, b"", Some(out)),
                    ("o/.wh..wh..opq", T::Regular, b"", None),
                ]),
            ),
        ];
        for (case, t) in &cases {
            let d = scratch("hostile");
            // Refused, or contained: either way nothing outside changes.
            let r = unpack(&t[..], &d);
            v.assert_untouched(case);
            if let Ok(()) = r {
                // A directory entry over a symlink replaces the link.
                let m = std::fs::symlink_metadata(d.join("d")).ok();
                assert!(
                    m.is_none_or(|m| m.is_dir()),
                    "{case}: accepted, leaving a symlink"
                );
                let f = std::fs::symlink_metadata(d.join("f")).ok();
                assert!(f.as_ref().is_none_or(|m| m.is_file()), "{case}: {f:?}");
            }
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    #[test]
    fn whiteouts_naming_the_directory_or_its_parent_are_refused() {
        use tar::EntryType as T;
        let layers = scratch("layers");
        let d = layers.join("one");
        for name in ["x/.wh..", "x/.wh...", ".wh..", ".wh...", ".wh."] {
            std::fs::create_dir_all(d.join("x")).unwrap();
            let t = tar_of(&[(name, T::Regular, b"", None)]);
            let r = unpack(&t[..], &d);
            assert!(
                matches!(r, Err(LayerError::Unsupported(..))),
                "{name}: {r:?}"
            );
            assert!(
                d.join("x").is_dir() && layers.is_dir(),
                "{name} removed a directory"
            );
        }
        let _ = std::fs::remove_dir_all(&layers);
    }

    #[test]
    fn absolute_names_land_in_the_layer_root() {
        use tar::EntryType as T;
        let d = scratch("abs");
        let t = tar_of(&[("/etc/motd", T::Regular, b"hi", None)]);
        unpack(&t[..], &d).unwrap();
        assert_eq!(std::fs::read(d.join("etc/motd")).unwrap(), b"hi");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn absurd_sizes_and_counts_are_refused() {
        use tar::EntryType as T;
        let small = Limits {
            max_bytes: 1 << 20,
            max_entries: 100,
        };
        // A header that claims a terabyte.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(T::Regular);
        h.set_path("huge").unwrap();
        h.set_size(1 << 40);
        h.set_mode(0o644);
        h.set_cksum();
        let mut t = h.as_bytes().to_vec();
        t.extend_from_slice(&[0u8; 4096]);
        let d = scratch("huge");
        let r = unpack_with(&t[..], &d, small);
        assert!(matches!(r, Err(LayerError::TooLarge(_))), "{r:?}");
        assert!(!d.join("huge").exists(), "nothing of it is written");
        let _ = std::fs::remove_dir_all(&d);

        // A gzip bomb: 64 MiB of zeros in a file, about 64 KiB compressed.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(64 << 20);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "zeros", std::io::repeat(0).take(64 << 20))
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
        let d = scratch("bomb");
        let r = unpack_with(&bomb[..], &d, small);
        assert!(matches!(r, Err(LayerError::TooLarge(_))), "{r:?}");
        let written = std::fs::metadata(d.join("zeros")).map_or(0, |m| m.len());
        assert!(written <= 1 << 20, "{written} bytes written");
        let _ = std::fs::remove_dir_all(&d);

        // Too many entries.
        let many: Vec<(String, T)> = (0..101).map(|i| (format!("f{i}"), T::Regular)).collect();
        let list: Vec<_> = many
            .iter()
            .map(|(n, k)| (n.as_str(), *k, &b""[..], None))
            .collect();
        let d = scratch("many");
        let r = unpack_with(&tar_of(&list)[..], &d, small);
        assert!(matches!(r, Err(LayerError::TooLarge(_))), "{r:?}");
        let _ = std::fs::remove_dir_all(&d);

        // Sparse entries (a real size of 1 TiB and no data).
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(T::GNUSparse);
        h.set_path("sparse").unwrap();
        h.set_size(0);
        let g = h.as_gnu_mut().unwrap();
        g.realsize = *b"20000000000\0";
        g.sparse[0].offset = *b"20000000000\0";
        g.sparse[0].numbytes = *b"00000000000\0";
        h.set_cksum();
        let mut t = h.as_bytes().to_vec();
        t.extend_from_slice(&[0u8; 1024]);
        let d = scratch("sparse");
        let r = unpack_with(&t[..], &d, small);
        assert!(matches!(r, Err(LayerError::Unsupported(..))), "{r:?}");
        assert!(!d.join("sparse").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn whiteouts_and_opaque_dirs_become_overlayfs_ones() {
        use tar::EntryType as T;
        // Whiteouts are device nodes and opaque marks trusted xattrs: root only.
        if !grove_tests::have_root("whiteouts") {
            return;
        }
        let d = scratch("wh");
        let t = tar_of(&[
            ("etc/", T::Directory, b"", None),
            ("etc/.wh.motd", T::Regular, b"", None),
            ("var/", T::Directory, b"", None),
            ("var/.wh..wh..opq", T::Regular, b"", None),
        ]);
        unpack(&t[..], &d).unwrap();
        use std::os::unix::fs::FileTypeExt;
        let m = std::fs::symlink_metadata(d.join("etc/motd")).unwrap();
        assert!(m.file_type().is_char_device(), "{m:?}");
        assert!(!d.join("etc/.wh.motd").exists());
        let mut v = [0u8; 4];
        let p = std::ffi::CString::new(d.join("var").to_str().unwrap()).unwrap();
        let n = std::ffi::CString::new("trusted.overlay.opaque").unwrap();
        // SAFETY: valid NUL-terminated strings and a buffer of the length given.
        let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), v.as_mut_ptr().cast(), 4) };
        assert_eq!((len, v[0]), (1, b'y'));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn device_nodes_and_fifos_are_skipped() {
        use tar::EntryType as T;
        let d = scratch("dev");
        let t = tar_of(&[
            ("dev/", T::Directory, b"", None),
            ("dev/sda", T::Block, b"", None),
            ("dev/fifo", T::Fifo, b"", None),
        ]);
        unpack(&t[..], &d).unwrap();
        assert!(d.join("dev").is_dir());
        assert!(!d.join("dev/sda").exists() && !d.join("dev/fifo").exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
