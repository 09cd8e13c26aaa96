//! Who may no longer get in: users blocked (for a while or until unblocked), and tokens
//! revoked (by `jti`, or every token of a user issued before a time). Checked at every
//! `ident`; the API's calls also end the live connections they name. Bounded in entries;
//! what has lapsed is swept.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use herald_connector_api::{AtCapacity, Revocation};

use crate::auth::Identity;

/// How long a revoked `jti` is remembered when the caller gives no expiry.
pub(super) const JTI_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Blocks and revocations in force.
pub(super) struct Revocations {
    max_entries: usize,
    /// User → until when (`None`: until unblocked).
    blocked: DashMap<Arc<str>, Option<SystemTime>>,
    /// `jti` → until when it is remembered.
    jtis: DashMap<Arc<str>, SystemTime>,
    /// User → Unix second before which its tokens are refused.
    issued_before: DashMap<Arc<str>, u64>,
}

impl Revocations {
    pub(super) fn new(max_entries: usize) -> Self {
        Self {
            max_entries,
            blocked: DashMap::new(),
            jtis: DashMap::new(),
            issued_before: DashMap::new(),
        }
    }

    fn room(&self, len: usize) -> Result<(), AtCapacity> {
        if len >= self.max_entries {
            return Err(AtCapacity {
                key: "max_revocations",
                limit: self.max_entries,
            });
        }
        Ok(())
    }

    /// Why `identity` may not get in now, if it may not.
    pub(super) fn refusal(&self, identity: &Identity, now: SystemTime) -> Option<&'static str> {
        if let Some(until) = self.blocked.get(&identity.user) {
            if until.is_none_or(|until| now < until) {
                return Some("the user is blocked");
            }
        }
        let token = &identity.token;
        if token
            .jti
            .as_ref()
            .is_some_and(|jti| self.jtis.get(jti).is_some_and(|until| now < *until))
        {
            return Some("the token is revoked");
        }
        if let Some(before) = self.issued_before.get(&identity.user) {
            // A token that does not say when it was issued cannot show it is newer.
            if token.issued_at.is_none_or(|iat| iat < *before) {
                return Some("the token is revoked");
            }
        }
        None
    }

    pub(super) fn block(&self, user: &str, until: Option<SystemTime>) -> Result<(), AtCapacity> {
        if !self.blocked.contains_key(user) {
            self.room(self.blocked.len())?;
        }
        self.blocked.insert(Arc::from(user), until);
        Ok(())
    }

    pub(super) fn unblock(&self, user: &str) -> bool {
        self.blocked.remove(user).is_some()
    }

    pub(super) fn revoke(
        &self,
        revocation: &Revocation,
        now: SystemTime,
    ) -> Result<(), AtCapacity> {
        match revocation {
            Revocation::Jti { jti, until } => {
                if !self.jtis.contains_key(jti.as_str()) {
                    self.room(self.jtis.len())?;
                }
                let until = until.unwrap_or(now + JTI_RETENTION);
                self.jtis.insert(Arc::from(jti.as_str()), until);
            }
            Revocation::IssuedBefore { user, before } => {
                if !self.issued_before.contains_key(user.as_str()) {
                    self.room(self.issued_before.len())?;
                }
                let before = unix(*before);
                let mut entry = self
                    .issued_before
                    .entry(Arc::from(user.as_str()))
                    .or_insert(0);
                *entry = (*entry).max(before);
            }
        }
        Ok(())
    }

    /// Forgets blocks and `jti`s that have lapsed.
    pub(super) fn expire(&self, now: SystemTime) {
        self.blocked
            .retain(|_, until| until.is_none_or(|until| now < until));
        self.jtis.retain(|_, until| now < *until);
    }
}

/// Whether a live connection of `identity` is one that `revocation` names.
pub(super) fn names(revocation: &Revocation, identity: &Identity) -> bool {
    match revocation {
        Revocation::Jti { jti, .. } => identity.token.jti.as_deref() == Some(jti.as_str()),
        Revocation::IssuedBefore { user, before } => {
            *identity.user == **user
                && identity
                    .token
                    .issued_at
                    .is_none_or(|iat| iat < unix(*before))
        }
    }
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}
