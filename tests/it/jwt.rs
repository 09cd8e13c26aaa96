//! Tokens signed with RS256 and ES256 keys from PEM files and a JWKS file, and every way a
//! token is refused with 4002: `none`, algorithm confusion, a missing `exp` when required,
//! `exp` past, `nbf` ahead, a wrong `aud` or `iss`, an unknown key.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::{start_with, Gateway, JWT_SECRET};

fn key_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/keys")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(key_file(name)).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token over `claims`, signed with `key` under `alg` (and `kid`).
fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

fn rsa(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&read(name)).unwrap()
}

fn ec(name: &str) -> EncodingKey {
    EncodingKey::from_ec_pem(&read(name)).unwrap()
}

async fn ident(gw: &Gateway, token: &str) -> Value {
    let mut client = gw.connect().await;
    client.request(json!({"op": "ident", "token": token})).await
}

async fn accepted(gw: &Gateway, token: &str, user: &str, why: &str) {
    let reply = ident(gw, token).await;
    assert_eq!(reply["data"]["user"], user, "{why}: {reply}");
}

async fn refused(gw: &Gateway, token: &str, why: &str) {
    let reply = ident(gw, token).await;
    assert_eq!(reply["code"], 4002, "{why}: {reply}");
}

fn key_args() -> Vec<String> {
    vec![
        format!("--jwt-public-key={}", key_file("rsa-public.pem").display()),
        format!("--jwt-jwks={}", key_file("jwks.json").display()),
    ]
}

#[tokio::test]
async fn public_keys_from_a_pem_file_and_a_jwks_file_each_verify_their_own_algorithm() {
    let args = key_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = start_with(&args, None).await;
    let claims = |sub: &str| json!({"sub": sub, "exp": now() + 600});
    let user = "google-oauth2|104539852367981726354";

    accepted(
        &gw,
        &sign(
            Algorithm::RS256,
            None,
            &rsa("rsa-private.pem"),
            &claims(user),
        ),
        user,
        "RS256, PEM",
    )
    .await;
    accepted(
        &gw,
        &sign(
            Algorithm::RS256,
            Some("rsa-2026"),
            &rsa("rsa-jwks-private.pem"),
            &claims("r"),
        ),
        "r",
        "RS256, JWKS kid",
    )
    .await;
    accepted(
        &gw,
        &sign(
            Algorithm::ES256,
            Some("ec-2026"),
            &ec("ec-jwks-private.pem"),
            &claims("e"),
        ),
        "e",
        "ES256, JWKS kid",
    )
    .await;
    accepted(
        &gw,
        &gw.token("h", None),
        "h",
        "HS256 with the secret still works",
    )
    .await;

    // The JWKS key's kid with another key's signature; a kid nobody has.
    refused(
        &gw,
        &sign(
            Algorithm::RS256,
            Some("rsa-2026"),
            &rsa("rsa-private.pem"),
            &claims("x"),
        ),
        "kid of another key",
    )
    .await;
    refused(
        &gw,
        &sign(
            Algorithm::RS256,
            Some("nope"),
            &rsa("rsa-jwks-private.pem"),
            &claims("x"),
        ),
        "unknown kid",
    )
    .await;
    // ES256 under an RSA key's kid: the key decides the algorithm.
    refused(
        &gw,
        &sign(
            Algorithm::ES256,
            Some("rsa-2026"),
            &ec("ec-jwks-private.pem"),
            &claims("x"),
        ),
        "alg of another key",
    )
    .await;
    // ES256 without a kid is checked against the one ES256 key: another key's signature fails.
    refused(
        &gw,
        &sign(Algorithm::ES256, None, &ec("ec-private.pem"), &claims("x")),
        "ES256 with a key nobody configured",
    )
    .await;

    // Algorithm confusion: HS256 "signed" with the RSA public key as the secret.
    let public = read("rsa-public.pem");
    let confused = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(&public),
        &claims("x"),
    );
    refused(&gw, &confused, "HS256 keyed with the public key").await;

    // alg none: a token with no signature at all.
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims("x"))
    );
    refused(&gw, &none, "alg none").await;

    // Time claims, 5 s of leeway.
    let hs = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    refused(
        &gw,
        &sign(
            Algorithm::HS256,
            None,
            &hs,
            &json!({"sub": "x", "exp": now() - 60}),
        ),
        "exp past",
    )
    .await;
    refused(
        &gw,
        &sign(
            Algorithm::HS256,
            None,
            &hs,
            &json!({"sub": "x", "nbf": now() + 60}),
        ),
        "nbf ahead",
    )
    .await;
    accepted(
        &gw,
        &sign(Algorithm::HS256, None, &hs, &json!({"sub": "no-exp"})),
        "no-exp",
        "exp is optional by default",
    )
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn audience_issuer_and_a_required_exp_are_enforced_when_configured() {
    let gw = start_with(
        &[
            "--jwt-audience=herald",
            "--jwt-issuer=https://id.example/",
            "--jwt-require-exp",
        ],
        None,
    )
    .await;
    let hs = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let token = |claims: Value| sign(Algorithm::HS256, None, &hs, &claims);
    let good = json!({"sub": "ann", "exp": now() + 600, "aud": ["other", "herald"], "iss": "https://id.example/"});
    accepted(&gw, &token(good.clone()), "ann", "every claim right").await;
    for (field, value) in [
        ("aud", json!("other")),
        ("iss", json!("https://evil.example/")),
        ("exp", Value::Null),
        ("aud", Value::Null),
        ("iss", Value::Null),
    ] {
        let mut claims = good.clone();
        match value {
            Value::Null => drop(claims.as_object_mut().unwrap().remove(field)),
            value => claims[field] = value,
        }
        refused(&gw, &token(claims), &format!("{field} wrong or missing")).await;
    }
    gw.stop().await;
}

#[test]
fn an_unusable_key_file_is_a_configuration_error_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("key.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    for (flag, key) in [
        (
            format!("--jwt-public-key={}", garbage.display()),
            "jwt_public_key",
        ),
        (format!("--jwt-jwks={}", garbage.display()), "jwt_jwks"),
        (
            "--jwt-public-key=/nonexistent/key.pem".to_owned(),
            "jwt_public_key",
        ),
    ] {
        let cli = herald::config::Cli::try_parse_from(["herald", flag.as_str()]).unwrap();
        let error = herald::config::Config::load(cli).unwrap_err().to_string();
        assert!(error.contains(key), "{flag}: {error}");
    }
}

#[tokio::test]
async fn a_token_that_expires_ends_its_connection_unless_refreshed() {
    let gw = start_with(&[], None).await;
    let hs = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let token = |sub: &str, ttl: i64| {
        sign(
            Algorithm::HS256,
            None,
            &hs,
            &json!({"sub": sub, "exp": now() + ttl}),
        )
    };
    let mut refreshed = gw.connect().await;
    let reply = refreshed
        .request(json!({"op": "ident", "token": token("ann", 2)}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let mut lapsing = gw.connect().await;
    let reply = lapsing
        .request(json!({"op": "ident", "token": token("ann", 2)}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");

    // A refresh must name the same user, with a valid token; a refused one changes nothing.
    let reply = refreshed
        .request(json!({"op": "refresh", "token": token("bob", 600)}))
        .await;
    assert_eq!(reply["code"], 4002, "{reply}");
    let reply = refreshed
        .request(json!({"op": "refresh", "token": "garbage"}))
        .await;
    assert_eq!(reply["code"], 4002, "{reply}");
    let fresh = (now() + 600) as u64;
    let reply = refreshed
        .request(json!({"op": "refresh", "token": token("ann", 600)}))
        .await;
    let expires_at = reply["data"]["expires_at"].as_u64().unwrap_or(0);
    assert!(expires_at.abs_diff(fresh) <= 1, "{reply}");

    // The other one lapses: 4002, reconnect with a new token.
    // reconnect:false, as the contract has it for 4002: only a new token helps.
    lapsing.expect_ended(4002, false).await;
    let reply = refreshed.request(json!({"op": "ping"})).await;
    assert_eq!(reply["ok"], true, "the refreshed connection lives on");
    gw.stop().await;
}
