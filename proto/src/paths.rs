//! CoAP resource paths of each tier: the one place both sides take them from.

/// Discovery (RFC 6690); the only resource answered without OSCORE in the daemons.
pub const WELL_KNOWN_CORE: &str = "/.well-known/core";

/// Cluster: register a worker (POST, [`crate::msg::RegisterNode`]).
pub const NODES: &str = "/v1/nodes";

/// Cluster: a worker's heartbeat (POST, non-confirmable, [`crate::msg::Heartbeat`]).
pub fn node_status(node: crate::msg::NodeId) -> String {
    format!("/v1/nodes/{}/status", node.0)
}

/// Cluster: the commands a worker observes (GET + Observe, [`crate::msg::NodeCommands`]).
pub fn node_commands(node: crate::msg::NodeId) -> String {
    format!("/v1/nodes/{}/commands", node.0)
}

/// Cluster: a new key for the worker (POST under its current key; the answer is
/// [`crate::msg::Credentials`]).
pub fn node_rekey(node: crate::msg::NodeId) -> String {
    format!("/v1/nodes/{}/rekey", node.0)
}

/// Root: register a cluster (POST, [`crate::msg::RegisterCluster`]).
pub const CLUSTERS: &str = "/v1/clusters";

/// Root: a cluster's aggregate report (POST, non-confirmable, [`crate::msg::ClusterReport`]).
pub fn cluster_status(cluster: crate::msg::ClusterId) -> String {
    format!("/v1/clusters/{}/status", cluster.0)
}

/// Root: the commands a cluster observes (GET + Observe, [`crate::msg::ClusterCommands`]).
pub fn cluster_commands(cluster: crate::msg::ClusterId) -> String {
    format!("/v1/clusters/{}/commands", cluster.0)
}

/// Root: a new key for the cluster (POST under its current key; the answer is
/// [`crate::msg::Credentials`]).
pub fn cluster_rekey(cluster: crate::msg::ClusterId) -> String {
    format!("/v1/clusters/{}/rekey", cluster.0)
}

/// Cluster: log chunks a worker sends up on request (POST, [`crate::msg::LogChunk`]).
pub fn node_logs(node: crate::msg::NodeId) -> String {
    format!("/v1/nodes/{}/logs", node.0)
}

/// Cluster and root: the directory entry of a service (GET + Observe,
/// [`crate::msg::ServiceEntry`]); observing is the interest.
pub fn service(name: &str) -> String {
    format!("/v1/services/{name}")
}

/// Root: the directory entry of the service owning an IP (GET + Observe).
pub fn service_by_ip(ip: std::net::IpAddr) -> String {
    format!("/v1/services/by-ip/{ip}")
}
