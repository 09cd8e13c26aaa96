//! The `herald` binary: reads flags, environment and config, sets up logs, runs until a signal.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use herald::config::{Cli, Command, Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let command = cli.command.take();
    let mut config = match Config::load(cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("herald: {err}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Token {
        user,
        channels,
        ttl,
    }) = command
    {
        return print_token(&config, &user, channels, ttl);
    }
    init_logs(config.log_format);
    // One crypto provider for every rustls user in the process, chosen before any is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let generated = herald::ensure_secrets(&mut config);

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = herald::bind(config.listen)
            .map_err(|e| anyhow::anyhow!("listen: cannot bind {}: {e}", config.listen))?;
        let (tls, demo) = (config.tls.is_some(), config.demo);
        let herald = herald::prepare(config, listener)?;
        print_quick_start(tls, demo, &generated, herald.local_addr()?);
        herald.serve(shutdown_signal()).await?;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_token(config: &Config, user: &str, channels: Vec<String>, ttl: Duration) -> ExitCode {
    let Some(secret) = &config.jwt_secret else {
        eprintln!("herald: jwt_secret: required to mint a token (--jwt-secret, HERALD_JWT_SECRET or the config file)");
        return ExitCode::from(2);
    };
    let channels = (!channels.is_empty()).then_some(channels);
    println!(
        "{}",
        herald::auth::Auth::new(&secret.0).mint(user, channels, ttl)
    );
    ExitCode::SUCCESS
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// With no keys configured, Herald makes them up and prints what a first try needs.
fn print_quick_start(
    tls: bool,
    demo: bool,
    generated: &herald::GeneratedSecrets,
    addr: std::net::SocketAddr,
) {
    if generated.api_key.is_none() && generated.jwt_secret.is_none() {
        return;
    }
    let (scheme, ws) = if tls {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    println!("No api_key / jwt_secret configured: generated for this run.");
    if let Some(key) = &generated.api_key {
        println!("  api key:    {}", key.0);
    }
    if let Some(secret) = &generated.jwt_secret {
        let auth = herald::auth::Auth::new(&secret.0);
        println!("  jwt secret: {}", secret.0);
        println!(
            "  demo token (user \"demo\", 24h): {}",
            auth.mint("demo", None, Duration::from_secs(86_400))
        );
    }
    if demo {
        println!("  demo page:  {scheme}://{addr}/   (paste the demo token, or open {scheme}://{addr}/#token=<demo token>)");
    }
    println!("  connect:    {ws}://{addr}/ws   then send {{\"op\":\"ident\",\"id\":1,\"token\":\"<demo token>\"}}");
    println!("  publish:    curl -H 'Authorization: Bearer <api key>' -d '{{\"event\":\"hello\",\"users\":[\"demo\"],\"data\":{{}}}}' {scheme}://{addr}/api/publish");
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
