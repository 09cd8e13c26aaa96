//! Herald's file-tail connector: each line appended to a watched file is an event.
//!
//! A line that is a JSON object or array is an envelope (or several), as `POST /api/publish`
//! takes them; any other line is the event `event` (`line`) with the text as `data`, on the
//! file's `channels`. The file is followed through rename rotation, copy-truncate rotation
//! and deletion; a partial last line waits for its newline, and a line over `max_line_bytes`
//! is skipped and counted, never held. The read position (the file's device and inode, and
//! the offset) is saved to `state_file` once the lines before it were accepted, so a restart
//! neither loses nor repeats a line. File-system notifications wake the reader; a poll every
//! `poll_interval` covers what they miss.
//!
//! # Layout
//! - [`tail`]: reading complete lines across rotations.

pub mod tail;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use herald_connector_api::{
    ChannelName, CompactJson, Connector, ConnectorContext, ConnectorError, ConnectorStatus,
    Envelope, FieldError, Handled, Health, Ingest, Verdict,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use tail::{Line, Position, Tail};
use tokio::sync::mpsc;

/// Lines published between two saves of the position.
const BATCH: usize = 4096;

/// How long a line the gateway cannot take now waits before it is tried again.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// One `[[file_tail]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTailConfig {
    /// The file to follow.
    pub path: PathBuf,
    /// Channels a plain-text line goes to.
    #[serde(default)]
    pub channels: Vec<String>,
    /// The event name of a plain-text line [default: line].
    #[serde(default = "default_event")]
    pub event: String,
    /// Read a file Herald has no position for from its start, not its end [default: false].
    #[serde(default)]
    pub from_start: bool,
    /// Where the read position is kept [default: `<path>.herald-position`].
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// Longest line; longer ones are skipped and counted [default: 1 MiB].
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
    /// How often the file is looked at when no notification came [default: 1s].
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
}

fn default_event() -> String {
    "line".into()
}

fn default_max_line() -> usize {
    1 << 20
}

fn default_poll() -> Duration {
    Duration::from_secs(1)
}

impl FileTailConfig {
    /// Every problem with the values; `index` is the entry's place in `[[file_tail]]`.
    pub fn problems(&self, index: usize) -> Vec<(String, String)> {
        let key = |k: &str| format!("file_tail[{index}].{k}");
        let mut problems = Vec::new();
        if self.path.as_os_str().is_empty() {
            problems.push((key("path"), "must name a file".into()));
        }
        for (i, channel) in self.channels.iter().enumerate() {
            if let Err(e) = ChannelName::parse(channel) {
                problems.push((key(&format!("channels[{i}]")), e.to_string()));
            }
        }
        if self.event.is_empty() || self.event.len() > 256 {
            problems.push((key("event"), "must be 1 to 256 bytes".into()));
        }
        if self.max_line_bytes == 0 {
            problems.push((key("max_line_bytes"), "must be at least 1".into()));
        }
        if self.poll_interval.is_zero() {
            problems.push((key("poll_interval"), "must be greater than zero".into()));
        }
        problems
    }

    /// The state file: configured, or (absent or `""`) beside the followed file.
    pub fn state_path(&self) -> PathBuf {
        let configured = self
            .state_file
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        configured.unwrap_or_else(|| {
            let mut name = self.path.clone().into_os_string();
            name.push(".herald-position");
            PathBuf::from(name)
        })
    }
}

/// The connector for one followed file.
pub struct FileTailConnector {
    config: FileTailConfig,
    max_body_size: usize,
}

impl FileTailConnector {
    /// A connector for one `[[file_tail]]` entry; lines over `max_body_size` are refused too.
    pub fn new(config: FileTailConfig, max_body_size: usize) -> Self {
        Self {
            config,
            max_body_size,
        }
    }
}

impl Connector for FileTailConnector {
    async fn run(self, cx: ConnectorContext) -> Result<(), ConnectorError> {
        let config = &self.config;
        let state = config.state_path();
        let ingest = Ingest::new(cx.gateway.clone(), cx.status.clone(), self.max_body_size);
        let lines = Lines::new(config, ingest)?;
        let mut tail = Tail::new(
            &config.path,
            config.max_line_bytes,
            load_position(&state),
            config.from_start,
        );
        let (wake_tx, mut wake) = mpsc::channel::<()>(1);
        let _watcher = watch(&config.path, wake_tx, &cx.status);
        cx.status.set_health(Health::Connected);
        let mut saved = tail.position();
        loop {
            match tail.read_lines(BATCH) {
                Ok(batch) if !batch.is_empty() => {
                    let more = batch.len() >= BATCH;
                    if !lines.publish_all(batch, &cx).await {
                        break;
                    }
                    let now = tail.position();
                    if now != saved {
                        save_position(&state, now.as_ref(), &cx.status);
                        saved = now;
                    }
                    if more {
                        continue;
                    }
                }
                Ok(_) => {}
                Err(e) => cx
                    .status
                    .lost(format!("reading {}: {e}", config.path.display())),
            }
            tokio::select! {
                () = cx.shutdown.cancelled() => break,
                _ = wake.recv() => {}
                () = tokio::time::sleep(config.poll_interval) => {}
            }
            if matches!(cx.status.health(), Health::Reconnecting { .. }) {
                cx.status.set_health(Health::Connected);
            }
        }
        cx.status.set_health(Health::Stopped {
            reason: "shut down".into(),
        });
        Ok(())
    }
}

/// Turns lines into publishes.
struct Lines {
    ingest: Ingest,
    event: String,
    channels: Vec<ChannelName>,
    what: String,
}

impl Lines {
    fn new(config: &FileTailConfig, ingest: Ingest) -> Result<Self, ConnectorError> {
        let channels = config
            .channels
            .iter()
            .map(|c| ChannelName::parse(c))
            .collect::<Result<_, _>>()
            .map_err(|e| ConnectorError::Source {
                what: "file_tail channels".into(),
                source: Box::new(e),
            })?;
        Ok(Self {
            ingest,
            event: config.event.clone(),
            channels,
            what: config.path.display().to_string(),
        })
    }

    /// Publishes every line in order, a line the gateway cannot take now again until it
    /// can; `false` when shutdown came first (the position is then not saved past it).
    async fn publish_all(&self, batch: Vec<Line>, cx: &ConnectorContext) -> bool {
        for line in batch {
            let text = match line {
                Line::Text(text) => text,
                Line::TooLong => {
                    cx.status.received(1);
                    cx.status.rejected("too_long");
                    tracing::warn!(file = %self.what, "a line over max_line_bytes was skipped");
                    continue;
                }
            };
            loop {
                let handled = self
                    .ingest
                    .handle(&self.what, &text, self.publish(&self.ingest, &text))
                    .await;
                if !matches!(handled.verdict, Verdict::Retry(_)) {
                    break;
                }
                tokio::select! {
                    () = cx.shutdown.cancelled() => return false,
                    () = tokio::time::sleep(RETRY_DELAY) => {}
                }
            }
        }
        true
    }

    async fn publish(&self, ingest: &Ingest, line: &[u8]) -> Handled {
        let trimmed = line.trim_ascii_start();
        if trimmed.starts_with(b"{") || trimmed.starts_with(b"[") {
            return ingest.publish_body(line).await;
        }
        if self.channels.is_empty() {
            let error = FieldError::new("channels", "a plain-text line needs the file's channels");
            return Handled::invalid(&error);
        }
        let text = String::from_utf8_lossy(line);
        let data = serde_json::to_string(&text)
            .ok()
            .and_then(|quoted| RawValue::from_string(quoted).ok())
            .map_or_else(CompactJson::null, CompactJson::new);
        ingest
            .publish(Envelope {
                event: self.event.clone(),
                channels: self.channels.clone(),
                users: Vec::new(),
                broadcast: false,
                data,
                except: Vec::new(),
                key: None,
            })
            .await
    }
}

/// File-system notifications for the file's folder, waking the reader; `None` (polling
/// only) when they cannot be had.
fn watch(
    path: &Path,
    wake: mpsc::Sender<()>,
    status: &Arc<ConnectorStatus>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty())?;
    let handler = move |_event: notify::Result<notify::Event>| {
        let _ = wake.try_send(());
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(folder, notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(connector = status.name(), error = %e, "no file notifications; polling");
            None
        }
    }
}

fn load_position(state: &Path) -> Option<Position> {
    let text = std::fs::read(state).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes the position next to the state file and renames it into place, so a crash never
/// leaves half a state file.
fn save_position(state: &Path, position: Option<&Position>, status: &ConnectorStatus) {
    let Some(position) = position else { return };
    let mut temporary = state.to_owned().into_os_string();
    temporary.push(".tmp");
    let written = serde_json::to_vec(&position)
        .map_err(std::io::Error::other)
        .and_then(|json| std::fs::write(&temporary, json))
        .and_then(|()| std::fs::rename(&temporary, state));
    if let Err(e) = written {
        status.rejected("state_not_saved");
        tracing::error!(state = %state.display(), error = %e, "the read position could not be saved");
    }
}
