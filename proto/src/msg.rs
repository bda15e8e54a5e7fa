//! Every CBOR message exchanged between tiers.
//!
//! Rules of this file: field numbers (`#[n(..)]`) are never renumbered or reused; a new
//! field gets the next free number and must be optional (or have a default) so that an
//! older peer can still decode the message, and unknown fields are ignored when
//! decoding, so either side may be newer. Enum variants are not skipped when unknown:
//! a new kind of [`NodeCommand`] needs a protocol minor version that the sender checks
//! at registration before using it. Structs are CBOR arrays (the position is the
//! field number), which keeps the frequent messages small: a worker heartbeat with no
//! instance change is well under 64 bytes.

use minicbor::{Decode, Encode};

/// Content-Format of every body in this module (RFC 7049 `application/cbor`).
pub const CONTENT_FORMAT_CBOR: u16 = 60;

/// Version of the tier protocol, carried in every registration.
///
/// Peers with the same `major` interoperate; `minor` only adds optional fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct ProtocolVersion {
    /// Incompatible changes bump this.
    #[n(0)]
    pub major: u16,
    /// Compatible additions bump this.
    #[n(1)]
    pub minor: u16,
}

/// The version this build speaks.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 0 };

impl ProtocolVersion {
    /// Whether a peer speaking `other` can talk to us.
    pub fn compatible_with(self, other: ProtocolVersion) -> bool {
        self.major == other.major
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A worker's id, assigned by its cluster at registration (unique within the cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
#[cbor(transparent)]
pub struct NodeId(#[n(0)] pub u32);

/// A cluster's id, assigned by the root at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
#[cbor(transparent)]
pub struct ClusterId(#[n(0)] pub u32);

/// A service instance: the service's id at the root and the instance number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct InstanceRef {
    /// The service id (Oakestra's `microserviceID`, a 24-hex-digit string).
    #[n(0)]
    pub service: String,
    /// The instance number within the service.
    #[n(1)]
    pub instance: u32,
}

/// A point on Earth, in degrees (WGS 84).
#[derive(Debug, Clone, Copy, PartialEq, Encode, Decode)]
pub struct GeoPoint {
    /// Latitude, -90..=90.
    #[n(0)]
    pub lat: f32,
    /// Longitude, -180..=180.
    #[n(1)]
    pub lon: f32,
}

/// A network coordinate (Vivaldi-style, milliseconds) used for latency placement.
#[derive(Debug, Clone, Copy, PartialEq, Encode, Decode)]
#[cbor(transparent)]
pub struct NetCoord(#[n(0)] pub [f32; 3]);

/// An IPv4 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Ipv4Prefix {
    /// Network address, host byte order.
    #[n(0)]
    pub addr: u32,
    /// Prefix length.
    #[n(1)]
    pub len: u8,
}

/// An IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Ipv6Prefix {
    /// Network address, big-endian octets.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub addr: [u8; 16],
    /// Prefix length.
    #[n(1)]
    pub len: u8,
}

/// Timing a lower tier must follow, sent by the upper tier at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Timing {
    /// Heartbeat (or report) period in milliseconds.
    #[n(0)]
    pub heartbeat_ms: u32,
    /// Missed heartbeats after which the peer is declared lost.
    #[n(1)]
    pub missed_before_lost: u8,
}

/// The long-term OSCORE credentials handed to a peer in its registration response.
///
/// The joining peer's registration was protected with a context derived from its join
/// token; this response (protected the same way) carries the secret both sides use
/// from then on. The ids are OSCORE sender/recipient ids as seen by the joining peer.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Credentials {
    /// OSCORE master secret, 32 random bytes.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub master_secret: Vec<u8>,
    /// OSCORE master salt.
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub master_salt: Vec<u8>,
    /// The joining peer's sender id (the upper tier's recipient id for it).
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    pub sender_id: Vec<u8>,
    /// The upper tier's sender id.
    #[n(3)]
    #[cbor(with = "minicbor::bytes")]
    pub recipient_id: Vec<u8>,
}

/// Worker → cluster, `POST /v1/nodes`: register (or re-register) a worker.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct RegisterNode {
    /// The agent's protocol version.
    #[n(0)]
    pub version: ProtocolVersion,
    /// The worker's name (`--name`, default the hostname); stable across restarts.
    #[n(1)]
    pub name: String,
    /// CPU architecture as Rust names it (`x86_64`, `aarch64`, `arm`).
    #[n(2)]
    pub arch: String,
    /// Logical CPUs.
    #[n(3)]
    pub cpus: u16,
    /// Memory in MiB.
    #[n(4)]
    pub memory_mib: u32,
    /// Disk for images and instances in MiB.
    #[n(5)]
    pub disk_mib: u32,
    /// Virtualizations this worker runs (`container`, ...).
    #[n(6)]
    pub virtualizations: Vec<String>,
    /// Where the worker is, if known.
    #[n(7)]
    pub location: Option<GeoPoint>,
    /// How many instances the worker wants room for (sizes its subnet); default 61.
    #[n(8)]
    pub max_instances: Option<u16>,
    /// The worker's underlay address for VXLAN, as seen by itself.
    #[n(9)]
    pub underlay: Option<String>,
    /// What it gives a service that sets no limits, which limits it cannot enforce,
    /// and which host ports it maps (absent from older agents: no defaults, every
    /// limit enforced, any host port).
    #[n(10)]
    pub limits: Option<WorkerLimits>,
}

/// A worker's resource defaults, the limits its kernel cannot enforce, and the host
/// ports port mappings may use on it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Encode, Decode)]
pub struct WorkerLimits {
    /// Memory of a service that sets none, MiB (0: none).
    #[n(0)]
    pub default_memory_mib: u32,
    /// CPU of a service that sets none, thousandths (0: none).
    #[n(1)]
    pub default_millicpus: u32,
    /// Writable layer of a service that sets no `storage`, MiB (0: none).
    #[n(2)]
    pub default_storage_mib: u32,
    /// Limits this worker cannot enforce (`memory`, `cpu`, `pids`, `storage`): its
    /// kernel lacks the controller, or it has no quota file system.
    #[n(3)]
    pub unenforced: Vec<String>,
    /// The lowest host port it maps.
    #[n(4)]
    pub ports_first: u16,
    /// The highest host port it maps.
    #[n(5)]
    pub ports_last: u16,
    /// Host ports inside that range it never maps (its own).
    #[n(6)]
    pub ports_reserved: Vec<u16>,
}

impl WorkerLimits {
    /// Why host port `port` may not be mapped on this worker, if it may not.
    pub fn refuses_port(&self, port: u16) -> Option<String> {
        if port < self.ports_first || port > self.ports_last {
            Some(format!(
                "host port {port} is outside {}-{}",
                self.ports_first, self.ports_last
            ))
        } else if self.ports_reserved.contains(&port) {
            Some(format!("host port {port} is one of the worker's own"))
        } else {
            None
        }
    }

    /// Whether limit `what` (`memory`, `cpu`, `pids`, `storage`) is enforced.
    pub fn enforces(&self, what: &str) -> bool {
        !self.unenforced.iter().any(|u| u == what)
    }
}

/// Cluster → worker: the answer to [`RegisterNode`].
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct NodeRegistered {
    /// The cluster's protocol version.
    #[n(0)]
    pub version: ProtocolVersion,
    /// The worker's id.
    #[n(1)]
    pub node: NodeId,
    /// The worker's IPv4 instance subnet (bridge takes .1).
    #[n(2)]
    pub subnet_v4: Ipv4Prefix,
    /// The worker's IPv6 instance subnet.
    #[n(3)]
    pub subnet_v6: Ipv6Prefix,
    /// Heartbeat timing.
    #[n(4)]
    pub timing: Timing,
    /// Long-term OSCORE credentials (present when joining with a token).
    #[n(5)]
    pub credentials: Option<Credentials>,
}

/// The status of an instance, Oakestra's names kept verbatim in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
#[cbor(index_only)]
pub enum InstanceState {
    /// Accepted by the root, not yet placed.
    #[n(0)]
    Requested,
    /// Handed to a cluster.
    #[n(1)]
    ClusterScheduled,
    /// Handed to a worker.
    #[n(2)]
    NodeScheduled,
    /// The worker is preparing it (image, rootfs, network).
    #[n(3)]
    Creating,
    /// Created, not yet started.
    #[n(4)]
    Created,
    /// Running.
    #[n(5)]
    Running,
    /// A one-shot instance exited 0.
    #[n(6)]
    Completed,
    /// Exited non-zero.
    #[n(7)]
    Dead,
    /// Lost: its worker or cluster went silent, or it could not be placed.
    #[n(8)]
    Failed,
    /// Removed on request.
    #[n(9)]
    Undeployed,
}

impl InstanceState {
    /// The name used by Oakestra's API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "REQUESTED",
            Self::ClusterScheduled => "CLUSTER_SCHEDULED",
            Self::NodeScheduled => "NODE_SCHEDULED",
            Self::Creating => "CREATING",
            Self::Created => "CREATED",
            Self::Running => "RUNNING",
            Self::Completed => "COMPLETED",
            Self::Dead => "DEAD",
            Self::Failed => "FAILED",
            Self::Undeployed => "UNDEPLOYED",
        }
    }

    /// Every state, in lifecycle order.
    pub const ALL: [Self; 10] = [
        Self::Requested,
        Self::ClusterScheduled,
        Self::NodeScheduled,
        Self::Creating,
        Self::Created,
        Self::Running,
        Self::Completed,
        Self::Dead,
        Self::Failed,
        Self::Undeployed,
    ];

    /// Whether an instance in this state has ended: it runs nowhere and will not run
    /// again (COMPLETED, DEAD, FAILED, UNDEPLOYED).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Dead | Self::Failed | Self::Undeployed
        )
    }

    /// The state with Oakestra's name `name` (anything else is REQUESTED: not yet
    /// anywhere).
    pub fn from_name(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .unwrap_or(Self::Requested)
    }
}

/// A change of one instance's status, sent up at once when it happens.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct InstanceStatus {
    /// Which instance.
    #[n(0)]
    pub instance: InstanceRef,
    /// Its new state.
    #[n(1)]
    pub state: InstanceState,
    /// Why, for failures (Oakestra's reasons, e.g. `NO_WORKER_CAPACITY`), or an exit code.
    #[n(2)]
    pub detail: Option<String>,
    /// The instance's IPv4 address on the overlay, host byte order.
    #[n(3)]
    pub ip: Option<u32>,
    /// The underlay address of the worker running it (its VXLAN endpoint), as the
    /// cluster knows it; set by the cluster when it reports up.
    #[n(4)]
    pub worker: Option<String>,
    /// Its address on the overlay (in its worker's subnet), host byte order: where
    /// traffic for its service and instance IPs is sent.
    #[n(5)]
    pub addr: Option<u32>,
    /// Its IPv6 address on the overlay (set by the cluster when it reports up).
    #[n(6)]
    #[cbor(with = "minicbor::bytes")]
    pub addr6: Option<[u8; 16]>,
}

/// Worker → cluster, non-confirmable `POST /v1/nodes/{id}/status` every 2 s.
///
/// With no instance change this is a minimal liveness message (`changes` empty).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Heartbeat {
    /// The sender.
    #[n(0)]
    pub node: NodeId,
    /// Increases by one per heartbeat; lets the cluster count missed ones.
    #[n(1)]
    pub seq: u32,
    /// CPU use in hundredths of a percent of all CPUs (0..=10000).
    #[n(2)]
    pub cpu_centi_pct: u16,
    /// Memory used, MiB.
    #[n(3)]
    pub mem_used_mib: u32,
    /// Memory total, MiB.
    #[n(4)]
    pub mem_total_mib: u32,
    /// Disk used, MiB.
    #[n(5)]
    pub disk_used_mib: u32,
    /// Disk total, MiB.
    #[n(6)]
    pub disk_total_mib: u32,
    /// Instances running now.
    #[n(7)]
    pub running: u16,
    /// The worker's network coordinate (Vivaldi, from the RTTs of its heartbeats; the
    /// cluster is the anchor at the origin). All zeros until it has measured one.
    #[n(8)]
    pub coord: NetCoord,
    /// First 8 bytes of a SHA-256 over the sorted instance set; a mismatch with the
    /// cluster's view makes the cluster ask for the full list.
    #[n(9)]
    #[cbor(with = "minicbor::bytes")]
    pub digest: [u8; 8],
    /// Status changes not yet acknowledged (normally empty: changes go up at once).
    #[n(10)]
    pub changes: Vec<InstanceStatus>,
    /// Per-instance usage, sent now and then (absent from most heartbeats, which keeps
    /// them small).
    #[n(11)]
    pub instances: Option<Vec<InstanceUsage>>,
    /// The worker's limits as its flags and kernel make them now (the first heartbeats
    /// after a start and one in 150): a restarted agent with other flags, or a kernel
    /// booted without a controller, is placed by what it is now, not at its join.
    #[n(12)]
    pub limits: Option<WorkerLimits>,
    /// The number of the first of `changes` ([`crate::link::upper::ChangeMark`] on
    /// the wire): a batch sent again after a lost acknowledgement is applied once.
    #[n(13)]
    pub changes_from: Option<u64>,
}

/// One instance's use of its worker, from its cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct InstanceUsage {
    /// Which instance.
    #[n(0)]
    pub instance: InstanceRef,
    /// CPU in hundredths of a percent of one CPU since the last report.
    #[n(1)]
    pub cpu_centi_pct: u32,
    /// Memory in use, MiB.
    #[n(2)]
    pub mem_mib: u32,
}

/// What a worker must run: one instance's full specification.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct InstanceSpec {
    /// Which instance.
    #[n(0)]
    pub instance: InstanceRef,
    /// Full service name `app.appns.service.servicens`.
    #[n(1)]
    pub name: String,
    /// Image reference as the SLA gives it.
    #[n(2)]
    pub image: String,
    /// Command override.
    #[n(3)]
    pub cmd: Vec<String>,
    /// `KEY=VALUE` environment entries.
    #[n(4)]
    pub env: Vec<String>,
    /// Memory limit in MiB (0: none).
    #[n(5)]
    pub memory_mib: u32,
    /// CPU limit in thousandths of a CPU (0: none).
    #[n(6)]
    pub millicpus: u32,
    /// Port mappings as the SLA writes them (`host[:container][/tcp|udp]`, `;`-separated).
    #[n(7)]
    pub ports: Option<String>,
    /// Run once; exit 0 is COMPLETED.
    #[n(8)]
    pub one_shot: bool,
    /// The instance IPv4 address, host byte order.
    #[n(9)]
    pub ip: Option<u32>,
    /// Placement: only these workers (the SLA's `direct` node list).
    #[n(10)]
    pub nodes: Option<Vec<String>>,
    /// Placement: within a distance of a location (the SLA's `geo` constraint).
    #[n(11)]
    pub geo: Option<GeoConstraint>,
    /// Placement: within an RTT of a location (the SLA's `latency` constraint).
    #[n(12)]
    pub latency: Option<LatencyConstraint>,
    /// Its service's round-robin IP, host byte order.
    #[n(13)]
    pub rr_ip: Option<u32>,
    /// Its service's closest IP, host byte order.
    #[n(14)]
    pub closest_ip: Option<u32>,
    /// The instance IPv6 address (inside fdff::/21).
    #[n(15)]
    #[cbor(with = "minicbor::bytes")]
    pub ip6: Option<[u8; 16]>,
    /// Its service's round-robin IPv6 (inside fdff:2000::/21).
    #[n(16)]
    #[cbor(with = "minicbor::bytes")]
    pub rr_ip6: Option<[u8; 16]>,
    /// Its service's closest IPv6 (inside fdff:4000::/21).
    #[n(17)]
    #[cbor(with = "minicbor::bytes")]
    pub closest_ip6: Option<[u8; 16]>,
    /// Its writable layer's size, MiB (the SLA's `storage`; none: the worker's
    /// default).
    #[n(18)]
    pub storage_mib: Option<u32>,
    /// Seconds between SIGTERM and SIGKILL when it is stopped (the SLA's
    /// `stop_grace_s`; none: the worker's default, 5 s).
    #[n(19)]
    pub stop_grace_s: Option<u16>,
}

/// A `geo` placement constraint.
#[derive(Debug, Clone, Copy, PartialEq, Encode, Decode)]
pub struct GeoConstraint {
    /// The point.
    #[n(0)]
    pub location: GeoPoint,
    /// Radius in km.
    #[n(1)]
    pub threshold_km: f32,
}

/// A `latency` placement constraint: at most `threshold_ms` from users at `location`.
#[derive(Debug, Clone, Copy, PartialEq, Encode, Decode)]
pub struct LatencyConstraint {
    /// Where the users are.
    #[n(0)]
    pub location: GeoPoint,
    /// Milliseconds.
    #[n(1)]
    pub threshold_ms: f32,
}

/// One command for a worker.
// Nearly every command is a Deploy: boxing it would only add an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum NodeCommand {
    /// Start this instance.
    #[n(0)]
    Deploy(#[n(0)] InstanceSpec),
    /// Stop and remove this instance.
    #[n(1)]
    Undeploy(#[n(0)] InstanceRef),
}

/// Cluster → worker, the observed `/v1/nodes/{id}/commands` resource: the full set of
/// instances the worker should run, versioned. The worker converges to it.
#[derive(Debug, Clone, Default, PartialEq, Encode, Decode)]
pub struct NodeCommands {
    /// Increases with every change of the set.
    #[n(0)]
    pub generation: u64,
    /// What to do, in order.
    #[n(1)]
    pub commands: Vec<NodeCommand>,
    /// The cluster's workers to reach over the overlay (each worker's VXLAN endpoint
    /// and subnets), the receiver among them; absent from senders that do not know.
    #[n(2)]
    pub peers: Option<Vec<NodePeer>>,
    /// The services with instances in this cluster, with their IPs and RUNNING
    /// instances' overlay addresses: every worker holds them before a packet needs them.
    #[n(3)]
    pub services: Option<Vec<ServiceEntry>>,
    /// [`digest_of`] the peers this set stands for. A notification leaves `peers` out
    /// when they did not change since the last one to this worker; a worker whose
    /// peers have another digest missed a change and observes afresh (an
    /// observation's first answer always carries everything).
    #[n(4)]
    #[cbor(with = "minicbor::bytes")]
    pub peers_digest: Option<[u8; 8]>,
    /// [`digest_of`] the services, likewise.
    #[n(5)]
    #[cbor(with = "minicbor::bytes")]
    pub services_digest: Option<[u8; 8]>,
    /// With `peers` left out: the peers are those of digest `peers_base` changed by
    /// `peers_added` and `peers_removed` ([`apply_peers`]), so a worker joining a
    /// cluster of a thousand costs each other one entry, not the whole list. A worker
    /// holding other peers, or ending with another digest, observes afresh.
    #[n(6)]
    #[cbor(with = "minicbor::bytes")]
    pub peers_base: Option<[u8; 8]>,
    /// Peers new or changed since `peers_base`.
    #[n(7)]
    pub peers_added: Option<Vec<NodePeer>>,
    /// Peers gone since `peers_base`.
    #[n(8)]
    pub peers_removed: Option<Vec<PeerKey>>,
}

/// Which peer: its node and underlay address (workers behind one NAT share an
/// address; node ids of different clusters may be equal).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct PeerKey {
    /// Its node id in its cluster.
    #[n(0)]
    pub node: NodeId,
    /// Its underlay address.
    #[n(1)]
    pub underlay: String,
}

impl NodePeer {
    /// Which peer this is.
    pub fn key(&self) -> PeerKey {
        PeerKey {
            node: self.node,
            underlay: self.underlay.clone(),
        }
    }
}

/// Peers in their canonical order (by underlay address, then node): lists of the
/// same peers have the same [`digest_of`].
pub fn sort_peers(peers: &mut [NodePeer]) {
    peers.sort_by(|a, b| (&a.underlay, a.node.0).cmp(&(&b.underlay, b.node.0)));
}

/// Change `held` (in canonical order) by a delta of [`NodeCommands`], in place: a
/// worker of a thousand peers applies a delta every few seconds, so the list is not
/// copied.
pub fn apply_peers(held: &mut Vec<NodePeer>, added: &[NodePeer], removed: &[PeerKey]) {
    let gone: std::collections::HashSet<PeerKey> = removed
        .iter()
        .cloned()
        .chain(added.iter().map(NodePeer::key))
        .collect();
    held.retain(|p| !gone.contains(&p.key()));
    held.extend(added.iter().cloned());
    // Sorted runs with a short tail: the sort merges them.
    sort_peers(held);
}

/// The delta from `old` to `new`: (added or changed, removed).
pub fn peers_delta(old: &[NodePeer], new: &[NodePeer]) -> (Vec<NodePeer>, Vec<PeerKey>) {
    let by = |v: &[NodePeer]| -> std::collections::HashMap<PeerKey, NodePeer> {
        v.iter().map(|p| (p.key(), p.clone())).collect()
    };
    let (was, is) = (by(old), by(new));
    let added = new
        .iter()
        .filter(|p| was.get(&p.key()) != Some(*p))
        .cloned()
        .collect();
    let removed = old
        .iter()
        .map(NodePeer::key)
        .filter(|k| !is.contains_key(k))
        .collect();
    (added, removed)
}

/// First 8 bytes of a SHA-256 over the CBOR of `v`: which version of a list a message
/// stands for.
pub fn digest_of<T: Encode<()>>(v: &T) -> [u8; 8] {
    use sha2::Digest;
    // The encoding goes straight into the hash: no copy of a long list is made.
    struct Hashing(sha2::Sha256);
    impl minicbor::encode::Write for Hashing {
        type Error = core::convert::Infallible;
        fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
            self.0.update(buf);
            Ok(())
        }
    }
    let mut w = Hashing(sha2::Sha256::new());
    let _ = minicbor::encode(v, &mut w);
    let h = w.0.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&h[..8]);
    out
}

/// Cluster → worker: the answer to a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct HeartbeatAck {
    /// The generation of the last command set the cluster gave this worker (in a
    /// notification or an observation's answer); absent when it holds no observation
    /// of the worker's (it restarted). A worker that applied another generation
    /// missed a notification, and observes afresh.
    #[n(0)]
    pub generation: Option<u64>,
    /// The cluster asks for a new key: the worker POSTs to its rekey resource.
    #[n(1)]
    #[cbor(default)]
    pub rekey: bool,
}

/// A worker of the cluster as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct NodePeer {
    /// Which worker.
    #[n(0)]
    pub node: NodeId,
    /// Its underlay address (where its heartbeats come from).
    #[n(1)]
    pub underlay: String,
    /// Its IPv4 subnet.
    #[n(2)]
    pub subnet_v4: Ipv4Prefix,
    /// Its IPv6 subnet.
    #[n(3)]
    pub subnet_v6: Ipv6Prefix,
}

/// Cluster → root, `POST /v1/clusters`: register a cluster.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct RegisterCluster {
    /// The cluster's protocol version.
    #[n(0)]
    pub version: ProtocolVersion,
    /// The cluster's name (`--name`).
    #[n(1)]
    pub name: String,
    /// Where the cluster is.
    #[n(2)]
    pub location: Option<GeoPoint>,
    /// How many workers it expects at most (`--max-workers`): the root sizes its block
    /// of worker subnets to hold them (256 per /18; absent: one /18).
    #[n(3)]
    pub max_workers: Option<u32>,
}

/// Root → cluster: the answer to [`RegisterCluster`].
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ClusterRegistered {
    /// The root's protocol version.
    #[n(0)]
    pub version: ProtocolVersion,
    /// The cluster's id.
    #[n(1)]
    pub cluster: ClusterId,
    /// The block of worker subnets this cluster hands out.
    #[n(2)]
    pub subnets: Ipv4Prefix,
    /// Report timing.
    #[n(3)]
    pub timing: Timing,
    /// Long-term OSCORE credentials (present when joining with a token).
    #[n(4)]
    pub credentials: Option<Credentials>,
    /// The block of IPv6 worker subnets (/120s) this cluster hands out.
    #[n(5)]
    pub subnets_v6: Option<Ipv6Prefix>,
}

/// Capacity of one class of workers (an architecture and virtualization).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Capacity {
    /// Architecture.
    #[n(0)]
    pub arch: String,
    /// Virtualization.
    #[n(1)]
    pub virtualization: String,
    /// Active workers of this class.
    #[n(2)]
    pub nodes: u32,
    /// Free CPUs summed, in thousandths.
    #[n(3)]
    pub free_millicpus: u64,
    /// Free memory summed, MiB.
    #[n(4)]
    pub free_memory_mib: u64,
    /// The largest free CPU on one worker, in thousandths (the spread).
    #[n(5)]
    pub max_free_millicpus: u32,
    /// The largest free memory on one worker, MiB.
    #[n(6)]
    pub max_free_memory_mib: u32,
    /// Free GPUs summed (absent from older clusters: none).
    #[n(7)]
    pub free_vgpus: Option<u32>,
    /// The most free GPUs on one worker.
    #[n(8)]
    pub max_free_vgpus: Option<u32>,
}

/// Root → cluster: the answer to a [`ClusterReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct ReportAck {
    /// The root asks for a new key: the cluster POSTs to its rekey resource.
    #[n(0)]
    #[cbor(default)]
    pub rekey: bool,
}

/// Cluster → root, non-confirmable `POST /v1/clusters/{id}/status` every 5 s.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ClusterReport {
    /// The sender.
    #[n(0)]
    pub cluster: ClusterId,
    /// Increases by one per report.
    #[n(1)]
    pub seq: u32,
    /// Capacity per class: `None` when unchanged since the last report that carried
    /// it; `Some` of an empty list when no worker is active.
    #[n(2)]
    pub capacity: Option<Vec<Capacity>>,
    /// Status changes of instances.
    #[n(3)]
    pub changes: Vec<InstanceStatus>,
    /// The cluster's active workers as the overlay needs them (for other clusters
    /// whose workers talk to its instances): `None` when unchanged since the last
    /// report that carried them.
    #[n(4)]
    pub workers: Option<Vec<NodePeer>>,
    /// The number of the first of `changes` ([`crate::link::upper::ChangeMark`] on
    /// the wire): a batch sent again after a lost acknowledgement is applied once.
    #[n(5)]
    pub changes_from: Option<u64>,
}

/// Root → cluster, the observed `/v1/clusters/{id}/commands` resource.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ClusterCommands {
    /// Increases with every change.
    #[n(0)]
    pub generation: u64,
    /// Instances to place in this cluster (Deploy) or remove from it (Undeploy).
    #[n(1)]
    pub commands: Vec<NodeCommand>,
    /// Workers of other clusters this cluster's workers exchange traffic with (they
    /// host instances this cluster asked the directory for, or asked for instances
    /// this cluster hosts): its workers' overlay reaches them too.
    #[n(2)]
    pub peers: Option<Vec<NodePeer>>,
}

/// Upper tier → lower tier, `POST /v1/logs` ([`crate::paths::LOGS`]): a piece of an
/// instance's log. The root asks the cluster hosting the instance, which asks the
/// worker hosting it with the same body; the answer is a [`LogChunk`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LogAsk {
    /// Whose log.
    #[n(0)]
    pub instance: InstanceRef,
    /// From this byte offset of the log on (following it); `None`: its last `tail`
    /// bytes.
    #[n(1)]
    pub from: Option<u64>,
    /// How many bytes at most.
    #[n(2)]
    pub max: u32,
}

/// The answer to a [`LogAsk`]: a piece of an instance's log, read by its worker.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LogChunk {
    /// Whose log.
    #[n(0)]
    pub instance: InstanceRef,
    /// Byte offset of `data` in the log (the log restarts at 0 when its older half is
    /// cut off, past 1 MiB).
    #[n(1)]
    pub offset: u64,
    /// Log bytes.
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    pub data: Vec<u8>,
    /// `data` reaches the end of the log as it is now.
    #[n(3)]
    pub eof: bool,
}

/// Root → cluster, the answer of `GET /v1/cluster/nodes`: the cluster's workers as a
/// user lists them.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct NodeInfo {
    /// Its id.
    #[n(0)]
    pub id: NodeId,
    /// Its name.
    #[n(1)]
    pub name: String,
    /// CPU architecture.
    #[n(2)]
    pub arch: String,
    /// Logical CPUs.
    #[n(3)]
    pub cpus: u32,
    /// Memory, MiB.
    #[n(4)]
    pub memory_mib: u32,
    /// Heard from within the loss timeout.
    #[n(5)]
    pub active: bool,
    /// Milliseconds since its last heartbeat (`None`: not heard since the cluster
    /// started).
    #[n(6)]
    pub last_seen_ms: Option<u64>,
    /// CPU in use by its last heartbeat, hundredths of a percent of the whole machine.
    #[n(7)]
    pub cpu_centi_pct: Option<u16>,
    /// The machine's memory in use by its last heartbeat, MiB (of `mem_total_mib`;
    /// `memory_mib` is what the worker offers).
    #[n(8)]
    pub mem_used_mib: Option<u32>,
    /// Instances placed on it and not ended.
    #[n(9)]
    pub instances: u32,
    /// Where its heartbeats come from.
    #[n(10)]
    pub underlay: Option<String>,
    /// The generation of its key.
    #[n(11)]
    pub key_generation: u32,
    /// Its virtualizations.
    #[n(12)]
    pub virtualizations: Vec<String>,
    /// The machine's memory by its last heartbeat, MiB.
    #[n(13)]
    pub mem_total_mib: Option<u32>,
}

/// Root → cluster, `POST /v1/cluster/tokens`: a worker join token.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct WorkerTokenAsk {
    /// Valid for this long.
    #[n(0)]
    pub expires_in_secs: u32,
    /// Good for one join only.
    #[n(1)]
    pub single_use: bool,
}

/// A worker join token as the cluster lists it (`GET /v1/cluster/tokens`), or as it
/// made it (`POST`, the only answer that carries the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct WorkerTokenInfo {
    /// Its id (hex).
    #[n(0)]
    pub id: String,
    /// `id.secret`, for `grove-agent --join-token`: only when it was just made.
    #[n(1)]
    pub token: Option<String>,
    /// Unix seconds.
    #[n(2)]
    pub expires_at: i64,
    /// Good for one join only.
    #[n(3)]
    pub single_use: bool,
    /// A worker joined with it.
    #[n(4)]
    pub used: bool,
}

/// Where one instance of a service can be reached.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct InstanceEndpoint {
    /// The instance.
    #[n(0)]
    pub instance: InstanceRef,
    /// Its IPv4 address on the overlay, host byte order.
    #[n(1)]
    pub ip: u32,
    /// Its IPv6 address on the overlay.
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    pub ip6: Option<[u8; 16]>,
    /// The underlay address of the worker hosting it (VXLAN endpoint).
    #[n(3)]
    pub worker: String,
    /// The cluster the worker belongs to.
    #[n(4)]
    pub cluster: ClusterId,
    /// Its state; only RUNNING instances receive traffic.
    #[n(5)]
    pub state: InstanceState,
    /// Its address on the overlay (in its worker's subnet), host byte order.
    #[n(6)]
    pub addr: Option<u32>,
    /// Its IPv6 address on the overlay (in its worker's IPv6 subnet).
    #[n(7)]
    #[cbor(with = "minicbor::bytes")]
    pub addr6: Option<[u8; 16]>,
    /// The network coordinate of the worker hosting it, where its cluster knows one
    /// (workers pick the closest instance by it).
    #[n(8)]
    pub coord: Option<NetCoord>,
}

/// Cluster ↔ root and worker ↔ cluster, `GET /v1/services/{name}` (observable): the
/// service directory entry of one service.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ServiceEntry {
    /// Full name `app.appns.service.servicens`.
    #[n(0)]
    pub name: String,
    /// The service id at the root.
    #[n(1)]
    pub service: String,
    /// Round-robin service IP, host byte order.
    #[n(2)]
    pub rr_ip: Option<u32>,
    /// Closest service IP, host byte order.
    #[n(3)]
    pub closest_ip: Option<u32>,
    /// Its instances.
    #[n(4)]
    pub instances: Vec<InstanceEndpoint>,
    /// Round-robin service IPv6.
    #[n(5)]
    #[cbor(with = "minicbor::bytes")]
    pub rr_ip6: Option<[u8; 16]>,
    /// Closest service IPv6.
    #[n(6)]
    #[cbor(with = "minicbor::bytes")]
    pub closest_ip6: Option<[u8; 16]>,
}

impl ServiceEntry {
    /// Every address the entry answers for: its service IPs and its instances' IPs.
    pub fn addresses(&self) -> Vec<std::net::IpAddr> {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let v4 = [self.rr_ip, self.closest_ip]
            .into_iter()
            .flatten()
            .chain(self.instances.iter().map(|i| i.ip))
            .map(|a| IpAddr::V4(Ipv4Addr::from(a)));
        let v6 = [self.rr_ip6, self.closest_ip6]
            .into_iter()
            .flatten()
            .chain(self.instances.iter().filter_map(|i| i.ip6))
            .map(|a| IpAddr::V6(Ipv6Addr::from(a)));
        v4.chain(v6).collect()
    }
}

/// An instance's IPv6 overlay address: the host of its worker's IPv6 subnet
/// (`subnet6`, `len6`) with the same number as its IPv4 address `addr` has in the IPv4
/// subnet (`subnet`, `len`); none where the IPv6 subnet is too small for that number.
/// Agent and cluster both derive it, so it needs no field of its own on the wire.
pub fn addr6_of(subnet: u32, len: u8, subnet6: [u8; 16], len6: u8, addr: u32) -> Option<[u8; 16]> {
    let host = addr.checked_sub(subnet)?;
    let size4 = 1u64 << (32 - u32::from(len.min(32)));
    let size6 = 1u128
        .checked_shl(128 - u32::from(len6.min(128)))
        .unwrap_or(u128::MAX);
    if u64::from(host) >= size4 || u128::from(host) >= size6 {
        return None;
    }
    Some((u128::from_be_bytes(subnet6) + u128::from(host)).to_be_bytes())
}

/// A generation number for full-state command sets: milliseconds since the epoch (so
/// it also grows across restarts), strictly increasing within a process.
pub fn next_generation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// The diagnostic body of an error response (4.xx/5.xx), also readable as text by
/// tools that do not speak CBOR: it is sent as a plain UTF-8 payload.
pub fn diagnostic(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// Encode a message to CBOR.
pub fn to_cbor<T: Encode<()>>(msg: &T) -> Vec<u8> {
    // Writing into a Vec cannot fail.
    minicbor::to_vec(msg).unwrap_or_default()
}

/// Decode a message from CBOR, naming the type in the error.
pub fn from_cbor<'b, T: Decode<'b, ()>>(bytes: &'b [u8]) -> Result<T, DecodeError> {
    minicbor::decode(bytes).map_err(|e| DecodeError {
        what: std::any::type_name::<T>(),
        reason: e.to_string(),
    })
}

/// A body that is not the CBOR message it should be.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {reason}")]
pub struct DecodeError {
    /// The expected message type.
    pub what: &'static str,
    /// What the decoder said.
    pub reason: String,
}

/// Check a registering peer's version; `Err` carries the diagnostic to send with 4.06.
pub fn check_version(peer: ProtocolVersion) -> Result<(), String> {
    if PROTOCOL_VERSION.compatible_with(peer) {
        Ok(())
    } else {
        Err(format!(
            "incompatible protocol version {peer}: this peer speaks {PROTOCOL_VERSION}; \
             upgrade the older side"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_heartbeat() -> Heartbeat {
        Heartbeat {
            node: NodeId(4117),
            seq: 123_456,
            cpu_centi_pct: 4_250,
            mem_used_mib: 1_900,
            mem_total_mib: 3_800,
            disk_used_mib: 14_500,
            disk_total_mib: 29_000,
            running: 12,
            coord: NetCoord([12.5, -3.25, 40.75]),
            digest: [0x9a, 0x11, 0x2c, 0x07, 0xee, 0x41, 0x00, 0xfe],
            changes: Vec::new(),
            instances: None,
            limits: None,
            changes_from: None,
        }
    }

    #[test]
    fn idle_heartbeat_of_a_four_cpu_node_fits_in_64_bytes() {
        let bytes = to_cbor(&idle_heartbeat());
        assert!(bytes.len() <= 64, "heartbeat is {} bytes", bytes.len());
        let back: Heartbeat = from_cbor(&bytes).expect("decodes");
        assert_eq!(back, idle_heartbeat());
    }

    #[test]
    fn a_newer_peer_s_extra_fields_are_ignored() {
        // A heartbeat from a future minor version with one more trailing field.
        let mut e = minicbor::Encoder::new(Vec::new());
        let hb = idle_heartbeat();
        e.array(15).unwrap();
        e.u32(hb.node.0)
            .unwrap()
            .u32(hb.seq)
            .unwrap()
            .u16(hb.cpu_centi_pct)
            .unwrap();
        e.u32(hb.mem_used_mib)
            .unwrap()
            .u32(hb.mem_total_mib)
            .unwrap();
        e.u32(hb.disk_used_mib)
            .unwrap()
            .u32(hb.disk_total_mib)
            .unwrap();
        e.u16(hb.running).unwrap();
        e.encode(hb.coord).unwrap();
        e.bytes(&hb.digest).unwrap();
        e.array(0).unwrap();
        e.null().unwrap();
        e.null().unwrap();
        e.null().unwrap();
        e.str("a field from the future").unwrap();
        let back: Heartbeat = from_cbor(e.writer()).expect("extra field is skipped");
        assert_eq!(back, hb);
    }

    #[test]
    fn garbage_is_a_named_decode_error() {
        let err = from_cbor::<RegisterNode>(&[0xff, 0x00]).unwrap_err();
        assert!(err.to_string().contains("RegisterNode"), "{err}");
    }

    #[test]
    fn incompatible_major_version_is_refused_with_both_versions_named() {
        assert!(check_version(ProtocolVersion { major: 1, minor: 7 }).is_ok());
        let msg = check_version(ProtocolVersion { major: 2, minor: 0 }).unwrap_err();
        assert!(msg.contains("2.0") && msg.contains("1.0"), "{msg}");
    }

    #[test]
    fn an_ipv6_address_has_the_host_number_of_its_ipv4_one() {
        let v6 = [0xfc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        // 10.18.0.66 is host 2 of 10.18.0.64/26: fc00::102 in fc00::100/120.
        let mut want = v6;
        want[15] = 2;
        assert_eq!(addr6_of(0x0a12_0040, 26, v6, 120, 0x0a12_0042), Some(want));
        // Outside the IPv4 subnet, or a number the IPv6 subnet has no room for: none.
        assert_eq!(addr6_of(0x0a12_0040, 26, v6, 120, 0x0a12_0082), None);
        assert_eq!(addr6_of(0x0a12_0000, 22, v6, 120, 0x0a12_0300), None);
        assert_eq!(addr6_of(0x0a12_0040, 26, v6, 120, 0x0a12_0000), None);
    }

    #[test]
    fn directory_and_log_messages_round_trip() {
        let e = ServiceEntry {
            name: "clientsrvr.test.nginx.test".into(),
            service: "65f1a0c0e4b0a1b2c3d4e5f7".into(),
            rr_ip: Some(0x0a1e_1e1e),
            closest_ip: None,
            instances: vec![InstanceEndpoint {
                instance: InstanceRef {
                    service: "65f1a0c0e4b0a1b2c3d4e5f7".into(),
                    instance: 0,
                },
                ip: 0x0a12_0002,
                ip6: Some([0xfd, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
                worker: "192.0.2.10".into(),
                cluster: ClusterId(1),
                state: InstanceState::Running,
                addr: Some(0x0a12_0042),
                addr6: Some([0xfc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42]),
                coord: Some(NetCoord([1.5, -2.0, 0.25])),
            }],
            rr_ip6: Some([0xfd, 0xff, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            closest_ip6: None,
        };
        assert_eq!(from_cbor::<ServiceEntry>(&to_cbor(&e)).unwrap(), e);
        let a = LogAsk {
            instance: InstanceRef {
                service: "s".into(),
                instance: 1,
            },
            from: Some(7),
            max: 100,
        };
        assert_eq!(from_cbor::<LogAsk>(&to_cbor(&a)).unwrap(), a);
        let l = LogChunk {
            instance: e.instances[0].instance.clone(),
            offset: 7,
            data: b"GET /".to_vec(),
            eof: false,
        };
        assert_eq!(from_cbor::<LogChunk>(&to_cbor(&l)).unwrap(), l);
    }

    #[test]
    fn an_instance_spec_from_before_the_constraints_still_decodes() {
        // Ten fields, as version 1.0 peers sent it before fields 10..=12 existed.
        let mut e = minicbor::Encoder::new(Vec::new());
        e.array(10).unwrap();
        e.encode(InstanceRef {
            service: "s".into(),
            instance: 0,
        })
        .unwrap();
        e.str("a.b.c.d").unwrap().str("busybox").unwrap();
        e.array(0).unwrap().array(0).unwrap();
        e.u32(64)
            .unwrap()
            .u32(100)
            .unwrap()
            .null()
            .unwrap()
            .bool(false)
            .unwrap()
            .null()
            .unwrap();
        let spec: InstanceSpec = from_cbor(e.writer()).expect("old spec decodes");
        assert_eq!((spec.nodes, spec.geo, spec.latency), (None, None, None));
    }

    #[test]
    fn a_peers_delta_applied_gives_the_new_list_and_its_digest() {
        let peer = |n: u32, at: &str, sub: u32| NodePeer {
            node: NodeId(n),
            underlay: at.into(),
            subnet_v4: Ipv4Prefix { addr: sub, len: 26 },
            subnet_v6: Ipv6Prefix {
                addr: [0; 16],
                len: 120,
            },
        };
        // Nodes 5 and 6 share an address (behind one NAT): still two peers.
        let mut old = vec![
            peer(1, "10.0.0.1", 0),
            peer(2, "10.0.0.2", 64),
            peer(3, "10.0.0.3", 128),
            peer(5, "10.0.0.9", 320),
        ];
        let mut new = vec![
            peer(4, "10.0.0.4", 192),
            peer(1, "10.0.0.1", 0),
            peer(3, "10.0.0.3", 256),
            peer(5, "10.0.0.9", 320),
            peer(6, "10.0.0.9", 384),
        ];
        sort_peers(&mut old);
        sort_peers(&mut new);
        let (added, removed) = peers_delta(&old, &new);
        assert_eq!(added.len(), 3, "the new ones and the changed one");
        assert_eq!(removed, [old[1].key()]);
        let mut got = old.clone();
        apply_peers(&mut got, &added, &removed);
        assert_eq!(got, new);
        assert_eq!(digest_of(&got), digest_of(&new));
        assert_ne!(digest_of(&old), digest_of(&new));
    }

    #[test]
    fn commands_round_trip() {
        let cmds = NodeCommands {
            generation: 7,
            commands: vec![
                NodeCommand::Deploy(InstanceSpec {
                    instance: InstanceRef {
                        service: "65f1a0c0e4b0a1b2c3d4e5f6".into(),
                        instance: 0,
                    },
                    name: "clientsrvr.test.curl.test".into(),
                    image: "docker.io/curlimages/curl:7.82.0".into(),
                    cmd: vec!["sh".into(), "-c".into(), "curl 10.30.30.30:9080".into()],
                    env: vec![],
                    memory_mib: 100,
                    millicpus: 1000,
                    ports: Some("9080".into()),
                    one_shot: false,
                    ip: Some(0x0a1e_0002),
                    nodes: Some(vec!["pi-1".into()]),
                    geo: Some(GeoConstraint {
                        location: GeoPoint {
                            lat: 48.1,
                            lon: 11.6,
                        },
                        threshold_km: 20.0,
                    }),
                    latency: None,
                    rr_ip: None,
                    closest_ip: None,
                    ip6: Some([0xfd, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
                    rr_ip6: None,
                    closest_ip6: None,
                    storage_mib: None,
                    stop_grace_s: None,
                }),
                NodeCommand::Undeploy(InstanceRef {
                    service: "x".into(),
                    instance: 3,
                }),
            ],
            peers: None,
            services: None,
            peers_digest: Some([1; 8]),
            services_digest: None,
            ..Default::default()
        };
        let back: NodeCommands = from_cbor(&to_cbor(&cmds)).expect("decodes");
        assert_eq!(back, cmds);
    }
}
