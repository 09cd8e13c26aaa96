//! Herald's `[auth_hooks]` section: for backends that issue no JWTs, an HTTP endpoint says
//! who holds a token (`ident_url`) and whether a user may join a guarded channel
//! (`join_url`). Answers are cached for `cache_ttl`; a slow, unreachable or erroring backend
//! denies, never allows.

mod cache;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_connector_api::{
    check_user_id, AuthHooks, HookError, HookIdentity, IdentHookFuture, JoinHookFuture,
};
use serde::Deserialize;

use cache::Cache;

/// The `[auth_hooks]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthHooksConfig {
    /// Tokens that are not valid JWTs are POSTed here; empty: JWTs only.
    pub ident_url: String,
    /// Joins of channels matching `join_channels` are POSTed here; empty: no join checks.
    pub join_url: String,
    /// Channel patterns (`*` wildcard) whose joins `join_url` decides.
    pub join_channels: Vec<String>,
    /// How long an answer (allow or deny) is reused [default: 10s]; `0s` asks every time.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Answers remembered at once, per hook [default: 100000].
    pub cache_entries: usize,
    /// How long the backend may take; then the client is denied [default: 3s].
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for AuthHooksConfig {
    fn default() -> Self {
        Self {
            ident_url: String::new(),
            join_url: String::new(),
            join_channels: Vec::new(),
            cache_ttl: Duration::from_secs(10),
            cache_entries: 100_000,
            timeout: Duration::from_secs(3),
        }
    }
}

impl AuthHooksConfig {
    /// Every problem with the values, each naming its key.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let is_http = |url: &str| url.starts_with("http://") || url.starts_with("https://");
        let mut problems = Vec::new();
        if self.ident_url.is_empty() && self.join_url.is_empty() {
            problems.push((
                "auth_hooks.ident_url",
                "set ident_url, join_url or both (or remove the section)",
            ));
        }
        if !self.ident_url.is_empty() && !is_http(&self.ident_url) {
            problems.push(("auth_hooks.ident_url", "must be an http:// or https:// URL"));
        }
        if !self.join_url.is_empty() && !is_http(&self.join_url) {
            problems.push(("auth_hooks.join_url", "must be an http:// or https:// URL"));
        }
        if !self.join_url.is_empty() && self.join_channels.is_empty() {
            problems.push((
                "auth_hooks.join_channels",
                "join_url needs the channel patterns it decides",
            ));
        }
        if self.timeout.is_zero() {
            problems.push(("auth_hooks.timeout", "must be greater than zero"));
        }
        problems
    }
}

/// The hooks over HTTP, with their caches.
pub struct HttpAuthHooks {
    client: reqwest::Client,
    config: AuthHooksConfig,
    idents: Arc<Cache<String, Result<HookIdentity, String>>>,
    joins: Arc<Cache<(String, String), Result<(), String>>>,
}

impl HttpAuthHooks {
    /// Hooks calling the configured URLs.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS provider installed).
    pub fn new(config: &AuthHooksConfig) -> Result<Self, HookError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| HookError::Unavailable(e.to_string()))?;
        Ok(Self {
            client,
            idents: Arc::new(Cache::new(config.cache_ttl, config.cache_entries)),
            joins: Arc::new(Cache::new(config.cache_ttl, config.cache_entries)),
            config: config.clone(),
        })
    }

    fn post(&self, url: &str, body: serde_json::Value) -> reqwest::RequestBuilder {
        self.client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
    }
}

/// What the ident hook answers: `{"user","channels"?,"expires_at"?}` or `{"error"}`.
#[derive(Debug, Deserialize)]
struct IdentAnswer {
    user: Option<String>,
    channels: Option<Vec<String>>,
    /// Unix seconds.
    expires_at: Option<u64>,
    error: Option<String>,
}

/// What the join hook answers: `{"allow":true}`, or `{"allow":false,"reason"?}`.
#[derive(Debug, Deserialize)]
struct JoinAnswer {
    allow: Option<bool>,
    reason: Option<String>,
    error: Option<String>,
}

impl AuthHooks for HttpAuthHooks {
    fn ident(&self, token: &str, conn: &str, transport: &str) -> IdentHookFuture {
        let key = token.to_owned();
        if let Some(cached) = self.idents.get(&key) {
            return Box::pin(async move { cached.map_err(HookError::Denied).and_then(live) });
        }
        let request = self.post(
            &self.config.ident_url,
            serde_json::json!({"token": token, "conn": conn, "transport": transport}),
        );
        let cache = self.idents.clone();
        Box::pin(async move {
            let (status, body) = send(request).await?;
            let answer: Option<IdentAnswer> = serde_json::from_slice(&body).ok();
            let verdict = match (status, answer) {
                (_, Some(IdentAnswer { error: Some(e), .. })) => Err(e),
                (401 | 403, _) => Err(format!("the auth backend refused the token ({status})")),
                (
                    200..=299,
                    Some(IdentAnswer {
                        user: Some(user),
                        channels,
                        expires_at,
                        ..
                    }),
                ) => {
                    check_user_id(&user)
                        .map_err(|e| HookError::Unavailable(format!("ident answer: user: {e}")))?;
                    Ok(HookIdentity {
                        user,
                        channels,
                        expires_at: expires_at.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
                    })
                }
                (200..=299, _) => {
                    return Err(HookError::Unavailable(
                        "ident answer is not {\"user\",…} JSON".into(),
                    ))
                }
                _ => {
                    return Err(HookError::Unavailable(format!(
                        "ident hook answered {status}"
                    )))
                }
            };
            let until = verdict.as_ref().ok().and_then(|id| id.expires_at);
            cache.insert(key, verdict.clone(), until);
            verdict.map_err(HookError::Denied).and_then(live)
        })
    }

    fn join(&self, user: &str, conn: &str, channel: &str) -> JoinHookFuture {
        let key = (user.to_owned(), channel.to_owned());
        if let Some(cached) = self.joins.get(&key) {
            return Box::pin(async move { cached.map_err(HookError::Denied) });
        }
        let request = self.post(
            &self.config.join_url,
            serde_json::json!({"user": user, "conn": conn, "channel": channel}),
        );
        let cache = self.joins.clone();
        Box::pin(async move {
            let (status, body) = send(request).await?;
            let answer: Option<JoinAnswer> = serde_json::from_slice(&body).ok();
            let verdict = match (status, answer) {
                (
                    200..=299,
                    Some(JoinAnswer {
                        allow: Some(true),
                        error: None,
                        ..
                    }),
                ) => Ok(()),
                (200..=299 | 403, Some(JoinAnswer { reason, error, .. })) => Err(reason
                    .or(error)
                    .unwrap_or_else(|| "denied by the backend".into())),
                (403, None) => Err("denied by the backend".into()),
                (200..=299, None) => {
                    return Err(HookError::Unavailable(
                        "join answer is not {\"allow\":…} JSON".into(),
                    ))
                }
                _ => {
                    return Err(HookError::Unavailable(format!(
                        "join hook answered {status}"
                    )))
                }
            };
            cache.insert(key, verdict.clone(), None);
            verdict.map_err(HookError::Denied)
        })
    }
}

/// Sends a hook request: the status and body, or why there is none.
async fn send(request: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), HookError> {
    let response = request.send().await.map_err(|e| {
        HookError::Unavailable(if e.is_timeout() {
            "timed out".to_owned()
        } else {
            e.to_string()
        })
    })?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| HookError::Unavailable(e.to_string()))?;
    Ok((status, body.to_vec()))
}

/// An identity whose expiry has passed is a refusal.
fn live(identity: HookIdentity) -> Result<HookIdentity, HookError> {
    match identity.expires_at {
        Some(at) if at <= SystemTime::now() => {
            Err(HookError::Denied("the identity has expired".into()))
        }
        _ => Ok(identity),
    }
}
