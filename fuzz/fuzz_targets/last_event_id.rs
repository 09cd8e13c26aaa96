//! The `Last-Event-ID` a browser sends back when an `EventSource` reconnects.
#![no_main]

use herald_connector_sse::position::Positions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(positions) = Positions::parse(text) {
            for (name, _) in positions.iter() {
                let _ = positions.since(name);
            }
        }
    }
});
