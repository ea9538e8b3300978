//! Writing the watch line: its head (made of three routing fields, so that `wire` can
//! make it again), keys, strings and raw values, compacted when the pushed JSON was not.

use serde_json::value::RawValue;

use super::HEAD_PREFIX;

/// The line up to the resourceVersion's digits: made of three routing fields alone, so
/// that the shared stream need not carry it (`wire` makes it again on each replica).
pub(super) fn write_head(out: &mut Vec<u8>, audit_id: &str, stage: &str, namespace: &str) {
    out.extend_from_slice(HEAD_PREFIX);
    out.push(b'"');
    write_str_content(out, audit_id);
    out.push(b'-');
    if plain(stage) {
        out.extend(stage.bytes().map(|b| b.to_ascii_lowercase()));
    } else {
        write_str_content(out, &stage.to_ascii_lowercase());
    }
    out.push(b'"');
    if !namespace.is_empty() {
        out.extend_from_slice(br#","namespace":"#);
        write_str(out, namespace);
    }
    out.extend_from_slice(br#","resourceVersion":""#);
}

/// Whether `s` can go between quotes as it is.
pub(super) fn plain(s: &str) -> bool {
    !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

pub(super) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_str_content(out, s);
    out.push(b'"');
}

/// A string's escaped content, without the quotes.
pub(super) fn write_str_content(out: &mut Vec<u8>, s: &str) {
    if plain(s) {
        out.extend_from_slice(s.as_bytes());
    } else {
        // serde_json writes the quotes too; keep what is between them. Writing a &str
        // into a Vec cannot fail.
        let at = out.len();
        let _ = serde_json::to_writer(&mut *out, s);
        out.pop();
        out.remove(at);
    }
}

/// Copy a raw value, compacted when it spans lines (a pretty-printed push): the watch
/// protocol is one object per line.
pub(super) fn write_raw(out: &mut Vec<u8>, value: &RawValue, multiline: bool) {
    let text = value.get().as_bytes();
    if multiline && memchr::memchr2(b'\n', b'\r', text).is_some() {
        compact(out, text);
    } else {
        out.extend_from_slice(text);
    }
}

/// Write JSON text this server made (a redacted body), as `write_raw` writes a pushed one.
pub(super) fn write_text(out: &mut Vec<u8>, text: &str, multiline: bool) {
    if multiline && memchr::memchr2(b'\n', b'\r', text.as_bytes()).is_some() {
        compact(out, text.as_bytes());
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

/// Copy validated JSON without the whitespace between tokens, every token byte for byte
/// (re-serialising through `serde_json::Value` would reorder keys and rewrite numbers).
/// Written here because it is a dozen lines on text serde_json has already validated.
pub(super) fn compact(out: &mut Vec<u8>, text: &[u8]) {
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
            in_string = b == b'"';
        }
    }
}

/// `metav1.Time` has second precision; audit timestamps are `MicroTime`: write `ts`
/// as a JSON string without its fraction of a second.
pub(super) fn write_seconds(out: &mut Vec<u8>, ts: &str) {
    out.push(b'"');
    match ts.find('.') {
        Some(dot) => {
            let frac_end = ts[dot + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(ts.len(), |i| dot + 1 + i);
            write_str_content(out, &ts[..dot]);
            write_str_content(out, &ts[frac_end..]);
        }
        None => write_str_content(out, ts),
    }
    out.push(b'"');
}
