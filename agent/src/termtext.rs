//! Text that reaches a terminal: what free text the agent accepts, and the
//! one escaping function every human-readable output goes through.
//!
//! Reasons typed by requesters and approvers are shown to other people
//! (approvers run `list --pending`, auditors run `audit`). A newline would
//! forge table rows, `ESC [2K` erase lines, an OSC sequence set the window
//! title, and U+202E reverse what follows. So the agent refuses such
//! characters in every text it stores ([`check`]), and the CLI escapes
//! anything non-printable from any source — old audit records, cgroup and
//! unit names, policy descriptions — before printing ([`escape`],
//! [`escape_value`]). `--json` output is never escaped: it is exact.
use std::borrow::Cow;

use serde_json::Value;

/// Whether `c` changes the direction of the text that follows it
/// (embeddings, overrides, isolates and the invisible direction marks).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Whether `c` must not be printed raw: C0 and C1 controls and DEL, bidi
/// controls, line and paragraph separators, zero-width and other invisible
/// format characters.
pub(crate) fn is_unsafe(c: char) -> bool {
    c.is_control()
        || is_bidi_control(c)
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// A stored text that contains a character the agent refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{field}: {what} U+{code:04X} at character {position} is not allowed; \
     use plain printable text (no newlines, tabs, escape sequences or direction overrides)"
)]
pub(crate) struct UnsafeText {
    /// The request field, e.g. `reason`.
    pub field: String,
    /// 1-based, in characters.
    pub position: usize,
    pub code: u32,
    pub what: &'static str,
}

/// Refuses control characters and bidirectional overrides in `text`,
/// naming `field` and the first offending character's position.
pub(crate) fn check(field: &str, text: &str) -> Result<(), UnsafeText> {
    match text.chars().enumerate().find(|(_, c)| is_unsafe(*c)) {
        None => Ok(()),
        Some((i, c)) => Err(UnsafeText {
            field: field.to_string(),
            position: i + 1,
            code: c as u32,
            what: if is_bidi_control(c) {
                "bidirectional control"
            } else if c.is_control() {
                "control character"
            } else {
                "invisible formatting character"
            },
        }),
    }
}

/// `text` with every unsafe character written as a visible escape
/// (`\n`, `\t`, `\r`, `\u{1b}`, `\u{202e}`); unchanged (and not copied)
/// when there is none.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if is_unsafe(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Escapes every string in `v`, object keys included, in place: for
/// rendering structured values (replies, audit and deny records) that may
/// carry text from anywhere.
pub(crate) fn escape_value(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Cow::Owned(e) = escape(s) {
                *s = e;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(escape_value),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (k, mut val) in entries {
                escape_value(&mut val);
                map.insert(escape(&k).into_owned(), val);
            }
        }
        _ => {}
    }
}

/// A copy of `value` whose every string is escaped, as the same type: the
/// CLI renders replies through this so that no field can be forgotten.
///
/// Panics if `T` does not survive a round trip through JSON with its
/// strings changed; the reply types do (tested), and printing the raw
/// value instead would defeat the point.
pub(crate) fn escaped<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut v = serde_json::to_value(value).expect("replies serialize to JSON");
    escape_value(&mut v);
    serde_json::from_value(v).expect("an escaped reply reads back as the same type")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_controls_and_overrides_and_says_where() {
        assert!(check("reason", "INC-4411 replication lag — café").is_ok());
        let e = check("reason", "ok\nforged row").unwrap_err();
        assert_eq!((e.position, e.code), (3, 0x0a));
        assert!(
            e.to_string()
                .starts_with("reason: control character U+000A at character 3"),
            "{e}"
        );
        let e = check("reason", "x\u{1b}[2K").unwrap_err();
        assert_eq!((e.position, e.code), (2, 0x1b));
        let e = check("reason", "\u{1b}]0;owned\u{7}").unwrap_err();
        assert_eq!(e.position, 1);
        let e = check("reason", "abc\u{202E}fdp.exe").unwrap_err();
        assert_eq!(
            (e.position, e.code, e.what),
            (4, 0x202e, "bidirectional control")
        );
        for c in ['\u{202A}', '\u{2066}', '\u{2069}', '\u{9b}', '\u{7f}', '\t'] {
            assert!(check("f", &format!("a{c}")).is_err(), "{:x}", c as u32);
        }
    }

    #[test]
    fn escapes_only_what_is_unsafe() {
        assert!(matches!(escape("plain café"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\nb\u{1b}[2K\u{202e}c"),
            "a\\nb\\u{1b}[2K\\u{202e}c"
        );
        assert_eq!(escape("\u{1b}]0;title\u{7}"), "\\u{1b}]0;title\\u{7}");
    }

    #[test]
    fn replies_come_back_escaped_as_the_same_type() {
        use crate::control::{AllowView, ListView, Reply};
        let reply = Reply::List(ListView {
            standing: vec![AllowView {
                segment: "db".into(),
                identity: "cgroup:/evil\u{1b}]0;t\u{7}".into(),
                ports: vec!["5432/tcp".into()],
                unresolved: Some("gone\n".into()),
                mode: "audit".into(),
                usage: None,
                window: None,
            }],
            grants: vec![],
            pending: vec![],
            locks: vec![],
        });
        let Reply::List(l) = escaped(&reply) else {
            panic!("not a list")
        };
        assert_eq!(l.standing[0].identity, "cgroup:/evil\\u{1b}]0;t\\u{7}");
        assert_eq!(l.standing[0].unresolved.as_deref(), Some("gone\\n"));
    }

    #[test]
    fn escapes_every_string_of_a_value_keys_included() {
        let mut v = serde_json::json!({"a\n": ["x\u{1b}", 3, {"r": "\u{2066}"}], "n": null});
        escape_value(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"a\\n": ["x\\u{1b}", 3, {"r": "\\u{2066}"}], "n": null})
        );
    }
}
