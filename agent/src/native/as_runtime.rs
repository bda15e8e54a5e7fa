//! The native runtime as the control loop drives it: the `Runtime` trait.

use super::*;

impl Runtime for NativeRuntime {
    fn joined(
        &mut self,
        agent: &str,
        reg: &grove_proto::msg::NodeRegistered,
        cluster: std::net::SocketAddr,
    ) {
        if !self.wired {
            return;
        }
        self.agent = agent.to_owned();
        self.cluster = Some(cluster);
        // The address this worker reaches its cluster from: its VXLAN endpoint.
        self.local = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect(cluster).and_then(|()| s.local_addr()))
            .ok()
            .and_then(|a| match a.ip() {
                std::net::IpAddr::V4(v4) => Some(v4),
                std::net::IpAddr::V6(_) => None,
            });
        let subnet = Cidr {
            addr: Ipv4Addr::from(reg.subnet_v4.addr),
            len: reg.subnet_v4.len,
        };
        let subnet6 = Some(Cidr {
            addr: Ipv6Addr::from(reg.subnet_v6.addr),
            len: reg.subnet_v6.len,
        });
        let keep: Vec<String> = self
            .records
            .iter()
            .filter(|r| r.addr.is_some())
            .map(|r| container_id(&r.spec.instance))
            .collect();
        match Overlay::open(Kernel, agent, subnet, subnet6, &keep) {
            Ok(o) => {
                self.overlay = Some((o, subnet));
                match crate::net::nflog::listen(crate::net::Names::of(agent).log_group()) {
                    Ok(rx) => self.logged = Some(rx),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "no log group: services of other clusters cannot be looked up"
                    ),
                }
                self.refresh_nat();
            }
            Err(e) => {
                tracing::error!(error = %e, "the data plane could not be set up; instances run unwired")
            }
        }
    }

    fn peers(&mut self, peers: &[grove_proto::msg::NodePeer]) {
        let (Some((o, _)), Some(local)) = (self.overlay.as_mut(), self.local) else {
            return;
        };
        let wanted: Vec<Peer> = peers
            .iter()
            .filter_map(|p| {
                Some(Peer {
                    underlay: p.underlay.parse().ok()?,
                    subnet: Cidr {
                        addr: Ipv4Addr::from(p.subnet_v4.addr),
                        len: p.subnet_v4.len,
                    },
                    subnet6: Some(Cidr {
                        addr: Ipv6Addr::from(p.subnet_v6.addr),
                        len: p.subnet_v6.len,
                    }),
                })
            })
            .collect();
        if let Err(e) = o.set_peers(local, &wanted) {
            tracing::warn!(error = %e, "programming the overlay to the other workers");
        }
    }

    fn services(&mut self, services: &[grove_proto::msg::ServiceEntry]) {
        self.services = services.to_vec();
        self.refresh_nat();
    }

    fn coordinate(&mut self, coord: grove_proto::msg::NetCoord) {
        self.coord = Some(coord);
        self.refresh_nat();
    }

    fn lookups(&mut self) -> crate::net::interest::Lookups {
        let now = Instant::now();
        if let Some(rx) = &self.logged {
            for ip in rx.try_iter() {
                self.interest.seen(ip, now);
            }
        }
        let (l, rules_changed) = self.interest.due(now);
        if rules_changed {
            self.refresh_nat();
        }
        l
    }

    fn found(&mut self, ip: std::net::IpAddr, entry: Option<grove_proto::msg::ServiceEntry>) {
        if self.interest.found(ip, entry) {
            self.refresh_nat();
        }
    }

    fn deploy(&mut self, spec: &InstanceSpec) {
        if self
            .records
            .iter()
            .any(|r| r.spec.instance == spec.instance)
        {
            return;
        }
        self.released.remove(&spec.image);
        self.records.push(Record {
            spec: spec.clone(),
            state: InstanceState::Creating,
            restarts: 0,
            addr: None,
        });
        self.set(&spec.instance, InstanceState::Creating, None);
        let _ = self.pulls.send(Job::Pull(
            spec.instance.clone(),
            spec.image.clone(),
            self.images_in_use(),
        ));
    }

    fn stop(&mut self, instance: &InstanceRef) {
        let Some(pos) = self
            .records
            .iter()
            .position(|r| r.spec.instance == *instance)
        else {
            return;
        };
        let id = container_id(instance);
        self.detach(instance);
        // The supervisor ends it in its own time (SIGTERM, the grace, SIGKILL, the
        // removal): nothing here waits for the grace.
        let grace = self.records[pos]
            .spec
            .stop_grace_s
            .map_or(STOP_GRACE_MS, |s| u32::from(s) * 1000);
        match supervisor::call(&self.dir, &Request::End(id.clone(), grace)) {
            Ok(Reply::Ok) => {}
            // A supervisor from before `End` (it outlives agent upgrades): as it did.
            Ok(Reply::Error(e)) if e.starts_with("bad request") => {
                let _ = supervisor::call(&self.dir, &Request::Remove(id));
            }
            other => {
                tracing::warn!(instance = %id, answer = ?other, "ending the container");
            }
        }
        let gone = self.records.remove(pos);
        self.restart_at.remove(instance);
        // An image no instance here uses any more goes after a while.
        if !self.records.iter().any(|r| r.spec.image == gone.spec.image) {
            self.released
                .insert(gone.spec.image.clone(), Instant::now());
        }
        self.collect_images();
        // Its port mappings go with it.
        self.refresh_nat();
        // An instance that had ended keeps its end (COMPLETED, DEAD, FAILED) as its
        // last word; only a live one is reported UNDEPLOYED.
        if !ended(gone.state) {
            self.changes.push(InstanceStatus {
                instance: gone.spec.instance,
                state: InstanceState::Undeployed,
                detail: None,
                ip: gone.spec.ip,
                worker: None,
                addr: None,
                addr6: None,
            });
        }
        self.save();
    }

    fn list(&self) -> Vec<(InstanceRef, InstanceState)> {
        self.records
            .iter()
            .map(|r| (r.spec.instance.clone(), r.state))
            .collect()
    }

    fn poll(&mut self) -> Vec<InstanceStatus> {
        while let Ok((who, result)) = self.pulled.try_recv() {
            if !self.records.iter().any(|r| r.spec.instance == who) {
                continue;
            }
            match result {
                Ok(image) => self.start(&who, &image),
                Err(e) => self.set(&who, InstanceState::Failed, Some(format!("image: {e}"))),
            }
        }
        let now = Instant::now();
        let due: Vec<InstanceRef> = self
            .restart_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(w, _)| w.clone())
            .collect();
        for who in due {
            self.restart_at.remove(&who);
            self.detach(&who);
            let _ = supervisor::call(&self.dir, &Request::Remove(container_id(&who)));
            if let Some(r) = self.records.iter().find(|r| r.spec.instance == who) {
                let in_use = self.images_in_use();
                let _ = self
                    .pulls
                    .send(Job::Pull(who.clone(), r.spec.image.clone(), in_use));
            }
        }
        self.collect_images();
        if self.last_check.elapsed() >= Duration::from_millis(150) {
            self.last_check = now;
            self.check();
        }
        std::mem::take(&mut self.changes)
    }

    fn waker(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        Some(self.wake.clone())
    }

    fn instance_usage(&mut self) -> Vec<grove_proto::msg::InstanceUsage> {
        let now = Instant::now();
        let mut out = Vec::new();
        let running: Vec<InstanceRef> = self
            .records
            .iter()
            .filter(|r| r.state == InstanceState::Running)
            .map(|r| r.spec.instance.clone())
            .collect();
        self.cpu_seen.retain(|k, _| running.contains(k));
        for who in running {
            let g = crate::container::cgroup::Group::load(&container_id(&who));
            let usec = g.cpu_usec();
            let cpu = match self.cpu_seen.insert(who.clone(), (usec, now)) {
                Some((before, at)) => {
                    let wall =
                        u64::try_from(now.duration_since(at).as_micros()).unwrap_or(u64::MAX);
                    (usec.saturating_sub(before) * 10_000)
                        .checked_div(wall)
                        .unwrap_or(0)
                }
                None => 0,
            };
            out.push(grove_proto::msg::InstanceUsage {
                instance: who,
                cpu_centi_pct: u32::try_from(cpu).unwrap_or(u32::MAX),
                mem_mib: u32::try_from(g.memory_bytes() >> 20).unwrap_or(u32::MAX),
            });
        }
        out
    }

    fn usage(&mut self) -> Usage {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| {
                    l.strip_prefix(key)?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
        };
        let used = kib("MemTotal:").saturating_sub(kib("MemAvailable:")) / 1024;
        let disk = nix::sys::statvfs::statvfs(&self.dir)
            .map(|s| {
                (s.blocks().saturating_sub(s.blocks_available())) * s.fragment_size() / (1 << 20)
            })
            .unwrap_or(0);
        Usage {
            cpu_centi_pct: self.cpu_centi_pct(),
            mem_used_mib: u32::try_from(used).unwrap_or(u32::MAX),
            disk_used_mib: u32::try_from(disk).unwrap_or(u32::MAX),
        }
    }
}
