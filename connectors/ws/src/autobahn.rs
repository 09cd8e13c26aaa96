//! Autobahn|Testsuite's fuzzing client against Herald's WebSocket stack: its handshake,
//! tungstenite with the limits `/ws` sets ([`limited`]), permessage-deflate, and the close
//! codes it sends on a breach ([`read_failed`]). `/ws` speaks Herald's protocol, not echo, so
//! the suite runs against echo routes built from the same parts: `herald` without
//! compression, `herald-deflate` with it (context takeover allowed, so the suite's offers
//! decide). Its results must match `autobahn/expected.json`; set `HERALD_AUTOBAHN_BLESS=1`
//! to rewrite that file after a deliberate change (with `HERALD_AUTOBAHN_FULL=1`).
//!
//! The compression cases send a thousand messages each, of up to 128 KiB, and the suite's
//! Python takes some seven minutes over all of them, so by default the large sizes (4 KiB
//! and up, unfragmented or fragmented) are left out; `HERALD_AUTOBAHN_FULL=1` runs everything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::*;

/// The compression cases, for the agent that offers compression.
const COMPRESSION: &[&str] = &["12.*", "13.*"];

/// The compression cases of a default run: in each group, the five smallest message sizes
/// (16 B to 4 KiB) and the smallest fragmented one.
const QUICK_COMPRESSION_CASES: [u32; 6] = [1, 2, 3, 4, 5, 11];

/// The compression cases left out of a default run, as the suite's patterns.
fn left_out() -> Vec<String> {
    if std::env::var_os("HERALD_AUTOBAHN_FULL").is_some() {
        return Vec::new();
    }
    let groups = (1..=5)
        .map(|g| format!("12.{g}"))
        .chain((1..=7).map(|g| format!("13.{g}")));
    groups
        .flat_map(|group| {
            (1..=18)
                .filter(|case| !QUICK_COMPRESSION_CASES.contains(case))
                .map(move |case| format!("{group}.{case}"))
        })
        .collect()
}

/// Herald's defaults, but for the message size limit: raised to the suite's largest message
/// (16 MiB, in 9.*), so that the stack's handling of large and many-fragment messages is
/// what gets tested. Refusing a message past the limit with 4009 is Herald's own rule, tested
/// against `/ws` (`tests/it/bounds.rs`).
fn suite_config(compression: bool) -> WsConfig {
    WsConfig {
        max_message_size: 16 << 20,
        // What Herald derives from that limit (`src/lib.rs`): four messages.
        max_write_buffer: 64 << 20,
        ping_interval: Duration::from_secs(25),
        idle_timeout: Duration::from_secs(60),
        compression: CompressionSettings {
            enabled: compression,
            context_takeover: true,
        },
    }
}

async fn upgrade_echo(State(config): State<Arc<WsConfig>>, mut request: Request) -> Response {
    let upgrade = match Upgrade::check(&mut request, &config.compression) {
        Ok(upgrade) => upgrade,
        Err(refused) => return refused.into_response(),
    };
    let (response, socket) = upgrade.accept(limited(&config));
    tokio::spawn(async move {
        if let Some((socket, compressor)) = socket.await {
            echo(socket, compressor, config).await;
        }
    });
    response
}

/// Echoes data messages (text compressed as `serve` sends it); ends a connection as `serve`
/// does.
async fn echo(mut socket: Socket, mut compressor: Option<Compressor>, config: Arc<WsConfig>) {
    let end = loop {
        let echoed = match socket.next().await {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_))))
                if message.len() > config.max_message_size =>
            {
                break End::Disconnect(Disconnect::new(4009, "frame too large", true));
            }
            Some(Ok(Message::Text(text))) => match &mut compressor {
                Some(compressor) => compressor.text(Bytes::from(text)),
                None => Message::Text(text),
            },
            Some(Ok(message @ Message::Binary(_))) => message,
            // Reading on after a close lets tungstenite flush its close reply.
            Some(Ok(_)) => continue,
            None => return,
            Some(Err(err)) => break read_failed(&err),
        };
        if socket.send(echoed).await.is_err() {
            return;
        }
    };
    let frame = match end {
        End::Failed(code, why) => close(code, why),
        End::Disconnect(disconnect) => close(disconnect.code, &disconnect.reason),
        End::Idle | End::Gone => return,
    };
    let _ = timeout(CLOSE_TIMEOUT, async {
        let _ = socket.send(frame).await;
        while let Some(Ok(message)) = socket.next().await {
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

/// "agent case" → "behavior/behaviorClose" from the suite's `index.json`.
fn outcomes(index: &Value) -> BTreeMap<String, String> {
    let agents = index.as_object().expect("agents in index.json");
    agents
        .iter()
        .flat_map(|(agent, cases)| {
            let cases = cases.as_object().expect("cases of an agent");
            cases.iter().map(move |(case, result)| {
                let of = |key: &str| result[key].as_str().unwrap_or("?").to_owned();
                (
                    format!("{agent} {case}"),
                    format!("{}/{}", of("behavior"), of("behaviorClose")),
                )
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_fuzzingclient_matches_expected_results() {
    let wstest = tokio::task::spawn_blocking(wstest).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let plain = Router::new()
        .route("/echo", get(upgrade_echo))
        .with_state(Arc::new(suite_config(false)));
    let deflate = Router::new()
        .route("/echo-deflate", get(upgrade_echo))
        .with_state(Arc::new(suite_config(true)));
    let app = plain.merge(deflate);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let work = std::env::temp_dir().join(format!("herald-autobahn-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let spec = serde_json::json!({
        "outdir": work.join("reports"),
        "servers": [
            {"agent": "herald", "url": format!("ws://{addr}/echo")},
            {"agent": "herald-deflate", "url": format!("ws://{addr}/echo-deflate")},
        ],
        "cases": ["*"],
        "exclude-cases": left_out(),
        "exclude-agent-cases": {"herald": COMPRESSION},
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
    println!("autobahn: {} agent cases: {tally:?}", got.len());

    let expected_path = autobahn_dir().join("expected.json");
    let left_out = left_out();
    if std::env::var_os("HERALD_AUTOBAHN_BLESS").is_some() {
        assert!(
            left_out.is_empty(),
            "bless a full run: HERALD_AUTOBAHN_FULL=1"
        );
        let text = serde_json::to_string_pretty(&got).unwrap();
        std::fs::write(&expected_path, text + "\n").unwrap();
        return;
    }
    let ran = |key: &String| {
        let case = key.split(' ').nth(1).unwrap_or_default();
        !left_out.iter().any(|excluded| excluded == case)
    };
    let mut expected: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&expected_path).unwrap()).unwrap();
    expected.retain(|key, _| ran(key));
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
