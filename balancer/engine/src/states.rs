//! The freshness state machine per endpoint: fresh, degraded after missed heartbeats, ejected, re-admitted
//! with a ramp and hold-off; draining; stalled.

use super::*;

impl Engine {
    pub(crate) fn update_states(&mut self, now: Instant) {
        let cfg = &self.config;
        for ep in &mut self.endpoints {
            let prev = ep.state;
            let mut next = prev;
            let mut why = String::new();
            if ep.goodbye || ep.not_accepting {
                next = EndpointState::Draining;
                why = if ep.goodbye {
                    "the agent said goodbye".into()
                } else {
                    "the backend is not accepting".into()
                };
            } else if ep.canary.as_ref().is_some_and(|c| c.tripped) {
                next = EndpointState::Tripped;
            } else if let Some(stalled) = ep.stalled.as_ref().filter(|_| {
                ep.last_rx.is_some_and(|last| {
                    matches!(freshness::classify(last, now, cfg), Freshness::Fresh(_))
                })
            }) {
                // Fresh heartbeats that say nothing completes: not live, whatever the freshness rules say.
                if matches!(prev, EndpointState::Active | EndpointState::Ramping)
                    || ep.readmission.holdoff_until.is_some()
                {
                    ep.readmission.on_outage(now, cfg);
                }
                ep.readmission.holdoff_until = None;
                next = EndpointState::Ejected;
                if prev != EndpointState::Ejected {
                    ep.pending = Some((Rule::LivenessStalled, stalled.clone()));
                }
            } else {
                match ep.last_rx {
                    None => {
                        if now.saturating_duration_since(ep.added_at) >= cfg.eject_after {
                            next = EndpointState::Ejected;
                            why =
                                format!("no heartbeat within {:?} of being added", cfg.eject_after);
                        }
                    }
                    Some(last) => match freshness::classify(last, now, cfg) {
                        Freshness::Expired => {
                            // A new outage: from a live state, or after a return (even one still held off).
                            if matches!(prev, EndpointState::Active | EndpointState::Ramping)
                                || ep.readmission.holdoff_until.is_some()
                            {
                                ep.readmission.on_outage(now, cfg);
                            }
                            ep.readmission.holdoff_until = None;
                            next = EndpointState::Ejected;
                            why = format!(
                                "no heartbeat for {:.1} s (eject_after {:?})",
                                now.saturating_duration_since(last).as_secs_f64(),
                                cfg.eject_after
                            );
                        }
                        Freshness::Degraded(m) => {
                            if matches!(prev, EndpointState::Active | EndpointState::Ramping)
                                || (prev == EndpointState::Degraded
                                    && ep.readmission.holdoff_until.is_some())
                            {
                                ep.readmission.on_outage(now, cfg);
                                next = EndpointState::Degraded;
                                why =
                                    format!("{m} heartbeats missed; share reduced, last load kept");
                            }
                        }
                        Freshness::Fresh(_) => match prev {
                            EndpointState::Active => {}
                            EndpointState::Ramping => {
                                if ep.readmission.ramp_factor(now, cfg).is_none() {
                                    next = EndpointState::Active;
                                    why = "ramp complete".into();
                                }
                            }
                            EndpointState::Degraded | EndpointState::Ejected => {
                                if ep.readmission.holdoff_until.is_none() {
                                    if prev == EndpointState::Degraded
                                        && !ep.readmission.is_flapping()
                                    {
                                        next = EndpointState::Active;
                                        why = "heartbeats resumed after a short gap".into();
                                        ep.readmission.last_holdoff = Duration::ZERO;
                                    } else {
                                        let h = ep.readmission.on_return(now, cfg);
                                        if !h.is_zero() {
                                            why = format!(
                                                "heartbeats resumed; flap {} within {:?}: re-admission held off {:.1} s",
                                                ep.readmission.outages,
                                                cfg.flap_window,
                                                h.as_secs_f64()
                                            );
                                            ep.pending = Some((Rule::Readmission, why.clone()));
                                        }
                                    }
                                }
                                if next == prev && !ep.readmission.held_off(now) {
                                    ep.readmission.start_ramp(now);
                                    next = EndpointState::Ramping;
                                    why = format!(
                                        "heartbeats resumed; ramping from {:.0}% of its share over {:?}",
                                        cfg.readmission_start * 100.0,
                                        cfg.readmission_ramp
                                    );
                                }
                            }
                            EndpointState::Draining | EndpointState::Tripped => {
                                ep.readmission.start_ramp(now);
                                next = EndpointState::Ramping;
                                why = "accepting again; ramping up".into();
                            }
                        },
                    },
                }
            }
            if next != prev {
                let rule = match next {
                    EndpointState::Degraded => Rule::FreshnessDegraded,
                    EndpointState::Ejected => Rule::FreshnessEjected,
                    EndpointState::Draining => Rule::Draining,
                    EndpointState::Tripped => Rule::CanaryBreaker,
                    EndpointState::Ramping | EndpointState::Active => Rule::Readmission,
                };
                if ep
                    .pending
                    .as_ref()
                    .is_none_or(|(r, _)| !matches!(r, Rule::CanaryBreaker | Rule::LivenessStalled))
                {
                    ep.pending = Some((rule, why));
                }
                ep.state = next;
            }
        }
    }
}
