//! CoAP for the tier links: a sans-IO endpoint and a thin tokio driver around it.
//!
//! [`Endpoint`] is a pure state machine in the shape of quinn-proto: no sockets and no
//! clock. The caller feeds datagrams in with [`Endpoint::handle_datagram`], fires
//! timers with [`Endpoint::handle_timeout`], takes datagrams out with
//! [`Endpoint::poll_transmit`], events out with [`Endpoint::poll_event`], and asks
//! [`Endpoint::poll_timeout`] when to call again. It implements:
//!
//! - the RFC 7252 message layer: confirmable and non-confirmable messages,
//!   retransmission with exponential back-off, duplicate detection by message ID
//!   (a duplicate request runs its handler once and gets the same response), token
//!   matching, piggybacked and separate responses, NSTART;
//! - OSCORE (RFC 8613) between the message layer and the request layer;
//! - block-wise transfer (RFC 7959), inside OSCORE, for bodies over the block size;
//! - Observe (RFC 7641) with confirmable notifications that replace an unacknowledged
//!   older one, so an observer never sees an older value after a newer one.
//!
//! [`driver`] runs an endpoint on a tokio UDP socket with a client API (`request`,
//! `observe`) and a router of async handlers.

mod client;
pub mod driver;
mod endpoint;
pub mod opt;
mod server;
mod types;

pub use endpoint::{Endpoint, Transmit};
pub use types::*;
