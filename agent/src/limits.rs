//! What this worker gives its workloads and holds them to, from its flags: the
//! defaults of a service that sets no memory, CPU or storage (advertised at
//! registration, so the cluster counts them when placing), the limits it cannot
//! enforce (a kernel without a controller, no file system of bounded layers), the host
//! ports port mappings may use, the pool of user namespace ids, and where an SLA's
//! images may come from.

use crate::container::LaunchSpec;
use crate::container::userns::IdPool;
use crate::defence::{self, Defence};
use crate::image::{Reference, RegistryConfig};
use grove_proto::msg::{InstanceSpec, WorkerLimits};
use std::net::IpAddr;
use std::path::PathBuf;

/// Grove's own ports, never a host port of a workload.
pub const OWN_PORTS: [u16; 3] = grove_proto::ports::GROVE_PORTS;

/// A worker's containment settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Containment {
    /// Where containers' user namespace ids come from.
    pub ids: IdPool,
    /// Memory of a service that sets none, MiB (0: unbounded).
    pub default_memory_mib: u32,
    /// CPU of a service that sets none, thousandths (0: unbounded).
    pub default_millicpus: u32,
    /// Writable layer of a service that sets no `storage`, MiB (0: unbounded).
    pub default_storage_mib: u32,
    /// Size of the file system holding every bounded writable layer, MiB.
    pub storage_pool_mib: u64,
    /// Host ports port mappings may use (inclusive).
    pub host_ports: (u16, u16),
    /// Directories `oci:` and `oci-archive:` references of an SLA may read.
    pub oci_dirs: Vec<PathBuf>,
    /// Registries an SLA may name (empty: any but loopback and link-local hosts).
    pub allowed_registries: Vec<String>,
    /// Largest size of the image store, MiB (0: unbounded).
    pub image_store_mib: u64,
}

impl Default for Containment {
    fn default() -> Self {
        Self {
            ids: IdPool::default(),
            default_memory_mib: 512,
            default_millicpus: 1000,
            default_storage_mib: 1024,
            storage_pool_mib: 16 << 10,
            host_ports: (1024, 65535),
            oci_dirs: Vec::new(),
            allowed_registries: Vec::new(),
            image_store_mib: 8 << 10,
        }
    }
}

/// `FIRST-LAST` as a port range.
pub fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?}: a host port range is FIRST-LAST, e.g. 1024-65535");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

impl Containment {
    /// What the worker tells its cluster, with `unenforced` the limits it cannot hold.
    pub fn advertise(&self, unenforced: &[&str]) -> WorkerLimits {
        let defaults = defence::on(Defence::Limits);
        // Without the defence (test builds only) every port is a worker's to map.
        let (first, last, reserved) = if defence::on(Defence::HostPorts) {
            (self.host_ports.0, self.host_ports.1, OWN_PORTS.to_vec())
        } else {
            (1, u16::MAX, Vec::new())
        };
        WorkerLimits {
            default_memory_mib: if defaults { self.default_memory_mib } else { 0 },
            default_millicpus: if defaults { self.default_millicpus } else { 0 },
            default_storage_mib: if defaults {
                self.default_storage_mib
            } else {
                0
            },
            unenforced: unenforced.iter().map(|u| (*u).to_owned()).collect(),
            ports_first: first,
            ports_last: last,
            ports_reserved: reserved,
        }
    }

    /// The limits container `launch` of instance `spec` runs under here: the SLA's, or
    /// this worker's defaults where it sets none; a user namespace from this worker's
    /// pool.
    pub fn apply(&self, launch: &mut LaunchSpec, spec: &InstanceSpec) {
        launch.userns = Some(self.ids);
        if !defence::on(Defence::Pids) {
            launch.limits.pids = 0;
        }
        if !defence::on(Defence::Limits) {
            return;
        }
        if spec.memory_mib == 0 {
            launch.limits.memory_bytes = u64::from(self.default_memory_mib) << 20;
        }
        if spec.millicpus == 0 {
            launch.limits.millicpus = self.default_millicpus;
        }
        if spec.storage_mib.unwrap_or(0) == 0 {
            launch.storage_bytes = u64::from(self.default_storage_mib) << 20;
        }
    }

    /// Why instance `spec`'s port mappings may not be made here, if they may not.
    pub fn refuses_ports(&self, spec: &InstanceSpec) -> Option<String> {
        if !defence::on(Defence::HostPorts) {
            return None;
        }
        let ports = grove_proto::ports::parse_ports(spec.ports.as_deref()?).ok()?;
        let limits = self.advertise(&[]);
        ports.iter().find_map(|p| limits.refuses_port(p.host))
    }

    /// Why an SLA may not make this worker pull `reference`, if it may not: an OCI
    /// layout outside the directories the worker lists, a registry not allowed, or a
    /// loopback or link-local registry host that is not one of its mirrors (an SLA must
    /// not make the worker fetch from its own services). Resolves host names: call it
    /// off the control loop (the puller thread does).
    pub fn refuses_image(&self, reference: &str, registries: &RegistryConfig) -> Option<String> {
        if !defence::on(Defence::ImageSources) {
            return None;
        }
        let parsed: Reference = reference.parse().ok()?;
        match parsed {
            Reference::Layout { path, .. } | Reference::Archive { path, .. } => {
                let real = std::fs::canonicalize(&path).unwrap_or(path.clone());
                let listed = self
                    .oci_dirs
                    .iter()
                    .any(|d| std::fs::canonicalize(d).is_ok_and(|d| real.starts_with(&d)));
                (!listed).then(|| {
                    format!(
                        "{}: an SLA may read OCI layouts only in the directories the worker \
                         lists (--oci-dir), and {} is not in one",
                        reference,
                        path.display()
                    )
                })
            }
            Reference::Registry(r) => {
                if !self.allowed_registries.is_empty()
                    && !self.allowed_registries.contains(&r.registry)
                {
                    return Some(format!(
                        "registry {} is not one this worker allows (--allowed-registries {})",
                        r.registry,
                        self.allowed_registries.join(",")
                    ));
                }
                if registries.is_mirror_host(&r.registry) {
                    return None;
                }
                local_host(&r.registry).then(|| {
                    format!(
                        "registry {} is a loopback or link-local address of the worker itself; \
                         an SLA may not make it fetch from its own services (only a configured \
                         --registry-mirror may be there)",
                        r.registry
                    )
                })
            }
        }
    }
}

/// Whether `host[:port]` names this machine or its link: loopback, link-local,
/// unspecified, or a name resolving to one of those.
fn local_host(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = |ip: IpAddr| match ip {
        IpAddr::V4(v) => v.is_loopback() || v.is_link_local() || v.is_unspecified(),
        IpAddr::V6(v) => {
            v.is_loopback() || v.is_unspecified() || (v.segments()[0] & 0xffc0) == 0xfe80
        }
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return local(ip);
    }
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    use std::net::ToSocketAddrs;
    (host, 443)
        .to_socket_addrs()
        .is_ok_and(|mut a| a.any(|a| local(a.ip())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_and_bad_ones_named() {
        assert_eq!(parse_range("1024-65535"), Ok((1024, 65535)));
        assert_eq!(parse_range("1-80"), Ok((1, 80)));
        for bad in ["", "80", "0-10", "90-80", "a-b", "1-70000"] {
            let e = parse_range(bad).unwrap_err();
            assert!(e.contains("FIRST-LAST"), "{bad}: {e}");
        }
    }

    #[test]
    fn loopback_and_link_local_hosts_are_the_workers_own() {
        for h in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:5000",
            "169.254.77.1:5000",
            "[::1]:5000",
            "[fe80::1]:80",
            "0.0.0.0",
        ] {
            assert!(local_host(h), "{h}");
        }
        for h in ["10.31.0.1:5000", "192.0.2.7", "[2001:db8::1]:443"] {
            assert!(!local_host(h), "{h}");
        }
    }

    #[test]
    fn an_sla_may_not_name_the_workers_own_registry_or_an_unlisted_layout() {
        let c = Containment {
            oci_dirs: vec![std::env::temp_dir()],
            ..Containment::default()
        };
        let mut cfg = RegistryConfig::default();
        cfg.add_mirror("docker.io=http://127.0.0.1:5000").unwrap();
        assert!(c.refuses_image("127.0.0.1:6000/app:1", &cfg).is_some());
        assert!(c.refuses_image("localhost:5000/x", &cfg).is_some());
        assert!(
            c.refuses_image("127.0.0.1:5000/app:1", &cfg).is_none(),
            "a mirror"
        );
        assert!(c.refuses_image("docker.io/library/nginx", &cfg).is_none());
        let outside = c.refuses_image("oci:/etc:x", &cfg).unwrap();
        assert!(outside.contains("--oci-dir"), "{outside}");
        let inside = format!("oci:{}/layout:x", std::env::temp_dir().display());
        assert!(c.refuses_image(&inside, &cfg).is_none());
        let only = Containment {
            allowed_registries: vec!["registry.example".into()],
            ..Containment::default()
        };
        let e = only.refuses_image("docker.io/library/nginx", &cfg).unwrap();
        assert!(e.contains("--allowed-registries"), "{e}");
        assert!(only.refuses_image("registry.example/app:1", &cfg).is_none());
    }

    #[test]
    fn defaults_fill_what_the_sla_leaves_out_and_ports_outside_the_range_are_refused() {
        let c = Containment::default();
        let mut spec = crate::oneshot::spec("x", &[], None, None);
        let mut launch = LaunchSpec::default();
        c.apply(&mut launch, &spec);
        assert_eq!(launch.limits.memory_bytes, 512 << 20);
        assert_eq!(launch.limits.millicpus, 1000);
        assert_eq!(launch.storage_bytes, 1024 << 20);
        spec.ports = Some("22:80".into());
        assert!(c.refuses_ports(&spec).unwrap().contains("22"));
        spec.ports = Some("4789:80/udp".into());
        assert!(c.refuses_ports(&spec).unwrap().contains("own"));
        spec.ports = Some("6080:60;9080".into());
        assert_eq!(c.refuses_ports(&spec), None);
    }
}
