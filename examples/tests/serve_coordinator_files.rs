//! `lateral-bench serve --coordinator-files`: the files it writes let a coordinator started from them (the
//! same configuration loader `lateral-coordinator --config` uses) authenticate to every agent of the run.

use std::sync::atomic::Ordering;
use std::time::Duration;

use lateral_coordinator::{Coordinator, CoordinatorConfig};
use lateral_examples::bench::cluster::Cluster;
use lateral_examples::bench::scenario::Scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_from_the_written_files_joins_every_agent() {
    let scenario = Scenario::load("spike").unwrap();
    let cluster = Cluster::start(&scenario, 7).await.unwrap();
    let dir = std::env::temp_dir().join(format!("lateral-serve-files-{}", std::process::id()));
    let any = "127.0.0.1:0".parse().unwrap();
    let path = cluster
        .write_coordinator_files(&scenario, &dir, any, any)
        .unwrap();
    for file in ["ca.pem", "coordinator.pem", "coordinator-key.pem"] {
        assert!(dir.join(file).exists(), "{file} written");
    }
    let config = CoordinatorConfig::load(&path).unwrap();
    assert_eq!(config.services[0].endpoints.len(), scenario.backends.len());
    let coordinator = Coordinator::start(config).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let stats = coordinator.handle().stats();
    while stats.connections.load(Ordering::Relaxed) < scenario.backends.len() as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} agents accepted the coordinator's certificate",
            stats.connections.load(Ordering::Relaxed),
            scenario.backends.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.rejected.load(Ordering::Relaxed), 0);
    cluster.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
