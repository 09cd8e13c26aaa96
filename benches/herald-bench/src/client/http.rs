//! HTTP/1.1 for the long-poll and SSE clients: one connection per load client, from that
//! client's own source address, driven by the client's own task.
//!
//! One connection per load client, as a browser tab holds its own: the parked poll or the open
//! stream has a connection of its own, and each session's connections come from its 127.x.y.z
//! address, so thousands of sessions (and back-to-back runs with sockets in TIME_WAIT) do not
//! run out of ephemeral ports. hyper's connection is polled inside the request (no task per
//! connection, no pool), because at saturation the harness's own cost per request is measured
//! as latency: a poll is one write and one read, and nothing else.
//!
//! Dropping an [`HttpConn`] closes its TCP connection at once, as a dropped network does.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::ClientError;

type Driver = Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>;

/// A live connection: the request half and the future doing its I/O.
struct Live {
    send: SendRequest<Full<Bytes>>,
    driver: Driver,
    /// The driver finished: the connection is closed.
    ended: bool,
}

/// A response's status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    /// The body when the status is `want`, else [`ClientError::Status`] with the start of the
    /// body (which carries the server's reason).
    pub fn expect(self, want: u16, what: &'static str) -> Result<Bytes, ClientError> {
        if self.status == want {
            return Ok(self.body);
        }
        Err(ClientError::Status {
            what,
            status: self.status,
            body: String::from_utf8_lossy(&self.body[..self.body.len().min(512)]).into_owned(),
        })
    }
}

/// One client's HTTP/1.1 connection to the server, opened on first use and again after the
/// server closed it.
pub struct HttpConn {
    dst: SocketAddr,
    src: Ipv4Addr,
    connect_timeout: Duration,
    host: HeaderValue,
    live: Option<Live>,
    /// The body of a streamed response ([`HttpConn::stream`]).
    stream: Option<Incoming>,
}

/// Awaits `fut` while driving the connection; `Err` when the connection ended first.
async fn driven<F: Future>(
    driver: &mut Driver,
    ended: &mut bool,
    fut: F,
) -> Result<F::Output, ClientError> {
    if *ended {
        return Err(ClientError::Closed(None));
    }
    tokio::select! {
        biased;
        out = fut => Ok(out),
        end = driver.as_mut() => {
            *ended = true;
            Err(match end {
                Ok(()) => ClientError::Closed(None),
                Err(e) => ClientError::Closed(Some(e.to_string())),
            })
        }
    }
}

impl HttpConn {
    /// A client of `dst` whose connections come from `src`; nothing is opened yet.
    pub fn new(dst: SocketAddr, src: Ipv4Addr, connect_timeout: Duration) -> Self {
        // An IP address and port are always a valid header value.
        let host = HeaderValue::from_str(&dst.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        HttpConn {
            dst,
            src,
            connect_timeout,
            host,
            live: None,
            stream: None,
        }
    }

    /// The live connection, opened if there is none (or the last one ended).
    async fn live(&mut self) -> Result<&mut Live, ClientError> {
        let reusable = self
            .live
            .as_ref()
            .is_some_and(|l| !l.ended && !l.send.is_closed());
        if !reusable {
            self.live = None;
            let tcp = tokio::time::timeout(
                self.connect_timeout,
                crate::net::connect_tcp(self.dst, self.src),
            )
            .await
            .map_err(|_| ClientError::Timeout("tcp connect"))??;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| ClientError::Protocol(format!("http handshake: {e}")))?;
            self.live = Some(Live {
                send,
                driver: Box::pin(conn),
                ended: false,
            });
        }
        self.live.as_mut().ok_or(ClientError::Closed(None))
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
        headers: &[(&'static str, &str)],
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = match body {
            Some((content_type, bytes)) => {
                req = req.header(CONTENT_TYPE, content_type);
                Full::new(bytes)
            }
            None => Full::new(Bytes::new()),
        };
        req.body(body)
            .map_err(|e| ClientError::Protocol(format!("request {path}: {e}")))
    }

    /// Sends a request and reads its whole response, within `limit`. A GET that fails on a
    /// reused connection before any answer (the server closed it meanwhile) is sent once
    /// more on a fresh one.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
        limit: Duration,
    ) -> Result<Answer, ClientError> {
        let retry = method == Method::GET && self.live.is_some();
        let first = self
            .call_once(method.clone(), path, body.clone(), limit)
            .await;
        match first {
            Err(ClientError::Closed(_)) if retry => self.call_once(method, path, body, limit).await,
            other => other,
        }
    }

    async fn call_once(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
        limit: Duration,
    ) -> Result<Answer, ClientError> {
        let req = self.request(method, path, body, &[])?;
        let fut = async {
            let resp = self.head(req).await?;
            let status = resp.status().as_u16();
            let body = self.body(resp).await?;
            Ok(Answer { status, body })
        };
        let out = tokio::time::timeout(limit, fut)
            .await
            .unwrap_or(Err(ClientError::Timeout("http response")));
        if out.is_err() {
            // Whatever state the connection is in, the next request starts afresh.
            self.live = None;
        }
        out
    }

    /// Sends `req` and waits for the response head.
    async fn head(&mut self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, ClientError> {
        let live = self.live().await?;
        driven(&mut live.driver, &mut live.ended, live.send.ready())
            .await?
            .map_err(closed)?;
        driven(
            &mut live.driver,
            &mut live.ended,
            live.send.send_request(req),
        )
        .await?
        .map_err(closed)
    }

    /// Reads the whole body of `resp`.
    async fn body(&mut self, resp: Response<Incoming>) -> Result<Bytes, ClientError> {
        let live = self.live.as_mut().ok_or(ClientError::Closed(None))?;
        let collected = driven(
            &mut live.driver,
            &mut live.ended,
            resp.into_body().collect(),
        )
        .await?
        .map_err(closed)?;
        Ok(collected.to_bytes())
    }

    /// Sends a GET whose response is a stream: returns the status and, unless it is 200,
    /// the body; a 200's body is then read with [`HttpConn::chunk`].
    pub async fn stream(
        &mut self,
        path: &str,
        headers: &[(&'static str, &str)],
        limit: Duration,
    ) -> Result<Answer, ClientError> {
        self.stream = None;
        let req = self.request(Method::GET, path, None, headers)?;
        let fut = async {
            let resp = self.head(req).await?;
            let status = resp.status().as_u16();
            if status == 200 {
                return Ok((
                    Some(resp.into_body()),
                    Answer {
                        status,
                        body: Bytes::new(),
                    },
                ));
            }
            let body = self.body(resp).await?;
            Ok((None, Answer { status, body }))
        };
        let out = tokio::time::timeout(limit, fut)
            .await
            .unwrap_or(Err(ClientError::Timeout("http response")));
        match out {
            Ok((stream, answer)) => {
                self.stream = stream;
                Ok(answer)
            }
            Err(e) => {
                self.live = None;
                Err(e)
            }
        }
    }

    /// The next chunk of the streamed body; `None` when it ended. Cancel-safe: dropping the
    /// future loses nothing.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        let (Some(live), Some(body)) = (self.live.as_mut(), self.stream.as_mut()) else {
            return Ok(None);
        };
        loop {
            let frame = driven(&mut live.driver, &mut live.ended, body.frame()).await;
            match frame {
                Ok(None) => return Ok(None),
                Ok(Some(Ok(f))) => match f.into_data() {
                    Ok(data) if !data.is_empty() => return Ok(Some(data)),
                    // Trailers or an empty frame: keep reading.
                    _ => continue,
                },
                Ok(Some(Err(e))) => return Err(ClientError::Closed(Some(e.to_string()))),
                // The connection ended: so did the stream.
                Err(ClientError::Closed(None)) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

/// A failed exchange: the connection cannot be trusted any more.
fn closed(e: hyper::Error) -> ClientError {
    ClientError::Closed(Some(e.to_string()))
}

/// `{"code","error"}` of a refusal body, when it is one.
pub fn refusal(body: &[u8]) -> Option<ClientError> {
    #[derive(serde::Deserialize)]
    struct Refusal {
        code: i64,
        #[serde(default)]
        error: String,
    }
    serde_json::from_slice::<Refusal>(body)
        .ok()
        .map(|r| ClientError::Refused {
            code: r.code,
            error: r.error,
        })
}
