//! A `nats-server` of the harness's own (JetStream in a temporary folder, a free loopback
//! port) for the runs that publish through NATS; it goes when dropped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::server::ServerError;

pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl NatsServer {
    pub async fn start() -> Result<Self, ServerError> {
        let port = crate::net::free_port()?;
        let dir =
            std::env::temp_dir().join(format!("herald-bench-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let binary = binary().ok_or(ServerError::Missing {
            what: "nats-server",
            path: PathBuf::from("/usr/sbin/nats-server"),
            hint: "apt-get install -y nats-server",
        })?;
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ServerError::Spawn(binary.display().to_string(), e))?;
        for _ in 0..400 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(Self { port, dir, child });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(ServerError::NotHealthy(
            "nats-server".into(),
            Duration::from_secs(10),
            String::new(),
        ))
    }

    /// The process id, for its CPU time (0 once it has exited).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Kills the server and waits until it has exited, so its store can go with nothing
    /// writing to it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Not waited for here (no runtime in drop): `stop` does, when there is time.
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Debian's `nats-server`, installed when missing (the harness's command sets up a fresh
/// machine by itself).
fn binary() -> Option<PathBuf> {
    let find = || {
        ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    find().or_else(|| {
        eprintln!("installing nats-server (apt-get install -y nats-server)");
        let _ = std::process::Command::new("apt-get")
            .args(["install", "-y", "nats-server"])
            .stdout(Stdio::null())
            .status();
        find()
    })
}
