//! The container's filesystem view, built inside its new mount namespace: overlayfs of
//! the image's layers with a per-instance upper dir, /proc, a minimal /dev, /dev/pts,
//! /dev/shm, read-only /sys, then pivot_root into it.
//!
//! The system calls go through [`Sys`], so the sequence is unit-tested with a
//! recording fake without privileges; the privileged suite runs it for real.

use std::path::{Path, PathBuf};

/// Mount flags this code uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    /// MS_RDONLY.
    pub rdonly: bool,
    /// MS_NOSUID | MS_NODEV | MS_NOEXEC as far as set.
    pub nosuid: bool,
    /// MS_NODEV.
    pub nodev: bool,
    /// MS_NOEXEC.
    pub noexec: bool,
    /// MS_BIND.
    pub bind: bool,
    /// MS_REC | MS_PRIVATE (propagation change only).
    pub rprivate: bool,
}

/// The system calls of rootfs setup.
pub trait Sys {
    /// mount(2).
    fn mount(
        &mut self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: Flags,
        data: &str,
    ) -> std::io::Result<()>;
    /// mkdir -p.
    fn mkdir(&mut self, path: &Path) -> std::io::Result<()>;
    /// Create an empty file (a bind-mount target).
    fn touch(&mut self, path: &Path) -> std::io::Result<()>;
    /// symlink(2).
    fn symlink(&mut self, target: &str, link: &Path) -> std::io::Result<()>;
    /// chdir(2).
    fn chdir(&mut self, path: &Path) -> std::io::Result<()>;
    /// pivot_root(".", ".") followed by a lazy unmount of the old root.
    fn pivot_here(&mut self) -> std::io::Result<()>;
    /// sethostname(2).
    fn sethostname(&mut self, name: &str) -> std::io::Result<()>;
}

/// The real system calls.
#[derive(Debug, Default)]
pub struct RealSys;

impl Sys for RealSys {
    fn mount(
        &mut self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: Flags,
        data: &str,
    ) -> std::io::Result<()> {
        use nix::mount::MsFlags as M;
        let mut f = M::empty();
        for (on, bit) in [
            (flags.rdonly, M::MS_RDONLY),
            (flags.nosuid, M::MS_NOSUID),
            (flags.nodev, M::MS_NODEV),
            (flags.noexec, M::MS_NOEXEC),
            (flags.bind, M::MS_BIND),
            (flags.rprivate, M::MS_REC | M::MS_PRIVATE),
        ] {
            if on {
                f |= bit;
            }
        }
        let none = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        nix::mount::mount(
            none(source).as_deref(),
            target,
            none(fstype).as_deref(),
            f,
            none(data).as_deref(),
        )
        .map_err(|e| {
            std::io::Error::other(format!("mount {source} on {}: {e}", target.display()))
        })?;
        // A bind mount takes its flags only on a remount.
        if flags.bind && (flags.rdonly || flags.nosuid || flags.nodev || flags.noexec) {
            nix::mount::mount(
                None::<&str>,
                target,
                None::<&str>,
                f | M::MS_REMOUNT,
                None::<&str>,
            )
            .map_err(|e| std::io::Error::other(format!("remount {}: {e}", target.display())))?;
        }
        Ok(())
    }

    fn mkdir(&mut self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn touch(&mut self, path: &Path) -> std::io::Result<()> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map(drop)
    }

    fn symlink(&mut self, target: &str, link: &Path) -> std::io::Result<()> {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }

    fn chdir(&mut self, path: &Path) -> std::io::Result<()> {
        nix::unistd::chdir(path).map_err(std::io::Error::from)
    }

    fn pivot_here(&mut self) -> std::io::Result<()> {
        nix::unistd::pivot_root(".", ".")
            .map_err(|e| std::io::Error::other(format!("pivot_root: {e}")))?;
        nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| std::io::Error::other(format!("detach the old root: {e}")))?;
        nix::unistd::chdir("/").map_err(std::io::Error::from)
    }

    fn sethostname(&mut self, name: &str) -> std::io::Result<()> {
        nix::unistd::sethostname(name).map_err(std::io::Error::from)
    }
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
}

impl Dirs {
    /// The dirs under a container's own directory.
    pub fn under(dir: &Path) -> Self {
        Self {
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("rootfs"),
        }
    }
}

const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Build the root and pivot into it; the caller is in a new mount namespace.
pub fn enter(
    sys: &mut dyn Sys,
    layers: &[String],
    dirs: &Dirs,
    hostname: &str,
) -> std::io::Result<()> {
    let f = Flags::default;
    // Nothing done here may propagate back to the host.
    sys.mount(
        "",
        Path::new("/"),
        "",
        Flags {
            rprivate: true,
            ..f()
        },
        "",
    )?;
    for d in [&dirs.upper, &dirs.work, &dirs.merged] {
        sys.mkdir(d)?;
    }
    // overlayfs lists the top layer first.
    let lower: Vec<&str> = layers.iter().rev().map(String::as_str).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        dirs.upper.display(),
        dirs.work.display()
    );
    let root = &dirs.merged;
    // No device node in the root or /dev opens: the container's devices are the six
    // bind-mounted below (there is no device controller on cgroup v2 to stop a node
    // made of the host's disk).
    let nodev = Flags { nodev: true, ..f() };
    sys.mount("overlay", root, "overlay", nodev, &data)?;
    let quiet = Flags {
        nosuid: true,
        nodev: true,
        noexec: true,
        ..f()
    };
    sys.mkdir(&root.join("proc"))?;
    sys.mount("proc", &root.join("proc"), "proc", quiet, "")?;
    sys.mkdir(&root.join("dev"))?;
    sys.mount(
        "tmpfs",
        &root.join("dev"),
        "tmpfs",
        Flags {
            nosuid: true,
            noexec: true,
            nodev: true,
            ..f()
        },
        "mode=755,size=65536k",
    )?;
    for d in DEVICES {
        let target = root.join("dev").join(d);
        sys.touch(&target)?;
        sys.mount(
            &format!("/dev/{d}"),
            &target,
            "",
            Flags {
                bind: true,
                nosuid: true,
                noexec: true,
                ..f()
            },
            "",
        )?;
    }
    sys.mkdir(&root.join("dev/pts"))?;
    sys.mount(
        "devpts",
        &root.join("dev/pts"),
        "devpts",
        Flags {
            nosuid: true,
            noexec: true,
            ..f()
        },
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    sys.symlink("pts/ptmx", &root.join("dev/ptmx"))?;
    sys.mkdir(&root.join("dev/shm"))?;
    sys.mount(
        "shm",
        &root.join("dev/shm"),
        "tmpfs",
        quiet,
        "mode=1777,size=65536k",
    )?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        sys.symlink(target, &root.join("dev").join(name))?;
    }
    sys.mkdir(&root.join("sys"))?;
    sys.mount(
        "sysfs",
        &root.join("sys"),
        "sysfs",
        Flags {
            rdonly: true,
            ..quiet
        },
        "",
    )?;
    sys.sethostname(hostname)?;
    sys.chdir(root)?;
    sys.pivot_here()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records every call; fails the call named in `fail_at` (if any).
    #[derive(Debug, Default)]
    pub struct Recording {
        pub calls: Vec<String>,
        pub fail_at: Option<String>,
    }

    impl Recording {
        fn note(&mut self, call: String) -> std::io::Result<()> {
            let fail = self
                .fail_at
                .as_ref()
                .is_some_and(|f| call.starts_with(f.as_str()));
            self.calls.push(call);
            if fail {
                Err(std::io::Error::other("refused by the test"))
            } else {
                Ok(())
            }
        }
    }

    impl Sys for Recording {
        fn mount(&mut self, s: &str, t: &Path, fs: &str, f: Flags, d: &str) -> std::io::Result<()> {
            self.note(format!("mount {s} {} {fs} {f:?} {d}", t.display()))
        }
        fn mkdir(&mut self, p: &Path) -> std::io::Result<()> {
            self.note(format!("mkdir {}", p.display()))
        }
        fn touch(&mut self, p: &Path) -> std::io::Result<()> {
            self.note(format!("touch {}", p.display()))
        }
        fn symlink(&mut self, t: &str, l: &Path) -> std::io::Result<()> {
            self.note(format!("symlink {t} {}", l.display()))
        }
        fn chdir(&mut self, p: &Path) -> std::io::Result<()> {
            self.note(format!("chdir {}", p.display()))
        }
        fn pivot_here(&mut self) -> std::io::Result<()> {
            self.note("pivot".into())
        }
        fn sethostname(&mut self, n: &str) -> std::io::Result<()> {
            self.note(format!("hostname {n}"))
        }
    }

    fn run(fail_at: Option<&str>) -> (Recording, std::io::Result<()>) {
        let mut r = Recording {
            fail_at: fail_at.map(str::to_owned),
            ..Recording::default()
        };
        let layers = vec!["/l/bottom".to_owned(), "/l/top".to_owned()];
        let res = enter(&mut r, &layers, &Dirs::under(Path::new("/c/x")), "web-0");
        (r, res)
    }

    #[test]
    fn the_root_is_an_overlay_of_the_layers_top_first_with_proc_dev_and_sys() {
        let (r, res) = run(None);
        res.unwrap();
        let pos = |needle: &str| {
            r.calls
                .iter()
                .position(|c| c.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in {:#?}", r.calls))
        };
        assert!(r.calls[0].starts_with("mount  / ") && r.calls[0].contains("rprivate: true"));
        let overlay = &r.calls[pos("overlay /c/x/rootfs overlay")];
        assert!(
            overlay.contains("lowerdir=/l/top:/l/bottom,upperdir=/c/x/upper,workdir=/c/x/work"),
            "{overlay}"
        );
        assert!(pos("proc /c/x/rootfs/proc proc") > pos("overlay /c/x/rootfs"));
        assert!(r.calls[pos("sysfs /c/x/rootfs/sys")].contains("rdonly: true"));
        assert!(
            r.calls
                .iter()
                .any(|c| c.starts_with("mount /dev/null /c/x/rootfs/dev/null"))
        );
        assert!(
            !r.calls
                .iter()
                .any(|c| c.contains("/dev/sda") || c.contains("/dev/mem"))
        );
        assert!(pos("hostname web-0") < pos("pivot"));
        assert_eq!(r.calls.last().map(String::as_str), Some("pivot"));
    }

    #[test]
    fn a_failing_step_stops_the_setup_before_the_pivot() {
        let (r, res) = run(Some("mount sysfs"));
        assert!(res.is_err());
        assert!(!r.calls.iter().any(|c| c == "pivot"), "{:#?}", r.calls);
    }
}
