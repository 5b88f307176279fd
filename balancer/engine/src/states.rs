//! The engine's side of the per-endpoint state machine ([`crate::lifecycle::next_state`]): it gathers each
//! endpoint's inputs, applies the transition, and leaves the decision record's rule and sentence, built from
//! the transition's structured reason, for `publish`.

use super::*;
use lifecycle::{Lifecycle, StateInputs};

impl Engine {
    pub(crate) fn update_states(&mut self, now: Instant) {
        let cfg = &self.config;
        for ep in &mut self.endpoints {
            let inputs = StateInputs {
                added_at: ep.added_at,
                last_heartbeat: ep.last_rx,
                goodbye: ep.goodbye,
                accepting: !ep.not_accepting,
                stalled: ep.stalled.is_some(),
                canary_tripped: ep.canary.as_ref().is_some_and(|c| c.tripped),
            };
            let current = Lifecycle {
                state: ep.state,
                readmission: ep.readmission.clone(),
            };
            let t = lifecycle::next_state(&current, &inputs, cfg, now);
            ep.state = t.to.state;
            ep.readmission = t.to.readmission;
            if let Some(reason) = t.reason {
                // `publish` drained last recomputation's note; rules that leave one run after this.
                debug_assert!(ep.pending.is_none());
                ep.pending = Some((
                    reason.rule(),
                    records::state_sentence(&reason, ep.stalled.as_deref()),
                ));
            }
        }
    }
}
