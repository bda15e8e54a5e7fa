//! Containers without a container daemon: OCI image layers under overlayfs, Linux
//! namespaces, cgroups, reduced capabilities.

pub mod cgroup;
pub mod launch;
pub mod rootfs;
pub mod spec;

pub use launch::{Paths, launch};
pub use spec::{LaunchSpec, Limits};

/// Undo what a container left on the host: its cgroup (killing what still runs in it)
/// and its directory (upper layer, log, exit record). Mounts lived in its own mount
/// namespace and went with its last process.
pub fn remove(containers: &std::path::Path, id: &str) -> Result<(), String> {
    let g = cgroup::Group::load(id);
    let r = g.destroy();
    let dir = containers.join(id);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    r
}
