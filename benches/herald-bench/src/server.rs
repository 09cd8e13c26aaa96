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

/// Timings of a [`Server::restart`], from the SIGTERM.
#[derive(Debug, Clone, Copy)]
pub struct Restarted {
    /// Until the old process had exited.
    pub exited: Duration,
    /// Until the new one answered `/healthz`.
    pub healthy: Duration,
}

/// Everything needed to spawn one server process.
struct Launch {
    kind: Kind,
    addr: SocketAddr,
    api_key: String,
    jwt_secret: String,
    log_path: PathBuf,
    recovery: bool,
}

impl Launch {
    fn spawn(&self, opts: &ServerOpts) -> Result<Child, ServerError> {
        std::fs::create_dir_all(&opts.log_dir)?;
        let log = std::fs::File::create(&self.log_path)?;
        let log2 = log.try_clone()?;
        let mut cmd = match self.kind {
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
                    .arg(self.addr.to_string())
                    .arg("--api-key")
                    .arg(&self.api_key)
                    .arg("--jwt-secret")
                    .arg(&self.jwt_secret)
                    .args(&opts.herald_args)
                    .env(
                        "HERALD_LOG",
                        std::env::var("HERALD_LOG").unwrap_or_else(|_| "warn".into()),
                    );
                c
            }
            Kind::SocketIo => {
                let mut c = Command::new(&opts.node);
                c.arg("server.js")
                    .arg("--port")
                    .arg(self.addr.port().to_string())
                    .current_dir(&opts.peer_dir);
                if self.recovery {
                    c.arg("--recovery");
                }
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true);
        cmd.spawn()
            .map_err(|e| ServerError::Spawn(self.kind.to_string(), e))
    }
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
        let launch = Launch {
            kind,
            addr,
            api_key: random_hex(16),
            jwt_secret: random_hex(24),
            log_path: opts.log_dir.join(format!("{tag}-{kind}.log")),
            recovery,
        };
        if kind == Kind::SocketIo {
            ensure_peer_installed(&opts.peer_dir).await?;
        }
        let child = launch.spawn(opts)?;
        let pid = child.id().unwrap_or(0);
        // On a failed start the Server is dropped and kill_on_drop ends the process.
        let mut server = Server {
            kind,
            addr,
            pid,
            api_key: launch.api_key,
            jwt_secret: launch.jwt_secret,
            log_path: launch.log_path,
            child,
        };
        server.wait_healthy(Duration::from_secs(30)).await?;
        Ok(server)
    }

    /// Stops the server with SIGTERM, as an operator's restart does, waits until it has
    /// exited (its own shutdown grace, at most `limit`), then starts it again on the same
    /// address with the same keys, so clients can come back with the tokens they hold.
    /// The new process logs to `<log>.restart`. Returns when it answers `/healthz`.
    pub async fn restart(
        &mut self,
        opts: &ServerOpts,
        limit: Duration,
    ) -> Result<Restarted, ServerError> {
        let stopping = Instant::now();
        self.terminate();
        if tokio::time::timeout(limit, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let exited = stopping.elapsed();
        let launch = Launch {
            kind: self.kind,
            addr: self.addr,
            api_key: self.api_key.clone(),
            jwt_secret: self.jwt_secret.clone(),
            log_path: self.log_path.with_extension("restart.log"),
            recovery: false,
        };
        self.child = launch.spawn(opts)?;
        self.pid = self.child.id().unwrap_or(0);
        self.log_path = launch.log_path;
        self.wait_healthy(Duration::from_secs(30)).await?;
        Ok(Restarted {
            exited,
            healthy: stopping.elapsed(),
        })
    }

    /// Sends SIGTERM to the running process.
    fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
    }

    async fn wait_healthy(&mut self, limit: Duration) -> Result<(), ServerError> {
        self.wait_for("/healthz", limit).await
    }

    /// Waits until `/readyz` answers 200: a cluster node has its NATS and the log read.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<(), ServerError> {
        self.wait_for("/readyz", limit).await
    }

    /// Polls `path` until it answers 2xx, at most `limit`; fails early if the process exits.
    async fn wait_for(&mut self, path: &str, limit: Duration) -> Result<(), ServerError> {
        let url = format!("http://{}{path}", self.addr);
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
            self.terminate();
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
