//! Hex and join tokens as users pass them.

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
}
