//! Containers without a container daemon: OCI image layers under overlayfs, Linux
//! namespaces, cgroups, reduced capabilities.

pub mod cgroup;
pub mod init;
pub mod launch;
pub mod mountapi;
pub mod quota;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod userns;

pub use launch::{LaunchError, Paths, launch};

/// The file in a container's directory that records its slot of user namespace ids.
pub const IDS_FILE: &str = "ids";
pub use spec::{LaunchSpec, Limits};

/// The file that holds a container's network namespace (a bind mount of its nsfs
/// inode), made before the container so the overlay can wire it first.
pub fn netns_path(containers: &std::path::Path, id: &str) -> std::path::PathBuf {
    containers.join(id).join("netns")
}

/// Make and hold a new network namespace at `path` (as `ip netns add` does). The
/// caller must be single-threaded (it forks).
pub fn hold_netns(path: &std::path::Path) -> Result<(), String> {
    use nix::sys::wait::{WaitStatus, waitpid};
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: the caller is single-threaded; the child only makes system calls and
    // leaves with _exit.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
                && launch::netns_defaults().is_ok()
                && nix::mount::mount(
                    Some("/proc/self/ns/net"),
                    path,
                    None::<&str>,
                    nix::mount::MsFlags::MS_BIND,
                    None::<&str>,
                )
                .is_ok();
            // SAFETY: _exit is always safe to call.
            unsafe { libc::_exit(i32::from(!ok)) }
        }
        nix::unistd::ForkResult::Parent { child } => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            other => {
                let _ = std::fs::remove_file(path);
                Err(format!(
                    "cannot make a network namespace at {}: {other:?}",
                    path.display()
                ))
            }
        },
    }
}

/// Let go of a held network namespace (it ends with its last user).
pub fn release_netns(path: &std::path::Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

/// Undo what a container left on the host: its cgroup (killing what still runs in it),
/// its held network namespace and its directory (upper layer, log, exit record).
/// Mounts of its root lived in its own mount namespace and went with its last process.
pub fn remove(containers: &std::path::Path, id: &str) -> Result<(), String> {
    let g = cgroup::Group::load(id);
    let r = g.destroy();
    release_netns(&netns_path(containers, id));
    let dir = containers.join(id);
    userns::give_back(&dir.join(IDS_FILE));
    quota::remove(&launch::bounded_fs(containers), id);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    r
}
