//! The server side of the endpoint: requests, responses, block-wise, observers.

use super::endpoint::{Endpoint, OutKind, Timer};
use super::opt::{self, Block};
use super::types::*;
use crate::oscore::protect::option_fields;
use crate::oscore::{OscoreError, RequestBinding, SecurityContext, join_context};
use coap_lite::{CoapOption, MessageClass, MessageType, Packet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const OPT_ECHO: u16 = 252;
/// Join token ids are this long; the kid context of a join is the id + an attempt nonce.
pub const JOIN_TOKEN_ID_LEN: usize = 8;
/// Join contexts alive at once (each join attempt derives one).
const MAX_JOIN_CONTEXTS: usize = 64;
/// How long a reassembly or a block-wise response is kept between blocks.
const BLOCK_STATE_LIFETIME: Duration = Duration::from_secs(60);
/// Bounds on concurrent reassemblies (memory bound).
const MAX_BLOCK_STATES: usize = 256;
/// Bounds on bodies kept for their later blocks: per peer, and in all. A cluster
/// notifying a thousand workers at once keeps one body for each (only peers with a
/// security context get bodies this large).
const MAX_BLOCK2_PER_PEER: usize = 4;
const MAX_BLOCK2_STATES: usize = 16_384;

/// A request the application has not answered yet (or a core-made answer's context).
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    peer: SocketAddr,
    token: Vec<u8>,
    mid: u16,
    con: bool,
    acked: bool,
    security: Option<(ContextKey, RequestBinding)>,
    observe: Option<u32>,
    path: String,
    cache_key: String,
    block2: Option<Block>,
    block1: Option<Block>,
}

/// One registered observer of a path.
#[derive(Debug)]
pub(crate) struct Observer {
    path: String,
    cache_key: String,
    security: Option<(ContextKey, RequestBinding)>,
    seq: u32,
    pub(crate) inflight: Option<u16>,
}

#[derive(Debug)]
pub(crate) struct Block1State {
    data: Vec<u8>,
    next: u32,
    pub(crate) expires: Instant,
}

#[derive(Debug)]
pub(crate) struct Block2Cache {
    code: Code,
    content_format: Option<u16>,
    body: Arc<Vec<u8>>,
    etag: Vec<u8>,
    pub(crate) expires: Instant,
}

/// How a response goes out, besides its content.
#[derive(Debug)]
struct How {
    /// ETag of a cached body being served block by block.
    etag: Option<Vec<u8>>,
    /// Protect with a fresh Partial IV (notifications) instead of the request's nonce.
    fresh_piv: bool,
    /// What a separate confirmable message is, for retransmission bookkeeping.
    kind: OutKind,
    /// An Echo challenge to include (RFC 9175).
    echo: Option<Vec<u8>>,
}

impl Default for How {
    fn default() -> Self {
        Self {
            etag: None,
            fresh_piv: false,
            kind: OutKind::Separate,
            echo: None,
        }
    }
}

fn etag_of(body: &[u8]) -> Vec<u8> {
    // FNV-1a, 32 bits: enough to tell representations apart between blocks.
    let mut h: u32 = 0x811c_9dc5;
    for &b in body {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h.to_be_bytes().to_vec()
}

impl Endpoint {
    pub(crate) fn server_request(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        pkt: Packet,
        con: bool,
    ) {
        let mut p = Pending {
            peer,
            token: pkt.get_token().to_vec(),
            mid: pkt.header.message_id,
            con,
            acked: false,
            security: None,
            observe: None,
            path: String::new(),
            cache_key: String::new(),
            block2: None,
            block1: None,
        };
        let inner = match option_fields(&pkt) {
            Err(_) => {
                self.stats.oscore_rejected += 1;
                return self.answer(
                    now,
                    &p,
                    Response::error(Code::BAD_OPTION, "malformed OSCORE option"),
                );
            }
            Ok(Some(fields)) => {
                let key = ContextKey {
                    id_context: fields.kid_context.clone(),
                    recipient_id: fields.kid.clone().unwrap_or_default(),
                };
                let fresh_join = self.derive_join_context(&key);
                let Some(ctx) = self.contexts.get_mut(&key) else {
                    self.stats.oscore_rejected += 1;
                    return self.answer(
                        now,
                        &p,
                        Response::error(Code::UNAUTHORIZED, "Security context not found"),
                    );
                };
                match ctx.unprotect_request(&pkt, &fields) {
                    Ok((inner, binding, _)) => {
                        p.security = Some((key, binding));
                        inner
                    }
                    Err((OscoreError::EchoRequired(echo), Some(binding))) => {
                        p.security = Some((key, binding));
                        let mut r = Response::error(Code::UNAUTHORIZED, "");
                        r.payload.clear();
                        return self.answer_with(now, &p, r, Some(echo.to_vec()));
                    }
                    Err((e, _)) => {
                        self.stats.oscore_rejected += 1;
                        if fresh_join {
                            // Forged join attempts must not accumulate contexts.
                            self.forget_join_context(&key);
                        }
                        let (code, text) = match e {
                            OscoreError::Replay(_) => (Code::UNAUTHORIZED, "Replay detected"),
                            // RFC 8613 §8.2 leaves the code open; 4.01 keeps one answer for
                            // "no valid context", whatever the cause.
                            OscoreError::DecryptFailed => (Code::UNAUTHORIZED, "Decryption failed"),
                            _ => (Code::BAD_OPTION, "Failed to decode COSE"),
                        };
                        return self.answer(now, &p, Response::error(code, text));
                    }
                }
            }
            Ok(None) => pkt,
        };
        p.path = opt::path_of(&inner);
        let query = opt::queries_of(&inner);
        p.cache_key = if query.is_empty() {
            p.path.clone()
        } else {
            format!("{}?{}", p.path, query.join("&"))
        };
        if p.security.is_none()
            && self.cfg.require_oscore
            && p.path != crate::paths::WELL_KNOWN_CORE
            && !self.cfg.open_paths.contains(&p.path)
        {
            self.stats.oscore_rejected += 1;
            return self.answer(
                now,
                &p,
                Response::error(Code::UNAUTHORIZED, "OSCORE required"),
            );
        }
        let Some(method) = Method::from_code(u8::from(inner.header.code)) else {
            return self.answer(now, &p, Response::new(Code::METHOD_NOT_ALLOWED));
        };
        let (b1, b2) = match (
            Block::from_packet(&inner, CoapOption::Block1),
            Block::from_packet(&inner, CoapOption::Block2),
        ) {
            (Ok(b1), Ok(b2)) => (b1, b2),
            _ => {
                return self.answer(
                    now,
                    &p,
                    Response::error(Code::BAD_REQUEST, "invalid Block option"),
                );
            }
        };
        p.block2 = b2;
        p.observe = opt::get_uint(&inner, CoapOption::Observe);
        let content_format = opt::get_u16(&inner, CoapOption::ContentFormat);
        let accept = opt::get_u16(&inner, CoapOption::Accept);
        let mut payload = inner.payload;

        if let Some(b) = b1 {
            match self.reassemble(now, &p, b, payload) {
                Err(r) => return self.answer(now, &p, r),
                Ok(None) => {
                    p.block1 = Some(b);
                    return self.answer(now, &p, Response::new(Code::CONTINUE));
                }
                Ok(Some(body)) => {
                    p.block1 = Some(b);
                    payload = body;
                }
            }
        }

        // A later block of a body we already produced: serve it from the cache.
        if let Some(b) = b2.filter(|b| b.num > 0) {
            if let Some(c) = self.block2.get(&(peer, p.cache_key.clone())) {
                let r = Response {
                    code: c.code,
                    content_format: c.content_format,
                    payload: Vec::new(),
                    observe: None,
                    observable: false,
                };
                let (body, etag) = (c.body.clone(), c.etag.clone());
                let _ = b;
                self.send_response(
                    now,
                    &p,
                    r,
                    &body,
                    How {
                        etag: Some(etag),
                        ..How::default()
                    },
                );
                return;
            }
        }

        if method == Method::Get && p.path == crate::paths::WELL_KNOWN_CORE {
            let body = self.link_format.clone().into_bytes();
            return self.answer(now, &p, Response::content(body, Some(40)));
        }
        if p.observe == Some(1) {
            self.observers.remove(&(peer, p.token.clone()));
        }
        let request = Request {
            method,
            path: p.path.clone(),
            query,
            content_format,
            accept,
            payload,
            observe: p.observe,
        };
        let security = p.security.as_ref().map(|(k, _)| k.clone());
        let id = self.next_id();
        self.pending.insert(id, p);
        if con {
            self.schedule(now + self.cfg.ack_delay, Timer::AckDelay(id));
        }
        self.events.push_back(Event::Request {
            id: ServerRequestId(id),
            peer,
            request,
            security,
        });
    }

    /// Derive the context of a join attempt on first use of a known join token.
    /// Returns whether a context was derived now. At most [`MAX_JOIN_CONTEXTS`] live
    /// at once; the oldest goes first.
    fn derive_join_context(&mut self, key: &ContextKey) -> bool {
        if self.contexts.contains_key(key) || key.recipient_id != [1] {
            return false;
        }
        let Some(ctx_id) = &key.id_context else {
            return false;
        };
        if ctx_id.len() <= JOIN_TOKEN_ID_LEN {
            return false;
        }
        let (token_id, attempt) = ctx_id.split_at(JOIN_TOKEN_ID_LEN);
        let Some(secret) = self.join_tokens.get(token_id) else {
            return false;
        };
        let params = join_context(token_id, secret, attempt, false);
        if self.join_contexts.len() >= MAX_JOIN_CONTEXTS {
            if let Some(old) = self.join_contexts.pop_front() {
                self.contexts.remove(&old);
            }
        }
        self.contexts
            .insert(key.clone(), SecurityContext::in_memory(&params));
        self.join_contexts.push_back(key.clone());
        true
    }

    fn forget_join_context(&mut self, key: &ContextKey) {
        self.contexts.remove(key);
        self.join_contexts.retain(|k| k != key);
    }

    fn reassemble(
        &mut self,
        now: Instant,
        p: &Pending,
        b: Block,
        part: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, Response> {
        let key = (p.peer, p.cache_key.clone());
        if b.offset().saturating_add(part.len()) > self.cfg.max_body {
            self.block1.remove(&key);
            let mut r = Response::error(Code::REQUEST_ENTITY_TOO_LARGE, "body too large");
            r.observe = None;
            return Err(r);
        }
        if b.more && part.len() != b.size() {
            return Err(Response::error(
                Code::BAD_REQUEST,
                "block shorter than its size",
            ));
        }
        if b.num == 0 {
            if self.block1.len() >= MAX_BLOCK_STATES {
                return Err(Response::error(
                    Code::SERVICE_UNAVAILABLE,
                    "too many transfers",
                ));
            }
            self.block1.insert(
                key.clone(),
                Block1State {
                    data: Vec::new(),
                    next: 0,
                    expires: now,
                },
            );
        }
        let Some(st) = self.block1.get_mut(&key) else {
            return Err(Response::error(
                Code::REQUEST_ENTITY_INCOMPLETE,
                "block out of sequence",
            ));
        };
        if st.next != b.num || st.data.len() != b.offset() {
            if st.next == b.num + 1 {
                // A retransmitted block we already have (new message ID, same block).
                return Ok(None);
            }
            self.block1.remove(&key);
            return Err(Response::error(
                Code::REQUEST_ENTITY_INCOMPLETE,
                "block out of sequence",
            ));
        }
        st.data.extend_from_slice(&part);
        st.next += 1;
        st.expires = now + BLOCK_STATE_LIFETIME;
        if b.more {
            return Ok(None);
        }
        Ok(self.block1.remove(&key).map(|s| s.data))
    }

    pub(crate) fn on_ack_delay(&mut self, id: u64) {
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        if p.con && !p.acked {
            p.acked = true;
            let (peer, mid) = (p.peer, p.mid);
            self.reply_empty(peer, mid, MessageType::Acknowledgement);
        }
    }

    /// Answer a request delivered as [`Event::Request`]. Unknown ids are ignored.
    pub fn respond(&mut self, now: Instant, id: ServerRequestId, mut response: Response) {
        let Some(p) = self.pending.remove(&id.0) else {
            return;
        };
        if p.observe == Some(0) && response.observable && response.code.is_success() {
            // Start the sequence at a value that differs per registration.
            let seq = (self.rng.next_u64() & 0x7FFF) as u32 + 2;
            self.observers.insert(
                (p.peer, p.token.clone()),
                Observer {
                    path: p.path.clone(),
                    cache_key: p.cache_key.clone(),
                    security: p.security.clone(),
                    seq,
                    inflight: None,
                },
            );
            response.observe = Some(seq);
        } else {
            response.observe = None;
        }
        self.answer(now, &p, response);
    }

    /// Send a notification to every observer of `path`; returns how many there are.
    ///
    /// Notifications are confirmable. An observer whose previous notification is not
    /// acknowledged yet gets this one instead, under a new message ID, keeping the old
    /// one's retransmission schedule (RFC 7641 §4.5.2); an observer that never
    /// acknowledges within the retransmission span is removed.
    pub fn notify(&mut self, now: Instant, path: &str, response: Response) -> usize {
        let keys: Vec<_> = self
            .observers
            .iter()
            .filter(|(_, o)| o.path == path)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &keys {
            let Some(o) = self.observers.get_mut(key) else {
                continue;
            };
            o.seq = (o.seq + 1) & 0xFF_FFFF;
            let carried = o
                .inflight
                .take()
                .and_then(|m| self.outstanding.remove(&(key.0, m)));
            let Some(o) = self.observers.get(key) else {
                continue;
            };
            let p = Pending {
                peer: key.0,
                token: key.1.clone(),
                mid: 0,
                con: true,
                acked: true,
                security: o.security.clone(),
                observe: None,
                path: o.path.clone(),
                cache_key: o.cache_key.clone(),
                block2: None,
                block1: None,
            };
            let mut r = response.clone();
            r.observe = Some(o.seq);
            let body = std::mem::take(&mut r.payload);
            let kind = OutKind::Notification(key.0, key.1.clone());
            let mid = self.send_response(
                now,
                &p,
                r,
                &body,
                How {
                    fresh_piv: true,
                    kind,
                    ..How::default()
                },
            );
            if let (Some(mid), Some(old)) = (mid, carried) {
                if let Some(new) = self.outstanding.get_mut(&(key.0, mid)) {
                    new.attempts = old.attempts;
                    new.timeout = old.timeout;
                    new.deadline = old.deadline;
                    self.schedule(old.deadline, Timer::Retransmit(key.0, mid));
                }
            }
            if let Some(o) = self.observers.get_mut(key) {
                o.inflight = mid;
            }
        }
        keys.len()
    }

    /// Number of observers of `path`.
    pub fn observer_count(&self, path: &str) -> usize {
        self.observers.values().filter(|o| o.path == path).count()
    }

    fn answer(&mut self, now: Instant, p: &Pending, mut r: Response) {
        let body = std::mem::take(&mut r.payload);
        self.send_response(now, p, r, &body, How::default());
    }

    fn answer_with(&mut self, now: Instant, p: &Pending, r: Response, echo: Option<Vec<u8>>) {
        let body = r.payload.clone();
        self.send_response(
            now,
            p,
            r,
            &body,
            How {
                echo,
                ..How::default()
            },
        );
    }

    /// Build, protect and send one response message; returns the message ID when it
    /// went out as a separate confirmable message.
    fn send_response(
        &mut self,
        now: Instant,
        p: &Pending,
        r: Response,
        body: &[u8],
        how: How,
    ) -> Option<u16> {
        let How {
            etag,
            fresh_piv,
            kind,
            echo,
        } = how;
        let mut inner = Packet::new();
        inner.header.code = MessageClass::from(r.code.0);
        if let Some(cf) = r.content_format {
            opt::set_uint(&mut inner, CoapOption::ContentFormat, u32::from(cf));
        }
        if let Some(o) = r.observe {
            opt::set_uint(&mut inner, CoapOption::Observe, o);
        }
        if let Some(e) = echo {
            inner.add_option(CoapOption::from(OPT_ECHO), e);
        }
        if let Some(b) = p.block1 {
            inner.add_option(CoapOption::Block1, b.encode());
        }
        if r.code == Code::REQUEST_ENTITY_TOO_LARGE {
            opt::set_uint(
                &mut inner,
                CoapOption::Size1,
                opt::len_u32(self.cfg.max_body),
            );
        }
        let own_szx = Block::szx_for(self.cfg.block_size);
        let szx = p.block2.map_or(own_szx, |b| b.szx.min(own_szx));
        let size = 16usize << szx;
        if body.len() > size || p.block2.is_some_and(|b| b.num > 0) {
            let num = p.block2.map_or(0, |b| b.num);
            let b = Block {
                num,
                more: false,
                szx,
            };
            let start = b.offset();
            if start >= body.len() && num > 0 {
                // The error goes whole: it must not be cut into blocks of the asked
                // number again (that recursed until the stack overflowed).
                let e = Response::error(Code::BAD_OPTION, "block number beyond the body");
                let whole = Pending {
                    block2: None,
                    ..p.clone()
                };
                return self.send_response(
                    now,
                    &whole,
                    e,
                    b"block number beyond the body",
                    How {
                        fresh_piv,
                        kind,
                        ..How::default()
                    },
                );
            }
            let end = (start + size).min(body.len());
            let etag = etag.unwrap_or_else(|| etag_of(body));
            let room = self.block2.len() < MAX_BLOCK2_STATES
                && self
                    .block2
                    .range((p.peer, String::new())..)
                    .take_while(|((peer, _), _)| *peer == p.peer)
                    .take(MAX_BLOCK2_PER_PEER)
                    .count()
                    < MAX_BLOCK2_PER_PEER;
            if num == 0 && end < body.len() && room {
                self.block2.insert(
                    (p.peer, p.cache_key.clone()),
                    Block2Cache {
                        code: r.code,
                        content_format: r.content_format,
                        body: Arc::new(body.to_vec()),
                        etag: etag.clone(),
                        expires: now + BLOCK_STATE_LIFETIME,
                    },
                );
            }
            inner.add_option(CoapOption::ETag, etag);
            inner.add_option(
                CoapOption::Block2,
                Block {
                    more: end < body.len(),
                    ..b
                }
                .encode(),
            );
            if num == 0 {
                // Bodies are bounded by max_body.
                opt::set_uint(&mut inner, CoapOption::Size2, opt::len_u32(body.len()));
            }
            inner.payload = body[start..end].to_vec();
        } else {
            inner.payload = body.to_vec();
        }
        let mut outer = match &p.security {
            None => inner,
            Some((key, binding)) => {
                let ctx = self.contexts.get_mut(key)?;
                match ctx.protect_response(&inner, binding, fresh_piv) {
                    Ok((o, _)) => o,
                    Err(e) => {
                        tracing::warn!(peer = %p.peer, error = %e, "cannot protect response");
                        return None;
                    }
                }
            }
        };
        outer.set_token(p.token.clone());
        if p.con && !p.acked {
            if let Some(pp) = self
                .pending
                .values_mut()
                .find(|x| x.peer == p.peer && x.mid == p.mid)
            {
                pp.acked = true;
            }
            self.reply(p.peer, p.mid, outer, MessageType::Acknowledgement);
            None
        } else if p.con {
            Some(self.send_con(now, p.peer, outer, kind))
        } else {
            self.send_non(p.peer, outer);
            None
        }
    }
}
