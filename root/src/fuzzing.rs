//! The root's parsers of untrusted input as plain functions, shared by the fuzz target
//! (`root/fuzz`) and the stable replay of its corpus (`root/tests/fuzz_corpus.rs`).

use crate::coap_api::{cbor_to_json, json_to_cbor};
use crate::sla;

/// Any request body as an SLA: as JSON (the HTTP API) and as CBOR (the CoAP API, whose
/// JSON must survive the way back to CBOR and again). Every field error must name a
/// field. Returns how many readings gave a valid SLA.
pub fn sla(data: &[u8]) -> usize {
    let mut valid = 0;
    let check = |v: &serde_json::Value| match sla::parse(v) {
        Ok(_) => 1,
        Err(errors) => {
            assert!(!errors.is_empty(), "an SLA refused without a reason");
            0
        }
    };
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        valid += check(&v);
    }
    if let Ok(v) = cbor_to_json(data) {
        valid += check(&v);
        let again = cbor_to_json(&json_to_cbor(&v)).expect("CBOR made from JSON reads back");
        assert_eq!(again, v, "JSON → CBOR → JSON changed the document");
    }
    valid
}
