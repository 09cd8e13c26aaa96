//! Certificate rotation without a restart: on SIGHUP (what `systemctl reload` sends) and
//! when the certificate, key or CA files change, the TLS config is built again and swapped
//! in for new handshakes; open connections keep theirs. A new certificate that does not load
//! keeps the old one serving and says why.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::TlsSource;
use crate::metrics::Metrics;

/// How often the files are checked for a change.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Reloads `rustls` from `source` on SIGHUP and on file changes until `shutdown`; without TLS
/// (`None`) it only keeps SIGHUP from ending the process.
///
/// SIGHUP is taken over when this is called, not when the future first runs: by then the
/// server may be answering, and SIGHUP's default action ends the process.
pub fn run(
    tls: Option<(RustlsConfig, TlsSource)>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> {
    let hangup = signal(SignalKind::hangup())
        .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP: certificates reload on file changes only"))
        .ok();
    watch(tls, metrics, shutdown, hangup)
}

async fn watch(
    tls: Option<(RustlsConfig, TlsSource)>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    mut hangup: Option<tokio::signal::unix::Signal>,
) {
    let mut seen = tls.as_ref().map(|(_, source)| files_stamp(source));
    let mut tick = tokio::time::interval(FILE_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hung_up = async {
            match hangup.as_mut() {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = hung_up => "SIGHUP",
            // Without TLS there are no files to watch.
            _ = tick.tick(), if tls.is_some() => {
                let now = tls.as_ref().map(|(_, source)| files_stamp(source));
                if now == seen {
                    continue;
                }
                seen = now;
                "the certificate files changed"
            }
        };
        match &tls {
            None => tracing::info!("{why}: no TLS configured, nothing to reload"),
            Some((rustls, source)) => reload(rustls, source, why, &metrics),
        }
    }
}

fn reload(rustls: &RustlsConfig, source: &TlsSource, why: &str, metrics: &Metrics) {
    match crate::tls::server_config(source) {
        Ok(config) => {
            rustls.reload_from_config(Arc::new(config));
            metrics.tls_reloaded(true);
            tracing::info!("{why}: reloaded the TLS certificate; open connections keep theirs");
        }
        Err(e) => {
            metrics.tls_reloaded(false);
            tracing::error!(error = %e, "{why}: the new TLS certificate does not load; still serving the old one");
        }
    }
}

/// What identifies the files' current contents: each one's modification time and size.
fn files_stamp(source: &TlsSource) -> Vec<Option<(SystemTime, u64)>> {
    let files: Vec<PathBuf> = match source {
        TlsSource::Files { cert, key, ca } => [Some(cert.clone()), Some(key.clone()), ca.clone()]
            .into_iter()
            .flatten()
            .collect(),
        TlsSource::SelfSigned { dir } => vec![dir.join("server.pem"), dir.join("server.key")],
    };
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}
