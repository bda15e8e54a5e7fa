//! The cluster's side of its root link: `proto`'s lower half ([`LowerLink`]) with the
//! cluster as its tier. Join (or resume with the stored registration), observe
//! `/v1/clusters/{id}/commands`, a report every 5 s carrying the capacity when it
//! changed and every 30 s, status changes at once (numbered, until acknowledged),
//! and a new key when the root asks for one.

use super::{Cluster, RootLink, asked};
use grove_proto::coap::driver::Handle;
use grove_proto::coap::{ContextKey, LinkParams, Response};
use grove_proto::link::OsRandom;
use grove_proto::link::lower::LowerConfig;
use grove_proto::link::shell::{self, Followed, LowerLink, LowerPaths, LowerTier};
use grove_proto::link::upper::ChangeMark;
use grove_proto::msg::{
    self, Capacity, ClusterCommands, ClusterId, ClusterRegistered, ClusterReport, InstanceStatus,
    RegisterCluster,
};
use grove_proto::oscore::SecurityContext;
use grove_proto::paths;
use grove_proto::util::parse_join_token;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often an observation of the root is registered again.
pub const OBSERVE_REFRESH: Duration = Duration::from_secs(20);
/// Report period to the root.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// A report carries the capacity at least this often, changed or not.
const FULL_REPORT_EVERY: Duration = Duration::from_secs(30);

/// Why the root link could not start.
#[derive(Debug, thiserror::Error)]
pub enum RootLinkError {
    /// No registration stored and no token to make one.
    #[error(
        "no root credentials yet and no --join-token: create one with POST /api/clusters/token"
    )]
    NoToken,
    /// The token is not `<id hex>.<secret hex>`.
    #[error("--join-token must be <id hex>.<secret hex>")]
    BadToken,
    /// The root refused the join.
    #[error("the root refused the registration: {0}")]
    Join(#[from] shell::JoinError),
    /// The root's answer does not decode.
    #[error("the root's registration answer: {0}")]
    Answer(#[from] msg::DecodeError),
    /// The answer has no credentials.
    #[error("the root sent no credentials")]
    NoCredentials,
    /// The store failed.
    #[error("cannot keep the registration: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A socket or a file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The driver stopped.
    #[error("the root link's driver stopped")]
    Closed,
}

/// Open the root link: a socket of its own (what the root asks of this cluster comes
/// over it), the join or the stored registration, then the link's loop as a task
/// fed with status changes from `changes`.
pub(super) async fn open(
    cl: &Arc<Cluster>,
    s: &super::Settings,
    changes: mpsc::UnboundedReceiver<InstanceStatus>,
) -> Result<(), RootLinkError> {
    // Short exchanges (at most ~10 s): a new attempt follows at once, so a root that
    // comes back is reached within seconds, not after a long back-off.
    let link = LinkParams {
        ack_timeout: Duration::from_secs(1),
        max_retransmit: 2,
        ..LinkParams::default()
    };
    let coap = shell::lower_driver(s.root, link, asked::router(cl)).await?;
    let (id, key) = join_or_resume(cl, s, &coap).await?;
    let _ = cl.root_link.set(RootLink {
        coap: coap.clone(),
        key: key.clone(),
        addr: s.root,
        id,
    });
    let paths = LowerPaths {
        commands: paths::cluster_commands(id),
        status: paths::cluster_status(id),
        rekey: paths::cluster_rekey(id),
    };
    let cfg = LowerConfig {
        heartbeat: REPORT_EVERY,
        refresh: OBSERVE_REFRESH,
        retry_max: Duration::from_secs(2),
        ..LowerConfig::default()
    };
    let link = LowerLink::new(coap, s.root, key, paths, cfg, &mut OsRandom);
    let tier = RootSide {
        cl: cl.clone(),
        id,
        last_capacity: None,
        last_full: Instant::now(),
        last_workers: None,
    };
    tokio::spawn(run(link, tier, changes));
    Ok(())
}

async fn run(
    mut link: LowerLink<InstanceStatus>,
    mut tier: RootSide,
    mut changes: mpsc::UnboundedReceiver<InstanceStatus>,
) {
    loop {
        tokio::select! {
            o = link.next() => link.handle(&mut tier, o).await,
            Some(c) = changes.recv() => {
                link.change(c);
                link.handle(&mut tier, shell::Outcome::Due).await;
            }
        }
    }
}

/// The cluster as the lower tier of its root link.
struct RootSide {
    cl: Arc<Cluster>,
    id: ClusterId,
    last_capacity: Option<Vec<Capacity>>,
    last_full: Instant,
    last_workers: Option<Vec<msg::NodePeer>>,
}

impl LowerTier for RootSide {
    type Change = InstanceStatus;
    const KEY_REFUSED: &'static str = "the root refuses this cluster's key (evicted?): its workers keep running, the root hears nothing; join again with a new join token";

    fn heartbeat(&mut self, seq: u32) -> Vec<u8> {
        // Changes only; the whole again now and then, since reports are
        // non-confirmable and one that carried a change may be lost.
        let full = self.last_full.elapsed() >= FULL_REPORT_EVERY;
        let now = self.cl.capacity();
        let capacity = (self.last_capacity.as_ref() != Some(&now) || full).then(|| {
            self.last_capacity = Some(now.clone());
            now
        });
        let workers_now = self.cl.own_peers();
        let workers = (self.last_workers.as_ref() != Some(&workers_now) || full).then(|| {
            self.last_workers = Some(workers_now.clone());
            workers_now
        });
        if full {
            self.last_full = Instant::now();
        }
        msg::to_cbor(&ClusterReport {
            cluster: self.id,
            seq,
            capacity,
            changes: vec![],
            workers,
            changes_from: None,
        })
    }

    fn report(&mut self, mark: ChangeMark, changes: &[InstanceStatus]) -> Vec<u8> {
        msg::to_cbor(&ClusterReport {
            cluster: self.id,
            seq: 0,
            capacity: None,
            changes: changes.to_vec(),
            workers: None,
            changes_from: Some(mark.to_wire()),
        })
    }

    fn heartbeat_answered(
        &mut self,
        _rtt: Duration,
        answer: &Response,
    ) -> (Option<Option<u64>>, bool) {
        let ack = msg::from_cbor::<msg::ReportAck>(&answer.payload).ok();
        (None, ack.is_some_and(|a| a.rekey))
    }

    async fn commands(
        &mut self,
        payload: &[u8],
        _first: bool,
        newer: &mut (dyn FnMut(u64) -> bool + Send),
    ) -> Followed {
        if let Ok(cmds) = msg::from_cbor::<ClusterCommands>(payload) {
            if newer(cmds.generation) {
                self.cl.apply_root(&cmds).await;
            }
        }
        Followed::Done
    }

    fn take_key(&mut self, creds: msg::Credentials) -> Result<SecurityContext, String> {
        self.cl.take_root_key(creds).map_err(|e| e.to_string())
    }
}

impl Cluster {
    /// Keep the root's new key (stored before it is used: killed now, the cluster
    /// comes back with the old key, still good until the root hears the new one, or
    /// with the new one) and make its context.
    fn take_root_key(&self, creds: msg::Credentials) -> Result<SecurityContext, RootLinkError> {
        let stored = self.db().root_value("registered")?;
        let mut reg: ClusterRegistered = stored
            .and_then(|b| msg::from_cbor(&b).ok())
            .ok_or(RootLinkError::NoCredentials)?;
        reg.credentials = Some(creds.clone());
        self.db()
            .set_root_value("registered", &msg::to_cbor(&reg))?;
        Ok(shell::lower_context(
            creds,
            &self.dir.join("root.oscore-seq"),
        )?)
    }
}

/// The stored registration, or a join with the token of the settings; the block of
/// worker subnets becomes known either way.
async fn join_or_resume(
    cl: &Arc<Cluster>,
    s: &super::Settings,
    c: &Handle,
) -> Result<(ClusterId, ContextKey), RootLinkError> {
    let stored = cl.db().root_value("registered").ok().flatten();
    let reg: ClusterRegistered = match stored.and_then(|b| msg::from_cbor(&b).ok()) {
        Some(r) => r,
        None => {
            let token = s.join_token.as_deref().ok_or(RootLinkError::NoToken)?;
            let (id, secret) = parse_join_token(token).ok_or(RootLinkError::BadToken)?;
            let body = msg::to_cbor(&RegisterCluster {
                version: msg::PROTOCOL_VERSION,
                name: s.name.clone(),
                location: s.location,
                max_workers: s.max_workers,
            });
            let cfg = LowerConfig {
                retry_max: Duration::from_secs(5),
                ..LowerConfig::default()
            };
            let answer = shell::join(
                c,
                s.root,
                (&id, &secret),
                paths::CLUSTERS,
                body,
                cfg,
                &mut OsRandom,
            )
            .await?;
            cl.db().set_root_value("registered", &answer)?;
            msg::from_cbor(&answer)?
        }
    };
    let creds = reg
        .credentials
        .clone()
        .ok_or(RootLinkError::NoCredentials)?;
    {
        let mut b = cl.block.lock().unwrap_or_else(|p| p.into_inner());
        b.0 = reg.subnets.addr;
        if let Some(v6) = reg.subnets_v6 {
            b.1 = v6.addr;
        }
        // How many /26s the block holds (a /18: 256).
        cl.subnets.store(
            1u32 << (26u32.saturating_sub(u32::from(reg.subnets.len)).min(12)),
            Ordering::Relaxed,
        );
    }
    // Workers waiting to join may have their subnets now.
    cl.block_known.send_replace(true);
    let ctx = shell::lower_context(creds, &s.data_dir.join("root.oscore-seq"))?;
    let key = c.add_context(ctx).await.ok_or(RootLinkError::Closed)?;
    tracing::info!(cluster = reg.cluster.0, "joined the root");
    Ok((reg.cluster, key))
}
