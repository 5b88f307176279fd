//! Agents and a coordinator over real QUIC and gRPC on loopback: weights follow capacity, freshness rules
//! eject and re-admit, authentication is enforced, hostile frames are contained.

use std::sync::atomic::Ordering;
use std::time::Duration;

use lateral_coordinator::Coordinator;
use lateral_examples::backend::BackendSpec;
use lateral_integration_tests::*;
use lateral_proto::coordinator::EndpointState;
use lateral_proto::heartbeat::{self, Hello, Message, PROTOCOL_VERSION};

const BEAT: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_move_toward_the_capacity_ratio() {
    let pki = Pki::new("test-ca");
    // Same slots, four times the speed: four times the capacity.
    let ([fast, slow], config) = fleet(&pki, [("fast", 8, 5), ("slow", 8, 20)]).await;
    let coordinator = Coordinator::start(config).await.unwrap();
    let _load_fast = steady_load(fast.uri(), 100);
    let _load_slow = steady_load(slow.uri(), 100);
    let mut watcher = Watcher::connect(coordinator.grpc_addr().unwrap(), "svc").await;
    let snapshot = watcher
        .until(
            Duration::from_secs(15),
            "fast ≥ 0.7 and slow ≤ 0.3",
            |s| {
                let f = entry(s, "fast").map(|e| e.0).unwrap_or(0.0);
                let w = entry(s, "slow").map(|e| e.0).unwrap_or(1.0);
                !s.static_fallback && f >= 0.7 && w <= 0.3
            },
        )
        .await;
    let sum: f64 = snapshot.endpoints.iter().map(|e| e.weight).sum();
    assert!(
        (sum - 1.0).abs() < 1e-6,
        "weights sum to 1: {}",
        describe(&snapshot)
    );
    assert!(
        coordinator
            .handle()
            .stats()
            .heartbeats
            .load(Ordering::Relaxed)
            > 0
    );
    // Decisions were recorded with their rule and reason.
    let (decisions, _) = coordinator.handle().decisions().query("svc", "", 0, 100);
    assert!(!decisions.is_empty());
    assert!(
        decisions
            .iter()
            .all(|d| !d.rule.is_empty() && !d.reason.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_degraded_then_ejected_and_ramps_back_after_restart() {
    let pki = Pki::new("test-ca");
    let ([stay, mut flaky], config) = fleet(&pki, [("stay", 8, 5), ("flaky", 8, 5)]).await;
    let coordinator = Coordinator::start(config).await.unwrap();
    // Traffic, so that weights come from measurements rather than the static fallback.
    let _load_stay = steady_load(stay.uri(), 100);
    let _load_flaky = steady_load(flaky.uri(), 100);
    let mut watcher = Watcher::connect(coordinator.grpc_addr().unwrap(), "svc").await;
    watcher
        .until(
            Duration::from_secs(15),
            "both active on measured weights",
            |s| {
                !s.static_fallback
                    && entry(s, "flaky").is_some_and(|e| e.1 == EndpointState::Active)
                    && entry(s, "stay").is_some_and(|e| e.1 == EndpointState::Active)
            },
        )
        .await;

    flaky.kill().await;
    let killed_at = tokio::time::Instant::now();
    let degraded = watcher
        .until(Duration::from_secs(10), "flaky degraded", |s| {
            entry(s, "flaky").is_some_and(|e| e.1 == EndpointState::Degraded)
        })
        .await;
    let degraded_after = killed_at.elapsed();
    // Degraded: reduced, not zero (the article: never assume zero load, never starve on one glitch).
    assert!(
        entry(&degraded, "flaky").unwrap().0 > 0.0,
        "{}",
        describe(&degraded)
    );
    watcher
        .until(Duration::from_secs(10), "flaky ejected", |s| {
            entry(s, "flaky").is_some_and(|e| e.1 == EndpointState::Ejected && e.0 == 0.0)
        })
        .await;
    let ejected_after = killed_at.elapsed();
    assert!(degraded_after < ejected_after);
    // 3 missed heartbeats of 50 ms, and a 600 ms timeout (with scheduling slack on a shared machine).
    assert!(
        degraded_after < Duration::from_millis(1500),
        "degraded after {degraded_after:?}"
    );
    assert!(
        ejected_after < Duration::from_millis(3000),
        "ejected after {ejected_after:?}"
    );

    flaky.restart().await.unwrap();
    let ramping = watcher
        .until(Duration::from_secs(20), "flaky ramping back", |s| {
            entry(s, "flaky").is_some_and(|e| e.1 == EndpointState::Ramping && e.0 > 0.0)
        })
        .await;
    let (ramp_start, _) = entry(&ramping, "flaky").unwrap();
    assert!(
        ramp_start < 0.45,
        "re-admission starts low: {}",
        describe(&ramping)
    );
    watcher
        .until(Duration::from_secs(20), "flaky active again", |s| {
            entry(s, "flaky").is_some_and(|e| e.1 == EndpointState::Active)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certified_by_another_ca_is_refused() {
    let pki = Pki::new("test-ca");
    let rogue_pki = Pki::new("rogue-ca");
    let good = backend(
        BackendSpec::new("good", 4, Duration::from_millis(5)),
        BEAT,
        pki.mode("agent"),
    )
    .await;
    let rogue = backend(
        BackendSpec::new("rogue", 4, Duration::from_millis(5)),
        BEAT,
        rogue_pki.mode("agent"),
    )
    .await;
    let config = coordinator_config(
        pki.coordinator_tls(),
        fast_engine(),
        vec![endpoint_of(&good), endpoint_of(&rogue)],
    );
    let coordinator = Coordinator::start(config).await.unwrap();
    let _load = steady_load(good.uri(), 100);
    let mut watcher = Watcher::connect(coordinator.grpc_addr().unwrap(), "svc").await;
    // The rogue agent is never heard, so its endpoint is ejected once `eject_after` passes; the good one
    // carries all the measured weight.
    let last = watcher
        .until(
            Duration::from_secs(5),
            "rogue ejected, good weighted by data",
            |s| {
                !s.static_fallback
                    && entry(s, "rogue")
                        .is_some_and(|e| e.1 == EndpointState::Ejected && e.0 == 0.0)
                    && entry(s, "good").is_some_and(|e| e.1 == EndpointState::Active)
            },
        )
        .await;
    let stats = coordinator.handle().stats();
    assert_eq!(
        stats.connections.load(Ordering::Relaxed),
        1,
        "only the good agent said Hello"
    );
    assert!(
        (entry(&last, "good").unwrap().0 - 1.0).abs() < 1e-9,
        "{}",
        describe(&last)
    );
}

/// A fake agent that speaks QUIC with a valid certificate but sends `frames` on its stream.
async fn hostile_agent(pki: &Pki, frames: Vec<Vec<u8>>) -> (quinn::Endpoint, std::net::SocketAddr) {
    let server = lateral_ops::tls::server_config(&pki.mode("agent")).unwrap();
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server).unwrap();
    let endpoint = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto)),
        any_port(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let frames = frames.clone();
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                let Ok(mut stream) = connection.open_uni().await else {
                    return;
                };
                for frame in frames {
                    if stream.write_all(&frame).await.is_err() {
                        return;
                    }
                }
                // Hold the connection open; the coordinator decides when to close it.
                let _ = connection.closed().await;
            });
        }
    });
    (endpoint, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_are_rejected_while_other_agents_are_served() {
    let pki = Pki::new("test-ca");
    let good = backend(
        BackendSpec::new("good", 4, Duration::from_millis(5)),
        BEAT,
        pki.mode("agent"),
    )
    .await;
    let hello = |id: &str| {
        heartbeat::encode(&Message::Hello(Hello {
            agent_id: "hostile".into(),
            endpoint_id: id.into(),
            protocol_version: PROTOCOL_VERSION,
            capabilities: vec![],
            heartbeat_interval_ms: 50,
        }))
        .unwrap()
    };
    let mut oversized = heartbeat::MAGIC.to_vec();
    oversized.extend(PROTOCOL_VERSION.to_be_bytes());
    oversized.extend(u32::MAX.to_be_bytes());
    oversized.extend(vec![0u8; 1024]);
    let (_g, garbage_addr) = hostile_agent(&pki, vec![b"GET / HTTP/1.1\r\n\r\n".to_vec()]).await;
    let (_o, oversized_addr) = hostile_agent(&pki, vec![hello("oversized"), oversized]).await;
    let (_l, liar_addr) = hostile_agent(&pki, vec![hello("somebody-else")]).await;

    let mut endpoints = vec![endpoint_of(&good)];
    for (id, addr) in [
        ("garbage", garbage_addr),
        ("oversized", oversized_addr),
        ("liar", liar_addr),
    ] {
        let mut e = endpoint_of(&good);
        e.id = id.into();
        e.agent = addr;
        endpoints.push(e);
    }
    let config = coordinator_config(pki.coordinator_tls(), fast_engine(), endpoints);
    let coordinator = Coordinator::start(config).await.unwrap();
    let stats = coordinator.handle().stats();
    eventually(
        Duration::from_secs(5),
        "three hostile streams rejected",
        || async { stats.rejected.load(Ordering::Relaxed) >= 3 },
    )
    .await;
    let before = stats.heartbeats.load(Ordering::Relaxed);
    let mut watcher = Watcher::connect(coordinator.grpc_addr().unwrap(), "svc").await;
    let snapshot = watcher
        .until(
            Duration::from_secs(5),
            "hostile endpoints ejected, good live",
            |s| {
                ["garbage", "oversized", "liar"]
                    .iter()
                    .all(|id| entry(s, id).is_some_and(|e| e.1 == EndpointState::Ejected))
                    && entry(s, "good").is_some_and(|e| e.1 == EndpointState::Active && e.0 > 0.99)
            },
        )
        .await;
    eventually(
        Duration::from_secs(2),
        "the good agent still heard",
        || async { stats.heartbeats.load(Ordering::Relaxed) > before + 5 },
    )
    .await;
    // The hostile agents keep reconnecting (with backoff) and keep being rejected.
    let rejected = stats.rejected.load(Ordering::Relaxed);
    eventually(
        Duration::from_secs(5),
        "hostile reconnections rejected again",
        || async { stats.rejected.load(Ordering::Relaxed) > rejected },
    )
    .await;
    assert!(
        entry(&snapshot, "good").unwrap().0 > 0.99,
        "{}",
        describe(&snapshot)
    );
}
