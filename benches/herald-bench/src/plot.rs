//! SVG plots (plotters, SVG backend only: no font or system libraries needed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::client::{Kind, Transport};
use crate::scenario::RunResult;

#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {msg}")]
pub struct PlotError {
    path: PathBuf,
    msg: String,
}

fn err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

fn color(k: Kind) -> RGBColor {
    match k {
        Kind::Herald => RGBColor(31, 119, 180),
        Kind::SocketIo => RGBColor(214, 39, 40),
    }
}

type Series = BTreeMap<Kind, Vec<(f64, f64)>>;

fn targets(runs: &[RunResult]) -> Vec<Kind> {
    let mut t: Vec<Kind> = runs.iter().map(|r| r.target).collect();
    t.sort_by_key(|k| *k as u8);
    t.dedup();
    t
}

/// 1500 → "1.5k", 2000000 → "2M", 12.5 → "12.5": axis labels people read at a glance.
fn compact(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

/// A line per target through (x, y) points, linear axes, y from 0.
fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &Series,
) -> Result<(), PlotError> {
    let pts = series.values().flatten();
    let x_max = pts.clone().map(|p| p.0).fold(0.0, f64::max) * 1.1 + 1.0;
    let y_max = pts.map(|p| p.1).fold(0.0, f64::max) * 1.15 + 1e-9;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| err(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| compact(*v))
        .y_label_formatter(&|v| compact(*v))
        .draw()
        .map_err(|e| err(path, e))?;
    let mut sorted = series.clone();
    for pts in sorted.values_mut() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    draw_series(&mut chart, &sorted, path)?;
    root.present().map_err(|e| err(path, e))
}

/// Latency percentiles of one run label: p50, p99, p99.9, max on a log axis, a line per target.
fn latency(path: &Path, label: &str, series: &Series) -> Result<(), PlotError> {
    let ys = series.values().flatten().map(|p| p.1);
    let y_max = ys.clone().fold(0.001, f64::max) * 2.0;
    let y_min = ys.fold(f64::INFINITY, f64::min).clamp(0.001, y_max / 10.0) / 2.0;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{label}: publish → receive latency"),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.3f64..3.3f64, (y_min..y_max).log_scale())
        .map_err(|e| err(path, e))?;
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| {
            ["p50", "p99", "p99.9", "max"]
                .get(x.round() as usize)
                .filter(|_| (x - x.round()).abs() < 0.01)
                .map(|s| s.to_string())
                .unwrap_or_default()
        })
        .y_desc("ms (log)")
        .draw()
        .map_err(|e| err(path, e))?;
    draw_series(&mut chart, series, path)?;
    root.present().map_err(|e| err(path, e))
}

/// A line with point markers per target, in the target's colour, and the legend box.
fn draw_series<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: &Series,
    path: &Path,
) -> Result<(), PlotError>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (k, pts) in series {
        let c = color(*k);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| err(path, e))?
            .label(k.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(|e| err(path, e))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(path, e))
}

fn param(r: &RunResult, key: &str) -> Option<f64> {
    r.params.get(key).and_then(|v| v.as_f64())
}

/// Writes every plot the runs have data for; returns the files written.
pub fn all(out: &Path, runs: &[RunResult]) -> Result<Vec<PathBuf>, PlotError> {
    let mut written = Vec::new();
    // Latency per run label (the last round of each target).
    let mut labels: Vec<&str> = runs
        .iter()
        .filter(|r| r.latency.is_some_and(|l| l.samples > 0))
        .map(|r| r.label.as_str())
        .collect();
    labels.dedup();
    labels.sort();
    labels.dedup();
    for label in labels {
        let mut s = Series::new();
        for r in runs.iter().filter(|r| r.label == label) {
            if let Some(l) = r.latency.filter(|l| l.samples > 0) {
                s.insert(
                    r.target,
                    vec![
                        (0.0, l.p50_ms),
                        (1.0, l.p99_ms),
                        (2.0, l.p999_ms),
                        (3.0, l.max_ms),
                    ],
                );
            }
        }
        let p = out.join(format!("latency-{label}.svg"));
        latency(&p, label, &s)?;
        written.push(p);
    }
    // Deliveries/s against subscribers, for fan-out runs; WebSocket runs only, so a line
    // joins like with like (other transports have their latency plots and the report).
    let mut fan = Series::new();
    let mut mem = Series::new();
    for k in targets(runs) {
        for r in runs
            .iter()
            .filter(|r| r.target == k && r.transport == Transport::Ws)
        {
            if r.scenario == "fanout" {
                if let (Some(n), Some(d)) = (param(r, "subscribers"), r.get("deliveries_per_s")) {
                    fan.entry(k).or_default().push((n, d));
                }
            }
            if r.scenario == "idle" {
                if let (Some(n), Some(m)) = (r.get("connections"), r.get("rss_per_conn_kib")) {
                    mem.entry(k).or_default().push((n, m));
                }
            }
        }
    }
    if !fan.is_empty() {
        let p = out.join("fanout-deliveries.svg");
        lines(
            &p,
            "fan-out: deliveries per second",
            "subscribers",
            "deliveries/s",
            &fan,
        )?;
        written.push(p);
    }
    if !mem.is_empty() {
        let p = out.join("idle-memory.svg");
        lines(
            &p,
            "server RSS per idle identified connection",
            "connections",
            "KiB per connection",
            &mem,
        )?;
        written.push(p);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_labels() {
        assert_eq!(compact(0.0), "0");
        assert_eq!(compact(12.5), "12.5");
        assert_eq!(compact(1500.0), "1.5k");
        assert_eq!(compact(500000.0), "500k");
        assert_eq!(compact(2_000_000.0), "2M");
    }
}
