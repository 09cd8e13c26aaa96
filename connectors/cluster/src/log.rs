//! The cluster's event log: one JetStream stream, appended to by every node and read in
//! order by every node.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use herald_connector_api::{Appended, LogError, LogFuture, LogRecord, LogSink};
use tokio_util::sync::CancellationToken;

use crate::{age_of, ClusterConfig, ClusterError, LogStart};

/// Length of an epoch.
const EPOCH_LEN: usize = 8;

/// How long the reader waits for a record before it asks the stream whether it missed one.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// How long the reader waits before it opens the stream again after an error.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The stream, and how to append to it.
#[derive(Clone)]
pub struct Log {
    js: jetstream::Context,
    stream: String,
    subject: String,
    /// The whole of an append, sending included, takes at most this.
    publish_timeout: Duration,
}

impl Log {
    /// Opens the log's stream, creating it (or updating its limits) as configured.
    ///
    /// # Errors
    /// [`ClusterError`] when JetStream refuses.
    pub async fn open(
        client: async_nats::Client,
        config: &ClusterConfig,
    ) -> Result<(Self, LogStart), ClusterError> {
        let mut js = jetstream::new(client);
        js.set_timeout(config.publish_timeout);
        let log = Self {
            js,
            stream: format!("HERALD_{}_LOG", config.name),
            subject: format!("herald.{}.log", config.name),
            publish_timeout: config.publish_timeout,
        };
        let wanted = stream::Config {
            name: log.stream.clone(),
            subjects: vec![log.subject.clone()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_messages: config.max_events,
            max_bytes: config.max_bytes,
            max_age: config.max_age,
            duplicate_window: Duration::from_secs(120).min(config.max_age),
            num_replicas: config.replicas,
            ..Default::default()
        };
        let mut stream = log
            .js
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(|e| ClusterError::new("stream", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| ClusterError::new("stream", e))?
            .clone();
        let same_limits = info.config.max_messages == wanted.max_messages
            && info.config.max_bytes == wanted.max_bytes
            && info.config.max_age == wanted.max_age;
        if !same_limits {
            log.js
                .update_stream(wanted)
                .await
                .map_err(|e| ClusterError::new("stream", e))?;
        }
        let start = LogStart {
            epoch: epoch_of(info.created.unix_timestamp_nanos()),
            floor: info.state.first_sequence.saturating_sub(1),
            last: info.state.last_sequence,
        };
        tracing::info!(stream = %log.stream, epoch = %start.epoch, first = start.floor + 1, last = start.last, "cluster log opened");
        Ok((log, start))
    }

    /// Stores a record; `key` becomes its `Nats-Msg-Id`, which JetStream deduplicates.
    pub fn append(&self, record: &LogRecord, key: Option<String>) -> LogFuture<Appended> {
        let payload = serde_json::to_vec(record).unwrap_or_default();
        let (js, subject, timeout) = (self.js.clone(), self.subject.clone(), self.publish_timeout);
        let appending = async move {
            let mut headers = HeaderMap::new();
            if let Some(key) = key {
                headers.insert(async_nats::header::NATS_MESSAGE_ID, key.as_str());
            }
            let ack = js
                .publish_with_headers(subject, headers, payload.into())
                .await
                .map_err(|e| LogError(e.to_string()))?
                .await
                .map_err(|e| LogError(e.to_string()))?;
            Ok(Appended {
                seq: ack.sequence,
                duplicate: ack.duplicate,
            })
        };
        // The client's own timeout covers the ack only; a send stuck behind a reconnect is
        // bounded here, so a publisher gets its 503 within publish_timeout.
        Box::pin(async move {
            tokio::time::timeout(timeout, appending)
                .await
                .unwrap_or_else(|_| Err(LogError("not stored within publish_timeout".into())))
        })
    }

    /// Reads the record at `seq`.
    pub fn read(&self, seq: u64) -> LogFuture<LogRecord> {
        let (js, name) = (self.js.clone(), self.stream.clone());
        Box::pin(async move {
            let stream = js
                .get_stream_no_info(&name)
                .await
                .map_err(|e| LogError(e.to_string()))?;
            let message = stream
                .get_raw_message(seq)
                .await
                .map_err(|e| LogError(e.to_string()))?;
            serde_json::from_slice(&message.payload).map_err(|e| LogError(e.to_string()))
        })
    }

    /// Applies every record after `start.floor` to `sink`, in order, until `shutdown`; after
    /// an error it reads on from the next record. A stream created anew (its epoch changed)
    /// resets the sink and is read from its start.
    pub async fn run(
        self,
        sink: std::sync::Arc<dyn LogSink>,
        start: LogStart,
        shutdown: CancellationToken,
    ) {
        let mut epoch = start.epoch;
        let mut next = start.floor + 1;
        loop {
            let stopped = tokio::select! {
                () = shutdown.cancelled() => true,
                read = self.read_from(next, &*sink) => {
                    if let Err(e) = read.1 {
                        tracing::warn!(error = %e, next = read.0, "cluster log: reading stopped; opening it again");
                    }
                    next = read.0;
                    false
                }
            };
            if stopped {
                return;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY_DELAY) => {}
            }
            match self.current_epoch().await {
                Ok((now, first)) if now != epoch => {
                    sink.reset(&now, first.saturating_sub(1));
                    epoch = now;
                    next = first.max(1);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cluster log: stream not in reach"),
            }
        }
    }

    /// Reads from `next` until the consumer fails; returns the next sequence to read.
    async fn read_from(&self, mut next: u64, sink: &dyn LogSink) -> (u64, Result<(), String>) {
        let consumer = match self.ordered_from(next).await {
            Ok(consumer) => consumer,
            Err(e) => return (next, Err(e)),
        };
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(e) => return (next, Err(e.to_string())),
        };
        loop {
            let message = match tokio::time::timeout(STALL_CHECK, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return (next, Err(e.to_string())),
                Ok(None) => return (next, Err("the consumer ended".into())),
                // Quiet: either nothing was published, or the consumer lost its server
                // without a word (seen when a server of a NATS cluster is killed).
                Err(_) => match self.last_sequence().await {
                    Ok(last) if last >= next => {
                        return (next, Err(format!("the consumer stalled before {next}")));
                    }
                    _ => continue,
                },
            };
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            // The stream's sequences have no holes: a jump means the stream's limits dropped
            // records before this node read them.
            if seq > next {
                sink.lost(seq - 1);
            }
            let stored_ns = info.published.unix_timestamp_nanos();
            match serde_json::from_slice::<LogRecord>(&message.payload) {
                Ok(record) => sink.apply(seq, &record, age_of(stored_ns)),
                Err(e) => {
                    tracing::warn!(seq, error = %e, "cluster log: a record that is not Herald's was skipped");
                    sink.applied_through(seq);
                }
            }
            next = seq + 1;
        }
    }

    /// The stream's newest sequence now.
    async fn last_sequence(&self) -> Result<u64, String> {
        Ok(self.info().await?.state.last_sequence)
    }

    /// The stream's state and config, asked now.
    async fn info(&self) -> Result<stream::Info, String> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| e.to_string())?;
        Ok(stream.cached_info().clone())
    }

    async fn ordered_from(
        &self,
        start_sequence: u64,
    ) -> Result<consumer::Consumer<consumer::pull::OrderedConfig>, String> {
        let stream = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())
    }

    /// The stream's epoch and first sequence now.
    async fn current_epoch(&self) -> Result<(String, u64), String> {
        let info = self.info().await?;
        Ok((
            epoch_of(info.created.unix_timestamp_nanos()),
            info.state.first_sequence,
        ))
    }
}

/// An epoch from the stream's creation time: the same on every node, new when the stream is.
fn epoch_of(created_ns: i128) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    // Mixed so that streams created close together get unrelated epochs.
    let mut n = (created_ns as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    (0..EPOCH_LEN)
        .map(|_| {
            let c = ALPHABET[(n % 62) as usize] as char;
            n /= 62;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_is_eight_alphanumerics_that_differ_for_another_stream() {
        let a = epoch_of(1_764_000_000_000_000_000);
        let b = epoch_of(1_764_000_000_000_000_001);
        assert_eq!(a.len(), 8);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
        assert_eq!(a, epoch_of(1_764_000_000_000_000_000));
    }
}
