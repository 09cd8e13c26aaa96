//! The machine's RabbitMQ (127.0.0.1:5672, guest/guest; started when it is down), with an
//! exchange, queue and connection name unique to each test, removed when it ends.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// One test's names on the broker, and a publishing channel with confirms.
pub struct Rabbit {
    /// Unique to the test: the exchange, the queue (`<tag>.publish`) and Herald's connection name.
    pub tag: String,
    pub channel: Channel,
    _connection: Connection,
}

impl Rabbit {
    pub async fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "herald-it-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let connection = connect().await;
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        Self {
            tag,
            channel,
            _connection: connection,
        }
    }

    /// The `[amqp]` section for Herald, plus `extra` keys.
    pub fn section(&self, extra: &str) -> String {
        format!(
            "[amqp]\nurl = \"{URL}\"\nexchange = \"{0}\"\nqueue = \"{0}.publish\"\nconnection_name = \"{0}\"\n{extra}",
            self.tag
        )
    }

    /// Publishes to the test's exchange and waits for the broker's confirm.
    pub async fn publish(&self, body: &[u8], properties: BasicProperties) {
        self.channel
            .basic_publish(
                ShortString::from(self.tag.as_str()),
                ShortString::from("publish"),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
    }

    /// Force-closes Herald's connections (found by the test's connection name), as
    /// `rabbitmqctl close_connection` does in production; returns how many.
    pub fn close_herald_connections(&self) -> usize {
        let out = Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "pid",
                "client_properties",
                "-q",
                "--no-table-headers",
            ])
            .output()
            .expect("rabbitmqctl");
        let listing = String::from_utf8_lossy(&out.stdout);
        let quoted = format!("\"{}\"", self.tag);
        let pids: Vec<&str> = listing
            .lines()
            .filter(|l| l.contains(&quoted))
            .filter_map(|l| l.split('\t').next())
            .collect();
        for pid in &pids {
            let _ = Command::new("rabbitmqctl")
                .args(["close_connection", pid, "forced by the test"])
                .stdout(Stdio::null())
                .status();
        }
        pids.len()
    }

    /// Removes the test's queue and exchange (and their dead-letter twins).
    pub async fn clean_up(self) {
        for queue in [
            format!("{}.publish", self.tag),
            format!("{}.dead", self.tag),
        ] {
            let _ = self
                .channel
                .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
                .await;
        }
        for exchange in [self.tag.clone(), format!("{}.dlx", self.tag)] {
            let _ = self
                .channel
                .exchange_delete(
                    ShortString::from(exchange),
                    ExchangeDeleteOptions::default(),
                )
                .await;
        }
    }
}

/// Connects to the machine's RabbitMQ, starting it when it is down.
pub async fn connect() -> Connection {
    for attempt in 0..120 {
        match Connection::connect(URL, ConnectionProperties::default()).await {
            Ok(connection) => return connection,
            Err(_) if attempt == 0 => {
                let _ = Command::new("rabbitmq-server")
                    .arg("-detached")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("RabbitMQ is not reachable on 127.0.0.1:5672 and could not be started");
}
