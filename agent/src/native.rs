//! The native runtime behind the control loop: images pulled on one puller thread,
//! containers run by the supervisor (which outlives the agent), their ends turned into
//! statuses — COMPLETED or DEAD for `one_shot` instances (with the OOM reason and the
//! log's last KiB), a restart with back-off for the others. The instance records live
//! in a file, so a restarted agent re-adopts what runs.

use crate::image::{Image, ImageStore, RegistryConfig};
use crate::limits::Containment;
use crate::net::nat::Target;
use crate::net::netlink::Kernel;
use crate::net::{Cidr, Overlay, Peer};
use crate::runtime::{Runtime, Usage};
use crate::supervisor::{self, Entry, Reply, Request};
use grove_proto::msg::{InstanceRef, InstanceSpec, InstanceState, InstanceStatus};
use minicbor::{Decode, Encode};
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod as_runtime;
mod pull;

#[cfg(test)]
use pull::within_size;
use pull::{Job, PullDone, puller};

/// The last bytes of a log that go into a status.
const LOG_TAIL: u64 = 1024;
/// Grace between SIGTERM and SIGKILL when an instance is removed, unless its SLA
/// says otherwise (`stop_grace_s`).
const STOP_GRACE_MS: u32 = 5_000;
/// Longest wait before restarting a crashed service.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long an image no instance uses stays (a redeploy finds it cached).
pub const IMAGE_KEEP: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
struct Record {
    #[n(0)]
    spec: InstanceSpec,
    #[n(1)]
    state: InstanceState,
    #[n(2)]
    restarts: u32,
    /// Its address in this worker's subnet, once wired.
    #[n(3)]
    addr: Option<u32>,
}

/// Whether a state is an end.
/// How long a looked-up service of another cluster stays without a new flow to it.
const LOOKUP_IDLE: Duration = Duration::from_secs(60);
/// A lookup that found nothing is tried again after this long if packets still ask.
const LOOKUP_RETRY: Duration = Duration::from_secs(5);

fn ended(s: InstanceState) -> bool {
    matches!(
        s,
        InstanceState::Completed | InstanceState::Dead | InstanceState::Failed
    )
}

/// The container id of an instance.
pub(crate) fn container_id(i: &InstanceRef) -> String {
    let s: String = i
        .service
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(64)
        .collect();
    format!("{s}-{}", i.instance)
}

/// The last `LOG_TAIL` bytes of a container's log.
pub fn log_tail(containers: &Path, id: &str) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(containers.join(id).join("log")) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)));
    let mut b = Vec::new();
    let _ = f.take(LOG_TAIL).read_to_end(&mut b);
    String::from_utf8_lossy(&b).into_owned()
}

/// Containers on this worker.
#[derive(Debug)]
pub struct NativeRuntime {
    dir: PathBuf,
    records: Vec<Record>,
    changes: Vec<InstanceStatus>,
    pulls: mpsc::Sender<Job>,
    pulled: mpsc::Receiver<PullDone>,
    restart_at: HashMap<InstanceRef, Instant>,
    last_check: Instant,
    cpu: (u64, u64),
    /// Per instance: CPU microseconds and when, at the last usage report.
    cpu_seen: HashMap<InstanceRef, (u64, Instant)>,
    /// Whether instances get the kernel data plane.
    wired: bool,
    /// The data plane, once the worker's subnet is known.
    overlay: Option<(Overlay<Kernel>, Cidr<Ipv4Addr>)>,
    /// This worker's underlay address.
    local: Option<Ipv4Addr>,
    /// The cluster's control address: instances may not reach it.
    cluster: Option<std::net::SocketAddr>,
    /// The service IP rules last applied.
    nat: String,
    /// The cluster's service table, as last pushed.
    services: Vec<grove_proto::msg::ServiceEntry>,
    /// This agent's name (its nftables table is named after it).
    agent: String,
    /// Services of other clusters looked up on a miss.
    interest: crate::net::interest::Interest,
    /// Destinations of the packets the table's log rules hand over.
    logged: Option<mpsc::Receiver<std::net::IpAddr>>,
    /// This worker's network coordinate, once measured.
    coord: Option<grove_proto::msg::NetCoord>,
    /// How long an unused image is kept.
    image_keep: Duration,
    /// Images no instance uses any more, since when.
    released: HashMap<String, Instant>,
    /// When to look for unused images left from before a restart.
    sweep_at: Instant,
    /// Told when a pull is done.
    wake: std::sync::Arc<tokio::sync::Notify>,
    /// What this worker gives and holds its containers to.
    containment: Containment,
    /// Limits it cannot enforce here.
    unenforced: Vec<&'static str>,
}

impl NativeRuntime {
    /// Open the runtime with its state under `dir`, starting the supervisor if none
    /// runs, and the puller thread.
    pub fn open(
        dir: &Path,
        registries: RegistryConfig,
        containment: Containment,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        crate::container::cgroup::scope_to(dir);
        let unenforced = unenforced_here(dir, &containment);
        supervisor::ensure(dir)?;
        let store =
            ImageStore::open(&dir.join("images"), registries.clone()).map_err(|e| e.to_string())?;
        let (pulls, jobs) = mpsc::channel::<Job>();
        let (done, pulled) = mpsc::channel::<PullDone>();
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let woken = wake.clone();
        let policy = containment.clone();
        std::thread::Builder::new()
            .name("puller".into())
            .spawn(move || puller(store, jobs, done, woken, policy, registries))
            .map_err(|e| e.to_string())?;
        let records: Vec<Record> = std::fs::read(dir.join("native-instances.cbor"))
            .ok()
            .and_then(|b| minicbor::decode(&b).ok())
            .unwrap_or_default();
        let rt = Self {
            dir: dir.to_path_buf(),
            records,
            changes: Vec::new(),
            pulls,
            pulled,
            restart_at: HashMap::new(),
            last_check: Instant::now() - Duration::from_secs(1),
            cpu: (0, 0),
            cpu_seen: HashMap::new(),
            wired: false,
            overlay: None,
            local: None,
            cluster: None,
            nat: String::new(),
            services: Vec::new(),
            agent: String::new(),
            interest: crate::net::interest::Interest::new(LOOKUP_IDLE, LOOKUP_RETRY),
            logged: None,
            coord: None,
            image_keep: IMAGE_KEEP,
            released: HashMap::new(),
            sweep_at: Instant::now() + IMAGE_KEEP,
            wake,
            containment,
            unenforced,
        };
        // What was on its way when the agent stopped goes on.
        for r in rt
            .records
            .iter()
            .filter(|r| r.state == InstanceState::Creating)
        {
            let _ = rt.pulls.send(Job::Pull(
                r.spec.instance.clone(),
                r.spec.image.clone(),
                rt.images_in_use(),
            ));
        }
        Ok(rt)
    }

    /// The limits this worker cannot enforce (told to the cluster at registration).
    pub fn unenforced(&self) -> &[&'static str] {
        &self.unenforced
    }

    /// The images of the instances here.
    fn images_in_use(&self) -> Vec<String> {
        self.records.iter().map(|r| r.spec.image.clone()).collect()
    }

    /// Make the service IP and port mapping rules match the last service table and
    /// this worker's RUNNING instances.
    fn refresh_nat(&mut self) {
        let Some((overlay, subnet)) = self.overlay.as_ref() else {
            return;
        };
        let services = &self.services;
        let table = crate::net::Names::of(&self.agent).nat_table();
        // This worker's own RUNNING instances' port mappings.
        let mappings: Vec<(grove_proto::ports::PortMapping, Target)> = self
            .records
            .iter()
            .filter(|r| r.state == InstanceState::Running)
            .filter_map(|r| {
                let ports = grove_proto::ports::parse_ports(r.spec.ports.as_deref()?).ok()?;
                let v4 = Ipv4Addr::from(r.addr?);
                let to = Target {
                    v4,
                    v6: overlay.address6(v4),
                };
                Some(ports.into_iter().map(move |p| (p, to)))
            })
            .flatten()
            .collect();
        let looked_up = self.interest.entries();
        let names = crate::net::Names::of(&self.agent);
        let bridge = names.bridge();
        // Every wired instance's bridge port, held to its own addresses.
        let ports: Vec<crate::net::nat::Port> =
            if crate::defence::on(crate::defence::Defence::Bridge) {
                self.records
                    .iter()
                    .filter_map(|r| {
                        let v4 = Ipv4Addr::from(r.addr?);
                        Some(crate::net::nat::Port {
                            link: names.instance(&container_id(&r.spec.instance)),
                            mac: crate::net::instance_mac(v4),
                            v4,
                            v6: overlay.address6(v4),
                        })
                    })
                    .collect()
            } else {
                Vec::new()
            };
        let rules = crate::net::nat::ruleset(&crate::net::nat::Tables {
            guard: Some(crate::net::nat::Guard {
                bridge: &bridge,
                cluster: self.cluster,
            }),
            ports: &ports,
            table: &table,
            subnet: *subnet,
            me: self.coord,
            services,
            looked_up: &looked_up,
            mappings: &mappings,
            group: self
                .logged
                .is_some()
                .then(|| crate::net::Names::of(&self.agent).log_group()),
        });
        if rules == self.nat {
            return;
        }
        match crate::net::nat::apply(&rules) {
            Ok(()) => self.nat = rules,
            Err(e) => tracing::warn!(error = %e, "service IP rules"),
        }
    }

    /// Give instances the kernel data plane (a bridge, a veth pair each) once the
    /// worker has joined.
    pub fn wired(mut self, on: bool) -> Self {
        self.wired = on;
        self
    }

    /// Keep an image no instance uses this long (zero: remove it at once).
    pub fn image_keep(mut self, keep: Duration) -> Self {
        self.image_keep = keep;
        self.sweep_at = Instant::now() + keep;
        self
    }

    /// Remove the images no instance used for the keep time (after the pulls queued
    /// before); now and then also those unused since before a restart.
    fn collect_images(&mut self) {
        let now = Instant::now();
        let keep_for = self.image_keep;
        let expired = self
            .released
            .values()
            .any(|t| now.duration_since(*t) >= keep_for);
        if !expired && now < self.sweep_at {
            return;
        }
        self.released
            .retain(|_, t| now.duration_since(*t) < keep_for);
        let mut keep: Vec<String> = self.records.iter().map(|r| r.spec.image.clone()).collect();
        keep.extend(self.released.keys().cloned());
        let _ = self.pulls.send(Job::Collect(keep));
        self.sweep_at = now + keep_for.max(Duration::from_secs(60));
    }

    /// Keep a looked-up service of another cluster this long without a new flow.
    pub fn lookup_idle(mut self, idle: Duration) -> Self {
        self.interest = crate::net::interest::Interest::new(idle, LOOKUP_RETRY);
        self
    }

    fn containers(&self) -> PathBuf {
        self.dir.join("containers")
    }

    /// A free host address of the subnet for `who` (kept across restarts).
    fn address_for(&mut self, who: &InstanceRef, subnet: Cidr<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(a) = self
            .records
            .iter()
            .find(|r| r.spec.instance == *who)
            .and_then(|r| r.addr)
        {
            return Some(Ipv4Addr::from(a));
        }
        let base = u32::from(subnet.addr);
        let hosts = (1u32 << (32 - u32::from(subnet.len))).saturating_sub(2);
        let used: Vec<u32> = self.records.iter().filter_map(|r| r.addr).collect();
        // .1 is the bridge's.
        let free = (2..=hosts).map(|h| base + h).find(|a| !used.contains(a))?;
        if let Some(r) = self.records.iter_mut().find(|r| r.spec.instance == *who) {
            r.addr = Some(free);
        }
        Some(Ipv4Addr::from(free))
    }

    fn detach(&mut self, who: &InstanceRef) {
        if let Some((o, _)) = self.overlay.as_mut() {
            if let Err(e) = o.detach(&container_id(who)) {
                tracing::warn!(instance = %container_id(who), error = %e, "removing its link");
            }
        }
    }

    fn save(&self) {
        let path = self.dir.join("native-instances.cbor");
        let tmp = path.with_extension("tmp");
        if let Ok(b) = minicbor::to_vec(&self.records) {
            if std::fs::write(&tmp, b)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .is_err()
            {
                tracing::warn!(file = %path.display(), "cannot save the instance records");
            }
        }
    }

    fn set(&mut self, who: &InstanceRef, state: InstanceState, detail: Option<String>) {
        if let Some(r) = self.records.iter_mut().find(|r| r.spec.instance == *who) {
            r.state = state;
            self.changes.push(InstanceStatus {
                instance: who.clone(),
                state,
                detail,
                ip: r.spec.ip,
                worker: None,
                addr: r.addr,
                addr6: None,
            });
        }
        self.save();
    }

    fn start(&mut self, who: &InstanceRef, image: &Image) {
        let Some(spec) = self
            .records
            .iter()
            .find(|r| r.spec.instance == *who)
            .map(|r| r.spec.clone())
        else {
            return;
        };
        let id = container_id(who);
        let mut launch = match crate::container::LaunchSpec::resolve(&id, &spec, image) {
            Ok(l) => l,
            Err(e) => return self.set(who, InstanceState::Failed, Some(e.to_string())),
        };
        if let Some(why) = self.containment.refuses_ports(&spec) {
            return self.set(who, InstanceState::Failed, Some(why));
        }
        self.containment.apply(&mut launch, &spec);
        if self.unenforced.contains(&"storage") {
            // A limit the SLA asks for is never dropped silently; the default is.
            if spec.storage_mib.unwrap_or(0) > 0 {
                return self.set(
                    who,
                    InstanceState::Failed,
                    Some("this worker cannot bound a writable layer (no btrfs)".into()),
                );
            }
            launch.storage_bytes = 0;
        }
        // Its network namespace comes first, so it can be wired before anything runs.
        match supervisor::call(&self.dir, &Request::Prepare(id.clone())) {
            Ok(Reply::Prepared(path)) => {
                // Wired before anything runs in it.
                if let Some(subnet) = self.overlay.as_ref().map(|(_, s)| *s) {
                    let Some(addr) = self.address_for(who, subnet) else {
                        return self.set(
                            who,
                            InstanceState::Failed,
                            Some("no free address in this worker's subnet".into()),
                        );
                    };
                    self.save();
                    if let Some((o, _)) = self.overlay.as_mut() {
                        let addr6 = o.address6(addr);
                        if let Err(e) = o.attach(&id, Path::new(&path), addr, addr6) {
                            return self.set(
                                who,
                                InstanceState::Failed,
                                Some(format!("network: {e}")),
                            );
                        }
                    }
                    // Its port is held to its own addresses before anything runs.
                    self.refresh_nat();
                }
                launch.netns = Some(path);
            }
            Ok(Reply::Error(e)) | Err(e) => {
                return self.set(who, InstanceState::Failed, Some(e));
            }
            Ok(other) => {
                return self.set(
                    who,
                    InstanceState::Failed,
                    Some(format!("unexpected supervisor answer {other:?}")),
                );
            }
        }
        match supervisor::call(&self.dir, &Request::Start(Box::new(launch))) {
            Ok(Reply::Started(pid)) => {
                tracing::info!(instance = %container_id(who), pid, "container running");
                self.set(who, InstanceState::Running, None);
            }
            Ok(Reply::Error(e)) => self.set(who, InstanceState::Failed, Some(e)),
            Ok(other) => self.set(
                who,
                InstanceState::Failed,
                Some(format!("unexpected supervisor answer {other:?}")),
            ),
            Err(e) => self.set(who, InstanceState::Failed, Some(e)),
        }
    }

    /// React to containers that ended.
    fn check(&mut self) {
        let entries: HashMap<String, Entry> = match supervisor::call(&self.dir, &Request::List) {
            Ok(Reply::List(l)) => l.into_iter().map(|e| (e.id.clone(), e)).collect(),
            _ => {
                // The supervisor is gone (killed, or the machine restarted): start one;
                // it re-adopts what still runs.
                if let Err(e) = supervisor::ensure(&self.dir) {
                    tracing::warn!(error = %e, "no container supervisor");
                }
                return;
            }
        };
        let running: Vec<Record> = self
            .records
            .iter()
            .filter(|r| r.state == InstanceState::Running)
            .cloned()
            .collect();
        for r in running {
            let who = r.spec.instance.clone();
            let id = container_id(&who);
            let exit = match entries.get(&id) {
                Some(e) => match e.exit {
                    Some(x) => x,
                    None => continue,
                },
                None => supervisor::Exit {
                    code: None,
                    oom: false,
                },
            };
            let why = match (exit.oom, exit.code) {
                (true, _) => "OOMKilled: over its memory limit".to_owned(),
                (false, Some(c)) => format!("exit code {c}"),
                (false, None) => "ended while no supervisor watched (exit code unknown)".into(),
            };
            let tail = log_tail(&self.containers(), &id);
            let detail = if tail.is_empty() {
                why.clone()
            } else {
                format!("{why}; log: {tail}")
            };
            if r.spec.one_shot {
                let state = if exit.code == Some(0) && !exit.oom {
                    InstanceState::Completed
                } else {
                    InstanceState::Dead
                };
                let _ = supervisor::call(&self.dir, &Request::Remove(id));
                self.set(&who, state, Some(detail));
            } else {
                let n = r.restarts;
                let wait = Duration::from_secs(1u64 << n.min(6)).min(MAX_BACKOFF);
                if let Some(rec) = self.records.iter_mut().find(|x| x.spec.instance == who) {
                    rec.restarts += 1;
                }
                self.restart_at.insert(who.clone(), Instant::now() + wait);
                self.set(
                    &who,
                    InstanceState::Creating,
                    Some(format!(
                        "{detail}; restart {} in {}s",
                        n + 1,
                        wait.as_secs()
                    )),
                );
            }
        }
    }

    fn cpu_centi_pct(&mut self) -> u16 {
        let Some(line) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
        else {
            return 0;
        };
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        let (pt, pi) = self.cpu;
        self.cpu = (total, idle);
        let (dt, di) = (total.saturating_sub(pt), idle.saturating_sub(pi));
        if dt == 0 || pt == 0 {
            return 0;
        }
        u16::try_from((dt - di.min(dt)) * 10_000 / dt).unwrap_or(10_000)
    }
}

/// The limits this worker cannot enforce, each said once in its log with what to do:
/// cgroup controllers its kernel lacks, and bounded writable layers when their file
/// system cannot be made or mounted.
pub fn unenforced_here(dir: &Path, c: &Containment) -> Vec<&'static str> {
    let mut out = Vec::new();
    for m in crate::container::cgroup::missing_controllers() {
        tracing::warn!(
            controller = m,
            fix = crate::container::cgroup::fix_for(m),
            "this kernel has no {m} cgroup controller: {m} limits cannot be enforced here, \
             and the cluster will place no service that sets one on this worker"
        );
        out.push(match m {
            "memory" => "memory",
            "cpu" => "cpu",
            _ => "pids",
        });
    }
    if let Err(e) = crate::container::quota::ensure(dir, c.storage_pool_mib) {
        tracing::warn!(
            error = %e,
            "no bounded writable layers: storage limits cannot be enforced here (a kernel \
             with btrfs and loop devices, and btrfs-progs, are needed)"
        );
        out.push("storage");
    }
    out
}

#[cfg(test)]
mod tests;
