//! CORS for the API, and the same allow-list on WebSocket upgrades (no cross-site hijacking).

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::start;

async fn preflight(url: &str, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, url)
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn preflight_is_allowed_for_a_listed_origin_only() {
    let gw = start(&["--cors-origin", "https://app.example"]).await;
    let allowed = preflight(&gw.url("/api/publish"), "https://app.example").await;
    assert!(allowed.status().is_success());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let methods = allowed.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("POST"), "{methods}");
    let refused = preflight(&gw.url("/api/publish"), "https://evil.example").await;
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    gw.stop().await;
}

#[tokio::test]
async fn no_origin_is_allowed_by_default() {
    let gw = start(&[]).await;
    let refused = preflight(&gw.url("/api/publish"), "https://app.example").await;
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    gw.stop().await;
}

#[tokio::test]
async fn websocket_upgrade_from_a_foreign_origin_is_refused() {
    let gw = start(&["--cors-origin", "https://app.example"]).await;
    let url = format!("ws://{}/ws", gw.addr);
    let with_origin = |origin: &'static str| {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", HeaderValue::from_static(origin));
        request
    };
    match tokio_tungstenite::connect_async(with_origin("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| "connected")),
    }
    assert!(
        tokio_tungstenite::connect_async(with_origin("https://app.example"))
            .await
            .is_ok()
    );
    let same = format!("http://{}", gw.addr);
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", HeaderValue::from_str(&same).unwrap());
    assert!(
        tokio_tungstenite::connect_async(request).await.is_ok(),
        "same origin is allowed"
    );
    gw.stop().await;
}
