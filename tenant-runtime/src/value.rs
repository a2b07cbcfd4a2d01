//! Values as they cross the JSON API: `null`, integer, float, string, and blobs as
//! `{"base64": "…"}`. Booleans are accepted on input as 1 and 0, as SQLite stores them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// One SQLite value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    /// Bytes this value adds to a result, for the result size cap.
    pub(crate) fn weight(&self) -> usize {
        match self {
            Value::Null => 4,
            Value::Integer(_) | Value::Real(_) => 8,
            Value::Text(s) => s.len() + 2,
            // base64 grows blobs by a third on the wire.
            Value::Blob(b) => b.len() * 4 / 3 + 16,
        }
    }

    /// Bytes this value adds to a libSQL (Hrana) result, where every value is a tagged
    /// object: `{"type":"integer","value":"1"}` and so on.
    pub(crate) fn hrana_weight(&self) -> usize {
        match self {
            Value::Null => 16,
            Value::Integer(_) => 50,
            Value::Real(_) => 50,
            Value::Text(s) => s.len() + 32,
            Value::Blob(b) => b.len() * 4 / 3 + 32,
        }
    }

    pub(crate) fn from_ref(v: ValueRef<'_>) -> Value {
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Owned(SqlValue::Null),
            Value::Integer(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
            Value::Real(f) => ToSqlOutput::Owned(SqlValue::Real(*f)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_none(),
            Value::Integer(i) => s.serialize_i64(*i),
            // JSON has no NaN or infinity; SQLite never stores NaN, and ±inf go out as null.
            Value::Real(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Real(_) => s.serialize_none(),
            Value::Text(t) => s.serialize_str(t),
            Value::Blob(b) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("base64", &STANDARD.encode(b))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = serde_json::Value::deserialize(d)?;
        Value::try_from(json).map_err(de::Error::custom)
    }
}

impl TryFrom<serde_json::Value> for Value {
    type Error = String;

    fn try_from(json: serde_json::Value) -> Result<Self, String> {
        use serde_json::Value as J;
        Ok(match json {
            J::Null => Value::Null,
            J::Bool(b) => Value::Integer(i64::from(b)),
            J::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Integer(i)
                } else if n.is_u64() {
                    return Err(format!(
                        "integer {n} does not fit in SQLite's 64-bit signed integer"
                    ));
                } else {
                    Value::Real(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            J::String(s) => Value::Text(s),
            J::Object(map) => match (map.len(), map.get("base64")) {
                (1, Some(J::String(b64))) => Value::Blob(
                    STANDARD
                        .decode(b64)
                        .map_err(|_| "blob value {\"base64\": …} is not valid base64".to_owned())?,
                ),
                _ => {
                    return Err(
                        "objects are not SQL values; a blob is written {\"base64\": \"…\"}"
                            .to_owned(),
                    );
                }
            },
            J::Array(_) => {
                return Err("arrays are not SQL values (store JSON as a string)".to_owned());
            }
        })
    }
}

/// Statement parameters: positional (`?`, `?NNN`) or named (`:name`, `@name`, `$name`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum Params {
    #[default]
    None,
    Positional(Vec<Value>),
    /// Keys may be given with or without their prefix character.
    Named(std::collections::BTreeMap<String, Value>),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn blobs_are_base64_objects_both_ways() {
        let v: Value = serde_json::from_str(r#"{"base64":"AAEC"}"#).unwrap();
        assert_eq!(v, Value::Blob(vec![0, 1, 2]));
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"base64":"AAEC"}"#);
    }

    #[test]
    fn unsupported_json_is_refused_with_a_reason() {
        for bad in [
            r#"[1]"#,
            r#"{"x":1}"#,
            r#"{"base64":"***"}"#,
            "18446744073709551615",
        ] {
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn integers_text_and_blobs_round_trip(i in any::<i64>(), s in ".*", b in proptest::collection::vec(any::<u8>(), 0..64)) {
            for v in [Value::Integer(i), Value::Text(s.clone()), Value::Blob(b.clone())] {
                let json = serde_json::to_string(&v).unwrap();
                prop_assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), v);
            }
        }
    }
}
