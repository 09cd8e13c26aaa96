//! The machine's latency floor for `steady`: the same subscribers, event rate and frame size
//! over raw loopback TCP, with no WebSocket, no JSON and no queues.
//!
//! A child process (this binary, `floor-server`) accepts the subscribers and, per event, writes
//! one timestamped frame to every socket in one loop of non-blocking writes per core: the
//! cheapest fan-out a server can do. The harness reads with one task per socket and records
//! publish→receive latency as `steady` does. A gateway's `steady` latency cannot be lower than
//! this on the same machine, so the two are reported side by side.

use std::net::{SocketAddr, SocketAddrV4};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

use crate::net::{connect_tcp, source_ip};
use crate::scenario::CpuWindow;
use crate::stats::{new_histogram, Percentiles};
use crate::sys::now_us;

/// Bytes per frame: about the size of a `steady` event frame.
const FRAME: usize = 128;

/// Digits of the timestamp at the start of each frame.
const STAMP: usize = 20;

/// One floor run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Plan {
    pub subscribers: usize,
    pub rate: f64,
    pub events: u64,
}

/// What the floor server measured: how long one event's write loop took.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LoopTimes {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// The floor's figures, for the report.
#[derive(Debug, Serialize)]
pub struct Floor {
    pub plan: Plan,
    pub latency: Percentiles,
    pub write_loop: LoopTimes,
    pub server_cpu_pct: f64,
    pub harness_cpu_pct: f64,
}

/// The `floor-server` child: accepts `plan.subscribers` sockets, then writes `plan.events`
/// frames to each at `plan.rate`; prints its port first and its loop times last.
pub async fn serve(plan: Plan) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    let mut sockets = Vec::with_capacity(plan.subscribers);
    while sockets.len() < plan.subscribers {
        let (socket, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
            .await
            .context("subscribers did not connect")??;
        socket.set_nodelay(true)?;
        sockets.push(socket);
    }
    // One share of the sockets per core, written in parallel: what a multi-threaded server
    // can do at best.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = plan.subscribers.div_ceil(cores).max(1);
    let mut shares: Vec<Arc<Vec<TcpStream>>> = Vec::new();
    while !sockets.is_empty() {
        let rest = sockets.split_off(share.min(sockets.len()));
        shares.push(Arc::new(std::mem::replace(&mut sockets, rest)));
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.rate));
    let mut loops = new_histogram();
    for _ in 0..plan.events {
        tick.tick().await;
        let mut frame = [b' '; FRAME];
        frame[..STAMP].copy_from_slice(format!("{:0STAMP$}", now_us()).as_bytes());
        let start = std::time::Instant::now();
        let writers: Vec<_> = shares
            .iter()
            .map(|share| tokio::spawn(write_all(share.clone(), frame)))
            .collect();
        for writer in writers {
            writer.await??;
        }
        let _ = loops.record(start.elapsed().as_micros().max(1) as u64);
    }
    let times = LoopTimes {
        p50_us: loops.value_at_quantile(0.5),
        p99_us: loops.value_at_quantile(0.99),
        max_us: loops.max(),
    };
    println!("{}", serde_json::to_string(&times)?);
    Ok(())
}

/// Writes `frame` to every socket of `sockets`, in order, without a task per socket.
async fn write_all(sockets: Arc<Vec<TcpStream>>, frame: [u8; FRAME]) -> std::io::Result<()> {
    for socket in sockets.iter() {
        let mut sent = 0;
        while sent < FRAME {
            match socket.try_write(&frame[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => socket.writable().await?,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Runs the floor: starts the child, connects and reads, and collects both sides' figures.
/// Bounded: gives up a minute after the last event was due.
pub async fn run(plan: Plan) -> anyhow::Result<Floor> {
    let limit = Duration::from_secs_f64(plan.events as f64 / plan.rate + 60.0);
    tokio::time::timeout(limit, measure(plan))
        .await
        .context("the floor run timed out")?
}

async fn measure(plan: Plan) -> anyhow::Result<Floor> {
    let exe = std::env::current_exe().context("locating herald-bench")?;
    let mut child = Command::new(exe)
        .args([
            "floor-server",
            "--subscribers",
            &plan.subscribers.to_string(),
            "--rate",
            &plan.rate.to_string(),
            "--events",
            &plan.events.to_string(),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting floor-server")?;
    let mut lines = BufReader::new(child.stdout.take().context("floor-server stdout")?).lines();
    let pid = child.id().context("floor-server exited at once")?;
    let port: u16 = lines
        .next_line()
        .await?
        .context("floor-server printed no port")?
        .trim()
        .parse()
        .context("floor-server port")?;
    let dst = SocketAddr::V4(SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port));
    let cpu = CpuWindow::start_pid(pid);
    let mut readers = Vec::with_capacity(plan.subscribers);
    for i in 0..plan.subscribers {
        let mut stream = connect_tcp(dst, source_ip(i)).await?;
        let events = plan.events;
        readers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(events as usize);
            let mut frame = [0u8; FRAME];
            for _ in 0..events {
                stream.read_exact(&mut frame).await?;
                let sent: u64 = std::str::from_utf8(&frame[..STAMP])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .context("frame without a timestamp")?;
                latencies.push(now_us().saturating_sub(sent).max(1));
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latency = new_histogram();
    for reader in readers {
        for us in reader.await?? {
            latency.saturating_record(us);
        }
    }
    let used = cpu.used();
    let write_loop: LoopTimes = serde_json::from_str(
        &lines
            .next_line()
            .await?
            .context("floor-server printed no loop times")?,
    )?;
    if !child.wait().await?.success() {
        bail!("floor-server failed");
    }
    Ok(Floor {
        plan,
        latency: Percentiles::of(&latency),
        write_loop,
        server_cpu_pct: 100.0 * used.server_s.unwrap_or(0.0) / used.wall_s,
        harness_cpu_pct: 100.0 * used.harness_s / used.wall_s,
    })
}

/// The floor as a Markdown table.
pub fn markdown(f: &Floor) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "| raw TCP floor | p50 ms | p99 ms | p99.9 ms | max ms | write loop p50 / p99 ms | server CPU % | harness CPU % |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n\
         | {} subscribers, {} events/s | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {:.1} | {:.1} |\n",
        f.plan.subscribers,
        f.plan.rate,
        f.latency.p50_ms,
        f.latency.p99_ms,
        f.latency.p999_ms,
        f.latency.max_ms,
        ms(f.write_loop.p50_us),
        ms(f.write_loop.p99_us),
        f.server_cpu_pct,
        f.harness_cpu_pct,
    )
}
