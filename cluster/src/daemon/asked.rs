//! What the root asks of the cluster, over the link the cluster opened (like the
//! root's notifications): its workers as a user lists them, its worker join tokens,
//! and instances' logs, which the cluster asks of the worker hosting the instance.

use super::{Cluster, ended};
use grove_proto::coap::driver::{Incoming, Router};
use grove_proto::coap::{Code, Method, Request, Response, SendOptions};
use grove_proto::link::shell::PeerContexts;
use grove_proto::msg::{self, LogAsk, NodeId, NodeInfo, WorkerTokenAsk, WorkerTokenInfo};
use grove_proto::paths;
use std::sync::Arc;
use std::time::Duration;

/// How long the cluster waits for a worker's log (its link retransmits meanwhile).
const WORKER_WAIT: Duration = Duration::from_secs(8);

/// The routes of the root link's socket.
pub fn router(cl: &Arc<Cluster>) -> Router {
    let (a, b, c, d) = (cl.clone(), cl.clone(), cl.clone(), cl.clone());
    let e = cl.clone();
    Router::new()
        // Each answer is made in its handler's task, not in the driver's loop.
        .route(Method::Get, paths::CLUSTER_NODES, move |_| {
            let cl = a.clone();
            async move { Response::cbor(msg::to_cbor(&cl.node_infos())) }
        })
        .route(Method::Get, paths::CLUSTER_TOKENS, move |_| {
            let cl = b.clone();
            async move { cl.token_infos() }
        })
        .route(Method::Post, paths::CLUSTER_TOKENS, move |inc| {
            let cl = c.clone();
            async move { cl.new_token(&inc).await }
        })
        .route(Method::Delete, "/v1/cluster/tokens/{id}", move |inc| {
            let cl = d.clone();
            async move { cl.revoke_token(&inc).await }
        })
        .route(Method::Post, paths::LOGS, move |inc| {
            let cl = e.clone();
            async move { cl.worker_log(inc).await }
        })
}

impl Cluster {
    /// Every registered worker, with what its last heartbeat said.
    pub(super) fn node_infos(&self) -> Vec<NodeInfo> {
        let nodes = self.nodes();
        let placed = self.db().instances().unwrap_or_default();
        let live = self.seen();
        nodes
            .iter()
            .map(|n| {
                let l = live.get(&n.id);
                NodeInfo {
                    id: NodeId(n.id),
                    name: n.name.clone(),
                    arch: n.arch.clone(),
                    cpus: n.cpus,
                    memory_mib: n.memory_mib,
                    active: l.is_some_and(|l| !l.lost),
                    last_seen_ms: l.map(|l| {
                        u64::try_from(l.last_seen.elapsed().as_millis()).unwrap_or(u64::MAX)
                    }),
                    cpu_centi_pct: l.and_then(|l| l.usage).map(|u| u.0),
                    mem_used_mib: l.and_then(|l| l.usage).map(|u| u.1),
                    mem_total_mib: l.and_then(|l| l.usage).map(|u| u.2),
                    instances: u32::try_from(
                        placed
                            .iter()
                            .filter(|i| i.node == Some(n.id) && !ended(i.status.as_str()))
                            .count(),
                    )
                    .unwrap_or(u32::MAX),
                    underlay: l.and_then(|l| l.underlay).map(|a| a.to_string()),
                    key_generation: n.key_gen,
                    virtualizations: n.virtualizations.clone(),
                }
            })
            .collect()
    }

    fn token_infos(&self) -> Response {
        let now = crate::store::now_secs();
        match self.db().worker_tokens(now) {
            Ok(rows) => Response::cbor(msg::to_cbor(
                &rows
                    .into_iter()
                    .map(|t| WorkerTokenInfo {
                        id: t.id,
                        token: None,
                        expires_at: t.expires_at,
                        single_use: t.single_use,
                        used: t.used,
                    })
                    .collect::<Vec<_>>(),
            )),
            Err(e) => Response::error(Code::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    async fn new_token(&self, inc: &Incoming) -> Response {
        let ask: WorkerTokenAsk = match msg::from_cbor(&inc.request.payload) {
            Ok(a) => a,
            Err(e) => return Response::error(Code::BAD_REQUEST, &e.to_string()),
        };
        if ask.expires_in_secs == 0 {
            return Response::error(Code::BAD_REQUEST, "expires_in_secs must be positive");
        }
        let ttl = i64::from(ask.expires_in_secs);
        let made = super::make_worker_token(&mut self.db(), ttl, ask.single_use);
        let token = match made {
            Ok(t) => t,
            Err(e) => return Response::error(Code::INTERNAL_SERVER_ERROR, &e),
        };
        // A worker given the token at once may join at once.
        self.sync_keys().await;
        if let Some(h) = self.coap.get() {
            h.settled().await;
        }
        let info = WorkerTokenInfo {
            id: token.split('.').next().unwrap_or_default().to_owned(),
            token: Some(token),
            expires_at: crate::store::now_secs() + ttl,
            single_use: ask.single_use,
            used: false,
        };
        Response {
            code: Code::CREATED,
            ..Response::cbor(msg::to_cbor(&info))
        }
    }

    async fn revoke_token(&self, inc: &Incoming) -> Response {
        let id = inc.param("id").unwrap_or_default().to_owned();
        if let Err(e) = self.db().revoke_worker_token(&id) {
            return Response::error(Code::NOT_FOUND, &format!("token {id}: {e}"));
        }
        self.sync_keys().await;
        if let Some(h) = self.coap.get() {
            h.settled().await;
        }
        Response::new(Code::DELETED)
    }

    /// Ask the worker hosting the instance for its log, and answer what it says.
    async fn worker_log(&self, inc: Incoming) -> Response {
        let ask: LogAsk = match msg::from_cbor(&inc.request.payload) {
            Ok(a) => a,
            Err(e) => return Response::error(Code::BAD_REQUEST, &e.to_string()),
        };
        let (service, number) = (&ask.instance.service, ask.instance.instance);
        // (A follower asks once a second: one row, not the whole table.)
        let node = self.db().instance_node(service, number).unwrap_or_default();
        let Some(node) = node else {
            return Response::error(
                Code::NOT_FOUND,
                &format!("instance {number} of service {service} is on no worker of this cluster"),
            );
        };
        let peer = self.seen().get(&node).and_then(|l| l.peer);
        let generation = self.link().generation(node);
        let (Some(peer), Some(generation), Some(h)) = (peer, generation, self.coap.get()) else {
            return Response::error(
                Code::SERVICE_UNAVAILABLE,
                &format!("worker {node} was not heard from since the cluster started"),
            );
        };
        let req = Request {
            content_format: Some(msg::CONTENT_FORMAT_CBOR),
            payload: inc.request.payload.clone(),
            ..Request::new(Method::Post, paths::LOGS)
        };
        let sent = h.request(
            peer,
            req,
            SendOptions::secure(PeerContexts::key(node, generation)),
        );
        match tokio::time::timeout(WORKER_WAIT, sent).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Response::error(
                Code::GATEWAY_TIMEOUT,
                &format!("worker {node} did not answer: {e}"),
            ),
            Err(_) => Response::error(
                Code::GATEWAY_TIMEOUT,
                &format!(
                    "worker {node} did not answer within {} s",
                    WORKER_WAIT.as_secs()
                ),
            ),
        }
    }
}
