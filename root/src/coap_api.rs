//! The user API over CoAP + CBOR on UDP 10000, for clients on constrained links.
//!
//! Every `/api/...` path of the HTTP API answers over CoAP too, with the same
//! semantics and authorization: the request is protected with an OSCORE context the
//! user obtained from `POST /api/auth/coap` (never a password over CoAP), and is run
//! through the HTTP router in-process as that user. Bodies are CBOR (Content-Format
//! 60) both ways; JSON (50) is accepted, and answered in JSON when asked by Accept.

use crate::auth::TokenKind;
use crate::state::Shared;
use crate::store::now_secs;
use grove_proto::coap::driver::Incoming;
use grove_proto::coap::{Code, Method, Response};
use minicbor::data::Type;
use serde_json::{Map, Number, Value};
use tower::ServiceExt;

const CF_JSON: u16 = 50;
const CF_CBOR: u16 = 60;
/// CoAP user kids start with this byte ('u'), cluster kids are 4-byte ids.
pub const USER_KID_PREFIX: u8 = b'u';

/// Encode a JSON value as CBOR.
pub fn json_to_cbor(v: &Value) -> Vec<u8> {
    fn put(v: &Value, e: &mut minicbor::Encoder<Vec<u8>>) {
        // Encoding into a Vec cannot fail.
        let _ = match v {
            Value::Null => e.null().map(|_| ()),
            Value::Bool(b) => e.bool(*b).map(|_| ()),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => e.u64(u).map(|_| ()),
                (_, Some(i), _) => e.i64(i).map(|_| ()),
                (_, _, f) => e.f64(f.unwrap_or(0.0)).map(|_| ()),
            },
            Value::String(s) => e.str(s).map(|_| ()),
            Value::Array(a) => {
                let _ = e.array(a.len() as u64);
                a.iter().for_each(|x| put(x, e));
                Ok(())
            }
            Value::Object(m) => {
                let _ = e.map(m.len() as u64);
                for (k, x) in m {
                    let _ = e.str(k);
                    put(x, e);
                }
                Ok(())
            }
        };
    }
    let mut e = minicbor::Encoder::new(Vec::new());
    put(v, &mut e);
    e.into_writer()
}

/// Decode CBOR into a JSON value (maps need text keys; depth at most 64).
pub fn cbor_to_json(bytes: &[u8]) -> Result<Value, String> {
    fn get(d: &mut minicbor::Decoder<'_>, depth: usize) -> Result<Value, String> {
        if depth > 64 {
            return Err("nested deeper than 64".into());
        }
        let e = |x: minicbor::decode::Error| x.to_string();
        Ok(match d.datatype().map_err(e)? {
            Type::Null | Type::Undefined => {
                d.skip().map_err(e)?;
                Value::Null
            }
            Type::Bool => Value::Bool(d.bool().map_err(e)?),
            Type::U8 | Type::U16 | Type::U32 | Type::U64 => Value::from(d.u64().map_err(e)?),
            Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
                Value::from(d.i64().map_err(e)?)
            }
            Type::F16 | Type::F32 | Type::F64 => {
                let f = d.f64().map_err(e)?;
                Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
            Type::String | Type::StringIndef => {
                let mut s = String::new();
                for part in d.str_iter().map_err(e)? {
                    s.push_str(part.map_err(e)?);
                }
                Value::String(s)
            }
            Type::Array | Type::ArrayIndef => {
                let n = d.array().map_err(e)?;
                let mut out = Vec::new();
                match n {
                    Some(n) => {
                        for _ in 0..n {
                            out.push(get(d, depth + 1)?);
                        }
                    }
                    None => {
                        while d.datatype().map_err(e)? != Type::Break {
                            out.push(get(d, depth + 1)?);
                        }
                        d.skip().map_err(e)?;
                    }
                }
                Value::Array(out)
            }
            Type::Map | Type::MapIndef => {
                let n = d.map().map_err(e)?;
                let mut m = Map::new();
                let mut entry = |d: &mut minicbor::Decoder<'_>| -> Result<(), String> {
                    // A number stands for its text; a map or array as a key has no
                    // JSON form (as text, each level of them doubles its escapes).
                    let k = match get(d, depth + 1)? {
                        Value::String(s) => s,
                        n @ (Value::Number(_) | Value::Bool(_) | Value::Null) => n.to_string(),
                        _ => return Err("a map key must be text or a number".into()),
                    };
                    let v = get(d, depth + 1)?;
                    m.insert(k, v);
                    Ok(())
                };
                match n {
                    Some(n) => {
                        for _ in 0..n {
                            entry(d)?;
                        }
                    }
                    None => {
                        while d.datatype().map_err(e)? != Type::Break {
                            entry(d)?;
                        }
                        d.skip().map_err(e)?;
                    }
                }
                Value::Object(m)
            }
            Type::Tag => {
                d.tag().map_err(e)?;
                get(d, depth + 1)?
            }
            other => return Err(format!("CBOR {other} has no JSON form")),
        })
    }
    let mut d = minicbor::Decoder::new(bytes);
    get(&mut d, 0)
}

fn code_of(status: u16, method: Method) -> Code {
    match status {
        200..=299 => match method {
            Method::Get | Method::Fetch => Code::CONTENT,
            Method::Delete => Code::DELETED,
            Method::Post if status == 201 => Code::CREATED,
            _ => Code::CHANGED,
        },
        400 => Code::BAD_REQUEST,
        401 => Code::UNAUTHORIZED,
        403 => Code::FORBIDDEN,
        404 => Code::NOT_FOUND,
        405 => Code::METHOD_NOT_ALLOWED,
        409 => Code::CONFLICT,
        413 => Code::REQUEST_ENTITY_TOO_LARGE,
        415 => Code(0x8F),
        501 => Code(0xA1),
        _ => Code::INTERNAL_SERVER_ERROR,
    }
}

/// Handle one CoAP request for the user API.
pub async fn handle(st: Shared, http: axum::Router, inc: Incoming) -> Response {
    let kid = match &inc.security {
        Some(k) if k.id_context.is_none() && k.recipient_id.first() == Some(&USER_KID_PREFIX) => {
            k.recipient_id.clone()
        }
        _ => return Response::error(Code::NOT_FOUND, "no such resource"),
    };
    if !inc.request.path.starts_with("/api/") {
        return Response::error(Code::NOT_FOUND, "no such resource");
    }
    let user = match st.db().coap_user(&kid) {
        Ok(Some(u)) => u,
        _ => {
            return Response::error(
                Code::UNAUTHORIZED,
                "these CoAP credentials belong to no user",
            );
        }
    };
    let body = match inc.request.content_format {
        Some(CF_CBOR) => match cbor_to_json(&inc.request.payload) {
            Ok(v) => v.to_string().into_bytes(),
            Err(e) => return Response::error(Code::BAD_REQUEST, &format!("body is not CBOR: {e}")),
        },
        _ => inc.request.payload.clone(),
    };
    let token = st.keys.issue(
        &user,
        user.organization.as_deref().unwrap_or(""),
        TokenKind::Access,
        now_secs(),
    );
    let method = match inc.request.method {
        Method::Get | Method::Fetch => axum::http::Method::GET,
        Method::Post => axum::http::Method::POST,
        Method::Put => axum::http::Method::PUT,
        Method::Delete => axum::http::Method::DELETE,
    };
    let mut uri = inc.request.path.clone();
    if !inc.request.query.is_empty() {
        uri = format!("{uri}?{}", inc.request.query.join("&"));
    }
    let req = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body));
    let Ok(req) = req else {
        return Response::error(Code::BAD_REQUEST, "bad request line");
    };
    // The router's error type is Infallible.
    let Ok(resp) = http.oneshot(req).await;
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 4 << 20)
        .await
        .unwrap_or_default();
    let code = code_of(status, inc.request.method);
    if inc.request.accept == Some(CF_JSON) {
        return Response {
            code,
            ..Response::content(bytes.to_vec(), Some(CF_JSON))
        };
    }
    let cbor = serde_json::from_slice::<Value>(&bytes)
        .map(|v| json_to_cbor(&v))
        .unwrap_or_default();
    Response {
        code,
        ..Response::content(cbor, Some(CF_CBOR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_and_cbor_convert_both_ways() {
        let v = json!({"a": [1, -2, 2.5, "x", null, true], "b": {"c": 18446744073709551615u64}});
        assert_eq!(cbor_to_json(&json_to_cbor(&v)).unwrap(), v);
    }

    #[test]
    fn absurd_cbor_is_an_error_not_a_crash() {
        let deep: Vec<u8> = std::iter::repeat_n(0x81u8, 1000).chain([0x00]).collect();
        assert!(cbor_to_json(&deep).unwrap_err().contains("deeper"));
        assert!(
            cbor_to_json(&[0x9f, 0x01]).is_err(),
            "unterminated indefinite array"
        );
        assert!(cbor_to_json(&[0xff]).is_err());
        // Maps as keys of maps as keys…: refused, not turned into text that doubles
        // with each level (the SLA fuzzer's out-of-memory input).
        let mut nested = vec![0xa1u8; 40];
        nested.extend_from_slice(&[0x00; 41]);
        assert!(cbor_to_json(&nested).is_err());
        let bomb = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/sla/oom-nested-map-keys"
        ))
        .unwrap();
        assert!(cbor_to_json(&bomb).is_err());
    }
}
