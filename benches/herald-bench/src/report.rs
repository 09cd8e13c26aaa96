//! Reports: `results.json` and `report.md` per run folder, and the Herald/Socket.IO ratios.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::client::Kind;
use crate::scenario::{Better, RunResult};
use crate::sys::Machine;

#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub date: String,
    pub machine: Machine,
    pub commit: String,
    pub command: String,
    pub node: String,
}

#[derive(Serialize)]
struct Doc<'a> {
    meta: &'a Meta,
    runs: &'a [RunResult],
    ratios: Vec<Ratio>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ratio {
    pub label: String,
    pub key: String,
    pub unit: String,
    pub herald: f64,
    pub socketio: f64,
    /// herald / socketio
    pub ratio: f64,
    pub herald_better: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Figures compared in the ratio table (the rest stay in results.json). Lost/duplicated are
/// in the main table: a ratio of zeros says nothing.
const HEADLINE: &[&str] = &[
    "deliveries_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "rss_per_conn_kib",
    "server_rss_after_mib",
    "server_cpu_s",
    "connect_per_s",
    "connect_p99_ms",
    "recover_ms",
    "reconnect_per_s",
];

/// Unit, direction, Herald's values, Socket.IO's values of one figure.
type Sides = (String, Better, Vec<f64>, Vec<f64>);

/// Herald/Socket.IO per figure, over the median of each side's rounds.
pub fn ratios(runs: &[RunResult]) -> Vec<Ratio> {
    // (label, key) -> (unit, better, herald values, socketio values); label order kept.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut m: BTreeMap<(String, String), Sides> = BTreeMap::new();
    for r in runs {
        for f in &r.figures {
            if f.better == Better::Info || !HEADLINE.contains(&f.key.as_str()) {
                continue;
            }
            let k = (r.label.clone(), f.key.clone());
            let e = m.entry(k.clone()).or_insert_with(|| {
                order.push(k.clone());
                (f.unit.clone(), f.better, Vec::new(), Vec::new())
            });
            match r.target {
                Kind::Herald => e.2.push(f.value),
                Kind::SocketIo => e.3.push(f.value),
            }
        }
    }
    let mut out = Vec::new();
    for k in order {
        let (unit, better, h, s) = &m[&k];
        if h.is_empty() || s.is_empty() {
            continue;
        }
        let (h, s) = (median(h.clone()), median(s.clone()));
        let ratio = if s != 0.0 {
            h / s
        } else if h == 0.0 {
            1.0
        } else {
            f64::INFINITY
        };
        let herald_better = match better {
            Better::Higher => h >= s,
            Better::Lower => h <= s,
            Better::Info => true,
        };
        out.push(Ratio {
            label: k.0,
            key: k.1,
            unit: unit.clone(),
            herald: h,
            socketio: s,
            ratio,
            herald_better,
        });
    }
    out
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if !v.is_finite() => "∞".into(),
        Some(0.0) => "0".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

pub fn markdown(meta: &Meta, runs: &[RunResult]) -> String {
    let mut s = String::new();
    let m = &meta.machine;
    let _ = writeln!(s, "# herald-bench results\n");
    let _ = writeln!(
        s,
        "- date: {}\n- machine: {} cores, {} MiB RAM, {}, Linux {}, RLIMIT_NOFILE {}\n- commit: {}\n- node: {}\n- command: `{}`\n",
        meta.date, m.nproc, m.mem_total_mib, m.cpu_model, m.kernel, m.nofile_limit, meta.commit, meta.node, meta.command
    );
    let _ = writeln!(
        s,
        "Load generator and server share the machine (CPU % of one core; 200 % = both). \
         Latency is publish (payload stamped just before the HTTP request) → subscriber receive; \
         in `fanout`/`broadcast` the publishers keep at most 4 events outstanding (closed loop: \
         the next publish waits until all but 4 events' deliveries arrived), so those latencies \
         are latency at saturation. \
         RSS/conn = (server RSS with all clients identified − RSS before) / clients.\n"
    );
    let _ = writeln!(
        s,
        "| run | target | ok | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | lost | dup | ooo | RSS/conn KiB | connect/s | server CPU % | harness CPU % |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in runs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            r.target,
            if r.ok { "yes" } else { "**NO**" },
            num(r.get("deliveries_per_s")),
            num(r.get("p50_ms")),
            num(r.get("p99_ms")),
            num(r.get("p999_ms")),
            num(r.get("max_ms")),
            num(r.get("lost")),
            num(r.get("duplicated")),
            num(r.get("out_of_order")),
            num(r.get("rss_per_conn_kib")),
            num(r.get("connect_per_s")),
            num(r.get("server_cpu_pct")),
            num(r.get("harness_cpu_pct")),
        );
    }
    for (scenario, columns) in EXTRA {
        extra_table(&mut s, runs, scenario, columns);
    }
    transports(&mut s, runs);
    let rs = ratios(runs);
    if !rs.is_empty() {
        let _ = writeln!(
            s,
            "\n## Herald / Socket.IO\n\nRatio = Herald ÷ Socket.IO (medians over rounds). ✓ = Herald better or equal.\n"
        );
        let _ = writeln!(s, "| run | figure | Herald | Socket.IO | ratio | |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---|");
        for r in rs {
            let _ = writeln!(
                s,
                "| {} | {} ({}) | {} | {} | {} | {} |",
                r.label,
                r.key,
                r.unit,
                num(Some(r.herald)),
                num(Some(r.socketio)),
                num(Some(r.ratio)),
                if r.herald_better { "✓" } else { "✗" }
            );
        }
    }
    let noted: Vec<&RunResult> = runs.iter().filter(|r| !r.notes.is_empty()).collect();
    if !noted.is_empty() {
        let _ = writeln!(s, "\n## Notes\n");
        for r in noted {
            for n in &r.notes {
                let _ = writeln!(s, "- {} / {}: {}", r.label, r.target, n.replace('\n', " "));
            }
        }
    }
    s
}

/// Scenarios whose own figures get a table of their own: (scenario, [(column, figure key)]).
const EXTRA: &[(&str, &[(&str, &str)])] = &[
    (
        "cluster-fanout",
        &[
            ("nodes", "nodes"),
            ("deliveries/s", "deliveries_per_s"),
            ("publish ev/s", "publish_events_per_s"),
            ("p50 ms", "p50_ms"),
            ("p99 ms", "p99_ms"),
            ("lost", "lost"),
            ("dup", "duplicated"),
            ("ooo", "out_of_order"),
            ("Herald CPU % (all nodes)", "server_cpu_pct"),
            ("nats-server CPU %", "nats_cpu_pct"),
            ("Herald CPU µs/event", "server_cpu_us_per_event"),
        ],
    ),
    (
        "recover",
        &[
            ("recovered sessions", "recovered_sessions"),
            ("recover ms", "recover_ms"),
            ("reconnect/s", "reconnect_per_s"),
        ],
    ),
    (
        "reconnect-storm",
        &[
            ("clients", "clients"),
            ("server up ms", "server_up_ms"),
            ("all back ms", "all_back_ms"),
            ("reconnect/s", "reconnect_per_s"),
            ("refused (ramp)", "refused_ramp"),
            ("retries", "retries"),
            ("never back", "never_back"),
            ("re-ident p99 ms", "reident_p99_ms"),
            ("lost after", "lost"),
        ],
    ),
    (
        "soak",
        &[
            ("RSS start MiB", "rss_start_mib"),
            ("RSS end MiB", "rss_end_mib"),
            ("bound MiB", "rss_bound_mib"),
            ("within bound", "rss_within_bound"),
            ("p50 ms", "p50_ms"),
            ("p99 ms", "p99_ms"),
            ("joins", "joins"),
            ("leaves", "leaves"),
            ("reconnects", "reconnects"),
            ("recover failed", "recover_failed"),
            ("lost", "lost"),
            ("dup", "duplicated"),
            ("ooo", "out_of_order"),
        ],
    ),
    (
        "chaos",
        &[
            ("frames tried", "frames_tried"),
            ("abusive conns", "abusive_connections"),
            ("cut", "abusive_cut"),
            ("crashes", "crashes"),
            ("readyz", "readyz_ok"),
            ("calm p99 ms", "calm_p99_ms"),
            ("chaos p99 ms", "chaos_p99_ms"),
            ("p99 ratio", "p99_ratio"),
            ("lost calm", "calm_lost"),
            ("lost chaos", "chaos_lost"),
        ],
    ),
];

/// One scenario's own figures, a row per run; nothing when it did not run.
fn extra_table(s: &mut String, runs: &[RunResult], scenario: &str, columns: &[(&str, &str)]) {
    let rows: Vec<&RunResult> = runs.iter().filter(|r| r.scenario == scenario).collect();
    if rows.is_empty() {
        return;
    }
    let heads: Vec<&str> = columns.iter().map(|c| c.0).collect();
    let _ = writeln!(s, "\n| {scenario} run | target | {} |", heads.join(" | "));
    let _ = writeln!(s, "|---|---|{}", "---:|".repeat(columns.len()));
    for r in rows {
        let cells: Vec<String> = columns.iter().map(|c| num(r.get(c.1))).collect();
        let _ = writeln!(s, "| {} | {} | {} |", r.label, r.target, cells.join(" | "));
    }
}

/// `fanout-sse-1000` → `fanout-1000`: runs of one scenario and size over any transport.
fn plain_label(r: &RunResult) -> String {
    match r.label.rsplit_once('-') {
        Some((_, size)) => format!("{}-{size}", r.scenario),
        None => r.label.clone(),
    }
}

/// The same scenario and size over several transports, side by side.
fn transports(s: &mut String, runs: &[RunResult]) {
    let mut groups: BTreeMap<String, Vec<&RunResult>> = BTreeMap::new();
    for r in runs {
        groups.entry(plain_label(r)).or_default().push(r);
    }
    groups.retain(|_, g| g.iter().any(|r| r.transport != g[0].transport));
    if groups.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n## By transport\n\nThe same scenario and size over each transport (`ws` = WebSocket, \
         `longpoll` = Herald's `/lp` or Engine.IO `polling`, `sse` = Herald's `/sse`).\n"
    );
    let _ = writeln!(
        s,
        "| run | target | transport | deliveries/s | p50 ms | p99 ms | lost | dup | ooo | RSS/conn KiB | server CPU % |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (label, mut g) in groups {
        g.sort_by_key(|r| (r.target, r.transport));
        for r in g {
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.target,
                r.transport,
                num(r.get("deliveries_per_s")),
                num(r.get("p50_ms")),
                num(r.get("p99_ms")),
                num(r.get("lost")),
                num(r.get("duplicated")),
                num(r.get("out_of_order")),
                num(r.get("rss_per_conn_kib")),
                num(r.get("server_cpu_pct")),
            );
        }
    }
}

pub fn write(out: &Path, meta: &Meta, runs: &[RunResult]) -> std::io::Result<String> {
    std::fs::create_dir_all(out)?;
    let doc = Doc {
        meta,
        runs,
        ratios: ratios(runs),
    };
    let json = serde_json::to_string_pretty(&doc).map_err(std::io::Error::other)?;
    std::fs::write(out.join("results.json"), json)?;
    let md = markdown(meta, runs);
    std::fs::write(out.join("report.md"), &md)?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(target: Kind, dps: f64, p99: f64) -> RunResult {
        let mut r = RunResult::new("fanout", "fanout-10".into(), target, json!({}));
        r.fig("deliveries_per_s", dps, "msg/s", Better::Higher);
        r.fig("p99_ms", p99, "ms", Better::Lower);
        r.fig("harness_cpu_pct", 50.0, "%", Better::Info);
        r
    }

    #[test]
    fn ratios_use_medians_and_direction() {
        let runs = vec![
            run(Kind::Herald, 100.0, 1.0),
            run(Kind::SocketIo, 20.0, 10.0),
            run(Kind::Herald, 300.0, 3.0),
            run(Kind::SocketIo, 40.0, 2.0),
        ];
        let r = ratios(&runs);
        assert_eq!(r.len(), 2, "info figures get no ratio");
        assert_eq!(r[0].key, "deliveries_per_s");
        assert_eq!(
            (r[0].herald, r[0].socketio, r[0].ratio),
            (200.0, 30.0, 200.0 / 30.0)
        );
        assert!(r[0].herald_better);
        assert_eq!((r[1].herald, r[1].socketio), (2.0, 6.0));
        assert!(r[1].herald_better);
    }

    #[test]
    fn markdown_has_tables() {
        let meta = Meta {
            date: "d".into(),
            machine: crate::sys::machine(1024),
            commit: "abc".into(),
            command: "x".into(),
            node: "v20".into(),
        };
        let md = markdown(
            &meta,
            &[run(Kind::Herald, 1.0, 2.0), run(Kind::SocketIo, 1.0, 2.0)],
        );
        assert!(md.contains("| fanout-10 | herald | yes |"));
        assert!(md.contains("## Herald / Socket.IO"));
        assert!(
            !md.contains("## By transport"),
            "one transport: no such table"
        );
        let mut sse = run(Kind::Herald, 3.0, 4.0);
        sse.label = "fanout-sse-10".into();
        sse.transport = crate::client::Transport::Sse;
        let md = markdown(&meta, &[run(Kind::Herald, 1.0, 2.0), sse]);
        assert!(md.contains("| fanout-10 | herald | sse | 3.00 |"), "{md}");
        assert!(md.contains("| fanout-10 | herald | ws | 1.00 |"), "{md}");
        assert_eq!(num(Some(1234.5)), "1234");
        assert_eq!(num(None), "–");
    }
}
