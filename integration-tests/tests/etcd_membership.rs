//! Membership through a real etcd (Debian `etcd-server`, started by the test on loopback): agents register
//! their endpoint with a lease, the coordinator lists and watches the prefix and dials the agents it finds;
//! a stopped agent leaves at once, a crashed one when its lease expires; bad records are left out; an etcd
//! outage keeps the last set and the source recovers when etcd returns.

use std::time::Duration;

use lateral_agent::registration::Registration;
use lateral_coordinator::Coordinator;
use lateral_coordinator::config::EtcdSourceConfig;
use lateral_examples::backend::{Backend, BackendSpec};
use lateral_integration_tests::*;
use lateral_proto::coordinator::{EndpointState, WeightSnapshot};
use lateral_proto::etcd::{EndpointRecord, default_prefix};
use tokio_util::sync::CancellationToken;

const LONG_LEASE: Duration = Duration::from_secs(30);

/// Registers `backend` under service `svc` with a lease of `ttl`; the returned token deregisters it.
fn register(
    etcd: &Etcd,
    backend: &Backend,
    ttl: Duration,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let registration = Registration {
        etcd: vec![etcd.url.clone()],
        prefix: default_prefix("svc"),
        record: EndpointRecord {
            id: backend.spec().name.clone(),
            address: backend.uri(),
            agent: backend.agent_addr(),
            zone: None,
            labels: Default::default(),
            static_weight: None,
            declared_capacity: None,
        },
        ttl,
    };
    registration.validate().expect("a valid registration");
    let stop = CancellationToken::new();
    let task = tokio::spawn(registration.run(stop.clone()));
    (stop, task)
}

fn ids(snapshot: &WeightSnapshot) -> Vec<&str> {
    let mut ids: Vec<&str> = snapshot.endpoints.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    ids
}

async fn coordinator_over(etcd: &Etcd, pki: &Pki) -> (Coordinator, Watcher) {
    let mut config = coordinator_config(pki.coordinator_tls(), fast_engine(), vec![]);
    config.services[0].etcd = vec![EtcdSourceConfig {
        endpoints: vec![etcd.url.clone()],
        prefix: None,
    }];
    let coordinator = Coordinator::start(config)
        .await
        .expect("start the coordinator");
    let watcher = Watcher::connect(coordinator.grpc_addr().expect("a gRPC address"), "svc").await;
    (coordinator, watcher)
}

async fn start(pki: &Pki, name: &str) -> Backend {
    let spec = BackendSpec::new(name, 8, Duration::from_millis(5));
    backend(spec, Duration::from_millis(50), pki.mode("agent")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_register_and_the_coordinator_follows_them() {
    let etcd = Etcd::start().await;
    let pki = Pki::new("test-ca");
    let (a, b) = (start(&pki, "a").await, start(&pki, "b").await);
    // Long leases: a key that disappears within seconds was revoked, not expired (and a loaded machine does
    // not lose a lease between keep-alives).
    let (stop_a, task_a) = register(&etcd, &a, LONG_LEASE);
    let (_stop_b, _task_b) = register(&etcd, &b, LONG_LEASE);
    let (_coordinator, mut watcher) = coordinator_over(&etcd, &pki).await;

    // Both found in etcd, and their agents (at the addresses the records gave) heard over QUIC.
    watcher
        .until(Duration::from_secs(15), "a and b active", |s| {
            ids(s) == ["a", "b"]
                && ["a", "b"].iter().all(|id| {
                    entry(s, id).is_some_and(|(w, state)| w > 0.0 && state == EndpointState::Active)
                })
        })
        .await;

    // A stopped agent revokes its lease: it leaves at once, not after the TTL.
    stop_a.cancel();
    task_a.await.expect("the registration task ends");
    watcher
        .until(Duration::from_secs(5), "a gone", |s| ids(s) == ["b"])
        .await;

    // Garbage and an id that is not the key's are left out; a later valid registration still gets through
    // (the watch went past the bad records and kept going).
    let prefix = default_prefix("svc");
    etcd.put(&format!("{prefix}junk"), b"{not json").await;
    let squatter = EndpointRecord {
        id: "b".into(),
        address: "http://127.0.0.1:1".into(),
        agent: "127.0.0.1:1".parse().expect("an address"),
        zone: None,
        labels: Default::default(),
        static_weight: None,
        declared_capacity: None,
    };
    etcd.put(&format!("{prefix}not-b"), &squatter.encode())
        .await;
    let c = start(&pki, "c").await;
    let (_stop_c, _task_c) = register(&etcd, &c, LONG_LEASE);
    let snapshot = watcher
        .until(Duration::from_secs(10), "c joins", |s| {
            ids(s).contains(&"c")
        })
        .await;
    assert_eq!(ids(&snapshot), ["b", "c"], "{}", describe(&snapshot));
    let b_entry = snapshot
        .endpoints
        .iter()
        .find(|e| e.id == "b")
        .expect("b listed");
    assert_eq!(b_entry.address, b.uri(), "the squatter did not replace b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_agent_expires_and_an_etcd_outage_keeps_the_last_set() {
    let mut etcd = Etcd::start().await;
    let pki = Pki::new("test-ca");
    let (a, b) = (start(&pki, "a").await, start(&pki, "b").await);
    // a's lease is short (it must expire within the test), b's long.
    let (_stop_a, task_a) = register(&etcd, &a, Duration::from_secs(3));
    let (_stop_b, _task_b) = register(&etcd, &b, LONG_LEASE);
    let (coordinator, mut watcher) = coordinator_over(&etcd, &pki).await;
    let source_up = |coordinator: &Coordinator| {
        let handle = coordinator.handle();
        let text = handle
            .metrics()
            .render_prometheus(std::time::Instant::now(), handle.stats());
        text.lines()
            .find(|l| {
                l.starts_with("lateral_coordinator_source_up{service=\"svc\",source=\"etcd[0]\"}")
            })
            .map(|l| l.ends_with(" 1"))
    };
    watcher
        .until(Duration::from_secs(15), "a and b listed", |s| {
            ids(s) == ["a", "b"]
        })
        .await;

    // A crash: the registration stops without revoking; the key expires with its 3 s lease.
    task_a.abort();
    watcher
        .until(Duration::from_secs(12), "a expired", |s| ids(s) == ["b"])
        .await;

    // etcd goes away: the coordinator keeps b (snapshots keep coming as liveness, b still in them).
    etcd.kill();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < deadline {
        let s = watcher
            .until(Duration::from_secs(2), "a snapshot", |_| true)
            .await;
        assert_eq!(ids(&s), ["b"], "the last set is kept while etcd is down");
    }
    // ... and says its source is down.
    eventually(Duration::from_secs(10), "source_up 0", || {
        let up = source_up(&coordinator);
        async move { up == Some(false) }
    })
    .await;

    // etcd returns (same data): the source lists again and follows new registrations.
    etcd.spawn().await;
    let d = start(&pki, "d").await;
    let (_stop_d, _task_d) = register(&etcd, &d, LONG_LEASE);
    watcher
        .until(Duration::from_secs(20), "d joins after the outage", |s| {
            ids(s) == ["b", "d"]
        })
        .await;
    assert_eq!(source_up(&coordinator), Some(true));
}
