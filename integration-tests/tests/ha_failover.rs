//! HA through a real etcd (Debian `etcd-server`, started by the test on loopback): two coordinators elect
//! a leader on an etcd lease; the standby republishes the leader's weights to its own `WatchWeights`
//! clients; when the leader dies (dropped without revoking its lease: a crash, as etcd sees it) the
//! standby leads within 2 s and publishes seeded weights — the clients' weights continue, never static.

use std::time::{Duration, Instant};

use lateral_coordinator::config::HaConfig;
use lateral_integration_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_within_two_seconds_from_the_leaders_weights() {
    // A short election timeout lets a 1 s lease exist (etcd raises shorter TTLs to 1.5 × the timeout).
    let etcd = Etcd::start_with(&["--heartbeat-interval", "50", "--election-timeout", "500"]).await;
    let pki = Pki::new("test-ca");
    let ([a, b], mut config) = fleet(&pki, [("a", 8, 5), ("b", 8, 20)]).await;
    config.ha = Some(HaConfig::with_urls(vec![etcd.url.clone()]));
    let _load_a = steady_load(a.uri(), 100);
    let _load_b = steady_load(b.uri(), 100);

    let HaPair {
        leader: first,
        standby: second,
        mut watcher,
        mirrored,
    } = HaPair::start(config).await;
    let own_epoch = second.handle().epoch();
    let before = entry(&mirrored, "a").map_or(0.0, |(w, _)| w);

    drop(first);
    let died = Instant::now();
    until_leads(
        &second,
        Duration::from_secs(2),
        "the standby leads within 2 s",
    )
    .await;
    let takeover = died.elapsed();
    let own = watcher
        .until(
            Duration::from_secs(2),
            "the new leader's own weights",
            |s| {
                assert!(
                    !s.static_fallback,
                    "weights never fall back to static: {}",
                    describe(s)
                );
                s.epoch == own_epoch
            },
        )
        .await;
    let after = entry(&own, "a").map_or(0.0, |(w, _)| w);
    println!(
        "takeover {:.0} ms after the leader died; a's share {before:.3} before, {after:.3} first from the new leader ({})",
        takeover.as_secs_f64() * 1e3,
        describe(&own)
    );
    assert!((after - before).abs() < 0.1, "no jump: {before} -> {after}");
    let (decisions, _) = second.handle().decisions().query("svc", "", 0, 1000);
    assert!(
        decisions.iter().any(|d| d.rule == "seeded"),
        "the new leader's records say it was seeded"
    );
    // It keeps publishing measured weights of its own.
    watcher
        .until(
            Duration::from_secs(10),
            "measured shares from the new leader",
            |s| {
                assert!(!s.static_fallback, "{}", describe(s));
                s.epoch == own_epoch
                    && s.endpoints.iter().all(|e| e.rule != "seeded")
                    && entry(s, "a").is_some_and(|(w, _)| w > 0.7)
            },
        )
        .await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_shut_down_gracefully_hands_over_at_once() {
    // A 10 s lease: waiting for it to expire would take 10 s; a resignation revokes it at once.
    let etcd = Etcd::start_with(&[]).await;
    let pki = Pki::new("test-ca");
    let ([a, b], mut config) = fleet(&pki, [("a", 8, 5), ("b", 8, 20)]).await;
    let mut ha = HaConfig::with_urls(vec![etcd.url.clone()]);
    ha.lease_ttl_s = 10;
    config.ha = Some(ha);
    let _load_a = steady_load(a.uri(), 100);
    let _load_b = steady_load(b.uri(), 100);

    let HaPair {
        leader: first,
        standby: second,
        mut watcher,
        ..
    } = HaPair::start(config).await;

    let stopped = Instant::now();
    first.shutdown().await;
    until_leads(
        &second,
        Duration::from_secs(2),
        "the standby leads within 2 s of a graceful shutdown (the lease's TTL is 10 s)",
    )
    .await;
    println!(
        "graceful handover: the standby led {:.0} ms after the leader began shutting down",
        stopped.elapsed().as_secs_f64() * 1e3
    );
    let own_epoch = second.handle().epoch();
    watcher
        .until(
            Duration::from_secs(5),
            "the new leader's own weights",
            |s| {
                assert!(!s.static_fallback, "{}", describe(s));
                s.epoch == own_epoch
            },
        )
        .await;
    second.shutdown().await;
}
