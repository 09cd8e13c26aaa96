//! Publishing through the server's HTTP API, single envelopes or batches, and recording the
//! offsets the server assigned (the ground truth for loss accounting).

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::Kind;
use crate::stats::Published;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// With its causes: reqwest's own text ("error sending request") does not say whether
    /// the request timed out or the connection was reset.
    #[error("http: {}", causes(.0))]
    Http(#[from] reqwest::Error),
    #[error("publish answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("publish response: {0}")]
    Body(String),
    #[error("nats: {0}")]
    Nats(String),
}

/// An error and every error under it, `outer: inner: …`.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut under = e.source();
    while let Some(cause) = under {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        under = cause.source();
    }
    text
}

/// The path envelopes take into the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `POST /api/publish`.
    Http,
    /// A NATS request on `herald.publish` (Herald answers with the offsets).
    Nats,
    /// A JetStream publish on `herald.publish`, acknowledged by the stream.
    Jetstream,
    /// A RabbitMQ publish to Herald's exchange, confirmed by the broker.
    Amqp,
    /// A line appended to a file Herald tails.
    File,
}

impl Via {
    /// The scenario name of an ingest run over this path.
    pub fn ingest_scenario(self) -> &'static str {
        match self {
            Via::Http => "ingest-http",
            Via::Nats => "ingest-nats",
            Via::Jetstream => "ingest-jetstream",
            Via::Amqp => "ingest-amqp",
            Via::File => "ingest-file",
        }
    }

    /// Whether the server answers with the offsets it gave (else they are counted 1..N).
    pub fn answers_offsets(self) -> bool {
        matches!(self, Via::Http | Via::Nats)
    }
}

/// Where a publisher that is not HTTP sends envelopes.
pub enum Route {
    Nats { url: String, jetstream: bool },
    Amqp { url: String, exchange: String },
    File { path: std::path::PathBuf },
}

#[derive(Clone)]
enum Path {
    Nats(async_nats::Client),
    JetStream(async_nats::jetstream::Context),
    Amqp {
        /// Rides along: the channel lives only as long as its connection.
        _connection: std::sync::Arc<lapin::Connection>,
        channel: lapin::Channel,
        exchange: String,
    },
    File(std::sync::Arc<std::sync::Mutex<std::fs::File>>),
}

/// Who an event goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    Channel(String),
    User(String),
    Broadcast,
}

#[derive(Serialize)]
struct Envelope<'a> {
    event: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    channels: &'a [&'a str],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    users: &'a [&'a str],
    broadcast: bool,
    data: Data<'a>,
}

/// The payload subscribers read: `t` = publish time (µs since epoch), `n` = the harness's own
/// event number, `pad` to reach the wanted payload size.
#[derive(Serialize)]
struct Data<'a> {
    t: u64,
    n: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    pad: &'a str,
}

#[derive(Debug, Deserialize)]
struct PubResult {
    #[serde(default)]
    offsets: HashMap<String, u64>,
}

/// Builds the JSON body for `targets` (one envelope each; an array when `batch`).
pub fn body(targets: &[(To, u64)], pad: &str, t_us: u64, batch: bool) -> String {
    let mut envs = Vec::with_capacity(targets.len());
    let mut scratch: Vec<[&str; 1]> = Vec::with_capacity(targets.len());
    for (to, _) in targets {
        scratch.push([match to {
            To::Channel(c) | To::User(c) => c.as_str(),
            To::Broadcast => "",
        }]);
    }
    for ((to, n), one) in targets.iter().zip(scratch.iter()) {
        let (channels, users, broadcast): (&[&str], &[&str], bool) = match to {
            To::Channel(_) => (one, &[], false),
            To::User(_) => (&[], one, false),
            To::Broadcast => (&[], &[], true),
        };
        envs.push(Envelope {
            event: "e",
            channels,
            users,
            broadcast,
            data: Data {
                t: t_us,
                n: *n,
                pad,
            },
        });
    }
    let out = if batch || envs.len() != 1 {
        serde_json::to_string(&envs)
    } else {
        serde_json::to_string(&envs[0])
    };
    out.unwrap_or_default()
}

/// Reads offsets out of a publish response (one result or an array of them).
pub fn record_offsets(text: &str, into: &mut Published) -> Result<usize, PublishError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| PublishError::Body(format!("{e}: {text}")))?;
    let results: Vec<PubResult> = match v {
        serde_json::Value::Array(_) => serde_json::from_value(v),
        _ => serde_json::from_value(v).map(|r| vec![r]),
    }
    .map_err(|e| PublishError::Body(format!("{e}: {text}")))?;
    for r in &results {
        for (c, &off) in &r.offsets {
            into.add(c, off);
        }
    }
    Ok(results.len())
}

#[derive(Clone)]
pub struct Publisher {
    http: reqwest::Client,
    url: String,
    info_url: String,
    auth: Option<String>,
    /// Set: envelopes go this way instead of `url`.
    path: Option<Path>,
}

impl Publisher {
    pub fn new(
        kind: Kind,
        addr: std::net::SocketAddr,
        api_key: &str,
    ) -> Result<Self, PublishError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()?;
        let (url, info_url, auth) = match kind {
            Kind::Herald => (
                format!("http://{addr}/api/publish"),
                format!("http://{addr}/api/info"),
                Some(format!("Bearer {api_key}")),
            ),
            Kind::SocketIo => (
                format!("http://{addr}/publish"),
                format!("http://{addr}/info"),
                None,
            ),
        };
        Ok(Publisher {
            http,
            url,
            info_url,
            auth,
            path: None,
        })
    }

    /// Publishes along `route` instead of HTTP; for JetStream, once the server has made its
    /// stream.
    pub async fn via(mut self, route: &Route) -> Result<Self, PublishError> {
        let failed = |e: &dyn std::fmt::Display| PublishError::Nats(e.to_string());
        self.path = Some(match route {
            Route::Nats { url, jetstream } => {
                let client = async_nats::connect(url).await.map_err(|e| failed(&e))?;
                if !jetstream {
                    Path::Nats(client)
                } else {
                    let js = async_nats::jetstream::new(client);
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    while js.get_stream("HERALD").await.is_err() {
                        if std::time::Instant::now() > deadline {
                            return Err(PublishError::Nats("Herald never made its stream".into()));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Path::JetStream(js)
                }
            }
            Route::Amqp { url, exchange } => {
                let connection =
                    lapin::Connection::connect(url, lapin::ConnectionProperties::default())
                        .await
                        .map_err(|e| failed(&e))?;
                let channel = connection.create_channel().await.map_err(|e| failed(&e))?;
                channel
                    .confirm_select(Default::default())
                    .await
                    .map_err(|e| failed(&e))?;
                Path::Amqp {
                    _connection: std::sync::Arc::new(connection),
                    channel,
                    exchange: exchange.clone(),
                }
            }
            Route::File { path } => {
                let file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(|e| failed(&e))?;
                Path::File(std::sync::Arc::new(std::sync::Mutex::new(file)))
            }
        });
        Ok(self)
    }

    /// The server's info document (Herald's `/api/info`, the peer's `/info`).
    pub async fn info(&self) -> Result<serde_json::Value, PublishError> {
        let text = self.send(self.http.get(&self.info_url)).await?;
        serde_json::from_str(&text).map_err(|e| PublishError::Body(format!("{e}: {text}")))
    }

    /// Publishes one request (stamped now) and records the assigned offsets.
    pub async fn publish(
        &self,
        targets: &[(To, u64)],
        pad: &str,
        batch: bool,
        into: &mut Published,
    ) -> Result<usize, PublishError> {
        let b = body(targets, pad, crate::sys::now_us(), batch);
        let failed = |e: &dyn std::fmt::Display| PublishError::Nats(e.to_string());
        match &self.path {
            Some(Path::Nats(client)) => {
                let reply = client
                    .request("herald.publish", b.into())
                    .await
                    .map_err(|e| failed(&e))?;
                let text = String::from_utf8_lossy(&reply.payload);
                return record_offsets(&text, into);
            }
            // The stream's or broker's confirm says it is stored, not what offset Herald gave
            // it, and a file says nothing: the caller counts offsets 1..=N afterwards.
            Some(Path::JetStream(js)) => {
                js.publish("herald.publish", b.into())
                    .await
                    .map_err(|e| failed(&e))?
                    .await
                    .map_err(|e| failed(&e))?;
                return Ok(targets.len());
            }
            Some(Path::Amqp {
                channel, exchange, ..
            }) => {
                let properties =
                    lapin::BasicProperties::default().with_content_type("application/json".into());
                channel
                    .basic_publish(
                        exchange.as_str().into(),
                        "publish".into(),
                        Default::default(),
                        b.as_bytes(),
                        properties,
                    )
                    .await
                    .map_err(|e| failed(&e))?
                    .await
                    .map_err(|e| failed(&e))?;
                return Ok(targets.len());
            }
            Some(Path::File(file)) => {
                use std::io::Write;
                let mut line = b.into_bytes();
                line.push(b'\n');
                let mut file = file.lock().map_err(|e| failed(&e))?;
                file.write_all(&line).map_err(|e| failed(&e))?;
                return Ok(targets.len());
            }
            None => {}
        }
        let req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .body(b);
        let text = self.send(req).await?;
        record_offsets(&text, into)
    }

    /// Publishes `n` events to `channel`, numbered from `first`, 100 per request.
    pub async fn publish_n(
        &self,
        channel: &str,
        n: u64,
        first: u64,
        into: &mut Published,
    ) -> Result<(), PublishError> {
        let mut k = 0;
        while k < n {
            let m = (n - k).min(100);
            let targets: Vec<(To, u64)> = (0..m)
                .map(|j| (To::Channel(channel.into()), first + k + j))
                .collect();
            self.publish(&targets, "", true, into).await?;
            k += m;
        }
        Ok(())
    }

    /// Sends a request with the server's credentials; the body of a 200, else an error.
    async fn send(&self, mut req: reqwest::RequestBuilder) -> Result<String, PublishError> {
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        if status != 200 {
            return Err(PublishError::Status { status, body: text });
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_batch_bodies() {
        let one = body(&[(To::Channel("bench".into()), 7)], "", 123, false);
        let v: serde_json::Value = serde_json::from_str(&one).unwrap();
        assert_eq!(v["event"], "e");
        assert_eq!(v["channels"], serde_json::json!(["bench"]));
        assert!(v.get("users").is_none());
        assert_eq!(v["broadcast"], false);
        assert_eq!(v["data"], serde_json::json!({"t":123,"n":7}));

        let many = body(
            &[(To::User("u1".into()), 1), (To::Broadcast, 2)],
            "xx",
            5,
            true,
        );
        let v: serde_json::Value = serde_json::from_str(&many).unwrap();
        assert_eq!(v[0]["users"], serde_json::json!(["u1"]));
        assert_eq!(v[1]["broadcast"], true);
        assert_eq!(v[1]["data"]["pad"], "xx");
    }

    #[test]
    fn offsets_from_responses() {
        let mut p = Published::default();
        assert_eq!(
            record_offsets(r#"{"id":"x","offsets":{"bench":3}}"#, &mut p).unwrap(),
            1
        );
        assert_eq!(
            record_offsets(
                r#"[{"id":"a","offsets":{"bench":4}},{"id":"b","offsets":{"@u1":1}}]"#,
                &mut p
            )
            .unwrap(),
            2
        );
        assert_eq!(p.ranges["bench"], (3, 4, 2));
        assert_eq!(p.ranges["@u1"], (1, 1, 1));
        assert!(record_offsets("oops", &mut p).is_err());
    }
}
