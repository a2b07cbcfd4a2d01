//! Reading internally tagged JSON objects (`{"type": "execute", "stmt": …}`) without
//! buffering them.
//!
//! serde's derived `#[serde(tag = "type")]` first copies the whole object into an internal,
//! generic tree (it cannot know where the tag is), then reads the variant from that copy.
//! For a libSQL pipeline that copy was most of the cost of parsing it (docs/benchmarks.md).
//! Every libSQL client
//! writes the tag first, so when the first key is `type` the variant is read straight from
//! the parser; only an object with its tag elsewhere takes the buffered way (through a
//! `serde_json::Value`). No crate does this for serde, hence the hand-written visitor.
//!
//! The variants themselves stay declared by `#[derive(Deserialize)]` with
//! `#[serde(remote = "Self")]`, which makes the derived code an inherent
//! `T::deserialize` reading serde's externally tagged form; [`VariantBody`] presents the
//! tag and the rest of the object in that form. Unknown fields are ignored and an unknown
//! tag is "unknown variant `…`, expected one of …", as with the derived code.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize as _, DeserializeSeed, Deserializer, MapAccess, Visitor};

/// A type read from an object whose `type` field names the variant.
pub(crate) trait Tagged: Sized {
    /// What the error says is expected, e.g. "a Hrana value".
    const EXPECTING: &'static str;

    /// Reads the variant `tag` from the rest of the object, `body` (a map without the tag):
    /// `Self::deserialize(VariantBody::new(tag, body))`, the derived remote code.
    fn from_body<'de, D: Deserializer<'de>>(tag: &str, body: D) -> Result<Self, D::Error>;
}

/// Deserializes a [`Tagged`] type: `T::deserialize` delegates here.
pub(crate) fn deserialize<'de, T: Tagged, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_map(TaggedVisitor(PhantomData))
}

struct TaggedVisitor<T>(PhantomData<T>);

impl<'de, T: Tagged> Visitor<'de> for TaggedVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (an object with a \"type\" field)", T::EXPECTING)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        match map.next_key_seed(KeySeed)? {
            None => Err(de::Error::missing_field("type")),
            Some(Key::Type) => {
                let tag = map.next_value_seed(TagSeed)?;
                T::from_body(&tag, de::value::MapAccessDeserializer::new(map))
            }
            Some(Key::Other(first)) => {
                let mut object = serde_json::Map::new();
                object.insert(first, map.next_value()?);
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    object.insert(k, v);
                }
                let tag = match object.remove("type") {
                    Some(serde_json::Value::String(tag)) => tag,
                    Some(_) => return Err(de::Error::custom("\"type\" must be a string")),
                    None => return Err(de::Error::missing_field("type")),
                };
                T::from_body(&tag, serde_json::Value::Object(object)).map_err(de::Error::custom)
            }
        }
    }
}

/// An object key: `type`, or any other (kept, for the buffered way).
enum Key {
    Type,
    Other(String),
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(KeySeed)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(if v == "type" {
            Key::Type
        } else {
            Key::Other(v.to_owned())
        })
    }
}

/// The tag's text, borrowed from the input when it has no escapes (what every client
/// sends), so that reading it allocates nothing.
struct TagSeed;

impl<'de> DeserializeSeed<'de> for TagSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(TagSeed)
    }
}

impl<'de> Visitor<'de> for TagSeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// A variant's tag and the rest of its object, seen as serde's externally tagged enum.
pub(crate) struct VariantBody<'a, D> {
    tag: &'a str,
    body: D,
}

impl<'a, D> VariantBody<'a, D> {
    pub(crate) fn new(tag: &'a str, body: D) -> Self {
        VariantBody { tag, body }
    }
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for VariantBody<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de, D: Deserializer<'de>> de::EnumAccess<'de> for VariantBody<'_, D> {
    type Error = D::Error;
    type Variant = Body<D>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Body<D>), D::Error> {
        let variant = seed.deserialize(de::value::StrDeserializer::<D::Error>::new(self.tag))?;
        Ok((variant, Body(self.body)))
    }
}

/// The fields of one variant.
pub(crate) struct Body<D>(D);

impl<'de, D: Deserializer<'de>> de::VariantAccess<'de> for Body<D> {
    type Error = D::Error;

    /// A variant without fields: any fields given are read and ignored.
    fn unit_variant(self) -> Result<(), D::Error> {
        de::IgnoredAny::deserialize(self.0).map(|_| ())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, D::Error> {
        seed.deserialize(self.0)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_seq(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct("", fields, visitor)
    }
}

/// Implements `Deserialize` for an enum declared with `#[derive(Deserialize)]` and
/// `#[serde(remote = "Self")]`, reading it from objects tagged by `type`.
macro_rules! deserialize_tagged {
    ($t:ty, $expecting:literal) => {
        impl $crate::tagged::Tagged for $t {
            const EXPECTING: &'static str = $expecting;

            fn from_body<'de, D: serde::Deserializer<'de>>(
                tag: &str,
                body: D,
            ) -> Result<Self, D::Error> {
                // The derived (remote) code, an inherent function.
                <$t>::deserialize($crate::tagged::VariantBody::new(tag, body))
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::tagged::deserialize(d)
            }
        }
    };
}
pub(crate) use deserialize_tagged;
