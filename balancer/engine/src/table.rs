//! The published weight table, endpoint states, and bounded renormalisation (water-filling).

use std::collections::BTreeMap;
use std::fmt;

use super::decision::Rule;

/// An endpoint's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointState {
    /// New or returning: its share ramps from `readmission_start` to full over `readmission_ramp`.
    Ramping,
    /// Reporting and weighted by its measurements.
    Active,
    /// Missed `degraded_after_missed` heartbeats: its share only falls.
    Degraded,
    /// Silent past `eject_after` (or held off while flapping): share 0.
    Ejected,
    /// A canary whose breaker tripped: share 0 until reset.
    Tripped,
    /// Said goodbye, or reports it is not accepting: share 0.
    Draining,
}

impl EndpointState {
    /// Stable name, e.g. `"degraded"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EndpointState::Ramping => "ramping",
            EndpointState::Active => "active",
            EndpointState::Degraded => "degraded",
            EndpointState::Ejected => "ejected",
            EndpointState::Tripped => "tripped",
            EndpointState::Draining => "draining",
        }
    }

    /// Whether the endpoint takes traffic (and is held at a floor).
    pub fn is_live(&self) -> bool {
        matches!(
            self,
            EndpointState::Ramping | EndpointState::Active | EndpointState::Degraded
        )
    }
}

impl fmt::Display for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One endpoint's row in the table.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointWeight {
    /// Endpoint id.
    pub id: String,
    /// Address clients dial.
    pub address: String,
    /// Zone, if known.
    pub zone: Option<String>,
    /// Labels (e.g. `track=canary`).
    pub labels: BTreeMap<String, String>,
    /// Share of traffic in [0, 1].
    pub weight: f64,
    /// Lifecycle state.
    pub state: EndpointState,
    /// The rule behind the latest recorded change.
    pub rule: Rule,
    /// The sentence of that change.
    pub reason: String,
}

/// A versioned snapshot of every endpoint's share, sorted by id.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WeightTable {
    /// Grows on every change.
    pub version: u64,
    /// Whether configured static weights (or equal shares) are in force.
    pub static_fallback: bool,
    /// One row per endpoint, sorted by id; shares sum to 1 unless the table is empty.
    pub entries: Vec<EndpointWeight>,
}

impl WeightTable {
    /// The row of `id`.
    pub fn get(&self, id: &str) -> Option<&EndpointWeight> {
        self.entries
            .binary_search_by(|e| e.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The share of `id` (0 if absent).
    pub fn weight(&self, id: &str) -> f64 {
        self.get(id).map_or(0.0, |e| e.weight)
    }

    /// Σ shares.
    pub fn total(&self) -> f64 {
        self.entries.iter().map(|e| e.weight).sum()
    }
}

/// Bounds for one share during renormalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Lower bound (the floor).
    pub lo: f64,
    /// Upper bound that may be relaxed when the bounds cannot sum to 1 (caps, ramps, canary allowance).
    pub soft_hi: f64,
    /// Upper bound that is never relaxed (a degraded endpoint never gains).
    pub hard_hi: f64,
}

impl Bounds {
    /// No bounds.
    pub const FREE: Bounds = Bounds {
        lo: 0.0,
        soft_hi: 1.0,
        hard_hi: 1.0,
    };
}

fn hi(b: &Bounds, soft: bool) -> f64 {
    if soft {
        b.soft_hi.min(b.hard_hi)
    } else {
        b.hard_hi
    }
    .max(b.lo)
}

fn reachable(w: &[f64], bounds: &[Bounds], soft: bool) -> f64 {
    w.iter()
        .zip(bounds)
        .map(|(&x, b)| if x > 0.0 { hi(b, soft) } else { b.lo })
        .sum()
}

/// Scales `w` to sum to 1 while keeping each share within its bounds (iterative water-filling, solved by
/// bisection on the common scale factor λ: share_i = clamp(λ·w_i, lo_i, hi_i)). Soft caps are dropped if the
/// hard caps alone would not let the shares reach 1; floors are scaled down if they sum above 1. Endpoints with
/// `w = 0` and `lo = 0` keep 0. Returns `false` (and leaves `w` as equal shares over the bounded set) only if
/// even that is impossible. Never produces NaN.
pub fn water_fill(w: &mut [f64], bounds: &mut [Bounds]) -> bool {
    let n = w.len();
    if n == 0 {
        return true;
    }
    for x in w.iter_mut() {
        if !x.is_finite() || *x < 0.0 {
            *x = 0.0;
        }
    }
    let lo_sum: f64 = bounds.iter().map(|b| b.lo).sum();
    if lo_sum > 1.0 {
        for b in bounds.iter_mut() {
            b.lo /= lo_sum;
        }
    }
    let mut use_soft = true;
    if reachable(w, bounds, true) < 1.0 - 1e-12 {
        use_soft = false;
        if reachable(w, bounds, false) < 1.0 - 1e-12 {
            // Weightless endpoints must take part: treat every endpoint with room as weighted equally.
            let any_room = bounds.iter().any(|b| hi(b, false) > b.lo);
            if !any_room {
                let s: f64 = bounds.iter().map(|b| b.lo).sum();
                if s > 0.0 {
                    for (x, b) in w.iter_mut().zip(bounds.iter()) {
                        *x = b.lo / s;
                    }
                } else {
                    w.fill(1.0 / n as f64);
                }
                return false;
            }
            for (x, b) in w.iter_mut().zip(bounds.iter()) {
                if *x <= 0.0 && hi(b, false) > b.lo {
                    *x = 1e-9;
                }
            }
            if reachable(w, bounds, false) < 1.0 - 1e-12 {
                // Only hard caps bind and they sum below 1: lift them proportionally.
                for b in bounds.iter_mut() {
                    b.hard_hi = 1.0;
                }
            }
        }
    }
    let total = |lambda: f64| -> f64 {
        w.iter()
            .zip(bounds.iter())
            .map(|(&x, b)| (lambda * x).clamp(b.lo, hi(b, use_soft)))
            .sum()
    };
    // Bracket λ.
    let mut lo_l = 0.0_f64;
    let mut hi_l = 1.0_f64;
    let mut guard = 0;
    while total(hi_l) < 1.0 && guard < 1000 {
        hi_l *= 2.0;
        guard += 1;
    }
    for _ in 0..100 {
        if hi_l - lo_l <= hi_l * 1e-15 {
            break;
        }
        let mid = 0.5 * (lo_l + hi_l);
        if total(mid) < 1.0 {
            lo_l = mid;
        } else {
            hi_l = mid;
        }
    }
    for (x, b) in w.iter_mut().zip(bounds.iter()) {
        *x = (hi_l * *x).clamp(b.lo, hi(b, use_soft));
    }
    // Put the last rounding residue on the endpoint with the most room in the needed direction.
    let residue = 1.0 - w.iter().sum::<f64>();
    if residue != 0.0 {
        let mut best: Option<usize> = None;
        let mut best_room = 0.0;
        for (i, (x, b)) in w.iter().zip(bounds.iter()).enumerate() {
            let room = if residue > 0.0 {
                hi(b, use_soft) - x
            } else {
                x - b.lo
            };
            if room > best_room {
                best_room = room;
                best = Some(i);
            }
        }
        if let Some(i) = best {
            w[i] += residue.clamp(-best_room, best_room);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(lo: f64, soft: f64, hard: f64) -> Bounds {
        Bounds {
            lo,
            soft_hi: soft,
            hard_hi: hard,
        }
    }

    #[test]
    fn floors_hold_and_sum_is_one() {
        let mut w = vec![0.99, 0.01, 0.0];
        let mut bs = vec![b(0.05, 1.0, 1.0), b(0.05, 1.0, 1.0), b(0.0, 1.0, 1.0)];
        assert!(water_fill(&mut w, &mut bs));
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((w[1] - 0.05).abs() < 1e-12 && w[2] == 0.0);
    }

    #[test]
    fn soft_caps_relax_before_hard_ones() {
        let mut w = vec![0.5, 0.5];
        let mut bs = vec![b(0.05, 0.2, 1.0), b(0.05, 1.0, 0.3)];
        water_fill(&mut w, &mut bs);
        assert!((w[1] - 0.3).abs() < 1e-9 && (w[0] - 0.7).abs() < 1e-9);
    }

    #[test]
    fn caps_push_excess_elsewhere() {
        let mut w = vec![0.9, 0.1];
        let mut bs = vec![b(0.05, 0.6, 1.0), b(0.05, 1.0, 1.0)];
        water_fill(&mut w, &mut bs);
        assert!((w[0] - 0.6).abs() < 1e-9 && (w[1] - 0.4).abs() < 1e-9);
    }
}
