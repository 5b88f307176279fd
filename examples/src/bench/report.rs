//! The markdown table per scenario and the JSON records (one per scenario × policy).
//!
//! Scenarios with a `[routing]` table add, per variant (JSON fields `hashing`, `zones`, `split`, `null` when
//! the scenario does not exercise the variant or the policy has nothing to report):
//! - **hashing**: key stability (of the keys answered at least twice, the fraction always answered by the
//!   same backend), key affinity (of keyed answers, the fraction from the key's most frequent backend), the
//!   share against the weight share (capacity at the start), and what a Maglev table over those weights
//!   moves when a killed backend leaves, against the theoretical minimum (`measure_disruption`);
//! - **zones**: the fraction of attributed requests served outside the client's zone, overall and between
//!   consecutive event times, and (Lateral's balancer) the zone-mode transitions from `ClientMetrics`, with
//!   the share of time the first client spent spilling (sampled every 50 ms by the harness, since
//!   `ClientMetrics` has only the count) and when it changed mode;
//! - **split** (`lateral` with a dynamic fraction): the dynamic and the static group side by side from
//!   `ClientMetrics::group` (quantiles are upper bounds: the histogram bucket holding them).

use std::fmt::Write as _;

use serde_json::{Value, json};

use lateral_balancer::GroupStats;
use lateral_balancer::hashing::{DEFAULT_TABLE_SIZE, measure_disruption};

use super::run::{BUCKET_S, RunResult, convergence};
use super::scenario::{Action, Scenario};

/// Convergence per mark (mark time, seconds to converge or `None`), and overall: the slowest mark, `None` if
/// any mark never converged.
pub type Convergence = (Vec<(f64, Option<f64>)>, Option<f64>);

/// Convergence of a lateral run; `None` for other policies.
pub fn lateral_convergence(scenario: &Scenario, run: &RunResult) -> Option<Convergence> {
    if run.policy != "lateral" {
        return None;
    }
    let marks = convergence(scenario, &run.weights);
    let overall = marks
        .iter()
        .try_fold(0.0_f64, |acc, (_, c)| c.map(|c| acc.max(c)));
    Some((marks, overall))
}

/// One JSON object for a run.
pub fn json_record(scenario: &Scenario, run: &RunResult) -> Value {
    let share: serde_json::Map<String, Value> = run
        .backends
        .iter()
        .zip(run.share())
        .map(|(n, s)| (n.clone(), json!(s)))
        .collect();
    let conv = lateral_convergence(scenario, run);
    json!({
        "scenario": run.scenario,
        "policy": run.policy,
        "requests": run.requests,
        "ok": run.ok,
        "errors": run.errors,
        "timeouts": run.timeouts,
        "retries": run.retries,
        "p50_ms": run.quantile_ms(0.5),
        "p90_ms": run.quantile_ms(0.9),
        "p99_ms": run.quantile_ms(0.99),
        "p999_ms": run.quantile_ms(0.999),
        "share": share,
        "send_lag_p99_ms": run.send_lag_ms(0.99),
        "harness_saturated": run.harness_saturated(),
        "success_after_fault": fault_success(scenario, run).map(|(ok, n)| json!({"ok": ok, "requests": n, "from_s": first_fault_s(scenario).map(|t| t + 1.0)})),
        "achieved_shares": run.achieved_shares,
        "mean_weights": mean_weights(run),
        "overshoot_points": overshoot(scenario, run).map(|o| o * 100.0),
        "weights": run.weights.iter().map(|(t, w)| json!([t, w])).collect::<Vec<_>>(),
        "convergence_s": conv.as_ref().and_then(|(_, c)| *c),
        "convergence_marks": conv.as_ref().map(|(m, _)| m.iter().map(|(at, c)| json!({"at_s": at, "convergence_s": c})).collect::<Vec<_>>()),
        "hashing": hashing_json(scenario, run),
        "zones": zones_json(scenario, run),
        "split": split_json(run),
    })
}

/// How far lateral's weights swung past their target after the start or a step change: per mark of
/// [`Scenario::convergence_marks`] and endpoint, the target is the capacity share of the scenario's truth
/// ([`Scenario::ideal_share_at`]); a weight that starts above it (below it) and later goes below it (above
/// it) overshot by the largest such excursion. The largest over marks and endpoints, as a share (0.05 = 5
/// points); `None` without weight samples.
pub fn overshoot(scenario: &Scenario, run: &RunResult) -> Option<f64> {
    if run.weights.is_empty() {
        return None;
    }
    let marks = scenario.convergence_marks();
    let mut worst = 0.0_f64;
    for (k, &m) in marks.iter().enumerate() {
        let end = marks.get(k + 1).copied().unwrap_or(scenario.duration_s);
        let points: Vec<&(f64, Vec<f64>)> = run
            .weights
            .iter()
            .filter(|(t, _)| *t >= m && *t < end)
            .collect();
        let Some((t0, w0)) = points.first() else {
            continue;
        };
        let target0 = scenario.ideal_share_at(*t0);
        for i in 0..w0.len() {
            let sign = (w0[i] - target0.get(i).copied().unwrap_or(0.0)).signum();
            for (t, w) in &points {
                let target = scenario.ideal_share_at(*t);
                let past = -sign * (w[i] - target.get(i).copied().unwrap_or(0.0));
                worst = worst.max(past);
            }
        }
    }
    Some(worst)
}

/// When the scenario's first event happens (seconds after traffic start), if it has one.
pub fn first_fault_s(scenario: &Scenario) -> Option<f64> {
    scenario
        .events
        .iter()
        .map(|e| e.at_s)
        .min_by(f64::total_cmp)
}

/// Successes and requests counted from one second after the first fault (`None` without events).
pub fn fault_success(scenario: &Scenario, run: &RunResult) -> Option<(u64, u64)> {
    first_fault_s(scenario).map(|t| run.success_from(t + 1.0))
}

/// The mean of the weights the first client received over the second half of the run (lateral only).
pub fn mean_weights(run: &RunResult) -> Option<Vec<f64>> {
    let end = run.weights.last()?.0;
    let half: Vec<&Vec<f64>> = run
        .weights
        .iter()
        .filter(|(t, _)| *t >= end / 2.0)
        .map(|(_, w)| w)
        .collect();
    let first = half.first()?;
    let mut mean = vec![0.0; first.len()];
    for w in &half {
        for (m, x) in mean.iter_mut().zip(w.iter()) {
            *m += x / half.len() as f64;
        }
    }
    Some(mean)
}

fn percentages(v: &[f64]) -> String {
    v.iter()
        .map(|s| format!("{:.0}%", s * 100.0))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Capacity shares at the start (the weights a key's share should follow).
fn weight_share(scenario: &Scenario) -> Vec<f64> {
    let w = scenario.oracle_weights();
    let total: f64 = w.iter().map(|(_, w)| w).sum();
    w.iter()
        .map(|(_, w)| w / total.max(f64::MIN_POSITIVE))
        .collect()
}

/// Total-variation distance between the measured share and the weight share.
fn share_error(scenario: &Scenario, run: &RunResult) -> f64 {
    weight_share(scenario)
        .iter()
        .zip(run.share())
        .map(|(w, s)| (w - s).abs())
        .sum::<f64>()
        / 2.0
}

/// What a Maglev table over the start weights moves when each killed backend leaves, with the minimum.
fn kill_disruption(scenario: &Scenario) -> Vec<(String, f64, f64)> {
    let before = scenario.oracle_weights();
    let mut killed: Vec<&str> = scenario
        .events
        .iter()
        .filter(|e| matches!(e.action, Action::Kill | Action::Flap { .. }))
        .map(|e| e.backend.as_str())
        .collect();
    killed.dedup();
    killed
        .into_iter()
        .filter_map(|k| {
            let b: Vec<(&str, f64)> = before.iter().map(|(n, w)| (n.as_str(), *w)).collect();
            let a: Vec<(&str, f64)> = b.iter().copied().filter(|(n, _)| *n != k).collect();
            measure_disruption(&b, &a, DEFAULT_TABLE_SIZE)
                .map(|d| (k.to_string(), d.moved, d.minimum))
        })
        .collect()
}

fn hashing_json(scenario: &Scenario, run: &RunResult) -> Value {
    let Some(keys) = run.keys else {
        return Value::Null;
    };
    let weights: serde_json::Map<String, Value> = run
        .backends
        .iter()
        .zip(weight_share(scenario))
        .map(|(n, s)| (n.clone(), json!(s)))
        .collect();
    json!({
        "keys_seen": keys.keys_seen,
        "keys_repeated": keys.keys_repeated,
        "keys_stable": keys.keys_stable,
        "key_stability": keys.stability(),
        "key_affinity": keys.affinity,
        "weight_share": weights,
        "share_error": share_error(scenario, run),
        "table_moved_on_kill": kill_disruption(scenario).iter().map(|(b, moved, min)| json!({"backend": b, "moved": moved, "minimum": min})).collect::<Vec<_>>(),
    })
}

/// The fraction of attributed requests served outside `zone` in buckets `[from, to)`.
fn cross_zone(scenario: &Scenario, run: &RunResult, zone: &str, from: usize, to: usize) -> f64 {
    let remote: Vec<bool> = scenario
        .backends
        .iter()
        .map(|b| b.zone() != Some(zone))
        .collect();
    let (mut all, mut out) = (0u64, 0u64);
    for b in run.buckets.iter().take(to).skip(from) {
        for (n, r) in b.per_backend.iter().zip(&remote) {
            all += n;
            if *r {
                out += n;
            }
        }
    }
    if all == 0 {
        0.0
    } else {
        out as f64 / all as f64
    }
}

/// Phases between consecutive event times: `(from_s, to_s, cross-zone fraction)`.
fn cross_zone_phases(scenario: &Scenario, run: &RunResult, zone: &str) -> Vec<(f64, f64, f64)> {
    let mut cuts: Vec<f64> = scenario
        .events
        .iter()
        .map(|e| e.at_s)
        .filter(|t| *t > 0.0 && *t < scenario.duration_s)
        .collect();
    cuts.sort_by(f64::total_cmp);
    cuts.dedup();
    let mut edges = vec![0.0];
    edges.extend(cuts);
    edges.push(scenario.duration_s);
    edges
        .windows(2)
        .map(|w| {
            let bucket = |t: f64| (t / BUCKET_S).round() as usize;
            (
                w[0],
                w[1],
                cross_zone(scenario, run, zone, bucket(w[0]), bucket(w[1])),
            )
        })
        .collect()
}

/// The fraction of samples in `[from, to)` seconds when the first client was spilling (`None` without
/// samples).
fn spill_time(run: &RunResult, from: f64, to: f64) -> Option<f64> {
    let window: Vec<bool> = run
        .zone_spill_samples
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, s)| *s)
        .collect();
    (!window.is_empty()).then(|| window.iter().filter(|s| **s).count() as f64 / window.len() as f64)
}

/// The times (seconds after traffic start) at which the first client changed zone mode, with the new mode.
fn spill_changes(run: &RunResult) -> Vec<(f64, bool)> {
    let mut out = Vec::new();
    let mut last = false;
    for &(t, s) in &run.zone_spill_samples {
        if s != last {
            out.push((t, s));
            last = s;
        }
    }
    out
}

fn zones_json(scenario: &Scenario, run: &RunResult) -> Value {
    let Some(zone) = scenario.client_zone() else {
        return Value::Null;
    };
    json!({
        "client_zone": zone,
        "cross_zone_fraction": cross_zone(scenario, run, zone, 0, usize::MAX),
        "cross_zone_by_phase": cross_zone_phases(scenario, run, zone).iter().map(|(a, b, f)| json!({"from_s": a, "to_s": b, "cross_zone_fraction": f})).collect::<Vec<_>>(),
        "zone_transitions": run.zone_transitions,
        "zone_spilling_at_end": run.zone_spilling_at_end,
        "spill_time_fraction": spill_time(run, 0.0, f64::INFINITY),
        "spill_time_by_phase": cross_zone_phases(scenario, run, zone).iter().map(|(a, b, _)| json!({"from_s": a, "to_s": b, "spill_time_fraction": spill_time(run, *a, *b)})).collect::<Vec<_>>(),
        "spill_changes": spill_changes(run).iter().map(|(t, s)| json!({"at_s": t, "spilling": s})).collect::<Vec<_>>(),
    })
}

fn group_json(g: &GroupStats) -> Value {
    json!({
        "requests": g.requests,
        "errors": g.errors,
        "error_rate": g.error_rate(),
        "mean_ms": g.mean_latency_seconds() * 1000.0,
        "p50_ms_upper_bound": g.latency_quantile_upper_bound(0.5) * 1000.0,
        "p99_ms_upper_bound": g.latency_quantile_upper_bound(0.99) * 1000.0,
    })
}

fn split_json(run: &RunResult) -> Value {
    match &run.groups {
        Some((d, s)) => json!({"dynamic": group_json(d), "static": group_json(s)}),
        None => Value::Null,
    }
}

fn ms_bound(seconds: f64) -> String {
    if seconds.is_finite() {
        format!("≤{:.0}", seconds * 1000.0)
    } else {
        "> last bucket".into()
    }
}

/// The per-variant tables of a scenario with `[routing]` (empty without).
fn routing_markdown(scenario: &Scenario, runs: &[RunResult]) -> String {
    let mut out = String::new();
    if runs.iter().any(|r| r.keys.is_some()) {
        let ws = weight_share(scenario)
            .iter()
            .map(|s| format!("{:.0}%", s * 100.0))
            .collect::<Vec<_>>()
            .join(" / ");
        let _ = writeln!(
            out,
            "
**hashing** (weight share {ws})

| policy | keys seen | key stability | key affinity | share − weight (TV) |
|---|--:|--:|--:|--:|"
        );
        for r in runs {
            if let Some(k) = r.keys {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1}% of {} | {:.1}% | {:.3} |",
                    r.policy,
                    k.keys_seen,
                    k.stability() * 100.0,
                    k.keys_repeated,
                    k.affinity * 100.0,
                    share_error(scenario, r)
                );
            }
        }
        for (b, moved, min) in kill_disruption(scenario) {
            let _ = writeln!(
                out,
                "
- Maglev table over the start weights when `{b}` leaves: moves {:.1}% of keys, minimum {:.1}%",
                moved * 100.0,
                min * 100.0
            );
        }
    }
    if let Some(zone) = scenario.client_zone() {
        let phases = runs
            .first()
            .map(|r| cross_zone_phases(scenario, r, zone))
            .unwrap_or_default();
        let heads = phases
            .iter()
            .map(|(a, b, _)| format!(" {a:.0}–{b:.0} s |"))
            .collect::<String>();
        let _ = writeln!(
            out,
            "
**zones** (client zone `{zone}`; cross-zone % of requests)

| policy | cross-zone |{heads} zone transitions |
|---|--:|{}--:|",
            "--:|".repeat(phases.len())
        );
        for r in runs {
            let cells = cross_zone_phases(scenario, r, zone)
                .iter()
                .map(|(_, _, f)| format!(" {:.1}% |", f * 100.0))
                .collect::<String>();
            let _ = writeln!(
                out,
                "| {} | {:.1}% |{cells} {} |",
                r.policy,
                cross_zone(scenario, r, zone, 0, usize::MAX) * 100.0,
                r.zone_transitions
                    .map_or("—".to_string(), |t| t.to_string())
            );
        }
        for r in runs.iter().filter(|r| !r.zone_spill_samples.is_empty()) {
            let by_phase = phases
                .iter()
                .map(|(a, b, _)| {
                    spill_time(r, *a, *b)
                        .map_or("—".to_string(), |f| format!("{:.0}%", f * 100.0))
                })
                .collect::<Vec<_>>()
                .join(" / ");
            let changes = spill_changes(r)
                .iter()
                .map(|(t, s)| format!("{} at {t:.1} s", if *s { "spill" } else { "local" }))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                out,
                "\n- `{}`: time spilling {} (by phase {by_phase}); {}",
                r.policy,
                spill_time(r, 0.0, f64::INFINITY)
                    .map_or("—".to_string(), |f| format!("{:.0}%", f * 100.0)),
                if changes.is_empty() {
                    "never left local mode".to_string()
                } else {
                    changes
                }
            );
        }
    }
    if runs.iter().any(|r| r.groups.is_some()) {
        let _ = writeln!(
            out,
            "
**split** (`ClientMetrics::group`; quantiles are histogram-bucket upper bounds)

| policy | group | requests | errors | error % | mean ms | p50 ms | p99 ms |
|---|---|--:|--:|--:|--:|--:|--:|"
        );
        for r in runs {
            if let Some((d, s)) = &r.groups {
                for (name, g) in [("dynamic", d), ("static", s)] {
                    let _ = writeln!(
                        out,
                        "| {} | {name} | {} | {} | {:.2} | {:.1} | {} | {} |",
                        r.policy,
                        g.requests,
                        g.errors,
                        g.error_rate() * 100.0,
                        g.mean_latency_seconds() * 1000.0,
                        ms_bound(g.latency_quantile_upper_bound(0.5)),
                        ms_bound(g.latency_quantile_upper_bound(0.99)),
                    );
                }
            }
        }
    }
    out
}

/// The markdown table for one scenario.
pub fn markdown(scenario: &Scenario, runs: &[RunResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {} — {}\n\n{:.0} req/s offered ({:.0}% of {:.0} req/s capacity), {} client instance(s), {:.0} s\n",
        scenario.name,
        scenario.description,
        scenario.rate_rps(),
        scenario.load * 100.0,
        scenario.capacity_rps(),
        scenario.clients,
        scenario.duration_s
    );
    let names = runs.first().map(|r| r.backends.clone()).unwrap_or_default();
    let _ = writeln!(
        out,
        "| policy | requests | success % | after fault % | p50 ms | p90 ms | p99 ms | p99.9 ms | share ({}) | convergence s | send lag p99 ms |",
        names.join(" / ")
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|");
    for r in runs {
        let share = r
            .share()
            .iter()
            .map(|s| format!("{:.0}%", s * 100.0))
            .collect::<Vec<_>>()
            .join(" / ");
        let conv = match lateral_convergence(scenario, r) {
            None => "—".to_string(),
            Some((_, Some(c))) => format!("{c:.1}"),
            Some((_, None)) => "never".to_string(),
        };
        let after = match fault_success(scenario, r) {
            Some((ok, n)) if n > 0 => format!("{:.2}", 100.0 * ok as f64 / n as f64),
            _ => "—".to_string(),
        };
        let lag = if r.harness_saturated() {
            format!("{:.1} (harness saturated)", r.send_lag_ms(0.99))
        } else {
            format!("{:.1}", r.send_lag_ms(0.99))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            r.policy,
            r.requests,
            100.0 * r.ok as f64 / r.requests.max(1) as f64,
            after,
            r.quantile_ms(0.5),
            r.quantile_ms(0.9),
            r.quantile_ms(0.99),
            r.quantile_ms(0.999),
            share,
            conv,
            lag
        );
    }
    for r in runs {
        let mut notes = Vec::new();
        if r.errors > 0 {
            notes.push(format!("{} errors ({} timeouts)", r.errors, r.timeouts));
        }
        if r.retries > 0 {
            notes.push(format!("{} client retries", r.retries));
        }
        if r.harness_saturated() {
            notes.push(format!(
                "harness saturated: requests left up to {:.1} ms late (p99), so this row measures the generator, not the policy",
                r.send_lag_ms(0.99)
            ));
        }
        if let Some(achieved) = &r.achieved_shares {
            let weights = mean_weights(r)
                .map(|w| {
                    format!(
                        " against mean weights {} over the second half",
                        percentages(&w)
                    )
                })
                .unwrap_or_default();
            notes.push(format!("picks {}{weights}", percentages(achieved)));
        }
        if let Some(o) = overshoot(scenario, r) {
            notes.push(format!(
                "weights overshoot their target by at most {:.1} points",
                o * 100.0
            ));
        }
        if let Some((marks, _)) = lateral_convergence(scenario, r) {
            let m = marks
                .iter()
                .map(|(at, c)| match c {
                    Some(c) => format!("after t={at:.1}s: {c:.1}s"),
                    None => format!("after t={at:.1}s: never"),
                })
                .collect::<Vec<_>>();
            if !m.is_empty() {
                notes.push(format!("convergence {}", m.join(", ")));
            }
        }
        if !notes.is_empty() {
            let _ = writeln!(out, "\n- `{}`: {}", r.policy, notes.join("; "));
        }
    }
    out.push_str(&routing_markdown(scenario, runs));
    out
}
