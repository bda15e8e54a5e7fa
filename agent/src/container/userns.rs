//! A container's user namespace: its ids 0..65535 are a range of unprivileged host ids
//! taken from the worker's subordinate range, so that its root is nobody on the host.
//!
//! The ranges are slots of a host-wide pool (default: systemd's container range from
//! 524288, 65536 ids a slot). Every agent on the machine (a test bed runs several)
//! takes slots under one lock, `/run/grove/userns.lock`; a taken slot is a file
//! `/run/grove/userns/<slot>` naming the marker file the container keeps in its own
//! directory (`ids`). A slot whose marker is gone (its container was removed while its
//! agent was killed) is free again; `/run` empties at boot, when no container runs.
//!
//! The namespace itself is made before the container: a short-lived helper process
//! unshares it, the caller writes its id maps, the helper (then root inside it) sets
//! the namespace's own `user.max_user_namespaces` to 0 so that nothing inside can make
//! another, and the caller keeps a handle to it. The container's process joins it
//! last, after its mounts are made (see `launch.rs`), so every other namespace of the
//! container stays owned by the host: inside, root can mount nothing, change no
//! network setting and set no host name.

use minicbor::{Decode, Encode};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Where slots are recorded.
pub const RUN_DIR: &str = "/run/grove";

/// The host ids containers get their ranges from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct IdPool {
    /// The first host id of the pool.
    #[n(0)]
    pub base: u32,
    /// Ids per container.
    #[n(1)]
    pub size: u32,
    /// How many containers' ranges the pool holds.
    #[n(2)]
    pub slots: u32,
}

impl Default for IdPool {
    /// systemd's container range (0x80000–0x6FFFFFFF), 65536 ids a container.
    fn default() -> Self {
        Self {
            base: 524_288,
            size: 65_536,
            slots: (0x7000_0000 - 524_288) / 65_536,
        }
    }
}

/// Why a user namespace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    /// The pool is not usable.
    #[error("user namespace id pool: {0}")]
    Pool(String),
    /// Every slot is taken.
    #[error("no free range of {size} ids is left in the pool of {slots} from host id {base}")]
    Full {
        /// The pool's first id.
        base: u32,
        /// Ids per container.
        size: u32,
        /// Slots in the pool.
        slots: u32,
    },
    /// A file or lock of the pool.
    #[error("{path}: {source}")]
    File {
        /// Which.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Making the namespace.
    #[error("making the user namespace: {0}")]
    Make(String),
}

impl IdPool {
    /// Check the pool's figures (flags may set them).
    pub fn check(&self) -> Result<(), UsernsError> {
        let end = u64::from(self.base) + u64::from(self.size) * u64::from(self.slots);
        if self.base == 0 {
            return Err(UsernsError::Pool(
                "the pool may not start at host id 0 (root)".into(),
            ));
        }
        if self.size < 65_536 {
            return Err(UsernsError::Pool(format!(
                "{} ids a container: at least 65536 (images use ids up to 65534)",
                self.size
            )));
        }
        if self.slots == 0 || end > u64::from(u32::MAX) {
            return Err(UsernsError::Pool(format!(
                "{} slots of {} from {} do not fit in 32-bit ids",
                self.slots, self.size, self.base
            )));
        }
        Ok(())
    }

    /// The first host id of slot `slot`.
    pub fn first(&self, slot: u32) -> u32 {
        self.base + slot * self.size
    }
}

/// The lowest slot not in `taken`, of `slots`.
pub fn choose(taken: &BTreeSet<u32>, slots: u32) -> Option<u32> {
    (0..slots).find(|s| !taken.contains(s))
}

/// A slot held by one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The slot.
    pub slot: u32,
    /// The host id of the container's id 0.
    pub first: u32,
    /// How many ids.
    pub count: u32,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> UsernsError + '_ {
    move |source| UsernsError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// The pool's lock in `dir`, held until dropped.
fn lock(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, UsernsError> {
    std::fs::create_dir_all(dir.join("userns")).map_err(file_err(dir))?;
    let path = dir.join("userns.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(file_err(&path))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| file_err(&path)(e.into()))
}

/// Whether the slot recorded in `entry` is still held: its marker names it.
fn held(entry: &Path, slot: u32) -> bool {
    let Ok(marker) = std::fs::read_to_string(entry) else {
        return false;
    };
    std::fs::read_to_string(marker.trim()).is_ok_and(|s| s.trim() == slot.to_string())
}

/// Take a free slot of `pool` for the container whose marker file is `marker` (written
/// here, under the lock, with the slot's number).
pub fn take(pool: &IdPool, marker: &Path) -> Result<Lease, UsernsError> {
    take_in(Path::new(RUN_DIR), pool, marker)
}

/// [`take`] with the records in `run` instead of [`RUN_DIR`].
pub fn take_in(run: &Path, pool: &IdPool, marker: &Path) -> Result<Lease, UsernsError> {
    pool.check()?;
    let _lock = lock(run)?;
    let dir = run.join("userns");
    let mut taken = BTreeSet::new();
    for e in std::fs::read_dir(&dir).map_err(file_err(&dir))?.flatten() {
        let Some(slot) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if held(&e.path(), slot) {
            taken.insert(slot);
        } else {
            // Its container is gone: the slot is free again.
            let _ = std::fs::remove_file(e.path());
        }
    }
    let slot = choose(&taken, pool.slots).ok_or(UsernsError::Full {
        base: pool.base,
        size: pool.size,
        slots: pool.slots,
    })?;
    grove_proto::util::replace_private(marker, slot.to_string().as_bytes())
        .map_err(|e| file_err(marker)(std::io::Error::other(e)))?;
    let entry = dir.join(slot.to_string());
    let marker = std::fs::canonicalize(marker).map_err(file_err(marker))?;
    std::fs::write(&entry, marker.as_os_str().as_encoded_bytes()).map_err(file_err(&entry))?;
    Ok(Lease {
        slot,
        first: pool.first(slot),
        count: pool.size,
    })
}

/// Give back the slot recorded in `marker` (a removed container's).
pub fn give_back(marker: &Path) {
    give_back_in(Path::new(RUN_DIR), marker);
}

/// [`give_back`] with the records in `run`.
pub fn give_back_in(run: &Path, marker: &Path) {
    let Ok(slot) = std::fs::read_to_string(marker) else {
        return;
    };
    let Ok(_lock) = lock(run) else { return };
    let entry = run.join("userns").join(slot.trim());
    if held(&entry, slot.trim().parse().unwrap_or(u32::MAX)) {
        let _ = std::fs::remove_file(&entry);
    }
    let _ = std::fs::remove_file(marker);
}

/// Make a user namespace mapping its ids 0..count to host ids first..first+count, in
/// which no further user namespace can be made; returns a handle to it. The caller
/// must be single-threaded (it forks).
pub fn make(first: u32, count: u32) -> Result<OwnedFd, UsernsError> {
    use nix::unistd::{ForkResult, fork};
    let fail = |what: &str, e: &dyn std::fmt::Display| UsernsError::Make(format!("{what}: {e}"));
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail("pipe", &e))?;
    let (go_r, go_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail("pipe", &e))?;
    // SAFETY: the caller is single-threaded; the child makes system calls only and
    // leaves with _exit.
    match unsafe { fork() }.map_err(|e| fail("fork", &e))? {
        ForkResult::Child => {
            drop(ready_r);
            drop(go_w);
            let code = helper(ready_w, go_r);
            // SAFETY: _exit is always safe to call.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(go_r);
            let r = parent_side(child.as_raw(), first, count, ready_r, go_w);
            let status = nix::sys::wait::waitpid(child, None);
            let ns = r?;
            match status {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(ns),
                other => Err(UsernsError::Make(format!(
                    "the helper could not forbid nested user namespaces ({other:?})"
                ))),
            }
        }
    }
}

/// The helper: unshare, say so, wait for the maps, become root inside and forbid
/// nested namespaces.
fn helper(ready: OwnedFd, go: OwnedFd) -> i32 {
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_err() {
        return 3;
    }
    let mut w = std::fs::File::from(ready);
    if w.write_all(b"u").is_err() {
        return 4;
    }
    let mut b = [0u8; 1];
    if std::fs::File::from(go).read(&mut b).ok() != Some(1) {
        return 5;
    }
    let root_g = nix::unistd::Gid::from_raw(0);
    let root_u = nix::unistd::Uid::from_raw(0);
    if nix::unistd::setresgid(root_g, root_g, root_g).is_err()
        || nix::unistd::setresuid(root_u, root_u, root_u).is_err()
    {
        return 6;
    }
    match std::fs::write("/proc/sys/user/max_user_namespaces", b"0") {
        Ok(()) => 0,
        Err(_) => 7,
    }
}

fn parent_side(
    child: i32,
    first: u32,
    count: u32,
    ready: OwnedFd,
    go: OwnedFd,
) -> Result<OwnedFd, UsernsError> {
    let mut b = [0u8; 1];
    if std::fs::File::from(ready).read(&mut b).ok() != Some(1) {
        return Err(UsernsError::Make(
            "the helper could not unshare a user namespace".into(),
        ));
    }
    let map = format!("0 {first} {count}\n");
    for f in ["uid_map", "gid_map"] {
        let p = PathBuf::from(format!("/proc/{child}/{f}"));
        std::fs::write(&p, &map).map_err(file_err(&p))?;
    }
    let p = PathBuf::from(format!("/proc/{child}/ns/user"));
    let ns: OwnedFd = std::fs::File::open(&p).map_err(file_err(&p))?.into();
    let mut go = std::fs::File::from(go);
    go.write_all(b"g")
        .map_err(|e| UsernsError::Make(format!("the helper: {e}")))?;
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_free_slot_is_chosen_and_a_full_pool_says_so() {
        let taken: BTreeSet<u32> = [0, 1, 3].into();
        assert_eq!(choose(&taken, 5), Some(2));
        assert_eq!(choose(&[0, 1, 2].into(), 3), None);
        let pool = IdPool::default();
        assert_eq!(pool.first(0), 524_288);
        assert_eq!(pool.first(2), 524_288 + 2 * 65_536);
        pool.check().unwrap();
        assert!(IdPool { base: 0, ..pool }.check().is_err());
        assert!(IdPool { size: 1000, ..pool }.check().is_err());
        assert!(
            IdPool {
                slots: 100_000,
                ..pool
            }
            .check()
            .is_err()
        );
    }

    #[test]
    fn slots_are_taken_once_across_agents_and_freed_with_their_marker() {
        let d = std::env::temp_dir().join(format!("grove-userns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("a")).unwrap();
        std::fs::create_dir_all(d.join("b")).unwrap();
        let run = d.join("run");
        let pool = IdPool {
            slots: 2,
            ..IdPool::default()
        };
        let a = take_in(&run, &pool, &d.join("a/ids")).unwrap();
        let b = take_in(&run, &pool, &d.join("b/ids")).unwrap();
        assert_ne!(a.slot, b.slot);
        assert_eq!(a.first, pool.first(a.slot));
        let full = take_in(&run, &pool, &d.join("c-ids"));
        assert!(matches!(full, Err(UsernsError::Full { .. })), "{full:?}");
        // A container removed with its agent killed: its marker is gone, its slot free.
        std::fs::remove_dir_all(d.join("b")).unwrap();
        let c = take_in(&run, &pool, &d.join("c-ids")).unwrap();
        assert_eq!(c.slot, b.slot);
        give_back_in(&run, &d.join("a/ids"));
        assert!(!d.join("a/ids").exists());
        let again = take_in(&run, &pool, &d.join("a/ids")).unwrap();
        assert_eq!(again.slot, a.slot);
        let _ = std::fs::remove_dir_all(&d);
    }
}
