//! The JavaScript client and the demo page, built into the binary: `GET /client.js` (a
//! classic script defining `Herald`), `/client.mjs` (the ES module), `/client.d.ts` (its
//! types) and, unless `--no-demo`, the demo chat at `/`.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const GLOBAL_BUILD: &str = include_str!("../clients/js/dist/herald.global.js");
const MODULE: &str = include_str!("../clients/js/src/herald.js");
const TYPES: &str = include_str!("../clients/js/herald.d.ts");
const DEMO: &str = include_str!("../clients/js/demo/index.html");

/// One built-in file, with the validator browsers revalidate it by.
struct File {
    body: &'static str,
    content_type: &'static str,
    etag: HeaderValue,
}

impl File {
    fn new(body: &'static str, content_type: &'static str) -> Self {
        // FNV-1a: the ETag only needs to change when the content does.
        let hash = body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let etag =
            HeaderValue::from_str(&format!("\"{hash:016x}\"")).expect("hex is a valid header");
        Self {
            body,
            content_type,
            etag,
        }
    }

    /// The file, or 304 when the browser's copy is current. The client is cached for an
    /// hour and revalidated after; the demo page is always revalidated.
    fn respond(&self, request: &HeaderMap, max_age: u32) -> Response {
        let cache =
            HeaderValue::from_str(&format!("public, max-age={max_age}")).expect("a valid header");
        let headers = [
            (header::ETAG, self.etag.clone()),
            (header::CACHE_CONTROL, cache),
        ];
        if request.get(header::IF_NONE_MATCH) == Some(&self.etag) {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        let content_type = HeaderValue::from_static(self.content_type);
        (headers, [(header::CONTENT_TYPE, content_type)], self.body).into_response()
    }
}

/// The client's routes, and the demo page's when `demo` is on.
pub fn routes(demo: bool) -> Router {
    const JS: &str = "text/javascript; charset=utf-8";
    let serve = |file: File, max_age: u32| {
        let file = std::sync::Arc::new(file);
        get(move |headers: HeaderMap| {
            let file = file.clone();
            async move { file.respond(&headers, max_age) }
        })
    };
    let router = Router::new()
        .route("/client.js", serve(File::new(GLOBAL_BUILD, JS), 3600))
        .route("/client.mjs", serve(File::new(MODULE, JS), 3600))
        .route(
            "/client.d.ts",
            serve(
                File::new(TYPES, "application/typescript; charset=utf-8"),
                3600,
            ),
        );
    if demo {
        router.route("/", serve(File::new(DEMO, "text/html; charset=utf-8"), 0))
    } else {
        router
    }
}
