//! Autobahn|Testsuite's fuzzing client against Herald's WebSocket stack: axum and tungstenite
//! with the limits `/ws` sets ([`limited`]) and the close codes it sends on a breach
//! ([`violation`]). `/ws` speaks Herald's protocol, not echo, so the suite runs against an
//! echo route built from the same parts. Its results must match `autobahn/expected.json`;
//! set `HERALD_AUTOBAHN_BLESS=1` to rewrite that file after a deliberate change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::*;

/// Compression (12.*, 13.*) is not offered: tungstenite has no permessage-deflate.
const EXCLUDED: &[&str] = &["12.*", "13.*"];

/// Herald's defaults, but for the message size limit: raised to the suite's largest message
/// (16 MiB, in 9.*), so that the stack's handling of large and many-fragment messages is
/// what gets tested. Refusing a message past the limit with 4009 is Herald's own rule, tested
/// against `/ws` (`tests/it/bounds.rs`).
fn suite_config() -> WsConfig {
    WsConfig {
        max_message_size: 16 << 20,
        // What Herald derives from that limit (`src/lib.rs`): four messages.
        max_write_buffer: 64 << 20,
        ping_interval: Duration::from_secs(25),
        idle_timeout: Duration::from_secs(60),
    }
}

async fn upgrade_echo(State(config): State<Arc<WsConfig>>, ws: WebSocketUpgrade) -> Response {
    limited(ws, &config).on_upgrade(move |socket| echo(socket, config))
}

/// Echoes data messages; ends a connection as `serve` does.
async fn echo(mut socket: WebSocket, config: Arc<WsConfig>) {
    let end = loop {
        match socket.recv().await {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                if inbound_len(&Some(Ok(message.clone()))) > config.max_message_size {
                    break End::Disconnect(Disconnect::new(4009, "frame too large", true));
                }
                if socket.send(message).await.is_err() {
                    return;
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            // Reading on lets tungstenite flush its close reply before the socket drops.
            Some(Ok(Message::Close(_))) => {}
            None => return,
            Some(Err(err)) => break read_failed(&err),
        }
    };
    let frame = match end {
        End::Failed(code, why) => close(code, why),
        End::Disconnect(disconnect) => close(disconnect.code, &disconnect.reason),
        End::Idle | End::Gone => return,
    };
    let _ = timeout(CLOSE_TIMEOUT, async {
        let _ = socket.send(frame).await;
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn autobahn_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("autobahn")
}

/// Installs `wstest` if it is missing and returns its path.
fn wstest() -> PathBuf {
    let status = Command::new("sh")
        .arg(autobahn_dir().join("install.sh"))
        .status()
        .expect("run autobahn/install.sh");
    assert!(status.success(), "autobahn/install.sh failed: {status}");
    prefix().join("bin/wstest")
}

fn prefix() -> PathBuf {
    std::env::var_os("AUTOBAHN_PREFIX").map_or_else(|| "/opt/autobahn".into(), PathBuf::from)
}

/// Case id → "behavior/behaviorClose" from the suite's `index.json`.
fn outcomes(index: &Value) -> BTreeMap<String, String> {
    let cases = index["herald"]
        .as_object()
        .expect("agent herald in index.json");
    cases
        .iter()
        .map(|(case, result)| {
            let of = |key: &str| result[key].as_str().unwrap_or("?").to_owned();
            (
                case.clone(),
                format!("{}/{}", of("behavior"), of("behaviorClose")),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_fuzzingclient_matches_expected_results() {
    let wstest = tokio::task::spawn_blocking(wstest).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/echo", get(upgrade_echo))
        .with_state(Arc::new(suite_config()));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let work = std::env::temp_dir().join(format!("herald-autobahn-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let spec = serde_json::json!({
        "outdir": work.join("reports"),
        "servers": [{"agent": "herald", "url": format!("ws://{addr}/echo")}],
        "cases": ["*"],
        "exclude-cases": EXCLUDED,
        "exclude-agent-cases": {},
    });
    std::fs::write(work.join("spec.json"), spec.to_string()).unwrap();
    let run = {
        let work = work.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(&wstest)
                .args(["-m", "fuzzingclient", "-s", "spec.json"])
                .env("PYTHONUSERBASE", prefix())
                .current_dir(&work)
                .output()
                .expect("run wstest")
        })
    };
    let output = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("wstest finished within 10 minutes")
        .unwrap();
    assert!(
        output.status.success(),
        "wstest failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let index = std::fs::read_to_string(work.join("reports/index.json")).unwrap();
    let got = outcomes(&serde_json::from_str(&index).unwrap());
    let _ = std::fs::remove_dir_all(&work);

    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for outcome in got.values() {
        *tally.entry(outcome.as_str()).or_default() += 1;
    }
    println!(
        "autobahn: {} cases (excluded {EXCLUDED:?}): {tally:?}",
        got.len()
    );

    let expected_path = autobahn_dir().join("expected.json");
    if std::env::var_os("HERALD_AUTOBAHN_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&got).unwrap();
        std::fs::write(&expected_path, text + "\n").unwrap();
        return;
    }
    let expected: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&expected_path).unwrap()).unwrap();
    let differ: Vec<String> = expected
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|case| expected.get(*case) != got.get(*case))
        .map(|case| {
            format!(
                "{case}: expected {:?}, got {:?}",
                expected.get(case),
                got.get(case)
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "Autobahn results differ from autobahn/expected.json:\n{}",
        differ.join("\n")
    );
}
