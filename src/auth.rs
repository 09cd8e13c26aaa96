//! Client authentication: JWTs signed with the configured HS256 secret, or with the private
//! half of a configured RS256/ES256 public key or JWKS key. Every key accepts exactly one
//! algorithm; a token's header selects a key (by `kid`, else by algorithm), never the
//! algorithm a key is checked with.

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
    /// No configured key takes this token's `kid` and `alg`.
    #[error("invalid token: no key for alg {alg:?}{}", kid.as_ref().map(|k| format!(" and kid {k:?}")).unwrap_or_default())]
    NoKey {
        /// The header's algorithm.
        alg: Algorithm,
        /// The header's key id.
        kid: Option<String>,
    },
}

/// Why the configured keys cannot be used; each names its configuration key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KeyError {
    /// The configuration key at fault.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

/// What besides the HS256 secret verifies tokens, and what every token must say.
#[derive(Debug, Clone, Default)]
pub struct JwtOptions {
    /// A PEM public key (RSA: RS256; EC P-256: ES256).
    pub public_key_pem: Option<String>,
    /// A JWKS document: each key with its `kid`, checked with its own algorithm.
    pub jwks: Option<String>,
    /// When set, `aud` must name it.
    pub audience: Option<String>,
    /// When set, `iss` must be it.
    pub issuer: Option<String>,
    /// Tokens without `exp` are refused.
    pub require_exp: bool,
}

/// One key, and the one algorithm it accepts.
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    decoding: DecodingKey,
}

/// Who a connection proved to be.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user id (`sub`); empty for anonymous connections.
    pub user: Arc<str>,
    /// Channels the user may join; `None` means every ordinary channel.
    pub channels: Option<Arc<[Pattern]>>,
    /// When the token (its `exp`) or the auth hook's answer stops being valid: a live
    /// connection that has not sent a `refresh` by then is ended with 4002.
    pub expires_at: Option<SystemTime>,
    /// What revocations look at: the JWT's `jti` and `iat`.
    pub token: TokenFacts,
}

/// A JWT's `jti` and `iat`, when it had them.
#[derive(Debug, Clone, Default)]
pub struct TokenFacts {
    /// The token's id.
    pub jti: Option<Arc<str>>,
    /// When it was issued, Unix seconds.
    pub issued_at: Option<u64>,
}

impl Identity {
    /// An anonymous connection: no personal channel, any ordinary channel.
    pub fn anonymous() -> Self {
        Self {
            user: Arc::from(""),
            channels: None,
            expires_at: None,
            token: TokenFacts::default(),
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
            token: TokenFacts::default(),
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
}

/// Verifies (and, for demos, mints) tokens.
pub struct Auth {
    keys: Vec<Key>,
    encoding: EncodingKey,
    options: JwtOptions,
}

impl Auth {
    /// An authenticator for HS256 tokens signed with `secret`.
    pub fn new(secret: &str) -> Self {
        Self {
            keys: vec![Key {
                kid: None,
                algorithm: Algorithm::HS256,
                decoding: DecodingKey::from_secret(secret.as_bytes()),
            }],
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            options: JwtOptions::default(),
        }
    }

    /// HS256 with `secret`, plus the public keys and the claim rules of `options`.
    ///
    /// # Errors
    /// [`KeyError`] naming the configuration key whose value is not a usable key.
    pub fn with_options(secret: &str, options: JwtOptions) -> Result<Self, KeyError> {
        let mut auth = Self::new(secret);
        if let Some(pem) = &options.public_key_pem {
            auth.keys.push(public_key(pem.as_bytes())?);
        }
        if let Some(jwks) = &options.jwks {
            auth.keys.extend(jwks_keys(jwks)?);
        }
        auth.options = options;
        Ok(auth)
    }

    /// The key a token's header names. A `kid` that a key has names that key, which must
    /// take the header's algorithm; a `kid` no key has falls to the key of that algorithm
    /// that has no `kid` (the secret, the PEM key). Without a `kid`: that key, else the only
    /// key of that algorithm.
    fn key_for(&self, header: &Header) -> Option<&Key> {
        let same_alg = || self.keys.iter().filter(|k| k.algorithm == header.alg);
        let unnamed = || same_alg().find(|k| k.kid.is_none());
        if let Some(kid) = header.kid.as_deref() {
            return match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(key) => (key.algorithm == header.alg).then_some(key),
                None => unnamed(),
            };
        }
        unnamed().or_else(|| {
            let mut keys = same_alg();
            let only = keys.next();
            keys.next().is_none().then_some(only).flatten()
        })
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        // Only the selected key's one algorithm passes: the header never chooses it.
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["sub"];
        if self.options.require_exp {
            required.push("exp");
        }
        match &self.options.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.options.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Checks a token and returns who it names.
    ///
    /// # Errors
    /// [`AuthError`] when the token is not valid now.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token)?;
        let key = self.key_for(&header).ok_or(AuthError::NoKey {
            alg: header.alg,
            kid: header.kid.clone(),
        })?;
        let validation = self.validation(key.algorithm);
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)?;
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
            expires_at: claims.exp.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            token: TokenFacts {
                jti: claims.jti.map(Arc::from),
                issued_at: claims.iat,
            },
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
            iat: Some(now.as_secs()),
            jti: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }
}

/// A PEM public key: RSA keys verify RS256, EC (P-256) keys ES256.
fn public_key(pem: &[u8]) -> Result<Key, KeyError> {
    let (decoding, algorithm) = match DecodingKey::from_rsa_pem(pem) {
        Ok(key) => (key, Algorithm::RS256),
        Err(_) => DecodingKey::from_ec_pem(pem)
            .map(|key| (key, Algorithm::ES256))
            .map_err(|e| KeyError {
                key: "jwt_public_key",
                message: format!("not an RSA or EC (P-256) public key in PEM: {e}"),
            })?,
    };
    Ok(Key {
        kid: None,
        algorithm,
        decoding,
    })
}

/// The keys of a JWKS document, each with the algorithm it names (or its type implies).
fn jwks_keys(text: &str) -> Result<Vec<Key>, KeyError> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
    let bad = |message: String| KeyError {
        key: "jwt_jwks",
        message,
    };
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| bad(format!("not a JWKS document: {e}")))?;
    set.keys
        .iter()
        .enumerate()
        .map(|(i, jwk)| {
            let implied = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    Some(Algorithm::ES256)
                }
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P384 => {
                    Some(Algorithm::ES384)
                }
                AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
                _ => None,
            };
            let named = jwk.common.key_algorithm.and_then(|alg| match alg {
                KeyAlgorithm::RS256 => Some(Algorithm::RS256),
                KeyAlgorithm::RS384 => Some(Algorithm::RS384),
                KeyAlgorithm::RS512 => Some(Algorithm::RS512),
                KeyAlgorithm::PS256 => Some(Algorithm::PS256),
                KeyAlgorithm::ES256 => Some(Algorithm::ES256),
                KeyAlgorithm::ES384 => Some(Algorithm::ES384),
                KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
                _ => None,
            });
            let algorithm = named.or(implied).ok_or_else(|| {
                bad(format!(
                    "keys[{i}]: not an RSA, EC or OKP public key with a usable alg"
                ))
            })?;
            let decoding =
                DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("keys[{i}]: {e}")))?;
            Ok(Key {
                kid: jwk.common.key_id.clone(),
                algorithm,
                decoding,
            })
        })
        .collect()
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
            iat: None,
            jti: None,
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
            iat: None,
            jti: None,
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
