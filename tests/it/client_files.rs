//! The JavaScript client and the demo page served by the binary, with their caching headers;
//! `--no-demo` turns the page off.

use crate::support::start;

#[tokio::test]
async fn the_client_and_the_demo_are_served_with_validators() {
    let gw = start(&[]).await;
    let http = reqwest::Client::new();
    for (path, kind, source) in [
        (
            "/client.js",
            "javascript",
            include_str!("../../clients/js/dist/herald.global.js"),
        ),
        (
            "/client.mjs",
            "javascript",
            include_str!("../../clients/js/src/herald.js"),
        ),
        (
            "/client.d.ts",
            "typescript",
            include_str!("../../clients/js/herald.d.ts"),
        ),
        (
            "/",
            "text/html",
            include_str!("../../clients/js/demo/index.html"),
        ),
    ] {
        let response = http.get(gw.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        assert!(header("content-type").contains(kind), "{path}");
        assert!(
            header("cache-control").starts_with("public, max-age="),
            "{path}"
        );
        let etag = header("etag");
        assert_eq!(
            response.text().await.unwrap(),
            source,
            "{path}: the file as built"
        );
        let again = http
            .get(gw.url(path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}: revalidated, not sent again");
    }
    gw.stop().await;

    let gw = start(&["--no-demo"]).await;
    let status = |path: &'static str| {
        let (http, url) = (http.clone(), gw.url(path));
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/").await, 404, "--no-demo");
    assert_eq!(status("/client.js").await, 200, "the client stays");
    gw.stop().await;
}
