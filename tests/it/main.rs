//! Herald's integration tests: one binary, real sockets on 127.0.0.1.

mod support;

mod activity;
mod amqp;
mod auth_hooks;
mod backpressure;
mod bench_soak_chaos;
mod bounds;
mod client_files;
mod cluster;
mod cors;
mod filetail;
mod framing;
mod fuzz;
mod http_api;
mod js_client;
mod jwt;
mod longpoll;
mod nats;
mod process;
mod revocation;
mod rpc;
mod sse;
mod supply_chain;
mod tls;
mod ws_conformance;
mod ws_protocol;
mod ws_recovery;
