//! A connection's positions as SSE's `id:` carries them: `chat=42~EPOCH,news=7~EPOCH`.
//!
//! Ordinary channel names are written as they are. A personal channel holds any printable
//! user id, which may contain `,`, `=` or `~`, so every byte outside the characters channel
//! names are made of is percent-encoded; the format stays the contract's for ordinary names.

use std::collections::BTreeMap;
use std::fmt;

use bytes::BufMut;
use herald_connector_api::{Identified, Since};

/// Every channel's position, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<String, Position>);

/// A channel's offset and epoch, and its name as an `id:` writes it (encoded once, not per
/// event).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    offset: u64,
    epoch: String,
    id_name: String,
}

impl Positions {
    /// The positions an `ident` reported.
    pub fn from_identified(identified: &Identified) -> Self {
        let mut positions = Self::default();
        for (name, p) in &identified.channels {
            positions.insert(name.clone(), p.offset, p.epoch.clone());
        }
        positions
    }

    fn insert(&mut self, name: String, offset: u64, epoch: String) {
        let id_name = encode(&name);
        self.0.insert(
            name,
            Position {
                offset,
                epoch,
                id_name,
            },
        );
    }

    /// Parses a `Last-Event-ID`; `None` when it is not a position list.
    pub fn parse(text: &str) -> Option<Self> {
        let mut positions = Self::default();
        for item in text.split(',').filter(|i| !i.is_empty()) {
            let (name, rest) = item.split_once('=')?;
            let (offset, epoch) = rest.split_once('~')?;
            if epoch.is_empty() || !epoch.chars().all(|c| c.is_ascii_alphanumeric()) {
                return None;
            }
            let name = decode(name)?;
            if name.is_empty() {
                return None;
            }
            positions.insert(name, offset.parse().ok()?, epoch.to_owned());
        }
        Some(positions)
    }

    /// The position to recover `channel` after, if known.
    pub fn since(&self, channel: &str) -> Option<Since> {
        self.0.get(channel).map(Position::since)
    }

    /// Every known channel and the position to recover it after.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Since)> {
        self.0.iter().map(|(name, p)| (name.as_str(), p.since()))
    }

    /// Records an event at `offset` in `channel` (a channel not reported at ident is
    /// skipped: without its epoch the position would prove nothing).
    pub fn advance(&mut self, channel: &str, offset: u64) {
        if let Some(position) = self.0.get_mut(channel) {
            position.offset = offset;
        }
    }

    /// Writes the list as an `id:` carries it: `chat=42~EPOCH,news=7~EPOCH`. Called for
    /// every event of an SSE stream, so it writes bytes directly, with no formatter.
    pub fn write_to(&self, out: &mut impl BufMut) {
        let mut digits = itoa::Buffer::new();
        for (i, p) in self.0.values().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(p.id_name.as_bytes());
            out.put_u8(b'=');
            out.put_slice(digits.format(p.offset).as_bytes());
            out.put_u8(b'~');
            out.put_slice(p.epoch.as_bytes());
        }
    }
}

impl Position {
    fn since(&self) -> Since {
        Since {
            offset: self.offset,
            epoch: Some(self.epoch.clone()),
        }
    }
}

impl fmt::Display for Positions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::new();
        self.write_to(&mut text);
        // Names are percent-encoded to ASCII and epochs are alphanumeric.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.' | b'/' | b'@' | b'*')
}

/// `name` with every byte outside the plain set percent-encoded.
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if is_plain(b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_contract_format_and_odd_user_ids() {
        let text = "chat=42~AbC123,news=7~Zz9";
        let parsed = Positions::parse(text).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.since("chat").unwrap().offset, 42);

        let mut odd = Positions::default();
        odd.insert("@auth0|x,y=z~w".to_owned(), 3, "E1".to_owned());
        odd.insert("*".to_owned(), 9, "E2".to_owned());
        let id = odd.to_string();
        assert_eq!(id, "*=9~E2,@auth0%7Cx%2Cy%3Dz%7Ew=3~E1");
        assert_eq!(Positions::parse(&id).unwrap(), odd);
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "chat",
            "chat=1",
            "chat=x~E",
            "chat=1~",
            "chat=1~E!",
            "c h=1~E",
            "%zz=1~E",
            "=1~E",
        ] {
            assert_eq!(Positions::parse(bad), None, "{bad}");
        }
        assert_eq!(Positions::parse(""), Some(Positions::default()));
    }

    #[test]
    fn advancing_needs_a_known_epoch() {
        let mut p = Positions::parse("a=1~E").unwrap();
        p.advance("a", 5);
        p.advance("b", 9);
        assert_eq!(p.to_string(), "a=5~E");
    }
}
