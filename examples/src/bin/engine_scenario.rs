//! Runs one named engine scenario through the deterministic simulator and prints the weights as CSV.
//!
//! ```text
//! cargo run -p lateral-examples --bin engine_scenario -- spike > spike.csv
//! cargo run -p lateral-examples --bin engine_scenario -- --seed 3 silent
//! cargo run -p lateral-examples --bin engine_scenario -- --list
//! ```
//!
//! stdout: `time_s`, then per endpoint `<id>_weight`, `<id>_state` and `<id>_ideal` (the capacity-ratio share
//! the simulator knows to be right), one row per engine tick (500 ms). stderr: the scenario's description,
//! alerts and the decision log, so stdout stays plottable.

use std::process::ExitCode;
use std::time::Instant;

use lateral_engine::sim::scenarios;

fn main() -> ExitCode {
    let mut seed = 7u64;
    let mut name = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seed" => match args.next().and_then(|s| s.parse().ok()) {
                Some(s) => seed = s,
                None => {
                    eprintln!("--seed needs a number");
                    return ExitCode::from(2);
                }
            },
            "--list" | "-l" => {
                for n in scenarios::NAMES {
                    println!("{n}");
                }
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                eprintln!(
                    "usage: engine_scenario [--seed N] <{}>",
                    scenarios::NAMES.join("|")
                );
                return ExitCode::SUCCESS;
            }
            other => name = Some(other.to_string()),
        }
    }
    let name = name.unwrap_or_else(|| "spike".to_string());
    // The clock is read here, at the edge; the simulation itself runs on simulated time.
    let mut scenario = match scenarios::build(&name, Instant::now(), seed) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
        None => {
            eprintln!(
                "unknown scenario `{name}`; one of: {}",
                scenarios::NAMES.join(", ")
            );
            return ExitCode::from(2);
        }
    };
    eprintln!("# {}: {}", scenario.name, scenario.description);
    scenario.sim.run_until(scenario.duration);

    let ids = scenario.sim.ids();
    let mut header = vec!["time_s".to_string()];
    for id in &ids {
        header.push(format!("{id}_weight"));
        header.push(format!("{id}_state"));
        header.push(format!("{id}_ideal"));
    }
    println!("{}", header.join(","));
    for row in scenario.sim.trace() {
        let mut cols = vec![format!("{:.1}", row.t_s)];
        for i in 0..ids.len() {
            cols.push(format!("{:.4}", row.weights[i]));
            cols.push(row.states[i].as_str().to_string());
            cols.push(format!("{:.4}", row.ideal[i]));
        }
        println!("{}", cols.join(","));
    }
    let start = scenario.sim.decisions().first().map(|d| d.at);
    let secs = |t: Instant| start.map_or(0.0, |s| t.saturating_duration_since(s).as_secs_f64());
    for a in scenario.sim.alerts() {
        eprintln!(
            "# alert {:>6.1}s {}: {}",
            secs(a.at),
            a.kind.as_str(),
            a.message
        );
    }
    for d in scenario.sim.decisions() {
        eprintln!(
            "# decision {:>6.1}s {} [{}] {}",
            secs(d.at),
            d.endpoint,
            d.rule.as_str(),
            d.reason
        );
    }
    ExitCode::SUCCESS
}
