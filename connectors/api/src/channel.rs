//! Channel names: ordinary (`chat`, `game:42`), personal (`@alice`) and broadcast (`*`).

use std::fmt;
use std::sync::Arc;

/// Longest channel name the contract allows.
pub const MAX_CHANNEL_LEN: usize = 128;

/// The broadcast channel every identified connection is in.
pub const BROADCAST: &str = "*";

/// Why a string is not a channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} characters")]
    TooLong,
    #[error("channel name has a character other than letters, digits and _ - : . /")]
    BadCharacter,
}

/// Which of the three kinds of channel a name denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Joined and left by clients.
    Ordinary,
    /// `@user`: every connection of that user, from `ident` on.
    Personal,
    /// `*`: every identified connection.
    Broadcast,
}

/// A validated channel name; cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Parses a channel name as the contract defines it.
    ///
    /// # Errors
    /// When the name is empty, too long, or has a character outside the contract's set.
    pub fn parse(name: &str) -> Result<Self, ChannelNameError> {
        if name == BROADCAST {
            return Ok(Self(Arc::from(name)));
        }
        let (body, personal) = match name.strip_prefix('@') {
            Some(user) => (user, true),
            None => (name, false),
        };
        if body.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.chars().count() > MAX_CHANNEL_LEN {
            return Err(ChannelNameError::TooLong);
        }
        // User ids (JWT `sub`) may be e-mail addresses, so `@` is allowed after a personal `@`.
        if !body
            .chars()
            .all(|c| is_channel_char(c) || (personal && c == '@'))
        {
            return Err(ChannelNameError::BadCharacter);
        }
        Ok(Self(Arc::from(name)))
    }

    /// The personal channel of `user`.
    ///
    /// # Errors
    /// When the user id cannot form a channel name.
    pub fn personal(user: &str) -> Result<Self, ChannelNameError> {
        Self::parse(&format!("@{user}"))
    }

    /// The broadcast channel `*`.
    pub fn broadcast() -> Self {
        Self(Arc::from(BROADCAST))
    }

    /// The kind of channel this name denotes.
    pub fn kind(&self) -> ChannelKind {
        if &*self.0 == BROADCAST {
            ChannelKind::Broadcast
        } else if self.0.starts_with('@') {
            ChannelKind::Personal
        } else {
            ChannelKind::Ordinary
        }
    }

    /// The user whose personal channel this is.
    pub fn personal_user(&self) -> Option<&str> {
        self.0.strip_prefix('@')
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text of the name.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '/')
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for ChannelName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for ChannelName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_kinds() {
        assert_eq!(
            ChannelName::parse("game:42/a.b_c-d").unwrap().kind(),
            ChannelKind::Ordinary
        );
        assert_eq!(
            ChannelName::parse("@alice").unwrap().kind(),
            ChannelKind::Personal
        );
        assert_eq!(
            ChannelName::parse("*").unwrap().kind(),
            ChannelKind::Broadcast
        );
        assert_eq!(
            ChannelName::parse("@a@b.c").unwrap().personal_user(),
            Some("a@b.c")
        );
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(ChannelName::parse(""), Err(ChannelNameError::Empty));
        assert_eq!(ChannelName::parse("@"), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::parse("a b"),
            Err(ChannelNameError::BadCharacter)
        );
        assert_eq!(
            ChannelName::parse("a*"),
            Err(ChannelNameError::BadCharacter)
        );
        assert_eq!(
            ChannelName::parse("a@b"),
            Err(ChannelNameError::BadCharacter)
        );
        assert_eq!(ChannelName::parse("ü"), Err(ChannelNameError::BadCharacter));
        assert_eq!(
            ChannelName::parse(&"x".repeat(129)),
            Err(ChannelNameError::TooLong)
        );
        assert!(ChannelName::parse(&"x".repeat(128)).is_ok());
    }
}
