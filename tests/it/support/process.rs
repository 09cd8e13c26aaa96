//! Herald as a process of its own, for tests that signal it, kill it or read its memory.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::process::{Child, Command};

use super::{Client, API_KEY, JWT_SECRET};

/// A running `herald` binary on a free loopback port.
pub struct HeraldProcess {
    /// The process; killed when dropped.
    pub child: Child,
    /// `127.0.0.1:<port>` it serves on.
    pub addr: String,
    /// Holds the configuration file, when there is one.
    _dir: Option<tempfile::TempDir>,
}

impl HeraldProcess {
    /// Starts the binary with `args` and, when given, `config` as its configuration file;
    /// returns once `/readyz` answers 200 (panics after 10 s).
    pub async fn spawn(args: &[&str], config: Option<&str>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .args([
                "--listen",
                &addr,
                "--api-key",
                API_KEY,
                "--jwt-secret",
                JWT_SECRET,
            ])
            .args(args);
        let dir = config.map(|config| {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("herald.toml");
            std::fs::write(&path, config).expect("config");
            command.arg(format!("--config={}", path.display()));
            dir
        });
        let child = command
            .env("HERALD_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn herald");
        for _ in 0..400 {
            if reqwest::get(format!("http://{addr}/readyz"))
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return Self {
                    child,
                    addr,
                    _dir: dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("herald did not start");
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    /// Its resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// A token for `user`, valid for an hour.
    pub fn token(&self, user: &str) -> String {
        herald::auth::Auth::new(JWT_SECRET).mint(user, None, Duration::from_secs(3600))
    }

    /// A WebSocket client identified as `user`, in `channel`.
    pub async fn client(&self, user: &str, channel: &str) -> Client {
        let mut client = Client::connect(&format!("ws://{}/ws", self.addr)).await;
        let channels = json!({ channel: {} });
        let reply = client
            .request(json!({"op": "ident", "token": self.token(user), "channels": channels}))
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        client
    }

    /// Publishes `body` through the HTTP API; asserts it was accepted.
    pub async fn publish(&self, body: &Value) {
        let response = reqwest::Client::new()
            .post(format!("http://{}/api/publish", self.addr))
            .bearer_auth(API_KEY)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}
