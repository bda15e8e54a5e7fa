//! Small shared pieces: hex, join tokens, great-circle distance, who a request speaks for.

use crate::coap::driver::Incoming;
use crate::coap::{Code, Response};
use crate::msg::GeoPoint;

/// Lower-case hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes of a hex string; `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// A join token as users pass it: `<8-byte id hex>.<secret hex>`.
pub fn parse_join_token(t: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let (id, secret) = t.trim().split_once('.')?;
    let (id, secret) = (unhex(id)?, unhex(secret)?);
    (id.len() == 8 && !secret.is_empty()).then_some((id, secret))
}

/// Format a join token.
pub fn format_join_token(id: &[u8], secret: &[u8]) -> String {
    format!("{}.{}", hex(id), hex(secret))
}

/// Great-circle distance in km (haversine).
pub fn distance_km(a: GeoPoint, b: GeoPoint) -> f64 {
    let (la1, la2) = (f64::from(a.lat).to_radians(), f64::from(b.lat).to_radians());
    let dlat = la2 - la1;
    let dlon = (f64::from(b.lon) - f64::from(a.lon)).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

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

/// Make `dir` (and its missing parents) and keep it to its owner (0700): a daemon's
/// state directory holds its keys.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Replace `path` with `bytes`, readable by its owner only (0600): written to a
/// temporary file beside it, synced, renamed over it and the directory synced, so a
/// process killed at any moment leaves the old content or the new one, whole.
pub fn replace_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Keep a database file holding keys, and its WAL and shared-memory files, to its
/// owner (0600); SQLite makes the latter two with the database's mode, so this is
/// called right after the database is opened, before its first write.
pub fn private_database(db: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut all = vec![db.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        all.push(p.into());
    }
    for p in all.iter().filter(|p| p.exists()) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Whether something said at most once every `secs` seconds may be said now (`last`
/// holds when it was said, Unix seconds; 0 never).
pub fn now_and_then(last: &std::sync::atomic::AtomicU64, secs: u64) -> bool {
    use std::sync::atomic::Ordering;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs().max(1));
    let before = last.load(Ordering::Relaxed);
    (before == 0 || now >= before + secs)
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
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

/// A `--location LAT,LON` flag (the daemons' common form), with the flag named in
/// the error.
pub fn parse_location(s: &str) -> Result<GeoPoint, String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("--location {s}: expected LAT,LON"))?;
    match (a.trim().parse::<f32>(), b.trim().parse::<f32>()) {
        (Ok(lat), Ok(lon)) if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) => {
            Ok(GeoPoint { lat, lon })
        }
        _ => Err(format!(
            "--location {s}: latitude -90..90, longitude -180..180"
        )),
    }
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

    #[test]
    fn tokens_and_hex_round_trip_and_bad_ones_are_refused() {
        let t = format_join_token(b"abcdefgh", b"s3cret");
        assert_eq!(
            parse_join_token(&t),
            Some((b"abcdefgh".to_vec(), b"s3cret".to_vec()))
        );
        assert_eq!(parse_join_token("0011.22"), None, "id must be 8 bytes");
        assert_eq!(parse_join_token("nonsense"), None);
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn munich_to_berlin_is_about_504_km() {
        let d = distance_km(
            GeoPoint {
                lat: 48.14,
                lon: 11.58,
            },
            GeoPoint {
                lat: 52.52,
                lon: 13.40,
            },
        );
        assert!((d - 504.0).abs() < 5.0, "{d}");
    }
}
