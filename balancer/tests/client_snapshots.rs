//! Weight snapshots: churn during traffic, the stale-weights lock, static fallback, a killed backend.

mod client_support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client_support::*;
use lateral_balancer::{Balancer, RetryBudgetConfig};
use lateral_proto::coordinator::EndpointState::{Active, Draining};
use lateral_proto::demo::echo_client::EchoClient;

#[tokio::test]
async fn endpoint_churn_during_traffic_fails_no_request() {
    let backends: Vec<Backend> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| Backend::new(n))
        .collect();
    let mut addrs = Vec::new();
    for b in &backends {
        addrs.push(serve(b.clone()).await);
    }
    let (tx, rx) = tokio::sync::watch::channel(None);
    let balancer = Balancer::builder("echo")
        // Exact shares are a property of the schedule alone (the default pick leans to the heavier path).
        .choice_count(1)
        .endpoints([("a", uri(addrs[0])), ("b", uri(addrs[1]))])
        .weights_feed(rx)
        .build()
        .unwrap();

    // Traffic from 8 concurrent callers.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let completed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut callers = Vec::new();
    for c in 0..8 {
        let mut client = EchoClient::new(balancer.clone());
        let stop = Arc::clone(&stop);
        let completed = Arc::clone(&completed);
        callers.push(tokio::spawn(async move {
            let mut done = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client
                    .unary(req(&format!("{c}-{done}")))
                    .await
                    .expect("no request may fail during churn");
                done += 1;
                completed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            done
        }));
    }
    // Each membership lasts until the callers completed 30 more requests under it (by progress, not by the
    // clock, so a loaded machine runs the same test).
    let progress = |completed: Arc<std::sync::atomic::AtomicUsize>| async move {
        let from = completed.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(60), async {
            while completed.load(std::sync::atomic::Ordering::Relaxed) < from + 30 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the callers keep completing requests");
    };
    // Add c (not configured: dialed from the snapshot), remove a, drain b, add d, bring a back...
    let plans = [
        vec![
            ew("a", addrs[0], 0.5, Active),
            ew("b", addrs[1], 0.3, Active),
            ew("c", addrs[2], 0.2, Active),
        ],
        vec![
            ew("b", addrs[1], 0.5, Active),
            ew("c", addrs[2], 0.5, Active),
        ],
        vec![
            ew("b", addrs[1], 0.0, Draining),
            ew("c", addrs[2], 0.6, Active),
            ew("d", addrs[3], 0.4, Active),
        ],
        vec![ew("d", addrs[3], 1.0, Active)],
        vec![
            ew("a", addrs[0], 0.7, Active),
            ew("d", addrs[3], 0.3, Active),
        ],
    ];
    for (v, plan) in plans.into_iter().enumerate() {
        progress(completed.clone()).await;
        tx.send_replace(Some(Arc::new(snapshot("echo", v as u64 + 1, 500, plan))));
    }
    progress(completed.clone()).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in callers {
        total += c.await.unwrap();
    }
    assert!(total > 100, "only {total} requests");
    assert_eq!(balancer.metrics().snapshot_version(), 5);
    let arrivals: Vec<usize> = backends.iter().map(Backend::arrivals).collect();
    assert!(
        arrivals.iter().all(|n| *n > 0),
        "every endpoint served during its time: {arrivals:?}"
    );
    let weights = balancer.current_weights();
    assert_eq!(
        weights
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["a", "d"]
    );
}

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn no_snapshot_for_two_intervals_locks_the_weights_and_warns_once() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);

    let addr = "127.0.0.1:9".parse().unwrap(); // never dialed: no request in this test
    let (tx, rx) = tokio::sync::watch::channel(None);
    let balancer = Balancer::builder("echo").weights_feed(rx).build().unwrap();
    tx.send_replace(Some(Arc::new(snapshot(
        "echo",
        1,
        500,
        vec![ew("a", addr, 0.75, Active), ew("b", addr, 0.25, Active)],
    ))));
    until(|| balancer.metrics().snapshot_version() == 1).await;
    let fresh = balancer.current_weights();

    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!balancer.metrics().stale(), "not stale before 2 intervals");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(balancer.metrics().stale(), "stale after 2 intervals");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(balancer.metrics().stale_events(), 1);
    assert_eq!(balancer.current_weights(), fresh, "last good weights kept");
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        text.matches("keeping the last good weights").count(),
        1,
        "{text}"
    );
    assert!(
        balancer
            .metrics()
            .render_prometheus()
            .contains("lateral_client_weights_stale{service=\"echo\"} 1")
    );

    // The next snapshot clears it.
    tx.send_replace(Some(Arc::new(snapshot(
        "echo",
        2,
        500,
        vec![ew("a", addr, 1.0, Active)],
    ))));
    until(|| balancer.metrics().snapshot_version() == 2).await;
    assert!(!balancer.metrics().stale());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        balancer.metrics().stale_events(),
        2,
        "a new quiet period is a new event"
    );
}

#[tokio::test(start_paused = true)]
async fn an_absurd_heartbeat_interval_is_bounded_not_a_panic() {
    // Found by the weight_snapshot fuzz target: `now + 2 × heartbeat_interval` overflowed an Instant and
    // killed the policy task, so the client never took another snapshot.
    let addr = "127.0.0.1:9".parse().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(None);
    let balancer = Balancer::builder("echo").weights_feed(rx).build().unwrap();
    let mut absurd = snapshot("echo", 1, 500, vec![ew("a", addr, 1.0, Active)]);
    absurd.heartbeat_interval = Some(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    });
    tx.send_replace(Some(Arc::new(absurd)));
    until(|| balancer.metrics().snapshot_version() == 1).await;
    // The policy task is alive: it takes the next snapshot, and judges staleness on the bounded interval.
    tx.send_replace(Some(Arc::new(snapshot(
        "echo",
        2,
        500,
        vec![ew("a", addr, 0.5, Active), ew("b", addr, 0.5, Active)],
    ))));
    until(|| balancer.metrics().snapshot_version() == 2).await;
    assert_eq!(balancer.current_weights().len(), 2);
}

#[tokio::test]
async fn unreachable_coordinator_means_static_weights_at_once() {
    let (a, b) = (Backend::new("a"), Backend::new("b"));
    let (addr_a, addr_b) = (serve(a.clone()).await, serve(b.clone()).await);
    // Port 1 on loopback: connection refused.
    let balancer = Balancer::builder("echo")
        // Exact shares are a property of the schedule alone (the default pick leans to the heavier path).
        .choice_count(1)
        .endpoints([("a", uri(addr_a)), ("b", uri(addr_b))])
        .static_weights([("a", 3.0), ("b", 1.0)])
        .coordinator("http://127.0.0.1:1")
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.clone());
    // A client that waited for its coordinator would never finish (or take a connect timeout per call):
    // the bound is generous so that only that fails it, not a slow machine.
    tokio::time::timeout(Duration::from_secs(60), async {
        for i in 0..400 {
            client.unary(req(&i.to_string())).await.unwrap();
        }
    })
    .await
    .expect("never waited for the coordinator");
    assert_eq!((a.arrivals(), b.arrivals()), (300, 100));
    assert_eq!(balancer.metrics().snapshot_version(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_traffic_loses_no_retryable_request() {
    let (a, b, c) = (Backend::new("a"), Backend::new("b"), Backend::new("c"));
    let (addr_a, addr_b) = (serve(a.clone()).await, serve(b.clone()).await);
    let mut victim = Killable::start(c.clone());
    let balancer = Balancer::builder("echo")
        .endpoints([
            ("a", uri(addr_a)),
            ("b", uri(addr_b)),
            ("c", uri(victim.addr)),
        ])
        // Until the coordinator ejects it, a third of the traffic meets the dead endpoint; let every
        // such request be retried in this test (the default budget would refuse some, by design).
        .retry_budget(RetryBudgetConfig {
            retry_ratio: 1.0,
            min_retries_per_second: 1000,
            max_balance: 1000,
        })
        .build()
        .unwrap();
    let mut callers = Vec::new();
    for k in 0..6 {
        let mut client = EchoClient::new(balancer.clone());
        callers.push(tokio::spawn(async move {
            for i in 0..150 {
                client
                    .unary(req(&format!("{k}-{i}")))
                    .await
                    .expect("a retryable request was lost");
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while c.arrivals() < 100 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    victim.kill();
    for caller in callers {
        caller.await.unwrap();
    }
    assert!(
        balancer.metrics().retries() > 0,
        "the dead endpoint was met and retried"
    );
    assert!(a.arrivals() + b.arrivals() + c.arrivals() >= 900);
}

#[tokio::test]
async fn versions_are_ordered_within_an_epoch_and_a_new_epoch_is_taken_whatever_its_version() {
    let addr = "127.0.0.1:9".parse().unwrap(); // never dialed
    let (tx, rx) = tokio::sync::watch::channel(None);
    let balancer = Balancer::builder("echo").weights_feed(rx).build().unwrap();
    let send = |epoch: u64, version: u64, a: f64| {
        let mut s = snapshot(
            "echo",
            version,
            500,
            vec![ew("a", addr, a, Active), ew("b", addr, 1.0 - a, Active)],
        );
        s.epoch = epoch;
        tx.send_replace(Some(Arc::new(s)));
    };
    let share_a = || {
        balancer
            .current_weights()
            .into_iter()
            .find(|(id, _)| id == "a")
            .map_or(0.0, |(_, w)| w)
    };
    send(7, 10, 0.75);
    until(|| balancer.metrics().snapshot_version() == 10).await;
    // Same epoch, older version: a keep-alive, the weights stay.
    send(7, 3, 0.25);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!((share_a() - 0.75).abs() < 1e-9);
    // A new epoch (the coordinator restarted): taken although its version is lower.
    send(8, 1, 0.25);
    until(|| balancer.metrics().snapshot_version() == 1).await;
    assert!((share_a() - 0.25).abs() < 1e-9);
}
