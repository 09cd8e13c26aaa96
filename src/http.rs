//! The one HTTP(S) app: the API and transport routers merged, behind CORS and Origin checks,
//! plus health, readiness and metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::metrics::Metrics;

/// Which browser origins may use Herald.
#[derive(Debug, Clone)]
pub enum AllowedOrigins {
    /// `*`: any origin.
    Any,
    /// Exactly these (same-origin requests are always allowed).
    List(Vec<HeaderValue>),
}

impl AllowedOrigins {
    /// From the configured list; `*` anywhere means any.
    pub fn new(origins: &[String]) -> Self {
        if origins.iter().any(|o| o == "*") {
            return Self::Any;
        }
        Self::List(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
        )
    }

    /// Whether a request with this `Origin` (and `Host`) may proceed.
    fn allows(&self, origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
        let same_origin = || {
            let origin = origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .map(|(_, authority)| authority);
            matches!((origin, host.and_then(|h| h.to_str().ok())), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
        };
        match self {
            Self::Any => true,
            Self::List(list) => list.iter().any(|allowed| allowed == origin) || same_origin(),
        }
    }

    fn cors_layer(&self) -> CorsLayer {
        let allow = match self {
            Self::Any => AllowOrigin::any(),
            Self::List(list) => AllowOrigin::list(list.clone()),
        };
        // No credentials: tokens travel in headers or frames, never cookies, so `*` is safe.
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
            ])
            .max_age(Duration::from_secs(600))
    }
}

/// Whether the node takes traffic: set once listening, cleared when shutdown starts.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// Marks the node ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Probes {
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
}

/// Merges the API router and the transport routers into the app every listener serves.
///
/// Browsers do not apply CORS to WebSocket upgrades, so `transports` also get an explicit
/// `Origin` check: a page on a foreign origin cannot open a socket with a user's credentials.
pub fn app(
    api: Router,
    transports: Router,
    origins: AllowedOrigins,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
) -> Router {
    let cors = origins.cors_layer();
    let transports = transports.route_layer(middleware::from_fn_with_state(
        Arc::new(origins),
        check_origin,
    ));
    let probes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Probes {
            metrics: metrics.clone(),
            ready,
        });
    Router::new()
        .merge(probes)
        .merge(api)
        .merge(transports)
        .layer(middleware::from_fn_with_state(
            metrics,
            count_oversized_bodies,
        ))
        .layer(cors)
}

/// Counts requests refused for their size (`max_body_size`), whichever router refused them.
async fn count_oversized_bodies(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        metrics.limit_hit("max_body_size");
    }
    response
}

async fn check_origin(
    State(origins): State<Arc<AllowedOrigins>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        if !origins.allows(origin, headers.get(header::HOST)) {
            tracing::info!(origin = ?origin, "refused a transport request from a foreign origin");
            let body = serde_json::json!({"code": 4003, "error": "forbidden: origin not allowed"});
            return (StatusCode::FORBIDDEN, Json(body)).into_response();
        }
    }
    next.run(request).await
}

/// 200 when the listener and every connector are up; else 503 naming what is not
/// (`nats: reconnecting since …`).
async fn readyz(State(probes): State<Probes>) -> Response {
    let mut failing = probes.metrics.connectors.failing();
    if !probes.ready.get() {
        failing.insert(
            0,
            "listener: not accepting (starting or shutting down)".into(),
        );
    }
    if failing.is_empty() {
        Json(serde_json::json!({"ready": true})).into_response()
    } else {
        let body = serde_json::json!({"ready": false, "failing": failing});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics_text(State(probes): State<Probes>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        probes.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_rules() {
        let hv = |s: &'static str| HeaderValue::from_static(s);
        let list = AllowedOrigins::new(&["https://app.example".into()]);
        assert!(list.allows(&hv("https://app.example"), None));
        assert!(!list.allows(&hv("https://evil.example"), Some(&hv("herald.example"))));
        assert!(
            list.allows(&hv("https://herald.example"), Some(&hv("herald.example"))),
            "same origin"
        );
        assert!(AllowedOrigins::new(&["*".into()]).allows(&hv("https://any.example"), None));
    }
}
