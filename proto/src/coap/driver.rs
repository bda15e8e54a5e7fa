//! A thin tokio driver: one UDP socket, one [`Endpoint`], timers, a router of handlers.
//!
//! The driver task owns the endpoint. Applications talk to it through a cloneable
//! [`Handle`] (`request`, `observe`, `notify`, context management); incoming requests
//! are routed by method and path to async handlers, each run as a tokio task whose
//! response goes back to the endpoint (piggybacked if quick, separate if slow).

use super::{
    ContextKey, Endpoint, Event, ExchangeError, LinkParams, Method, Request, RequestHandle,
    Response, SendOptions, ServerRequestId, Stats,
};
use crate::coap::Code;
use crate::oscore::SecurityContext;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// A request as a handler sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Who sent it.
    pub peer: SocketAddr,
    /// The request.
    pub request: Request,
    /// The OSCORE context that verified it (`None`: unprotected, on an open route).
    pub security: Option<ContextKey>,
    /// Values of `{name}` segments of the route pattern.
    pub params: Vec<(String, String)>,
}

impl Incoming {
    /// The value of a `{name}` path segment.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

type Params = Vec<(String, String)>;
type BoxFuture = Pin<Box<dyn Future<Output = Response> + Send>>;
type HandlerFn = Arc<dyn Fn(Incoming) -> BoxFuture + Send + Sync>;

struct Route {
    method: Method,
    pattern: Vec<String>,
    handler: HandlerFn,
    observable: bool,
    open: bool,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} /{}", self.method, self.pattern.join("/"))
    }
}

/// Routes from method and path pattern (`/v1/nodes/{id}/commands`) to handlers.
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
    fallback: Option<FallbackFn>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.routes)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

type FallbackFn = HandlerFn;

fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Router {
    /// An empty router (only `/.well-known/core` answers).
    pub fn new() -> Self {
        Self::default()
    }

    fn add<F, Fut>(
        mut self,
        method: Method,
        pattern: &str,
        observable: bool,
        open: bool,
        f: F,
    ) -> Self
    where
        F: Fn(Incoming) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let handler: HandlerFn = Arc::new(move |i| Box::pin(f(i)));
        self.routes.push(Route {
            method,
            pattern: segments(pattern),
            handler,
            observable,
            open,
        });
        self
    }

    /// A route reachable only through OSCORE.
    pub fn route<F, Fut>(self, method: Method, pattern: &str, f: F) -> Self
    where
        F: Fn(Incoming) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        self.add(method, pattern, false, false, f)
    }

    /// A GET route whose successful responses accept Observe registrations; notify
    /// observers with [`Handle::notify`].
    pub fn observable<F, Fut>(self, pattern: &str, f: F) -> Self
    where
        F: Fn(Incoming) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        self.add(Method::Get, pattern, true, false, f)
    }

    /// A route answered without OSCORE (test servers; never in the daemons).
    pub fn open_route<F, Fut>(self, method: Method, pattern: &str, observable: bool, f: F) -> Self
    where
        F: Fn(Incoming) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        self.add(method, pattern, observable, true, f)
    }

    /// A handler for every request no route matches (protected by OSCORE like routes).
    pub fn fallback<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Incoming) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        self.fallback = Some(Arc::new(move |i| Box::pin(f(i))));
        self
    }

    fn find(&self, method: Method, path: &str) -> Result<(&Route, Params), Code> {
        let segs = segments(path);
        let mut path_matched = false;
        for r in &self.routes {
            if r.pattern.len() != segs.len() {
                continue;
            }
            let mut params = Vec::new();
            let ok = r.pattern.iter().zip(&segs).all(|(p, s)| {
                if p.starts_with('{') && p.ends_with('}') {
                    params.push((p[1..p.len() - 1].to_owned(), s.clone()));
                    true
                } else {
                    p == s
                }
            });
            if ok {
                path_matched = true;
                if r.method == method {
                    return Ok((r, params));
                }
            }
        }
        Err(if path_matched {
            Code::METHOD_NOT_ALLOWED
        } else {
            Code::NOT_FOUND
        })
    }

    /// The RFC 6690 link-format of the concrete (non-templated) routes.
    pub fn link_format(&self) -> String {
        let mut links: Vec<String> = self
            .routes
            .iter()
            .filter(|r| !r.pattern.iter().any(|s| s.starts_with('{')))
            .map(|r| {
                format!(
                    "</{}>{}",
                    r.pattern.join("/"),
                    if r.observable { ";obs" } else { "" }
                )
            })
            .collect();
        links.dedup();
        links.join(",")
    }

    fn open_paths(&self) -> Vec<String> {
        self.routes
            .iter()
            .filter(|r| r.open && !r.pattern.iter().any(|s| s.starts_with('{')))
            .map(|r| format!("/{}", r.pattern.join("/")))
            .collect()
    }
}

/// An established observation: the first response and a stream of newer ones.
#[derive(Debug)]
pub struct Observation {
    /// The response to the registration.
    pub first: Response,
    /// Later notifications, oldest first; closes when the observation ends.
    pub notifications: mpsc::UnboundedReceiver<Response>,
}

type Reply<T> = oneshot::Sender<T>;

enum Command {
    Request(
        SocketAddr,
        Request,
        SendOptions,
        Reply<Result<Response, ExchangeError>>,
    ),
    Observe(
        SocketAddr,
        Request,
        SendOptions,
        Reply<Result<Observation, ExchangeError>>,
    ),
    Notify(String, Response, Reply<usize>),
    Observers(String, Reply<usize>),
    AddContext(Box<SecurityContext>, Reply<ContextKey>),
    RemoveContext(ContextKey),
    AddJoinToken(Vec<u8>, Vec<u8>),
    RemoveJoinToken(Vec<u8>),
    SetLink(SocketAddr, LinkParams),
    Stats(Reply<Stats>),
    Settled(Reply<()>),
}

/// A cloneable handle to a running driver.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Command>,
    local: SocketAddr,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Handle {
    /// The socket's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).ok()?;
        rx.await.ok()
    }

    /// Send a request and wait for its whole response.
    pub async fn request(
        &self,
        peer: SocketAddr,
        req: Request,
        opts: SendOptions,
    ) -> Result<Response, ExchangeError> {
        self.call(|r| Command::Request(peer, req, opts, r))
            .await
            .unwrap_or(Err(ExchangeError::Closed))
    }

    /// Register an observation (the request gets Observe = 0).
    pub async fn observe(
        &self,
        peer: SocketAddr,
        mut req: Request,
        opts: SendOptions,
    ) -> Result<Observation, ExchangeError> {
        req.observe = Some(0);
        self.call(|r| Command::Observe(peer, req, opts, r))
            .await
            .unwrap_or(Err(ExchangeError::Closed))
    }

    /// How many observe `path`.
    pub async fn observers(&self, path: &str) -> usize {
        self.call(|r| Command::Observers(path.to_owned(), r))
            .await
            .unwrap_or(0)
    }

    /// Notify every observer of `path`; returns how many there are.
    pub async fn notify(&self, path: &str, response: Response) -> usize {
        self.call(|r| Command::Notify(path.to_owned(), response, r))
            .await
            .unwrap_or(0)
    }

    /// Install a security context.
    pub async fn add_context(&self, ctx: SecurityContext) -> Option<ContextKey> {
        self.call(|r| Command::AddContext(Box::new(ctx), r)).await
    }

    /// Remove a security context.
    pub fn remove_context(&self, key: ContextKey) {
        let _ = self.tx.send(Command::RemoveContext(key));
    }

    /// Accept joins with a token.
    pub fn add_join_token(&self, id: Vec<u8>, secret: Vec<u8>) {
        let _ = self.tx.send(Command::AddJoinToken(id, secret));
    }

    /// Stop accepting joins with a token.
    pub fn remove_join_token(&self, id: Vec<u8>) {
        let _ = self.tx.send(Command::RemoveJoinToken(id));
    }

    /// Wait until every command sent before (a context or join token added or
    /// removed) is in effect: datagrams read from then on meet them.
    pub async fn settled(&self) {
        let _ = self.call(Command::Settled).await;
    }

    /// Per-peer transmission parameters.
    pub fn set_link(&self, peer: SocketAddr, params: LinkParams) {
        let _ = self.tx.send(Command::SetLink(peer, params));
    }

    /// The endpoint's counters.
    pub async fn stats(&self) -> Stats {
        self.call(Command::Stats).await.unwrap_or_default()
    }
}

enum Waiter {
    Once(Reply<Result<Response, ExchangeError>>),
    Observe(Reply<Result<Observation, ExchangeError>>),
}

/// Ask for kernel buffers of `bytes` each way on `socket` (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`). For a cluster or root that thousands of peers
/// reach at once: a burst of datagrams waits in the buffer instead of being dropped
/// (the default 208 KiB holds a fraction of a second of ten thousand workers). The
/// memory is only used while datagrams wait.
pub fn widen_buffers(socket: &UdpSocket, bytes: usize) {
    let s = socket2::SockRef::from(socket);
    if let Err(e) = s
        .set_recv_buffer_size(bytes)
        .and_then(|()| s.set_send_buffer_size(bytes))
    {
        tracing::warn!(error = %e, "could not widen the socket's buffers");
    }
}

/// Receive and send buffers of a cluster's or root's socket.
pub const SERVER_BUFFERS: usize = 4 << 20;

/// Start a driver on `socket`; it runs until every [`Handle`] is dropped.
pub fn spawn(
    socket: UdpSocket,
    mut endpoint: Endpoint,
    router: Router,
) -> std::io::Result<(Handle, tokio::task::JoinHandle<()>)> {
    let local = socket.local_addr()?;
    endpoint.set_link_format(router.link_format());
    endpoint.cfg.open_paths.extend(router.open_paths());
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(socket, endpoint, router, rx));
    Ok((Handle { tx, local }, task))
}

async fn run(
    socket: UdpSocket,
    mut ep: Endpoint,
    router: Router,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let (resp_tx, mut responses) = mpsc::unbounded_channel::<(ServerRequestId, Response)>();
    let mut waiters: HashMap<RequestHandle, Waiter> = HashMap::new();
    let mut observations: HashMap<RequestHandle, mpsc::UnboundedSender<Response>> = HashMap::new();
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(t) = ep.poll_transmit() {
            if let Err(e) = socket.send_to(&t.data, t.peer).await {
                tracing::debug!(peer = %t.peer, error = %e, "send failed");
            }
        }
        let mut dispatched = false;
        while let Some(ev) = ep.poll_event() {
            dispatched = true;
            let now = Instant::now();
            match ev {
                Event::Request {
                    id,
                    peer,
                    request,
                    security,
                } => {
                    let target = match router.find(request.method, &request.path) {
                        Ok((route, params)) => {
                            Some((route.handler.clone(), route.observable, params))
                        }
                        Err(code) => match router.fallback.clone() {
                            Some(f) => Some((f, false, Vec::new())),
                            None => {
                                ep.respond(now, id, Response::new(code));
                                None
                            }
                        },
                    };
                    if let Some((h, observable, params)) = target {
                        let tx = resp_tx.clone();
                        let inc = Incoming {
                            peer,
                            request,
                            security,
                            params,
                        };
                        tokio::spawn(async move {
                            // A handler that panics still answers (5.00), so the
                            // request does not stay pending forever.
                            let mut r = tokio::spawn(h(inc)).await.unwrap_or_else(|_| {
                                Response::error(Code::INTERNAL_SERVER_ERROR, "handler failed")
                            });
                            r.observable |= observable;
                            let _ = tx.send((id, r));
                        });
                    }
                }
                Event::Response { handle, response } => match waiters.remove(&handle) {
                    Some(Waiter::Once(tx)) => {
                        let _ = tx.send(Ok(response));
                    }
                    Some(Waiter::Observe(tx)) => {
                        let (ntx, nrx) = mpsc::unbounded_channel();
                        let registered = response.observe.is_some();
                        if tx
                            .send(Ok(Observation {
                                first: response,
                                notifications: nrx,
                            }))
                            .is_ok()
                            && registered
                        {
                            observations.insert(handle, ntx);
                        } else {
                            ep.cancel(now, handle);
                        }
                    }
                    None => {}
                },
                Event::Notification { handle, response } => {
                    let alive = observations
                        .get(&handle)
                        .is_some_and(|tx| tx.send(response).is_ok());
                    if !alive {
                        observations.remove(&handle);
                        ep.cancel(now, handle);
                    }
                }
                Event::Failed { handle, error } => {
                    observations.remove(&handle);
                    match waiters.remove(&handle) {
                        Some(Waiter::Once(tx)) => {
                            let _ = tx.send(Err(error));
                        }
                        Some(Waiter::Observe(tx)) => {
                            let _ = tx.send(Err(error));
                        }
                        None => {}
                    }
                }
            }
        }
        if dispatched {
            continue;
        }
        let deadline = ep.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, peer)) => ep.handle_datagram(Instant::now(), peer, &buf[..n]),
                Err(e) => tracing::debug!(error = %e, "receive failed"),
            },
            Some((id, r)) = responses.recv() => ep.respond(Instant::now(), id, r),
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                let now = Instant::now();
                match cmd {
                    Command::Request(peer, req, opts, reply) => {
                        let h = ep.request(now, peer, req, opts);
                        waiters.insert(h, Waiter::Once(reply));
                    }
                    Command::Observe(peer, req, opts, reply) => {
                        let h = ep.request(now, peer, req, opts);
                        waiters.insert(h, Waiter::Observe(reply));
                    }
                    Command::Notify(path, r, reply) => {
                        let _ = reply.send(ep.notify(now, &path, r));
                    }
                    Command::Observers(path, reply) => {
                        let _ = reply.send(ep.observer_count(&path));
                    }
                    Command::AddContext(ctx, reply) => {
                        let _ = reply.send(ep.add_context(*ctx));
                    }
                    Command::RemoveContext(key) => {
                        ep.remove_context(&key);
                    }
                    Command::AddJoinToken(id, secret) => ep.add_join_token(id, secret),
                    Command::RemoveJoinToken(id) => ep.remove_join_token(&id),
                    Command::SetLink(peer, p) => ep.set_link(peer, p),
                    Command::Stats(reply) => {
                        let _ = reply.send(ep.stats());
                    }
                    Command::Settled(reply) => {
                        let _ = reply.send(());
                    }
                }
            }
            _ = sleep_until(deadline) => ep.handle_timeout(Instant::now()),
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
