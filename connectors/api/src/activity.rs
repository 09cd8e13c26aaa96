//! Client activity out, whatever the broker: a bounded queue the hub hands activity to
//! without ever waiting, and a task that publishes it through an [`ActivityTransport`],
//! holding a user's disconnect for `debounce` so a quick reconnect is reported once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backend::{Activity, ActivityKind, ActivitySink};
use crate::connector::ConnectorStatus;

/// How often a full activity queue is logged, at most.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// Where activity goes (a NATS subject, an AMQP exchange).
pub trait ActivityTransport: Send + Sync + 'static {
    /// Sends one activity; an error is logged and the activity dropped.
    fn send<'a>(
        &'a self,
        activity: &'a Activity,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// The activity sink: a bounded queue in front of a publisher task; when it is full the
/// activity is dropped, counted (`activity_queue_full`) and logged, never waited for.
pub struct QueuedActivity {
    queue: mpsc::Sender<Activity>,
    status: Arc<ConnectorStatus>,
    last_drop_log: AtomicU64,
    started: Instant,
}

impl ActivitySink for QueuedActivity {
    fn record(&self, activity: Activity) {
        if self.queue.try_send(activity).is_err() {
            self.status.rejected("activity_queue_full");
            let now = self.started.elapsed().as_secs();
            let last = self.last_drop_log.load(Ordering::Relaxed);
            if now >= last + DROP_LOG_EVERY.as_secs()
                && self
                    .last_drop_log
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    connector = self.status.name(),
                    "client activity dropped: the broker takes it slower than clients make it \
                     (counted in herald_connector_rejected_total{{reason=\"activity_queue_full\"}})"
                );
            }
        }
    }
}

/// The publisher behind a [`QueuedActivity`]; run it until shutdown.
pub struct ActivityPublisher<T> {
    transport: T,
    queue: mpsc::Receiver<Activity>,
    debounce: Duration,
}

/// A sink holding at most `capacity` activities, and the task that publishes them. With a
/// non-zero `debounce`, a user's disconnect is held that long and dropped if the user
/// connects again meanwhile, so a reconnect is reported once (as the connect).
pub fn activity_queue<T: ActivityTransport>(
    transport: T,
    capacity: usize,
    debounce: Duration,
    status: Arc<ConnectorStatus>,
) -> (QueuedActivity, ActivityPublisher<T>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let sink = QueuedActivity {
        queue: tx,
        status,
        last_drop_log: AtomicU64::new(0),
        started: Instant::now(),
    };
    let publisher = ActivityPublisher {
        transport,
        queue: rx,
        debounce,
    };
    (sink, publisher)
}

impl<T: ActivityTransport> ActivityPublisher<T> {
    /// Publishes until `shutdown`, then publishes what it still holds.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // Disconnects held back, by user: (activity, when it is due).
        let mut held: HashMap<String, (Activity, tokio::time::Instant)> = HashMap::new();
        loop {
            let due = held.values().map(|(_, due)| *due).min();
            let wait_due = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wait_due => {
                    let now = tokio::time::Instant::now();
                    let ready: Vec<String> = held
                        .iter()
                        .filter(|(_, (_, due))| *due <= now)
                        .map(|(user, _)| user.clone())
                        .collect();
                    for user in ready {
                        if let Some((activity, _)) = held.remove(&user) {
                            self.publish(&activity).await;
                        }
                    }
                }
                next = self.queue.recv() => {
                    let Some(activity) = next else { break };
                    self.take(activity, &mut held).await;
                }
            }
        }
        while let Ok(activity) = self.queue.try_recv() {
            self.publish(&activity).await;
        }
        for (activity, _) in held.into_values() {
            self.publish(&activity).await;
        }
    }

    async fn take(
        &self,
        activity: Activity,
        held: &mut HashMap<String, (Activity, tokio::time::Instant)>,
    ) {
        if self.debounce.is_zero() {
            return self.publish(&activity).await;
        }
        match activity.kind {
            ActivityKind::Disconnect => {
                let due = tokio::time::Instant::now() + self.debounce;
                if let Some((earlier, _)) = held.insert(activity.user.clone(), (activity, due)) {
                    self.publish(&earlier).await;
                }
            }
            ActivityKind::Connect => {
                // The user is back within the window: its disconnect is not reported.
                held.remove(&activity.user);
                self.publish(&activity).await;
            }
            _ => self.publish(&activity).await,
        }
    }

    async fn publish(&self, activity: &Activity) {
        if let Err(e) = self.transport.send(activity).await {
            tracing::debug!(error = %e, "client activity not published");
        }
    }
}
