//! The datagram → OSCORE → CBOR path as one function, for `cargo fuzz` and for the
//! unit test that replays the fuzz corpus on stable.
//!
//! Whatever the bytes, nothing here may panic, hang or allocate without bound.

use crate::coap::{Config, Endpoint, Event, Request, Response, SendOptions};
use crate::msg;
use crate::oscore::{ContextParams, decompress_option};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The context the fuzz corpus's protected seeds were made with (server side).
pub fn server_context() -> ContextParams {
    ContextParams {
        master_secret: b"grove fuzz master secret 32byte".to_vec(),
        master_salt: b"fuzz".to_vec(),
        sender_id: vec![0x5e],
        recipient_id: vec![0x0c],
        id_context: None,
    }
}

/// The client side of [`server_context`].
pub fn client_context() -> ContextParams {
    let s = server_context();
    ContextParams {
        sender_id: s.recipient_id.clone(),
        recipient_id: s.sender_id.clone(),
        ..s
    }
}

/// Peer address used for every fuzz datagram.
pub fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2], 5683))
}

fn decode_all(body: &[u8]) {
    let _ = msg::from_cbor::<msg::RegisterNode>(body);
    let _ = msg::from_cbor::<msg::NodeRegistered>(body);
    let _ = msg::from_cbor::<msg::Heartbeat>(body);
    let _ = msg::from_cbor::<msg::NodeCommands>(body);
    let _ = msg::from_cbor::<msg::RegisterCluster>(body);
    let _ = msg::from_cbor::<msg::ClusterRegistered>(body);
    let _ = msg::from_cbor::<msg::ClusterReport>(body);
    let _ = msg::from_cbor::<msg::ClusterCommands>(body);
    let _ = msg::from_cbor::<msg::LogChunk>(body);
    let _ = msg::from_cbor::<msg::LogAsk>(body);
    let _ = msg::from_cbor::<Vec<msg::NodeInfo>>(body);
    let _ = msg::from_cbor::<msg::WorkerTokenAsk>(body);
    let _ = msg::from_cbor::<Vec<msg::WorkerTokenInfo>>(body);
    let _ = msg::from_cbor::<msg::ServiceEntry>(body);
}

/// Feed `data` to a protected server endpoint and to a client endpoint waiting for a
/// response, run their timers, decode every delivered body as each message type.
/// Returns how many requests reached the server application.
pub fn datagram(data: &[u8]) -> usize {
    let now = Instant::now();
    let mut delivered = 0;

    let mut server = Endpoint::new(Config {
        seed: 1,
        ..Config::default()
    });
    server.add_context_params(&server_context());
    server.add_join_token(b"fuzztok1".to_vec(), b"join secret".to_vec());
    server.handle_datagram(now, peer(), data);
    // The same bytes twice: duplicate detection must hold too.
    server.handle_datagram(now, peer(), data);
    let mut t = now;
    for _ in 0..4 {
        while let Some(ev) = server.poll_event() {
            if let Event::Request { id, request, .. } = ev {
                delivered += 1;
                decode_all(&request.payload);
                server.respond(t, id, Response::cbor(request.payload));
            }
        }
        while server.poll_transmit().is_some() {}
        t += Duration::from_secs(3);
        server.handle_timeout(t);
    }

    let mut client = Endpoint::new(Config {
        seed: 2,
        ..Config::default()
    });
    let key = client.add_context_params(&client_context());
    client.request(
        now,
        peer(),
        Request::observe("/v1/nodes/1/commands"),
        SendOptions::secure(key),
    );
    client.request(now, peer(), Request::get("/plain"), SendOptions::default());
    while client.poll_transmit().is_some() {}
    client.handle_datagram(now, peer(), data);
    while let Some(ev) = client.poll_event() {
        if let Event::Response { response, .. } | Event::Notification { response, .. } = ev {
            decode_all(&response.payload);
        }
    }

    let _ = decompress_option(data);
    decode_all(data);
    delivered
}
