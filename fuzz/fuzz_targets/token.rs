//! The token path of `ident`: anything as a JWT, against HS256 and the configured checks.
#![no_main]

use herald::auth::{Auth, JwtOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let strict = JwtOptions {
        audience: Some("herald".into()),
        issuer: Some("https://id.example/".into()),
        require_exp: true,
        ..JwtOptions::default()
    };
    for auth in [Auth::new("s3cret"), Auth::with_options("s3cret", strict).expect("no key files")] {
        let _ = auth.verify(&token);
    }
});
