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

/// Cluster (on its root link's socket) and worker: a piece of an instance's log (POST
/// [`crate::msg::LogAsk`], answered with [`crate::msg::LogChunk`]). The root asks the
/// cluster, the cluster its worker: each lower tier answers what its upper tier asks
/// over the socket the lower tier opened, like a notification.
pub const LOGS: &str = "/v1/logs";

/// Cluster (root link): its workers (GET, a list of [`crate::msg::NodeInfo`]).
pub const CLUSTER_NODES: &str = "/v1/cluster/nodes";

/// Cluster (root link): worker join tokens (GET: a list of
/// [`crate::msg::WorkerTokenInfo`]; POST [`crate::msg::WorkerTokenAsk`]: a new one).
pub const CLUSTER_TOKENS: &str = "/v1/cluster/tokens";

/// Cluster (root link): revoke a worker join token (DELETE).
pub fn cluster_token(id: &str) -> String {
    format!("/v1/cluster/tokens/{id}")
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
