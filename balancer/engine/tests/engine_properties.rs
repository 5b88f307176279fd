//! Invariants of the weight table under random endpoint sets, heartbeat sequences and time steps.

#![allow(clippy::disallowed_methods)] // a test needs an Instant to start from

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lateral_engine::{
    EndpointSpec, EndpointState, Engine, EngineConfig, LoadReport, Mode, WeightTable,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Upsert {
        id: u8,
        canary: bool,
        static_weight: Option<f64>,
    },
    Remove {
        id: u8,
    },
    Heartbeat {
        id: u8,
        report: LoadReport,
    },
    Goodbye {
        id: u8,
    },
    Tick,
    Advance {
        ms: u64,
    },
}

fn report() -> impl Strategy<Value = LoadReport> {
    (
        0u32..200,
        0u64..400,
        0u64..450,
        prop_oneof![Just(500u64), 100u64..2_000],
        1u64..400_000,
        1u64..5,
        prop_oneof![4 => Just(true), 1 => Just(false)],
        prop::option::of(1u32..64),
        prop::option::of(prop_oneof![
            0.0f64..2.0,
            Just(f64::NAN),
            Just(-1.0),
            Just(f64::INFINITY)
        ]),
    )
        .prop_map(
            |(
                in_flight,
                completed,
                failed,
                window_ms,
                mean_us,
                p99x,
                accepting,
                declared,
                utilization,
            )| {
                LoadReport {
                    in_flight,
                    completed,
                    // Mostly valid (failed ≤ completed); sometimes impossible, which must be rejected.
                    failed: if failed > 420 {
                        completed + 1
                    } else {
                        failed.min(completed)
                    },
                    window: Duration::from_millis(window_ms),
                    latency_mean: Duration::from_micros(mean_us),
                    latency_p50: Duration::from_micros(mean_us),
                    latency_p99: Duration::from_micros(mean_us * p99x),
                    accepting,
                    declared_capacity: declared,
                    utilization,
                    // Sometimes a stalled path (nothing completed, an old request outstanding).
                    oldest_in_flight: (in_flight > 0)
                        .then(|| Duration::from_micros(mean_us.saturating_mul(p99x * 8))),
                    mean_in_flight: None,
                }
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..6, prop::bool::weighted(0.2), prop::option::of(0.1f64..10.0))
            .prop_map(|(id, canary, static_weight)| Op::Upsert { id, canary, static_weight }),
        1 => (0u8..6).prop_map(|id| Op::Remove { id }),
        8 => (0u8..6, report()).prop_map(|(id, report)| Op::Heartbeat { id, report }),
        1 => (0u8..6).prop_map(|id| Op::Goodbye { id }),
        4 => Just(Op::Tick),
        4 => prop_oneof![0u64..600, 500u64..8_000].prop_map(|ms| Op::Advance { ms }),
    ]
}

fn spec(id: u8, canary: bool, static_weight: Option<f64>) -> EndpointSpec {
    let mut labels = BTreeMap::new();
    if canary {
        labels.insert("track".to_string(), "canary".to_string());
    }
    EndpointSpec {
        id: format!("e{id}"),
        address: format!("10.0.0.{id}:50051"),
        zone: None,
        labels,
        static_weight,
        declared_capacity: None,
    }
}

fn check(table: &WeightTable, prev: &WeightTable, cfg: &EngineConfig) -> Result<(), TestCaseError> {
    prop_assert!(table.version >= prev.version, "version went back");
    if table != prev {
        prop_assert!(
            table.version > prev.version,
            "table changed without a new version"
        );
    }
    if table.entries.is_empty() {
        return Ok(());
    }
    let sum: f64 = table.entries.iter().map(|e| e.weight).sum();
    prop_assert!((sum - 1.0).abs() < 1e-9, "sum {}", sum);
    for e in &table.entries {
        prop_assert!(
            e.weight.is_finite() && (0.0..=1.0).contains(&e.weight),
            "{:?}",
            e
        );
        let canary = e.labels.get("track").is_some_and(|v| v == "canary");
        let floor = if canary { cfg.canary_floor } else { cfg.floor };
        if e.state.is_live() {
            prop_assert!(
                e.weight >= floor - 1e-9,
                "{} below its floor: {}",
                e.id,
                e.weight
            );
        } else if !table.static_fallback {
            prop_assert_eq!(e.weight, 0.0, "{} is {} with weight", e.id, e.state);
        }
        if !table.static_fallback
            && !prev.static_fallback
            && e.state == EndpointState::Degraded
            && let Some(p) = prev.get(&e.id)
            && p.state == EndpointState::Degraded
        {
            prop_assert!(
                e.weight <= p.weight + 1e-12,
                "degraded {} gained {} -> {}",
                e.id,
                p.weight,
                e.weight
            );
        }
    }
    Ok(())
}

fn run(ops: &[Op], cfg: EngineConfig) -> Result<(), TestCaseError> {
    let mut now = Instant::now();
    let mut engine = Engine::new(cfg.clone()).expect("valid");
    let mut prev = engine.table().clone();
    for op in ops {
        match op {
            Op::Upsert {
                id,
                canary,
                static_weight,
            } => engine.upsert_endpoint(now, spec(*id, *canary, *static_weight)),
            Op::Remove { id } => {
                engine.remove_endpoint(now, &format!("e{id}"));
            }
            Op::Heartbeat { id, report } => {
                let impossible = report.failed > report.completed
                    || report.window.is_zero()
                    || report
                        .utilization
                        .is_some_and(|u| !u.is_finite() || u < 0.0);
                let known = engine.table().get(&format!("e{id}")).is_some();
                let r = engine.on_heartbeat(now, &format!("e{id}"), report.clone());
                prop_assert_eq!(r.is_err(), impossible || !known);
            }
            Op::Goodbye { id } => engine.on_goodbye(now, &format!("e{id}")),
            Op::Tick => engine.on_tick(now),
            Op::Advance { ms } => {
                now += Duration::from_millis(*ms);
                engine.on_tick(now);
            }
        }
        check(engine.table(), &prev, &cfg)?;
        prev = engine.table().clone();
        while engine.poll_decision().is_some() {}
        while engine.poll_alert().is_some() {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn throughput_mode_invariants(ops in prop::collection::vec(op(), 1..120)) {
        run(&ops, EngineConfig::default())?;
    }

    #[test]
    fn latency_mode_invariants(ops in prop::collection::vec(op(), 1..120)) {
        run(&ops, EngineConfig { mode: Mode::Latency, ..EngineConfig::default() })?;
    }

    /// With every endpoint healthy and reporting, latency mode never gives one endpoint more than max_share.
    #[test]
    fn latency_mode_cap_is_respected(
        n in 2usize..6,
        rounds in prop::collection::vec(prop::collection::vec(1u64..300_000, 6), 1..40),
    ) {
        let cfg = EngineConfig { mode: Mode::Latency, max_share: 0.6, ..EngineConfig::default() };
        let mut engine = Engine::new(cfg.clone()).expect("valid");
        let mut now = Instant::now();
        for i in 0..n {
            engine.upsert_endpoint(now, spec(i as u8, false, None));
        }
        for round in rounds {
            now += Duration::from_millis(500);
            for (i, p99_us) in round.iter().enumerate().take(n) {
                let r = LoadReport {
                    in_flight: 1,
                    completed: 50,
                    failed: 0,
                    window: Duration::from_millis(500),
                    latency_mean: Duration::from_micros(p99_us / 2 + 1),
                    latency_p50: Duration::from_micros(p99_us / 2 + 1),
                    latency_p99: Duration::from_micros(*p99_us),
                    accepting: true,
                    declared_capacity: None,
                    utilization: None,
                    oldest_in_flight: None,
                    mean_in_flight: None,
                };
                engine.on_heartbeat(now, &format!("e{i}"), r).expect("valid report");
            }
            engine.on_tick(now);
            for e in &engine.table().entries {
                prop_assert!(e.weight <= cfg.max_share + 1e-9, "{} has {}", e.id, e.weight);
            }
        }
    }
}
