//! The named scenarios of the reference article's test plan, shared by the scenario tests and the
//! `engine_scenario` example: steady asymmetry, a sudden latency spike, a path that stops reporting, slow
//! degradation over minutes, rapid flapping, a fast-failing path, a canary whose errors rise, a better canary.

use std::time::{Duration, Instant};

use super::{Sim, SimBackend, SimEvent};
use crate::{ConfigError, EngineConfig};

/// A ready-to-run simulation.
#[derive(Debug)]
pub struct Scenario {
    /// Its name.
    pub name: &'static str,
    /// What happens.
    pub description: &'static str,
    /// The simulation, events scheduled.
    pub sim: Sim,
    /// When the interesting change happens (seconds).
    pub change_at_s: f64,
    /// How long to run.
    pub duration: Duration,
}

/// Every scenario name.
pub const NAMES: [&str; 11] = [
    "steady",
    "bench-start",
    "bench-spike",
    "steady-declared",
    "spike",
    "silent",
    "degradation",
    "flapping",
    "fastfail",
    "canary-errors",
    "canary-better",
];

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn s(v: u64) -> Duration {
    Duration::from_secs(v)
}

/// Builds the scenario `name` starting at `start`, or `None` for an unknown name.
pub fn build(name: &str, start: Instant, seed: u64) -> Option<Result<Scenario, ConfigError>> {
    let cfg = EngineConfig::default();
    let fast = || SimBackend::new("fast", 8, ms(10));
    let slow = || SimBackend::new("slow", 8, ms(40));
    let made = match name {
        "steady" => Sim::new(start, cfg, 200.0, vec![fast(), slow()], seed).map(|sim| Scenario {
            name: "steady",
            description: "two paths, 8 slots each, 10 ms vs 40 ms: a 4:1 capacity asymmetry (80/20)",
            sim,
            change_at_s: 0.0,
            duration: s(30),
        }),
        "bench-start" => {
            // The bench's steady-4to1 as it really starts: agents heartbeat for a second with no traffic
            // (declared slots only), then 700 req/s of Poisson arrivals on exponential service times.
            let mut big = SimBackend::new("big", 8, ms(10));
            let mut small = SimBackend::new("small", 4, ms(20));
            big.exponential = true;
            small.exponential = true;
            Sim::new(start, cfg, 0.0, vec![big, small], seed).map(|mut sim| {
                sim.at(s(1), SimEvent::ArrivalRate(700.0));
                Scenario {
                    name: "bench-start",
                    description: "the bench's steady-4to1 start: 1 s of heartbeats without traffic, then 700 req/s on 8×10 ms vs 4×20 ms (80/20)",
                    sim,
                    change_at_s: 1.0,
                    duration: s(16),
                }
            })
        }
        "bench-spike" => {
            // The bench's spike: three equal paths (6 slots × 15 ms, exponential) at 60% of their 1 200 req/s,
            // heartbeats for a second before traffic; `a` is 5× slower from 6 s to 12 s, which leaves the
            // other two near 90% busy: the regime where a headroom share is most sensitive to its inputs.
            let backends = ["a", "b", "c"]
                .map(|id| {
                    let mut b = SimBackend::new(id, 6, ms(15));
                    b.exponential = true;
                    b
                })
                .to_vec();
            Sim::new(start, cfg, 0.0, backends, seed).map(|mut sim| {
                sim.at(s(1), SimEvent::ArrivalRate(720.0));
                sim.at(s(7), SimEvent::ServiceTimeFactor("a".into(), 5.0));
                sim.at(s(13), SimEvent::ServiceTimeFactor("a".into(), 0.2));
                Scenario {
                    name: "bench-spike",
                    description: "the bench's spike: three equal paths at 60%, `a` 5× slower from 6 s to 12 s of traffic (b and c then ~90% busy)",
                    sim,
                    change_at_s: 7.0,
                    duration: s(19),
                }
            })
        }
        "steady-declared" => {
            let mut a = fast();
            let mut b = slow();
            a.report_utilization = false;
            b.report_utilization = false;
            Sim::new(start, cfg, 200.0, vec![a, b], seed).map(|sim| Scenario {
                name: "steady-declared",
                description: "4:1 asymmetry, agents declare slots but report no utilization (Little's law path)",
                sim,
                change_at_s: 0.0,
                duration: s(30),
            })
        }
        "spike" => Sim::new(start, cfg, 200.0, vec![fast(), slow()], seed).map(|mut sim| {
            sim.at(s(20), SimEvent::ServiceTimeFactor("fast".into(), 5.0));
            Scenario {
                name: "spike",
                description: "4:1 asymmetry, then at 20 s the fast path's service time rises 5× (10 → 50 ms)",
                sim,
                change_at_s: 20.0,
                duration: s(40),
            }
        }),
        "silent" => {
            let backends = vec![
                SimBackend::new("a", 8, ms(20)),
                SimBackend::new("b", 8, ms(20)),
                SimBackend::new("c", 8, ms(20)),
            ];
            Sim::new(start, cfg, 300.0, backends, seed).map(|mut sim| {
                sim.at(s(20), SimEvent::StopReporting("b".into()));
                sim.at(s(35), SimEvent::ResumeReporting("b".into()));
                Scenario {
                    name: "silent",
                    description: "three equal paths; b's agent stops reporting at 20 s (degraded, then ejected) and returns at 35 s (ramps over 30 s)",
                    sim,
                    change_at_s: 20.0,
                    duration: s(80),
                }
            })
        }
        "degradation" => Sim::new(start, cfg, 200.0, vec![fast(), slow()], seed).map(|mut sim| {
            sim.at(s(20), SimEvent::RampServiceTime("slow".into(), ms(160), s(180)));
            Scenario {
                name: "degradation",
                description: "4:1 asymmetry; from 20 s the slow path degrades over 3 minutes (40 → 160 ms)",
                sim,
                change_at_s: 20.0,
                duration: s(220),
            }
        }),
        "flapping" => {
            let backends = vec![SimBackend::new("a", 8, ms(20)), SimBackend::new("b", 8, ms(20))];
            Sim::new(start, cfg, 200.0, backends, seed).map(|mut sim| {
                for k in 0..6u64 {
                    let t = 20 + 5 * k;
                    sim.at(s(t), SimEvent::StopReporting("b".into()));
                    sim.at(s(t + 2), SimEvent::ResumeReporting("b".into()));
                }
                Scenario {
                    name: "flapping",
                    description: "two equal paths; b's heartbeats stop for 2 s every 5 s from 20 s, six times",
                    sim,
                    change_at_s: 20.0,
                    duration: s(90),
                }
            })
        }
        "fastfail" => {
            let backends = vec![SimBackend::new("a", 8, ms(10)), SimBackend::new("b", 8, ms(10))];
            Sim::new(start, cfg, 200.0, backends, seed).map(|mut sim| {
                sim.at(s(20), SimEvent::Errors("b".into(), 0.6, true));
                Scenario {
                    name: "fastfail",
                    description: "two equal paths; at 20 s b fails 60% of requests in 1 ms (looks fast and idle)",
                    sim,
                    change_at_s: 20.0,
                    duration: s(40),
                }
            })
        }
        "canary-errors" => {
            let backends = vec![
                SimBackend::new("a", 8, ms(20)),
                SimBackend::new("b", 8, ms(20)),
                SimBackend::new("c", 8, ms(15)).canary(),
            ];
            Sim::new(start, cfg, 300.0, backends, seed).map(|mut sim| {
                sim.at(s(40), SimEvent::Errors("c".into(), 0.3, false));
                Scenario {
                    name: "canary-errors",
                    description: "stable a, b and a canary c (slightly faster, promoted while good); at 40 s c starts failing 30% of requests",
                    sim,
                    change_at_s: 40.0,
                    duration: s(60),
                }
            })
        }
        "canary-better" => {
            let cfg = EngineConfig { canary_max_share: 0.3, ..cfg };
            let backends = vec![
                SimBackend::new("a", 8, ms(20)),
                SimBackend::new("b", 8, ms(20)),
                SimBackend::new("c", 8, ms(10)).canary(),
            ];
            Sim::new(start, cfg, 300.0, backends, seed).map(|sim| Scenario {
                name: "canary-better",
                description: "stable a, b (20 ms) and a canary c twice as fast: promoted step by step up to canary_max_share 0.3",
                sim,
                change_at_s: 0.0,
                duration: s(100),
            })
        }
        _ => return None,
    };
    Some(made)
}
