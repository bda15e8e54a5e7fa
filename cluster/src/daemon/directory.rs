//! The service directory as the cluster's workers see it (`/v1/services/{name}` and
//! `/v1/services/by-ip/{ip}`, GET + Observe): the root's entry for the service, with
//! this cluster's own instances as the cluster knows them now (fresher than the root's
//! copy, and known even while the root is away).
//!
//! A service asked for the first time is looked up at the root and then observed there,
//! so changes elsewhere reach the cluster; every change, from the root or from this
//! cluster's workers, is pushed to the workers observing the entry.

use super::{Cluster, ended, spec_of};
use grove_proto::coap::driver::{Incoming, Observation};
use grove_proto::coap::{Code, Request, Response, SendOptions};
use grove_proto::msg::{self, ServiceEntry};
use grove_proto::paths;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// An entry a worker asked for.
#[derive(Debug, Clone)]
struct Cached {
    key: Key,
    /// The service id.
    service: String,
    /// The root's entry, once it answered.
    root: Option<ServiceEntry>,
    /// The workers observing it (their interest).
    watchers: HashSet<u32>,
    /// Since when no live worker observes it.
    unwatched_since: Option<std::time::Instant>,
    /// The observation at the root that keeps it current.
    watch: Option<tokio::task::AbortHandle>,
}

/// What the cluster holds of the entries its workers asked for, by resource path, and
/// the services changed here since the last push.
#[derive(Debug, Default)]
pub(super) struct Directory {
    entries: Mutex<HashMap<String, Cached>>,
    changed: Mutex<HashSet<String>>,
}

impl Directory {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Cached>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Note that an instance of `service` changed in this cluster.
    pub(super) fn touch(&self, service: &str) {
        self.changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service.to_owned());
    }

    fn take_changed(&self) -> HashSet<String> {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn set_root(&self, path: &str, e: ServiceEntry) {
        if let Some(c) = self.lock().get_mut(path) {
            c.service = e.service.clone();
            c.root = Some(e);
        }
    }
}

/// Which service a directory path asks for.
#[derive(Debug, Clone)]
enum Key {
    Name(String),
    Ip(std::net::IpAddr),
}

fn key_of(inc: &Incoming) -> Result<(String, Key), Response> {
    if let Some(ip) = inc.param("ip") {
        let ip: std::net::IpAddr = ip
            .parse()
            .map_err(|_| Response::error(Code::BAD_REQUEST, "not an IP address"))?;
        Ok((paths::service_by_ip(ip), Key::Ip(ip)))
    } else {
        let name = inc.param("name").unwrap_or_default().to_owned();
        Ok((paths::service(&name), Key::Name(name)))
    }
}

/// Whether `ip` is one of the addresses of `spec`'s instance or service.
fn answers_for(spec: &msg::InstanceSpec, ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let a = Some(u32::from(v4));
            [spec.ip, spec.rr_ip, spec.closest_ip].contains(&a)
        }
        std::net::IpAddr::V6(v6) => {
            let a = Some(v6.octets());
            [spec.ip6, spec.rr_ip6, spec.closest_ip6].contains(&a)
        }
    }
}

impl Cluster {
    /// The entry for `key`: the root's (if known) with this cluster's instances merged
    /// in; `None` when neither knows the service.
    fn merged(&self, root: Option<&ServiceEntry>, key: &Key) -> Option<ServiceEntry> {
        let rows = self.db().instances().unwrap_or_default();
        let specs: Vec<(&crate::store::InstanceRow, msg::InstanceSpec)> =
            rows.iter().filter_map(|r| Some((r, spec_of(r)?))).collect();
        let service = match (root, key) {
            (Some(e), _) => e.service.clone(),
            (None, Key::Name(n)) => specs.iter().find(|s| s.1.name == *n)?.0.service.clone(),
            (None, Key::Ip(ip)) => specs
                .iter()
                .find(|s| answers_for(&s.1, *ip))?
                .0
                .service
                .clone(),
        };
        let mut entry = root.cloned().unwrap_or_else(|| {
            let spec = specs.iter().find(|s| s.0.service == service).map(|s| &s.1);
            ServiceEntry {
                name: spec.map(|s| s.name.clone()).unwrap_or_default(),
                service: service.clone(),
                rr_ip: spec.and_then(|s| s.rr_ip),
                closest_ip: spec.and_then(|s| s.closest_ip),
                instances: Vec::new(),
                rr_ip6: spec.and_then(|s| s.rr_ip6),
                closest_ip6: spec.and_then(|s| s.closest_ip6),
            }
        });
        let me = self.root_link.get().map(|l| l.id);
        let workers = self.workers();
        // This cluster's instances: as it knows them, not as the root last heard.
        entry
            .instances
            .retain(|i| me.is_none_or(|c| i.cluster != c));
        for (row, spec) in &specs {
            if row.service != service || ended(row.status.as_str()) {
                continue;
            }
            let Some(cluster) = me else { continue };
            entry.instances.extend(workers.endpoint(row, spec, cluster));
        }
        entry.instances.sort_by_key(|i| i.instance.instance);
        Some(entry)
    }

    /// Push the entries of `service` to the workers observing them.
    async fn push_entries(&self, service: &str) {
        let watched: Vec<(String, Cached)> = self
            .directory
            .lock()
            .iter()
            .filter(|(_, c)| c.service == service)
            .map(|(p, c)| (p.clone(), c.clone()))
            .collect();
        for (path, c) in watched {
            if let (Some(e), Some(h)) = (self.merged(c.root.as_ref(), &c.key), self.coap.get()) {
                h.notify(&path, Response::cbor(msg::to_cbor(&e))).await;
            }
        }
    }

    /// Push what changed in this cluster since the last call.
    pub(super) async fn push_directory(&self) {
        for service in self.directory.take_changed() {
            self.push_entries(&service).await;
        }
    }
}

/// Observe `path` at the root for as long as the cluster runs (starting with `obs`, or
/// with a new observation): keep the cached entry current and push each change on to
/// the workers.
fn watch_at_root(
    cl: Arc<Cluster>,
    path: String,
    obs: Option<Observation>,
) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let mut obs = obs;
        loop {
            if let Some(o) = obs.as_mut() {
                // Registered again now and then: a root that restarted forgot it (and
                // the interest it stands for).
                let until = tokio::time::Instant::now() + REREGISTER_EVERY;
                while let Ok(Some(n)) = tokio::time::timeout_at(until, o.notifications.recv()).await
                {
                    if let Ok(e) = msg::from_cbor::<ServiceEntry>(&n.payload) {
                        let service = e.service.clone();
                        cl.directory.set_root(&path, e);
                        cl.push_entries(&service).await;
                    }
                }
            }
            // Not observing yet, or the root forgot us (it restarted) or went away:
            // register (again).
            let mut wait = Duration::from_millis(500);
            obs = loop {
                if let Some(link) = cl.root_link.get().cloned() {
                    let r = link
                        .coap
                        .observe(
                            link.addr,
                            Request::get(&path),
                            SendOptions::secure(link.key),
                        )
                        .await;
                    if let Some(o) = r.ok().filter(|o| o.first.code == Code::CONTENT) {
                        if let Ok(e) = msg::from_cbor::<ServiceEntry>(&o.first.payload) {
                            let service = e.service.clone();
                            cl.directory.set_root(&path, e);
                            cl.push_entries(&service).await;
                        }
                        break Some(o);
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            };
        }
    })
    .abort_handle()
}

/// How often an entry's observation at the root is registered again.
const REREGISTER_EVERY: Duration = Duration::from_secs(60);

impl Cluster {
    /// Drop the entries no live worker has observed for the idle time: their
    /// observation at the root ends, and the root hears that the interest did.
    pub(super) async fn sweep_directory(&self) {
        let live: HashSet<u32> = self
            .seen()
            .iter()
            .filter(|(_, l)| !l.lost)
            .map(|(id, _)| *id)
            .collect();
        let now = std::time::Instant::now();
        let mut gone = Vec::new();
        {
            let mut d = self.directory.lock();
            for (path, c) in d.iter_mut() {
                if c.watchers.iter().any(|w| live.contains(w)) {
                    c.unwatched_since = None;
                } else {
                    let since = *c.unwatched_since.get_or_insert(now);
                    if now.duration_since(since) >= self.directory_idle {
                        gone.push(path.clone());
                    }
                }
            }
            for p in &gone {
                if let Some(w) = d.remove(p).and_then(|c| c.watch) {
                    w.abort();
                }
            }
        }
        let Some(link) = self.root_link.get().cloned() else {
            return;
        };
        for path in gone {
            tracing::info!(entry = %path, "no worker uses it any more; interest ended");
            let mut req = Request::get(&path);
            req.observe = Some(1);
            let _ = link
                .coap
                .request(link.addr, req, SendOptions::secure(link.key.clone()))
                .await;
        }
    }
}

/// A worker's directory query. Observing registers the worker's interest, a request
/// with Observe: 1 ends it.
pub(super) async fn lookup(cl: Arc<Cluster>, inc: Incoming) -> Response {
    // Only this cluster's workers ask (their contexts have 4-byte node ids).
    let is_worker =
        matches!(&inc.security, Some(k) if k.id_context.is_none() && k.recipient_id.len() == 4);
    if !is_worker {
        return Response::error(
            Code::FORBIDDEN,
            "the directory is for this cluster's workers",
        );
    }
    let (path, key) = match key_of(&inc) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let node = inc.security.as_ref().map_or(0, |k| {
        u32::from_be_bytes(k.recipient_id[..4].try_into().unwrap_or_default())
    });
    let cached = {
        let mut d = cl.directory.lock();
        if let Some(c) = d.get_mut(&path) {
            match inc.request.observe {
                Some(0) => {
                    c.watchers.insert(node);
                }
                Some(_) => {
                    c.watchers.remove(&node);
                }
                None => {}
            }
        }
        d.get(&path).cloned()
    };
    if inc.request.observe == Some(1) {
        return Response::new(Code::CONTENT);
    }
    if let Some(c) = cached {
        return match cl.merged(c.root.as_ref(), &c.key) {
            Some(e) => Response::cbor(msg::to_cbor(&e)),
            None => Response::error(Code::NOT_FOUND, "no such service"),
        };
    }
    // First time: ask the root, and keep observing it there.
    let mut obs = None;
    let mut root_entry = None;
    if let Some(link) = cl.root_link.get().cloned() {
        match link
            .coap
            .observe(
                link.addr,
                Request::get(&path),
                SendOptions::secure(link.key),
            )
            .await
        {
            Ok(o) if o.first.code == Code::CONTENT => {
                root_entry = msg::from_cbor::<ServiceEntry>(&o.first.payload).ok();
                obs = Some(o);
            }
            Ok(o) if o.first.code == Code::NOT_FOUND => {
                return match cl.merged(None, &key) {
                    Some(e) => Response::cbor(msg::to_cbor(&e)),
                    None => Response::error(Code::NOT_FOUND, "no such service"),
                };
            }
            // The root is away: what this cluster knows has to do for now.
            _ => {}
        }
    }
    let Some(entry) = cl.merged(root_entry.as_ref(), &key) else {
        return Response::error(
            Code::SERVICE_UNAVAILABLE,
            "the root is unreachable and no instance of this service runs in this cluster",
        );
    };
    let fresh = {
        let mut d = cl.directory.lock();
        let fresh = !d.contains_key(&path);
        let c = d.entry(path.clone()).or_insert_with(|| Cached {
            key,
            service: entry.service.clone(),
            root: root_entry,
            watchers: HashSet::new(),
            unwatched_since: None,
            watch: None,
        });
        if inc.request.observe == Some(0) {
            c.watchers.insert(node);
        }
        fresh
    };
    if fresh {
        let watch = watch_at_root(cl.clone(), path.clone(), obs);
        if let Some(c) = cl.directory.lock().get_mut(&path) {
            c.watch = Some(watch);
        }
    }
    Response::cbor(msg::to_cbor(&entry))
}
