//! The command set of a cluster: every instance placed on it, with the spec of the
//! generation it runs, as the cluster observes it.

use super::directory::v6;
use super::placement::spec_microservice;
use crate::sla;
use crate::store::Store;
use grove_proto::msg::{self, ClusterCommands, InstanceRef, InstanceSpec, NodeCommand};

/// The full set of instances cluster `cluster` should run, as command set
/// `generation`, with the other clusters' workers its overlay must reach (`peers`).
pub fn commands_for(
    db: &Store,
    cluster: u32,
    generation: u64,
    peers: Vec<msg::NodePeer>,
) -> ClusterCommands {
    let mut commands = Vec::new();
    for i in db.instances_of_cluster(cluster).unwrap_or_default() {
        let (Ok(s), Some(ip)) = (db.service(&i.service), i.ip) else {
            continue;
        };
        let Ok(app) = db.application(&s.application) else {
            continue;
        };
        // Each instance runs the spec of its generation: old ones keep theirs while a
        // replacement rolls.
        let Ok(spec) = db.spec_of(&s.id, i.generation) else {
            continue;
        };
        let Some(ms) = spec_microservice(&app, &spec) else {
            continue;
        };
        let mut cmd = ms.cmd.clone();
        cmd.extend(ms.args.iter().cloned());
        commands.push(NodeCommand::Deploy(InstanceSpec {
            instance: InstanceRef {
                service: s.id.clone(),
                instance: i.number,
            },
            name: ms.full_name_in(&app.name, &app.namespace),
            image: ms.code.clone(),
            cmd,
            env: ms.environment.clone(),
            memory_mib: ms.memory_mb,
            millicpus: ms.millicpus,
            ports: ms.port.clone(),
            one_shot: ms.one_shot,
            ip: Some(ip),
            nodes: ms.constraints.iter().find_map(|c| match c {
                sla::Constraint::Direct { nodes, .. } if !nodes.is_empty() => Some(nodes.clone()),
                _ => None,
            }),
            geo: ms.constraints.iter().find_map(|c| match c {
                sla::Constraint::Geo {
                    location,
                    threshold_km,
                    ..
                } => Some(msg::GeoConstraint {
                    location: *location,
                    threshold_km: sla::narrow(*threshold_km),
                }),
                _ => None,
            }),
            latency: ms.constraints.iter().find_map(|c| match c {
                sla::Constraint::Latency {
                    location: Some(location),
                    threshold_ms,
                    ..
                } => Some(msg::LatencyConstraint {
                    location: *location,
                    threshold_ms: sla::narrow(*threshold_ms),
                }),
                _ => None,
            }),
            rr_ip: Some(s.rr_ip),
            closest_ip: Some(s.closest_ip),
            ip6: v6(i.ip6.as_deref()),
            rr_ip6: v6(s.rr_ip_v6.as_deref()),
            closest_ip6: v6(s.closest_ip_v6.as_deref()),
            storage_mib: (ms.storage > 0).then(|| u32::try_from(ms.storage).unwrap_or(u32::MAX)),
            stop_grace_s: ms.stop_grace_s,
        }));
    }
    ClusterCommands {
        generation,
        commands,
        peers: Some(peers),
    }
}
