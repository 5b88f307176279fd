//! PNG charts, one per scenario × policy: latency (p50, p99) and per-backend share over time in 0.5 s buckets,
//! event times as grey lines; for `lateral` also its first coordinator's weights over time (solid), the ideal
//! shares the convergence time is measured against (thin), and a tick per decision record.
//!
//! plotters draws text through system fonts, which a fresh machine may not have; the charts therefore use no
//! plotters text at all, and labels are drawn pixel by pixel from the public-domain 8×8 bitmap font of the
//! `font8x8` crate.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::run::{BUCKET_S, RunResult};
use super::scenario::Scenario;

const WIDTH: u32 = 1100;
const PANEL: u32 = 300;
const LEFT: u32 = 70;
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
const GRID: RGBColor = RGBColor(225, 225, 225);
const EVENT: RGBColor = RGBColor(150, 150, 150);

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Draws `text` with its top-left corner at pixel (`x`, `y`) of the root area, 8×8 glyphs scaled by `scale`.
fn text(root: &Area<'_>, x: i32, y: i32, s: &str, colour: &RGBColor, scale: i32) {
    for (k, c) in s.chars().enumerate() {
        let code = if c.is_ascii() {
            c as usize
        } else {
            '?' as usize
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let _ = root.draw_pixel(
                                (
                                    x + (k as i32 * 8 + col) * scale + dx,
                                    y + row as i32 * scale + dy,
                                ),
                                colour,
                            );
                        }
                    }
                }
            }
        }
    }
}

fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

type Series = Vec<(String, RGBColor, u32, Vec<(f64, f64)>)>;

/// One panel: a frame, grid, event lines, series, a title and y/x tick labels.
#[allow(clippy::too_many_arguments)]
fn panel(
    root: &Area<'_>,
    area: &Area<'_>,
    title: &str,
    duration: f64,
    y_max: f64,
    series: &Series,
    events: &[f64],
    ticks: &[(f64, usize)],
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut chart = ChartBuilder::on(area)
        .margin_left(LEFT)
        .margin_right(20)
        .margin_top(28)
        .margin_bottom(22)
        .build_cartesian_2d(0f64..duration, 0f64..y_max)
        .map_err(|e| err(&e))?;
    let x_step = nice_max(duration / 10.0);
    let mut x = 0.0;
    while x <= duration + 1e-9 {
        chart
            .draw_series(LineSeries::new(vec![(x, 0.0), (x, y_max)], GRID))
            .map_err(|e| err(&e))?;
        let (px, py) = chart.backend_coord(&(x, 0.0));
        let label = if x_step < 1.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.0}")
        };
        text(root, px - 4 * label.len() as i32, py + 6, &label, &BLACK, 1);
        x += x_step;
    }
    for k in 0..=4 {
        let y = y_max * f64::from(k) / 4.0;
        chart
            .draw_series(LineSeries::new(vec![(0.0, y), (duration, y)], GRID))
            .map_err(|e| err(&e))?;
        let (px, py) = chart.backend_coord(&(0.0, y));
        let label = if y_max <= 1.0 {
            format!("{:.0}%", y * 100.0)
        } else {
            format!("{y:.0}")
        };
        text(
            root,
            px - 8 - 8 * label.len() as i32,
            py - 4,
            &label,
            &BLACK,
            1,
        );
    }
    for &t in events {
        chart
            .draw_series(LineSeries::new(
                vec![(t, 0.0), (t, y_max)],
                EVENT.stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
    }
    for (_, c, width, points) in series {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|(x, y)| (*x, y.min(y_max))),
                c.stroke_width(*width),
            ))
            .map_err(|e| err(&e))?;
    }
    for (t, i) in ticks {
        chart
            .draw_series(LineSeries::new(
                vec![(*t, y_max * 0.94), (*t, y_max)],
                colour(*i).stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
    }
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(0.0, 0.0), (duration, y_max)],
            BLACK.stroke_width(1),
        )))
        .map_err(|e| err(&e))?;
    let (px, py) = chart.backend_coord(&(0.0, y_max));
    text(root, px, py - 22, title, &BLACK, 1);
    let mut lx = px + 8 * title.len() as i32 + 24;
    for (name, c, width, _) in series {
        if *width < 2 {
            continue;
        }
        text(root, lx, py - 22, name, c, 1);
        lx += 8 * name.len() as i32 + 16;
    }
    Ok(())
}

/// Writes `<dir>/<scenario>__<policy>.png`.
pub fn run_chart(dir: &Path, scenario: &Scenario, run: &RunResult) -> Result<(), String> {
    let safe = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    let path = dir.join(format!(
        "{}__{}.png",
        safe(&run.scenario),
        safe(&run.policy)
    ));
    let lateral = !run.weights.is_empty();
    let panels = if lateral { 3 } else { 2 };
    let height = 40 + PANEL * panels;
    let root = BitMapBackend::new(&path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    text(
        &root,
        10,
        10,
        &format!(
            "{} / {}  -  {} requests, {:.2}% ok, p99 {:.1} ms   (x: seconds after traffic start)",
            run.scenario,
            run.policy,
            run.requests,
            100.0 * run.ok as f64 / run.requests.max(1) as f64,
            run.quantile_ms(0.99)
        ),
        &BLACK,
        2,
    );
    let body = root.margin(40, 0, 0, 0);
    let areas = body.split_evenly((panels as usize, 1));
    let duration = scenario.duration_s;
    let mut event_times: Vec<f64> = run.events.iter().map(|e| e.t).collect();
    event_times.dedup_by(|a, b| (*a - *b).abs() < 0.2);
    let mid = |i: usize| (i as f64 + 0.5) * BUCKET_S;

    let p50: Vec<(f64, f64)> = run
        .buckets
        .iter()
        .enumerate()
        .filter(|(_, b)| b.ok + b.errors > 0)
        .map(|(i, b)| (mid(i), b.latency_us.value_at_quantile(0.5) as f64 / 1000.0))
        .collect();
    let p99: Vec<(f64, f64)> = run
        .buckets
        .iter()
        .enumerate()
        .filter(|(_, b)| b.ok + b.errors > 0)
        .map(|(i, b)| (mid(i), b.latency_us.value_at_quantile(0.99) as f64 / 1000.0))
        .collect();
    let y_max = nice_max(p99.iter().map(|(_, y)| *y).fold(1.0, f64::max));
    let latency: Series = vec![
        ("p50".into(), colour(0), 2, p50),
        ("p99".into(), colour(3), 2, p99),
    ];
    panel(
        &root,
        &areas[0],
        "latency ms (by intended send time)",
        duration,
        y_max,
        &latency,
        &event_times,
        &[],
    )?;

    let share: Series = run
        .backends
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let points = run
                .buckets
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let total: u64 = b.per_backend.iter().sum();
                    (mid(i), b.per_backend[k] as f64 / total.max(1) as f64)
                })
                .collect();
            (name.clone(), colour(k), 2, points)
        })
        .collect();
    panel(
        &root,
        &areas[1],
        "share of requests per backend",
        duration,
        1.0,
        &share,
        &event_times,
        &[],
    )?;

    if lateral {
        let mut weights: Series = Vec::new();
        for (k, name) in run.backends.iter().enumerate() {
            let mut points = Vec::new();
            let mut last: Option<f64> = None;
            for (t, w) in &run.weights {
                let t = t.clamp(0.0, duration);
                if let Some(prev) = last {
                    points.push((t, prev)); // a step, not a ramp
                }
                points.push((t, w[k]));
                last = Some(w[k]);
            }
            weights.push((name.clone(), colour(k), 2, points));
            let ideal: Vec<(f64, f64)> = (0..=((duration * 10.0) as usize))
                .map(|i| {
                    let t = i as f64 / 10.0;
                    (t, scenario.ideal_share_at(t)[k])
                })
                .collect();
            weights.push((format!("{name} ideal"), colour(k), 1, ideal));
        }
        let ticks: Vec<(f64, usize)> = run
            .decisions
            .iter()
            .filter(|d| d.t.is_finite() && d.t >= 0.0 && d.t <= duration)
            .filter_map(|d| {
                run.backends
                    .iter()
                    .position(|b| *b == d.endpoint)
                    .map(|i| (d.t, i))
            })
            .collect();
        panel(
            &root,
            &areas[2],
            "lateral weights (thick), ideal (thin), decisions (ticks)",
            duration,
            1.0,
            &weights,
            &event_times,
            &ticks,
        )?;
    }
    root.present()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}
