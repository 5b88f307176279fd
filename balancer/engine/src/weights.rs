//! Shares: static fallback, or capacity shares smoothed and bounded (floors, caps, ramps, canary allowance,
//! degraded decay), then water-filled.

use super::*;

impl Engine {
    pub(crate) fn recompute(&mut self, now: Instant) {
        let cfg_interval = self.config.heartbeat_interval;
        let dt = match self.last_tick {
            Some(t) => now.saturating_duration_since(t),
            None => cfg_interval,
        };
        if self.last_tick.is_none_or(|t| now > t) {
            self.last_tick = Some(now);
        }
        let base_alpha = if self.damped {
            self.config.oscillation_damped_alpha
        } else {
            self.config.alpha
        };
        let alpha = smoothing::alpha_for(base_alpha, dt, cfg_interval);
        let overload_alpha = smoothing::alpha_for(self.config.overload_alpha, dt, cfg_interval);
        let decay = self
            .config
            .degraded_decay
            .powf(dt.as_secs_f64() / cfg_interval.as_secs_f64());

        self.update_states(now);
        let had_data = self.ever_had_data;
        self.refresh_estimates(now);
        // The first measured weights replace the start-up guess outright: smoothing exists to keep noise
        // from walking a converged weight, and a guess (equal shares, or declared slots) is not one.
        // A seed is a converged weight ([`Engine::seed`]): measurements are smoothed from it.
        let alpha = if had_data || self.seed.is_some() {
            alpha
        } else {
            1.0
        };

        let n = self.endpoints.len();
        self.scratch_w.clear();
        self.scratch_w.resize(n, 0.0);
        self.scratch_calc.clear();
        self.scratch_calc.resize(n, 0.0);
        self.scratch_bounds.clear();
        self.scratch_bounds.resize(
            n,
            Bounds {
                lo: 0.0,
                soft_hi: 0.0,
                hard_hi: 0.0,
            },
        );
        self.scratch_kind.clear();
        self.scratch_kind.resize(n, CapKind::None);

        let healthy = self
            .endpoints
            .iter()
            .any(|e| matches!(e.state, EndpointState::Active | EndpointState::Ramping));
        let live_with_data = self
            .endpoints
            .iter()
            .any(|e| e.state.is_live() && e.capacity.is_some());
        let fallback = n > 0 && (!healthy || !live_with_data);
        let seeding = fallback && healthy && !self.ever_had_data && self.seeded_weights();
        if self.ever_had_data {
            self.seed = None;
        }
        // The first measured table after a seed says so once per endpoint, even when it moved less than the
        // decision threshold: the rows must not go on claiming `seeded` shares that measurements now carry.
        let seed_handed_over = self.seeding && !seeding;
        self.seeding = seeding;
        if fallback {
            if !seeding {
                self.static_weights();
            }
            if !self.in_fallback && self.ever_had_data {
                let why = if healthy {
                    "no live endpoint has usable data"
                } else {
                    "no endpoint is healthy"
                };
                self.alerts.push(Alert {
                    at: now,
                    endpoint: None,
                    kind: AlertKind::AllUnhealthy,
                    message: format!(
                        "{why}: configured static weights (or equal shares) are in force"
                    ),
                });
            }
        } else if n > 0 {
            self.dynamic_weights(alpha, overload_alpha, decay, now);
        }
        let fallback_changed = self.in_fallback != fallback;
        if fallback {
            self.drift_from = None;
        } else if fallback_changed || self.drift_from.is_none() {
            // Drift is watched once the first dynamic weights have settled (one window after leaving fallback):
            // the move away from static weights at start-up is not drift.
            self.drift_from =
                Some(now + self.config.heartbeat_interval * self.config.window_len as u32);
        }
        self.in_fallback = fallback;
        self.publish(
            now,
            fallback && !seeding,
            fallback_changed,
            seed_handed_over,
        );
    }

    pub(crate) fn static_weights(&mut self) {
        let n = self.endpoints.len();
        let pick = |f: &dyn Fn(&Endpoint) -> bool, eps: &[Endpoint]| eps.iter().any(f);
        let live = |e: &Endpoint| e.state.is_live();
        let usable =
            |e: &Endpoint| !matches!(e.state, EndpointState::Draining | EndpointState::Tripped);
        let set: &dyn Fn(&Endpoint) -> bool = if pick(&live, &self.endpoints) {
            &live
        } else if pick(&usable, &self.endpoints) {
            &usable
        } else {
            &|_: &Endpoint| true
        };
        // Without configured static weights, declared slots are the best start-up guess: asymmetric paths
        // get asymmetric shares before the first measurement, never a second of equal shares.
        let configured = |e: &Endpoint| {
            e.spec
                .static_weight
                .is_some_and(|w| w.is_finite() && w > 0.0)
        };
        let by_slots = !self.endpoints.iter().any(configured)
            && self
                .endpoints
                .iter()
                .filter(|e| set(e))
                .all(|e| e.declared.is_some_and(|d| d > 0));
        let mut sum = 0.0;
        for (i, ep) in self.endpoints.iter().enumerate() {
            let w = if !set(ep) {
                0.0
            } else if by_slots {
                ep.declared.map_or(1.0, f64::from)
            } else {
                ep.spec
                    .static_weight
                    .filter(|w| w.is_finite() && *w > 0.0)
                    .unwrap_or(1.0)
            };
            self.scratch_w[i] = w;
            sum += w;
        }
        for w in &mut self.scratch_w {
            *w = if sum > 0.0 { *w / sum } else { 1.0 / n as f64 };
        }
        // A canary keeps its allowance even under static weights, and live endpoints keep their floor.
        for (i, ep) in self.endpoints.iter().enumerate() {
            let soft_hi = ep.canary.as_ref().map_or(1.0, |c| c.allowance);
            let lo = match (self.scratch_w[i] > 0.0, ep.is_canary) {
                (false, _) => 0.0,
                (true, true) => self.config.canary_floor,
                (true, false) => self.config.floor,
            };
            self.scratch_bounds[i] = Bounds {
                lo,
                soft_hi,
                hard_hi: 1.0,
            };
        }
        table::water_fill(&mut self.scratch_w, &mut self.scratch_bounds);
        for (i, ep) in self.endpoints.iter_mut().enumerate() {
            ep.calc = self.scratch_w[i];
        }
    }

    pub(crate) fn dynamic_weights(
        &mut self,
        alpha: f64,
        overload_alpha: f64,
        decay: f64,
        now: Instant,
    ) {
        let cfg = &self.config;
        // Eligible: live endpoints.
        self.scratch_idx.clear();
        let mut known_sum = 0.0;
        let mut known_n = 0usize;
        let mut score_sum = 0.0;
        let mut total_load = 0.0;
        for (i, ep) in self.endpoints.iter().enumerate() {
            if ep.state.is_live() {
                self.scratch_idx.push(i);
                if let Some(c) = ep.capacity {
                    known_sum += c.effective_rps;
                    score_sum += c.latency_score;
                    known_n += 1;
                    total_load += ep.agg.throughput;
                }
            }
        }
        let prior_cap = if known_n > 0 {
            known_sum / known_n as f64
        } else {
            1.0
        };
        let prior_score = if known_n > 0 {
            score_sum / known_n as f64
        } else {
            1.0
        };
        self.scratch_caps.clear();
        self.scratch_cur.clear();
        for &i in &self.scratch_idx {
            let ep = &self.endpoints[i];
            let v = match (cfg.mode, ep.capacity) {
                (Mode::Throughput, Some(c)) => c.effective_rps,
                (Mode::Latency, Some(c)) => c.latency_score,
                (Mode::Throughput, None) => prior_cap,
                (Mode::Latency, None) => prior_score,
            };
            self.scratch_caps.push(v);
            self.scratch_cur.push(self.table.entries[i].weight);
        }
        let m = self.scratch_idx.len();
        let mut calc = std::mem::take(&mut self.scratch_calc);
        calc.resize(m.max(calc.len()), 0.0);
        match cfg.mode {
            Mode::Throughput => capacity::headroom_shares(
                &self.scratch_caps,
                &self.scratch_cur,
                total_load,
                &mut calc[..m],
            ),
            Mode::Latency => capacity::proportional(&self.scratch_caps, &mut calc[..m]),
        }
        // The headroom rule's loop gain: with the planned load `s_i·T`, a share error `e` comes back as
        // `−e·ρ/(1 − ρ)` (ρ = T / Σcap), so a smoothing step α settles as `1 − α/(1 − ρ)`: at 70% busy the
        // default 0.3 lands in one step, near 90% it overshoots and rings (and a capacity estimate's noise is
        // amplified by 1/(1 − ρ)). A step of at most (1 − ρ) never overshoots: at exactly (1 − ρ) it lands on
        // the capacity share `cap_i / Σcap`, the rule's fixed point.
        let total_cap: f64 = self.scratch_caps.iter().sum();
        let busy = match cfg.mode {
            Mode::Throughput if total_cap > 0.0 && total_load > 0.0 => {
                (total_load / total_cap).min(1.0)
            }
            _ => 0.0,
        };
        let stable_step = (1.0 - busy).max(MIN_STABLE_STEP);
        let floor = cfg.floor;
        let active_count = self
            .endpoints
            .iter()
            .filter(|e| e.state == EndpointState::Active)
            .count();
        for (k, &i) in self.scratch_idx.iter().enumerate() {
            let ep = &mut self.endpoints[i];
            let old = self.table.entries[i].weight;
            let c = calc[k];
            ep.calc = c;
            let lo = if ep.is_canary {
                cfg.canary_floor
            } else {
                floor
            };
            let mut b = Bounds {
                lo,
                soft_hi: 1.0,
                hard_hi: 1.0,
            };
            let mut kind = CapKind::None;
            let mut cap = |v: f64, k: CapKind, b: &mut Bounds| {
                if v < b.soft_hi {
                    b.soft_hi = v;
                    kind = k;
                }
            };
            match cfg.mode {
                Mode::Throughput if total_load > 0.0 => cap(
                    cfg.max_planned_utilization * self.scratch_caps[k] / total_load,
                    CapKind::Planning,
                    &mut b,
                ),
                Mode::Latency => cap(cfg.max_share, CapKind::MaxShare, &mut b),
                Mode::Throughput => {}
            }
            if let Some(cn) = &ep.canary {
                cap(cn.allowance, CapKind::Canary, &mut b);
            }
            let w = match ep.state {
                EndpointState::Degraded => {
                    b.hard_hi = old;
                    b.lo = b.lo.min(old);
                    old * decay
                }
                _ => {
                    if ep.state == EndpointState::Ramping
                        && let Some(f) = ep.readmission.ramp_factor(now, cfg)
                    {
                        let ramp = (f * c).max(lo);
                        cap(ramp, CapKind::Ramp, &mut b);
                        // With an active endpoint to absorb the rest, the ramp is firmer than the planning
                        // caps: running the others a little past 80% beats flooding a cold endpoint.
                        if active_count > 0 {
                            b.hard_hi = b.hard_hi.min(ramp.max(b.lo));
                        }
                    }
                    // Fast down, slow up: a path whose regime just changed (its window restarted on a step in
                    // latency or errors) and that is now planned past its capacity sheds load at once. Tied to
                    // a detected step, not to the capacity comparison alone, which noise crosses both ways.
                    let stepped = ep.step_change_at.is_some_and(|t| {
                        now.saturating_duration_since(t) <= cfg.heartbeat_interval * 4
                    });
                    let overloaded = cfg.mode == Mode::Throughput
                        && stepped
                        && c < old
                        && old * total_load > self.scratch_caps[k];
                    if overloaded {
                        // Shed at once, to its capacity share: its headroom share (0 when planned past its
                        // capacity) is where the rule would take it only to swing back on the next tick.
                        let target = if total_cap > 0.0 {
                            self.scratch_caps[k] / total_cap
                        } else {
                            c
                        };
                        smoothing::smooth(old, target.min(old), overload_alpha)
                    } else {
                        let a = smoothing::settled_alpha(alpha, c - old, cfg.settle_band)
                            .min(stable_step);
                        smoothing::smooth(old, c, a)
                    }
                }
            };
            self.scratch_w[i] = w;
            self.scratch_bounds[i] = b;
            self.scratch_kind[i] = kind;
        }
        self.scratch_calc = calc;
        // Not live: 0, held there.
        for (i, ep) in self.endpoints.iter().enumerate() {
            if !ep.state.is_live() {
                self.scratch_w[i] = 0.0;
                self.scratch_bounds[i] = Bounds {
                    lo: 0.0,
                    soft_hi: 0.0,
                    hard_hi: 0.0,
                };
            }
        }
        table::water_fill(&mut self.scratch_w, &mut self.scratch_bounds);
    }
}
