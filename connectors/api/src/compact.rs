//! JSON payloads made safe to embed in a frame: no whitespace outside strings.
//!
//! Frames in one WebSocket message (and later long-poll and SSE bodies) are separated by `\n`,
//! so a payload kept as the text it arrived in must not carry a newline of its own: a
//! pretty-printed `data` would split one frame into several, and a crafted one could smuggle
//! a whole forged frame (`disconnect`, `event`) to every recipient. JSON strings cannot hold a
//! raw control character (serde_json refuses them), so dropping the whitespace between tokens
//! leaves no newline anywhere. Every payload that reaches a frame is a [`CompactJson`]: the
//! type is the proof that this happened, whatever path the payload came in by.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A JSON value as text with no whitespace outside strings, so never a newline.
#[derive(Debug, Clone)]
pub struct CompactJson(Box<RawValue>);

impl CompactJson {
    /// Compacts parsed JSON text; already compact text is kept without a copy.
    pub fn new(raw: Box<RawValue>) -> Self {
        match first_outside_whitespace(raw.get()) {
            None => Self(raw),
            Some(at) => match RawValue::from_string(compact_from(raw.get(), at)) {
                Ok(compact) => Self(compact),
                // Dropping whitespace between tokens of valid JSON leaves valid JSON, so this
                // is not reached; if it were, re-encoding is compact by construction.
                Err(_) => Self(reencode(&raw)),
            },
        }
    }

    /// JSON `null`.
    pub fn null() -> Self {
        Self(RawValue::NULL.to_owned())
    }

    /// The compact JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The compact JSON as a raw value.
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }
}

impl Default for CompactJson {
    fn default() -> Self {
        Self::null()
    }
}

impl<'de> Deserialize<'de> for CompactJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(Self::new)
    }
}

impl Serialize for CompactJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// `raw` parsed and written again by serde_json, which writes no whitespace.
fn reencode(raw: &RawValue) -> Box<RawValue> {
    serde_json::from_str::<serde_json::Value>(raw.get())
        .and_then(|value| serde_json::value::to_raw_value(&value))
        .unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// Walks JSON text a byte at a time, telling which bytes are whitespace between tokens.
#[derive(Default)]
struct Scanner {
    in_string: bool,
    escaped: bool,
}

impl Scanner {
    /// Whether `b`, the next byte, is whitespace outside any string.
    fn skippable(&mut self, b: u8) -> bool {
        if self.in_string {
            match b {
                _ if self.escaped => self.escaped = false,
                b'\\' => self.escaped = true,
                b'"' => self.in_string = false,
                _ => {}
            }
            false
        } else if b == b'"' {
            self.in_string = true;
            false
        } else {
            matches!(b, b' ' | b'\t' | b'\n' | b'\r')
        }
    }
}

/// Index of the first whitespace byte outside a string, if any.
fn first_outside_whitespace(json: &str) -> Option<usize> {
    let mut scanner = Scanner::default();
    json.bytes().position(|b| scanner.skippable(b))
}

/// `json` without whitespace outside strings; `at` is where the first such byte is, so the
/// bytes before it are kept as they are and the scan starts outside any string.
fn compact_from(json: &str, at: usize) -> String {
    let mut scanner = Scanner::default();
    let mut out = Vec::with_capacity(json.len());
    out.extend_from_slice(&json.as_bytes()[..at]);
    out.extend(json.bytes().skip(at).filter(|&b| !scanner.skippable(b)));
    // Only ASCII bytes were dropped, so the rest is still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compact(json: &str) -> String {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        CompactJson::new(raw).get().to_owned()
    }

    #[test]
    fn drops_whitespace_between_tokens_only() {
        assert_eq!(
            compact("[\n{\"op\":\"disconnect\",\n \"code\": 4101}\n]"),
            r#"[{"op":"disconnect","code":4101}]"#
        );
        assert_eq!(
            compact("{ \"msg\" : \"a b\\n c \\\" d\\\\\" ,\t\"n\":[ 1 , 2 ] }"),
            r#"{"msg":"a b\n c \" d\\","n":[1,2]}"#
        );
        assert_eq!(compact("  \"x y\"  "), r#""x y""#);
        assert_eq!(compact("{\"ü\": \"日本\"}"), r#"{"ü":"日本"}"#);
    }

    #[test]
    fn never_leaves_a_newline() {
        let pretty = serde_json::to_string_pretty(&serde_json::json!({
            "a": [1, {"b": "line\nbreak"}], "c": null
        }))
        .unwrap();
        let out = compact(&pretty);
        assert!(!out.contains('\n') && !out.contains('\r'), "{out}");
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back["a"][1]["b"], "line\nbreak");
    }

    #[test]
    fn keeps_compact_text_and_reads_from_serde() {
        assert_eq!(compact(r#"{"a":1}"#), r#"{"a":1}"#);
        assert_eq!(CompactJson::null().get(), "null");
        #[derive(Deserialize)]
        struct Wrapper {
            data: CompactJson,
        }
        let w: Wrapper = serde_json::from_str("{\"data\": {\n  \"k\": true\n}}").unwrap();
        assert_eq!(w.data.get(), r#"{"k":true}"#);
    }
}
