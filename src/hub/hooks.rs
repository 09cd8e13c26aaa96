//! Backend auth hooks on the client path. An `ident` whose token is no valid JWT, or a join of
//! a channel the join hook guards, needs the backend's answer: it is asked in a task of its
//! own, and the connection's later frames wait, in order, until the answer is applied
//! ([`Conn::hold`]). Nothing is allowed while the backend is silent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use herald_connector_api::{AuthHooks, ChannelKind, ChannelName, HookError};
use tokio_util::task::TaskTracker;

use super::frame::OpError;
use super::Hub;
use crate::auth::Identity;
use crate::pattern::Pattern;

/// The backend's say on identities and joins (`[auth_hooks]`).
pub struct AuthSetup {
    /// The hooks.
    pub hooks: Arc<dyn AuthHooks>,
    /// Whether tokens that are no valid JWT go to the ident hook.
    pub idents: bool,
    /// Ordinary channels whose joins the join hook decides.
    pub guarded: Vec<Pattern>,
    /// Where hook calls run, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

/// A hook's answer, on its way; `Err` is the refusal to send the client.
pub(super) type Pending<T> = Pin<Box<dyn Future<Output = Result<T, OpError>> + Send>>;

impl Hub {
    fn auth_setup(&self) -> Option<&AuthSetup> {
        self.0.backends.get().and_then(|b| b.auth.as_ref())
    }

    /// Whether joins of `channel` are the join hook's to decide.
    pub(super) fn guarded(&self, channel: &ChannelName) -> bool {
        channel.kind() == ChannelKind::Ordinary
            && self
                .auth_setup()
                .is_some_and(|a| a.guarded.iter().any(|p| p.matches(channel.as_str())))
    }

    /// Who the ident hook says holds `token`, or `None` when there is no ident hook.
    pub(super) fn ident_hook(
        &self,
        token: &str,
        conn: &str,
        transport: &str,
    ) -> Option<Pending<Identity>> {
        let setup = self.auth_setup().filter(|a| a.idents)?;
        let answer = setup.hooks.ident(token, conn, transport);
        let conn = conn.to_owned();
        Some(Box::pin(async move {
            answer.await.map(Identity::from_hook).map_err(|e| {
                log_hook_failure("ident", &conn, &e);
                OpError::new(4002, format!("authentication failed: {e}"))
            })
        }))
    }

    /// The join hook's verdict on `user` joining every one of `channels` (all guarded), or
    /// `None` when there is nothing to ask.
    pub(super) fn join_hook(
        &self,
        user: &str,
        conn: &str,
        channels: Vec<ChannelName>,
    ) -> Option<Pending<()>> {
        let setup = self.auth_setup().filter(|_| !channels.is_empty())?;
        let answers: Vec<_> = channels
            .iter()
            .map(|c| setup.hooks.join(user, conn, c.as_str()))
            .collect();
        let conn = conn.to_owned();
        Some(Box::pin(async move {
            for (channel, answer) in channels.iter().zip(answers) {
                answer.await.map_err(|e| {
                    log_hook_failure("join", &conn, &e);
                    OpError::forbidden(format!("{channel}: {e}"))
                })?;
            }
            Ok(())
        }))
    }

    /// Runs `work` (a hook call and what follows it) beside the connection.
    pub(super) fn spawn_hook_call(&self, work: impl Future<Output = ()> + Send + 'static) {
        match self.auth_setup() {
            Some(setup) => drop(setup.tasks.spawn(work)),
            None => drop(tokio::spawn(work)),
        }
    }
}

fn log_hook_failure(hook: &str, conn: &str, error: &HookError) {
    match error {
        HookError::Denied(why) => tracing::info!(hook, conn, reason = %why, "auth hook denied"),
        HookError::Unavailable(why) => {
            tracing::warn!(hook, conn, error = %why, "auth hook unavailable: denied")
        }
    }
}
