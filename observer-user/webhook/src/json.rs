//! A review's body read as a JSON tree that borrows from it.
//!
//! A decision reads a handful of fields of a review: the request's uid, kind and operation,
//! the pod (template)'s labels and its containers' names and images. Parsing the body into
//! `serde_json::Value` gave every string and every object key an allocation of its own and
//! every object a B-tree: a 4 MB review of 31 500 containers took several times its size in
//! memory, and that was most of what a decision cost. [`Json`] keeps what the parser
//! finds without escapes as slices of the body, numbers as a mark (no decision reads one),
//! and an object as the list of its members in the order written.
//!
//! It reads what `serde_json::Value` reads and refuses what it refuses, with the same
//! error: the same parser (and its nesting limit) drives it. Where a key is written twice,
//! the last one counts, as for `Value`.

use std::{borrow::Cow, collections::BTreeMap, fmt};

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value whose strings borrow from the text it was read from, where they can.
#[derive(Clone, Debug, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    /// A number; its value is not kept.
    Number,
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Members in the order written, repeated keys included.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Reads one JSON value (surrounded by whitespace at most) from `text`.
    pub fn parse(text: &'a [u8]) -> Result<Json<'a>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(text);
        let value = TreeSeed.deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }

    /// The member `key` of an object (the last one, if written more than once).
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(members) => members
                .iter()
                .rev()
                .find(|(k, _)| k.as_ref() == key)
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Each distinct key of an object with its (last) value, in key order.
    pub fn members(&self) -> Option<BTreeMap<&str, &Json<'a>>> {
        match self {
            Json::Object(members) => Some(members.iter().map(|(k, v)| (k.as_ref(), v)).collect()),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json<'a>]> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    /// What the value is, for messages: "a string", "an object", ...
    pub fn type_name(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// Builds a [`Json`] from whatever the deserializer finds.
struct TreeSeed;

impl<'de> DeserializeSeed<'de> for TreeSeed {
    type Value = Json<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json<'de>, D::Error> {
        deserializer.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Json<'de>, E> {
        Ok(Json::Number)
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(TreeSeed)? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            members.push((key, map.next_value_seed(TreeSeed)?));
        }
        Ok(Json::Object(members))
    }
}

/// An object's key, borrowed where it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s))
    }
}

#[cfg(test)]
impl<'a> From<&'a Json<'a>> for serde_json::Value {
    /// The same value as `serde_json::Value` (numbers, which are not kept, as 0): for tests.
    fn from(json: &'a Json<'a>) -> serde_json::Value {
        use serde_json::Value;
        match json {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number => Value::from(0),
            Json::String(s) => Value::String(s.to_string()),
            Json::Array(items) => Value::Array(items.iter().map(Value::from).collect()),
            Json::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.to_string(), Value::from(v)))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn strings_without_escapes_are_borrowed_from_the_text() {
        let text =
            br#"{"plain": "registry.example/app:1.4", "escaped": "a\"b\u00e9", "n": -1.5e3}"#;
        let doc = Json::parse(text).unwrap();
        let Json::Object(members) = &doc else {
            panic!("not an object: {doc:?}")
        };
        assert!(matches!(members[0].0, Cow::Borrowed("plain")));
        assert!(
            matches!(&members[0].1, Json::String(Cow::Borrowed(s)) if *s == "registry.example/app:1.4")
        );
        assert!(matches!(&members[1].1, Json::String(Cow::Owned(s)) if s == "a\"b\u{e9}"));
        assert_eq!(doc.get("n"), Some(&Json::Number));
        assert_eq!(doc.get("missing"), None);
        assert_eq!(Json::String("x".into()).get("x"), None);
    }

    #[test]
    fn it_reads_what_serde_json_reads() {
        let value = json!({
            "apiVersion": "admission.k8s.io/v1",
            "request": {"uid": "u", "dryRun": false, "object": null,
                "list": [1, "two", {"three": [true, null]}, [], {}],
                "esc\\aped key": "tab\there", "unicode": "żółw 🐢"},
        });
        let text = serde_json::to_vec(&value).unwrap();
        let doc = Json::parse(&text).unwrap();
        let mut expected = value.clone();
        expected["request"]["list"][0] = 0.into();
        assert_eq!(Value::from(&doc), expected);
        assert_eq!(
            doc.get("request").unwrap().get("dryRun").unwrap().as_bool(),
            Some(false)
        );
        assert!(doc.get("request").unwrap().get("object").unwrap().is_null());
    }

    #[test]
    fn the_last_of_a_repeated_key_counts_as_for_serde_json() {
        let text = br#"{"a": "first", "b": 1, "a": 2}"#;
        let doc = Json::parse(text).unwrap();
        let value: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(doc.get("a"), Some(&Json::Number));
        assert_eq!(value["a"], 2);
        let members = doc.members().unwrap();
        assert_eq!(members.keys().copied().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(members["a"], &Json::Number);
    }

    #[test]
    fn what_serde_json_refuses_is_refused_with_the_same_error() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for text in [
            &b"{not json"[..],
            b"",
            b"{\"a\": 1} trailing",
            b"[1, 2,]",
            b"\"\\ud800\"",
            b"1e400",
            b"\"\xff\"",
            deep.as_bytes(),
        ] {
            let ours = Json::parse(text).unwrap_err().to_string();
            let theirs = serde_json::from_slice::<Value>(text)
                .unwrap_err()
                .to_string();
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(text));
        }
        assert_eq!(Json::parse(b" null \n").unwrap(), Json::Null);
    }

    #[test]
    fn type_names_are_those_of_messages() {
        let names: Vec<&str> = ["null", "true", "1", "\"s\"", "[]", "{}"]
            .iter()
            .map(|t| Json::parse(t.as_bytes()).unwrap().type_name())
            .collect();
        assert_eq!(
            names,
            [
                "null",
                "a boolean",
                "a number",
                "a string",
                "an array",
                "an object"
            ]
        );
    }
}
