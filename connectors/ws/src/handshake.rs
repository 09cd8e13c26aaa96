//! The opening handshake of `GET /ws` (RFC 6455 §4.2), done here rather than by axum's
//! extractor so that the upgraded connection goes to tokio-tungstenite as Herald needs it:
//! raw frames for permessage-deflate, and typed errors for close codes.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::deflate::{self, Compressor, Deflate, Inflating};

/// A WebSocket connection as the transport serves it.
pub type Socket = WebSocketStream<Inflating<TokioIo<hyper::upgrade::Upgraded>>>;

/// A request that is a valid WebSocket upgrade, not yet answered.
pub struct Upgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
    deflate: Option<Deflate>,
}

/// Why a request is not an upgrade Herald takes.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("a WebSocket upgrade is a GET")]
    NotGet,
    #[error("WebSocket only: Connection: upgrade and Upgrade: websocket are required")]
    NotAnUpgrade,
    #[error("Sec-WebSocket-Version must be 13")]
    Version,
    #[error("Sec-WebSocket-Key is missing")]
    NoKey,
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let why = self.to_string();
        match self {
            Self::NotGet => (StatusCode::METHOD_NOT_ALLOWED, why).into_response(),
            Self::NotAnUpgrade => {
                let upgrade = [(header::UPGRADE, "websocket")];
                (StatusCode::UPGRADE_REQUIRED, upgrade, why).into_response()
            }
            Self::Version | Self::NoKey | Self::NotUpgradable => {
                (StatusCode::BAD_REQUEST, why).into_response()
            }
        }
    }
}

impl Upgrade {
    /// Checks `request` is an upgrade Herald can take, with permessage-deflate when
    /// `compression` allows it and the client offers it.
    pub fn check(request: &mut Request, compression: &deflate::Settings) -> Result<Self, Refused> {
        let headers = request.headers();
        if request.method() != Method::GET {
            return Err(Refused::NotGet);
        }
        if !has_token(headers, header::CONNECTION, "upgrade")
            || !has_token(headers, header::UPGRADE, "websocket")
        {
            return Err(Refused::NotAnUpgrade);
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(Refused::Version);
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(Refused::NoKey)?;
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header value");
        let deflate = compression.negotiate(headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS));
        let on_upgrade = request
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or(Refused::NotUpgradable)?;
        Ok(Self {
            accept,
            on_upgrade,
            deflate,
        })
    }

    /// The 101 answer, and the socket (with its compressor, when deflate was agreed) once
    /// hyper has handed the connection over (`None` if the upgrade failed).
    pub fn accept(
        self,
        config: WebSocketConfig,
    ) -> (
        Response,
        impl std::future::Future<Output = Option<(Socket, Option<Compressor>)>>,
    ) {
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, self.accept)
            .body(Body::empty())
            .expect("a valid 101 response");
        if let Some(deflate) = &self.deflate {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_EXTENSIONS, deflate.response_header());
        }
        let (on_upgrade, deflate) = (self.on_upgrade, self.deflate);
        let socket = async move {
            let upgraded = on_upgrade.await.ok()?;
            let limit = config.max_message_size.unwrap_or(usize::MAX);
            let io = Inflating::new(TokioIo::new(upgraded), deflate.as_ref(), limit);
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            Some((socket, deflate.as_ref().map(Compressor::new)))
        };
        (response, socket)
    }
}

/// Whether the comma-separated `name` header holds `token` (case-insensitively).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}
