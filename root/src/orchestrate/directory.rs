//! The service directory as clusters see it: each service's entry (its addresses and
//! where each instance runs), and the cross-cluster reach of the overlay — which other
//! clusters' workers each cluster's workers must reach.

use crate::store::{AppRow, ServiceRow, Store};
use grove_proto::msg::{self, ClusterId, InstanceRef};
use std::collections::{HashMap, HashSet};

/// A change of the service directory.
#[derive(Debug, Clone)]
pub enum DirectoryUpdate {
    /// A service's instances or addresses changed.
    Service(String),
    /// A service was deleted: its full name and service IPs.
    Removed(String, Vec<std::net::IpAddr>),
}

/// An IPv6 address as the store keeps it (text), as the wire carries it.
pub(super) fn v6(text: Option<&str>) -> Option<[u8; 16]> {
    text?.parse::<std::net::Ipv6Addr>().ok().map(|a| a.octets())
}

/// The directory entry of a service: its addresses and where each instance runs.
pub fn entry_for(db: &Store, app: &AppRow, s: &ServiceRow) -> msg::ServiceEntry {
    let instances = db.instances(Some(&s.id)).unwrap_or_default();
    msg::ServiceEntry {
        name: format!("{}.{}.{}.{}", app.name, app.namespace, s.name, s.namespace),
        service: s.id.clone(),
        rr_ip: Some(s.rr_ip),
        closest_ip: Some(s.closest_ip),
        instances: instances
            .iter()
            .filter_map(|i| {
                Some(msg::InstanceEndpoint {
                    instance: InstanceRef {
                        service: s.id.clone(),
                        instance: i.number,
                    },
                    ip: i.ip?,
                    ip6: v6(i.ip6.as_deref()),
                    worker: i.node.clone().unwrap_or_default(),
                    cluster: ClusterId(i.cluster?),
                    state: msg::InstanceState::from_name(&i.status),
                    addr: i.addr,
                    addr6: v6(i.addr6.as_deref()),
                    // Coordinates are each cluster's own: another cluster's mean nothing.
                    coord: None,
                })
            })
            .collect(),
        rr_ip6: v6(s.rr_ip_v6.as_deref()),
        closest_ip6: v6(s.closest_ip_v6.as_deref()),
    }
}

/// The entry that tells observers a service is gone.
pub fn removed_entry(name: String) -> msg::ServiceEntry {
    msg::ServiceEntry {
        name,
        service: String::new(),
        rr_ip: None,
        closest_ip: None,
        instances: vec![],
        rr_ip6: None,
        closest_ip6: None,
    }
}

/// The cross-cluster part of the overlay as the root sees it: which workers each
/// cluster has, which services each cluster's workers asked the directory for (its
/// interest, held while it observes the entry), and from that which other clusters'
/// workers each cluster's overlay must reach: those hosting a service it is
/// interested in, and those interested in a service it hosts (the way back).
#[derive(Debug, Default)]
pub struct ClusterPeering {
    workers: HashMap<u32, Vec<msg::NodePeer>>,
    interest: HashSet<(u32, String)>,
    sent: HashMap<u32, Vec<msg::NodePeer>>,
}

impl ClusterPeering {
    /// The other clusters' workers cluster `cluster` was last told to reach.
    pub fn peers_of(&self, cluster: u32) -> Vec<msg::NodePeer> {
        self.sent.get(&cluster).cloned().unwrap_or_default()
    }

    /// Cluster `asker` observes service `service` (or stopped): whether that changed
    /// its interest.
    pub fn observe(&mut self, asker: u32, service: String, observing: bool) -> bool {
        if observing {
            self.interest.insert((asker, service))
        } else {
            self.interest.remove(&(asker, service))
        }
    }

    /// Cluster `cluster` reported its workers: whether they changed.
    pub fn workers(&mut self, cluster: u32, workers: Vec<msg::NodePeer>) -> bool {
        self.workers.get(&cluster) != Some(&workers) && {
            self.workers.insert(cluster, workers);
            true
        }
    }

    /// Every (cluster, service) interest.
    pub fn interest(&self) -> Vec<(u32, String)> {
        self.interest.iter().cloned().collect()
    }

    /// Recompute what each cluster must reach, given the clusters hosting each
    /// interest's service (as [`hosts_of`] finds them); returns the clusters whose set
    /// changed.
    pub fn recompute(&mut self, hosts: &[(u32, HashSet<u32>)]) -> Vec<u32> {
        let mut clusters: Vec<u32> = self
            .workers
            .keys()
            .chain(self.sent.keys())
            .copied()
            .collect();
        clusters.sort_unstable();
        clusters.dedup();
        let mut changed = Vec::new();
        for c in clusters {
            let mut related: Vec<u32> = Vec::new();
            for (asker, h) in hosts {
                if *asker == c {
                    related.extend(h.iter().filter(|d| **d != c));
                } else if h.contains(&c) {
                    related.push(*asker);
                }
            }
            related.sort_unstable();
            related.dedup();
            let mut peers: Vec<msg::NodePeer> = related
                .iter()
                .flat_map(|d| self.workers.get(d).cloned().unwrap_or_default())
                .collect();
            peers.sort_by(|a, b| a.underlay.cmp(&b.underlay));
            if self
                .sent
                .get(&c)
                .map_or(!peers.is_empty(), |old| *old != peers)
            {
                self.sent.insert(c, peers);
                changed.push(c);
            }
        }
        changed
    }
}

/// For each interest, the clusters where its service has a RUNNING instance.
pub fn hosts_of(db: &Store, interest: &[(u32, String)]) -> Vec<(u32, HashSet<u32>)> {
    interest
        .iter()
        .map(|(asker, service)| {
            let h = db
                .instances(Some(service))
                .unwrap_or_default()
                .iter()
                .filter(|i| msg::InstanceState::from_name(&i.status) == msg::InstanceState::Running)
                .filter_map(|i| i.cluster)
                .collect();
            (*asker, h)
        })
        .collect()
}
