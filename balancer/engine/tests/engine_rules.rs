//! One rule at a time, driving the engine directly with hand-made heartbeats on a simulated clock.

#![allow(clippy::disallowed_methods)] // a test needs an Instant to start from

use std::time::{Duration, Instant};

use lateral_engine::{
    AlertKind, EndpointSpec, EndpointState, Engine, EngineConfig, LoadReport, Mode, Rule,
};

fn spec(id: &str) -> EndpointSpec {
    EndpointSpec {
        id: id.into(),
        address: format!("{id}:50051"),
        ..Default::default()
    }
}

/// A heartbeat of a backend with 8 slots serving `rps` at `mean_ms`.
fn hb(rps: u64, mean_ms: u64) -> LoadReport {
    LoadReport {
        in_flight: 2,
        completed: rps / 2,
        failed: 0,
        window: Duration::from_millis(500),
        latency_mean: Duration::from_millis(mean_ms),
        latency_p50: Duration::from_millis(mean_ms),
        latency_p99: Duration::from_millis(mean_ms * 2),
        accepting: true,
        declared_capacity: Some(8),
        utilization: None,
        oldest_in_flight: None,
        mean_in_flight: None,
    }
}

struct Clock {
    now: Instant,
}

impl Clock {
    fn tick(&mut self) -> Instant {
        self.now += Duration::from_millis(500);
        self.now
    }
}

fn two(cfg: EngineConfig) -> (Engine, Clock) {
    let now = Instant::now();
    let mut e = Engine::new(cfg).unwrap();
    e.upsert_endpoint(now, spec("a"));
    e.upsert_endpoint(now, spec("b"));
    (e, Clock { now })
}

fn alerts(e: &mut Engine) -> Vec<AlertKind> {
    std::iter::from_fn(|| e.poll_alert())
        .map(|a| a.kind)
        .collect()
}

#[test]
fn sawtooth_is_detected_damped_and_relaxed() {
    let (mut e, mut clock) = two(EngineConfig::default());
    let mut saw = Vec::new();
    // a's latency flips between 10 and 40 ms every second: its capacity estimate saws, and so would its share.
    for k in 0..40 {
        let now = clock.tick();
        let a_ms = if (k / 2) % 2 == 0 { 10 } else { 40 };
        e.on_heartbeat(now, "a", hb(100, a_ms)).unwrap();
        e.on_heartbeat(now, "b", hb(100, 20)).unwrap();
        e.on_tick(now);
        saw.extend(alerts(&mut e));
    }
    assert!(saw.contains(&AlertKind::Oscillation), "{saw:?}");
    assert!(e.is_damped());
    // Steady again: no reversal for a whole window, and the normal α is back.
    for _ in 0..60 {
        let now = clock.tick();
        e.on_heartbeat(now, "a", hb(100, 10)).unwrap();
        e.on_heartbeat(now, "b", hb(100, 20)).unwrap();
        e.on_tick(now);
    }
    assert!(!e.is_damped());
    assert!(
        (e.table().weight("a") - 2.0 / 3.0).abs() < 0.02,
        "{:?}",
        e.table()
    );
}

#[test]
fn drift_alert_when_a_weight_moves_more_than_twenty_points() {
    let (mut e, mut clock) = two(EngineConfig::default());
    for _ in 0..30 {
        let now = clock.tick();
        e.on_heartbeat(now, "a", hb(100, 20)).unwrap();
        e.on_heartbeat(now, "b", hb(100, 20)).unwrap();
        e.on_tick(now);
    }
    assert!(!alerts(&mut e).contains(&AlertKind::Drift));
    for _ in 0..30 {
        let now = clock.tick();
        e.on_heartbeat(now, "a", hb(100, 20)).unwrap();
        e.on_heartbeat(now, "b", hb(100, 100)).unwrap();
        e.on_tick(now);
    }
    let msgs: Vec<String> = std::iter::from_fn(|| e.poll_alert())
        .filter(|a| a.kind == AlertKind::Drift)
        .map(|a| a.message)
        .collect();
    assert!(!msgs.is_empty());
    assert!(msgs[0].contains("percentage points"), "{msgs:?}");
}

#[test]
fn every_endpoint_unhealthy_falls_back_to_static_weights() {
    let now = Instant::now();
    let mut e = Engine::new(EngineConfig::default()).unwrap();
    e.upsert_endpoint(
        now,
        EndpointSpec {
            static_weight: Some(3.0),
            ..spec("a")
        },
    );
    e.upsert_endpoint(
        now,
        EndpointSpec {
            static_weight: Some(1.0),
            ..spec("b")
        },
    );
    assert!(e.table().static_fallback, "no data yet");
    assert!((e.table().weight("a") - 0.75).abs() < 1e-9);
    let mut clock = Clock { now };
    for _ in 0..10 {
        let t = clock.tick();
        e.on_heartbeat(t, "a", hb(100, 20)).unwrap();
        e.on_heartbeat(t, "b", hb(100, 20)).unwrap();
        e.on_tick(t);
    }
    assert!(!e.table().static_fallback);
    // Both go silent: degraded, then ejected, then static weights.
    for _ in 0..12 {
        let t = clock.tick();
        e.on_tick(t);
    }
    let t = e.table();
    assert!(t.static_fallback);
    assert!(t.entries.iter().all(|r| r.state == EndpointState::Ejected));
    assert!((t.weight("a") - 0.75).abs() < 1e-9 && (t.total() - 1.0).abs() < 1e-12);
    assert!(alerts(&mut e).contains(&AlertKind::AllUnhealthy));
}

#[test]
fn goodbye_drains_at_once_and_accepting_again_ramps() {
    let (mut e, mut clock) = two(EngineConfig::default());
    for _ in 0..10 {
        let now = clock.tick();
        e.on_heartbeat(now, "a", hb(100, 20)).unwrap();
        e.on_heartbeat(now, "b", hb(100, 20)).unwrap();
        e.on_tick(now);
    }
    e.on_goodbye(clock.now, "b");
    assert_eq!(e.table().get("b").unwrap().state, EndpointState::Draining);
    assert_eq!(e.table().weight("b"), 0.0);
    assert!((e.table().weight("a") - 1.0).abs() < 1e-12);
    let now = clock.tick();
    e.on_heartbeat(now, "a", hb(100, 20)).unwrap();
    e.on_heartbeat(now, "b", hb(100, 20)).unwrap();
    e.on_tick(now);
    assert_eq!(e.table().get("b").unwrap().state, EndpointState::Ramping);
    let rules: Vec<Rule> = std::iter::from_fn(|| e.poll_decision())
        .map(|d| d.rule)
        .collect();
    assert!(
        rules.contains(&Rule::Draining) && rules.contains(&Rule::Readmission),
        "{rules:?}"
    );
}

#[test]
fn latency_mode_shares_by_inverse_p99() {
    let (mut e, mut clock) = two(EngineConfig {
        mode: Mode::Latency,
        ..EngineConfig::default()
    });
    for _ in 0..40 {
        let now = clock.tick();
        e.on_heartbeat(now, "a", hb(100, 10)).unwrap();
        e.on_heartbeat(now, "b", hb(100, 30)).unwrap();
        e.on_tick(now);
    }
    assert!(
        (e.table().weight("a") - 0.75).abs() < 0.005,
        "{:?}",
        e.table()
    );
}

#[test]
fn decision_queue_is_bounded_and_counts_drops() {
    let (mut e, mut clock) = two(EngineConfig {
        queue_len: 4,
        ..EngineConfig::default()
    });
    for k in 0..40 {
        let now = clock.tick();
        e.on_heartbeat(now, "a", hb(100, if k % 6 < 3 { 10 } else { 60 }))
            .unwrap();
        e.on_heartbeat(now, "b", hb(100, 20)).unwrap();
        e.on_tick(now);
    }
    assert!(e.dropped_decisions() > 0);
    assert_eq!(std::iter::from_fn(|| e.poll_decision()).count(), 4);
}

#[test]
fn next_deadline_names_the_next_freshness_change() {
    let (mut e, mut clock) = two(EngineConfig::default());
    let now = clock.tick();
    e.on_heartbeat(now, "a", hb(100, 20)).unwrap();
    e.on_heartbeat(now, "b", hb(100, 20)).unwrap();
    e.on_tick(now);
    let d = e.next_deadline().unwrap();
    assert!(d > now && d <= now + Duration::from_millis(500));
}

#[test]
fn decisions_explain_themselves() {
    let (mut e, mut clock) = two(EngineConfig::default());
    for k in 0..20 {
        let now = clock.tick();
        e.on_heartbeat(now, "a", hb(100, if k < 10 { 12 } else { 61 }))
            .unwrap();
        e.on_heartbeat(now, "b", hb(100, 20)).unwrap();
        e.on_tick(now);
    }
    let d: Vec<_> = std::iter::from_fn(|| e.poll_decision())
        // The step at k = 10 (settling moves before it say "held").
        .filter(|d| {
            d.endpoint == "a"
                && d.rule == Rule::Capacity
                && d.new_weight < d.old_weight
                && d.reason.contains("p99 rose")
        })
        .collect();
    assert!(!d.is_empty());
    let r = &d[0].reason;
    assert!(
        r.contains("p99 rose from 24 ms to 122 ms")
            && r.contains("capacity fell")
            && r.contains("share"),
        "{r}"
    );
    assert!(d[0].inputs.iter().any(|(k, _)| *k == "capacity_rps"));
}

#[test]
fn config_reads_from_toml_with_humane_durations() {
    let cfg: EngineConfig = toml::from_str(
        r#"
        heartbeat_interval = "250ms"
        eject_after = "4s"
        drift_window = "5m"
        window_len = 6
        mode = "latency"
        "#,
    )
    .unwrap();
    assert_eq!(cfg.heartbeat_interval, Duration::from_millis(250));
    assert_eq!(cfg.drift_window, Duration::from_secs(300));
    assert!(Engine::new(cfg).is_ok());
    let bad: EngineConfig = toml::from_str("window_len = 12").unwrap();
    let err = Engine::new(bad).unwrap_err();
    assert_eq!(err.field, "window_len");
    assert!(err.to_string().contains("5..=10"));
    assert!(toml::from_str::<EngineConfig>("windw_len = 6").is_err());
}

#[test]
fn unchanged_upsert_publishes_nothing_and_removal_renormalises() {
    let (mut e, mut clock) = two(EngineConfig::default());
    let now = clock.tick();
    e.on_heartbeat(now, "a", hb(100, 20)).unwrap();
    e.on_heartbeat(now, "b", hb(100, 20)).unwrap();
    e.on_tick(now);
    let v = e.table().version;
    e.upsert_endpoint(now, spec("a"));
    assert_eq!(e.table().version, v);
    assert!(e.remove_endpoint(now, "b"));
    assert!(e.table().version > v);
    assert!((e.table().weight("a") - 1.0).abs() < 1e-12);
    assert!(!e.remove_endpoint(now, "b"));
}

#[test]
fn tripped_canary_stays_out_until_reset() {
    let now = Instant::now();
    let mut e = Engine::new(EngineConfig::default()).unwrap();
    e.upsert_endpoint(now, spec("a"));
    let mut canary = spec("c");
    canary.labels.insert("track".into(), "canary".into());
    e.upsert_endpoint(now, canary);
    let mut clock = Clock { now };
    for k in 0..20 {
        let t = clock.tick();
        e.on_heartbeat(t, "a", hb(100, 20)).unwrap();
        let failed = if k >= 10 { 20 } else { 0 };
        e.on_heartbeat(
            t,
            "c",
            LoadReport {
                failed,
                ..hb(100, 20)
            },
        )
        .unwrap();
        e.on_tick(t);
    }
    assert_eq!(e.table().get("c").unwrap().state, EndpointState::Tripped);
    assert_eq!(e.table().weight("c"), 0.0);
    assert!(alerts(&mut e).contains(&AlertKind::CanaryBreaker));
    let t = clock.tick();
    assert!(e.reset_canary(t, "c"));
    e.on_heartbeat(t, "c", hb(100, 20)).unwrap();
    e.on_tick(t);
    let row = e.table().get("c").unwrap();
    assert_eq!(row.state, EndpointState::Ramping);
    assert!(
        (row.weight - 0.01).abs() < 1e-9,
        "back at the canary floor: {}",
        row.weight
    );
}

/// Ticks until `a`'s share falls below `target`, after `a` becomes 5× slower than `b` at a steady share.
fn ticks_to_shed(overload_alpha: f64, target: f64) -> usize {
    let cfg = EngineConfig {
        overload_alpha,
        ..EngineConfig::default()
    };
    let (mut e, mut clock) = two(cfg);
    for _ in 0..40 {
        let now = clock.tick();
        e.on_heartbeat(now, "a", hb(400, 10)).unwrap();
        e.on_heartbeat(now, "b", hb(400, 10)).unwrap();
        e.on_tick(now);
    }
    assert!(
        (e.table().weight("a") - 0.5).abs() < 0.02,
        "{:?}",
        e.table()
    );
    for k in 1..=40 {
        let now = clock.tick();
        // a now serves at 50 ms: its capacity (8 slots / 50 ms = 160 req/s) is below the 400 req/s it gets.
        e.on_heartbeat(now, "a", hb(400, 50)).unwrap();
        e.on_heartbeat(now, "b", hb(400, 10)).unwrap();
        e.on_tick(now);
        if e.table().weight("a") < target {
            return k;
        }
    }
    usize::MAX
}

#[test]
fn an_overloaded_path_sheds_share_faster_than_it_gains() {
    let plain = ticks_to_shed(0.3, 0.25);
    let fast_down = ticks_to_shed(0.7, 0.25);
    assert!(
        fast_down < plain,
        "fast down took {fast_down} ticks, plain smoothing {plain}"
    );
    assert!(fast_down <= 4, "fast down took {fast_down} ticks of 500 ms");
}

#[test]
fn a_returning_endpoint_ramps_even_when_the_others_run_past_the_planning_cap() {
    let (mut e, mut clock) = two(EngineConfig::default());
    for _ in 0..30 {
        let now = clock.tick();
        e.on_heartbeat(now, "a", hb(400, 10)).unwrap();
        e.on_heartbeat(now, "b", hb(400, 10)).unwrap();
        e.on_tick(now);
    }
    // b goes silent until ejected; a carries everything (800 req/s, its full capacity of 8 slots / 10 ms).
    for _ in 0..14 {
        let now = clock.tick();
        e.on_heartbeat(now, "a", hb(800, 10)).unwrap();
        e.on_tick(now);
    }
    assert_eq!(e.table().get("b").unwrap().state, EndpointState::Ejected);
    // b returns: the planning cap would push a down to 80% at once; the ramp keeps b low instead.
    let mut first = Vec::new();
    for _ in 0..4 {
        let now = clock.tick();
        e.on_heartbeat(now, "a", hb(800, 10)).unwrap();
        e.on_heartbeat(now, "b", hb(0, 10)).unwrap();
        e.on_tick(now);
        first.push(e.table().weight("b"));
    }
    assert_eq!(e.table().get("b").unwrap().state, EndpointState::Ramping);
    assert!(
        first[0] <= 0.12,
        "b's first shares while ramping: {first:?}"
    );
    assert!(
        first.windows(2).all(|p| p[1] - p[0] <= 0.03),
        "a gradual ramp: {first:?}"
    );
    assert!(first[3] <= 0.2, "b's first shares while ramping: {first:?}");
}

#[test]
fn a_path_that_completes_nothing_gets_zero_with_a_record_and_ramps_back_when_it_answers() {
    let (mut e, mut clock) = two(EngineConfig::default());
    for _ in 0..10 {
        let now = clock.tick();
        e.on_heartbeat(now, "a", hb(200, 15)).unwrap();
        e.on_heartbeat(now, "b", hb(200, 15)).unwrap();
        e.on_tick(now);
    }
    assert!(e.table().weight("b") > 0.3);
    while e.poll_decision().is_some() {}
    // b blackholes: heartbeats keep coming (fresh), with requests piling up and nothing completing.
    let fault = clock.now;
    let mut zero_at = None;
    for k in 1..=4u64 {
        let now = clock.tick();
        e.on_heartbeat(now, "a", hb(300, 15)).unwrap();
        let stuck = LoadReport {
            in_flight: 12 * k as u32,
            completed: 0,
            oldest_in_flight: Some(Duration::from_millis(500 * k - 100)),
            mean_in_flight: None,
            ..hb(0, 15)
        };
        e.on_heartbeat(now, "b", stuck).unwrap();
        e.on_tick(now);
        if zero_at.is_none() && e.table().weight("b") == 0.0 {
            zero_at = Some(now - fault);
        }
    }
    let zero_at = zero_at.expect("a stalled path kept a share");
    assert!(zero_at <= Duration::from_secs(1), "took {zero_at:?}");
    let records: Vec<_> = std::iter::from_fn(|| e.poll_decision()).collect();
    let stalled = records
        .iter()
        .find(|d| d.endpoint == "b" && d.rule == Rule::LivenessStalled)
        .expect("no liveness.stalled record");
    assert!(
        stalled.reason.contains("none completed"),
        "{}",
        stalled.reason
    );
    assert_eq!(
        e.table().get("b").map(|r| r.state),
        Some(EndpointState::Ejected)
    );
    // It answers again: re-admitted through the ramp, not at once to its old share.
    for _ in 0..4 {
        let now = clock.tick();
        e.on_heartbeat(now, "a", hb(300, 15)).unwrap();
        e.on_heartbeat(now, "b", hb(100, 15)).unwrap();
        e.on_tick(now);
    }
    let w = e.table().weight("b");
    assert!(w > 0.0 && w < 0.3, "b at {w} after returning");
}
