//! Channel names: ordinary (`chat`, `game:42`), personal (`@alice`) and broadcast (`*`).

use std::fmt;
use std::sync::Arc;

/// Longest ordinary channel name the contract allows, in characters.
pub const MAX_CHANNEL_LEN: usize = 128;

/// Longest user id, in bytes. Identity providers issue ids such as `auth0|5f7c…`,
/// `google-oauth2|1234…`, e-mail addresses or UUIDs; 256 bytes holds all of them with room,
/// and bounds what one personal channel name costs.
pub const MAX_USER_ID_LEN: usize = 256;

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
    #[error("user id is longer than {MAX_USER_ID_LEN} bytes")]
    UserTooLong,
    #[error("user id has a control character")]
    UserControlCharacter,
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
    /// Parses a channel name as the contract defines it. A personal channel is `@` and any
    /// user id (see [`check_user_id`]), so ids from real identity providers work.
    ///
    /// # Errors
    /// When the name is empty, too long, or has a character outside the contract's set.
    pub fn parse(name: &str) -> Result<Self, ChannelNameError> {
        if name == BROADCAST {
            return Ok(Self(Arc::from(name)));
        }
        if let Some(user) = name.strip_prefix('@') {
            check_user_id(user)?;
            return Ok(Self(Arc::from(name)));
        }
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.chars().count() > MAX_CHANNEL_LEN {
            return Err(ChannelNameError::TooLong);
        }
        if !name.chars().all(is_channel_char) {
            return Err(ChannelNameError::BadCharacter);
        }
        Ok(Self(Arc::from(name)))
    }

    /// The personal channel of `user`.
    ///
    /// # Errors
    /// When `user` is not a usable user id.
    pub fn personal(user: &str) -> Result<Self, ChannelNameError> {
        check_user_id(user)?;
        let mut name = String::with_capacity(user.len() + 1);
        name.push('@');
        name.push_str(user);
        Ok(Self(Arc::from(name)))
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

/// A user id is 1 to [`MAX_USER_ID_LEN`] bytes of printable text: anything but control
/// characters, which could break log lines and headers.
///
/// # Errors
/// When the id is empty, too long, or has a control character.
pub fn check_user_id(user: &str) -> Result<(), ChannelNameError> {
    if user.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if user.len() > MAX_USER_ID_LEN {
        return Err(ChannelNameError::UserTooLong);
    }
    if user.chars().any(char::is_control) {
        return Err(ChannelNameError::UserControlCharacter);
    }
    Ok(())
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
    fn personal_channels_take_identity_provider_user_ids() {
        for user in [
            "auth0|5f7c8ec7c33c6c004bbafe82",
            "google-oauth2|112233445566778899000",
            "alice@example.com",
            "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "CN=Alice Smith,O=Example",
            "用户123",
        ] {
            let personal = ChannelName::personal(user).unwrap();
            assert_eq!(personal.kind(), ChannelKind::Personal);
            assert_eq!(personal.personal_user(), Some(user));
            assert_eq!(ChannelName::parse(&format!("@{user}")).unwrap(), personal);
        }
        assert!(ChannelName::personal(&"x".repeat(MAX_USER_ID_LEN)).is_ok());
        assert_eq!(
            ChannelName::personal(&"x".repeat(MAX_USER_ID_LEN + 1)),
            Err(ChannelNameError::UserTooLong)
        );
        assert_eq!(
            ChannelName::personal("a\nb"),
            Err(ChannelNameError::UserControlCharacter)
        );
        assert_eq!(ChannelName::personal(""), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::parse("auth0|x"),
            Err(ChannelNameError::BadCharacter),
            "ordinary names keep the contract's character set"
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
