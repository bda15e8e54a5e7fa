//! The runtime the control loop drives: deploy, stop, list, stats. `sim` keeps
//! instances as records (tests and load generation); the native runtime (containers on
//! namespaces and cgroups) plugs in behind the same trait.

use grove_proto::msg::{InstanceRef, InstanceSpec, InstanceState, InstanceStatus};
use minicbor::{Decode, Encode};
use std::path::PathBuf;

/// Usage figures for heartbeats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU in hundredths of a percent of all CPUs.
    pub cpu_centi_pct: u16,
    /// Memory used, MiB.
    pub mem_used_mib: u32,
    /// Disk used, MiB.
    pub disk_used_mib: u32,
}

/// What runs instances on this worker.
pub trait Runtime: Send {
    /// The worker joined the cluster at `cluster`: its subnets are known (instances get
    /// addresses from them).
    fn joined(
        &mut self,
        _agent: &str,
        _reg: &grove_proto::msg::NodeRegistered,
        _cluster: std::net::SocketAddr,
    ) {
    }
    /// The cluster's workers, this one among them (the overlay spans them).
    fn peers(&mut self, _peers: &[grove_proto::msg::NodePeer]) {}
    /// The cluster's services and their RUNNING instances (service IP tables).
    fn services(&mut self, _services: &[grove_proto::msg::ServiceEntry]) {}
    /// Directory lookups the data plane wants (addresses of other clusters' services
    /// its workloads send to) and observations it no longer needs.
    fn lookups(&mut self) -> crate::net::interest::Lookups {
        crate::net::interest::Lookups::default()
    }
    /// The directory's answer for a looked-up address (`None`: not found, or the
    /// observation ended).
    fn found(&mut self, _ip: std::net::IpAddr, _entry: Option<grove_proto::msg::ServiceEntry>) {}
    /// This worker's network coordinate changed (a new RTT sample to its cluster).
    fn coordinate(&mut self, _coord: grove_proto::msg::NetCoord) {}
    /// Start an instance (idempotent: a running one is left alone).
    fn deploy(&mut self, spec: &InstanceSpec);
    /// Stop and remove an instance.
    fn stop(&mut self, instance: &InstanceRef);
    /// Every instance the runtime holds, with its state.
    fn list(&self) -> Vec<(InstanceRef, InstanceState)>;
    /// Status changes since the last call (progress, exits, failures).
    fn poll(&mut self) -> Vec<InstanceStatus>;
    /// Current usage (CPU since the last call).
    fn usage(&mut self) -> Usage;
    /// Each running instance's usage (CPU since the last call); none by default.
    fn instance_usage(&mut self) -> Vec<grove_proto::msg::InstanceUsage> {
        Vec::new()
    }
    /// Notified when work done off the control loop (a pull) left something for
    /// [`Runtime::poll`], so the loop does not wait for its next tick.
    fn waker(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
struct SimInstance {
    #[n(0)]
    instance: InstanceRef,
    #[n(1)]
    state: InstanceState,
    /// `sim:exit=N` in the command: exit with N after running once.
    #[n(2)]
    exit: Option<i32>,
    #[n(3)]
    ip: Option<u32>,
    #[n(4)]
    memory_mib: u32,
    /// `sim:stuck`: never gets past CREATING (an image pull that hangs).
    #[n(5)]
    stuck: bool,
}

/// Simulated instances: records that go CREATING → RUNNING (→ COMPLETED / DEAD when
/// their command says `sim:exit=N`, FAILED for `sim:fail`, stuck in CREATING for
/// `sim:stuck`), kept in a file so that a
/// restarted agent re-adopts them as a native agent re-adopts its containers.
#[derive(Debug)]
pub struct SimRuntime {
    file: PathBuf,
    instances: Vec<SimInstance>,
    changes: Vec<InstanceStatus>,
}

impl SimRuntime {
    /// A simulated runtime whose records live in `file`.
    pub fn open(file: PathBuf) -> Self {
        let instances = std::fs::read(&file)
            .ok()
            .and_then(|b| minicbor::decode(&b).ok())
            .unwrap_or_default();
        Self {
            file,
            instances,
            changes: Vec::new(),
        }
    }

    fn save(&self) {
        let tmp = self.file.with_extension("tmp");
        let bytes = minicbor::to_vec(&self.instances).unwrap_or_default();
        if std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &self.file))
            .is_err()
        {
            tracing::warn!(file = %self.file.display(), "cannot save the simulated instances");
        }
    }

    fn set(&mut self, i: usize, state: InstanceState, detail: Option<String>) {
        self.instances[i].state = state;
        let x = &self.instances[i];
        self.changes.push(InstanceStatus {
            instance: x.instance.clone(),
            state,
            detail,
            ip: x.ip,
            worker: None,
            addr: None,
            addr6: None,
        });
    }
}

impl Runtime for SimRuntime {
    fn deploy(&mut self, spec: &InstanceSpec) {
        if self.instances.iter().any(|i| i.instance == spec.instance) {
            return;
        }
        let exit = spec
            .cmd
            .iter()
            .find_map(|c| c.strip_prefix("sim:exit=").and_then(|n| n.parse().ok()));
        let fail = spec.cmd.iter().any(|c| c == "sim:fail");
        self.instances.push(SimInstance {
            instance: spec.instance.clone(),
            state: InstanceState::Creating,
            exit,
            ip: spec.ip,
            memory_mib: spec.memory_mib,
            stuck: spec.cmd.iter().any(|c| c == "sim:stuck"),
        });
        let last = self.instances.len() - 1;
        if fail {
            self.set(last, InstanceState::Failed, Some("sim:fail".into()));
        } else {
            self.set(last, InstanceState::Creating, None);
        }
        self.save();
    }

    fn stop(&mut self, instance: &InstanceRef) {
        if let Some(pos) = self.instances.iter().position(|i| i.instance == *instance) {
            let gone = self.instances.remove(pos);
            self.save();
            // An ended instance keeps its end as its last word.
            if matches!(
                gone.state,
                InstanceState::Completed | InstanceState::Dead | InstanceState::Failed
            ) {
                return;
            }
            self.changes.push(InstanceStatus {
                instance: gone.instance,
                state: InstanceState::Undeployed,
                detail: None,
                ip: gone.ip,
                worker: None,
                addr: None,
                addr6: None,
            });
        }
    }

    fn list(&self) -> Vec<(InstanceRef, InstanceState)> {
        self.instances
            .iter()
            .map(|i| (i.instance.clone(), i.state))
            .collect()
    }

    fn poll(&mut self) -> Vec<InstanceStatus> {
        let mut changed = false;
        for i in 0..self.instances.len() {
            match (self.instances[i].state, self.instances[i].exit) {
                (InstanceState::Creating, _) if self.instances[i].stuck => {}
                (InstanceState::Creating, _) => {
                    self.set(i, InstanceState::Running, None);
                    changed = true;
                }
                (InstanceState::Running, Some(code)) => {
                    let state = if code == 0 {
                        InstanceState::Completed
                    } else {
                        InstanceState::Dead
                    };
                    self.set(i, state, Some(format!("exit code {code}")));
                    changed = true;
                }
                _ => {}
            }
        }
        if changed {
            self.save();
        }
        std::mem::take(&mut self.changes)
    }

    fn usage(&mut self) -> Usage {
        let running = self
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Running)
            .count();
        Usage {
            cpu_centi_pct: u16::try_from(running.saturating_mul(100))
                .unwrap_or(10_000)
                .min(10_000),
            mem_used_mib: self.instances.iter().map(|i| i.memory_mib).sum(),
            disk_used_mib: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: u32, cmd: &[&str]) -> InstanceSpec {
        InstanceSpec {
            instance: InstanceRef {
                service: "s".into(),
                instance: n,
            },
            name: "a.b.c.d".into(),
            image: "busybox".into(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            env: vec![],
            memory_mib: 64,
            millicpus: 100,
            ports: None,
            one_shot: false,
            ip: Some(1),
            nodes: None,
            geo: None,
            latency: None,
            rr_ip: None,
            closest_ip: None,
            ip6: None,
            rr_ip6: None,
            closest_ip6: None,
            storage_mib: None,
            stop_grace_s: None,
        }
    }

    #[test]
    fn simulated_instances_go_through_the_lifecycle_and_survive_a_restart() {
        let file = std::env::temp_dir().join(format!("grove-sim-{}.cbor", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let mut rt = SimRuntime::open(file.clone());
        rt.deploy(&spec(0, &["sh"]));
        rt.deploy(&spec(1, &["sim:exit=3"]));
        rt.deploy(&spec(2, &["sim:fail"]));
        rt.deploy(&spec(3, &["sim:stuck"]));
        rt.deploy(&spec(0, &["sh"]));
        let first: Vec<_> = rt
            .poll()
            .into_iter()
            .map(|c| (c.instance.instance, c.state))
            .collect();
        assert!(first.contains(&(2, InstanceState::Failed)));
        assert!(
            first.contains(&(0, InstanceState::Running))
                && first.contains(&(1, InstanceState::Running))
        );
        let second: Vec<_> = rt
            .poll()
            .into_iter()
            .map(|c| (c.instance.instance, c.state))
            .collect();
        assert_eq!(second, [(1, InstanceState::Dead)]);
        assert!(rt.poll().is_empty());
        assert!(rt.list().contains(&(
            InstanceRef {
                service: "s".into(),
                instance: 3
            },
            InstanceState::Creating
        )));
        assert_eq!(rt.usage().mem_used_mib, 256);
        let again = SimRuntime::open(file.clone());
        assert_eq!(
            again.list().len(),
            4,
            "a restarted agent re-adopts its instances"
        );
        let mut rt = again;
        rt.stop(&InstanceRef {
            service: "s".into(),
            instance: 0,
        });
        assert_eq!(rt.poll()[0].state, InstanceState::Undeployed);
        std::fs::remove_file(&file).unwrap();
    }
}
