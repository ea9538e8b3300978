//! Terminal escaping for `kubectl audit`: every string of an event, and of a server's
//! answer, reaches a person's terminal only through `escape_terminal`, because anyone who
//! can make a request names what the audit log records (a path, a user agent), and a
//! terminal obeys the control sequences in what it is sent.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `s` as it may be shown on a terminal: every control character (C0, DEL, C1) spelled
/// out in printable characters, everything else as it is. kubectl's printers write ESC as
/// `^[` and CR as `\r` (its fix for CVE-2021-25743); those two are spelled the same way
/// here. kubectl passes the other controls through, which still lets a string ring the
/// bell, backspace over a column, start a C1 CSI (U+009B) or break a row with a newline,
/// so they are spelled too: the other C0 controls and DEL in the same caret notation as
/// ESC (`^G`, `^?`), newline and tab as `\n` and `\t` like CR, and C1 controls as
/// `\u009b`, as a JSON string may spell them. Like kubectl's, it cannot be undone (a name
/// may hold a literal `^[`): `-o json` is the exact form.
pub fn escape_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\x1b' => out.push_str("^["),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            // ^@ for NUL to ^_ for US: the character 64 places on.
            '\0'..='\x1f' => {
                out.push('^');
                out.push(char::from(c as u8 + b'@'));
            }
            '\x7f' => out.push_str("^?"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A message of several lines for stderr: each line escaped, the line breaks kept (a
/// message's own lines are the plugin's; a server's text in it was escaped where it was
/// put in, line breaks and all).
pub fn escape_lines(s: &str) -> String {
    s.split('\n')
        .map(escape_terminal)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_spells_out_every_control_character() {
        // kubectl's two.
        assert_eq!(escape_terminal("a\x1b[2Jb"), "a^[[2Jb");
        assert_eq!(escape_terminal("a\rb"), "a\\rb");
        // The rest of C0, DEL, and C1.
        assert_eq!(
            escape_terminal("\0\x01\x07\x08\x0b\x0c\x1f"),
            "^@^A^G^H^K^L^_"
        );
        assert_eq!(escape_terminal("x\ny\tz"), "x\\ny\\tz");
        assert_eq!(escape_terminal("\x7f"), "^?");
        assert_eq!(
            escape_terminal("\u{80}\u{85}\u{9b}31m\u{9d}\u{9f}"),
            "\\u0080\\u0085\\u009b31m\\u009d\\u009f"
        );
        // An OSC that would retitle the window, and a CSI that would clear it.
        assert_eq!(
            escape_terminal("\x1b]0;owned\x07\x1b[H\x1b[2J"),
            "^[]0;owned^G^[[H^[[2J"
        );
        // Everything else, as it is, and without a copy.
        for plain in [
            "",
            "team-a/cm",
            "system:serviceaccount:kube-system:x",
            "é ü ✓ 日本 \u{a0}\u{200b}",
        ] {
            assert!(matches!(escape_terminal(plain), Cow::Borrowed(p) if p == plain));
        }
        // Every control character, and no other, is spelled out.
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let s = c.to_string();
            let e = escape_terminal(&s);
            assert_eq!(c.is_control(), e != s, "{c:?}");
            assert!(!e.chars().any(char::is_control), "{c:?}: {e:?}");
        }
        assert_eq!(escape_lines("one\x1b[2J\ntwo\r"), "one^[[2J\ntwo\\r");
    }
}
