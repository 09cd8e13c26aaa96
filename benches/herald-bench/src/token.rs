//! Herald client tokens: HS256 JWTs signed with the server's JWT secret (PROTOCOL.md).

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

/// A token for `user` that stays valid far longer than any run.
pub fn mint(secret: &str, user: &str) -> String {
    let exp = crate::sys::now_us() / 1_000_000 + 10 * 365 * 24 * 3600;
    // Encoding with an HMAC key cannot fail for these claims; an empty token would simply be
    // refused by the server and reported as a failed ident.
    encode(
        &Header::new(Algorithm::HS256),
        &Claims { sub: user, exp },
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};

    #[derive(serde::Deserialize)]
    struct Back {
        sub: String,
    }

    #[test]
    fn round_trips() {
        let t = mint("s3cret", "u42");
        assert_eq!(t.split('.').count(), 3);
        let d = decode::<Back>(
            &t,
            &DecodingKey::from_secret(b"s3cret"),
            &Validation::new(Algorithm::HS256),
        )
        .unwrap();
        assert_eq!(d.claims.sub, "u42");
    }
}
