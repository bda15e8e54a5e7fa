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
        (
            "an entry replacing a file through a symlinked parent",
            tar_of(&[
                ("x", T::Symlink, b"", Some(out)),
                ("x/secret", T::Regular, b"x", None),
            ]),
        ),
        (
            "a directory replacing a file through a symlinked parent",
            tar_of(&[
                ("x", T::Symlink, b"", Some(out)),
                ("x/secret", T::Directory, b"", None),
            ]),
        ),
        (
            "a relative symlinked parent climbing out, then a replacing entry",
            tar_of(&[
                ("x", T::Symlink, b"", Some("../../../../../../../../../..")),
                (&secret[1..], T::Regular, b"x", None),
            ]),
        ),
        (
            "a hard link replacing a file through a symlinked parent",
            tar_of(&[
                ("f", T::Regular, b"x", None),
                ("x", T::Symlink, b"", Some(out)),
                ("x/secret", T::Link, b"", Some("f")),
            ]),
        ),
        (
            "a symlink replacing a file through a symlinked parent",
            tar_of(&[
                ("x", T::Symlink, b"", Some(out)),
                ("x/secret", T::Symlink, b"", Some("/etc/passwd")),
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
fn a_symlink_to_the_root_leads_to_the_layers_own_root() {
    use tar::EntryType as T;
    let d = scratch("rootlink");
    let t = tar_of(&[
        ("x", T::Symlink, b"", Some("/")),
        ("x/lib64/", T::Directory, b"", None),
        ("x/lib64/ld.so", T::Regular, b"mine", None),
        ("y", T::Symlink, b"", Some("../../../../../../..")),
        ("y/etc/motd", T::Regular, b"hi", None),
    ]);
    unpack(&t[..], &d).unwrap();
    assert_eq!(std::fs::read(d.join("lib64/ld.so")).unwrap(), b"mine");
    assert_eq!(std::fs::read(d.join("etc/motd")).unwrap(), b"hi");
    let _ = std::fs::remove_dir_all(&d);
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
