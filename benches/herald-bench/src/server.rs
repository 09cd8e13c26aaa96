//! Starting the server under test on a free loopback port, waiting until it is healthy,
//! reading its RSS and CPU time, and stopping it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::client::Kind;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{what} not found at {path}: {hint}")]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("spawning {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("{0} exited during startup ({1}); log tail:\n{2}")]
    Exited(String, String, String),
    #[error("{0} not healthy after {1:?}; log tail:\n{2}")]
    NotHealthy(String, Duration, String),
    #[error("npm ci in {0}: {1}")]
    Npm(PathBuf, String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// How to find and start each server.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    pub herald_bin: PathBuf,
    pub peer_dir: PathBuf,
    pub node: String,
    pub log_dir: PathBuf,
    pub herald_args: Vec<String>,
}

pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub pid: u32,
    pub api_key: String,
    pub jwt_secret: String,
    pub log_path: PathBuf,
    child: Child,
}

fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !ok {
        // Only a fallback: the key guards a loopback server that lives for one scenario.
        let t = crate::sys::now_us() ^ u64::from(std::process::id()) << 32;
        buf.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (t >> ((i % 8) * 8)) as u8);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Installs the peer's packages from its lockfile when they are not there yet.
pub async fn ensure_peer_installed(dir: &Path) -> Result<(), ServerError> {
    if dir.join("node_modules/socket.io/package.json").exists() {
        return Ok(());
    }
    if !dir.join("package-lock.json").exists() {
        return Err(ServerError::Missing {
            what: "Socket.IO peer",
            path: dir.to_path_buf(),
            hint: "expected benches/peers/socketio with package-lock.json",
        });
    }
    eprintln!(
        "installing the Socket.IO peer (npm ci) in {}",
        dir.display()
    );
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .await
        .map_err(|e| ServerError::Npm(dir.to_path_buf(), e.to_string()))?;
    if !out.status.success() {
        return Err(ServerError::Npm(
            dir.to_path_buf(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(())
}

impl Server {
    /// Starts a fresh server of `kind`. `recovery` turns on Socket.IO's connection state
    /// recovery (off by default, as in Socket.IO itself; Herald always keeps history).
    pub async fn start(
        kind: Kind,
        opts: &ServerOpts,
        tag: &str,
        recovery: bool,
    ) -> Result<Server, ServerError> {
        let port = crate::net::free_port()?;
        let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
        let api_key = random_hex(16);
        let jwt_secret = random_hex(24);
        std::fs::create_dir_all(&opts.log_dir)?;
        let log_path = opts.log_dir.join(format!("{tag}-{kind}.log"));
        let log = std::fs::File::create(&log_path)?;
        let log2 = log.try_clone()?;
        let mut cmd = match kind {
            Kind::Herald => {
                if !opts.herald_bin.exists() {
                    return Err(ServerError::Missing {
                        what: "herald binary",
                        path: opts.herald_bin.clone(),
                        hint: "build it with `cargo build --release -j 1 --bin herald` or pass --herald-bin",
                    });
                }
                let mut c = Command::new(&opts.herald_bin);
                c.arg("--listen")
                    .arg(addr.to_string())
                    .arg("--api-key")
                    .arg(&api_key)
                    .arg("--jwt-secret")
                    .arg(&jwt_secret)
                    .args(&opts.herald_args)
                    .env(
                        "HERALD_LOG",
                        std::env::var("HERALD_LOG").unwrap_or_else(|_| "warn".into()),
                    );
                c
            }
            Kind::SocketIo => {
                ensure_peer_installed(&opts.peer_dir).await?;
                let mut c = Command::new(&opts.node);
                c.arg("server.js")
                    .arg("--port")
                    .arg(port.to_string())
                    .current_dir(&opts.peer_dir);
                if recovery {
                    c.arg("--recovery");
                }
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| ServerError::Spawn(kind.to_string(), e))?;
        let pid = child.id().unwrap_or(0);
        // On a failed start the Server is dropped and kill_on_drop ends the process.
        let mut server = Server {
            kind,
            addr,
            pid,
            api_key,
            jwt_secret,
            log_path,
            child,
        };
        server.wait_healthy(Duration::from_secs(30)).await?;
        Ok(server)
    }

    async fn wait_healthy(&mut self, limit: Duration) -> Result<(), ServerError> {
        let url = format!("http://{}/healthz", self.addr);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| ServerError::Spawn(url.clone(), std::io::Error::other(e)))?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ServerError::Exited(
                    self.kind.to_string(),
                    status.to_string(),
                    tail(&self.log_path, 20),
                ));
            }
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(ServerError::NotHealthy(
            self.kind.to_string(),
            limit,
            tail(&self.log_path, 20),
        ))
    }

    pub fn rss_kib(&self) -> Option<u64> {
        crate::sys::proc_rss_kib(self.pid)
    }

    /// Whether the process is still running (a crash under load is a finding).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }

    /// SIGTERM, a short grace period, then SIGKILL.
    pub async fn stop(mut self) {
        if self.alive() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.kill().await;
            }
        }
        let _ = self.child.wait().await;
    }
}
