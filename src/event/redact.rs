//! Redaction at ingest: the values a namespace owner must never receive, taken out of an
//! event's `requestObject`/`responseObject` before it reaches the bus (so before the
//! window, NATS, LIST or any watcher):
//!
//! * `secret-data`: every value under `data` and `stringData` of core `secrets` (a
//!   Secret, a `SecretList`'s items, a Table's row objects, a merge patch, and a JSON
//!   Patch's `value` under `/data` or `/stringData`);
//! * `tokens`: `status.token` of `serviceaccounts/token` (TokenRequest) and `spec.token`
//!   of `tokenreviews` (authentication.k8s.io), in either body;
//! * `last-applied-configuration`: the `kubectl.kubernetes.io/last-applied-configuration`
//!   annotation of any object in either body (kubectl writes a Secret's data into it).
//!
//! A value becomes `"<redacted>"`, or `"hmac-sha256:<hex>"` under a key, so that a user
//! can see that a value changed, or equals another, without seeing it. Only what a rule
//! names is rewritten; every other member is copied as received, in its order. A body
//! no rule applies to costs a few string comparisons and one search of its bytes; an
//! event without bodies (Metadata level) costs nothing.
//!
//! Written by hand because no crate rewrites chosen members of JSON text while keeping
//! the rest byte for byte (a `serde_json::Value` round trip reorders keys and rewrites
//! numbers).

use std::borrow::Cow;

use serde::de::DeserializeSeed;
use serde_json::value::RawValue;

use super::fields::{Key, MembersSeed, Str};
use super::json::write_str;

/// The annotation every redacted event carries, beside `audit.k8s.io/truncated`.
pub const REDACTED_ANNOTATION: &str = "audit.k8s.io/redacted";
/// kubectl's copy of the last applied object, Secret data included.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// What every spelling of the annotation contains (a JSON Pointer writes its `/` as `~1`):
/// a body without it is not read for this rule.
const LAST_APPLIED_NEEDLE: &[u8] = b"last-applied-configuration";

/// The searcher for `LAST_APPLIED_NEEDLE`, built once: `memmem::find` builds one per call,
/// which was 0.7 % of ingest for the mixed fixture (two bodies an event, profiled).
fn has_last_applied(text: &[u8]) -> bool {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(LAST_APPLIED_NEEDLE));
    FINDER.find(text).is_some()
}
const PLAIN: &str = "<redacted>";

/// One redaction rule, as `--redact` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    SecretData,
    Tokens,
    LastAppliedConfiguration,
}

impl Rule {
    pub const ALL: [Rule; 3] = [
        Rule::SecretData,
        Rule::Tokens,
        Rule::LastAppliedConfiguration,
    ];

    /// The rule's name in `--redact` and in the metric's `rule` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::SecretData => "secret-data",
            Rule::Tokens => "tokens",
            Rule::LastAppliedConfiguration => "last-applied-configuration",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of rules: which are on, or which fired on an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules(u8);

impl Rules {
    pub fn all() -> Rules {
        Rule::ALL.iter().fold(Rules::default(), |r, x| r.with(*x))
    }

    pub fn with(self, rule: Rule) -> Rules {
        Rules(self.0 | rule.bit())
    }

    pub fn with_all(self, other: Rules) -> Rules {
        Rules(self.0 | other.0)
    }

    pub fn contains(self, rule: Rule) -> bool {
        self.0 & rule.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Rule> {
        Rule::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// `--redact`'s value: rule names joined by commas; empty turns redaction off.
    pub fn parse(list: &str) -> Result<Rules, String> {
        let mut rules = Rules::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let rule = Rule::ALL
                .into_iter()
                .find(|r| r.as_str() == name)
                .ok_or_else(|| {
                    format!(
                        "unknown rule {name:?}: the rules are secret-data, tokens, last-applied-configuration"
                    )
                })?;
            rules = rules.with(rule);
        }
        Ok(rules)
    }
}

/// What ingest redacts and how a value is replaced.
#[derive(Clone)]
pub struct Redaction {
    rules: Rules,
    key: Option<ring::hmac::Key>,
}

impl std::fmt::Debug for Redaction {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redaction")
            .field("rules", &self.rules)
            .field("hmac", &self.key.is_some())
            .finish()
    }
}

impl Default for Redaction {
    /// Every rule, values replaced by `"<redacted>"`: the server's default.
    fn default() -> Self {
        Redaction::new(Rules::all(), None)
    }
}

/// The resource an event's bodies are about (its `objectRef`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    pub api_group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
}

impl Redaction {
    /// `key`: values become `hmac-sha256:<hex>` under it instead of `<redacted>`.
    pub fn new(rules: Rules, key: Option<&[u8]>) -> Self {
        Redaction {
            rules,
            key: key.map(|k| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k)),
        }
    }

    /// No redaction (`--redact=`).
    pub fn off() -> Self {
        Redaction::new(Rules::default(), None)
    }

    pub fn is_off(&self) -> bool {
        self.rules.is_empty()
    }

    /// The body (`requestObject` or `responseObject`) with what the rules name replaced,
    /// and the rules that replaced something; `None` when nothing was.
    pub fn body(&self, target: Target<'_>, body: &RawValue) -> Option<(String, Rules)> {
        let core = target.api_group.is_empty();
        let secret = self.rules.contains(Rule::SecretData) && core && target.resource == "secrets";
        let token = match (target.api_group, target.resource, target.subresource) {
            _ if !self.rules.contains(Rule::Tokens) => None,
            ("", "serviceaccounts", "token") => Some("status"),
            ("authentication.k8s.io", "tokenreviews", "") => Some("spec"),
            _ => None,
        };
        let last_applied = self.rules.contains(Rule::LastAppliedConfiguration)
            && has_last_applied(body.get().as_bytes());
        if !secret && token.is_none() && !last_applied {
            return None;
        }
        let mut fired = Rules::default();
        let mut text: Cow<'_, str> = Cow::Borrowed(body.get());
        let mut pass = |rule: Rule, f: &dyn Fn(&Self, &RawValue, &mut Vec<u8>) -> bool| {
            let raw: &RawValue = serde_json::from_str(&text).ok()?;
            let mut out = Vec::with_capacity(text.len());
            if f(self, raw, &mut out) {
                fired = fired.with(rule);
                // Only valid JSON text and whole UTF-8 strings were written.
                text = Cow::Owned(String::from_utf8(out).ok()?);
            }
            Some(())
        };
        if secret {
            pass(Rule::SecretData, &|r, v, out| r.secret(v, out))?;
        }
        if let Some(parent) = token {
            pass(Rule::Tokens, &|r, v, out| {
                r.member_path(v, &[parent, "token"], out)
            })?;
        }
        if last_applied {
            pass(Rule::LastAppliedConfiguration, &|r, v, out| {
                r.last_applied(v, out)
            })?;
        }
        (!fired.is_empty()).then(|| (text.into_owned(), fired))
    }

    /// A redacted value: `"<redacted>"`, or the HMAC of the value (a string's content,
    /// anything else's JSON text).
    fn write_redacted(&self, value: &RawValue, out: &mut Vec<u8>) {
        let Some(key) = &self.key else {
            write_str(out, PLAIN);
            return;
        };
        let text = value.get();
        let content: Cow<'_, str> =
            serde_json::from_str::<Cow<'_, str>>(text).unwrap_or(Cow::Borrowed(text));
        let tag = ring::hmac::sign(key, content.as_bytes());
        out.extend_from_slice(b"\"hmac-sha256:");
        for b in tag.as_ref() {
            out.extend_from_slice(&HEX[usize::from(*b)]);
        }
        out.push(b'"');
    }

    /// A Secret, a SecretList, a Table of Secrets, a merge patch or a JSON Patch.
    fn secret(&self, v: &RawValue, out: &mut Vec<u8>) -> bool {
        if let Ok(ops) = serde_json::from_str::<Vec<&RawValue>>(v.get()) {
            return self.json_patch(&ops, &["/data", "/stringData"], out);
        }
        self.object(v, out, &mut |r, key, value, out| match key {
            "data" | "stringData" => Some(r.every_value(value, out)),
            "items" => Some(r.each(value, out, &|r, item, out| r.secret(item, out))),
            "rows" => Some(r.each(value, out, &|r, row, out| {
                r.object(row, out, &mut |r, key, value, out| {
                    (key == "object").then(|| r.secret(value, out))
                })
            })),
            _ => None,
        })
    }

    /// Every value of an object replaced (`null` kept: it deletes, it says nothing).
    fn every_value(&self, v: &RawValue, out: &mut Vec<u8>) -> bool {
        self.object(v, out, &mut |r, _, value, out| {
            (value.get() != "null").then(|| {
                r.write_redacted(value, out);
                true
            })
        })
    }

    /// The member at `path` (object keys) replaced.
    fn member_path(&self, v: &RawValue, path: &[&str], out: &mut Vec<u8>) -> bool {
        let Some((first, rest)) = path.split_first() else {
            return false;
        };
        self.object(v, out, &mut |r, key, value, out| {
            (key == *first).then(|| {
                if rest.is_empty() {
                    r.write_redacted(value, out);
                    true
                } else {
                    r.member_path(value, rest, out)
                }
            })
        })
    }

    /// The annotation wherever it is: any object's member of that name (an object's
    /// `metadata.annotations` at any depth, a merge patch's, a patch value's map), and a
    /// JSON Patch's value for its pointer.
    fn last_applied(&self, v: &RawValue, out: &mut Vec<u8>) -> bool {
        let text = v.get();
        if !has_last_applied(text.as_bytes()) {
            out.extend_from_slice(text.as_bytes());
            return false;
        }
        match text.as_bytes().first() {
            Some(b'[') => {
                let mut patched = Vec::with_capacity(text.len());
                if let Ok(ops) = serde_json::from_str::<Vec<&RawValue>>(text)
                    && self.json_patch(&ops, &[LAST_APPLIED_PATCH_PATH], &mut patched)
                {
                    out.extend_from_slice(&patched);
                    return true;
                }
                self.each(v, out, &|r, item, out| r.last_applied(item, out))
            }
            Some(b'{') => self.object(v, out, &mut |r, key, value, out| {
                Some(if key == LAST_APPLIED && value.get() != "null" {
                    r.write_redacted(value, out);
                    true
                } else {
                    r.last_applied(value, out)
                })
            }),
            _ => {
                out.extend_from_slice(text.as_bytes());
                false
            }
        }
    }

    /// A JSON Patch (RFC 6902): each operation whose `path` is one of `parents` or under
    /// one has its `value` redacted (every value of it, for the parent itself).
    ///
    /// An operation may name `path` more than once: kube-apiserver's JSON Patch reader
    /// keeps the last, serde's derive refuses the object. Every `path` it names counts
    /// here, so that no reading of the operation finds a value left in place.
    fn json_patch(&self, ops: &[&RawValue], parents: &[&str], out: &mut Vec<u8>) -> bool {
        let mut changed = false;
        let mut members = Vec::new();
        out.push(b'[');
        for (i, op) in ops.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let mut de = serde_json::Deserializer::from_str(op.get());
            let _ = MembersSeed(&mut members).deserialize(&mut de);
            let (mut whole, mut under) = (false, false);
            for (Key(key), value) in &members {
                if key != "path" {
                    continue;
                }
                let Ok(Str(path)) = serde_json::from_str::<Str<'_>>(value.get()) else {
                    continue;
                };
                whole |= parents.contains(&&*path);
                under |= parents.iter().any(|p| {
                    path.strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with('/'))
                });
            }
            if !whole && !under {
                out.extend_from_slice(op.get().as_bytes());
                continue;
            }
            changed |= self.object(op, out, &mut |r, key, value, out| {
                (key == "value").then(|| {
                    if whole && value.get().starts_with('{') {
                        r.every_value(value, out)
                    } else if value.get() == "null" {
                        out.extend_from_slice(b"null");
                        false
                    } else {
                        r.write_redacted(value, out);
                        true
                    }
                })
            });
        }
        out.push(b']');
        changed
    }

    /// Copy an object member by member; `f` writes the value of a member it handles
    /// (`Some(changed)`), the others are copied as they are. Not an object: copied.
    fn object(&self, v: &RawValue, out: &mut Vec<u8>, f: &mut MemberWriter<'_>) -> bool {
        let mut members: Vec<(Key<'_>, &RawValue)> = Vec::new();
        let mut de = serde_json::Deserializer::from_str(v.get());
        if !matches!(MembersSeed(&mut members).deserialize(&mut de), Ok(true)) {
            out.extend_from_slice(v.get().as_bytes());
            return false;
        }
        let mut changed = false;
        out.push(b'{');
        for (i, (Key(key), value)) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, key);
            out.push(b':');
            match f(self, key, value, out) {
                Some(c) => changed |= c,
                None => out.extend_from_slice(value.get().as_bytes()),
            }
        }
        out.push(b'}');
        changed
    }

    /// Each element of an array through `f`; not an array: copied.
    fn each(
        &self,
        v: &RawValue,
        out: &mut Vec<u8>,
        f: &dyn Fn(&Self, &RawValue, &mut Vec<u8>) -> bool,
    ) -> bool {
        let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(v.get()) else {
            out.extend_from_slice(v.get().as_bytes());
            return false;
        };
        let mut changed = false;
        out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            changed |= f(self, item, out);
        }
        out.push(b']');
        changed
    }
}

/// Writes the value of a member it handles (`Some(changed)`); `None` leaves it as it is.
type MemberWriter<'f> = dyn FnMut(&Redaction, &str, &RawValue, &mut Vec<u8>) -> Option<bool> + 'f;

/// The JSON Pointer of the annotation (`/` in its key written `~1`).
const LAST_APPLIED_PATCH_PATH: &str =
    "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration";

const HEX: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [digits[i >> 4], digits[i & 15]];
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Target<'static> {
        Target {
            resource: "secrets",
            ..Default::default()
        }
    }

    fn run(r: &Redaction, t: Target<'_>, body: &str) -> Option<(serde_json::Value, Rules)> {
        let raw: &RawValue = serde_json::from_str(body).unwrap();
        r.body(t, raw)
            .map(|(text, rules)| (serde_json::from_str(&text).expect("valid JSON"), rules))
    }

    // Found by the redaction fuzz target: a number beyond f64 is JSON that serde_json's
    // `Value` does not hold. The rest of the body is passed on byte for byte, the number
    // too, and the Secret's data is still redacted.
    #[test]
    fn a_number_beyond_f64_is_passed_on_as_received_beside_redacted_data() {
        let body = r#"{"kind":"Secret","data":{"a":"eA=="},"ports":[{"port":6E443}]}"#;
        let raw: &RawValue = serde_json::from_str(body).unwrap();
        let (text, rules) = Redaction::default().body(secret(), raw).unwrap();
        assert_eq!(rules, Rules::default().with(Rule::SecretData));
        assert_eq!(
            &*text,
            r#"{"kind":"Secret","data":{"a":"<redacted>"},"ports":[{"port":6E443}]}"#
        );
    }

    // Found by the redaction fuzz target: an operation that names `path` twice. serde's
    // derive refused it, so its value was copied; kube-apiserver's JSON Patch reader
    // applies the last `path`, here a Secret's key. Either `path` counts now.
    #[test]
    fn a_json_patch_operation_naming_path_twice_is_redacted_by_either() {
        let r = Redaction::default();
        for (patch, redacted) in [
            (
                r#"[{"op":"add","path":"place","path":"/stringData/b","value":"y"}]"#,
                r#"[{"op":"add","path":"place","path":"/stringData/b","value":"<redacted>"}]"#,
            ),
            (
                r#"[{"op":"add","path":"/data/a","path":"/metadata/x","value":"y"}]"#,
                r#"[{"op":"add","path":"/data/a","path":"/metadata/x","value":"<redacted>"}]"#,
            ),
            (
                r#"[{"op":"add","path":"/metadata/x","path":"/d\u0061ta","value":{"k":"v"}}]"#,
                r#"[{"op":"add","path":"/metadata/x","path":"/d\u0061ta","value":{"k":"<redacted>"}}]"#,
            ),
        ] {
            let raw: &RawValue = serde_json::from_str(patch).unwrap();
            let (text, rules) = r.body(secret(), raw).expect("redacted");
            assert_eq!(&*text, redacted, "{patch}");
            assert_eq!(rules, Rules::default().with(Rule::SecretData));
        }
    }

    #[test]
    fn secret_data_in_every_shape() {
        let r = Redaction::default();
        let (v, rules) = run(
            &r,
            secret(),
            r#"{"kind":"Secret","data":{"a":"c2VjcmV0","b":null},"stringData":{"c":"plain"},"type":"Opaque"}"#,
        )
        .unwrap();
        assert_eq!(rules, Rules::default().with(Rule::SecretData));
        assert_eq!(v["data"]["a"], "<redacted>");
        assert_eq!(v["data"]["b"], serde_json::Value::Null);
        assert_eq!(v["stringData"]["c"], "<redacted>");
        assert_eq!(v["type"], "Opaque");

        let (v, _) = run(
            &r,
            secret(),
            r#"{"kind":"SecretList","items":[{"data":{"a":"eA=="}},{"data":{"b":"eQ=="}}]}"#,
        )
        .unwrap();
        assert_eq!(v["items"][1]["data"]["b"], "<redacted>");

        let (v, _) = run(
            &r,
            secret(),
            r#"{"kind":"Table","rows":[{"cells":["x"],"object":{"data":{"a":"eA=="}}}]}"#,
        )
        .unwrap();
        assert_eq!(v["rows"][0]["object"]["data"]["a"], "<redacted>");
        assert_eq!(v["rows"][0]["cells"][0], "x");

        let (v, _) = run(
            &r,
            secret(),
            r#"[{"op":"replace","path":"/data/a","value":"eA=="},{"op":"add","path":"/data","value":{"b":"eQ=="}},{"op":"add","path":"/metadata/labels/x","value":"keep"},{"op":"remove","path":"/stringData/z"}]"#,
        )
        .unwrap();
        assert_eq!(v[0]["value"], "<redacted>");
        assert_eq!(v[1]["value"]["b"], "<redacted>");
        assert_eq!(v[2]["value"], "keep");
        assert_eq!(v[3]["path"], "/stringData/z");

        // Not a Secret: untouched, not even parsed.
        let cm = Target {
            resource: "configmaps",
            ..Default::default()
        };
        assert!(run(&r, cm, r#"{"data":{"a":"b"}}"#).is_none());
        // Off.
        assert!(run(&Redaction::off(), secret(), r#"{"data":{"a":"b"}}"#).is_none());
    }

    #[test]
    fn tokens_and_last_applied() {
        let r = Redaction::default();
        let sa = Target {
            resource: "serviceaccounts",
            subresource: "token",
            ..Default::default()
        };
        let (v, rules) = run(
            &r,
            sa,
            r#"{"kind":"TokenRequest","spec":{"audiences":["a"]},"status":{"token":"eyJhbGc","expirationTimestamp":"2026-01-01T00:00:00Z"}}"#,
        )
        .unwrap();
        assert_eq!(rules, Rules::default().with(Rule::Tokens));
        assert_eq!(v["status"]["token"], "<redacted>");
        assert_eq!(v["status"]["expirationTimestamp"], "2026-01-01T00:00:00Z");
        let tr = Target {
            api_group: "authentication.k8s.io",
            resource: "tokenreviews",
            ..Default::default()
        };
        let (v, _) = run(&r, tr, r#"{"spec":{"token":"abc"},"status":{}}"#).unwrap();
        assert_eq!(v["spec"]["token"], "<redacted>");

        let deploy = Target {
            api_group: "apps",
            resource: "deployments",
            ..Default::default()
        };
        let body = r#"{"kind":"DeploymentList","items":[{"metadata":{"name":"x","annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"data\":{}}","keep":"me"}}}]}"#;
        let (v, rules) = run(&r, deploy, body).unwrap();
        assert_eq!(rules, Rules::default().with(Rule::LastAppliedConfiguration));
        let ann = &v["items"][0]["metadata"]["annotations"];
        assert_eq!(ann[LAST_APPLIED], "<redacted>");
        assert_eq!(ann["keep"], "me");
        let patch = r#"[{"op":"add","path":"/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration","value":"x"}]"#;
        let (v, _) = run(&r, deploy, patch).unwrap();
        assert_eq!(v[0]["value"], "<redacted>");
        let patch = r#"[{"op":"add","path":"/metadata/annotations","value":{"kubectl.kubernetes.io/last-applied-configuration":"x","y":"z"}}]"#;
        let (v, _) = run(&r, deploy, patch).unwrap();
        assert_eq!(v[0]["value"][LAST_APPLIED], "<redacted>");
        assert_eq!(v[0]["value"]["y"], "z");
        // Named in a value, not a key: nothing to redact.
        assert!(
            run(
                &r,
                deploy,
                r#"{"note":"kubectl.kubernetes.io/last-applied-configuration"}"#
            )
            .is_none()
        );
    }

    #[test]
    fn hmac_hides_the_value_but_keeps_equality() {
        let r = Redaction::new(Rules::all(), Some(b"key"));
        let (v, _) = run(
            &r,
            secret(),
            r#"{"data":{"a":"c2VjcmV0","b":"c2VjcmV0","c":"b3RoZXI="}}"#,
        )
        .unwrap();
        let a = v["data"]["a"].as_str().unwrap();
        assert!(a.starts_with("hmac-sha256:") && a.len() == 12 + 64, "{a}");
        assert_eq!(v["data"]["a"], v["data"]["b"]);
        assert_ne!(v["data"]["a"], v["data"]["c"]);
        // The HMAC of the string's content, as any HMAC-SHA256 tool computes it.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"key");
        let want: String = ring::hmac::sign(&key, b"c2VjcmV0")
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(a, format!("hmac-sha256:{want}"));
        let other = Redaction::new(Rules::all(), Some(b"another key"));
        let (w, _) = run(&other, secret(), r#"{"data":{"a":"c2VjcmV0"}}"#).unwrap();
        assert_ne!(w["data"]["a"], v["data"]["a"]);
    }

    #[test]
    fn rules_parse_by_name() {
        assert_eq!(Rules::parse("").unwrap(), Rules::default());
        assert_eq!(
            Rules::parse("secret-data,tokens,last-applied-configuration").unwrap(),
            Rules::all()
        );
        assert!(
            Rules::parse("secrets")
                .unwrap_err()
                .contains("unknown rule")
        );
        assert!(!format!("{:?}", Redaction::new(Rules::all(), Some(b"k3y"))).contains("k3y"));
    }
}
