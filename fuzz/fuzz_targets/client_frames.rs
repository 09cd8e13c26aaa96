//! Whatever a client sends over WebSocket or `/lp/send`, before and after `ident`: every
//! op, batch, array and malformed frame goes through the one session path.
#![no_main]

#[path = "common.rs"]
mod common;

use std::time::Duration;

use herald_connector_api::{Envelope, Gateway, PeerInfo, SessionHub};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let hub = common::hub();
    let peer = PeerInfo {
        transport: "fuzz",
        remote: None,
        forwarded: None,
        event_meta: mode & 2 != 0,
    };
    let Ok((mut session, mut outbox)) = hub.open(peer) else {
        return;
    };
    if mode & 1 != 0 {
        // Identified first, with history to recover from.
        let token = herald::auth::Auth::new(common::SECRET).mint("fuzzer", None, Duration::from_secs(60));
        session.handle_text(&format!(r#"{{"op":"ident","id":1,"token":"{token}"}}"#));
        for _ in 0..3 {
            if let Ok(envelope) = Envelope::from_json(br#"{"event":"e","channels":["chat:a","lobby"],"data":{}}"#) {
                let _ = hub.publish(envelope);
            }
        }
    }
    for part in String::from_utf8_lossy(rest).split('\u{1}') {
        session.handle_text(part);
    }
    while outbox.try_recv().is_some() {}
});
