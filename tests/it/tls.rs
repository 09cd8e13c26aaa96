//! `wss`: a self-signed certificate made by Herald, and a CA-signed chain from files.

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

use crate::support::raw_http::RawHttp;
use crate::support::{start, start_with, Client, Gateway};

fn client_config(
    roots: &[CertificateDer<'static>],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store);
    Arc::new(match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    })
}

async fn ident_over_wss(gw: &Gateway, tls: Arc<rustls::ClientConfig>) {
    let mut client =
        Client::connect_tls(&format!("wss://127.0.0.1:{}/ws", gw.addr.port()), tls).await;
    let reply = client
        .request(json!({"op": "ident", "token": gw.token("secure", None)}))
        .await;
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["data"]["user"], "secure");
}

fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn wss_with_a_self_signed_certificate_reused_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let gw = start(&["--tls-self-signed", "--tls-dir", dir_arg]).await;
    let cert_path = dir.path().join("server.pem");
    let first = std::fs::read(&cert_path).expect("certificate written under --tls-dir");
    ident_over_wss(&gw, client_config(&pem_certs(&cert_path), None)).await;
    gw.stop().await;

    let gw = start(&["--tls-self-signed", "--tls-dir", dir_arg]).await;
    assert_eq!(
        std::fs::read(&cert_path).unwrap(),
        first,
        "the certificate is reused, not remade"
    );
    ident_over_wss(&gw, client_config(&pem_certs(&cert_path), None)).await;
    gw.stop().await;
}

/// A parked poll and an SSE stream are written outside hyper, through the TLS layer, and a
/// connection taken out of hyper serves HTTP again on the same TLS session.
#[tokio::test]
async fn long_poll_and_sse_are_answered_outside_hyper_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--tls-self-signed",
        "--tls-dir",
        dir.path().to_str().unwrap(),
    ];
    let config = "[longpoll]\npoll_timeout = \"3s\"\nsession_timeout = \"8s\"\n";
    let gw = start_with(&args, Some(config)).await;
    let tls = client_config(&pem_certs(&dir.path().join("server.pem")), None);
    let items = |body: &str| serde_json::from_str::<Vec<Value>>(body).expect("an array");

    let mut lp = RawHttp::connect_tls(gw.addr, tls.clone()).await;
    lp.post("/lp/open", "").await;
    let (_, body) = lp.response().await;
    let opened: Value = serde_json::from_str(&body).expect("JSON");
    let sid = opened["sid"].as_str().expect("a sid").to_owned();
    let send = format!("/lp/send?sid={sid}");
    let poll = |ack: u64| format!("/lp/poll?sid={sid}&ack={ack}");
    let ident = json!({"op": "ident", "id": 1, "token": gw.token("secure", None)});
    lp.post(&send, &ident.to_string()).await;
    assert!(lp.response().await.0.starts_with("http/1.1 204"));
    lp.get(&poll(0)).await;
    let (_, body) = lp.response().await;
    let replied = items(&body);
    assert_eq!(replied[0]["frame"]["ok"], true, "{body}");
    let seq = replied[0]["seq"].as_u64().unwrap();

    // Parked past the takeover, then woken by a reply to a send on another connection.
    lp.get(&poll(seq)).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut other = RawHttp::connect_tls(gw.addr, tls.clone()).await;
    other.post(&send, r#"{"op":"ping","id":2}"#).await;
    assert!(other.response().await.0.starts_with("http/1.1 204"));
    let (head, body) = lp.response().await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert_eq!(items(&body)[0]["frame"]["id"], 2, "{body}");
    // The same TLS session, given back to HTTP.
    lp.post(&format!("/lp/close?sid={sid}"), "").await;
    assert!(lp.response().await.0.starts_with("http/1.1 204"));

    let mut sse = RawHttp::connect_tls(gw.addr, tls).await;
    let token = gw.token("secure", None);
    sse.get(&format!("/sse?channels=news&token={token}")).await;
    let head = sse.head().await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let first = sse.chunk().await;
    assert!(first.starts_with("event: ident"), "{first}");
    gw.stop().await;
}

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        Self {
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, names: &[&str]) -> (String, String) {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

#[tokio::test]
async fn wss_with_a_certificate_chain_from_files_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (leaf, key) = pki.issue(&["127.0.0.1", "localhost"]);
    let chain_path = dir.path().join("chain.pem");
    let key_path = dir.path().join("server.key");
    // A full chain: leaf first, then the CA.
    std::fs::write(&chain_path, format!("{leaf}{}", pki.ca_pem)).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).unwrap();
    let ca = pem_certs(&ca_path);
    let (cert, key) = (chain_path.to_str().unwrap(), key_path.to_str().unwrap());

    let gw = start(&["--tls-cert", cert, "--tls-key", key]).await;
    ident_over_wss(&gw, client_config(&ca, None)).await;
    gw.stop().await;

    // With --tls-ca, only clients holding a certificate from that CA get in.
    let gw = start(&[
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--tls-ca",
        ca_path.to_str().unwrap(),
    ])
    .await;
    let (client_cert, client_key) = pki.issue(&["client"]);
    let identity = (
        CertificateDer::pem_slice_iter(client_cert.as_bytes())
            .map(Result::unwrap)
            .collect(),
        PrivateKeyDer::from_pem_slice(client_key.as_bytes()).unwrap(),
    );
    ident_over_wss(&gw, client_config(&ca, Some(identity))).await;
    let url = format!("wss://127.0.0.1:{}/ws", gw.addr.port());
    let connector = tokio_tungstenite::Connector::Rustls(client_config(&ca, None));
    let refused = tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        None,
        false,
        Some(connector),
    )
    .await;
    assert!(
        refused.is_err(),
        "a client without a certificate is refused"
    );
    gw.stop().await;
}

/// Whether a `wss` handshake trusting only `ca` succeeds.
async fn handshake_trusting(gw: &Gateway, ca: &str) -> bool {
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca.as_bytes())
        .map(Result::unwrap)
        .collect();
    let url = format!("wss://127.0.0.1:{}/ws", gw.addr.port());
    let connector = tokio_tungstenite::Connector::Rustls(client_config(&roots, None));
    tokio_tungstenite::connect_async_tls_with_config(url.as_str(), None, false, Some(connector))
        .await
        .is_ok()
}

#[tokio::test]
async fn a_new_certificate_is_taken_without_dropping_connections_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("chain.pem"), dir.path().join("server.key"));
    let install = |pki: &Pki| {
        let (leaf, key) = pki.issue(&["127.0.0.1"]);
        std::fs::write(&cert_path, leaf).unwrap();
        std::fs::write(&key_path, key).unwrap();
    };
    let (old, new) = (Pki::new(), Pki::new());
    install(&old);
    let (cert, key) = (cert_path.to_str().unwrap(), key_path.to_str().unwrap());
    let gw = start(&["--tls-cert", cert, "--tls-key", key]).await;
    let old_roots: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(old.ca_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
    let mut open = Client::connect_tls(
        &format!("wss://127.0.0.1:{}/ws", gw.addr.port()),
        client_config(&old_roots, None),
    )
    .await;
    let reply = open
        .request(json!({"op": "ident", "token": gw.token("kept", None)}))
        .await;
    assert_eq!(reply["ok"], true);
    assert!(
        !handshake_trusting(&gw, &new.ca_pem).await,
        "the new CA is not in use yet"
    );

    // The files change: new handshakes get the new certificate; the open connection stays.
    install(&new);
    let mut rotated = false;
    for _ in 0..50 {
        if handshake_trusting(&gw, &new.ca_pem).await {
            rotated = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(rotated, "the new certificate was picked up");
    let reply = open.request(json!({"op": "ping"})).await;
    assert_eq!(
        reply["ok"], true,
        "the connection made before the reload is still served"
    );

    // A broken certificate, then SIGHUP (what `systemctl reload` sends): the old one stays.
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    // SAFETY: kill(2) on our own pid; the gateway's handler is installed while it serves.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    // Past the signal and a file check: whatever was tried, the last good certificate serves.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(
        handshake_trusting(&gw, &new.ca_pem).await,
        "still serving the last good certificate"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_closed_at_the_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let gw = start(&[
        "--tls-self-signed",
        "--tls-dir",
        dir_arg,
        "--tls-handshake-timeout",
        "500ms",
    ])
    .await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // The first bytes of a ClientHello record, then nothing: past the first-byte deadline,
    // inside the handshake.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0xf0])
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf))
        .await
        // Well before the 10 s default: only the configured 500 ms can have closed it.
        .expect("closed within 5 s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed, not answered: {read:?}"
    );
    gw.stop().await;
}
