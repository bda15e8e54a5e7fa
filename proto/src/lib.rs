//! Grove's wire contract and tier link: CBOR messages, CoAP reliability, OSCORE.
//!
//! Everything that crosses a link between tiers is defined here, in one place:
//!
//! - [`msg`]: every CBOR message type exchanged between root, cluster and agent,
//!   with numbered fields that are never renumbered;
//! - [`paths`]: the CoAP resource paths of each tier;
//! - [`coap`]: a sans-IO CoAP endpoint (RFC 7252 message layer, RFC 7959 block-wise,
//!   RFC 7641 Observe) with OSCORE (RFC 8613) between the message and request layers,
//!   and a thin tokio driver around it;
//! - [`oscore`]: security contexts, protection and the join-token derivation;
//! - [`sim`]: a seeded in-memory network for deterministic tests of the core.

pub mod coap;
#[cfg(feature = "config")]
pub mod config;
pub mod defence;
#[doc(hidden)]
pub mod fuzzing;
pub mod link;
pub mod msg;
pub mod oscore;
pub mod paths;
pub mod ports;
pub mod service;
pub mod sim;
pub mod util;
pub mod vivaldi;

pub use msg::{PROTOCOL_VERSION, ProtocolVersion};
