//! A `nats-server` of the test's own, with JetStream in a temporary folder, on a free port,
//! that the test may kill (SIGKILL) and start again on the same port and store.

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Largest message the test server takes, so a test can send Herald a 10 MB body.
const MAX_PAYLOAD: usize = 16 << 20;

/// One `nats-server` process, killed when dropped.
pub struct NatsServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// How many times the test killed it.
    pub kills: usize,
}

impl NatsServer {
    /// Starts a server on a free loopback port and waits until it takes connections.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            "listen: 127.0.0.1:{port}\nmax_payload: {MAX_PAYLOAD}\njetstream {{ store_dir: \"{}\" }}\n",
            dir.path().join("js").display()
        );
        std::fs::write(dir.path().join("nats.conf"), config).expect("nats config");
        let mut server = Self {
            port,
            dir,
            child: None,
            kills: 0,
        };
        server.spawn().await;
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new(binary())
            .arg("-c")
            .arg(self.dir.path().join("nats.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nats-server never listened on {}", self.port);
    }

    /// SIGKILL: no goodbye to clients, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.kills += 1;
        }
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

/// Three `nats-server`s on loopback routes, JetStream clustered across them, each killed
/// when dropped.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three servers routed to each other and waits until JetStream has a leader.
    pub async fn start() -> Self {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port()
        };
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free(), free())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let mut servers = Vec::new();
        for (i, (port, route)) in ports.iter().enumerate() {
            let dir = tempfile::tempdir().expect("temp dir");
            let config = format!(
                "server_name: s{i}\nlisten: 127.0.0.1:{port}\nmax_payload: {MAX_PAYLOAD}\n\
                 jetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: herald-test\n listen: 127.0.0.1:{route}\n routes: [{}] }}\n",
                dir.path().join("js").display(),
                routes.join(", ")
            );
            std::fs::write(dir.path().join("nats.conf"), config).expect("nats config");
            let mut server = NatsServer {
                port: *port,
                dir,
                child: None,
                kills: 0,
            };
            server.spawn().await;
            servers.push(server);
        }
        let cluster = Self { servers };
        cluster.wait_for_jetstream().await;
        cluster
    }

    /// Every server's URL, comma-separated.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// Waits until a stream with three replicas can be made (the cluster elected a leader).
    async fn wait_for_jetstream(&self) {
        let client = async_nats::connect(self.urls())
            .await
            .expect("nats cluster");
        let js = async_nats::jetstream::new(client);
        for _ in 0..120 {
            let made = js
                .get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: "PROBE".into(),
                    subjects: vec!["probe".into()],
                    num_replicas: 3,
                    ..Default::default()
                })
                .await;
            if made.is_ok() {
                let _ = js.delete_stream("PROBE").await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("the NATS cluster never got a JetStream leader");
    }
}

/// The `nats-server` binary, installed from Debian's package when missing (a fresh machine
/// runs the test command with nothing set up by hand).
fn binary() -> &'static str {
    static BINARY: OnceLock<&'static str> = OnceLock::new();
    BINARY.get_or_init(|| {
        let find = || {
            ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
        };
        find()
            .or_else(|| {
                let _ = Command::new("apt-get")
                    .args(["install", "-y", "nats-server"])
                    .stdout(Stdio::null())
                    .status();
                find()
            })
            .expect("nats-server is installed (apt-get install -y nats-server)")
    })
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
