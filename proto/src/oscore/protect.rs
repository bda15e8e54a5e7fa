//! Protecting and unprotecting CoAP messages (RFC 8613 §5, §8).
//!
//! The inner message is a `coap_lite::Packet` (code, Class E options, payload); the
//! outer message carries only what proxies may see: Uri-Host, Uri-Port, Observe and the
//! OSCORE option, with POST/FETCH and 2.04/2.05 as outer codes.

use super::OscoreError;
use super::context::{ALG_AES_CCM_16_64_128, NONCE_LEN, SecurityContext};
use aes::Aes128;
use ccm::aead::{Aead, KeyInit, Payload};
use ccm::consts::{U8, U13};
use coap_lite::{CoapOption, MessageClass, Packet};

type Cipher = ccm::Ccm<Aes128, U8, U13>;

const OPT_OBSERVE: u16 = 6;
const OPT_OSCORE: u16 = 9;
/// Options that stay outside (Class U) and are not copied inside.
const OUTER_ONLY: [u16; 5] = [3, 7, 35, 39, OPT_OSCORE];
/// Echo (RFC 9175).
pub(crate) const OPT_ECHO: u16 = 252;

const CODE_POST: u8 = 0x02;
const CODE_FETCH: u8 = 0x05;
const CODE_CHANGED: u8 = 0x44;
const CODE_CONTENT: u8 = 0x45;

/// What ties a response to its request: the request's kid and Partial IV (the
/// external AAD of every response and notification to it), and whether the request
/// went out as FETCH (an observation), which decides the response's outer code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestBinding {
    /// The request sender's id.
    pub kid: Vec<u8>,
    /// The request's Partial IV, shortest form.
    pub piv: Vec<u8>,
    /// The outer request was FETCH (it carried Observe).
    pub fetch: bool,
}

/// The fields of an OSCORE option (RFC 8613 §6.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptionFields {
    /// Partial IV, 0..=5 bytes.
    pub piv: Option<Vec<u8>>,
    /// kid context.
    pub kid_context: Option<Vec<u8>>,
    /// kid.
    pub kid: Option<Vec<u8>>,
}

/// Encode the OSCORE option value.
pub fn compress_option(f: &OptionFields) -> Vec<u8> {
    let piv = f.piv.as_deref().unwrap_or(&[]);
    // A Partial IV is at most 5 bytes and a kid context at most 255 (checked by callers).
    let mut flags = len_u8(piv.len()) & 0x07;
    if f.kid.is_some() {
        flags |= 0x08;
    }
    if f.kid_context.is_some() {
        flags |= 0x10;
    }
    if flags == 0 {
        return Vec::new();
    }
    let mut v = vec![flags];
    v.extend_from_slice(piv);
    if let Some(c) = &f.kid_context {
        v.push(len_u8(c.len()));
        v.extend_from_slice(&c[..c.len().min(255)]);
    }
    if let Some(k) = &f.kid {
        v.extend_from_slice(k);
    }
    v
}

/// Decode the OSCORE option value.
pub fn decompress_option(v: &[u8]) -> Result<OptionFields, OscoreError> {
    let Some((&flags, mut rest)) = v.split_first() else {
        return Ok(OptionFields::default());
    };
    if flags & 0xE0 != 0 {
        return Err(OscoreError::BadOption("reserved flag bits set"));
    }
    let n = usize::from(flags & 0x07);
    if n > 5 {
        return Err(OscoreError::BadOption("Partial IV longer than 5 bytes"));
    }
    let mut f = OptionFields::default();
    if n > 0 {
        if rest.len() < n {
            return Err(OscoreError::BadOption("truncated Partial IV"));
        }
        f.piv = Some(rest[..n].to_vec());
        rest = &rest[n..];
    }
    if flags & 0x10 != 0 {
        let Some((&s, tail)) = rest.split_first() else {
            return Err(OscoreError::BadOption("missing kid context length"));
        };
        let s = usize::from(s);
        if tail.len() < s {
            return Err(OscoreError::BadOption("truncated kid context"));
        }
        f.kid_context = Some(tail[..s].to_vec());
        rest = &tail[s..];
    }
    if flags & 0x08 != 0 {
        f.kid = Some(rest.to_vec());
    } else if !rest.is_empty() {
        return Err(OscoreError::BadOption("trailing bytes without kid flag"));
    }
    Ok(f)
}

fn len_u8(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

fn piv_of(seq: u64) -> Vec<u8> {
    let b = seq.to_be_bytes();
    let first = b.iter().position(|&x| x != 0).unwrap_or(7);
    b[first..].to_vec()
}

fn seq_of(piv: &[u8]) -> u64 {
    piv.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b))
}

fn nonce(common_iv: &[u8; NONCE_LEN], id_piv: &[u8], piv: &[u8]) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    // Ids are at most 7 bytes (checked at context creation); Partial IVs at most 5.
    n[0] = len_u8(id_piv.len());
    let id_end = NONCE_LEN - 5;
    n[id_end - id_piv.len()..id_end].copy_from_slice(id_piv);
    n[NONCE_LEN - piv.len()..].copy_from_slice(piv);
    for (a, b) in n.iter_mut().zip(common_iv) {
        *a ^= b;
    }
    n
}

fn aad(binding_kid: &[u8], binding_piv: &[u8]) -> Vec<u8> {
    let mut ext = minicbor::Encoder::new(Vec::new());
    // Encoding into a Vec cannot fail.
    let _ = ext
        .array(5)
        .and_then(|e| e.u8(1))
        .and_then(|e| e.array(1))
        .and_then(|e| e.i64(ALG_AES_CCM_16_64_128))
        .and_then(|e| e.bytes(binding_kid))
        .and_then(|e| e.bytes(binding_piv))
        .and_then(|e| e.bytes(&[]));
    let ext = ext.into_writer();
    let mut enc = minicbor::Encoder::new(Vec::new());
    let _ = enc
        .array(3)
        .and_then(|e| e.str("Encrypt0"))
        .and_then(|e| e.bytes(&[]))
        .and_then(|e| e.bytes(&ext));
    enc.into_writer()
}

/// Serialize the inner message: code, Class E options, payload marker and payload.
fn plaintext(inner: &Packet, drop_observe: bool) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.code = inner.header.code;
    for (&num, values) in inner.options() {
        if OUTER_ONLY.contains(&num) || (drop_observe && num == OPT_OBSERVE) {
            continue;
        }
        p.set_option(CoapOption::from(num), values.clone());
    }
    p.payload = inner.payload.clone();
    // The packet has an empty token, so its serialization is a 4-byte header followed
    // by exactly the option and payload encoding we need.
    let bytes = p.to_bytes_unlimited().unwrap_or_default();
    let mut out = Vec::with_capacity(bytes.len().saturating_sub(3));
    out.push(u8::from(inner.header.code));
    out.extend_from_slice(bytes.get(4..).unwrap_or(&[]));
    out
}

fn parse_plaintext(pt: &[u8]) -> Result<Packet, OscoreError> {
    let Some((&code, rest)) = pt.split_first() else {
        return Err(OscoreError::BadPlaintext("empty"));
    };
    let mut buf = Vec::with_capacity(pt.len() + 3);
    buf.extend_from_slice(&[0x40, code, 0, 0]);
    buf.extend_from_slice(rest);
    Packet::from_bytes(&buf).map_err(|_| OscoreError::BadPlaintext("bad options"))
}

fn seal(key: &[u8], nonce: &[u8; NONCE_LEN], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    match Cipher::new_from_slice(key) {
        Ok(c) => c
            .encrypt(nonce.into(), Payload { msg: pt, aad })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

fn open(
    key: &[u8],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ct: &[u8],
) -> Result<Vec<u8>, OscoreError> {
    let c = Cipher::new_from_slice(key).map_err(|_| OscoreError::DecryptFailed)?;
    c.decrypt(nonce.into(), Payload { msg: ct, aad })
        .map_err(|_| OscoreError::DecryptFailed)
}

fn outer_base(inner: &Packet, code: u8) -> Packet {
    let mut outer = Packet::new();
    outer.header.code = MessageClass::from(code);
    for num in [3u16, 7] {
        if let Some(v) = inner.get_option(CoapOption::from(num)) {
            outer.set_option(CoapOption::from(num), v.clone());
        }
    }
    outer
}

/// Read the OSCORE option of an outer message.
pub(crate) fn option_fields(outer: &Packet) -> Result<Option<OptionFields>, OscoreError> {
    match outer.get_first_option(CoapOption::Oscore) {
        None => Ok(None),
        Some(v) => decompress_option(v).map(Some),
    }
}

impl SecurityContext {
    /// Protect a request. Returns the outer message (without type, id and token) and
    /// the binding under which its responses will be protected.
    pub fn protect_request(
        &mut self,
        inner: &Packet,
    ) -> Result<(Packet, RequestBinding), OscoreError> {
        let seq = self.take_seq()?;
        let piv = piv_of(seq);
        let observe = inner.get_first_option(CoapOption::Observe).cloned();
        let fetch = observe.is_some();
        let mut outer = outer_base(inner, if fetch { CODE_FETCH } else { CODE_POST });
        if let Some(o) = observe {
            outer.add_option(CoapOption::Observe, o);
        }
        let opt = compress_option(&OptionFields {
            piv: Some(piv.clone()),
            kid_context: self.id_context().map(<[u8]>::to_vec),
            kid: Some(self.sender_id().to_vec()),
        });
        outer.add_option(CoapOption::Oscore, opt);
        let n = nonce(&self.common_iv, self.sender_id(), &piv);
        let a = aad(self.sender_id(), &piv);
        outer.payload = seal(&self.sender_key, &n, &a, &plaintext(inner, false));
        let binding = RequestBinding {
            kid: self.sender_id().to_vec(),
            piv,
            fetch,
        };
        Ok((outer, binding))
    }

    /// Protect a response to the request identified by `binding`.
    ///
    /// The first response to a request may reuse the request's nonce (`fresh_piv`
    /// false); notifications and any later response must use a fresh Partial IV. With a
    /// fresh Partial IV the returned sequence number is `Some`.
    pub fn protect_response(
        &mut self,
        inner: &Packet,
        binding: &RequestBinding,
        fresh_piv: bool,
    ) -> Result<(Packet, Option<u64>), OscoreError> {
        let code = if binding.fetch {
            CODE_CONTENT
        } else {
            CODE_CHANGED
        };
        let mut outer = outer_base(inner, code);
        let (n, fields, seq) = if fresh_piv {
            let seq = self.take_seq()?;
            let piv = piv_of(seq);
            let n = nonce(&self.common_iv, self.sender_id(), &piv);
            (
                n,
                OptionFields {
                    piv: Some(piv),
                    ..Default::default()
                },
                Some(seq),
            )
        } else {
            (
                nonce(&self.common_iv, &binding.kid, &binding.piv),
                OptionFields::default(),
                None,
            )
        };
        if let Some(o) = inner.get_first_option(CoapOption::Observe) {
            // The outer Observe lets proxies order notifications; the value is the
            // Partial IV's sequence number, which the receiver uses for ordering.
            let v = seq.map(|s| (s & 0xFF_FFFF) as u32).unwrap_or(0);
            let _ = o;
            outer.add_option(CoapOption::Observe, crate::coap::opt::encode_uint(v));
        }
        outer.add_option(CoapOption::Oscore, compress_option(&fields));
        let a = aad(&binding.kid, &binding.piv);
        outer.payload = seal(&self.sender_key, &n, &a, &plaintext(inner, true));
        Ok((outer, seq))
    }

    /// Unprotect a request whose OSCORE option is `fields`. On success returns the inner
    /// request, its binding and its sequence number. A context whose replay window
    /// was lost answers [`OscoreError::EchoRequired`] unless the request carries the
    /// context's Echo value; the binding is still returned then, in the error path of
    /// [`Self::unprotect_request_or_echo`].
    pub fn unprotect_request(
        &mut self,
        outer: &Packet,
        fields: &OptionFields,
    ) -> Result<(Packet, RequestBinding, u64), (OscoreError, Option<RequestBinding>)> {
        let piv = match &fields.piv {
            Some(p) if !p.is_empty() => p.clone(),
            _ => return Err((OscoreError::BadPartialIv, None)),
        };
        let kid = fields.kid.clone().unwrap_or_default();
        let seq = seq_of(&piv);
        if self.replay.is_initialized() && !self.replay.is_valid(seq) {
            return Err((OscoreError::Replay(seq), None));
        }
        let n = nonce(&self.common_iv, &kid, &piv);
        let a = aad(&kid, &piv);
        let pt = open(&self.recipient_key, &n, &a, &outer.payload).map_err(|e| (e, None))?;
        let inner = parse_plaintext(&pt).map_err(|e| (e, None))?;
        let fetch = u8::from(outer.header.code) == CODE_FETCH;
        let binding = RequestBinding { kid, piv, fetch };
        if !self.replay.is_initialized() {
            let echo = self.echo.unwrap_or_default();
            let echoed = inner.get_first_option(CoapOption::from(OPT_ECHO));
            if echoed.map(Vec::as_slice) == Some(&echo[..]) {
                self.replay.initialize_from_fresh(seq);
                self.echo = None;
                self.note_window_used();
            } else {
                return Err((OscoreError::EchoRequired(echo), Some(binding)));
            }
        } else {
            self.replay.mark(seq);
            self.note_window_used();
        }
        Ok((inner, binding, seq))
    }

    /// Unprotect a response (or notification) to the request identified by `binding`.
    /// Returns the inner message and the response's own sequence number, if it has one.
    pub fn unprotect_response(
        &mut self,
        outer: &Packet,
        fields: &OptionFields,
        binding: &RequestBinding,
    ) -> Result<(Packet, Option<u64>), OscoreError> {
        let (n, seq) = match &fields.piv {
            Some(p) if !p.is_empty() => (
                nonce(&self.common_iv, self.recipient_id(), p),
                Some(seq_of(p)),
            ),
            _ => (nonce(&self.common_iv, &binding.kid, &binding.piv), None),
        };
        let a = aad(&binding.kid, &binding.piv);
        let pt = open(&self.recipient_key, &n, &a, &outer.payload)?;
        Ok((parse_plaintext(&pt)?, seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oscore::ContextParams;

    fn pair() -> (SecurityContext, SecurityContext) {
        let p = ContextParams {
            master_secret: (1..=16).collect(),
            master_salt: vec![0x9e, 0x7c, 0xa9, 0x22, 0x23, 0x78, 0x63, 0x40],
            sender_id: vec![],
            recipient_id: vec![1],
            id_context: None,
        };
        let mut q = p.clone();
        std::mem::swap(&mut q.sender_id, &mut q.recipient_id);
        (
            SecurityContext::in_memory(&p),
            SecurityContext::in_memory(&q),
        )
    }

    fn get(path: &str) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::from(0x01);
        p.add_option(CoapOption::UriHost, b"localhost".to_vec());
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        p
    }

    #[test]
    fn request_protection_matches_rfc8613_appendix_c4() {
        // C.4: client (sender id empty) protects GET coap://localhost/tv1 with seq 20.
        let (mut client, _) = pair();
        for _ in 0..20 {
            client.take_seq().unwrap();
        }
        let (outer, _) = client.protect_request(&get("/tv1")).unwrap();
        assert_eq!(
            outer.get_first_option(CoapOption::Oscore).unwrap(),
            &vec![0x09, 0x14]
        );
        let hex: String = outer.payload.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "612f1092f1776f1c1668b3825e");
    }

    #[test]
    fn round_trip_and_rejections() {
        let (mut client, mut server) = pair();
        let (outer, binding) = client.protect_request(&get("/a/b")).unwrap();
        let fields = option_fields(&outer).unwrap().unwrap();
        let (inner, b2, _) = server.unprotect_request(&outer, &fields).unwrap();
        assert_eq!(b2, binding);
        assert_eq!(inner.get_option(CoapOption::UriPath).unwrap().len(), 2);
        // Replay.
        assert!(matches!(
            server.unprotect_request(&outer, &fields),
            Err((OscoreError::Replay(0), _))
        ));
        // Tamper.
        let (mut outer2, _) = client.protect_request(&get("/x")).unwrap();
        outer2.payload[0] ^= 1;
        let f2 = option_fields(&outer2).unwrap().unwrap();
        assert!(matches!(
            server.unprotect_request(&outer2, &f2),
            Err((OscoreError::DecryptFailed, _))
        ));
        // Response.
        let mut resp = Packet::new();
        resp.header.code = MessageClass::from(0x45);
        resp.payload = b"hello".to_vec();
        let (router, _) = server.protect_response(&resp, &b2, false).unwrap();
        let rf = option_fields(&router).unwrap().unwrap();
        let (rin, seq) = client.unprotect_response(&router, &rf, &binding).unwrap();
        assert_eq!((rin.payload.as_slice(), seq), (&b"hello"[..], None));
    }

    #[test]
    fn option_value_round_trips() {
        let f = OptionFields {
            piv: Some(vec![5]),
            kid_context: Some(b"ctx".to_vec()),
            kid: Some(vec![1, 2]),
        };
        assert_eq!(decompress_option(&compress_option(&f)).unwrap(), f);
        assert!(decompress_option(&[0x06]).is_err());
        assert!(decompress_option(&[0x13]).is_err());
    }
}
