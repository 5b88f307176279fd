//! HA through a real Envoy: two coordinators elect a leader through a real etcd and both serve xDS (a
//! standby serves the leader's weights); Envoy's ADS cluster lists both. Under load through Envoy the leader
//! is killed (dropped without revoking its lease: a crash, as etcd sees it). Checked: no request through
//! Envoy fails, the standby leads within 2 s, the weights Envoy holds never fall back to static ones (a's
//! share stays far from the static 50 %), and Envoy ends up on the new leader's own weights.
//!
//! Envoy and etcd as in `xds_peers.rs` and `ha_failover.rs`; every process is killed by its guard, every
//! wait has a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lateral_coordinator::config::HaConfig;
use lateral_examples::bench::envoy;
use lateral_integration_tests::xds_peers::*;
use lateral_integration_tests::*;
use tokio::time::Instant;

/// a's share of the weights Envoy holds for cluster `svc` (`None` before it has both hosts).
async fn envoy_share_of_a(admin: SocketAddr, hosts: &[SocketAddr; 2]) -> Option<f64> {
    let (status, body) = envoy::admin_get(admin, "/clusters").await.ok()?;
    if status != 200 {
        return None;
    }
    match envoy::parse_cluster_weights(&body, "svc", hosts)[..] {
        [Some(a), Some(b)] if a + b > 0 => Some(f64::from(a) / f64::from(a + b)),
        _ => None,
    }
}

/// The ADS host Envoy holds a connection to (admin `/clusters`, `lateral_ads::host::cx_active::1`).
async fn ads_connected_to(admin: SocketAddr) -> Vec<String> {
    let Ok((_, body)) = envoy::admin_get(admin, "/clusters").await else {
        return Vec::new();
    };
    body.lines()
        .filter_map(|l| {
            let parts: Vec<&str> = l.split("::").collect();
            match parts[..] {
                ["lateral_ads", host, "cx_active", n] if n.trim() != "0" => Some(host.to_string()),
                _ => None,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_through_envoy_loses_nothing_and_never_goes_static() {
    let binary = match envoy::find() {
        Ok(b) => b,
        Err(why) => {
            return missing(&format!("Envoy 1.40 ({why})"), envoy::INSTALL_SCRIPT).unwrap_or(());
        }
    };
    let dir = TempDir::new("ha-envoy");
    let test = async {
        let etcd =
            Etcd::start_with(&["--heartbeat-interval", "50", "--election-timeout", "500"]).await;
        let pki = Pki::new("ha-envoy");
        // Equal slots, 5 ms against 20 ms: measured shares near 0.8 / 0.2, static ones 0.5 / 0.5.
        let ([a, b], mut config) = fleet(&pki, [("a", 8, 5), ("b", 8, 20)]).await;
        let hosts = [a.grpc_addr(), b.grpc_addr()];
        let port = free_port();
        config.ha = Some(HaConfig::with_urls(vec![etcd.url.clone()]));
        config.listen.xds = Some(any_port());
        config.xds.push_interval_ms = 100;
        config.xds.listener_host = [127, 0, 0, 1].into();
        config.xds.listeners.insert("svc".into(), port);
        let _load_a = steady_load(a.uri(), 100);
        let _load_b = steady_load(b.uri(), 100);

        let HaPair {
            leader: first,
            standby: second,
            mut watcher,
            ..
        } = HaPair::start(config).await;
        let own_epoch = second.handle().epoch();

        let ads = [
            first.xds_addr().expect("xDS on the first"),
            second.xds_addr().expect("xDS on the second"),
        ];
        let _envoy = start_envoy(&binary.path, &dir.0, &ads);
        let admin = envoy_admin(&dir.0).await;
        eventually(
            Duration::from_secs(20),
            "Envoy holds the measured weights",
            || async move {
                envoy_share_of_a(admin, &hosts)
                    .await
                    .is_some_and(|s| s > 0.7)
            },
        )
        .await;
        let uri = format!("http://127.0.0.1:{port}");
        until_envoy_routes(&uri).await;

        // Envoy's weights, sampled every 50 ms from before the kill to the end.
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(share) = envoy_share_of_a(admin, &hosts).await {
                        samples.push((Instant::now(), share));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                samples
            }
        });
        let load = tokio::spawn({
            let (uri, stop) = (uri.clone(), stop.clone());
            async move { drive(&uri, 0, 4, stop).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let connected_before = ads_connected_to(admin).await;

        drop(first);
        let died = Instant::now();
        until_leads(
            &second,
            Duration::from_secs(2),
            "the standby leads within 2 s",
        )
        .await;
        let takeover = died.elapsed();
        let never_static = |s: &lateral_proto::coordinator::WeightSnapshot| {
            assert!(
                !s.static_fallback,
                "weights never fall back to static: {}",
                describe(s)
            );
        };
        watcher
            .until(
                Duration::from_secs(3),
                "the new leader's own weights",
                |s| {
                    never_static(s);
                    s.epoch == own_epoch
                },
            )
            .await;
        let measured = watcher
            .until(
                Duration::from_secs(10),
                "measured shares from the new leader",
                |s| {
                    never_static(s);
                    s.epoch == own_epoch
                        && s.endpoints.iter().all(|e| e.rule != "seeded")
                        && entry(s, "a").is_some_and(|(w, _)| w > 0.7)
                },
            )
            .await;
        // Envoy follows the new leader: with the old one dead and the new one's measured weights in force, a
        // change in the weights Envoy holds can only come from the new leader.
        drop(measured);
        let held = async || {
            envoy::admin_get(admin, "/clusters")
                .await
                .map(|(_, body)| envoy::parse_cluster_weights(&body, "svc", &hosts))
                .unwrap_or_default()
        };
        let before = held().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = held().await;
            if now != before && now.iter().all(Option::is_some) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Envoy still holds {before:?} 10 s after the new leader published measured weights"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let connected_after = ads_connected_to(admin).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        let served = load.await.expect("the load");
        let samples = sampler.await.expect("the sampler");

        let seen = counts(&served);
        let during = served
            .iter()
            .filter(|(at, _)| *at >= died && *at <= died + takeover + Duration::from_secs(1))
            .count();
        let after_kill: Vec<f64> = samples
            .iter()
            .filter(|(at, _)| *at >= died)
            .map(|(_, s)| *s)
            .collect();
        let (lo, hi) = after_kill
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
        println!(
            "takeover {:.0} ms; {} calls through Envoy ({during} from the kill to 1 s after the takeover), \
             served {seen:?}; Envoy's share of a after the kill in [{lo:.3}, {hi:.3}] over {} samples; \
             Envoy's ADS stream on {connected_before:?} before (the leader was {}), {connected_after:?} after",
            takeover.as_secs_f64() * 1e3,
            served.len(),
            after_kill.len(),
            ads[0]
        );
        assert_eq!(seen.get(""), None, "calls through Envoy failed: {seen:?}");
        assert!(
            during > 0,
            "no calls went through Envoy during the failover"
        );
        assert!(!after_kill.is_empty(), "Envoy's weights were not sampled");
        // Measured 0.73-0.78 on a quiet machine and 0.63 with a compile beside it (both backends' latencies
        // inflate, the measured ratio narrows); a fall back to static weights is 0.500 exactly.
        assert!(
            lo > 0.6,
            "Envoy's share of a fell to {lo:.3} after the kill: toward the static 0.5"
        );
        drop((a, b));
        second.shutdown().await;
    };
    if tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .is_err()
    {
        panic!(
            "the HA Envoy test did not finish within 120 s; Envoy's log ends with:\n{}",
            envoy_log(&dir.0)
        );
    }
}
