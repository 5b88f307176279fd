//! Capacity estimates (requests per second) and the shares they imply.
//!
//! Units: capacity and load are both **throughputs** (req/s). Headroom shares
//! `(cap_i − load_i) / Σ(cap_j − load_j)` then have the fixed point `share_i = cap_i / Σ cap_j` whatever the
//! total load (with `load_i = share_i × T`, every headroom is `cap_i·(1 − T/Σcap)`), so a 4:1 asymmetry settles
//! at 80/20. The load used is the **planned** load, `share_i × T` with `T` the measured total throughput: an
//! endpoint's own windowed throughput lags the table by up to a window (4 s) and makes the loop ring.
//! Around that fixed point a share error `e` comes back as `−e·ρ/(1 − ρ)` (ρ = T / Σcap): near saturation
//! the rule over-corrects and amplifies estimate noise, so the engine holds its smoothing step to `1 − ρ`,
//! the step that lands on the fixed point (see `Engine::dynamic_weights`).
//!
//! Where an estimate comes from, best first:
//! 1. **Utilization** reported (ORCA-style, as gRPC WRR does with `qps / utilization`): capacity =
//!    completed / busy-seconds, i.e. the rate the endpoint would sustain at 100% busy. Exact under queueing.
//! 2. **Declared capacity** in concurrent slots: by Little's law, capacity = slots / mean latency (the
//!    request-weighted mean over the window; queueing makes this conservative).
//! 3. Otherwise the reference article's estimate `max(load × target_latency / observed_latency, min_capacity)`.
//!    It grows with load while latency is flat, so on its own it balances toward equal latencies rather than
//!    a capacity ratio; it is what is left when the backend says nothing else.
//!
//! `target_latency` only enters through (3): applied as a ceiling on (1) or (2) it acts as a cliff (a
//! backend that is slow by nature, not by queueing, keeps its latency when load is taken away, so the ceiling
//! tracks its load down to the floor). Latency acts on (1) and (2) through the threshold below instead.
//!
//! Then, in order: **goodput** (× success rate, so fast failures do not count as capacity), the throughput-mode
//! **latency threshold** (past `latency_threshold`, × threshold / p99) and the **error
//! penalty** (× max(0, 1 − error_penalty × error_rate), gRPC WRR's `error_utilization_penalty`).

use super::config::{EngineConfig, Mode};
use super::window::{Aggregate, secs};

/// Where a capacity estimate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacitySource {
    /// completed / busy time.
    Utilization,
    /// slots / mean latency (Little's law).
    Declared,
    /// `max(load × target / observed, min_capacity)`.
    LatencyFormula,
}

impl CapacitySource {
    /// Short name.
    pub fn as_str(&self) -> &'static str {
        match self {
            CapacitySource::Utilization => "utilization",
            CapacitySource::Declared => "declared slots",
            CapacitySource::LatencyFormula => "latency formula",
        }
    }
}

/// One endpoint's estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapacityEstimate {
    /// Effective capacity after every factor, req/s (what the shares use).
    pub effective_rps: f64,
    /// Capacity before the latency and error factors, req/s.
    pub raw_rps: f64,
    /// Source of `raw_rps`.
    pub source: CapacitySource,
    /// Product of the latency factors in (0, 1] (1 = latency did not act).
    pub latency_factor: f64,
    /// Error factor in [0, 1] (1 = no errors).
    pub error_factor: f64,
    /// Latency-mode score, 1/p99 × error factor (1/s).
    pub latency_score: f64,
}

/// Estimates capacity from a window aggregate. `None` when the window holds no completed request.
pub fn estimate(
    agg: &Aggregate,
    declared_slots: Option<u32>,
    cfg: &EngineConfig,
) -> Option<CapacityEstimate> {
    if agg.completed <= 0.0 || agg.window_s <= 0.0 || agg.mean_s <= 0.0 {
        return None;
    }
    let success = 1.0 - agg.error_rate;
    let target = secs(cfg.target_latency);
    let formula = (agg.throughput * target / agg.mean_s).max(cfg.min_capacity);
    let (mut raw, source) = match (agg.utilization, declared_slots) {
        (Some(u), _) if u > 0.0 && agg.busy_s > 0.0 && agg.completed_with_utilization >= 5.0 => (
            agg.completed_with_utilization / agg.busy_s,
            CapacitySource::Utilization,
        ),
        (_, Some(slots)) if slots > 0 => (f64::from(slots) / agg.mean_s, CapacitySource::Declared),
        _ => (formula, CapacitySource::LatencyFormula),
    };
    raw = (raw * success).max(cfg.min_capacity);
    let mut latency_factor = 1.0;
    let threshold = secs(cfg.latency_threshold);
    if cfg.mode == Mode::Throughput && agg.p99_s > threshold {
        latency_factor *= threshold / agg.p99_s;
    }
    let error_factor = (1.0 - cfg.error_penalty * agg.error_rate).clamp(0.0, 1.0);
    let effective = raw * latency_factor * error_factor;
    let p99 = if agg.p99_s > 0.0 {
        agg.p99_s
    } else {
        agg.mean_s
    };
    Some(CapacityEstimate {
        effective_rps: if effective.is_finite() {
            effective
        } else {
            0.0
        },
        raw_rps: raw,
        source,
        latency_factor,
        error_factor,
        latency_score: error_factor / p99,
    })
}

/// Headroom shares: `out_i = max(cap_i − current_i × total_load, 0) / Σ(...)`; when no endpoint has headroom,
/// shares ∝ capacity; when no capacity at all, equal. `out` sums to 1 (for non-empty input).
pub fn headroom_shares(caps: &[f64], current: &[f64], total_load: f64, out: &mut [f64]) {
    let mut sum = 0.0;
    for ((o, &c), &s) in out.iter_mut().zip(caps).zip(current) {
        *o = (c - s * total_load).max(0.0);
        sum += *o;
    }
    if sum > 0.0 && sum.is_finite() {
        out.iter_mut().for_each(|o| *o /= sum);
        return;
    }
    proportional(caps, out);
}

/// `out_i = x_i / Σx` (equal shares when Σx is 0).
pub fn proportional(x: &[f64], out: &mut [f64]) {
    let sum: f64 = x.iter().map(|v| v.max(0.0)).sum();
    if sum > 0.0 && sum.is_finite() {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v.max(0.0) / sum;
        }
    } else if !out.is_empty() {
        let n = out.len() as f64;
        out.iter_mut().for_each(|o| *o = 1.0 / n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(
        throughput: f64,
        mean_ms: f64,
        p99_ms: f64,
        error_rate: f64,
        util: Option<f64>,
    ) -> Aggregate {
        let window_s = 4.0;
        let completed = throughput * window_s;
        Aggregate {
            heartbeats: 8,
            completed,
            failed: completed * error_rate,
            window_s,
            throughput,
            error_rate,
            mean_s: mean_ms / 1e3,
            p50_s: mean_ms / 1e3,
            p99_s: p99_ms / 1e3,
            in_flight: throughput * mean_ms / 1e3,
            utilization: util,
            busy_s: util.unwrap_or(0.0) * window_s,
            completed_with_utilization: if util.is_some() { completed } else { 0.0 },
        }
    }

    #[test]
    fn little_law_gives_capacity_ratio_not_slot_ratio() {
        let cfg = EngineConfig::default();
        // Same slots, 4× different speed: capacities 4:1 whatever the load.
        let fast = estimate(&agg(100.0, 10.0, 20.0, 0.0, None), Some(8), &cfg).unwrap();
        let slow = estimate(&agg(300.0, 40.0, 80.0, 0.0, None), Some(8), &cfg).unwrap();
        assert!((fast.effective_rps / slow.effective_rps - 4.0).abs() < 1e-9);
        assert!((fast.effective_rps - 800.0).abs() < 1e-6);
    }

    #[test]
    fn utilization_gives_rate_at_full_busy() {
        let cfg = EngineConfig::default();
        let e = estimate(&agg(200.0, 10.0, 20.0, 0.0, Some(0.25)), Some(8), &cfg).unwrap();
        assert_eq!(e.source, CapacitySource::Utilization);
        assert!((e.effective_rps - 800.0).abs() < 1e-6);
    }

    #[test]
    fn fast_failures_do_not_look_like_capacity() {
        let cfg = EngineConfig::default();
        let healthy = estimate(&agg(100.0, 10.0, 20.0, 0.0, None), Some(8), &cfg).unwrap();
        // Half the requests fail in ~0 ms: mean latency halves, but goodput and the penalty cut it.
        let failing = estimate(&agg(100.0, 5.0, 20.0, 0.5, None), Some(8), &cfg).unwrap();
        assert!(failing.effective_rps < 0.5 * healthy.effective_rps);
    }

    #[test]
    fn article_formula_without_other_signals() {
        let cfg = EngineConfig::default();
        let e = estimate(&agg(50.0, 200.0, 300.0, 0.0, None), None, &cfg).unwrap();
        assert_eq!(e.source, CapacitySource::LatencyFormula);
        assert!((e.effective_rps - 25.0).abs() < 1e-9); // 50 × 100 ms / 200 ms
    }

    #[test]
    fn headroom_fixed_point_is_capacity_ratio() {
        let caps = [800.0, 200.0];
        let mut out = [0.0; 2];
        for load in [10.0, 300.0, 700.0] {
            headroom_shares(&caps, &[0.8, 0.2], load, &mut out);
            assert!((out[0] - 0.8).abs() < 1e-12, "{load}: {out:?}");
        }
    }
}
