//! Decoding the log's internally tagged enums without serde's buffering.
//!
//! [`Event`](super::Event) and [`IngestBody`](super::IngestBody) are maps
//! whose `"k"` entry names the variant (`#[serde(tag = "k")]`). serde's
//! derived decoder cannot know where in the map the tag is, so it first
//! copies the whole map into a tree of its own (every string and byte
//! string allocated once more, an ingest batch's every item) and then
//! decodes the variant from that copy. Every replica decodes every entry
//! it receives, so that copy was the largest single cost of replication
//! under MQTT ingest.
//!
//! serde writes the tag as the map's first entry. [`deserialize`] reads the
//! first key; when it is the tag, the variants a type lists in
//! [`Tagged::variant`] (the frequent ones) are decoded straight from the
//! rest of the map. Any other map (another variant, the tag elsewhere, no
//! tag) goes to the derived decoder with the entries already read put back
//! in front, so it is decoded exactly as before. A map's keys must be
//! strings, as they are in every map serde writes for these types.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{MapAccessDeserializer, StrDeserializer};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// The key of the entry that names the variant.
pub(crate) const TAG: &str = "k";

/// What [`Tagged::variant`] made of the rest of a map.
pub(super) enum Fast<T, A> {
    /// The value, decoded from the rest of the map.
    Done(T),
    /// Not a variant decoded here: the map, untouched since the tag.
    Derived(A),
}

/// An internally tagged enum whose frequent variants decode directly.
pub(super) trait Tagged<'de>: Deserialize<'de> {
    /// Decodes variant `tag` from the rest of its map (the entries after
    /// the tag), or hands the map back for the derived decoder.
    fn variant<A: MapAccess<'de>>(tag: &str, rest: A) -> Result<Fast<Self, A>, A::Error>;
}

/// Decodes a `T` (for `#[serde(deserialize_with = "…")]`): see the module.
pub(super) fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Tagged<'de>,
{
    d.deserialize_map(TaggedVisitor(PhantomData))
}

struct TaggedVisitor<T>(PhantomData<T>);

impl<'de, T: Tagged<'de>> Visitor<'de> for TaggedVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a map with its variant in \"{TAG}\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return T::deserialize(MapAccessDeserializer::new(map));
        };
        if key != TAG {
            return derived(Replay::key(key, map));
        }
        let tag: String = map.next_value()?;
        match T::variant(&tag, map)? {
            Fast::Done(value) => Ok(value),
            Fast::Derived(map) => derived(Replay::entry(key, tag, map)),
        }
    }
}

fn derived<'de, T: Deserialize<'de>, A: MapAccess<'de>>(map: Replay<A>) -> Result<T, A::Error> {
    T::deserialize(MapAccessDeserializer::new(map))
}

/// A map with the key, or the whole entry, read from its front put back.
struct Replay<A> {
    key: Option<String>,
    value: Option<String>,
    rest: A,
}

impl<A> Replay<A> {
    /// `key` was read; its value is still in `rest`.
    fn key(key: String, rest: A) -> Self {
        Self {
            key: Some(key),
            value: None,
            rest,
        }
    }

    /// The entry `key: value` was read.
    fn entry(key: String, value: String, rest: A) -> Self {
        Self {
            key: Some(key),
            value: Some(value),
            rest,
        }
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Replay<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.key.take() {
            Some(key) => seed.deserialize(StrDeserializer::new(&key)).map(Some),
            None => self.rest.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        match self.value.take() {
            Some(value) => seed.deserialize(StrDeserializer::new(&value)),
            None => self.rest.next_value_seed(seed),
        }
    }
}
