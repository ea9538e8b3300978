//! Reading an event's members by name as kube-apiserver's Go readers would: a key that is
//! a case variant of a field the server reads (Go's `encoding/json` matches without regard
//! to case) is refused, so that this server and a Go reader never route one event two
//! ways; found with one bit test per key for most keys. Also the key and string types
//! every reader of the event's text borrows from the body (`Key`, `Str`), and an item's
//! members read as raw text (`MembersSeed`).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Go's encoding/json matches an object's keys to a struct's fields without regard to
/// case (Unicode simple folding: `Namespace`, `NAMESPACE`, and `\u212a` KELVIN SIGN
/// for `k` and `\u017f` LONG S for `s`), the last match winning; client-go's decoder
/// (sigs.k8s.io/json) and serde match exactly. So `{"namespace":"team-a",
/// "Namespace":"team-b"}` is team-a here and to client-go, team-b to a Go program that
/// reads audit events with encoding/json. Where the server reads a field by name, a key
/// that is a case variant of that name is refused, as a repeated key is: routed by one
/// value and read by clients as another. Maps (`annotations`) are not folded: a Go map
/// keeps each key as sent, so `a` and `A` are two annotations to every reader.
///
/// Field names, and a bit per length among them: most keys that are not a field's
/// name have another length, and are ruled out by one bit test.
pub(super) struct Names<const N: usize> {
    pub(super) names: [&'static str; N],
    lengths: u64,
}

impl<const N: usize> Names<N> {
    /// Names of fewer than 64 bytes (every field's).
    pub(super) const fn new(names: [&'static str; N]) -> Self {
        let mut lengths = 0u64;
        let mut i = 0;
        while i < N {
            lengths |= 1 << names[i].len();
            i += 1;
        }
        Names { names, lengths }
    }

    pub(super) fn position(&self, key: &str) -> Option<usize> {
        self.names.iter().position(|n| *n == key)
    }
}

/// `Some(name)` when `key` is not `name` but folds to it, for one of `names` (ASCII, as
/// every field name is). Cheap, inlined where keys are read: an ASCII key of a length no
/// name has is ruled out by a bit test; the rest is out of line.
#[inline]
pub(super) fn case_variant_of<const N: usize>(key: &str, names: &Names<N>) -> Option<&'static str> {
    let len = key.len();
    if len < 64 && names.lengths & (1 << len) == 0 && key.is_ascii() {
        return None;
    }
    case_variant_compared(key, names)
}

/// An ASCII key is compared with the names of its length only; a key with a non-ASCII
/// character other than those two letters folds to no ASCII name at all.
#[cold]
#[inline(never)]
pub(super) fn case_variant_compared<const N: usize>(
    key: &str,
    names: &Names<N>,
) -> Option<&'static str> {
    if key.is_ascii() {
        return names
            .names
            .iter()
            .find(|n| n.len() == key.len() && n.eq_ignore_ascii_case(key) && **n != key)
            .copied();
    }
    let mut folded = String::with_capacity(key.len());
    for c in key.chars() {
        folded.push(match c {
            '\u{212A}' => 'k',
            '\u{017F}' => 's',
            c if c.is_ascii() => c,
            _ => return None,
        });
    }
    names
        .names
        .iter()
        .find(|n| n.eq_ignore_ascii_case(&folded))
        .copied()
}

pub(super) fn case_variant_error(key: &str, name: &str) -> String {
    format!(
        "field {key:?} differs from {name:?} only in case (Go's encoding/json reads it as {name:?}, exact readers do not)"
    )
}

/// Every member of an audit `Event` (v1 and v1beta1), and the `metadata` this server
/// writes: the names whose case variants an event may not carry.
pub(super) const EVENT_FIELDS: Names<20> = Names::new([
    "kind",
    "apiVersion",
    "metadata",
    "annotations",
    "auditID",
    "stage",
    "level",
    "verb",
    "user",
    "impersonatedUser",
    "objectRef",
    "responseStatus",
    "requestObject",
    "responseObject",
    "requestURI",
    "sourceIPs",
    "userAgent",
    "requestReceivedTimestamp",
    "stageTimestamp",
    "timestamp",
]);

/// The members of a sub-object the server reads, by name (`names`), each read as `V`
/// (`Option<Str>` for a string that may be `null`, `&RawValue` to read later): each at
/// most once, and none under a case variant of its name (`case_variant_of`). Other
/// members are skipped unread.
pub(super) struct Fields<V, const N: usize> {
    names: &'static Names<N>,
    values: [Option<V>; N],
    /// Why the object reads differently to different readers, once found.
    ambiguous: Option<String>,
}

/// Why a sub-object could not be read.
pub(super) enum FieldsError {
    /// A member twice, or under a case variant of its name.
    Ambiguous(String),
    /// Not an object, not JSON, or a member not of its type.
    Malformed(String),
}

impl From<FieldsError> for String {
    fn from(e: FieldsError) -> String {
        match e {
            FieldsError::Ambiguous(why) | FieldsError::Malformed(why) => why,
        }
    }
}

impl<V, const N: usize> Fields<V, N> {
    /// `raw`'s members (none for absent or `null`); `what` names the object in errors.
    pub(super) fn read<'a>(
        what: &str,
        names: &'static Names<N>,
        raw: Option<&'a RawValue>,
    ) -> Result<Self, FieldsError>
    where
        V: Deserialize<'a>,
    {
        let mut fields = Fields {
            names,
            values: std::array::from_fn(|_| None),
            ambiguous: None,
        };
        if let Some(text) = raw.map(RawValue::get).filter(|t| *t != "null") {
            let mut de = serde_json::Deserializer::from_str(text);
            if let Err(e) = de.deserialize_map(&mut fields).and_then(|()| de.end()) {
                return Err(match fields.ambiguous.take() {
                    Some(why) => FieldsError::Ambiguous(format!("{what}: {why}")),
                    None => FieldsError::Malformed(format!("{what}: {e}")),
                });
            }
        }
        Ok(fields)
    }

    pub(super) fn get(&self, name: &str) -> Option<&V> {
        let i = self.names.position(name)?;
        self.values[i].as_ref()
    }
}

impl<'a, const N: usize> Fields<Option<Str<'a>>, N> {
    /// A string member: `""` when absent or `null`.
    pub(super) fn str(&self, name: &str) -> &str {
        self.get(name).and_then(Option::as_ref).map_or("", |s| &s.0)
    }
}

impl<'de, V: Deserialize<'de>, const N: usize> Visitor<'de> for &mut Fields<V, N> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let why = if let Some(i) = self.names.position(&key) {
                if self.values[i].replace(map.next_value()?).is_none() {
                    continue;
                }
                format!("duplicate field {key:?}")
            } else if let Some(name) = case_variant_of(&key, self.names) {
                case_variant_error(&key, name)
            } else {
                map.next_value::<de::IgnoredAny>()?;
                continue;
            };
            self.ambiguous = Some(why.clone());
            return Err(de::Error::custom(why));
        }
        Ok(())
    }
}

/// `responseStatus.code` as selectors and tables read it: an integer, else none (a
/// malformed code is kept as sent, not refused), read in the same pass as its object.
pub(super) struct Code(pub(super) Option<i64>);

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Code;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Code, E> {
                Ok(Code(Some(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Code, E> {
                Ok(Code(i64::try_from(v).ok()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Code, E> {
                Ok(Code(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Code, E> {
                Ok(Code(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Code, E> {
                Ok(Code(None))
            }
            fn visit_unit<E>(self) -> Result<Code, E> {
                Ok(Code(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Code, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Code(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Code, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Code(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// `user`: the name it is routed by.
pub(super) const USER_FIELDS: Names<1> = Names::new(["username"]);
/// `objectRef`: what it is routed by, and `subresource` for redaction
/// (`serviceaccounts/token`).
pub(super) const OBJECT_REF_FIELDS: Names<5> =
    Names::new(["namespace", "resource", "name", "apiGroup", "subresource"]);
/// `responseStatus`: the code selectors and tables read.
pub(super) const RESPONSE_STATUS_FIELDS: Names<1> = Names::new(["code"]);

/// One item's members in their order, values as raw text, into a reused buffer; `false`
/// when the item is not an object.
pub(super) struct MembersSeed<'m, 'a>(pub(super) &'m mut Vec<(Key<'a>, &'a RawValue)>);

impl<'de> DeserializeSeed<'de> for MembersSeed<'_, 'de> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        self.0.clear();
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MembersSeed<'_, 'de> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an audit Event object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            self.0.push((key, map.next_value::<&'de RawValue>()?));
        }
        Ok(true)
    }
    // Anything but an object is the item's error, not the body's.
    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

/// A map key borrowed from the body when it has no escapes (serde's own `Cow<str>`
/// always allocates).
#[derive(Debug)]
pub(super) struct Key<'a>(pub(super) Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A string borrowed from the body when it has no escapes.
#[derive(Deserialize, Default)]
#[serde(transparent)]
pub(super) struct Str<'a>(#[serde(borrow)] pub(super) Cow<'a, str>);
