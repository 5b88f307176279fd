//! Liveness from completions: a path that accepts requests and completes none is not live.
//!
//! Heartbeats prove the agent is alive, not that the backend answers: a blackholed backend (accepting
//! connections and requests, never answering) keeps a perfectly fresh heartbeat stream, and the floor would
//! keep feeding it. Its heartbeats do say so, though: requests in flight, none completed in the window, and
//! the oldest of them older than any answer the endpoint has given lately — or, once the clients have given up on
//! those requests, a window that held more request-seconds than the bound and completed none. [`stall`] reads exactly that from
//! one report, against a bound derived from the endpoint's own recent latency, so a slow path that still
//! completes requests (however slowly) is never taken for a stalled one.

use std::time::Duration;

use super::LoadReport;
use super::config::EngineConfig;

/// Why `report` shows a stalled path, or `None`. `recent_mean` is the endpoint's mean latency over its
/// window before this report (zero when unknown: the bound is then `min_stall`).
pub fn stall(report: &LoadReport, recent_mean: Duration, cfg: &EngineConfig) -> Option<String> {
    if cfg.stall_latency_multiple <= 0.0 || report.completed > 0 {
        return None;
    }
    let oldest = report.oldest_in_flight?;
    let bound = recent_mean
        .mul_f64(cfg.stall_latency_multiple)
        .max(cfg.min_stall);
    (oldest > bound).then(|| {
        format!(
            "{} requests in flight, none completed in the last {:.1} s, the oldest for {:.0} ms (bound {:.0} ms = max({} × recent mean {:.0} ms, {:?})): completes nothing; share 0, no floor",
            report.in_flight,
            report.window.as_secs_f64(),
            oldest.as_secs_f64() * 1e3,
            bound.as_secs_f64() * 1e3,
            cfg.stall_latency_multiple,
            recent_mean.as_secs_f64() * 1e3,
            cfg.min_stall
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(in_flight: u32, completed: u64, oldest_ms: Option<u64>) -> LoadReport {
        LoadReport {
            in_flight,
            completed,
            failed: 0,
            window: Duration::from_millis(500),
            latency_mean: Duration::from_millis(15),
            latency_p50: Duration::from_millis(15),
            latency_p99: Duration::from_millis(40),
            accepting: true,
            declared_capacity: Some(6),
            utilization: None,
            oldest_in_flight: oldest_ms.map(Duration::from_millis),
            mean_in_flight: None,
        }
    }

    #[test]
    fn stalled_only_with_requests_outstanding_nothing_completed_and_an_old_oldest() {
        let cfg = EngineConfig::default();
        let mean = Duration::from_millis(15);
        assert!(stall(&report(12, 0, Some(600)), mean, &cfg).is_some());
        assert!(
            stall(&report(12, 1, Some(600)), mean, &cfg).is_none(),
            "it completed one"
        );
        assert!(stall(&report(0, 0, None), mean, &cfg).is_none(), "idle");
        assert!(
            stall(&report(3, 0, Some(200)), mean, &cfg).is_none(),
            "within min_stall"
        );
        assert!(
            stall(&report(3, 0, None), mean, &cfg).is_none(),
            "an old agent says nothing"
        );
        // A slow path: 80 ms mean, bound 800 ms.
        assert!(stall(&report(3, 0, Some(700)), Duration::from_millis(80), &cfg).is_none());
        let off = EngineConfig {
            stall_latency_multiple: 0.0,
            ..EngineConfig::default()
        };
        assert!(stall(&report(12, 0, Some(600)), mean, &off).is_none());
    }
}
