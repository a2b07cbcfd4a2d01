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

/// Read straight from the parser, without building a `serde_json::Value` first: values are
/// on every request's path. Booleans become 1 and 0; integers past `i64` and arrays are
/// refused; the only object is `{"base64": "…"}`, a blob.
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

const NOT_A_BLOB: &str = "objects are not SQL values; a blob is written {\"base64\": \"…\"}";

impl<'de> de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an SQL value: null, a number, a string, a boolean or {\"base64\": \"…\"}")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Integer(i64::from(b)))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Integer(i))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        i64::try_from(u).map(Value::Integer).map_err(|_| {
            E::custom(format!(
                "integer {u} does not fit in SQLite's 64-bit signed integer"
            ))
        })
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Real(f))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Text(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        Ok(Value::Text(s))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(de::Error::custom(
            "arrays are not SQL values (store JSON as a string)",
        ))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let blob = match map.next_key::<std::borrow::Cow<'de, str>>()? {
            Some(k) if k == "base64" => match map.next_value::<serde_json::Value>()? {
                serde_json::Value::String(b64) => STANDARD.decode(b64).map_err(|_| {
                    de::Error::custom("blob value {\"base64\": …} is not valid base64")
                })?,
                _ => return Err(de::Error::custom(NOT_A_BLOB)),
            },
            _ => return Err(de::Error::custom(NOT_A_BLOB)),
        };
        if map.next_key::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(NOT_A_BLOB));
        }
        Ok(Value::Blob(blob))
    }
}

/// Statement parameters: positional (`?`, `?NNN`) or named (`:name`, `@name`, `$name`).
#[derive(Debug, Clone, Default)]
pub enum Params {
    #[default]
    None,
    Positional(Vec<Value>),
    /// Keys may be given with or without their prefix character.
    Named(std::collections::BTreeMap<String, Value>),
}

/// By hand rather than `#[serde(untagged)]`, which buffers the input and tries each shape
/// in turn (building an error for each miss): parameters are on every request's path.
impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ParamsVisitor;
        impl<'de> de::Visitor<'de> for ParamsVisitor {
            type Value = Params;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("params as an array (positional), an object (named) or null")
            }

            fn visit_unit<E: de::Error>(self) -> Result<Params, E> {
                Ok(Params::None)
            }

            fn visit_none<E: de::Error>(self) -> Result<Params, E> {
                Ok(Params::None)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Params, D::Error> {
                d.deserialize_any(ParamsVisitor)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Params, A::Error> {
                let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(v) = seq.next_element()? {
                    values.push(v);
                }
                Ok(Params::Positional(values))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Params, A::Error> {
                let mut named = std::collections::BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    named.insert(k, v);
                }
                Ok(Params::Named(named))
            }
        }
        d.deserialize_any(ParamsVisitor)
    }
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

    #[test]
    fn params_take_every_shape_and_refuse_others() {
        let st: crate::Statement =
            serde_json::from_str(r#"{"sql":"x","params":[1,"a",null,true,1.5,{"base64":"AA=="}]}"#)
                .unwrap();
        let Params::Positional(v) = st.params else {
            panic!("positional")
        };
        assert_eq!(
            v,
            [
                Value::Integer(1),
                Value::Text("a".into()),
                Value::Null,
                Value::Integer(1),
                Value::Real(1.5),
                Value::Blob(vec![0])
            ]
        );
        let st: crate::Statement =
            serde_json::from_str(r#"{"sql":"x","params":{":a":1,"b":"c"}}"#).unwrap();
        let Params::Named(m) = st.params else {
            panic!("named")
        };
        assert_eq!(m.len(), 2);
        assert_eq!(m[":a"], Value::Integer(1));
        for none in [r#"{"sql":"x"}"#, r#"{"sql":"x","params":null}"#] {
            let st: crate::Statement = serde_json::from_str(none).unwrap();
            assert!(matches!(st.params, Params::None), "{none}");
        }
        for bad in [
            r#"{"sql":"x","params":"a"}"#,
            r#"{"sql":"x","params":5}"#,
            r#"{"sql":"x","params":[[1]]}"#,
            r#"{"sql":"x","params":{"a":{"b":1}}}"#,
            r#"{"sql":"x","params":[{"base64":"AA==","x":1}]}"#,
        ] {
            assert!(
                serde_json::from_str::<crate::Statement>(bad).is_err(),
                "{bad}"
            );
        }
        let e = serde_json::from_str::<crate::Statement>(
            r#"{"sql":"x","params":[18446744073709551615]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("does not fit"), "{e}");
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
