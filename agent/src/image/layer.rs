//! Unpacking a layer (a tar, gzip-compressed or not) into a directory that overlayfs
//! stacks as a lower layer.
//!
//! OCI whiteouts become overlayfs ones: `.wh.NAME` → a 0:0 character device `NAME`,
//! `.wh..wh..opq` → the directory marked opaque (`trusted.overlay.opaque=y`). Nothing is
//! written outside the directory: `..` is refused, links may only
//! point inside it (the tar crate checks every parent against the directory, so a
//! symlinked parent cannot lead out), and device nodes and FIFOs are skipped (a
//! container gets its /dev from the runtime). A leading `/` means the layer's root, as
//! Docker reads it.

use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading or writing.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An entry that would land outside the layer.
    #[error("layer entry {0:?} points outside the layer")]
    Escape(String),
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

/// Unpack `data` (tar, optionally gzip) into `dir`, which must exist and be empty.
pub fn unpack(data: impl Read, dir: &Path) -> Result<(), LayerError> {
    let mut data = BufReader::new(data);
    let gz = data.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(data))
    } else {
        Box::new(data)
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
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let Some(rel) = inside(&raw)? else { continue };
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == OPAQUE {
            let d = dir.join(&parent);
            std::fs::create_dir_all(&d)?;
            mark_opaque(&d)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let d = dir.join(&parent);
            std::fs::create_dir_all(&d)?;
            whiteout(&d.join(hidden))?;
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
        if !entry.unpack_in(dir)? {
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

    #[test]
    fn hostile_entries_cannot_write_outside_the_layer() {
        use tar::EntryType as T;
        let outside = scratch("victim");
        let victim = outside.join("owned");
        let evil: Vec<Vec<u8>> = vec![
            tar_of(&[("../owned", T::Regular, b"x", None)]),
            // A symlinked parent pointing out, then a file through it.
            tar_of(&[
                ("out", T::Symlink, b"", Some(outside.to_str().unwrap())),
                ("out/owned", T::Regular, b"x", None),
            ]),
            // A hard link to a file outside.
            tar_of(&[("h", T::Link, b"", Some("../../etc/passwd"))]),
        ];
        for (n, t) in evil.iter().enumerate() {
            let d = scratch(&format!("evil{n}"));
            let r = unpack(&t[..], &d);
            assert!(r.is_err(), "archive {n} was accepted");
            assert!(!victim.exists(), "archive {n} wrote outside");
            let _ = std::fs::remove_dir_all(&d);
        }
        let _ = std::fs::remove_dir_all(&outside);
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
