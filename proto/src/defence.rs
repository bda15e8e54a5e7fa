//! The defences that contain a workload, by name, so that the escape suite
//! (`tests/tests/escape.rs`) can show each of them holding on its own.
//!
//! Every tier consults these (the agent for its containers, layers and bridge; the
//! root for the host ports it refuses). In every shipped binary each defence is always
//! on: [`on`] is a constant `true`.
//! Only a build with the `defences-off` feature (which only the test crate enables,
//! and which `cross/deb.sh check` proves absent from the packages) reads
//! `GROVE_DEFENCES_OFF` (`all`, or names separated by commas) and switches those off,
//! so that the suite can run each attack with its defences off as a negative control.

/// One defence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Defence {
    /// The container's own user namespace: its root is an unprivileged host uid.
    UserNs,
    /// The seccomp allow-list.
    Seccomp,
    /// Docker's default capabilities minus NET_RAW and MKNOD.
    Caps,
    /// `no_new_privs`.
    NoNewPrivs,
    /// `/proc` and `/sys` masked and read-only where the OCI runtimes make them so.
    ProcSys,
    /// The container's own cgroup namespace, its hierarchies read-only.
    CgroupNs,
    /// No descriptor of the runtime's reaches the workload, not even while its
    /// working directory is looked up.
    Fds,
    /// The working directory resolved inside the container's root, no magic links.
    Workdir,
    /// Mount targets resolved inside the container's root.
    MountTargets,
    /// Layer entries created, replaced and removed relative to directory handles,
    /// every path resolved inside the layer.
    LayerPaths,
    /// Layer entries named with `..` and hard links to absolute paths refused; device
    /// nodes and FIFOs of a layer skipped.
    LayerEntries,
    /// The container's own PID namespace: no host process is visible to it.
    PidNs,
    /// No device node opens on the container's root (its overlay is `nodev`).
    NoDev,
    /// Per-port bridge rules: a container sends only with its own IP and MAC.
    Bridge,
    /// Host ports only in the worker's allowed range.
    HostPorts,
    /// The worker's default memory, CPU and disk limits for services that set none.
    Limits,
    /// The pids limit.
    Pids,
    /// `oci:` directories and registry hosts an SLA may name.
    ImageSources,
    /// Grove's init as the container's PID 1: it runs the runtime's own binary for as
    /// long as the container lives, so that binary stays busy (ETXTBSY) to a write
    /// from inside (CVE-2019-5736). Off, the workload is PID 1 itself.
    Init,
}

impl Defence {
    /// Every defence.
    pub const ALL: [Defence; 19] = [
        Self::UserNs,
        Self::Seccomp,
        Self::Caps,
        Self::NoNewPrivs,
        Self::ProcSys,
        Self::CgroupNs,
        Self::Fds,
        Self::Workdir,
        Self::MountTargets,
        Self::LayerPaths,
        Self::LayerEntries,
        Self::PidNs,
        Self::NoDev,
        Self::Bridge,
        Self::HostPorts,
        Self::Limits,
        Self::Pids,
        Self::ImageSources,
        Self::Init,
    ];

    /// Its name in `GROVE_DEFENCES_OFF` and in the escape suite's table.
    pub fn name(self) -> &'static str {
        match self {
            Self::UserNs => "userns",
            Self::Seccomp => "seccomp",
            Self::Caps => "caps",
            Self::NoNewPrivs => "no-new-privs",
            Self::ProcSys => "proc-sys",
            Self::CgroupNs => "cgroupns",
            Self::Fds => "fds",
            Self::Workdir => "workdir",
            Self::MountTargets => "mount-targets",
            Self::LayerPaths => "layer-paths",
            Self::LayerEntries => "layer-entries",
            Self::PidNs => "pidns",
            Self::NoDev => "nodev",
            Self::Bridge => "bridge",
            Self::HostPorts => "host-ports",
            Self::Limits => "limits",
            Self::Pids => "pids",
            Self::ImageSources => "image-sources",
            Self::Init => "init",
        }
    }

    /// The defence named `name`.
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// Whether defence `d` is on: always, unless a test build switched it off.
pub fn on(d: Defence) -> bool {
    #[cfg(feature = "defences-off")]
    {
        !switched_off().contains(&d)
    }
    #[cfg(not(feature = "defences-off"))]
    {
        let _ = d;
        true
    }
}

/// Whether every defence is on (what an agent says at start in a test build).
pub fn all_on() -> bool {
    Defence::ALL.into_iter().all(on)
}

#[cfg(feature = "defences-off")]
fn switched_off() -> &'static [Defence] {
    static OFF: std::sync::OnceLock<Vec<Defence>> = std::sync::OnceLock::new();
    OFF.get_or_init(|| {
        let v = std::env::var("GROVE_DEFENCES_OFF").unwrap_or_default();
        if v.trim() == "all" {
            return Defence::ALL.to_vec();
        }
        v.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| {
                Defence::named(n).unwrap_or_else(|| {
                    eprintln!("GROVE_DEFENCES_OFF: no defence is named {n:?}");
                    std::process::exit(2)
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defence_has_a_name_that_finds_it() {
        for d in Defence::ALL {
            assert_eq!(Defence::named(d.name()), Some(d));
        }
        assert_eq!(Defence::named("nothing"), None);
    }
}
