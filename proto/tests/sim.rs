//! The CoAP core over a simulated network: loss, duplication, reordering, delay.
//!
//! Every test is seeded and runs in virtual time, so it is deterministic and fast.

use grove_proto::coap::*;
use grove_proto::oscore::{
    ContextParams, MemoryContextStore, PersistedState, SecurityContext, join_context,
};
use grove_proto::sim::{Impairment, SimNet};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, i], 5683))
}

fn cfg(seed: u64, max_retransmit: u32, nstart: usize) -> Config {
    let mut c = Config {
        seed,
        require_oscore: false,
        ..Config::default()
    };
    c.link.max_retransmit = max_retransmit;
    c.link.nstart = nstart;
    c.dedup_lifetime = c.link.exchange_lifetime();
    c
}

fn net(seed: u64, imp: Impairment, max_retransmit: u32) -> SimNet {
    let mut n = SimNet::new(seed, imp);
    n.add(addr(1), Endpoint::new(cfg(seed ^ 1, max_retransmit, 8)));
    n.add(addr(2), Endpoint::new(cfg(seed ^ 2, max_retransmit, 8)));
    n
}

fn lossy(loss: f64) -> Impairment {
    Impairment {
        loss,
        duplicate: 0.05,
        min_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(40),
    }
}

/// Run `n` echo exchanges (each payload answered reversed); returns how many completed
/// correctly and how many times the server handler ran.
fn echo_run(seed: u64, imp: Impairment, max_retransmit: u32, n: usize) -> (usize, usize) {
    let mut sim = net(seed, imp, max_retransmit);
    let server = addr(2);
    let mut expected = HashMap::new();
    let now = sim.now();
    for i in 0..n {
        let body = format!("request {i}").into_bytes();
        let h = sim.ep(0).request(
            now,
            server,
            Request::post_cbor("/echo", body.clone()),
            SendOptions::default(),
        );
        expected.insert(h, body.into_iter().rev().collect::<Vec<u8>>());
    }
    let done = RefCell::new((0usize, 0usize, 0usize)); // ok, failed, handler runs
    let mut handler = |ep: &mut Endpoint, _i: usize, now: Instant, ev: Event| match ev {
        Event::Request { id, request, .. } => {
            done.borrow_mut().2 += 1;
            let body = request.payload.into_iter().rev().collect();
            ep.respond(now, id, Response::content(body, None));
        }
        Event::Response { handle, response } => {
            let mut d = done.borrow_mut();
            if expected.get(&handle) == Some(&response.payload) {
                d.0 += 1;
            } else {
                d.1 += 1;
            }
        }
        Event::Failed { .. } => done.borrow_mut().1 += 1,
        Event::Notification { .. } => {}
    };
    sim.run_until(Duration::from_secs(3600), &mut handler, &mut || {
        let d = done.borrow();
        d.0 + d.1 == n
    });
    let d = done.borrow();
    (d.0, d.2)
}

#[test]
fn exchanges_complete_under_30_percent_loss_both_ways() {
    let (ok, handled) = echo_run(7, lossy(0.30), 8, 1200);
    assert!(
        ok * 100 >= 1200 * 99,
        "only {ok} of 1200 exchanges completed"
    );
    assert_eq!(
        handled, 1200,
        "every request handled exactly once despite duplicates"
    );
}

#[test]
fn without_retransmission_the_same_loss_breaks_exchanges() {
    // The control for the test above: with MAX_RETRANSMIT = 0 it must fail the 99 % bar.
    let (ok, _) = echo_run(7, lossy(0.30), 0, 1200);
    assert!(
        ok * 100 < 1200 * 99,
        "{ok} of 1200 completed without retransmission"
    );
    assert!(
        ok * 100 < 1200 * 60,
        "{ok} of 1200: loss should bite hard without retransmission"
    );
}

#[test]
fn duplicated_requests_run_the_handler_once_and_get_the_same_response() {
    let imp = Impairment {
        duplicate: 0.9,
        ..lossy(0.1)
    };
    let (ok, handled) = echo_run(11, imp, 8, 300);
    assert_eq!(ok, 300);
    assert_eq!(handled, 300);
}

#[test]
fn retransmission_intervals_double_within_the_random_factor() {
    // A peer that never answers: record when each copy leaves.
    let mut ep = Endpoint::new(cfg(3, 6, 1));
    let t0 = Instant::now();
    let h = ep.request(t0, addr(9), Request::get("/x"), SendOptions::default());
    let mut sends = vec![t0];
    assert!(ep.poll_transmit().is_some());
    let mut now = t0;
    let mut failed = false;
    while let Some(t) = ep.poll_timeout() {
        now = t;
        ep.handle_timeout(now);
        while ep.poll_transmit().is_some() {
            sends.push(now);
        }
        if let Some(Event::Failed { handle, error }) = ep.poll_event() {
            assert_eq!((handle, error), (h, ExchangeError::Timeout));
            failed = true;
            break;
        }
    }
    assert!(failed);
    assert_eq!(sends.len(), 7, "1 transmission + MAX_RETRANSMIT 6");
    let gaps: Vec<f64> = sends
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    assert!(
        (2.0..=3.0).contains(&gaps[0]),
        "first timeout {} outside [ACK_TIMEOUT, ×1.5]",
        gaps[0]
    );
    for w in gaps.windows(2) {
        assert!(
            (w[1] / w[0] - 2.0).abs() < 1e-6,
            "intervals {gaps:?} do not double"
        );
    }
    // Gave up after the last timeout: MAX_TRANSMIT_WAIT bounds the whole exchange.
    let total = (now - t0).as_secs_f64();
    assert!(
        total
            <= LinkParams {
                max_retransmit: 6,
                ..LinkParams::default()
            }
            .max_transmit_wait()
            .as_secs_f64()
                + 1e-6
    );
}

#[test]
fn a_200_kb_body_crosses_block_wise_intact_under_loss() {
    let mut sim = net(21, lossy(0.2), 8);
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let now = sim.now();
    let up = sim.ep(0).request(
        now,
        addr(2),
        Request::post_cbor("/big", body.clone()),
        SendOptions::default(),
    );
    let down = sim
        .ep(0)
        .request(now, addr(2), Request::get("/big"), SendOptions::default());
    let got = RefCell::new(BTreeMap::new());
    let stored = RefCell::new(Vec::new());
    let mut handler = |ep: &mut Endpoint, _: usize, now: Instant, ev: Event| match ev {
        Event::Request { id, request, .. } => {
            if request.method == Method::Post {
                *stored.borrow_mut() = request.payload;
                ep.respond(now, id, Response::new(Code::CHANGED));
            } else {
                let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
                ep.respond(now, id, Response::content(body, None));
            }
        }
        Event::Response { handle, response } => {
            got.borrow_mut().insert(handle, response);
        }
        other => panic!("unexpected {other:?}"),
    };
    assert!(sim.run_until(
        Duration::from_secs(3600),
        &mut handler,
        &mut || got.borrow().len() == 2
    ));
    assert_eq!(got.borrow()[&up].code, Code::CHANGED);
    assert!(*stored.borrow() == body, "uploaded body differs");
    assert!(
        got.borrow()[&down].payload == body,
        "downloaded body differs"
    );
}

#[test]
fn a_slow_handler_gets_an_empty_ack_then_a_separate_response() {
    let mut sim = net(5, Impairment::default(), 4);
    let now = sim.now();
    let h = sim
        .ep(0)
        .request(now, addr(2), Request::get("/slow"), SendOptions::default());
    let parked = RefCell::new(None);
    let got = RefCell::new(None);
    let mut handler = |_: &mut Endpoint, _: usize, _: Instant, ev: Event| match ev {
        Event::Request { id, .. } => *parked.borrow_mut() = Some(id),
        Event::Response { handle, response } => *got.borrow_mut() = Some((handle, response)),
        other => panic!("unexpected {other:?}"),
    };
    // Let the ACK delay pass with the request parked.
    sim.run_until(Duration::from_secs(1), &mut handler, &mut || false);
    assert!(
        sim.ep(0).stats().retransmissions == 0,
        "the empty ACK stopped retransmission"
    );
    let id = parked.borrow_mut().take().expect("handler saw the request");
    let now = sim.now();
    sim.ep(1)
        .respond(now, id, Response::content(b"late".to_vec(), None));
    assert!(
        sim.run_until(Duration::from_secs(5), &mut handler, &mut || got
            .borrow()
            .is_some())
    );
    let (handle, response) = got.borrow_mut().take().unwrap();
    assert_eq!((handle, response.payload.as_slice()), (h, &b"late"[..]));
}

/// Server notifies 1..=N quickly under loss, duplication and reordering.
fn observe_run(secure: bool) {
    let mut sim = net(99, lossy(0.25), 8);
    let opts = if secure {
        let (c, s) = contexts();
        let key = sim.ep(0).add_context(c);
        sim.ep(1).add_context(s);
        SendOptions::secure(key)
    } else {
        SendOptions::default()
    };
    let now = sim.now();
    let h = sim
        .ep(0)
        .request(now, addr(2), Request::observe("/v"), opts);
    let seen = RefCell::new(Vec::<u32>::new());
    let registered = RefCell::new(false);
    let mut handler = |ep: &mut Endpoint, _: usize, now: Instant, ev: Event| match ev {
        Event::Request { id, .. } => {
            ep.respond(now, id, Response::content(b"0".to_vec(), None).observable())
        }
        Event::Response { handle, response } => {
            assert_eq!(handle, h);
            assert!(response.observe.is_some(), "registration accepted");
            *registered.borrow_mut() = true;
        }
        Event::Notification { response, .. } => {
            let v: u32 = String::from_utf8(response.payload)
                .unwrap()
                .parse()
                .unwrap();
            seen.borrow_mut().push(v);
        }
        Event::Failed { error, .. } => panic!("observation failed: {error}"),
    };
    assert!(
        sim.run_until(Duration::from_secs(120), &mut handler, &mut || *registered
            .borrow())
    );
    let n = 200u32;
    for v in 1..=n {
        let now = sim.now();
        assert_eq!(
            sim.ep(1).notify(
                now,
                "/v",
                Response::content(v.to_string().into_bytes(), None)
            ),
            1
        );
        // A new value every 50 ms of virtual time.
        let until = sim.now() + Duration::from_millis(50);
        sim.run_until(Duration::from_millis(50), &mut handler, &mut || false);
        let _ = until;
    }
    let last_sent = sim.now();
    let span = LinkParams {
        max_retransmit: 8,
        ..LinkParams::default()
    }
    .max_transmit_span();
    assert!(
        sim.run_until(span, &mut handler, &mut || seen.borrow().last() == Some(&n)),
        "latest value not seen within MAX_TRANSMIT_SPAN"
    );
    assert!(sim.now() - last_sent <= span);
    let seen = seen.borrow();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "an older value came after a newer one: {seen:?}"
    );
    assert!(seen.len() > 10, "too few notifications: {}", seen.len());
}

#[test]
fn an_observer_never_sees_an_older_value_and_gets_the_latest() {
    observe_run(false);
}

#[test]
fn an_oscore_observer_never_sees_an_older_value_and_gets_the_latest() {
    observe_run(true);
}

fn params(client: bool) -> ContextParams {
    let (s, r) = if client {
        (vec![0x0c], vec![0x5e])
    } else {
        (vec![0x5e], vec![0x0c])
    };
    ContextParams {
        master_secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        master_salt: b"salt".to_vec(),
        sender_id: s,
        recipient_id: r,
        id_context: None,
    }
}

fn contexts() -> (SecurityContext, SecurityContext) {
    (
        SecurityContext::in_memory(&params(true)),
        SecurityContext::in_memory(&params(false)),
    )
}

/// A secure pair where the server requires OSCORE; returns (sim, client key).
fn secure_net(seed: u64, imp: Impairment) -> (SimNet, ContextKey) {
    let mut sim = SimNet::new(seed, imp);
    let mut c = cfg(seed, 4, 1);
    c.require_oscore = true;
    sim.add(addr(1), Endpoint::new(c.clone()));
    sim.add(
        addr(2),
        Endpoint::new(Config {
            seed: seed + 1,
            ..c
        }),
    );
    let (cc, sc) = contexts();
    let key = sim.ep(0).add_context(cc);
    sim.ep(1).add_context(sc);
    (sim, key)
}

/// Runs until the client has an answer; returns it and how many requests the server
/// application saw.
fn one_exchange(
    sim: &mut SimNet,
    req: Request,
    opts: SendOptions,
) -> (Result<Response, ExchangeError>, usize) {
    let now = sim.now();
    sim.ep(0).request(now, addr(2), req, opts);
    let out = RefCell::new(None);
    let seen = RefCell::new(0);
    let mut handler = |ep: &mut Endpoint, _: usize, now: Instant, ev: Event| match ev {
        Event::Request { id, request, .. } => {
            *seen.borrow_mut() += 1;
            ep.respond(now, id, Response::content(request.payload, None));
        }
        Event::Response { response, .. } => *out.borrow_mut() = Some(Ok(response)),
        Event::Failed { error, .. } => *out.borrow_mut() = Some(Err(error)),
        Event::Notification { .. } => {}
    };
    sim.run_until(Duration::from_secs(600), &mut handler, &mut || {
        out.borrow().is_some()
    });
    let r = out.borrow_mut().take().expect("an answer");
    (r, seen.into_inner())
}

#[test]
fn an_unprotected_request_gets_4_01_and_changes_nothing() {
    let (mut sim, _) = secure_net(1, Impairment::default());
    let (r, seen) = one_exchange(
        &mut sim,
        Request::post_cbor("/v1/nodes", vec![1]),
        SendOptions::default(),
    );
    assert_eq!(r.unwrap().code, Code::UNAUTHORIZED);
    assert_eq!(seen, 0);
    // Discovery stays open.
    let (r, _) = one_exchange(
        &mut sim,
        Request::get("/.well-known/core"),
        SendOptions::default(),
    );
    assert_eq!(r.unwrap().code, Code::CONTENT);
}

#[test]
fn a_protected_request_reaches_the_handler_with_its_body_intact() {
    let (mut sim, key) = secure_net(2, lossy(0.2));
    let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let (r, seen) = one_exchange(
        &mut sim,
        Request::post_cbor("/p", big.clone()),
        SendOptions::secure(key),
    );
    let r = r.unwrap();
    assert_eq!((r.code, seen), (Code::CONTENT, 1));
    assert!(r.payload == big);
}

/// Capture the first datagram the client sends for a protected request.
fn captured_request(sim: &mut SimNet, key: &ContextKey) -> Vec<u8> {
    let now = sim.now();
    sim.ep(0).request(
        now,
        addr(2),
        Request::post_cbor("/p", b"pay".to_vec()),
        SendOptions::secure(key.clone()),
    );
    sim.ep(0).poll_transmit().expect("request datagram").data
}

#[test]
fn a_replayed_oscore_request_is_rejected() {
    let (mut sim, key) = secure_net(3, Impairment::default());
    let data = captured_request(&mut sim, &key);
    sim.inject(addr(1), 1, data.clone());
    let count = RefCell::new(0);
    let mut handler = |ep: &mut Endpoint, _: usize, now: Instant, ev: Event| {
        if let Event::Request { id, .. } = ev {
            *count.borrow_mut() += 1;
            ep.respond(now, id, Response::new(Code::CHANGED));
        }
    };
    sim.run_until(Duration::from_secs(1), &mut handler, &mut || false);
    assert_eq!(*count.borrow(), 1);
    // The same datagram under a new message ID is no CoAP duplicate: OSCORE must catch it.
    let mut replay = data;
    replay[3] = replay[3].wrapping_add(1);
    sim.inject(addr(1), 1, replay);
    let before = sim.ep(1).stats().oscore_rejected;
    sim.run_until(Duration::from_secs(1), &mut handler, &mut || false);
    assert_eq!(*count.borrow(), 1, "the replay reached the handler");
    assert_eq!(sim.ep(1).stats().oscore_rejected, before + 1);
}

#[test]
fn a_tampered_oscore_request_is_rejected() {
    let (mut sim, key) = secure_net(4, Impairment::default());
    let mut data = captured_request(&mut sim, &key);
    let last = data.len() - 1;
    data[last] ^= 0x40;
    sim.inject(addr(1), 1, data);
    let mut reached = false;
    let mut handler = |_: &mut Endpoint, i: usize, _: Instant, ev: Event| {
        if i == 1 && matches!(ev, Event::Request { .. }) {
            reached = true;
        }
    };
    sim.run_until(Duration::from_millis(100), &mut handler, &mut || false);
    assert!(!reached);
    assert_eq!(sim.ep(1).stats().oscore_rejected, 1);
}

#[test]
fn a_wrongly_keyed_client_is_refused() {
    let (mut sim, _) = secure_net(5, Impairment::default());
    let mut wrong = params(true);
    wrong.master_secret[0] ^= 1;
    let key = sim.ep(0).add_context_params(&wrong);
    let (r, seen) = one_exchange(
        &mut sim,
        Request::post_cbor("/p", vec![1]),
        SendOptions::secure(key),
    );
    assert_eq!(seen, 0);
    assert_eq!(r.unwrap().code, Code::UNAUTHORIZED);
}

#[test]
fn a_restarted_server_recovers_freshness_with_echo() {
    let (mut sim, key) = secure_net(6, Impairment::default());
    // Replace the server's context with one restored from a state that had received.
    let store = MemoryContextStore(Some(PersistedState {
        seq_ceiling: 512,
        window_used: true,
    }));
    let restored = SecurityContext::new(&params(false), Box::new(store)).unwrap();
    sim.ep(1).add_context(restored);
    // Our client's sequence numbers continue (they were persisted on its side).
    let (r, seen) = one_exchange(
        &mut sim,
        Request::post_cbor("/p", b"x".to_vec()),
        SendOptions::secure(key.clone()),
    );
    assert_eq!(r.unwrap().payload, b"x");
    assert_eq!(seen, 1, "the Echo round trip runs the handler once");
    let (r, _) = one_exchange(
        &mut sim,
        Request::post_cbor("/p", b"y".to_vec()),
        SendOptions::secure(key),
    );
    assert_eq!(r.unwrap().payload, b"y");
}

#[test]
fn the_join_flow_hands_out_a_long_term_context() {
    let mut sim = SimNet::new(8, lossy(0.2));
    let mut c = cfg(8, 6, 1);
    c.require_oscore = true;
    sim.add(addr(1), Endpoint::new(c.clone()));
    sim.add(addr(2), Endpoint::new(Config { seed: 9, ..c }));
    let (token_id, secret) = (
        b"tok-0001".to_vec(),
        b"a join secret of the cluster".to_vec(),
    );
    sim.ep(1).add_join_token(token_id.clone(), secret.clone());
    let join_key =
        sim.ep(0)
            .add_context_params(&join_context(&token_id, &secret, b"attempt1", true));
    let long_term = ContextParams {
        master_secret: b"fresh long-term secret 32 bytes!".to_vec(),
        master_salt: vec![],
        sender_id: vec![0, 0, 0, 7],
        recipient_id: vec![],
        id_context: None,
    };
    // The server application: registration under a join context installs the node's
    // long-term context and answers with its secret.
    let lt = long_term.clone();
    let mut handler = move |ep: &mut Endpoint, i: usize, now: Instant, ev: Event| {
        if i != 1 {
            return;
        }
        if let Event::Request {
            id,
            request,
            security,
            ..
        } = ev
        {
            let sec = security.expect("protected");
            if request.path == "/v1/nodes" && sec.id_context.is_some() {
                let server_side = ContextParams {
                    sender_id: lt.recipient_id.clone(),
                    recipient_id: lt.sender_id.clone(),
                    ..lt.clone()
                };
                ep.add_context_params(&server_side);
                ep.respond(now, id, Response::cbor(lt.master_secret.clone()));
            } else {
                assert_eq!(sec.recipient_id, vec![0, 0, 0, 7], "long-term kid");
                ep.respond(now, id, Response::new(Code::CHANGED));
            }
        }
    };
    let now = sim.now();
    sim.ep(0).request(
        now,
        addr(2),
        Request::post_cbor("/v1/nodes", vec![0x80]),
        SendOptions::secure(join_key.clone()),
    );
    let mut got = None;
    while got.is_none() {
        let mut h = |ep: &mut Endpoint, i: usize, now: Instant, ev: Event| {
            if let Event::Response { response, .. } = &ev {
                got = Some(response.clone());
            }
            handler(ep, i, now, ev);
        };
        assert!(sim.step(&mut h));
    }
    assert_eq!(got.unwrap().payload, long_term.master_secret);
    let lt_key = sim.ep(0).add_context_params(&long_term);
    let (r, _) = one_exchange_with(
        &mut sim,
        Request::post_cbor("/v1/nodes/7/status", vec![1]),
        SendOptions::secure(lt_key),
        &mut handler,
    );
    assert_eq!(r.unwrap().code, Code::CHANGED);
    // Revoking the token stops further joins with it.
    sim.ep(1).remove_join_token(&token_id);
    let again = sim
        .ep(0)
        .add_context_params(&join_context(&token_id, &secret, b"attempt2", true));
    let (r, _) = one_exchange_with(
        &mut sim,
        Request::post_cbor("/v1/nodes", vec![0x80]),
        SendOptions::secure(again),
        &mut handler,
    );
    assert_eq!(r.unwrap().code, Code::UNAUTHORIZED);
    let _ = join_key;
}

fn one_exchange_with(
    sim: &mut SimNet,
    req: Request,
    opts: SendOptions,
    server: &mut dyn FnMut(&mut Endpoint, usize, Instant, Event),
) -> (Result<Response, ExchangeError>, ()) {
    let now = sim.now();
    sim.ep(0).request(now, addr(2), req, opts);
    let mut out = None;
    while out.is_none() {
        let mut h = |ep: &mut Endpoint, i: usize, now: Instant, ev: Event| match (&ev, i) {
            (Event::Response { response, .. }, 0) => out = Some(Ok(response.clone())),
            (Event::Failed { error, .. }, 0) => out = Some(Err(error.clone())),
            _ => server(ep, i, now, ev),
        };
        assert!(sim.step(&mut h), "network went idle without an answer");
    }
    (out.unwrap(), ())
}

#[test]
fn a_block_past_the_end_of_a_body_gets_4_02_and_the_server_lives_on() {
    // Found at 10,000 workers: a late block of a body that had changed (its cache
    // gone) was past the end, and the error answer recursed until the stack overflowed.
    let mut ep = Endpoint::new(cfg(1, 4, 1));
    let now = Instant::now();
    for (mid, num) in [(300u16, 6u32), (301, 1000)] {
        let mut p = coap_lite::Packet::new();
        p.header.set_type(coap_lite::MessageType::Confirmable);
        p.header.code = coap_lite::MessageClass::from(1u8); // GET
        p.header.message_id = mid;
        p.set_token(vec![1, 2]);
        p.add_option(coap_lite::CoapOption::UriPath, b"small".to_vec());
        // Block2: number `num`, 16-byte blocks (SZX 0).
        let v = num << 4;
        p.add_option(
            coap_lite::CoapOption::Block2,
            v.to_be_bytes()
                .iter()
                .copied()
                .skip_while(|b| *b == 0)
                .collect(),
        );
        ep.handle_datagram(now, addr(7), &p.to_bytes().unwrap());
        let Some(Event::Request { id, .. }) = ep.poll_event() else {
            panic!("the request reaches the application");
        };
        ep.respond(now, id, Response::content(vec![7; 40], None));
        let t = ep.poll_transmit().expect("an answer");
        let r = coap_lite::Packet::from_bytes(&t.data).unwrap();
        assert_eq!(
            u8::from(r.header.code),
            0x82,
            "4.02 Bad Option for block {num}"
        );
    }
}

#[test]
fn malformed_datagrams_are_dropped_and_counted() {
    let mut ep = Endpoint::new(cfg(1, 4, 1));
    let now = Instant::now();
    let cases: &[&[u8]] = &[
        &[],                                   // empty
        &[0x40],                               // truncated header
        &[0x48, 0x01, 0x00, 0x01, 1, 2],       // token length 8, 2 bytes present
        &[0x80, 0x01, 0x00, 0x01],             // version 2
        &[0x40, 0x01, 0x00, 0x01, 0xf0],       // option delta 15
        &[0x40, 0x01, 0x00, 0x01, 0x0f],       // option length 15
        &[0x40, 0x01, 0x00, 0x01, 0xd1],       // extended delta missing
        &[0x40, 0x01, 0x00, 0x01, 0x1e, 0xff], // extended length truncated
        &[0x70, 0x41, 0x00, 0x01],             // RST carrying a code
        &[0x50, 0x00, 0x00, 0x01],             // empty NON
    ];
    for (i, d) in cases.iter().enumerate() {
        ep.handle_datagram(now, addr(7), d);
        assert_eq!(
            ep.stats().malformed,
            i as u64 + 1,
            "case {i} not counted: {d:02x?}"
        );
        assert!(ep.poll_event().is_none());
    }
    // Reserved block size and absurd block numbers get 4.00/4.13, not a crash.
    for (opt, val) in [
        (27u16, vec![0x0f]),
        (23, vec![0x0f]),
        (27, vec![0xff, 0xff, 0xfe]),
    ] {
        let mut p = coap_lite::Packet::new();
        p.header.set_type(coap_lite::MessageType::Confirmable);
        p.header.code = coap_lite::MessageClass::from(2u8);
        p.header.message_id = 100 + opt;
        p.add_option(coap_lite::CoapOption::from(opt), val);
        p.payload = vec![0; 16];
        ep.handle_datagram(now, addr(7), &p.to_bytes().unwrap());
        let t = ep.poll_transmit().expect("an error response");
        let r = coap_lite::Packet::from_bytes(&t.data).unwrap();
        let code = u8::from(r.header.code);
        assert!(
            code == 0x80 || code == 0x8D || code == 0x88,
            "got {code:#x}"
        );
        assert!(ep.poll_event().is_none());
    }
}

#[test]
fn nstart_limits_outstanding_confirmable_requests() {
    let mut ep = Endpoint::new(cfg(1, 4, 1));
    let now = Instant::now();
    for i in 0..5 {
        ep.request(
            now,
            addr(2),
            Request::get(&format!("/r{i}")),
            SendOptions::default(),
        );
    }
    let mut n = 0;
    while ep.poll_transmit().is_some() {
        n += 1;
    }
    assert_eq!(n, 1, "NSTART = 1 allows one outstanding request");
}

#[test]
fn an_empty_ack_is_code_0_00() {
    let mut ep = Endpoint::new(cfg(1, 4, 1));
    let now = Instant::now();
    let mut p = coap_lite::Packet::new();
    p.header.set_type(coap_lite::MessageType::Confirmable);
    p.header.code = coap_lite::MessageClass::from(1u8);
    p.header.message_id = 42;
    p.set_token(vec![1, 2]);
    ep.handle_datagram(now, addr(7), &p.to_bytes().unwrap());
    assert!(matches!(ep.poll_event(), Some(Event::Request { .. })));
    ep.handle_timeout(now + ep.config().ack_delay);
    let ack = coap_lite::Packet::from_bytes(&ep.poll_transmit().expect("empty ACK").data).unwrap();
    assert_eq!(
        ack.header.get_type(),
        coap_lite::MessageType::Acknowledgement
    );
    assert_eq!(ack.header.code, coap_lite::MessageClass::Empty);
    assert_eq!(ack.header.message_id, 42);
    assert!(ack.get_token().is_empty());
}

#[test]
fn forged_join_attempts_leave_no_context_behind() {
    let mut sim = SimNet::new(12, Impairment::default());
    let mut c = cfg(12, 2, 1);
    c.require_oscore = true;
    sim.add(addr(1), Endpoint::new(c.clone()));
    sim.add(addr(2), Endpoint::new(Config { seed: 13, ..c }));
    let token_id = b"tok-0002".to_vec();
    sim.ep(1)
        .add_join_token(token_id.clone(), b"the real secret".to_vec());
    for i in 0..20u8 {
        let attempt = [i; 8];
        let forged = sim.ep(0).add_context_params(&join_context(
            &token_id,
            b"a guessed secret",
            &attempt,
            true,
        ));
        let (r, seen) = one_exchange(
            &mut sim,
            Request::post_cbor("/v1/nodes", vec![0x80]),
            SendOptions::secure(forged),
        );
        assert_eq!(seen, 0);
        assert_eq!(r.unwrap().code, Code::UNAUTHORIZED);
        let mut id_context = token_id.clone();
        id_context.extend_from_slice(&attempt);
        let server_key = ContextKey {
            id_context: Some(id_context),
            recipient_id: vec![1],
        };
        assert!(
            sim.ep(1).context(&server_key).is_none(),
            "attempt {i} left a context"
        );
    }
}

#[test]
fn a_protected_idle_heartbeat_fits_one_small_datagram() {
    use grove_proto::msg::{Heartbeat, NetCoord, NodeId, to_cbor};
    let mut ep = Endpoint::new(cfg(1, 4, 1));
    let key = ep.add_context_params(&ContextParams {
        master_secret: vec![7; 32],
        master_salt: vec![1; 8],
        sender_id: 4117u32.to_be_bytes().to_vec(),
        recipient_id: vec![],
        id_context: None,
    });
    let hb = Heartbeat {
        node: NodeId(4117),
        seq: 123_456,
        cpu_centi_pct: 4_250,
        mem_used_mib: 1_900,
        mem_total_mib: 3_800,
        disk_used_mib: 14_500,
        disk_total_mib: 29_000,
        running: 12,
        coord: NetCoord([12.5, -3.25, 40.75]),
        digest: [0x9a; 8],
        changes: vec![],
        instances: None,
        limits: None,
        changes_from: None,
    };
    let body = to_cbor(&hb);
    let req = Request::post_cbor(&grove_proto::paths::node_status(NodeId(4117)), body.clone());
    ep.request(
        Instant::now(),
        addr(2),
        req,
        SendOptions {
            non_confirmable: true,
            security: Some(key),
        },
    );
    let datagram = ep.poll_transmit().unwrap().data;
    // CoAP header, token, OSCORE option, inner code/options and the 8-byte tag around
    // the CBOR body: the whole protected heartbeat stays far below one MTU.
    eprintln!(
        "idle heartbeat: {} bytes CBOR, {} bytes on the wire",
        body.len(),
        datagram.len()
    );
    assert!(
        datagram.len() <= body.len() + 64,
        "{} bytes",
        datagram.len()
    );
}
