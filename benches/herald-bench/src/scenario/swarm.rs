//! A swarm of subscribers: one task per client that connects (bounded concurrency), identifies,
//! joins, then reads events until told to stop, and hands back what it saw.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::{ChannelReq, ClientError, Conn, Endpoint, IdentReply, RunEnd, Shared, Sink};
use crate::stats::{new_histogram, Tracker};

/// One subscriber: who it is, what it joins at ident, and which channels it must receive on.
#[derive(Debug, Clone)]
pub struct SubSpec {
    pub user: String,
    pub join: Vec<String>,
    pub track: Vec<String>,
}

pub struct ClientOutcome {
    pub tracker: Tracker,
    /// First offset owed per joined channel (offset at join + 1).
    pub from: Vec<(String, u64)>,
    pub end: Option<RunEnd>,
}

impl ClientOutcome {
    pub fn owed_from(&self, channel: &str) -> Option<u64> {
        self.from
            .iter()
            .find(|(c, _)| c == channel)
            .map(|(_, o)| *o)
    }
}

/// Connects client `i` and identifies it, retrying a failed attempt twice.
pub async fn connect_ident(
    ep: &Endpoint,
    i: usize,
    user: &str,
    join: &[ChannelReq],
    sio_resume: Option<(&str, &str)>,
    sink: &mut Sink<'_>,
) -> Result<(Conn, IdentReply), ClientError> {
    let mut last = None;
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        }
        let mut conn = match Conn::open(ep, crate::net::source_ip(i)).await {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        match conn.ident(ep, user, join, sio_resume, sink).await {
            Ok(r) => return Ok((conn, r)),
            // A refusal will not change on retry.
            Err(e @ ClientError::Refused { .. }) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(ClientError::Timeout("connect")))
}

pub struct Swarm {
    pub shared: Arc<Shared>,
    pub connect_latency: Arc<Mutex<Histogram<u64>>>,
    stop: CancellationToken,
    handles: Vec<JoinHandle<ClientOutcome>>,
    ready: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    first_error: Arc<Mutex<Option<String>>>,
}

pub struct Readiness {
    pub ready: usize,
    pub failed: usize,
    pub elapsed: Duration,
    pub first_error: Option<String>,
}

impl Swarm {
    pub fn spawn(ep: &Endpoint, specs: Vec<SubSpec>, concurrency: usize) -> Swarm {
        Self::spawn_over(std::slice::from_ref(ep), specs, concurrency)
    }

    /// Subscriber i connects to `eps[i % eps.len()]`: spread evenly over a cluster's nodes.
    pub fn spawn_over(eps: &[Endpoint], specs: Vec<SubSpec>, concurrency: usize) -> Swarm {
        let shared = Arc::new(Shared::new());
        let connect_latency = Arc::new(Mutex::new(new_histogram()));
        let stop = CancellationToken::new();
        let sem = Arc::new(Semaphore::new(concurrency.max(1)));
        let ready = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let first_error = Arc::new(Mutex::new(None));
        let mut handles = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            // No endpoint, no clients: the caller sees an empty swarm.
            let Some(ep) = eps.get(i % eps.len().max(1)) else {
                break;
            };
            let (ep, shared, lat, stop, sem, ready, failed, first_error) = (
                ep.clone(),
                shared.clone(),
                connect_latency.clone(),
                stop.clone(),
                sem.clone(),
                ready.clone(),
                failed.clone(),
                first_error.clone(),
            );
            handles.push(tokio::spawn(async move {
                let track: Vec<&str> = spec.track.iter().map(String::as_str).collect();
                let mut sink = Sink::new(Tracker::expect(&track), &shared, i);
                let join: Vec<ChannelReq> = spec
                    .join
                    .iter()
                    .map(|c| ChannelReq {
                        name: c.clone(),
                        since: None,
                    })
                    .collect();
                let permit = sem.acquire_owned().await;
                let t0 = Instant::now();
                let res = tokio::select! {
                    r = connect_ident(&ep, i, &spec.user, &join, None, &mut sink) => r,
                    _ = stop.cancelled() => Err(ClientError::Timeout("connect (stopped)")),
                };
                drop(permit);
                let (mut conn, reply) = match res {
                    Ok(ok) => ok,
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let msg = e.to_string();
                        let mut fe = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        fe.get_or_insert(msg.clone());
                        return ClientOutcome {
                            tracker: sink.tracker,
                            from: Vec::new(),
                            end: None,
                        };
                    }
                };
                lat.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .saturating_record(t0.elapsed().as_micros() as u64);
                ready.fetch_add(1, Ordering::Relaxed);
                let from = reply
                    .channels
                    .iter()
                    .map(|c| (c.name.clone(), c.offset + 1))
                    .collect();
                let stopped = stop.cancelled();
                tokio::pin!(stopped);
                let end = conn.run(&mut sink, stopped.as_mut()).await;
                if end != RunEnd::Stopped {
                    shared.disconnects.fetch_add(1, Ordering::Relaxed);
                }
                ClientOutcome {
                    tracker: sink.tracker,
                    from,
                    end: Some(end),
                }
            }));
        }
        Swarm {
            shared,
            connect_latency,
            stop,
            handles,
            ready,
            failed,
            first_error,
        }
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Waits until every client is identified (or failed), at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> Readiness {
        let start = Instant::now();
        let n = self.handles.len();
        loop {
            let (r, f) = (
                self.ready.load(Ordering::Relaxed),
                self.failed.load(Ordering::Relaxed),
            );
            if r + f >= n || start.elapsed() >= limit {
                return Readiness {
                    ready: r,
                    failed: f,
                    elapsed: start.elapsed(),
                    first_error: self
                        .first_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                };
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops every client and collects what each saw.
    pub async fn finish(self) -> Vec<ClientOutcome> {
        self.stop.cancel();
        let mut out = Vec::with_capacity(self.handles.len());
        for h in self.handles {
            if let Ok(o) = h.await {
                out.push(o);
            }
        }
        out
    }
}
