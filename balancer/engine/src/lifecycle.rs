//! The per-endpoint state machine as one pure function: [`next_state`] takes an endpoint's [`Lifecycle`]
//! (its state and its re-admission memory), what the rules read this recomputation ([`StateInputs`]), the
//! configuration and `now`, and returns a [`Transition`]: the new lifecycle and, when a decision record is
//! due, a structured [`StateReason`]. The engine (`states.rs`) builds the inputs per endpoint, applies the
//! transition and turns the reason into a record's sentence; no string is assembled here.
//!
//! The rules, first match wins:
//! 1. a goodbye, or a heartbeat saying the backend is not accepting → [`EndpointState::Draining`];
//! 2. a canary whose breaker tripped → [`EndpointState::Tripped`];
//! 3. fresh heartbeats that show a stalled path ([`crate::liveness`]) → [`EndpointState::Ejected`];
//! 4. no heartbeat yet: ejected once `eject_after` has passed since the endpoint was added;
//! 5. freshness ([`crate::freshness`]) of the last heartbeat:
//!    - expired → ejected (a new outage if it was live, or had returned and was held off);
//!    - degraded → degraded, from [`EndpointState::Active`] or [`EndpointState::Ramping`] only (a new
//!      outage); a silent endpoint is never revived into degraded;
//!    - fresh → ramping finishes into active once the ramp is over; degraded comes back to active after a
//!      short gap unless it flaps; otherwise (ejected, or a flapping degraded endpoint) the return picks a
//!      hold-off ([`crate::readmission`]) and ramps once it has passed; draining and tripped endpoints that
//!      accept again ramp at once.
//!
//! So nothing enters active except from ramping (ramp complete) or degraded (a short gap, not a flapper),
//! and no ramp starts from degraded or ejected while a hold-off runs.

use std::time::{Duration, Instant};

use super::config::EngineConfig;
use super::decision::Rule;
use super::freshness::{self, Freshness};
use super::readmission::Readmission;
use super::table::EndpointState;

/// What the state machine remembers of one endpoint between recomputations.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    /// The endpoint's state.
    pub state: EndpointState,
    /// Outages, hold-off and ramp.
    pub readmission: Readmission,
}

/// What the rules read of one endpoint at one recomputation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateInputs {
    /// When the endpoint joined the set.
    pub added_at: Instant,
    /// When its latest heartbeat was received (`None`: never).
    pub last_heartbeat: Option<Instant>,
    /// The agent said goodbye (and has not reported `accepting` since).
    pub goodbye: bool,
    /// The latest heartbeat said the backend accepts new requests (`true` before any heartbeat).
    pub accepting: bool,
    /// The latest heartbeat showed a stalled path ([`crate::liveness::stall`]).
    pub stalled: bool,
    /// The endpoint is a canary whose breaker has tripped.
    pub canary_tripped: bool,
}

/// Why a state changed (or, for [`StateReason::HeldOff`], why a record is due although it did not).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StateReason {
    /// The agent said goodbye.
    Goodbye,
    /// The backend reports it is not accepting.
    NotAccepting,
    /// The canary's breaker tripped.
    CanaryTripped,
    /// Fresh heartbeats show a path that completes nothing ([`crate::liveness`]).
    Stalled,
    /// No heartbeat within `eject_after` of being added.
    NeverHeard {
        /// The configured `eject_after`.
        eject_after: Duration,
    },
    /// Silent past `eject_after`.
    Silent {
        /// Time since the last heartbeat.
        silent_for: Duration,
        /// The configured `eject_after`.
        eject_after: Duration,
    },
    /// `degraded_after_missed` or more heartbeats missed.
    Missed {
        /// Heartbeats missed.
        missed: u32,
    },
    /// The re-admission ramp is over.
    RampComplete,
    /// Heartbeats resumed after a short gap (not a flapper): straight back to active.
    ShortGap,
    /// Heartbeats resumed, but the endpoint flaps: re-admission waits (the state does not change).
    HeldOff {
        /// Consecutive outages within `flap_window`.
        flaps: u32,
        /// The configured `flap_window`.
        flap_window: Duration,
        /// The hold-off chosen.
        holdoff: Duration,
    },
    /// Heartbeats resumed (after any hold-off): the ramp starts.
    RampStarted {
        /// The configured `readmission_start` (fraction of the share the ramp starts from).
        start: f64,
        /// The configured `readmission_ramp`.
        ramp: Duration,
    },
    /// A draining or tripped endpoint accepts again: the ramp starts.
    AcceptingAgain,
}

impl StateReason {
    /// The rule a decision record of this reason carries.
    pub fn rule(&self) -> Rule {
        match self {
            StateReason::Goodbye | StateReason::NotAccepting => Rule::Draining,
            StateReason::CanaryTripped => Rule::CanaryBreaker,
            StateReason::Stalled => Rule::LivenessStalled,
            StateReason::NeverHeard { .. } | StateReason::Silent { .. } => Rule::FreshnessEjected,
            StateReason::Missed { .. } => Rule::FreshnessDegraded,
            StateReason::RampComplete
            | StateReason::ShortGap
            | StateReason::HeldOff { .. }
            | StateReason::RampStarted { .. }
            | StateReason::AcceptingAgain => Rule::Readmission,
        }
    }
}

/// The outcome of [`next_state`].
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The endpoint's lifecycle after this recomputation.
    pub to: Lifecycle,
    /// Set when a decision record is due: whenever the state changed, and on a hold-off.
    pub reason: Option<StateReason>,
}

/// The state machine: where `current` goes given `inputs` at `now`. Pure: same arguments, same result.
pub fn next_state(
    current: &Lifecycle,
    inputs: &StateInputs,
    cfg: &EngineConfig,
    now: Instant,
) -> Transition {
    let prev = current.state;
    let mut readmission = current.readmission.clone();
    let (state, reason) = step(prev, &mut readmission, inputs, cfg, now);
    Transition {
        to: Lifecycle { state, readmission },
        reason,
    }
}

/// The rules on a copy of the re-admission memory: the new state, and the reason when a record is due.
fn step(
    prev: EndpointState,
    readmission: &mut Readmission,
    inputs: &StateInputs,
    cfg: &EngineConfig,
    now: Instant,
) -> (EndpointState, Option<StateReason>) {
    let changed = |next: EndpointState, reason: StateReason| {
        if next == prev {
            (prev, None)
        } else {
            (next, Some(reason))
        }
    };
    if inputs.goodbye {
        return changed(EndpointState::Draining, StateReason::Goodbye);
    }
    if !inputs.accepting {
        return changed(EndpointState::Draining, StateReason::NotAccepting);
    }
    if inputs.canary_tripped {
        return changed(EndpointState::Tripped, StateReason::CanaryTripped);
    }
    let freshness = inputs
        .last_heartbeat
        .map(|last| (last, freshness::classify(last, now, cfg)));
    if inputs.stalled && matches!(freshness, Some((_, Freshness::Fresh(_)))) {
        // Fresh heartbeats that say nothing completes: not live, whatever the freshness rules say.
        eject(prev, readmission, cfg, now);
        return changed(EndpointState::Ejected, StateReason::Stalled);
    }
    let Some((last, freshness)) = freshness else {
        if now.saturating_duration_since(inputs.added_at) >= cfg.eject_after {
            return changed(
                EndpointState::Ejected,
                StateReason::NeverHeard {
                    eject_after: cfg.eject_after,
                },
            );
        }
        return (prev, None);
    };
    match freshness {
        Freshness::Expired => {
            eject(prev, readmission, cfg, now);
            changed(
                EndpointState::Ejected,
                StateReason::Silent {
                    silent_for: now.saturating_duration_since(last),
                    eject_after: cfg.eject_after,
                },
            )
        }
        Freshness::Degraded(missed) => {
            let live = matches!(prev, EndpointState::Active | EndpointState::Ramping);
            let held_off_return =
                prev == EndpointState::Degraded && readmission.holdoff_until.is_some();
            if live || held_off_return {
                readmission.on_outage(now, cfg);
                changed(EndpointState::Degraded, StateReason::Missed { missed })
            } else {
                (prev, None)
            }
        }
        Freshness::Fresh(_) => match prev {
            EndpointState::Active => (prev, None),
            EndpointState::Ramping => {
                if readmission.ramp_factor(now, cfg).is_none() {
                    (EndpointState::Active, Some(StateReason::RampComplete))
                } else {
                    (prev, None)
                }
            }
            EndpointState::Degraded | EndpointState::Ejected => {
                returning(prev, readmission, cfg, now)
            }
            EndpointState::Draining | EndpointState::Tripped => {
                readmission.start_ramp(now);
                (EndpointState::Ramping, Some(StateReason::AcceptingAgain))
            }
        },
    }
}

/// An ejection: a new outage when the endpoint was live, or had returned (even if still held off).
fn eject(prev: EndpointState, readmission: &mut Readmission, cfg: &EngineConfig, now: Instant) {
    if matches!(prev, EndpointState::Active | EndpointState::Ramping)
        || readmission.holdoff_until.is_some()
    {
        readmission.on_outage(now, cfg);
    }
    readmission.holdoff_until = None;
}

/// A degraded or ejected endpoint whose heartbeats are fresh again.
fn returning(
    prev: EndpointState,
    readmission: &mut Readmission,
    cfg: &EngineConfig,
    now: Instant,
) -> (EndpointState, Option<StateReason>) {
    let mut note = None;
    if readmission.holdoff_until.is_none() {
        if prev == EndpointState::Degraded && !readmission.is_flapping() {
            readmission.last_holdoff = Duration::ZERO;
            return (EndpointState::Active, Some(StateReason::ShortGap));
        }
        let holdoff = readmission.on_return(now, cfg);
        if !holdoff.is_zero() {
            note = Some(StateReason::HeldOff {
                flaps: readmission.outages,
                flap_window: cfg.flap_window,
                holdoff,
            });
        }
    }
    if readmission.held_off(now) {
        return (prev, note);
    }
    readmission.start_ramp(now);
    (
        EndpointState::Ramping,
        Some(StateReason::RampStarted {
            start: cfg.readmission_start,
            ramp: cfg.readmission_ramp,
        }),
    )
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests need an Instant to start from
mod tests {
    use super::*;
    use EndpointState::{Active, Degraded, Draining, Ejected, Ramping, Tripped};

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Re-admission memories, built with the rules' own methods at times relative to `now`.
    #[derive(Debug, Clone, Copy)]
    enum Memory {
        /// Never out.
        Clean,
        /// One outage 10 s ago: not a flapper.
        Once,
        /// Two outages 10 s apart: a flapper that has not come back yet.
        Flapping,
        /// A flapper that came back 1 s ago and was held off 2 s.
        HeldOff,
        /// A flapper that came back 3 s ago: its 2 s hold-off is over.
        HoldOffOver,
        /// Ramping for 10 s of 30.
        RampRunning,
        /// Ramp started 40 s ago: over.
        RampOver,
    }

    fn memory(m: Memory, now: Instant, cfg: &EngineConfig) -> Readmission {
        let mut r = Readmission::default();
        let ago = |d: u64| now - ms(d);
        match m {
            Memory::Clean => {}
            Memory::Once => r.on_outage(ago(10_000), cfg),
            Memory::Flapping | Memory::HeldOff | Memory::HoldOffOver => {
                r.on_outage(ago(20_000), cfg);
                r.on_outage(ago(10_000), cfg);
                match m {
                    Memory::HeldOff => {
                        let _ = r.on_return(ago(1_000), cfg);
                    }
                    Memory::HoldOffOver => {
                        let _ = r.on_return(ago(3_000), cfg);
                    }
                    _ => {}
                }
            }
            Memory::RampRunning => r.start_ramp(ago(10_000)),
            Memory::RampOver => r.start_ramp(ago(40_000)),
        }
        r
    }

    /// What the endpoint's inputs say, relative to `now`.
    #[derive(Debug, Clone, Copy)]
    enum Input {
        /// A heartbeat 100 ms ago, accepting, nothing wrong.
        Fresh,
        /// Last heartbeat 2 s ago: 3 missed, degraded.
        Missed,
        /// Last heartbeat 6 s ago: past `eject_after`.
        Silent,
        /// Added 1 s ago, no heartbeat yet.
        NeverEarly,
        /// Added 6 s ago, no heartbeat yet.
        NeverLate,
        /// Fresh, and the agent said goodbye.
        Goodbye,
        /// Fresh, and the backend is not accepting.
        NotAccepting,
        /// Fresh, and the canary breaker tripped.
        CanaryTripped,
        /// Goodbye and a tripped breaker: draining wins.
        GoodbyeAndTripped,
        /// Fresh, and the heartbeat shows a stall.
        Stalled,
        /// A stall reported by a heartbeat that is 6 s old: silence rules, not liveness.
        StalledButSilent,
    }

    fn inputs(i: Input, now: Instant) -> StateInputs {
        let fresh = StateInputs {
            added_at: now - ms(100_000),
            last_heartbeat: Some(now - ms(100)),
            goodbye: false,
            accepting: true,
            stalled: false,
            canary_tripped: false,
        };
        match i {
            Input::Fresh => fresh,
            Input::Missed => StateInputs {
                last_heartbeat: Some(now - ms(2_000)),
                ..fresh
            },
            Input::Silent => StateInputs {
                last_heartbeat: Some(now - ms(6_000)),
                ..fresh
            },
            Input::NeverEarly => StateInputs {
                added_at: now - ms(1_000),
                last_heartbeat: None,
                ..fresh
            },
            Input::NeverLate => StateInputs {
                added_at: now - ms(6_000),
                last_heartbeat: None,
                ..fresh
            },
            Input::Goodbye => StateInputs {
                goodbye: true,
                ..fresh
            },
            Input::NotAccepting => StateInputs {
                accepting: false,
                ..fresh
            },
            Input::CanaryTripped => StateInputs {
                canary_tripped: true,
                ..fresh
            },
            Input::GoodbyeAndTripped => StateInputs {
                goodbye: true,
                canary_tripped: true,
                ..fresh
            },
            Input::Stalled => StateInputs {
                stalled: true,
                ..fresh
            },
            Input::StalledButSilent => StateInputs {
                stalled: true,
                last_heartbeat: Some(now - ms(6_000)),
                ..fresh
            },
        }
    }

    #[test]
    fn every_state_under_every_input() {
        use Input as I;
        use Memory as M;
        use StateReason as R;
        let cfg = EngineConfig::default();
        let silent = R::Silent {
            silent_for: ms(6_000),
            eject_after: cfg.eject_after,
        };
        let never = R::NeverHeard {
            eject_after: cfg.eject_after,
        };
        let missed = R::Missed { missed: 3 };
        let ramp = R::RampStarted {
            start: cfg.readmission_start,
            ramp: cfg.readmission_ramp,
        };
        let held = R::HeldOff {
            flaps: 2,
            flap_window: cfg.flap_window,
            holdoff: ms(2_000),
        };
        // (from, memory, input) -> (to, reason); `None` means no record is due.
        #[rustfmt::skip]
        let table: Vec<(EndpointState, Memory, Input, EndpointState, Option<StateReason>)> = vec![
            // Draining wins over everything, tripped over everything else.
            (Active, M::Clean, I::Goodbye, Draining, Some(R::Goodbye)),
            (Ramping, M::RampRunning, I::Goodbye, Draining, Some(R::Goodbye)),
            (Degraded, M::Once, I::Goodbye, Draining, Some(R::Goodbye)),
            (Ejected, M::Once, I::Goodbye, Draining, Some(R::Goodbye)),
            (Tripped, M::Clean, I::Goodbye, Draining, Some(R::Goodbye)),
            (Draining, M::Clean, I::Goodbye, Draining, None),
            (Active, M::Clean, I::NotAccepting, Draining, Some(R::NotAccepting)),
            (Ramping, M::RampRunning, I::NotAccepting, Draining, Some(R::NotAccepting)),
            (Degraded, M::Once, I::NotAccepting, Draining, Some(R::NotAccepting)),
            (Ejected, M::HeldOff, I::NotAccepting, Draining, Some(R::NotAccepting)),
            (Tripped, M::Clean, I::NotAccepting, Draining, Some(R::NotAccepting)),
            (Draining, M::Clean, I::NotAccepting, Draining, None),
            (Active, M::Clean, I::GoodbyeAndTripped, Draining, Some(R::Goodbye)),
            (Tripped, M::Clean, I::GoodbyeAndTripped, Draining, Some(R::Goodbye)),
            (Active, M::Clean, I::CanaryTripped, Tripped, Some(R::CanaryTripped)),
            (Ramping, M::RampRunning, I::CanaryTripped, Tripped, Some(R::CanaryTripped)),
            (Degraded, M::Once, I::CanaryTripped, Tripped, Some(R::CanaryTripped)),
            (Ejected, M::Once, I::CanaryTripped, Tripped, Some(R::CanaryTripped)),
            (Draining, M::Clean, I::CanaryTripped, Tripped, Some(R::CanaryTripped)),
            (Tripped, M::Clean, I::CanaryTripped, Tripped, None),
            // A stall ejects whatever the freshness rules say, but only on fresh heartbeats.
            (Active, M::Clean, I::Stalled, Ejected, Some(R::Stalled)),
            (Ramping, M::RampRunning, I::Stalled, Ejected, Some(R::Stalled)),
            (Degraded, M::Once, I::Stalled, Ejected, Some(R::Stalled)),
            (Draining, M::Clean, I::Stalled, Ejected, Some(R::Stalled)),
            (Tripped, M::Clean, I::Stalled, Ejected, Some(R::Stalled)),
            (Ejected, M::Once, I::Stalled, Ejected, None),
            (Ejected, M::HoldOffOver, I::Stalled, Ejected, None),
            (Active, M::Clean, I::StalledButSilent, Ejected, Some(silent)),
            // Never heard from: nothing before eject_after, ejected after.
            (Active, M::Clean, I::NeverEarly, Active, None),
            (Ramping, M::RampOver, I::NeverEarly, Ramping, None),
            (Active, M::Clean, I::NeverLate, Ejected, Some(never)),
            (Ramping, M::RampRunning, I::NeverLate, Ejected, Some(never)),
            (Ejected, M::Clean, I::NeverLate, Ejected, None),
            // Silence past eject_after ejects every state.
            (Active, M::Clean, I::Silent, Ejected, Some(silent)),
            (Ramping, M::RampRunning, I::Silent, Ejected, Some(silent)),
            (Degraded, M::Once, I::Silent, Ejected, Some(silent)),
            (Degraded, M::HeldOff, I::Silent, Ejected, Some(silent)),
            (Draining, M::Clean, I::Silent, Ejected, Some(silent)),
            (Tripped, M::Clean, I::Silent, Ejected, Some(silent)),
            (Ejected, M::Once, I::Silent, Ejected, None),
            // Missed heartbeats degrade a live endpoint only; silence never revives anything into degraded.
            (Active, M::Clean, I::Missed, Degraded, Some(missed)),
            (Ramping, M::RampRunning, I::Missed, Degraded, Some(missed)),
            (Degraded, M::Once, I::Missed, Degraded, None),
            (Degraded, M::HeldOff, I::Missed, Degraded, None),
            (Ejected, M::Once, I::Missed, Ejected, None),
            (Ejected, M::HeldOff, I::Missed, Ejected, None),
            (Draining, M::Clean, I::Missed, Draining, None),
            (Tripped, M::Clean, I::Missed, Tripped, None),
            // Fresh heartbeats.
            (Active, M::Clean, I::Fresh, Active, None),
            (Active, M::Flapping, I::Fresh, Active, None),
            (Ramping, M::RampRunning, I::Fresh, Ramping, None),
            (Ramping, M::RampOver, I::Fresh, Active, Some(R::RampComplete)),
            (Degraded, M::Clean, I::Fresh, Active, Some(R::ShortGap)),
            (Degraded, M::Once, I::Fresh, Active, Some(R::ShortGap)),
            (Degraded, M::Flapping, I::Fresh, Degraded, Some(held)),
            (Degraded, M::HeldOff, I::Fresh, Degraded, None),
            (Degraded, M::HoldOffOver, I::Fresh, Ramping, Some(ramp)),
            (Ejected, M::Clean, I::Fresh, Ramping, Some(ramp)),
            (Ejected, M::Once, I::Fresh, Ramping, Some(ramp)),
            (Ejected, M::Flapping, I::Fresh, Ejected, Some(held)),
            (Ejected, M::HeldOff, I::Fresh, Ejected, None),
            (Ejected, M::HoldOffOver, I::Fresh, Ramping, Some(ramp)),
            (Draining, M::Clean, I::Fresh, Ramping, Some(R::AcceptingAgain)),
            // Accepting again ramps at once, a running hold-off notwithstanding.
            (Draining, M::HeldOff, I::Fresh, Ramping, Some(R::AcceptingAgain)),
            (Tripped, M::Clean, I::Fresh, Ramping, Some(R::AcceptingAgain)),
        ];
        let now = Instant::now() + ms(1_000_000);
        for (from, m, i, to, reason) in table {
            let current = Lifecycle {
                state: from,
                readmission: memory(m, now, &cfg),
            };
            let t = next_state(&current, &inputs(i, now), &cfg, now);
            assert_eq!(
                (t.to.state, t.reason),
                (to, reason),
                "{from:?} with {m:?} under {i:?}"
            );
        }
    }

    fn at(state: EndpointState, readmission: Readmission) -> Lifecycle {
        Lifecycle { state, readmission }
    }

    #[test]
    fn outages_are_counted_from_live_states_and_returns_only() {
        let cfg = EngineConfig::default();
        let now = Instant::now() + ms(1_000_000);
        let outages = |state, m, i| {
            let t = next_state(&at(state, memory(m, now, &cfg)), &inputs(i, now), &cfg, now);
            (t.to.readmission.outages, t.to.readmission.holdoff_until)
        };
        // A live endpoint going silent or stalling starts an outage (the second within flap_window: a flap).
        assert_eq!(outages(Active, Memory::Once, Input::Silent), (2, None));
        assert_eq!(outages(Ramping, Memory::Once, Input::Stalled), (2, None));
        assert_eq!(outages(Active, Memory::Once, Input::Missed), (2, None));
        // So does losing heartbeats again while held off after a return; the hold-off is dropped.
        assert_eq!(outages(Degraded, Memory::HeldOff, Input::Missed), (3, None));
        assert_eq!(outages(Ejected, Memory::HeldOff, Input::Silent), (3, None));
        // An endpoint already out is not out again.
        assert_eq!(outages(Ejected, Memory::Once, Input::Silent), (1, None));
        assert_eq!(outages(Degraded, Memory::Once, Input::Missed), (1, None));
        assert_eq!(outages(Draining, Memory::Once, Input::Silent), (1, None));
    }

    #[test]
    fn a_ramp_starts_now_and_a_short_gap_forgets_the_holdoff() {
        let cfg = EngineConfig::default();
        let now = Instant::now() + ms(1_000_000);
        let t = next_state(
            &at(Ejected, memory(Memory::Once, now, &cfg)),
            &inputs(Input::Fresh, now),
            &cfg,
            now,
        );
        assert_eq!(t.to.readmission.ramp_start, Some(now));
        assert_eq!(t.to.readmission.holdoff_until, None);
        let mut r = memory(Memory::Once, now, &cfg);
        r.last_holdoff = ms(4_000);
        let t = next_state(&at(Degraded, r), &inputs(Input::Fresh, now), &cfg, now);
        assert_eq!(t.to.state, Active);
        assert_eq!(t.to.readmission.last_holdoff, Duration::ZERO);
    }

    #[test]
    fn a_flapper_waits_out_its_holdoff_then_ramps() {
        let cfg = EngineConfig::default();
        let t0 = Instant::now();
        let fresh = |now| inputs(Input::Fresh, now);
        // Two outages 10 s apart; heartbeats fresh again at t0.
        let mut r = Readmission::default();
        r.on_outage(t0 - ms(20_000), &cfg);
        r.on_outage(t0 - ms(10_000), &cfg);
        let mut lc = at(Ejected, r);
        let mut seen = Vec::new();
        for dt in [0, 1_000, 1_999, 2_000, 2_500] {
            let now = t0 + ms(dt);
            let t = next_state(&lc, &fresh(now - ms(50)), &cfg, now);
            seen.push((dt, t.to.state, t.reason.map(|r| r.rule())));
            lc = t.to;
        }
        assert_eq!(
            seen,
            vec![
                (0, Ejected, Some(Rule::Readmission)),
                (1_000, Ejected, None),
                (1_999, Ejected, None),
                (2_000, Ramping, Some(Rule::Readmission)),
                (2_500, Ramping, None),
            ]
        );
        // 30 s later the ramp is over.
        let now = t0 + ms(32_000);
        let t = next_state(&lc, &fresh(now), &cfg, now);
        assert_eq!(
            (t.to.state, t.reason),
            (Active, Some(StateReason::RampComplete))
        );
    }

    #[test]
    fn every_reason_maps_to_the_rule_its_state_says() {
        let cfg = EngineConfig::default();
        let d = Duration::ZERO;
        let cases = [
            (StateReason::Goodbye, Rule::Draining),
            (StateReason::NotAccepting, Rule::Draining),
            (StateReason::CanaryTripped, Rule::CanaryBreaker),
            (StateReason::Stalled, Rule::LivenessStalled),
            (
                StateReason::NeverHeard { eject_after: d },
                Rule::FreshnessEjected,
            ),
            (
                StateReason::Silent {
                    silent_for: d,
                    eject_after: d,
                },
                Rule::FreshnessEjected,
            ),
            (StateReason::Missed { missed: 3 }, Rule::FreshnessDegraded),
            (StateReason::RampComplete, Rule::Readmission),
            (StateReason::ShortGap, Rule::Readmission),
            (
                StateReason::HeldOff {
                    flaps: 2,
                    flap_window: cfg.flap_window,
                    holdoff: d,
                },
                Rule::Readmission,
            ),
            (
                StateReason::RampStarted {
                    start: 0.1,
                    ramp: d,
                },
                Rule::Readmission,
            ),
            (StateReason::AcceptingAgain, Rule::Readmission),
        ];
        for (reason, rule) in cases {
            assert_eq!(reason.rule(), rule, "{reason:?}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// The edges the rules allow: into degraded only from a live state, into active only from ramping or
        /// degraded, into ramping never from active; draining, tripped and ejected from anywhere.
        fn legal(from: EndpointState, to: EndpointState) -> bool {
            from == to
                || match to {
                    Draining | Tripped | Ejected => true,
                    Degraded => matches!(from, Active | Ramping),
                    Active => matches!(from, Ramping | Degraded),
                    Ramping => matches!(from, Degraded | Ejected | Draining | Tripped),
                }
        }

        /// One recomputation: time advances, a heartbeat may arrive, and the flags say what it carried.
        #[derive(Debug, Clone)]
        struct Step {
            advance_ms: u64,
            heartbeat: bool,
            goodbye: bool,
            accepting: bool,
            stalled: bool,
            canary_tripped: bool,
        }

        fn a_step() -> impl Strategy<Value = Step> {
            (
                prop_oneof![0u64..700, 700u64..3_000, 3_000u64..40_000],
                prop::bool::weighted(0.6),
                prop::bool::weighted(0.05),
                prop::bool::weighted(0.92),
                prop::bool::weighted(0.1),
                prop::bool::weighted(0.05),
            )
                .prop_map(
                    |(advance_ms, heartbeat, goodbye, accepting, stalled, canary_tripped)| Step {
                        advance_ms,
                        heartbeat,
                        goodbye,
                        accepting,
                        stalled,
                        canary_tripped,
                    },
                )
        }

        proptest! {
            #[test]
            fn no_input_sequence_takes_an_illegal_transition(
                ramping_at_start in any::<bool>(),
                steps in prop::collection::vec(a_step(), 1..150),
            ) {
                let cfg = EngineConfig::default();
                let added_at = Instant::now();
                let mut readmission = Readmission::default();
                let state = if ramping_at_start {
                    readmission.start_ramp(added_at);
                    Ramping
                } else {
                    Active
                };
                let mut lc = Lifecycle { state, readmission };
                let (mut now, mut last_heartbeat) = (added_at, None);
                for s in steps {
                    now += ms(s.advance_ms);
                    if s.heartbeat {
                        last_heartbeat = Some(now);
                    }
                    let inputs = StateInputs {
                        added_at,
                        last_heartbeat,
                        goodbye: s.goodbye,
                        accepting: s.accepting,
                        stalled: s.stalled,
                        canary_tripped: s.canary_tripped,
                    };
                    let t = next_state(&lc, &inputs, &cfg, now);
                    let (from, to, was, is) = (lc.state, t.to.state, &lc.readmission, &t.to.readmission);
                    prop_assert!(legal(from, to), "{from:?} -> {to:?} under {inputs:?}");
                    // A record is due exactly when the state changed, or a hold-off was chosen.
                    match t.reason {
                        Some(StateReason::HeldOff { holdoff, .. }) => {
                            prop_assert_eq!(from, to);
                            prop_assert!(!holdoff.is_zero());
                            prop_assert_eq!(is.holdoff_until, Some(now + holdoff));
                        }
                        Some(_) => prop_assert_ne!(from, to),
                        None => prop_assert_eq!(from, to),
                    }
                    if s.goodbye || !s.accepting {
                        prop_assert_eq!(to, Draining);
                    } else if s.canary_tripped {
                        prop_assert_eq!(to, Tripped);
                    }
                    let fresh = last_heartbeat.map(|l| freshness::classify(l, now, &cfg));
                    let silent = match fresh {
                        Some(f) => f == Freshness::Expired,
                        None => now.saturating_duration_since(added_at) >= cfg.eject_after,
                    };
                    // Silence and stalls are never live.
                    if to.is_live() {
                        prop_assert!(!silent, "{to:?} after {:?} of silence", last_heartbeat.map(|l| now - l));
                        prop_assert!(!(s.stalled && matches!(fresh, Some(Freshness::Fresh(_)))));
                    }
                    // Active only after a complete ramp, or a short gap of an endpoint that does not flap.
                    if to == Active && from == Ramping {
                        let start = was.ramp_start;
                        prop_assert!(start.is_some_and(|t0| now.saturating_duration_since(t0) >= cfg.readmission_ramp));
                    }
                    if to == Active && from == Degraded {
                        prop_assert!(!was.is_flapping() && was.holdoff_until.is_none());
                    }
                    // No ramp from an outage while a hold-off runs; a flapper never ramps as it returns.
                    if to == Ramping && matches!(from, Degraded | Ejected) {
                        prop_assert!(!was.held_off(now));
                        prop_assert!(!(was.holdoff_until.is_none() && was.is_flapping()));
                    }
                    // A ramp starts at the transition, and a ramping endpoint always has one.
                    if to == Ramping && from != Ramping {
                        prop_assert_eq!(is.ramp_start, Some(now));
                        prop_assert_eq!(is.holdoff_until, None);
                    }
                    if to == Ramping {
                        prop_assert!(is.ramp_start.is_some());
                    }
                    lc = t.to;
                }
            }
        }
    }
}
