//! TLS with rustls: certificates from PEM files, or a self-signed one made with rcgen.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSource;

/// Why TLS could not be set up; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{key}: cannot load {path}: {message}")]
    Load {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not be used.
    #[error("tls.ca: {0}")]
    ClientCa(String),
    /// The self-signed certificate could not be made or written.
    #[error("tls.self_signed: {0}")]
    SelfSigned(String),
}

/// Builds the server's rustls config; TLS 1.2 and 1.3 only (rustls has nothing older).
///
/// # Errors
/// [`TlsError`] naming the file that is missing or wrong.
pub fn server_config(source: &TlsSource) -> Result<rustls::ServerConfig, TlsError> {
    let (cert, key, ca) = match source {
        TlsSource::Files { cert, key, ca } => (cert.clone(), key.clone(), ca.clone()),
        TlsSource::SelfSigned { dir } => {
            let (cert, key) = ensure_self_signed(dir)?;
            (cert, key, None)
        }
    };
    let load_err = |key: &'static str, path: &Path, message: String| TlsError::Load {
        key,
        path: path.to_owned(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .and_then(Iterator::collect)
        .map_err(|e| load_err("tls.cert", &cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(load_err(
            "tls.cert",
            &cert,
            "no certificate in the file".into(),
        ));
    }
    let private_key =
        PrivateKeyDer::from_pem_file(&key).map_err(|e| load_err("tls.key", &key, e.to_string()))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| load_err("tls.ca", ca, e.to_string()))?
            {
                roots.add(cert.map_err(|e| load_err("tls.ca", ca, e.to_string()))?)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, private_key)?;
    // WebSocket upgrades need HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Makes `server.pem` and `server.key` in `dir` unless both exist; returns their paths.
///
/// # Errors
/// [`TlsError::SelfSigned`] when the files cannot be made.
pub fn ensure_self_signed(dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    if cert_path.exists() && key_path.exists() {
        tracing::info!(cert = %cert_path.display(), key = %key_path.display(), "using the self-signed certificate made earlier");
        return Ok((cert_path, key_path));
    }
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    let fail = |e: std::io::Error| {
        TlsError::SelfSigned(format!("cannot write under {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    std::fs::write(&cert_path, made.cert.pem()).map_err(fail)?;
    write_private(&key_path, made.signing_key.serialize_pem().as_bytes()).map_err(fail)?;
    tracing::info!(cert = %cert_path.display(), key = %key_path.display(), "made a self-signed certificate for localhost");
    println!(
        "self-signed certificate: {} (key {})",
        cert_path.display(),
        key_path.display()
    );
    Ok((cert_path, key_path))
}

/// Writes a key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}
