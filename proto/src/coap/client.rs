//! The client side of the endpoint: exchanges, block-wise bodies, observations.

use super::endpoint::{Endpoint, OutKind, Timer};
use super::opt::{self, Block};
use super::types::*;
use crate::oscore::{OscoreError, RequestBinding};
use coap_lite::{CoapOption, MessageClass, MessageType, Packet};
use std::net::SocketAddr;
use std::time::Instant;

const OPT_ECHO: u16 = 252;

/// What the next message of an exchange is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The request itself (or its current Block1 block).
    Main,
    /// A request for block `n` of the response.
    Block2(u32),
}

#[derive(Debug)]
struct Assembly {
    code: Code,
    content_format: Option<u16>,
    etag: Option<Vec<u8>>,
    observe: Option<u32>,
    data: Vec<u8>,
    next: u32,
    szx: u8,
    notification: bool,
}

/// One client exchange (and, once registered, one observation).
#[derive(Debug)]
pub(crate) struct Exchange {
    peer: SocketAddr,
    token: Vec<u8>,
    req: Request,
    opts: SendOptions,
    /// Block1: the size exponent and the number of the block being sent.
    block1: Option<(u8, u32)>,
    assembly: Option<Assembly>,
    fetch_token: Option<Vec<u8>>,
    binding: Option<RequestBinding>,
    fetch_binding: Option<RequestBinding>,
    last_step: Step,
    echo: Option<Vec<u8>>,
    echo_tried: bool,
    mid: Option<u16>,
    counted: bool,
    deadline: Option<Instant>,
    observing: bool,
    last_seq: Option<(u64, Instant)>,
}

fn is_fresh(secure: bool, last: Option<(u64, Instant)>, v: u64, now: Instant) -> bool {
    let Some((old, t)) = last else { return true };
    if secure {
        return v > old;
    }
    // RFC 7641 §3.4, 24-bit serial arithmetic, or 128 s passed.
    let (v1, v2) = (old & 0xFF_FFFF, v & 0xFF_FFFF);
    (v1 < v2 && v2 - v1 < 1 << 23)
        || (v1 > v2 && v1 - v2 > 1 << 23)
        || now.duration_since(t).as_secs() > 128
}

impl Endpoint {
    fn alloc_token(&mut self) -> Vec<u8> {
        loop {
            // Tokens are 4 random bytes: unique among our open exchanges.
            let t = self.rng.next_u64().to_be_bytes()[..4].to_vec();
            if !self.tokens.contains_key(&t) {
                return t;
            }
        }
    }

    /// Start a request; its outcome arrives as [`Event::Response`] (then
    /// [`Event::Notification`]s for an observation) or [`Event::Failed`].
    pub fn request(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        req: Request,
        opts: SendOptions,
    ) -> RequestHandle {
        let h = self.next_id();
        let token = self.alloc_token();
        self.tokens.insert(token.clone(), h);
        let block1 = (req.payload.len() > self.cfg.block_size)
            .then(|| (Block::szx_for(self.cfg.block_size), 0));
        let con = !opts.non_confirmable;
        self.exchanges.insert(
            h,
            Exchange {
                peer,
                token,
                req,
                opts,
                block1,
                assembly: None,
                fetch_token: None,
                binding: None,
                fetch_binding: None,
                last_step: Step::Main,
                echo: None,
                echo_tried: false,
                mid: None,
                counted: false,
                deadline: None,
                observing: false,
                last_seq: None,
            },
        );
        if con && *self.inflight.get(&peer).unwrap_or(&0) >= self.link(peer).nstart {
            self.queued.entry(peer).or_default().push_back(h);
        } else {
            self.send_step(now, h, Step::Main);
        }
        RequestHandle(h)
    }

    /// Forget an exchange or observation; later notifications for it are reset.
    pub fn cancel(&mut self, now: Instant, handle: RequestHandle) {
        if let Some(ex) = self.finish(now, handle.0) {
            if let Some(mid) = ex.mid {
                self.outstanding.remove(&(ex.peer, mid));
            }
        }
        for q in self.queued.values_mut() {
            q.retain(|&x| x != handle.0);
        }
    }

    fn build(&self, ex: &Exchange, step: Step) -> Packet {
        let mut p = Packet::new();
        let method = match step {
            Step::Block2(_) if ex.req.observe.is_some() => Method::Get,
            _ => ex.req.method,
        };
        p.header.code = MessageClass::from(method.code());
        opt::set_path(&mut p, &ex.req.path);
        for q in &ex.req.query {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        if let Some(a) = ex.req.accept {
            opt::set_uint(&mut p, CoapOption::Accept, u32::from(a));
        }
        match step {
            Step::Main => {
                if let Some(o) = ex.req.observe {
                    opt::set_uint(&mut p, CoapOption::Observe, o);
                }
                if let Some(cf) = ex.req.content_format {
                    opt::set_uint(&mut p, CoapOption::ContentFormat, u32::from(cf));
                }
                match ex.block1 {
                    Some((szx, num)) => {
                        let b = Block {
                            num,
                            more: false,
                            szx,
                        };
                        let start = b.offset().min(ex.req.payload.len());
                        let end = (start + b.size()).min(ex.req.payload.len());
                        let more = end < ex.req.payload.len();
                        p.add_option(CoapOption::Block1, Block { more, ..b }.encode());
                        if num == 0 {
                            // Bodies are bounded by max_body, far below u32::MAX.
                            opt::set_uint(
                                &mut p,
                                CoapOption::Size1,
                                opt::len_u32(ex.req.payload.len()),
                            );
                        }
                        p.payload = ex.req.payload[start..end].to_vec();
                    }
                    None => p.payload = ex.req.payload.clone(),
                }
            }
            Step::Block2(num) => {
                let szx = ex.assembly.as_ref().map(|a| a.szx).unwrap_or(6);
                p.add_option(
                    CoapOption::Block2,
                    Block {
                        num,
                        more: false,
                        szx,
                    }
                    .encode(),
                );
            }
        }
        if let Some(e) = &ex.echo {
            p.add_option(CoapOption::from(OPT_ECHO), e.clone());
        }
        p
    }

    fn send_step(&mut self, now: Instant, h: u64, step: Step) {
        let Some(ex) = self.exchanges.get(&h) else {
            return;
        };
        let inner = self.build(ex, step);
        let (peer, security, con) = (ex.peer, ex.opts.security.clone(), !ex.opts.non_confirmable);
        let fetch = matches!(step, Step::Block2(_)) && ex.req.observe.is_some();
        let (mut outer, binding) = match &security {
            None => (inner, None),
            Some(key) => {
                let r = match self.contexts.get_mut(key) {
                    None => Err(OscoreError::UnknownContext(key.recipient_id.clone())),
                    Some(ctx) => ctx.protect_request(&inner),
                };
                match r {
                    Ok((o, b)) => (o, Some(b)),
                    Err(e) => {
                        self.fail(now, h, ExchangeError::Protection(e));
                        return;
                    }
                }
            }
        };
        let token = if fetch {
            let t = match self.exchanges.get(&h).and_then(|ex| ex.fetch_token.clone()) {
                Some(t) => t,
                None => {
                    let t = self.alloc_token();
                    self.tokens.insert(t.clone(), h);
                    t
                }
            };
            Some(t)
        } else {
            None
        };
        let Some(ex) = self.exchanges.get_mut(&h) else {
            return;
        };
        ex.last_step = step;
        match token {
            Some(t) => {
                ex.fetch_token = Some(t.clone());
                ex.fetch_binding = binding;
                outer.set_token(t);
            }
            None => {
                ex.binding = binding;
                outer.set_token(ex.token.clone());
            }
        }
        if con {
            if !ex.counted {
                ex.counted = true;
                *self.inflight.entry(peer).or_default() += 1;
            }
            let mid = self.send_con(now, peer, outer, OutKind::Request(h));
            if let Some(ex) = self.exchanges.get_mut(&h) {
                ex.mid = Some(mid);
            }
        } else {
            self.send_non(peer, outer);
            self.arm_deadline(now, h);
        }
    }

    fn arm_deadline(&mut self, now: Instant, h: u64) {
        let at = now + self.cfg.response_timeout;
        if let Some(ex) = self.exchanges.get_mut(&h) {
            ex.deadline = Some(at);
            self.schedule(at, Timer::Exchange(h));
        }
    }

    pub(crate) fn on_exchange_deadline(&mut self, now: Instant, h: u64) {
        let due = self
            .exchanges
            .get(&h)
            .is_some_and(|ex| ex.deadline.is_some_and(|d| d <= now));
        if due {
            self.fail(now, h, ExchangeError::Timeout);
        }
    }

    /// No longer count `h` against NSTART; start queued exchanges.
    fn release(&mut self, now: Instant, h: u64) {
        let Some(ex) = self.exchanges.get_mut(&h) else {
            return;
        };
        if !ex.counted {
            return;
        }
        ex.counted = false;
        let peer = ex.peer;
        self.release_peer(now, peer);
    }

    fn release_peer(&mut self, now: Instant, peer: SocketAddr) {
        if let Some(n) = self.inflight.get_mut(&peer) {
            *n = n.saturating_sub(1);
        }
        let nstart = self.link(peer).nstart;
        while *self.inflight.get(&peer).unwrap_or(&0) < nstart {
            let Some(next) = self.queued.get_mut(&peer).and_then(|q| q.pop_front()) else {
                break;
            };
            self.send_step(now, next, Step::Main);
        }
    }

    /// Remove an exchange and its tokens.
    fn finish(&mut self, now: Instant, h: u64) -> Option<Exchange> {
        self.release(now, h);
        let ex = self.exchanges.remove(&h)?;
        self.tokens.remove(&ex.token);
        if let Some(t) = &ex.fetch_token {
            self.tokens.remove(t);
        }
        Some(ex)
    }

    fn fail(&mut self, now: Instant, h: u64, error: ExchangeError) {
        if self.finish(now, h).is_some() {
            self.events.push_back(Event::Failed {
                handle: RequestHandle(h),
                error,
            });
        }
    }

    pub(crate) fn client_gave_up(&mut self, now: Instant, h: u64, mid: u16) {
        let current = self.exchanges.get(&h).is_some_and(|ex| ex.mid == Some(mid));
        if current {
            self.fail(now, h, ExchangeError::Timeout);
        }
    }

    pub(crate) fn client_acked(
        &mut self,
        now: Instant,
        h: u64,
        mid: u16,
        reset: bool,
        response: Option<Packet>,
    ) {
        if let Some(ex) = self.exchanges.get_mut(&h) {
            if ex.mid == Some(mid) {
                ex.mid = None;
            }
        }
        self.release(now, h);
        if reset {
            self.fail(now, h, ExchangeError::Reset);
            return;
        }
        match response {
            Some(pkt) => {
                let peer = self.exchanges.get(&h).map(|e| e.peer);
                if let Some(peer) = peer {
                    self.client_response(now, peer, pkt, false);
                }
            }
            None => self.arm_deadline(now, h),
        }
    }

    /// A response message (piggybacked, separate, or a notification).
    pub(crate) fn client_response(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        pkt: Packet,
        con: bool,
    ) {
        let mid = pkt.header.message_id;
        let token = pkt.get_token().to_vec();
        let h = match self.tokens.get(&token) {
            Some(&h) if self.exchanges.get(&h).is_some_and(|e| e.peer == peer) => h,
            _ => {
                if con {
                    self.reply_empty(peer, mid, MessageType::Reset);
                }
                return;
            }
        };
        if con {
            self.reply_empty(peer, mid, MessageType::Acknowledgement);
        }
        // A separate response implies the request arrived: stop retransmitting it.
        if let Some(m) = self.exchanges.get_mut(&h).and_then(|e| e.mid.take()) {
            self.outstanding.remove(&(peer, m));
            self.release(now, h);
        }
        self.process_response(now, h, &token, pkt);
    }

    fn process_response(&mut self, now: Instant, h: u64, token: &[u8], pkt: Packet) {
        let Some(ex) = self.exchanges.get_mut(&h) else {
            return;
        };
        let on_fetch = ex.fetch_token.as_deref() == Some(token);
        let secure = ex.opts.security.clone();
        let outer_observe = opt::get_uint(&pkt, CoapOption::Observe);
        let (inner, piv_seq) = match &secure {
            None => (pkt, None),
            Some(key) => {
                let binding = if on_fetch {
                    ex.fetch_binding.clone()
                } else {
                    ex.binding.clone()
                };
                let fields = crate::oscore::protect::option_fields(&pkt);
                match (fields, binding, self.contexts.get_mut(key)) {
                    (Ok(Some(f)), Some(b), Some(ctx)) => match ctx.unprotect_response(&pkt, &f, &b)
                    {
                        Ok(x) => x,
                        Err(_) => {
                            self.stats.oscore_rejected += 1;
                            return;
                        }
                    },
                    (Ok(None), _, _) if Code(u8::from(pkt.header.code)).class() >= 4 => {
                        // An unprotected error (e.g. 4.01 "no security context"): the
                        // server could not verify us. Report it as the answer.
                        self.stats.oscore_rejected += 1;
                        (pkt, None)
                    }
                    _ => {
                        self.stats.oscore_rejected += 1;
                        return;
                    }
                }
            }
        };
        let code = Code(u8::from(inner.header.code));
        let Some(ex) = self.exchanges.get_mut(&h) else {
            return;
        };

        // Echo challenge (RFC 9175) from a server that lost its replay window.
        if code == Code::UNAUTHORIZED && !ex.echo_tried {
            if let Some(e) = inner.get_first_option(CoapOption::from(OPT_ECHO)) {
                ex.echo = Some(e.clone());
                ex.echo_tried = true;
                let step = ex.last_step;
                self.send_step(now, h, step);
                return;
            }
        }

        // Block1: the server wants the next block.
        if code == Code::CONTINUE && !on_fetch {
            if let Some((szx, num)) = ex.block1 {
                let sent_end = Block {
                    num: num + 1,
                    more: false,
                    szx,
                }
                .offset();
                let server_szx = Block::from_packet(&inner, CoapOption::Block1)
                    .ok()
                    .flatten()
                    .map_or(szx, |b| b.szx.min(szx));
                let next = Block {
                    num: 0,
                    more: false,
                    szx: server_szx,
                };
                ex.block1 = Some((server_szx, opt::len_u32(sent_end / next.size())));
                self.send_step(now, h, Step::Main);
                return;
            }
        }

        let content_format = opt::get_u16(&inner, CoapOption::ContentFormat);
        let seq_value = if secure.is_some() {
            piv_seq
        } else {
            outer_observe.map(u64::from)
        };
        let block2 = Block::from_packet(&inner, CoapOption::Block2)
            .ok()
            .flatten();
        let etag = inner.get_first_option(CoapOption::ETag).cloned();
        let max_body = self.cfg.max_body;

        // A notification on an established observation.
        if ex.observing && !on_fetch {
            let Some(v) = seq_value.or(if secure.is_some() { None } else { Some(0) }) else {
                return;
            };
            if !is_fresh(secure.is_some(), ex.last_seq, v, now) {
                self.stats.stale_notifications += 1;
                return;
            }
            ex.last_seq = Some((v, now));
            if let Some(b) = block2.filter(|b| b.more && b.num == 0) {
                ex.assembly = Some(Assembly {
                    code,
                    content_format,
                    etag,
                    observe: outer_observe,
                    data: inner.payload,
                    next: 1,
                    szx: b.szx,
                    notification: true,
                });
                self.send_step(now, h, Step::Block2(1));
                return;
            }
            let response = Response {
                code,
                content_format,
                payload: inner.payload,
                observe: outer_observe,
                observable: false,
            };
            self.events.push_back(Event::Notification {
                handle: RequestHandle(h),
                response,
            });
            if !code.is_success() {
                self.finish(now, h);
            }
            return;
        }

        // Block2: collect the body.
        let mut body = inner.payload;
        let (mut code, mut content_format, mut observe) = (code, content_format, outer_observe);
        let mut notification = false;
        if let Some(b) = block2 {
            let asm = match ex.assembly.take() {
                Some(a) if b.num == a.next && (a.etag.is_none() || a.etag == etag) => {
                    let mut a = a;
                    a.data.extend_from_slice(&body);
                    a.next += 1;
                    a
                }
                Some(a) => {
                    // The representation changed or blocks arrived out of order:
                    // start over from block 0.
                    ex.assembly = Some(Assembly {
                        data: Vec::new(),
                        next: 0,
                        etag: None,
                        ..a
                    });
                    self.send_step(now, h, Step::Block2(0));
                    return;
                }
                None if b.num == 0 => Assembly {
                    code,
                    content_format,
                    etag,
                    observe: outer_observe,
                    data: body,
                    next: 1,
                    szx: b.szx,
                    notification: false,
                },
                None => return,
            };
            if asm.data.len() > max_body {
                self.fail(now, h, ExchangeError::TooLarge(max_body));
                return;
            }
            if b.more {
                let next = asm.next;
                ex.assembly = Some(asm);
                self.send_step(now, h, Step::Block2(next));
                return;
            }
            body = asm.data;
            code = asm.code;
            content_format = asm.content_format;
            observe = asm.observe;
            notification = asm.notification;
        }
        if on_fetch {
            if let Some(t) = ex.fetch_token.take() {
                self.tokens.remove(&t);
            }
        }
        let response = Response {
            code,
            content_format,
            payload: body,
            observe,
            observable: false,
        };
        let handle = RequestHandle(h);
        if notification {
            self.events
                .push_back(Event::Notification { handle, response });
            return;
        }
        let registered = ex.req.observe == Some(0) && observe.is_some() && code.is_success();
        if registered {
            ex.observing = true;
            ex.deadline = None;
            ex.last_seq = seq_value.map(|v| (v, now));
            self.release(now, h);
            self.events.push_back(Event::Response { handle, response });
        } else {
            self.finish(now, h);
            self.events.push_back(Event::Response { handle, response });
        }
    }
}
