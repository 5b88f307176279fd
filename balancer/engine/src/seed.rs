//! Warm start: shares a previous coordinator last published, used until the first measurement arrives.
//!
//! A restarted coordinator (or a standby promoted to leader) knows nothing about its endpoints for the first
//! heartbeats; without a seed it would publish static weights (or equal shares) and then jump to measured
//! ones. [`Engine::seed`] gives it the last good shares instead: while no endpoint has usable data and some
//! endpoint is healthy, the table carries those shares (rule `seeded`, `static_fallback` false), bounded
//! like any other table (floors, canary allowance, water-filled to sum to 1). The first measured shares are
//! then *smoothed* from the seed, not substituted for it, because the seed is a converged weight and not a
//! start-up guess. Once data has arrived the seed is dropped; if every endpoint goes silent before that,
//! the usual static fallback takes over (a seed is never a reason to trust endpoints nobody hears from).

use super::*;

impl Engine {
    /// Seeds the shares to start from, by endpoint id: `origin` says where they came from (it prefixes the
    /// decision records, e.g. "the weights epoch 7 published at version 42"). Endpoints not in the seed get
    /// the mean seeded share; non-finite or negative shares are ignored. Returns how many shares were taken.
    ///
    /// A start-up input: once any endpoint has usable data it does nothing (and returns 0).
    pub fn seed(
        &mut self,
        now: Instant,
        shares: impl IntoIterator<Item = (String, f64)>,
        origin: &str,
    ) -> usize {
        if self.ever_had_data {
            return 0;
        }
        let seed: HashMap<String, f64> = shares
            .into_iter()
            .filter(|(_, w)| w.is_finite() && *w >= 0.0)
            .collect();
        let taken = seed.len();
        if seed.values().all(|&w| w <= 0.0) {
            self.seed = None;
            return 0;
        }
        let why = format!("seeded from {origin}");
        for ep in &mut self.endpoints {
            if seed.contains_key(&ep.spec.id) {
                ep.pending = Some((Rule::Seeded, why.clone()));
            }
        }
        self.seed = Some(seed);
        self.recompute(now);
        taken
    }

    /// Whether the table holds seeded shares (no measurement yet).
    pub fn is_seeded(&self) -> bool {
        self.seeding
    }

    /// Fills `scratch_w` and `scratch_bounds` from the seed over the live endpoints, like
    /// [`Self::static_weights`] does from static weights. `false` (nothing written) when no live endpoint has
    /// a seeded share.
    pub(crate) fn seeded_weights(&mut self) -> bool {
        let Some(seed) = &self.seed else {
            return false;
        };
        let (mut sum, mut known) = (0.0, 0usize);
        for ep in self.endpoints.iter().filter(|e| e.state.is_live()) {
            if let Some(&w) = seed.get(&ep.spec.id) {
                sum += w;
                known += 1;
            }
        }
        if known == 0 || sum <= 0.0 {
            return false;
        }
        let mean = sum / known as f64;
        let mut total = 0.0;
        for (i, ep) in self.endpoints.iter().enumerate() {
            let w = if ep.state.is_live() {
                seed.get(&ep.spec.id).copied().unwrap_or(mean)
            } else {
                0.0
            };
            self.scratch_w[i] = w;
            total += w;
        }
        for (i, ep) in self.endpoints.iter().enumerate() {
            self.scratch_w[i] /= total;
            let live = ep.state.is_live();
            self.scratch_bounds[i] = Bounds {
                lo: match (live, ep.is_canary) {
                    (false, _) => 0.0,
                    (true, true) => self.config.canary_floor,
                    (true, false) => self.config.floor,
                },
                soft_hi: if live {
                    ep.canary.as_ref().map_or(1.0, |c| c.allowance)
                } else {
                    0.0
                },
                hard_hi: if live { 1.0 } else { 0.0 },
            };
        }
        table::water_fill(&mut self.scratch_w, &mut self.scratch_bounds);
        for (i, ep) in self.endpoints.iter_mut().enumerate() {
            ep.calc = self.scratch_w[i];
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests need an Instant to start from
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(id: &str) -> EndpointSpec {
        EndpointSpec {
            id: id.into(),
            address: format!("{id}:50051"),
            ..Default::default()
        }
    }

    fn report(mean_ms: u64) -> LoadReport {
        LoadReport {
            in_flight: 2,
            completed: 50,
            failed: 0,
            window: Duration::from_millis(500),
            latency_mean: Duration::from_millis(mean_ms),
            latency_p50: Duration::from_millis(mean_ms),
            latency_p99: Duration::from_millis(mean_ms * 2),
            accepting: true,
            declared_capacity: Some(8),
            utilization: None,
            oldest_in_flight: None,
            mean_in_flight: None,
        }
    }

    fn engine(t0: Instant, ids: &[&str]) -> Engine {
        let mut e = Engine::new(EngineConfig::default()).unwrap();
        for id in ids {
            e.upsert_endpoint(t0, spec(id));
        }
        while e.poll_decision().is_some() {}
        e
    }

    fn seed_of(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(id, w)| (id.to_string(), *w)).collect()
    }

    #[test]
    fn seeded_shares_are_published_at_once_and_recorded_as_seeded() {
        let t0 = Instant::now();
        let mut e = engine(t0, &["a", "b"]);
        assert!(e.table().static_fallback);
        let version = e.table().version;
        assert_eq!(e.seed(t0, seed_of(&[("a", 0.8), ("b", 0.2)]), "test"), 2);
        let t = e.table().clone();
        assert!(t.version > version);
        assert!(!t.static_fallback, "a seeded table is not static");
        assert!(e.is_seeded());
        assert!((t.weight("a") - 0.8).abs() < 1e-9, "{t:?}");
        assert!((t.weight("b") - 0.2).abs() < 1e-9, "{t:?}");
        let decisions: Vec<Decision> = std::iter::from_fn(|| e.poll_decision()).collect();
        assert_eq!(decisions.len(), 2, "{decisions:?}");
        for d in &decisions {
            assert_eq!(d.rule, Rule::Seeded);
            assert!(d.reason.starts_with("seeded from test"), "{}", d.reason);
        }
        assert!(t.entries.iter().all(|r| r.rule == Rule::Seeded));
        // Ticks without data keep the seed.
        e.on_tick(t0 + Duration::from_millis(500));
        assert!((e.table().weight("a") - 0.8).abs() < 1e-9);
    }

    #[test]
    fn measurements_converge_from_the_seed_without_a_jump() {
        let t0 = Instant::now();
        let mut e = engine(t0, &["a", "b"]);
        e.seed(t0, seed_of(&[("a", 0.8), ("b", 0.2)]), "test");
        // Equal backends: measured shares are 50/50.
        let mut now = t0;
        let mut previous = 0.8;
        for step in 0..40 {
            now += Duration::from_millis(500);
            e.on_heartbeat(now, "a", report(10)).unwrap();
            e.on_heartbeat(now, "b", report(10)).unwrap();
            e.on_tick(now);
            let a = e.table().weight("a");
            assert!(!e.is_seeded());
            assert!(
                a <= previous + 1e-9 && previous - a < 0.2,
                "step {step}: {previous} -> {a}: smoothed from the seed, never a jump"
            );
            previous = a;
        }
        assert!((previous - 0.5).abs() < 0.02, "converged: {previous}");
        // A seed after data is ignored.
        assert_eq!(e.seed(now, seed_of(&[("a", 0.9), ("b", 0.1)]), "late"), 0);
        assert!((e.table().weight("a") - previous).abs() < 1e-9);
    }

    #[test]
    fn measurements_that_agree_with_the_seed_still_take_over_its_rows() {
        let t0 = Instant::now();
        let mut e = engine(t0, &["a", "b"]);
        // The seed is what the equal backends measure: no share moves by the decision threshold.
        e.seed(t0, seed_of(&[("a", 0.5), ("b", 0.5)]), "test");
        while e.poll_decision().is_some() {}
        let now = t0 + Duration::from_millis(500);
        e.on_heartbeat(now, "a", report(10)).unwrap();
        e.on_heartbeat(now, "b", report(10)).unwrap();
        e.on_tick(now);
        assert!(!e.is_seeded());
        let t = e.table();
        assert!(
            t.entries.iter().all(|r| r.rule != Rule::Seeded),
            "measured rows still say seeded: {t:?}"
        );
        let decisions: Vec<Decision> = std::iter::from_fn(|| e.poll_decision()).collect();
        assert_eq!(
            decisions.len(),
            2,
            "one hand-over record each: {decisions:?}"
        );
        assert!(
            decisions.iter().all(|d| d.rule != Rule::Seeded
                && d.reason.starts_with("measurements take over from the seed")),
            "{decisions:?}"
        );
    }

    #[test]
    fn unknown_endpoints_get_the_mean_share_and_an_empty_seed_is_static() {
        let t0 = Instant::now();
        let mut e = engine(t0, &["a", "b", "c"]);
        e.seed(
            t0,
            seed_of(&[("a", 0.6), ("b", 0.2), ("gone", 0.2)]),
            "test",
        );
        let t = e.table();
        // a 0.6, b 0.2, c the mean 0.4 of a and b: normalised over 1.2.
        assert!((t.weight("a") - 0.5).abs() < 1e-9, "{t:?}");
        assert!((t.weight("c") - 1.0 / 3.0).abs() < 1e-9, "{t:?}");

        let mut e = engine(t0, &["a", "b"]);
        assert_eq!(
            e.seed(t0, seed_of(&[("a", f64::NAN), ("b", -1.0)]), "bad"),
            0
        );
        assert!(e.table().static_fallback);
        assert!(!e.is_seeded());
    }

    #[test]
    fn silent_endpoints_fall_back_to_static_weights_despite_a_seed() {
        let t0 = Instant::now();
        let mut e = engine(t0, &["a", "b"]);
        e.seed(t0, seed_of(&[("a", 0.9), ("b", 0.1)]), "test");
        let eject = e.config().eject_after;
        e.on_tick(t0 + eject + Duration::from_secs(1));
        assert!(!e.is_seeded());
        assert!(e.table().static_fallback, "{:?}", e.table());
    }

    proptest! {
        #[test]
        fn seeded_tables_sum_to_one_within_bounds(
            shares in proptest::collection::vec(-1.0f64..10.0, 1..6),
        ) {
            let t0 = Instant::now();
            let ids: Vec<String> = (0..shares.len()).map(|i| format!("e{i}")).collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let mut e = engine(t0, &refs);
            e.seed(t0, ids.iter().cloned().zip(shares.iter().copied()), "prop");
            let t = e.table();
            let sum: f64 = t.entries.iter().map(|r| r.weight).sum();
            prop_assert!((sum - 1.0).abs() < 1e-9, "{:?}", t);
            for r in &t.entries {
                prop_assert!(r.weight.is_finite() && r.weight >= e.config().floor - 1e-9, "{:?}", t);
            }
        }
    }
}
