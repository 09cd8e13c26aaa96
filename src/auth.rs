//! Client authentication: HS256 JWTs signed with the configured secret.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_connector_api::ChannelName;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::pattern::Pattern;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Signature, algorithm, expiry or shape is wrong.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// `sub` cannot be a user id.
    #[error("invalid token: sub is not a usable user id")]
    BadSubject,
}

/// Who a connection proved to be.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user id (`sub`); empty for anonymous connections.
    pub user: Arc<str>,
    /// Channels the user may join; `None` means every ordinary channel.
    pub channels: Option<Arc<[Pattern]>>,
    /// When an auth hook's answer stops being valid; the connection ends with 4002 then.
    pub expires_at: Option<SystemTime>,
}

impl Identity {
    /// An anonymous connection: no personal channel, any ordinary channel.
    pub fn anonymous() -> Self {
        Self {
            user: Arc::from(""),
            channels: None,
            expires_at: None,
        }
    }

    /// The identity an ident hook vouched for.
    pub fn from_hook(hook: herald_connector_api::HookIdentity) -> Self {
        Self {
            user: Arc::from(hook.user),
            channels: hook
                .channels
                .map(|list| list.iter().map(|p| Pattern::new(p)).collect()),
            expires_at: hook.expires_at,
        }
    }

    /// Whether this identity may join or read an ordinary channel.
    pub fn may_access(&self, channel: &ChannelName) -> bool {
        match &self.channels {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(channel.as_str())),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

/// Verifies (and, for demos, mints) tokens.
pub struct Auth {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl Auth {
    /// An authenticator for HS256 tokens signed with `secret`.
    pub fn new(secret: &str) -> Self {
        // The algorithm is pinned: the token's own header never chooses it.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["sub"]);
        Self {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Checks a token and returns who it names.
    ///
    /// # Errors
    /// [`AuthError`] when the token is not valid now.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)?;
        let claims = data.claims;
        if claims.sub.is_empty() || ChannelName::personal(&claims.sub).is_err() {
            return Err(AuthError::BadSubject);
        }
        let channels = claims
            .channels
            .map(|list| list.iter().map(|p| Pattern::new(p)).collect());
        Ok(Identity {
            user: Arc::from(claims.sub),
            channels,
            expires_at: None,
        })
    }

    /// Signs a token for `user`, valid for `ttl`, limited to `channels` patterns when given.
    ///
    /// # Panics
    /// Never in practice: HS256 signing of serializable claims cannot fail.
    pub fn mint(&self, user: &str, channels: Option<Vec<String>>, ttl: Duration) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let claims = Claims {
            sub: user.to_owned(),
            channels,
            exp: Some((now + ttl).as_secs()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let auth = Auth::new("s3cret");
        let token = auth.mint(
            "alice",
            Some(vec!["chat:*".into()]),
            Duration::from_secs(60),
        );
        let id = auth.verify(&token).unwrap();
        assert_eq!(&*id.user, "alice");
        assert!(id.may_access(&ChannelName::parse("chat:1").unwrap()));
        assert!(!id.may_access(&ChannelName::parse("admin").unwrap()));

        assert!(Auth::new("other").verify(&token).is_err(), "wrong secret");
        let past = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 60;
        let claims = Claims {
            sub: "alice".into(),
            channels: None,
            exp: Some(past),
        };
        let expired = jsonwebtoken::encode(&Header::default(), &claims, &auth.encoding).unwrap();
        assert!(auth.verify(&expired).is_err(), "expired");
        assert!(auth.verify("not.a.token").is_err());
    }

    #[test]
    fn refuses_other_algorithms() {
        let claims = Claims {
            sub: "alice".into(),
            channels: None,
            exp: None,
        };
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert!(Auth::new("s3cret").verify(&hs512).is_err());
        // exp is optional in the contract.
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert!(Auth::new("s3cret").verify(&no_exp).is_ok());
    }
}
