//! The published table, and the decision records and sentences that say why each share moved.

use super::*;

impl Engine {
    pub(crate) fn rule_for(&self, i: usize, w: f64) -> Rule {
        let ep = &self.endpoints[i];
        let b = self.scratch_bounds[i];
        if ep.state == EndpointState::Degraded {
            return Rule::FreshnessDegraded;
        }
        if b.lo > 0.0 && (w - b.lo).abs() < 1e-9 {
            return if ep.is_canary {
                Rule::CanaryFloor
            } else {
                Rule::Floor
            };
        }
        if (w - b.soft_hi).abs() < 1e-9 {
            match self.scratch_kind[i] {
                CapKind::Planning | CapKind::MaxShare => return Rule::Cap,
                CapKind::Canary => return Rule::CanaryPromotion,
                CapKind::Ramp => return Rule::Readmission,
                CapKind::None => {}
            }
        }
        if self.damped {
            return Rule::Oscillation;
        }
        match ep.capacity {
            Some(c) if c.error_factor < 0.999 => Rule::Errors,
            Some(c) if c.latency_factor < 0.999 || self.config.mode == Mode::Latency => {
                Rule::Latency
            }
            Some(_) => Rule::Capacity,
            None => Rule::Smoothing,
        }
    }

    pub(crate) fn sentence(
        &self,
        i: usize,
        rule: Rule,
        old_w: f64,
        new_w: f64,
        prefix: Option<&str>,
    ) -> String {
        let ep = &self.endpoints[i];
        let mut s = String::new();
        if let Some(p) = prefix {
            s.push_str(p);
            s.push_str("; ");
        }
        if let Some(c) = ep.capacity
            && ep.state.is_live()
        {
            let p99 = ms(ep.agg.p99_s);
            let old_p99 = ms(ep.rec_p99_s);
            if old_p99 > 0.0 {
                let _ = write!(
                    s,
                    "p99 {} from {:.0} ms to {:.0} ms; ",
                    direction(old_p99, p99),
                    old_p99,
                    p99
                );
            } else {
                let _ = write!(s, "p99 {p99:.0} ms; ");
            }
            if ep.rec_capacity > 0.0 {
                let _ = write!(
                    s,
                    "estimated capacity {} from {:.0} to {:.0} req/s ({}); ",
                    direction(ep.rec_capacity, c.effective_rps),
                    ep.rec_capacity,
                    c.effective_rps,
                    c.source.as_str()
                );
            } else {
                let _ = write!(
                    s,
                    "estimated capacity {:.0} req/s ({}); ",
                    c.effective_rps,
                    c.source.as_str()
                );
            }
            if ep.agg.error_rate > 0.0 || ep.rec_error > 0.0 {
                let _ = write!(
                    s,
                    "error rate {:.1}% -> {:.1}%; ",
                    ep.rec_error * 100.0,
                    ep.agg.error_rate * 100.0
                );
            }
        }
        let what = match rule {
            Rule::Floor => " (held at the floor)",
            Rule::CanaryFloor => " (held at the canary floor)",
            Rule::Cap => " (capped)",
            Rule::CanaryPromotion => " (canary allowance)",
            Rule::Readmission => " (re-admission ramp)",
            Rule::Oscillation => " (damped: sawtooth detected)",
            Rule::StaticFallback => " (static fallback)",
            Rule::Seeded => " (seeded)",
            _ => "",
        };
        let _ = write!(s, "share {old_w:.3} -> {new_w:.3}{what}");
        s
    }

    pub(crate) fn publish(
        &mut self,
        now: Instant,
        fallback: bool,
        fallback_changed: bool,
        seed_handed_over: bool,
    ) {
        let mut changed = fallback_changed;
        let min_step = self.config.decision_threshold;
        let mut any_damped = false;
        for i in 0..self.endpoints.len() {
            let new_w = self.scratch_w[i];
            let old_w = self.table.entries[i].weight;
            let state = self.endpoints[i].state;
            if new_w != old_w || state != self.table.entries[i].state {
                changed = true;
            }
            // Oscillation and drift.
            let cfg = &self.config;
            let ep = &mut self.endpoints[i];
            match ep.oscillation.observe(now, old_w, new_w, min_step, cfg) {
                OscillationEvent::Detected(r) => {
                    self.alerts.push(Alert {
                        at: now,
                        endpoint: Some(ep.spec.id.clone()),
                        kind: AlertKind::Oscillation,
                        message: format!(
                            "{} reversed direction {r} times within {:?}: damping with alpha {}",
                            ep.spec.id, cfg.oscillation_window, cfg.oscillation_damped_alpha
                        ),
                    });
                }
                OscillationEvent::Relaxed | OscillationEvent::None => {}
            }
            any_damped |= ep.oscillation.damped;
            let settled = self.drift_from.is_some_and(|t| now >= t);
            if !settled {
                ep.drift = Drift::default();
            } else if let Some((from, to)) = ep.drift.observe(now, new_w, cfg) {
                self.alerts.push(Alert {
                    at: now,
                    endpoint: Some(ep.spec.id.clone()),
                    kind: AlertKind::Drift,
                    message: format!(
                        "{} share moved from {:.3} to {:.3} ({:+.0} percentage points) within {:?}",
                        ep.spec.id,
                        from,
                        to,
                        (to - from) * 100.0,
                        cfg.drift_window
                    ),
                });
            }
            // Records.
            let rec_w = ep.rec_weight;
            let rec_state = ep.rec_state;
            let pending = ep.pending.take();
            // A record when the share moved by the threshold since the last record, the state changed, a
            // rule left a note (a promotion, a hold-off) this round, or measurements took over from a seed.
            if state != rec_state
                || (new_w - rec_w).abs() >= min_step
                || pending.is_some()
                || seed_handed_over
            {
                let (rule, prefix) = match pending {
                    Some((r, why)) => (r, Some(why)),
                    None if self.seeding => (Rule::Seeded, None),
                    None if fallback => (Rule::StaticFallback, None),
                    None if seed_handed_over => (
                        self.rule_for(i, new_w),
                        Some("measurements take over from the seed".to_string()),
                    ),
                    None => (self.rule_for(i, new_w), None),
                };
                let reason = self.sentence(i, rule, rec_w, new_w, prefix.as_deref());
                let ep = &self.endpoints[i];
                let (cap, raw) = ep
                    .capacity
                    .map_or((0.0, 0.0), |c| (c.effective_rps, c.raw_rps));
                let inputs = vec![
                    ("capacity_rps", cap),
                    ("raw_capacity_rps", raw),
                    ("throughput_rps", ep.agg.throughput),
                    ("in_flight", ep.agg.in_flight),
                    ("mean_ms", ms(ep.agg.mean_s)),
                    ("p99_ms", ms(ep.agg.p99_s)),
                    ("error_rate", ep.agg.error_rate),
                    ("calculated_share", ep.calc),
                    ("holdoff_s", ep.readmission.last_holdoff.as_secs_f64()),
                ];
                let decision = Decision {
                    at: now,
                    endpoint: ep.spec.id.clone(),
                    old_weight: rec_w,
                    new_weight: new_w,
                    old_state: rec_state,
                    new_state: state,
                    rule,
                    reason: reason.clone(),
                    inputs,
                };
                let (p99, er) = (ep.agg.p99_s, ep.agg.error_rate);
                let row = &mut self.table.entries[i];
                row.rule = rule;
                row.reason = reason;
                self.decisions.push(decision);
                let ep = &mut self.endpoints[i];
                ep.rec_weight = new_w;
                ep.rec_state = state;
                ep.rec_p99_s = p99;
                ep.rec_capacity = cap;
                ep.rec_error = er;
                changed = true;
            }
        }
        self.damped = any_damped;
        for (row, (ep, &w)) in self
            .table
            .entries
            .iter_mut()
            .zip(self.endpoints.iter().zip(&self.scratch_w))
        {
            row.weight = w;
            row.state = ep.state;
        }
        self.table.static_fallback = fallback;
        if changed {
            self.table.version += 1;
        }
    }
}

/// The sentence of a state transition's reason (`stalled`: the liveness rule's account of a stalled path).
pub(crate) fn state_sentence(reason: &StateReason, stalled: Option<&str>) -> String {
    match *reason {
        StateReason::Goodbye => "the agent said goodbye".into(),
        StateReason::NotAccepting => "the backend is not accepting".into(),
        // The breaker's own record (estimates.rs) says why it tripped; re-entering Tripped adds nothing.
        StateReason::CanaryTripped => String::new(),
        StateReason::Stalled => stalled.unwrap_or_default().to_string(),
        StateReason::NeverHeard { eject_after } => {
            format!("no heartbeat within {eject_after:?} of being added")
        }
        StateReason::Silent {
            silent_for,
            eject_after,
        } => format!(
            "no heartbeat for {:.1} s (eject_after {:?})",
            silent_for.as_secs_f64(),
            eject_after
        ),
        StateReason::Missed { missed } => {
            format!("{missed} heartbeats missed; share reduced, last load kept")
        }
        StateReason::RampComplete => "ramp complete".into(),
        StateReason::ShortGap => "heartbeats resumed after a short gap".into(),
        StateReason::HeldOff {
            flaps,
            flap_window,
            holdoff,
        } => format!(
            "heartbeats resumed; flap {flaps} within {flap_window:?}: re-admission held off {:.1} s",
            holdoff.as_secs_f64()
        ),
        StateReason::RampStarted { start, ramp } => format!(
            "heartbeats resumed; ramping from {:.0}% of its share over {:?}",
            start * 100.0,
            ramp
        ),
        StateReason::AcceptingAgain => "accepting again; ramping up".into(),
    }
}
