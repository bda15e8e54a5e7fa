//! Bounded writable layers: one btrfs file system per worker, in an image file of the
//! state directory on a loop device, made once (`mkfs.btrfs`) and mounted at
//! `<state>/upper`; each container's upper and work directories live in a subvolume
//! of its own whose quota group is limited to the container's storage, so a container
//! that fills its layer gets EDQUOT and every other one, and the worker, keep their
//! disk.
//!
//! Why btrfs and not ext4 or xfs project quotas: those need the kernel's quota support
//! (CONFIG_QUOTA, CONFIG_XFS_QUOTA), which some kernels leave out (the machines Grove
//! is built on here among them); btrfs quota groups come with every btrfs. A worker
//! without btrfs (no kernel module, no `mkfs.btrfs`) says so at start and advertises
//! the storage limit as one it cannot enforce.
//!
//! The per-container steps are three ioctls (create the subvolume, look up its id,
//! limit its quota group) and one to delete it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The mount point under a state directory.
pub fn mount_point(state: &Path) -> PathBuf {
    state.join("upper")
}

fn image(state: &Path) -> PathBuf {
    state.join("upper.img")
}

/// Why bounded layers are not available.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// A step of making or mounting the file system.
    #[error("{step}: {why}")]
    Setup {
        /// Which.
        step: &'static str,
        /// Why.
        why: String,
    },
    /// An ioctl on it.
    #[error("{what} {path}: {source}")]
    Ioctl {
        /// What for.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn setup(step: &'static str, why: impl std::fmt::Display) -> QuotaError {
    QuotaError::Setup {
        step,
        why: why.to_string(),
    }
}

/// Whether the file system is mounted at `point`.
fn mounted(point: &Path) -> bool {
    let p = point.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(4) == Some(p.as_ref()) && l.contains(" - btrfs "))
    })
}

fn run(step: &'static str, cmd: &mut Command) -> Result<(), QuotaError> {
    let out = cmd.output().map_err(|e| setup(step, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(setup(
            step,
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// Make (once) and mount (if it is not) the file system of bounded layers under
/// `state`, `size_mib` large (a sparse file: it takes what is written); returns the
/// mount point. Idempotent.
pub fn ensure(state: &Path, size_mib: u64) -> Result<PathBuf, QuotaError> {
    let point = mount_point(state);
    if mounted(&point) {
        return Ok(point);
    }
    let img = image(state);
    std::fs::create_dir_all(&point).map_err(|e| setup("mount point", e))?;
    if !img.exists() {
        let tmp = img.with_extension("tmp");
        let f = std::fs::File::create(&tmp).map_err(|e| setup("image file", e))?;
        f.set_len(size_mib << 20)
            .map_err(|e| setup("image file", e))?;
        drop(f);
        run(
            "mkfs.btrfs (install btrfs-progs)",
            Command::new("mkfs.btrfs").arg("-q").arg("-f").arg(&tmp),
        )?;
        std::fs::rename(&tmp, &img).map_err(|e| setup("image file", e))?;
    }
    run(
        "mount the layers' file system (a kernel with btrfs and loop devices)",
        Command::new("mount")
            .args(["-t", "btrfs", "-o", "loop,nodev,nosuid"])
            .arg(&img)
            .arg(&point),
    )?;
    run(
        "enable btrfs quota groups",
        Command::new("btrfs").args(["quota", "enable"]).arg(&point),
    )?;
    Ok(point)
}

/// Unmount the file system under `state` (its loop device goes with it); the image
/// stays for the next start unless the state directory is removed.
pub fn release(state: &Path) {
    let point = mount_point(state);
    if mounted(&point) {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

#[repr(C)]
struct InoLookup {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

#[repr(C)]
struct QgroupLimit {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

// _IOW(0x94, 14, vol_args), _IOW(0x94, 15, vol_args), _IOWR(0x94, 18, ino_lookup),
// _IOR(0x94, 43, qgroup_limit).
const SUBVOL_CREATE: libc::c_ulong = 0x5000_940E;
const SNAP_DESTROY: libc::c_ulong = 0x5000_940F;
const INO_LOOKUP: libc::c_ulong = 0xD000_9412;
const QGROUP_LIMIT: libc::c_ulong = 0x8030_942B;
const LIMIT_MAX_RFER: u64 = 1;
const FIRST_FREE_OBJECTID: u64 = 256;

fn vol_args(name: &str) -> io::Result<VolArgs> {
    let c = CString::new(name).map_err(|_| io::Error::other("a NUL byte"))?;
    let bytes = c.as_bytes_with_nul();
    if bytes.len() > 4088 {
        return Err(io::Error::other("name too long"));
    }
    let mut a = VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    a.name[..bytes.len()].copy_from_slice(bytes);
    Ok(a)
}

fn ioctl<T>(fd: BorrowedFd<'_>, req: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is the structure this request takes, alive and writable for the
    // call; `fd` is a valid descriptor.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, std::ptr::from_mut(arg)) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Make container `id`'s subvolume under `fs`, its quota group limited to `bytes`;
/// returns its directory (for the upper and work directories).
pub fn bounded_dir(fs: &Path, id: &str, bytes: u64) -> Result<PathBuf, QuotaError> {
    let at = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| QuotaError::Ioctl { what, path, source }
    };
    let dir = fs.join(id);
    if !dir.exists() {
        let parent = std::fs::File::open(fs).map_err(at("open", fs))?;
        let mut a = vol_args(id).map_err(at("name", &dir))?;
        ioctl(std::os::fd::AsFd::as_fd(&parent), SUBVOL_CREATE, &mut a)
            .map_err(at("create the subvolume", &dir))?;
    }
    let sub = std::fs::File::open(&dir).map_err(at("open", &dir))?;
    let mut look = InoLookup {
        treeid: 0,
        objectid: FIRST_FREE_OBJECTID,
        name: [0; 4080],
    };
    ioctl(std::os::fd::AsFd::as_fd(&sub), INO_LOOKUP, &mut look)
        .map_err(at("look up the subvolume", &dir))?;
    let mut limit = QgroupLimit {
        qgroupid: look.treeid,
        flags: LIMIT_MAX_RFER,
        max_rfer: bytes,
        max_excl: 0,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    ioctl(std::os::fd::AsFd::as_fd(&sub), QGROUP_LIMIT, &mut limit)
        .map_err(at("limit the quota group of", &dir))?;
    Ok(dir)
}

/// Remove container `id`'s subvolume under `fs`, if there is one.
pub fn remove(fs: &Path, id: &str) {
    let dir = fs.join(id);
    if !dir.exists() {
        return;
    }
    if let (Ok(parent), Ok(mut a)) = (std::fs::File::open(fs), vol_args(id)) {
        if ioctl(std::os::fd::AsFd::as_fd(&parent), SNAP_DESTROY, &mut a).is_ok() {
            return;
        }
    }
    // Not a subvolume (made while bounded layers were off): a plain directory.
    let _ = std::fs::remove_dir_all(&dir);
}
