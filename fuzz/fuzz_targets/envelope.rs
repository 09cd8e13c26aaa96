//! The publish envelope every backend path sends (HTTP, NATS, AMQP, file tail), alone or as
//! a batch.
#![no_main]

use herald_connector_api::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Envelope::from_json(data);
    let _ = Envelope::batch_from_json(data);
});
