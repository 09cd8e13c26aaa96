//! The file-tail connector on real files: plain lines and envelopes, a partial last line held
//! for its newline, long lines skipped and counted; and 100,000 lines across three rename
//! rotations, a copy-truncate and a Herald restart, each delivered once, in order.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::support::{collect, start_with, tally, wait_for, Client, Gateway};

fn section(path: &Path, extra: &str) -> String {
    format!(
        "[[file_tail]]\npath = \"{}\"\nchannels = [\"logs\"]\npoll_interval = \"100ms\"\n{extra}",
        path.display()
    )
}

fn append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append")
}

async fn reader(gw: &Gateway, channels: &[&str]) -> Client {
    let mut client = gw.client("reader").await;
    for channel in channels {
        let reply = client
            .request(json!({"op": "join", "channel": channel}))
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
    client
}

#[tokio::test]
async fn lines_envelopes_partial_and_long_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let mut file = append(&path);
    file.write_all(b"written before Herald: not read\n")
        .unwrap();
    let gw = start_with(&[], Some(&section(&path, "max_line_bytes = 100\n"))).await;
    gw.wait_readyz(200).await;
    let mut client = reader(&gw, &["logs", "chat"]).await;

    file.write_all(b"hello world\n").unwrap();
    let event = client.event().await;
    assert_eq!(
        (event["event"].clone(), event["data"].clone()),
        (json!("line"), json!("hello world"))
    );
    file.write_all(b"{\"event\": \"E\", \"channels\": [\"chat\"], \"data\": 1}\n")
        .unwrap();
    let event = client.event().await;
    assert_eq!(event["event"], "E", "{event}");
    assert!(event["via"].get("chat").is_some(), "{event}");

    file.write_all(b"partial").unwrap();
    client.expect_nothing(Duration::from_millis(500)).await;
    file.write_all(b" end\n").unwrap();
    assert_eq!(client.event().await["data"], "partial end");

    file.write_all(&[b'x'; 300]).unwrap();
    file.write_all(b"\nafter\n").unwrap();
    assert_eq!(
        client.event().await["data"],
        "after",
        "the long line is skipped"
    );
    let metrics = gw.metrics().await;
    let name = format!("file_tail:{}", path.display());
    assert!(
        metrics.contains(&format!(
            "herald_connector_rejected_total{{connector=\"{name}\",reason=\"too_long\"}} 1"
        )),
        "{metrics}"
    );
    let (_, info) = gw.get("/api/info").await;
    assert_eq!(info["connectors"][&name], "connected", "{info}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_tail_loses_nothing_across_rotations_and_a_restart() {
    const TOTAL: usize = 100_000;
    const CHUNK: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let rules = "client_queue = 200000\nclient_queue_bytes = 200000000\n\
                 recovery_max_events = 200000\nrecovery_max_bytes = 200000000\n\
                 [[channels]]\npattern = \"logs\"\nhistory_size = 200000\nhistory_max_bytes = 200000000\n";
    let config = format!("{rules}{}", section(&path, "from_start = true\n"));
    std::fs::File::create(&path).unwrap();

    let first = start_with(&[], Some(&config)).await;
    first.wait_readyz(200).await;
    let seen = Arc::new(Mutex::new(Vec::with_capacity(TOTAL)));
    let count = Arc::new(AtomicUsize::new(0));
    let n_of = |data: &serde_json::Value| data.as_str().and_then(|s| s.parse().ok());
    let mut client = reader(&first, &["logs"]).await;
    let mut reading = Some({
        let (seen, count) = (seen.clone(), count.clone());
        tokio::spawn(async move {
            collect(&mut client, &seen, &count, TOTAL, n_of).await;
            client
        })
    });
    let mut first = Some(first);

    let mut file = append(&path);
    let mut second = None;
    let mut rotations = 0;
    let write_chunk = |file: &mut std::fs::File, from: usize| {
        let text: String = (from..from + CHUNK).map(|n| format!("{n}\n")).collect();
        file.write_all(text.as_bytes()).unwrap();
    };
    for from in (0..TOTAL).step_by(CHUNK) {
        match from {
            // Rename rotation: the old file is renamed away, a new one takes its name. Herald
            // follows files by name, so it must have seen the current file once (read one
            // line of it) before it goes; it may still have thousands of lines to read there.
            20_000 | 40_000 | 80_000 => {
                wait_for(&count, from - 19_999).await;
                rotations += 1;
                std::fs::rename(&path, dir.path().join(format!("app.log.{rotations}"))).unwrap();
                file = append(&path);
            }
            // Copy-truncate: what was copied must have been read (the rotation's own race).
            50_000 => {
                wait_for(&count, from).await;
                std::fs::copy(&path, dir.path().join("app.log.copied")).unwrap();
                file.set_len(0).unwrap();
            }
            // Herald stops with lines unread; more are written while it is down.
            60_000 => {
                if let (Some(gw), Some(reading)) = (first.take(), reading.take()) {
                    gw.stop().await;
                    drop(reading.await.unwrap());
                }
            }
            70_000 => {
                let gw = start_with(&[], Some(&config)).await;
                gw.wait_readyz(200).await;
                let mut client = gw.client("reader").await;
                let reply = client
                    .request(json!({"op": "join", "channel": "logs", "since": {"offset": 0}}))
                    .await;
                assert_eq!(reply["ok"], true, "{reply}");
                let (seen, count) = (seen.clone(), count.clone());
                let reading = tokio::spawn(async move {
                    collect(&mut client, &seen, &count, TOTAL, n_of).await;
                    client
                });
                second = Some((gw, reading));
            }
            _ => {}
        }
        write_chunk(&mut file, from);
        tokio::task::yield_now().await;
    }
    let (gw, reading) = second.expect("Herald started again");
    let mut client = reading.await.unwrap();
    client.expect_nothing(Duration::from_millis(300)).await;
    let seen = seen.lock().unwrap().clone();
    let faults = format!("rename rotations {rotations}, copy-truncates 1, Herald restarts 1");
    let verdict = tally("file tail", TOTAL, &seen, &faults);
    assert_eq!(verdict, (0, 0, 0), "lost, duplicated, out of order");
    gw.stop().await;
}
