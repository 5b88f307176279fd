//! Membership and inputs: endpoints added, updated and removed; heartbeats (validated, rejected with a
//! record) and goodbyes.

use super::*;

impl Engine {
    /// Adds an endpoint, or updates its address, zone, labels, static weight and declared capacity.
    pub fn upsert_endpoint(&mut self, now: Instant, spec: EndpointSpec) {
        let (key, value) = self.config.canary_key_value();
        let is_canary = spec.labels.get(key).is_some_and(|v| v == value);
        if let Some(&i) = self.index.get(&spec.id) {
            let ep = &mut self.endpoints[i];
            if ep.spec == spec {
                // Re-resolution of an unchanged endpoint: nothing to publish.
                return;
            }
            if is_canary && ep.canary.is_none() {
                ep.canary = Some(Canary::new(&self.config));
            } else if !is_canary {
                ep.canary = None;
            }
            ep.is_canary = is_canary;
            if spec.declared_capacity.is_some() {
                ep.declared = spec.declared_capacity;
            }
            let row = &mut self.table.entries[i];
            row.address.clone_from(&spec.address);
            row.zone.clone_from(&spec.zone);
            row.labels.clone_from(&spec.labels);
            ep.spec = spec;
            self.table.version += 1;
            self.recompute(now);
            return;
        }
        let pos = self.endpoints.partition_point(|e| e.spec.id < spec.id);
        let mut readmission = Readmission::default();
        let state = if self.ever_had_data {
            readmission.start_ramp(now);
            EndpointState::Ramping
        } else {
            EndpointState::Active
        };
        let ep = Endpoint {
            is_canary,
            window: Window::new(self.config.window_len),
            added_at: now,
            last_rx: None,
            declared: spec.declared_capacity,
            state,
            goodbye: false,
            not_accepting: false,
            fresh_data: false,
            stalled: None,
            readmission,
            canary: is_canary.then(|| Canary::new(&self.config)),
            oscillation: Oscillation::default(),
            step_change_at: None,
            drift: Drift::default(),
            agg: Aggregate::default(),
            capacity: None,
            calc: 0.0,
            pending: None,
            rec_weight: 0.0,
            rec_state: state,
            rec_p99_s: 0.0,
            rec_capacity: 0.0,
            rec_error: 0.0,
            spec,
        };
        let row = EndpointWeight {
            id: ep.spec.id.clone(),
            address: ep.spec.address.clone(),
            zone: ep.spec.zone.clone(),
            labels: ep.spec.labels.clone(),
            weight: 0.0,
            state,
            rule: Rule::Added,
            reason: "added".into(),
        };
        let reason = format!(
            "endpoint {} at {} added{}{}",
            ep.spec.id,
            ep.spec.address,
            if is_canary { " as a canary" } else { "" },
            if state == EndpointState::Ramping {
                "; it ramps up from its floor"
            } else {
                ""
            }
        );
        self.decisions.push(Decision {
            at: now,
            endpoint: ep.spec.id.clone(),
            old_weight: 0.0,
            new_weight: 0.0,
            old_state: state,
            new_state: state,
            rule: Rule::Added,
            reason,
            inputs: Vec::new(),
        });
        self.endpoints.insert(pos, ep);
        self.table.entries.insert(pos, row);
        self.reindex();
        self.table.version += 1;
        self.recompute(now);
    }

    /// Removes an endpoint; returns whether it was known.
    pub fn remove_endpoint(&mut self, now: Instant, id: &str) -> bool {
        let Some(&i) = self.index.get(id) else {
            return false;
        };
        let ep = self.endpoints.remove(i);
        let row = self.table.entries.remove(i);
        self.reindex();
        self.decisions.push(Decision {
            at: now,
            endpoint: ep.spec.id,
            old_weight: row.weight,
            new_weight: 0.0,
            old_state: row.state,
            new_state: row.state,
            rule: Rule::Removed,
            reason: format!(
                "endpoint removed from the set; its share {:.3} goes to the others",
                row.weight
            ),
            inputs: vec![("share", row.weight)],
        });
        self.table.version += 1;
        self.recompute(now);
        true
    }

    pub(crate) fn reindex(&mut self) {
        self.index.clear();
        for (i, e) in self.endpoints.iter().enumerate() {
            self.index.insert(e.spec.id.clone(), i);
        }
    }

    pub(crate) fn reject(
        &mut self,
        now: Instant,
        id: &str,
        rejection: Rejection,
    ) -> Result<(), Rejection> {
        let (w, st) = self
            .index
            .get(id)
            .map_or((0.0, EndpointState::Ejected), |&i| {
                (self.table.entries[i].weight, self.table.entries[i].state)
            });
        self.decisions.push(Decision {
            at: now,
            endpoint: id.to_string(),
            old_weight: w,
            new_weight: w,
            old_state: st,
            new_state: st,
            rule: Rule::Rejected,
            reason: format!("heartbeat rejected: {rejection}"),
            inputs: Vec::new(),
        });
        Err(rejection)
    }

    /// Takes one heartbeat; `now` is the coordinator's receive time. Unknown endpoints and impossible values
    /// (failed > completed, a zero window, a NaN, infinite or negative utilization, zero declared slots) are
    /// rejected with a decision record of rule [`Rule::Rejected`] (weights unchanged; an unknown endpoint's
    /// record shows state `Ejected`). Weights change at the next tick. Does not allocate on the accepted path.
    pub fn on_heartbeat(
        &mut self,
        now: Instant,
        id: &str,
        report: LoadReport,
    ) -> Result<(), Rejection> {
        let Some(&i) = self.index.get(id) else {
            return self.reject(now, id, Rejection::UnknownEndpoint(id.to_string()));
        };
        let invalid = |field: &'static str, value: String| Rejection::Invalid { field, value };
        let problem = if report.failed > report.completed {
            Some(invalid(
                "failed",
                format!(
                    "{} failed out of {} completed (error rate above 1)",
                    report.failed, report.completed
                ),
            ))
        } else if report.window.is_zero() {
            Some(invalid(
                "window",
                "0 (throughput would divide by zero)".into(),
            ))
        } else if let Some(u) = report.utilization.filter(|u| !u.is_finite() || *u < 0.0) {
            Some(invalid(
                "utilization",
                format!("{u} (must be finite and non-negative)"),
            ))
        } else if report.declared_capacity == Some(0) {
            Some(invalid("declared_capacity", "0 slots".into()))
        } else {
            None
        };
        if let Some(r) = problem {
            return self.reject(now, id, r);
        }
        let step = self.config.step_change_factor;
        let ep = &mut self.endpoints[i];
        let recent_mean = Duration::from_secs_f64(ep.agg.mean_s.max(0.0));
        ep.stalled = liveness::stall(&report, recent_mean, &self.config);
        let received = ep.last_rx.map_or(now, |t| t.max(now));
        let restarted = ep.window.push(
            Sample {
                received,
                in_flight: f64::from(report.in_flight),
                completed: report.completed as f64,
                failed: report.failed as f64,
                window_s: report.window.as_secs_f64(),
                mean_s: report.latency_mean.as_secs_f64(),
                p50_s: report.latency_p50.as_secs_f64(),
                p99_s: report.latency_p99.as_secs_f64(),
                utilization: report.utilization,
            },
            step,
        );
        if restarted {
            ep.step_change_at = Some(received);
        }
        ep.last_rx = Some(received);
        if report.declared_capacity.is_some() {
            ep.declared = report.declared_capacity;
        }
        ep.not_accepting = !report.accepting;
        if report.accepting {
            ep.goodbye = false;
        }
        ep.fresh_data = true;
        Ok(())
    }

    /// The agent is draining: the endpoint gets 0 at once (state [`EndpointState::Draining`]) until it reports
    /// `accepting` again.
    pub fn on_goodbye(&mut self, now: Instant, id: &str) {
        if let Some(&i) = self.index.get(id) {
            self.endpoints[i].goodbye = true;
            self.recompute(now);
        }
    }
}
