//! The walker under the SLA parser: typed reads of JSON fields, each problem kept
//! with its field path.

use super::*;

/// Walks a JSON value, collecting every problem with its path.
pub(super) struct Walk {
    pub(super) errors: Vec<FieldError>,
}

pub(super) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

impl Walk {
    pub(super) fn err(&mut self, field: &str, reason: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.to_owned(),
            reason: reason.into(),
        });
    }

    pub(super) fn object<'v>(
        &mut self,
        v: &'v Value,
        field: &str,
    ) -> Option<&'v Map<String, Value>> {
        match v.as_object() {
            Some(m) => Some(m),
            None => {
                self.err(field, format!("must be an object, not {}", describe(v)));
                None
            }
        }
    }

    pub(super) fn string(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        required: bool,
    ) -> Option<String> {
        let field = join(path, key);
        match m.get(key) {
            None | Some(Value::Null) if required => {
                self.err(&field, "is required");
                None
            }
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => {
                self.err(&field, format!("must be a string, not {}", describe(v)));
                None
            }
        }
    }

    pub(super) fn name(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> String {
        let s = self.string(m, key, path, true).unwrap_or_default();
        let ok = (1..=30).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric());
        if !ok && m.get(key).is_some_and(Value::is_string) {
            self.err(
                &join(path, key),
                format!("\"{s}\" must be 1 to 30 letters or digits"),
            );
        }
        s
    }

    pub(super) fn number(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        max: f64,
    ) -> Option<f64> {
        let field = join(path, key);
        match m.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if x.is_finite() && (0.0..=max).contains(&x) => Some(x),
                _ => {
                    self.err(&field, format!("{n} is out of range 0..={max}"));
                    None
                }
            },
            Some(v) => {
                self.err(&field, format!("must be a number, not {}", describe(v)));
                None
            }
        }
    }

    pub(super) fn whole(&mut self, m: &Map<String, Value>, key: &str, path: &str, max: u64) -> u64 {
        match self.number(m, key, path, max as f64) {
            Some(x) if x.fract() != 0.0 => {
                self.err(&join(path, key), format!("{x} must be a whole number"));
                0
            }
            Some(x) => exact_u64(x),
            None => 0,
        }
    }

    pub(super) fn boolean(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> bool {
        match m.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                self.err(
                    &join(path, key),
                    format!("must be true or false, not {}", describe(v)),
                );
                false
            }
        }
    }

    pub(super) fn array<'v>(
        &mut self,
        m: &'v Map<String, Value>,
        key: &str,
        path: &str,
        required: bool,
    ) -> &'v [Value] {
        match m.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.err(&join(path, key), "is required");
                }
                &[]
            }
            Some(Value::Array(a)) => a,
            Some(v) => {
                self.err(
                    &join(path, key),
                    format!("must be a list, not {}", describe(v)),
                );
                &[]
            }
        }
    }

    pub(super) fn strings(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> Vec<String> {
        let items = self.array(m, key, path, false);
        let mut out = Vec::new();
        for (i, v) in items.iter().enumerate() {
            match v.as_str() {
                Some(s) => out.push(s.to_owned()),
                None => self.err(
                    &format!("{}[{i}]", join(path, key)),
                    format!("must be a string, not {}", describe(v)),
                ),
            }
        }
        out
    }
}

/// A whole, non-negative, in-range number (checked by the caller) as an integer.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub(super) fn exact_u64(x: f64) -> u64 {
    x as u64
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}
