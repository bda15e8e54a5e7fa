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
        Some(k) if k.id_context.is_none() && k.recipient_id == id.to_be_bytes() => Ok(id),
        _ => Err(Response::error(
            Code::FORBIDDEN,
            &format!("not this {what}'s credentials"),
        )),
    }
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
