//! The engine's update cost: one `on_tick` after a round of heartbeats at 10, 100 and 1 000 endpoints, and one
//! `on_heartbeat`. Simulated time; no I/O.

#![allow(clippy::disallowed_methods)] // a test needs an Instant to start from

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lateral_engine::{EndpointSpec, Engine, EngineConfig, LoadReport};

fn report(i: usize, round: u64) -> LoadReport {
    // Deterministic variety: capacities differ by endpoint and drift a little per round.
    let mean_us = 5_000 + (i as u64 % 17) * 1_000 + (round % 5) * 100;
    LoadReport {
        in_flight: (i % 8) as u32,
        completed: 40 + (i as u64 % 13) + round % 3,
        failed: (i as u64 + round) % 2,
        window: Duration::from_millis(500),
        latency_mean: Duration::from_micros(mean_us),
        latency_p50: Duration::from_micros(mean_us * 9 / 10),
        latency_p99: Duration::from_micros(mean_us * 3),
        accepting: true,
        declared_capacity: Some(8),
        utilization: Some(0.2 + (i % 10) as f64 * 0.05),
        oldest_in_flight: None,
        mean_in_flight: None,
    }
}

fn engine_with(n: usize, start: Instant) -> (Engine, Vec<String>) {
    let mut engine = Engine::new(EngineConfig {
        queue_len: 1 << 16,
        ..EngineConfig::default()
    })
    .expect("valid");
    let ids: Vec<String> = (0..n).map(|i| format!("ep-{i:04}")).collect();
    for (i, id) in ids.iter().enumerate() {
        engine.upsert_endpoint(
            start,
            EndpointSpec {
                id: id.clone(),
                address: format!("10.0.{}.{}:50051", i / 250, i % 250),
                ..Default::default()
            },
        );
    }
    // Warm up: a few windows of data so every endpoint has an estimate.
    let mut now = start;
    for round in 0..12 {
        now += Duration::from_millis(500);
        for (i, id) in ids.iter().enumerate() {
            engine
                .on_heartbeat(now, id, report(i, round))
                .expect("valid");
        }
        engine.on_tick(now);
    }
    while engine.poll_decision().is_some() {}
    while engine.poll_alert().is_some() {}
    (engine, ids)
}

fn bench(c: &mut Criterion) {
    let start = Instant::now();
    let mut group = c.benchmark_group("engine_update");
    for n in [10usize, 100, 1000] {
        let (mut engine, ids) = engine_with(n, start);
        let mut now = start + Duration::from_secs(10);
        let mut round = 100u64;
        // Heartbeats are fed outside the measured part; one tick is measured.
        group.bench_with_input(
            BenchmarkId::new("on_tick_after_heartbeats", n),
            &n,
            |b, _| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        now += Duration::from_millis(500);
                        round += 1;
                        for (i, id) in ids.iter().enumerate() {
                            let _ = engine.on_heartbeat(now, id, report(i, round));
                        }
                        let t = Instant::now();
                        engine.on_tick(black_box(now));
                        total += t.elapsed();
                        while engine.poll_decision().is_some() {}
                        while engine.poll_alert().is_some() {}
                    }
                    total
                });
            },
        );
    }
    let (mut engine, ids) = engine_with(100, start);
    let mut now = start + Duration::from_secs(10);
    let mut k = 0usize;
    group.bench_function("on_heartbeat", |b| {
        b.iter(|| {
            k = (k + 1) % ids.len();
            now += Duration::from_micros(5);
            engine.on_heartbeat(now, black_box(&ids[k]), black_box(report(k, k as u64)))
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
