//! Warm restart from a local file: a coordinator with `[persist] path` keeps its last good weights there,
//! and a coordinator restarted on the same file publishes them in its first snapshot (rule `seeded`, not
//! static ones), then follows the heartbeats from there.

use std::time::Duration;

use lateral_coordinator::Coordinator;
use lateral_integration_tests::*;

fn persisted_weight(path: &std::path::Path, id: &str) -> Option<f64> {
    let bytes = std::fs::read(path).ok()?;
    let doc: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    doc["services"]["svc"]["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["id"] == id)?["weight"]
        .as_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_publishes_the_persisted_weights_first() {
    let pki = Pki::new("test-ca");
    let ([a, b], mut config) = fleet(&pki, [("a", 8, 5), ("b", 8, 20)]).await;
    let dir = std::env::temp_dir().join(format!("lateral-warm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("weights.json");
    config.persist.path = Some(path.clone());
    let _load_a = steady_load(a.uri(), 100);
    let _load_b = steady_load(b.uri(), 100);

    let first = Coordinator::start(config.clone()).await.expect("start");
    let mut watcher = Watcher::connect(first.grpc_addr().expect("gRPC"), "svc").await;
    // 4:1 capacity: measured shares near 0.8 / 0.2, far from the static 0.5 / 0.5.
    watcher
        .until(Duration::from_secs(15), "measured 4:1 shares", |s| {
            !s.static_fallback && entry(s, "a").is_some_and(|(w, _)| w > 0.7)
        })
        .await;
    let p = path.clone();
    eventually(
        Duration::from_secs(5),
        "the file holds the measured shares",
        || {
            let w = persisted_weight(&p, "a");
            async move { w.is_some_and(|w| w > 0.7) }
        },
    )
    .await;
    first.shutdown().await;
    let kept = persisted_weight(&path, "a").expect("the file after shutdown");

    let second = Coordinator::start(config).await.expect("restart");
    let rx = second.subscribe("svc").await.expect("subscribe");
    let snapshot = rx.borrow().clone().expect("a first snapshot");
    assert!(!snapshot.static_fallback, "{}", describe(&snapshot));
    let (w, _) = entry(&snapshot, "a").expect("a is listed");
    assert!(
        (w - kept).abs() < 1e-6,
        "seeded {kept}, first published {w}: {}",
        describe(&snapshot)
    );
    assert!(
        snapshot.endpoints.iter().all(|e| e.rule == "seeded"),
        "{}",
        describe(&snapshot)
    );
    let (decisions, _) = second.handle().decisions().query("svc", "", 0, 100);
    assert!(
        decisions
            .iter()
            .any(|d| d.rule == "seeded" && d.reason.starts_with("seeded from"))
    );
    // Then it converges on its own heartbeats, never through static weights.
    let mut watcher = Watcher::connect(second.grpc_addr().expect("gRPC"), "svc").await;
    watcher
        .until(Duration::from_secs(10), "measured shares again", |s| {
            assert!(
                !s.static_fallback,
                "no static weights after a warm restart: {}",
                describe(s)
            );
            s.endpoints.iter().all(|e| e.rule != "seeded")
                && entry(s, "a").is_some_and(|(w, _)| w > 0.7)
        })
        .await;
    second.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
