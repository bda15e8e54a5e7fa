//! The tokio shell of both link halves: the upper half's contexts on a running
//! driver (each peer key's sequence numbers in a file of its own), and the lower
//! half's exchanges run as tasks whose outcomes come back to the tier's loop, so an
//! upper tier that is away never holds the lower one up.

use super::lower::{
    Do, HeartbeatAnswer, JoinOutcome, Lower, LowerConfig, LowerError, ObserveOutcome,
};
use super::upper::{ChangeMark, KeyAction, KeyStore, Upper};
use super::{OsRandom, PeerKey, Random};
use crate::coap::driver::{Handle, Router};
use crate::coap::{
    Code, Config, ContextKey, Endpoint, ExchangeError, LinkParams, Request, Response, SendOptions,
};
use crate::msg::Credentials;
use crate::oscore::{ContextParams, FileContextStore, SecurityContext, join_context};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The upper tier's contexts of its peers: `<dir>/oscore/<prefix>-<id>.seq` holds
/// the sequence numbers of a peer's first key, `<prefix>-<id>-k<generation>.seq` of
/// each later one.
#[derive(Debug, Clone)]
pub struct PeerContexts {
    dir: PathBuf,
    prefix: &'static str,
}

impl PeerContexts {
    /// Contexts of peers called `prefix` (`cluster`, `node`) under the state
    /// directory `dir`.
    pub fn new(dir: &Path, prefix: &'static str) -> Self {
        Self {
            dir: dir.join("oscore"),
            prefix,
        }
    }

    /// Where the sequence numbers of `peer`'s key of `generation` are kept.
    pub fn seq_file(&self, peer: u32, generation: u32) -> PathBuf {
        let name = if generation == 0 {
            format!("{}-{peer}.seq", self.prefix)
        } else {
            format!("{}-{peer}-k{generation}.seq", self.prefix)
        };
        self.dir.join(name)
    }

    /// The endpoint's key of `peer`'s context of `generation`.
    pub fn key(peer: u32, generation: u32) -> ContextKey {
        ContextKey {
            id_context: None,
            recipient_id: crate::util::peer_kid(peer, generation),
        }
    }

    fn context(&self, peer: u32, key: &PeerKey, fresh: bool) -> std::io::Result<SecurityContext> {
        let file = self.seq_file(peer, key.generation);
        if fresh {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        SecurityContext::new(&key.params(peer), Box::new(FileContextStore::new(file)))
    }

    fn forget(&self, peer: u32, generation: u32) {
        let _ = std::fs::remove_file(self.seq_file(peer, generation));
    }

    /// Apply the upper half's actions to an endpoint the caller owns: one not running
    /// yet (at start, before the first datagram is read), or one in a simulation.
    pub fn apply_to_endpoint(&self, ep: &mut Endpoint, actions: Vec<KeyAction>) {
        for a in actions {
            match a {
                KeyAction::AddContext { peer, key, fresh } => match self.context(peer, &key, fresh)
                {
                    Ok(ctx) => {
                        ep.add_context(ctx);
                    }
                    Err(e) => {
                        tracing::error!(peer, generation = key.generation, error = %e, "cannot load a peer's context")
                    }
                },
                KeyAction::RemoveContext { peer, generation } => {
                    ep.remove_context(&Self::key(peer, generation));
                    self.forget(peer, generation);
                }
                KeyAction::AddToken { id, secret } => ep.add_join_token(id, secret),
                KeyAction::RemoveToken { id } => ep.remove_join_token(&id),
            }
        }
    }

    /// Apply the upper half's actions to a running driver, in order.
    pub async fn apply(&self, h: &Handle, actions: Vec<KeyAction>) -> Result<(), std::io::Error> {
        for a in actions {
            match a {
                KeyAction::AddContext { peer, key, fresh } => {
                    let ctx = self.context(peer, &key, fresh)?;
                    h.add_context(ctx).await;
                }
                KeyAction::RemoveContext { peer, generation } => {
                    h.remove_context(Self::key(peer, generation));
                    self.forget(peer, generation);
                }
                KeyAction::AddToken { id, secret } => h.add_join_token(id, secret),
                KeyAction::RemoveToken { id } => h.remove_join_token(id),
            }
        }
        Ok(())
    }
}

/// Why a key exchange or a join failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeFailure {
    /// No answer.
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    /// An answer with an error code.
    #[error("{code} {diagnostic}")]
    Refused {
        /// Its code.
        code: Code,
        /// Its diagnostic payload.
        diagnostic: String,
    },
    /// An answer that does not decode.
    #[error("undecodable answer: {0}")]
    Undecodable(#[from] crate::msg::DecodeError),
}

/// Register with the upper tier at `upper` under the join token (`token_id`,
/// `secret`): `body` POSTed to `path` under the token's context, retried while the
/// upper tier is away or not ready, and while it does not know the token within the
/// patience of `cfg`. The answer's payload on success.
pub async fn join(
    h: &Handle,
    upper: SocketAddr,
    (token_id, secret): (&[u8], &[u8]),
    path: &str,
    body: Vec<u8>,
    cfg: LowerConfig,
    rng: &mut (dyn Random + Send),
) -> Result<Vec<u8>, JoinError> {
    let attempt_id = super::random::<8>(rng);
    let key = h
        .add_context(SecurityContext::in_memory(&join_context(
            token_id,
            secret,
            &attempt_id,
            true,
        )))
        .await
        .ok_or(JoinError::Closed)?;
    let mut lower: Lower<()> = Lower::new(cfg, now(), false, rng);
    loop {
        if let Some(Do::Join) = lower.poll(now()) {
            let r = h
                .request(
                    upper,
                    Request::post_cbor(path, body.clone()),
                    SendOptions::secure(key.clone()),
                )
                .await;
            let outcome = match &r {
                Ok(r) if r.code.is_success() => JoinOutcome::Joined,
                Ok(r) if r.code == Code::SERVICE_UNAVAILABLE => JoinOutcome::NotReady,
                Ok(r) if r.code == Code::UNAUTHORIZED => JoinOutcome::UnknownToken,
                Ok(_) => JoinOutcome::Refused,
                Err(_) => JoinOutcome::Unreachable,
            };
            match (&r, outcome) {
                (Ok(r), JoinOutcome::NotReady | JoinOutcome::UnknownToken) => {
                    tracing::info!(code = %r.code, "the upper tier is not ready for this join yet; retrying")
                }
                (Err(e), _) => {
                    tracing::info!(error = %e, "upper tier not reachable; retrying the join")
                }
                _ => {}
            }
            if let Err(e) = lower.join_answered(now(), outcome) {
                h.remove_context(key);
                let (code, diagnostic) = r
                    .map(|r| (r.code, String::from_utf8_lossy(&r.payload).into_owned()))
                    .unwrap_or((Code::UNAUTHORIZED, String::new()));
                return Err(JoinError::Refused {
                    why: e,
                    code,
                    diagnostic,
                });
            }
            if let (Ok(r), JoinOutcome::Joined) = (r, outcome) {
                h.remove_context(key);
                return Ok(r.payload);
            }
        }
        let wait = lower
            .poll_timeout()
            .map_or(cfg.retry_max, |t| t.saturating_duration_since(now()));
        tokio::time::sleep(wait).await;
    }
}

/// Why a join did not happen.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The upper tier refused it.
    #[error("{why}: {code} {diagnostic}")]
    Refused {
        /// The lower half's verdict.
        why: LowerError,
        /// The last answer's code.
        code: Code,
        /// Its diagnostic.
        diagnostic: String,
    },
    /// The driver stopped.
    #[error("the CoAP driver stopped")]
    Closed,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The lower tier's own driver: a socket of the upper tier's address family on an
/// ephemeral port (the upper tier answers and asks over the link the lower one opens),
/// with `link`'s retransmission and `router` for what the upper tier asks.
pub async fn lower_driver(
    upper: SocketAddr,
    link: LinkParams,
    router: Router,
) -> std::io::Result<Handle> {
    let any = if upper.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = tokio::net::UdpSocket::bind(any).await?;
    let cfg = Config {
        link,
        seed: u64::from_le_bytes(super::random::<8>(&mut OsRandom)),
        ..Config::default()
    };
    Ok(crate::coap::driver::spawn(socket, Endpoint::new(cfg), router)?.0)
}

/// The paths of the lower tier's resources at its upper tier.
#[derive(Debug, Clone)]
pub struct LowerPaths {
    /// The observed command resource.
    pub commands: String,
    /// Where heartbeats and status changes go.
    pub status: String,
    /// Where a new key is asked for.
    pub rekey: String,
}

/// What the tier does for its side of the link.
pub trait LowerTier {
    /// A status change.
    type Change: Clone + Send + 'static;
    /// What the log says (at most once a minute) when the upper tier refuses this
    /// tier's key (4.01 to a heartbeat: evicted), and what the operator can do.
    const KEY_REFUSED: &'static str;
    /// The body of heartbeat `seq` (non-confirmable).
    fn heartbeat(&mut self, seq: u32) -> Vec<u8>;
    /// The body of a report of status changes numbered from `mark`.
    fn report(&mut self, mark: ChangeMark, changes: &[Self::Change]) -> Vec<u8>;
    /// A heartbeat's answer, `rtt` after it left: the command set given (`None` if
    /// this tier's answers do not say) and whether a new key is asked for.
    fn heartbeat_answered(
        &mut self,
        rtt: Duration,
        answer: &Response,
    ) -> (Option<Option<u64>>, bool);
    /// A command set arrived (`first`: with a new observation). `newer` says whether
    /// a set of a generation is newer than what was taken (and takes it).
    fn commands(
        &mut self,
        payload: &[u8],
        first: bool,
        newer: &mut (dyn FnMut(u64) -> bool + Send),
    ) -> impl Future<Output = Followed> + Send;
    /// Keep the new key (before it is used) and make its context.
    fn take_key(&mut self, creds: Credentials) -> Result<SecurityContext, String>;
}

/// What a command set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followed {
    /// Taken (or older, or unreadable, and left).
    Done,
    /// It cannot be followed (a part of it was lost): observe afresh.
    Stale,
}

/// An outcome of an exchange, back in the tier's loop.
#[derive(Debug)]
pub enum Outcome {
    /// Something may be due.
    Due,
    /// An observation (of run `epoch`) was answered.
    Observed(u64, Result<Response, ExchangeError>),
    /// A notification of observation `epoch`.
    Notified(u64, Response),
    /// Observation `epoch` ended.
    Ended(u64),
    /// A heartbeat answer.
    Heartbeat(Instant, Response),
    /// The report on its way was acknowledged (or not).
    Reported(bool),
    /// The key exchange ended.
    Key(Result<Credentials, ExchangeFailure>),
}

/// The lower half on a running driver.
#[derive(Debug)]
pub struct LowerLink<C> {
    lower: Lower<C>,
    h: Handle,
    upper: SocketAddr,
    key: ContextKey,
    paths: LowerPaths,
    tx: mpsc::UnboundedSender<Outcome>,
    rx: mpsc::UnboundedReceiver<Outcome>,
    watch: Option<tokio::task::JoinHandle<()>>,
    epoch: u64,
}

impl<C: Clone + Send + 'static> LowerLink<C> {
    /// A joined lower half speaking to `upper` under `key`.
    pub fn new(
        h: Handle,
        upper: SocketAddr,
        key: ContextKey,
        paths: LowerPaths,
        cfg: LowerConfig,
        rng: &mut dyn Random,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            lower: Lower::new(cfg, now(), true, rng),
            h,
            upper,
            key,
            paths,
            tx,
            rx,
            watch: None,
            epoch: 0,
        }
    }

    /// The key the link speaks under.
    pub fn key(&self) -> &ContextKey {
        &self.key
    }

    /// Queue a status change (it goes up at once, and again until acknowledged).
    pub fn change(&mut self, c: C) {
        self.lower.change(c);
    }

    /// The next outcome, or [`Outcome::Due`] when the lower half has something due.
    pub async fn next(&mut self) -> Outcome {
        let deadline = self.lower.poll_timeout();
        tokio::select! {
            Some(o) = self.rx.recv() => o,
            () = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            } => Outcome::Due,
        }
    }

    /// Take an outcome in, then start what is due.
    pub async fn handle<T: LowerTier<Change = C>>(&mut self, tier: &mut T, o: Outcome) {
        let t = now();
        match o {
            Outcome::Due => {}
            Outcome::Observed(epoch, _) | Outcome::Notified(epoch, _) | Outcome::Ended(epoch)
                if epoch != self.epoch => {}
            Outcome::Observed(_, Ok(r)) if r.code == Code::CONTENT => {
                self.lower.observe_answered(t, ObserveOutcome::Observed);
                self.follow(tier, &r.payload, true).await;
            }
            Outcome::Observed(_, Ok(r)) => {
                tracing::warn!(code = %r.code, "the upper tier refused the observation");
                self.lower.observe_answered(t, ObserveOutcome::Refused);
            }
            Outcome::Observed(_, Err(e)) => {
                tracing::info!(error = %e, "upper tier away; everything keeps running");
                self.lower.observe_answered(t, ObserveOutcome::Unreachable);
            }
            Outcome::Notified(_, r) => self.follow(tier, &r.payload, false).await,
            Outcome::Ended(_) => self.lower.reobserve(t),
            Outcome::Heartbeat(sent, r) => {
                if r.code == Code::UNAUTHORIZED {
                    refused_key(T::KEY_REFUSED);
                } else if r.code.is_success() {
                    let (given, rekey) =
                        tier.heartbeat_answered(t.saturating_duration_since(sent), &r);
                    self.lower
                        .heartbeat_answered(t, HeartbeatAnswer { sent, given, rekey });
                }
            }
            Outcome::Reported(ok) => self.lower.report_answered(t, ok),
            Outcome::Key(r) => {
                let taken = match r.map_err(|e| e.to_string()).and_then(|c| tier.take_key(c)) {
                    Ok(ctx) => {
                        // The same key slot: the old context is replaced.
                        self.h.add_context(ctx).await;
                        tracing::info!("took the new key the upper tier handed out");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "re-key failed; trying again after a later heartbeat");
                        false
                    }
                };
                self.lower.key_answered(now(), taken);
            }
        }
        self.start(tier);
    }

    async fn follow<T: LowerTier<Change = C>>(
        &mut self,
        tier: &mut T,
        payload: &[u8],
        first: bool,
    ) {
        let lower = &mut self.lower;
        let mut newer = |g: u64| lower.commands(g);
        if tier.commands(payload, first, &mut newer).await == Followed::Stale {
            self.lower.reobserve(now());
        }
    }

    fn start<T: LowerTier<Change = C>>(&mut self, tier: &mut T) {
        while let Some(d) = self.lower.poll(now()) {
            let (h, upper, tx) = (self.h.clone(), self.upper, self.tx.clone());
            let opts = SendOptions::secure(self.key.clone());
            match d {
                Do::Join => {}
                Do::Observe => {
                    self.epoch += 1;
                    if let Some(old) = self.watch.take() {
                        old.abort();
                    }
                    let (epoch, req) = (self.epoch, Request::get(&self.paths.commands));
                    self.watch = Some(tokio::spawn(async move {
                        match h.observe(upper, req, opts).await {
                            Ok(mut o) => {
                                let ok = o.first.code == Code::CONTENT;
                                let _ = tx.send(Outcome::Observed(epoch, Ok(o.first.clone())));
                                while let Some(n) = o.notifications.recv().await.filter(|_| ok) {
                                    let _ = tx.send(Outcome::Notified(epoch, n));
                                }
                                if ok {
                                    let _ = tx.send(Outcome::Ended(epoch));
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Outcome::Observed(epoch, Err(e)));
                            }
                        }
                    }));
                }
                Do::Heartbeat { seq } => {
                    let req = Request::post_cbor(&self.paths.status, tier.heartbeat(seq));
                    let opts = SendOptions {
                        non_confirmable: true,
                        ..opts
                    };
                    tokio::spawn(async move {
                        let sent = now();
                        if let Ok(r) = h.request(upper, req, opts).await {
                            let _ = tx.send(Outcome::Heartbeat(sent, r));
                        }
                    });
                }
                Do::Report { mark, changes } => {
                    tracing::debug!(changes = changes.len(), "reporting status changes");
                    let req = Request::post_cbor(&self.paths.status, tier.report(mark, &changes));
                    tokio::spawn(async move {
                        let r = h.request(upper, req, opts).await;
                        let _ =
                            tx.send(Outcome::Reported(matches!(r, Ok(r) if r.code.is_success())));
                    });
                }
                Do::AskKey => {
                    let req = Request::post_cbor(&self.paths.rekey, Vec::new());
                    tokio::spawn(async move {
                        let _ = tx.send(Outcome::Key(ask_new_key(&h, upper, req, opts).await));
                    });
                }
            }
        }
    }
}

impl<C> Drop for LowerLink<C> {
    fn drop(&mut self) {
        if let Some(w) = self.watch.take() {
            w.abort();
        }
    }
}

async fn ask_new_key(
    h: &Handle,
    upper: SocketAddr,
    req: Request,
    opts: SendOptions,
) -> Result<Credentials, ExchangeFailure> {
    let r = h.request(upper, req, opts).await?;
    if !r.code.is_success() {
        return Err(ExchangeFailure::Refused {
            code: r.code,
            diagnostic: String::from_utf8_lossy(&r.payload).into_owned(),
        });
    }
    Ok(crate::msg::from_cbor(&r.payload)?)
}

/// The upper tier answered 4.01: it no longer accepts this peer's key. Said at most
/// once a minute.
fn refused_key(what: &str) {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if crate::util::now_and_then(&LAST, 60) {
        tracing::error!("{what}");
    }
}

/// The lower tier's context from the credentials its upper tier handed out, its
/// sequence numbers kept in `seq_file`.
pub fn lower_context(creds: Credentials, seq_file: &Path) -> std::io::Result<SecurityContext> {
    SecurityContext::new(
        &ContextParams::from(creds),
        Box::new(FileContextStore::new(seq_file)),
    )
}

/// The upper tier's answer to peer `id`'s `POST …/rekey` (its request already heard):
/// its next key, kept as pending in the store `lock` gives before it is handed out
/// (asked again, the same key), with `coap`'s contexts changed to match. `what` names
/// the peer in the log.
pub async fn rekey_answer<S, G>(
    id: u32,
    upper: &std::sync::Mutex<Upper>,
    lock: impl FnOnce() -> G,
    contexts: &PeerContexts,
    coap: &Handle,
    what: &str,
) -> Response
where
    S: KeyStore,
    G: std::ops::DerefMut<Target = S>,
{
    let (creds, actions) = {
        let mut link = upper.lock().unwrap_or_else(|p| p.into_inner());
        let creds = link.rekey(id, &mut *lock(), &mut OsRandom);
        (creds, link.drain_actions())
    };
    let creds = match creds {
        Ok(c) => c,
        Err(e) => return Response::error(Code::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    if let Err(e) = contexts.apply(coap, actions).await {
        return Response::error(Code::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    tracing::info!(peer = id, "new key handed to the {what}");
    Response {
        code: Code::CHANGED,
        ..Response::cbor(crate::msg::to_cbor(&creds))
    }
}
