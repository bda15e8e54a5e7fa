//! Who a request speaks for: a lower-tier peer's OSCORE sender id carries its id and
//! its key generation.

use crate::coap::driver::Incoming;
use crate::coap::{Code, Response};

/// The peer id in path parameter `{id}`, if the request's long-term OSCORE kid is that
/// id (a lower tier may only speak for itself); else the error to answer.
pub fn speaks_for(inc: &Incoming, what: &str) -> Result<u32, Response> {
    let id: u32 = inc
        .param("id")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Response::error(Code::NOT_FOUND, &format!("no such {what}")))?;
    match &inc.security {
        Some(k)
            if k.id_context.is_none() && peer_of_kid(&k.recipient_id).map(|p| p.0) == Some(id) =>
        {
            Ok(id)
        }
        _ => Err(Response::error(
            Code::FORBIDDEN,
            &format!("not this {what}'s credentials"),
        )),
    }
}

/// Key generations a peer can go through ([`peer_kid`] has three bytes for it).
pub const MAX_KEY_GENERATION: u32 = 0xFF_FFFF;

/// The OSCORE sender id of a lower-tier peer (worker or cluster) `id` under its key
/// of `generation` (at most [`MAX_KEY_GENERATION`]): the id's 4 bytes, then for a
/// re-keyed peer the generation's low 3 (OSCORE ids are at most 7 bytes with
/// AES-CCM-16-64-128), so the old and the new key live side by side while it
/// switches.
pub fn peer_kid(id: u32, generation: u32) -> Vec<u8> {
    let mut k = id.to_be_bytes().to_vec();
    if generation > 0 {
        k.extend_from_slice(&generation.min(MAX_KEY_GENERATION).to_be_bytes()[1..]);
    }
    k
}

/// The (peer id, key generation) a sender id of [`peer_kid`] names.
pub fn peer_of_kid(kid: &[u8]) -> Option<(u32, u32)> {
    let id = u32::from_be_bytes(kid.get(..4)?.try_into().ok()?);
    match kid.len() {
        4 => Some((id, 0)),
        7 => Some((id, u32::from_be_bytes([0, kid[4], kid[5], kid[6]]))).filter(|g| g.1 > 0),
        _ => None,
    }
}

/// The key generation a request of a peer was protected with (0 unprotected).
pub fn key_generation(inc: &Incoming) -> u32 {
    inc.security
        .as_ref()
        .and_then(|k| peer_of_kid(&k.recipient_id))
        .map_or(0, |p| p.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_carry_the_key_generation_within_oscore_s_7_bytes() {
        assert_eq!(peer_kid(5, 0), [0, 0, 0, 5]);
        assert_eq!(peer_kid(5, 1), [0, 0, 0, 5, 0, 0, 1]);
        for (id, g) in [
            (0, 0),
            (7, 1),
            (u32::MAX, MAX_KEY_GENERATION),
            (300, 65_536),
        ] {
            let k = peer_kid(id, g);
            assert!(k.len() <= 7);
            assert_eq!(peer_of_kid(&k), Some((id, g)));
        }
        assert_eq!(
            peer_of_kid(&[0, 0, 0, 5, 0, 0, 0]),
            None,
            "generation 0 has no suffix"
        );
        assert_eq!(peer_of_kid(&[1, 2, 3]), None);
        assert_eq!(peer_of_kid(&[1, 2, 3, 4, 5]), None);
    }
}
