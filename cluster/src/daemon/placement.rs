//! Placement inside the cluster: the root's instances onto workers with the cluster
//! scheduler, instances taken back from lost workers or stuck on their way to
//! RUNNING, and the capacity reported to the root.

use super::*;

impl Cluster {
    /// Note an instance's new state; only the way to RUNNING is watched.
    pub(super) fn track(&self, service: &str, number: u32, state: &str) {
        let key = (service.to_owned(), number);
        let mut p = self.progress();
        if state == "NODE_SCHEDULED" || state == "CREATING" {
            let e = p.entry(key).or_insert_with(|| Progress {
                state: String::new(),
                since: Instant::now(),
                avoid: Vec::new(),
            });
            if e.state != state {
                e.state = state.to_owned();
                e.since = Instant::now();
            }
        } else {
            p.remove(&key);
        }
    }

    /// Take back instances stuck on their way to RUNNING and place them again, on
    /// another worker if one qualifies; returns the workers to notify.
    pub(super) fn handle_stuck(&self) -> HashSet<u32> {
        let (sched, create) = self.timeouts;
        let stuck: Vec<(String, u32, String)> = self
            .progress()
            .iter()
            .filter(|(_, p)| {
                let limit = if p.state == "CREATING" { create } else { sched };
                p.since.elapsed() > limit
            })
            .map(|((s, n), p)| (s.clone(), *n, p.state.clone()))
            .collect();
        let mut touched = HashSet::new();
        for (service, number, state) in stuck {
            let row = self
                .db()
                .instances()
                .unwrap_or_default()
                .into_iter()
                .find(|i| i.service == service && i.number == number);
            let Some(node) = row.and_then(|r| r.node) else {
                self.progress().remove(&(service, number));
                continue;
            };
            tracing::warn!(%service, number, node, %state, "instance stuck: placing it again");
            if let Some(p) = self.progress().get_mut(&(service.clone(), number)) {
                p.avoid.push(node);
                p.state.clear();
            }
            let _ = self
                .db()
                .place(&service, number, None, "CLUSTER_SCHEDULED", None);
            touched.insert(node);
        }
        if !touched.is_empty() {
            touched.extend(self.place_pending());
        }
        touched
    }

    /// The services with instances in this cluster and their RUNNING instances'
    /// overlay addresses (what every worker's service IP table is made of).
    pub(super) fn services_of(&self, rows: &[InstanceRow]) -> Vec<msg::ServiceEntry> {
        let me = self.root_link.get().map_or(ClusterId(0), |l| l.id);
        let mut out: BTreeMap<String, msg::ServiceEntry> = BTreeMap::new();
        let workers = self.workers();
        for row in rows {
            let Some(spec) = spec_of(row) else { continue };
            let e = out
                .entry(row.service.clone())
                .or_insert_with(|| msg::ServiceEntry {
                    name: spec.name.clone(),
                    service: row.service.clone(),
                    rr_ip: spec.rr_ip,
                    closest_ip: spec.closest_ip,
                    instances: Vec::new(),
                    rr_ip6: spec.rr_ip6,
                    closest_ip6: spec.closest_ip6,
                });
            if row.status != "RUNNING" || row.addr.is_none() {
                continue;
            }
            e.instances.extend(workers.endpoint(row, &spec, me));
        }
        out.into_values().collect()
    }

    /// The IPv6 overlay address that goes with `addr` on worker `node`.
    pub(super) fn addr6_on(&self, node: u32, addr: u32) -> Option<[u8; 16]> {
        let block = *self.block.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.db().node(node).ok()?;
        addr6_in(block, (n.subnet, n.subnet_size), addr)
    }

    /// The registered workers, read from the store once after each registration
    /// (rounds, reports and placements read them many times a second).
    pub(super) fn nodes(&self) -> Arc<Vec<crate::store::NodeRow>> {
        let mut c = self.nodes_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.as_ref() {
            return n.clone();
        }
        let n = Arc::new(self.db().nodes().unwrap_or_default());
        *c = Some(n.clone());
        n
    }

    /// Worker `id` says what its limits are now: stored when they changed (from the
    /// cached rows, so an unchanged heartbeat costs no query).
    pub(super) fn limits_now(&self, id: u32, limits: &msg::WorkerLimits) {
        let known = self
            .nodes()
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.limits.clone());
        if known.as_ref().is_some_and(|l| l.as_ref() == Some(limits)) {
            return;
        }
        if self.db().set_limits(id, limits).is_ok() {
            *self.nodes_cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!(node = id, ?limits, "the worker's limits changed");
        }
    }

    /// What directory endpoints need of the workers, read once for a whole table
    /// (not once per instance).
    pub(super) fn workers(&self) -> Workers {
        Workers {
            block: *self.block.lock().unwrap_or_else(|p| p.into_inner()),
            subnets: self
                .nodes()
                .iter()
                .map(|n| (n.id, (n.subnet, n.subnet_size)))
                .collect(),
            coords: self
                .seen()
                .iter()
                .filter_map(|(id, l)| Some((*id, l.coord?)))
                .collect(),
        }
    }

    /// The workers the overlay spans: this cluster's, and those of other clusters
    /// the root said its workers exchange traffic with.
    pub(super) fn peers(&self) -> Vec<msg::NodePeer> {
        let mut p = self.own_peers();
        p.extend(
            self.foreign
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        msg::sort_peers(&mut p);
        p
    }

    /// This cluster's active workers whose address is known.
    pub(super) fn own_peers(&self) -> Vec<msg::NodePeer> {
        let block = *self.block.lock().unwrap_or_else(|p| p.into_inner());
        let nodes = self.nodes();
        let live = self.seen();
        nodes
            .iter()
            .filter_map(|n| {
                let l = live.get(&n.id).filter(|l| !l.lost)?;
                let (subnet_v4, subnet_v6) = subnets_of(block, n.subnet, n.subnet_size);
                Some(msg::NodePeer {
                    node: NodeId(n.id),
                    underlay: l.underlay?.to_string(),
                    subnet_v4,
                    subnet_v6,
                })
            })
            .collect()
    }

    pub(super) fn views(&self, exclude: Option<u32>) -> Vec<NodeView> {
        let nodes = self.nodes();
        let instances = self.db().instances().unwrap_or_default();
        let live = self.seen().clone();
        nodes
            .iter()
            .map(|n| {
                let mut reserved = Resources::default();
                let mut ports = Vec::new();
                for i in instances
                    .iter()
                    .filter(|i| i.node == Some(n.id) && !ended(i.status.as_str()))
                {
                    if let Some(s) = spec_of(i) {
                        let takes = scheduler::on_worker(
                            n.limits.as_ref(),
                            Resources {
                                millicpus: s.millicpus,
                                memory_mib: s.memory_mib,
                                vgpus: 0,
                            },
                        );
                        reserved.millicpus += takes.millicpus;
                        reserved.memory_mib += takes.memory_mib;
                        ports.extend(host_ports(&s));
                    }
                }
                NodeView {
                    id: NodeId(n.id),
                    name: n.name.clone(),
                    active: Some(n.id) != exclude && live.get(&n.id).is_some_and(|l| !l.lost),
                    arch: n.arch.clone(),
                    virtualizations: n.virtualizations.clone(),
                    location: n.location.map(|(a, b)| GeoPoint {
                        lat: degrees(a),
                        lon: degrees(b),
                    }),
                    coord: live.get(&n.id).and_then(|l| l.coord),
                    capacity: Resources {
                        millicpus: n.cpus * 1000,
                        memory_mib: n.memory_mib,
                        vgpus: 0,
                    },
                    reserved,
                    same_service: 0,
                    ports,
                    limits: n.limits.clone(),
                }
            })
            .collect()
    }

    /// Place every instance without a (live) worker; returns the workers to notify.
    pub(super) fn place_pending(&self) -> HashSet<u32> {
        let mut touched = HashSet::new();
        let instances = self.db().instances().unwrap_or_default();
        for i in instances
            .iter()
            .filter(|i| i.node.is_none() && !ended(i.status.as_str()))
        {
            let Some(spec) = spec_of(i) else { continue };
            // A latency constraint cannot be judged while a worker that just joined (or
            // a cluster that just restarted) still waits for its coordinate: wait too.
            if spec.latency.is_some() && self.seen().values().any(WorkerSeen::coord_due) {
                self.deferred.store(true, Ordering::Relaxed);
                continue;
            }
            let mut views = self.views(None);
            // Fresh: instances placed earlier in this pass count too.
            let now = self.db().instances().unwrap_or_default();
            let same: Vec<u32> = now
                .iter()
                .filter(|x| x.service == i.service && !ended(x.status.as_str()))
                .filter_map(|x| x.node)
                .collect();
            for v in &mut views {
                v.same_service = u32::try_from(same.iter().filter(|n| **n == v.id.0).count())
                    .unwrap_or(u32::MAX);
            }
            let avoid = self
                .progress()
                .get(&(i.service.clone(), i.number))
                .map(|p| p.avoid.clone())
                .unwrap_or_default();
            let demand = Demand {
                resources: Resources {
                    millicpus: spec.millicpus,
                    memory_mib: spec.memory_mib,
                    vgpus: 0,
                },
                virtualization: "container".into(),
                arch: vec![],
                constraints: constraints_of(&spec, &views),
                ports: host_ports(&spec),
                storage_mib: spec.storage_mib.unwrap_or(0),
            };
            // Workers it got stuck on come last: tried only when no other one qualifies.
            let elsewhere: Vec<NodeView> = views
                .iter()
                .filter(|v| !avoid.contains(&v.id.0))
                .cloned()
                .collect();
            let placed = scheduler::schedule(&elsewhere, &demand)
                .or_else(|_| scheduler::schedule(&views, &demand));
            let (node, state, reason) = match placed {
                Ok(n) => (Some(n.0), InstanceState::NodeScheduled, None),
                Err(f) => {
                    // A limit or host port no worker can honour is named.
                    let why = match f {
                        scheduler::Failure::NoQualifiedWorkerFound => {
                            scheduler::why_unqualified(&views, &demand)
                        }
                        _ => None,
                    };
                    let reason = match why {
                        Some(w) => format!("{}: {w}", f.as_str()),
                        None => f.as_str().to_owned(),
                    };
                    (None, InstanceState::Failed, Some(reason))
                }
            };
            if self
                .db()
                .place(
                    &i.service,
                    i.number,
                    node,
                    state.as_str(),
                    reason.as_deref(),
                )
                .is_ok()
            {
                touched.extend(node);
                self.track(&i.service, i.number, state.as_str());
                self.directory.touch(&i.service);
                let _ = self.to_root.send(InstanceStatus {
                    instance: InstanceRef {
                        service: i.service.clone(),
                        instance: i.number,
                    },
                    state,
                    detail: reason,
                    ip: spec.ip,
                    worker: node.map(|n| format!("node-{n}")),
                    addr: None,
                    addr6: None,
                });
            }
        }
        touched
    }

    /// Apply the root's full command set.
    pub async fn apply_root(&self, cmds: &ClusterCommands) {
        let mut touched = HashSet::new();
        let wanted: BTreeMap<(String, u32), &InstanceSpec> = cmds
            .commands
            .iter()
            .filter_map(|c| match c {
                NodeCommand::Deploy(s) => {
                    Some(((s.instance.service.clone(), s.instance.instance), s))
                }
                NodeCommand::Undeploy(_) => None,
            })
            .collect();
        let have = self.db().instances().unwrap_or_default();
        for i in &have {
            if !wanted.contains_key(&(i.service.clone(), i.number)) {
                self.directory.touch(&i.service);
                if let Ok(Some(n)) = self.db().remove_instance(&i.service, i.number) {
                    touched.insert(n);
                }
            }
        }
        for ((service, number), spec) in &wanted {
            let changed = self
                .db()
                .upsert_instance(service, *number, &msg::to_cbor(*spec))
                .unwrap_or(false);
            if changed {
                if let Some(n) = have
                    .iter()
                    .find(|i| i.service == *service && i.number == *number)
                    .and_then(|i| i.node)
                {
                    touched.insert(n);
                }
            }
        }
        touched.extend(self.place_pending());
        let foreign_changed = cmds.peers.as_ref().is_some_and(|p| {
            let mut f = self.foreign.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *f != *p;
            f.clone_from(p);
            changed
        });
        if foreign_changed {
            self.mark_all();
        } else {
            self.mark(touched);
        }
        self.push_directory().await;
    }

    /// Move the instances of workers silent for too long; returns workers to notify.
    pub(super) fn handle_losses(&self) -> HashSet<u32> {
        let limit = Duration::from_millis(u64::from(HEARTBEAT_MS * MISSED));
        let lost: Vec<u32> = {
            let mut live = self.seen();
            let mut out = Vec::new();
            for (id, l) in live.iter_mut() {
                if !l.lost && l.last_seen.elapsed() > limit {
                    l.lost = true;
                    out.push(*id);
                }
            }
            out
        };
        let mut touched = HashSet::new();
        for id in lost {
            tracing::warn!(node = id, "worker lost: moving its instances");
            if let Some(m) = &self.metrics {
                m.lost(id);
            }
            touched.extend(self.move_instances_off(id));
            touched.extend(self.place_pending());
        }
        touched
    }

    /// Take a worker's instances back (to be placed elsewhere); the workers touched.
    pub(super) fn move_instances_off(&self, id: u32) -> HashSet<u32> {
        self.forget_sent(id);
        // Collect first: a guard in the loop head would live through the body.
        let placed: Vec<InstanceRow> = self
            .db()
            .instances()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i.node == Some(id) && !ended(i.status.as_str()))
            .collect();
        for i in &placed {
            let _ = self
                .db()
                .place(&i.service, i.number, None, "CLUSTER_SCHEDULED", None);
            self.directory.touch(&i.service);
        }
        HashSet::from([id])
    }

    pub(super) fn capacity(&self) -> Vec<Capacity> {
        let mut classes: BTreeMap<(String, String), Capacity> = BTreeMap::new();
        for v in self.views(None).iter().filter(|v| v.active) {
            let free_cpu = v.capacity.millicpus.saturating_sub(v.reserved.millicpus);
            let free_mem = v.capacity.memory_mib.saturating_sub(v.reserved.memory_mib);
            for virt in &v.virtualizations {
                let c = classes
                    .entry((v.arch.clone(), virt.clone()))
                    .or_insert_with(|| Capacity {
                        arch: v.arch.clone(),
                        virtualization: virt.clone(),
                        nodes: 0,
                        free_millicpus: 0,
                        free_memory_mib: 0,
                        max_free_millicpus: 0,
                        max_free_memory_mib: 0,
                        free_vgpus: None,
                        max_free_vgpus: None,
                    });
                c.nodes += 1;
                c.free_millicpus += u64::from(free_cpu);
                c.free_memory_mib += u64::from(free_mem);
                c.max_free_millicpus = c.max_free_millicpus.max(free_cpu);
                c.max_free_memory_mib = c.max_free_memory_mib.max(free_mem);
            }
        }
        classes.into_values().collect()
    }
}

/// The host ports an instance maps (its `port` field; the root validated it).
pub(super) fn host_ports(spec: &InstanceSpec) -> Vec<(u16, grove_proto::ports::Protocol)> {
    spec.ports
        .as_deref()
        .and_then(|p| grove_proto::ports::parse_ports(p).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.host, m.protocol))
        .collect()
}

pub(super) fn degrees(x: f64) -> f32 {
    #[allow(clippy::cast_possible_truncation)]
    let y = x as f32;
    y
}

/// The scheduler's constraints for a spec. A latency target is the coordinate of the
/// worker nearest (on the map) to the users' location.
pub(super) fn constraints_of(
    spec: &InstanceSpec,
    views: &[NodeView],
) -> Vec<scheduler::Constraint> {
    let mut out = Vec::new();
    if let Some(nodes) = &spec.nodes {
        out.push(scheduler::Constraint::Nodes(nodes.clone()));
    }
    if let Some(g) = spec.geo {
        out.push(scheduler::Constraint::Geo {
            location: g.location,
            threshold_km: f64::from(g.threshold_km),
        });
    }
    if let Some(l) = spec.latency {
        let nearest = views
            .iter()
            .filter_map(|v| {
                Some((
                    grove_proto::util::distance_km(v.location?, l.location),
                    v.coord?,
                ))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, c)| c);
        // No worker to stand for the users yet: no worker can be shown to be near them.
        out.push(scheduler::Constraint::Latency {
            targets: nearest.into_iter().collect(),
            threshold_ms: l.threshold_ms,
        });
    }
    out
}
