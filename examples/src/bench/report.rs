//! The markdown table per scenario and the JSON records (one per scenario × policy).

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::run::{RunResult, convergence};
use super::scenario::Scenario;

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
        "convergence_s": conv.as_ref().and_then(|(_, c)| *c),
        "convergence_marks": conv.as_ref().map(|(m, _)| m.iter().map(|(at, c)| json!({"at_s": at, "convergence_s": c})).collect::<Vec<_>>()),
    })
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
        "| policy | requests | success % | p50 ms | p90 ms | p99 ms | p99.9 ms | share ({}) | convergence s |",
        names.join(" / ")
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|---|--:|");
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
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            r.policy,
            r.requests,
            100.0 * r.ok as f64 / r.requests.max(1) as f64,
            r.quantile_ms(0.5),
            r.quantile_ms(0.9),
            r.quantile_ms(0.99),
            r.quantile_ms(0.999),
            share,
            conv
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
    out
}
