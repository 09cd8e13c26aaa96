//! A connection's positions as SSE's `id:` carries them: `chat=42~EPOCH,news=7~EPOCH`.
//!
//! Ordinary channel names are written as they are. A personal channel holds any printable
//! user id, which may contain `,`, `=` or `~`, so every byte outside the characters channel
//! names are made of is percent-encoded; the format stays the contract's for ordinary names.

use std::collections::BTreeMap;
use std::fmt;

use herald_connector_api::{Identified, Since};

/// Every channel's (offset, epoch), by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<String, (u64, String)>);

impl Positions {
    /// The positions an `ident` reported.
    pub fn from_identified(identified: &Identified) -> Self {
        Self(
            identified
                .channels
                .iter()
                .map(|(name, p)| (name.clone(), (p.offset, p.epoch.clone())))
                .collect(),
        )
    }

    /// Parses a `Last-Event-ID`; `None` when it is not a position list.
    pub fn parse(text: &str) -> Option<Self> {
        let mut positions = BTreeMap::new();
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
            positions.insert(name, (offset.parse().ok()?, epoch.to_owned()));
        }
        Some(Self(positions))
    }

    /// The position to recover `channel` after, if known.
    pub fn since(&self, channel: &str) -> Option<Since> {
        self.0.get(channel).map(|(offset, epoch)| Since {
            offset: *offset,
            epoch: Some(epoch.clone()),
        })
    }

    /// Every known channel and the position to recover it after.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Since)> {
        self.0.iter().map(|(name, (offset, epoch))| {
            (
                name.as_str(),
                Since {
                    offset: *offset,
                    epoch: Some(epoch.clone()),
                },
            )
        })
    }

    /// Records an event at `offset` in `channel` (a channel not reported at ident is
    /// skipped: without its epoch the position would prove nothing).
    pub fn advance(&mut self, channel: &str, offset: u64) {
        if let Some(position) = self.0.get_mut(channel) {
            position.0 = offset;
        }
    }
}

impl fmt::Display for Positions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, (offset, epoch))) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            encode(name, f)?;
            write!(f, "={offset}~{epoch}")?;
        }
        Ok(())
    }
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.' | b'/' | b'@' | b'*')
}

fn encode(name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut rest = name.as_bytes();
    while !rest.is_empty() {
        let plain = rest.iter().take_while(|&&b| is_plain(b)).count();
        // Plain bytes are ASCII: always UTF-8.
        f.write_str(std::str::from_utf8(&rest[..plain]).map_err(|_| fmt::Error)?)?;
        if let Some(b) = rest.get(plain) {
            write!(f, "%{b:02X}")?;
        }
        rest = rest.get(plain + 1..).unwrap_or_default();
    }
    Ok(())
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
        odd.0
            .insert("@auth0|x,y=z~w".to_owned(), (3, "E1".to_owned()));
        odd.0.insert("*".to_owned(), (9, "E2".to_owned()));
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
