//! Canonical JSON as RFC 8785 (JCS) defines it: object members sorted by the UTF-16 code
//! units of their names, no whitespace, strings with the minimal escapes, numbers as
//! ECMAScript prints an IEEE 754 double.
//!
//! A line is parsed into [`Json`], which borrows its strings from the line where it can
//! and refuses what canonical form would silently change: a member name given twice, an
//! integer that a double cannot hold exactly (beyond ±2^53).

use std::{borrow::Cow, cmp::Ordering, fmt};

use serde::{
    de::{self, Deserializer, MapAccess, SeqAccess, Visitor},
    Deserialize,
};

/// The largest integer every double between it and zero represents exactly (2^53).
pub const MAX_SAFE_INTEGER: u64 = 1 << 53;

/// A parsed JSON value; object members are kept sorted in canonical order.
#[derive(Clone, Debug, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    /// An integer within ±2^53.
    Int(i64),
    Float(f64),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parses one JSON text; the error says what is wrong, and where.
    pub fn parse(text: &'a [u8]) -> Result<Json<'a>, String> {
        let why = |e: serde_json::Error| match e.classify() {
            // What the visitor refused: JSON that canonical form would change.
            serde_json::error::Category::Data => e.to_string(),
            _ => format!("not JSON: {e}"),
        };
        let mut de = serde_json::Deserializer::from_slice(text);
        let value = Json::deserialize(&mut de).map_err(why)?;
        de.end().map_err(why)?;
        Ok(value)
    }

    /// The member `name` of an object.
    pub fn get(&self, name: &str) -> Option<&Json<'a>> {
        let Json::Object(members) = self else {
            return None;
        };
        members
            .binary_search_by(|(k, _)| compare_names(k, name))
            .ok()
            .map(|i| &members[i].1)
    }

    /// The string member `name` of an object.
    pub fn str_of(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Some(Json::String(s)) => Some(s),
            _ => None,
        }
    }

    /// Appends the canonical bytes of this value to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Json::Null => out.extend_from_slice(b"null"),
            Json::Bool(true) => out.extend_from_slice(b"true"),
            Json::Bool(false) => out.extend_from_slice(b"false"),
            Json::Int(n) => out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
            Json::Float(f) => write_double(*f, out),
            Json::String(s) => write_string(s, out),
            Json::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            Json::Object(members) => {
                out.push(b'{');
                for (i, (name, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_string(name, out);
                    out.push(b':');
                    value.write(out);
                }
                out.push(b'}');
            }
        }
    }

    /// The canonical bytes of this value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }
}

/// The canonical bytes of anything serde can turn into JSON (manifests, statements).
pub fn to_canonical<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let plain = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    Ok(Json::parse(&plain)?.to_bytes())
}

/// Whether `text` is exactly the canonical form of the JSON it holds.
pub fn is_canonical(text: &[u8]) -> Result<bool, String> {
    Ok(Json::parse(text)?.to_bytes() == text)
}

/// A double as ECMAScript's `Number.prototype.toString` prints it (RFC 8785 §3.2.2.3).
fn write_double(f: f64, out: &mut Vec<u8>) {
    if f == 0.0 {
        // Both zeros print as 0.
        out.push(b'0');
        return;
    }
    // JSON has no NaN or infinity, so the parser never produces one.
    out.extend_from_slice(ryu_js::Buffer::new().format_finite(f).as_bytes());
}

/// A string with only the escapes RFC 8785 §3.2.2.2 requires: the quote, the backslash
/// and control characters, the short forms where JSON has them — the escapes the records'
/// own JSON uses.
pub fn write_string(s: &str, out: &mut Vec<u8>) {
    crate::record::json::direct::string(out, s);
}

/// The order of member names in RFC 8785: by their UTF-16 code units.
///
/// UTF-8 bytes sort like code points, and code points like UTF-16 units except where a
/// character beyond U+FFFF (a surrogate pair, 0xD800.. in UTF-16) meets one in
/// U+E000..U+FFFF. At the first differing byte both strings are at the same position of a
/// character, so lead bytes tell which case it is: 0xEE/0xEF start U+E000..U+FFFF, 0xF0..
/// starts a supplementary character.
pub fn compare_names(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) else {
        return a.len().cmp(&b.len());
    };
    let (x, y) = (a[i], b[i]);
    let bmp_high = |c: u8| c == 0xee || c == 0xef;
    let supplementary = |c: u8| c >= 0xf0;
    if bmp_high(x) && supplementary(y) {
        Ordering::Greater
    } else if supplementary(x) && bmp_high(y) {
        Ordering::Less
    } else {
        x.cmp(&y)
    }
}

/// An integer beyond ±2^53 is a double in canonical JSON: kept when the double prints as
/// the same digits (`1152921504606847000`), refused when it would change them.
fn big_integer<'de, E: de::Error>(text: &str, double: f64) -> Result<Json<'de>, E> {
    let mut printed = Vec::new();
    write_double(double, &mut printed);
    if printed == text.as_bytes() {
        Ok(Json::Float(double))
    } else {
        Err(E::custom(format!(
            "integer {text} is beyond 2^53: canonical JSON (RFC 8785) would change it to {}",
            String::from_utf8_lossy(&printed)
        )))
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json<'de>, E> {
        if v <= MAX_SAFE_INTEGER {
            return Ok(Json::Int(v as i64));
        }
        big_integer(itoa::Buffer::new().format(v), v as f64)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json<'de>, E> {
        if v.unsigned_abs() <= MAX_SAFE_INTEGER {
            return Ok(Json::Int(v));
        }
        big_integer(itoa::Buffer::new().format(v), v as f64)
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        Ok(Json::Float(v))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members: Vec<(Cow<'de, str>, Json<'de>)> = Vec::new();
        while let Some(Name(name)) = map.next_key()? {
            let value = map.next_value()?;
            members.push((name, value));
        }
        // Equal names are refused below, so an unstable sort gives the one order.
        members.sort_unstable_by(|a, b| compare_names(&a.0, &b.0));
        if let Some(pair) = members.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(de::Error::custom(format!(
                "member {:?} appears twice in one object",
                pair[0].0
            )));
        }
        Ok(Json::Object(members))
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

/// A member name, borrowed from the input when it has no escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
#[path = "canonical_tests.rs"]
mod tests;
