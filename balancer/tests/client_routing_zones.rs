//! Zone preference with spillover: local-zone routing with weights renormalised in the zone, spill on local
//! degradation, hysteresis and a minimum dwell (paused tokio time), immediate spill when nothing local can
//! serve. Real Echo backends.

mod client_support;

use std::sync::Arc;
use std::time::Duration;

use client_support::*;
use lateral_balancer::{Balancer, ZonePolicy};
use lateral_proto::coordinator::EndpointState::{self, Active, Degraded, Ejected};
use lateral_proto::coordinator::{EndpointWeight, WeightSnapshot};
use lateral_proto::demo::echo_client::EchoClient;
use tokio::sync::watch;

struct Zoned {
    backends: Vec<Backend>,
    addrs: Vec<std::net::SocketAddr>,
    tx: watch::Sender<Option<Arc<WeightSnapshot>>>,
    balancer: Balancer,
    version: u64,
}

const IDS: [&str; 3] = ["a1", "a2", "b1"];
const ZONES: [&str; 3] = ["zone-a", "zone-a", "zone-b"];

impl Zoned {
    async fn start(policy: ZonePolicy) -> Self {
        let backends: Vec<Backend> = IDS.iter().map(|n| Backend::new(n)).collect();
        let mut addrs = Vec::new();
        for b in &backends {
            addrs.push(serve(b.clone()).await);
        }
        let (tx, rx) = watch::channel(None);
        let mut builder = Balancer::builder("echo")
            .zone("zone-a")
            .zone_policy(policy)
            .choice_count(1)
            .weights_feed(rx)
            .seed(11);
        for i in 0..3 {
            // Zones from the builder; the snapshot below names them too.
            builder = builder.endpoint(IDS[i], uri(addrs[i]), ZONES[i], [("tier", "x")]);
        }
        let balancer = builder.build().unwrap();
        Self {
            backends,
            addrs,
            tx,
            balancer,
            version: 0,
        }
    }

    async fn send(&mut self, weights: [(f64, EndpointState); 3]) {
        self.version += 1;
        let endpoints: Vec<EndpointWeight> = (0..3)
            .map(|i| EndpointWeight {
                zone: ZONES[i].into(),
                ..ew(IDS[i], self.addrs[i], weights[i].0, weights[i].1)
            })
            .collect();
        self.tx.send_replace(Some(Arc::new(snapshot(
            "echo",
            self.version,
            500,
            endpoints,
        ))));
        let v = self.version;
        let balancer = self.balancer.clone();
        until(move || balancer.metrics().snapshot_version() == v).await;
    }

    fn share(&self, id: &str) -> f64 {
        self.balancer
            .current_weights()
            .into_iter()
            .find(|(i, _)| i == id)
            .map_or(0.0, |(_, s)| s)
    }

    /// Sends `n` requests; returns the arrivals per backend during them.
    async fn traffic(&self, n: usize) -> [usize; 3] {
        let before: Vec<usize> = self.backends.iter().map(Backend::arrivals).collect();
        let mut client = EchoClient::new(self.balancer.clone());
        for i in 0..n {
            client.unary(req(&format!("z{i}"))).await.unwrap();
        }
        let mut out = [0; 3];
        for i in 0..3 {
            out[i] = self.backends[i].arrivals() - before[i];
        }
        out
    }
}

fn policy() -> ZonePolicy {
    ZonePolicy {
        spill_below_healthy: 0.75,
        return_at_healthy: 1.0,
        min_dwell: Duration::from_secs(10),
        ..ZonePolicy::default()
    }
}

#[tokio::test(start_paused = true)]
async fn prefers_its_zone_spills_on_degradation_and_returns_after_the_dwell() {
    let mut z = Zoned::start(policy()).await;
    z.send([(0.1, Active), (0.3, Active), (0.6, Active)]).await;
    // Local: b1 gets nothing, a1 : a2 renormalised to 1 : 3.
    assert_eq!(z.share("b1"), 0.0);
    assert!((z.share("a1") - 0.25).abs() < 1e-9);
    let arrivals = z.traffic(400).await;
    assert_eq!(arrivals[2], 0, "{arrivals:?}");
    assert!((arrivals[0] as i64 - 100).abs() <= 4, "{arrivals:?}");
    assert!(!z.balancer.metrics().zone_spilling());

    // a1 degrades: half the local zone healthy < 0.75: spill to the global weights.
    z.send([(0.05, Degraded), (0.3, Active), (0.65, Active)])
        .await;
    let spilled_at = tokio::time::Instant::now();
    assert!(z.balancer.metrics().zone_spilling());
    assert!((z.share("b1") - 0.65).abs() < 1e-9);
    let arrivals = z.traffic(200).await;
    assert!((arrivals[2] as i64 - 130).abs() <= 4, "{arrivals:?}");
    // (Paused time auto-advances while the runtime waits on sockets, so traffic may move the clock to the
    // next timer, the 1 s stale deadline; the dwell arithmetic below starts from `spilled_at`.)

    // a1 recovers 1 s later: the return waits for the 10 s dwell...
    tokio::time::advance(Duration::from_secs(1)).await;
    z.send([(0.1, Active), (0.3, Active), (0.6, Active)]).await;
    assert!(z.balancer.metrics().zone_spilling());
    assert!(z.share("b1") > 0.0);
    // ...and flapping inside it changes nothing.
    for s in 0..6 {
        tokio::time::advance(Duration::from_secs(1)).await;
        let a1 = if s % 2 == 0 {
            (0.05, Degraded)
        } else {
            (0.1, Active)
        };
        z.send([a1, (0.3, Active), (0.6, Active)]).await;
        assert!(z.balancer.metrics().zone_spilling());
    }
    z.send([(0.1, Active), (0.3, Active), (0.6, Active)]).await;
    assert_eq!(z.balancer.metrics().zone_transitions(), 1);
    // The dwell ends 10 s after the spill: the policy task looks again by itself, no snapshot needed.
    let until_dwell_end = spilled_at + Duration::from_secs(10) - tokio::time::Instant::now();
    tokio::time::advance(until_dwell_end - Duration::from_millis(1)).await;
    tokio::task::yield_now().await;
    assert!(z.balancer.metrics().zone_spilling());
    tokio::time::advance(Duration::from_millis(2)).await;
    let balancer = z.balancer.clone();
    until(move || !balancer.metrics().zone_spilling()).await;
    assert_eq!(z.share("b1"), 0.0);
    assert_eq!(z.balancer.metrics().zone_transitions(), 2);
    let arrivals = z.traffic(100).await;
    assert_eq!(arrivals[2], 0, "{arrivals:?}");

    let text = z.balancer.metrics().render_prometheus();
    assert!(text.contains("lateral_client_zone_spilling{service=\"echo\"} 0"));
    assert!(text.contains("lateral_client_zone_transitions_total{service=\"echo\"} 2"));
}

/// Runs `secs` of paused time in 100 ms steps with a zone-a demand of `full` (the utilisation zone a would
/// report carrying all the traffic): each step sends `per_step` requests, and the local backends then report
/// `full ×` the fraction of that step's requests they took (a zone whose load follows its traffic). Returns
/// the local fraction of each step.
async fn demand(z: &Zoned, secs: u64, full: f64, per_step: usize) -> Vec<f64> {
    let mut fractions = Vec::new();
    for _ in 0..secs * 10 {
        let arrivals = z.traffic(per_step).await;
        let local = (arrivals[0] + arrivals[1]) as f64 / per_step as f64;
        for b in &z.backends[..2] {
            b.report_utilization(Some(full * local));
        }
        fractions.push(local);
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    fractions
}

#[tokio::test(start_paused = true)]
async fn a_busy_zone_spills_only_its_deficit_without_alternating() {
    let mut z = Zoned::start(policy()).await;
    // Zone a has 40% of the global weight.
    z.send([(0.2, Active), (0.2, Active), (0.6, Active)]).await;
    let mean = |f: &[f64]| f.iter().sum::<f64>() / f.len() as f64;

    // Calm: zone a carries everything at 0.5.
    let calm = demand(&z, 5, 0.5, 10).await;
    assert!(calm.iter().all(|f| *f == 1.0), "{calm:?}");
    assert_eq!(z.balancer.metrics().zone_transitions(), 0);

    // Zone a would run at 1.3 with all of it: it keeps what it carries at 0.65, half, and spills the rest
    // (not everything: the global weights would keep only 40%).
    let busy = demand(&z, 30, 1.3, 10).await;
    assert_eq!(
        z.balancer.metrics().zone_transitions(),
        1,
        "one spill, no alternation: {busy:?}"
    );
    let settled = mean(&busy[100..]);
    assert!((settled - 0.5).abs() < 0.07, "local fraction {settled}");
    let k = z.balancer.metrics().zone_local_fraction();
    assert!((k - 0.5).abs() < 0.07, "gauge {k}");
    let text = z.balancer.metrics().render_prometheus();
    assert!(text.contains("lateral_client_zone_local_fraction{service=\"echo\"} 0."));

    // Demand eases below the return threshold: the zone takes everything back, once.
    let eased = demand(&z, 20, 0.4, 10).await;
    assert!(!z.balancer.metrics().zone_spilling(), "{eased:?}");
    assert_eq!(z.balancer.metrics().zone_transitions(), 2);
    assert!(
        eased[eased.len() - 20..].iter().all(|f| *f == 1.0),
        "{eased:?}"
    );
    assert_eq!(z.balancer.metrics().zone_local_fraction(), 1.0);
}

#[tokio::test(start_paused = true)]
async fn spills_at_once_when_nothing_local_can_serve_even_within_the_dwell() {
    let mut z = Zoned::start(policy()).await;
    z.send([(0.3, Active), (0.3, Active), (0.4, Active)]).await;
    // Spill, come back (two changes), then lose the whole local zone right away.
    z.send([(0.05, Degraded), (0.3, Active), (0.65, Active)])
        .await;
    tokio::time::advance(Duration::from_secs(11)).await;
    z.send([(0.3, Active), (0.3, Active), (0.4, Active)]).await;
    assert!(!z.balancer.metrics().zone_spilling());
    z.send([(0.0, Ejected), (0.0, Ejected), (1.0, Active)])
        .await;
    assert!(z.balancer.metrics().zone_spilling());
    let arrivals = z.traffic(50).await;
    assert_eq!(arrivals, [0, 0, 50]);
}

#[tokio::test]
async fn a_zone_policy_needs_a_zone_and_consistent_thresholds() {
    let no_zone = Balancer::builder("echo")
        .endpoints([("a", "http://127.0.0.1:1")])
        .zone_policy(ZonePolicy::default())
        .build();
    assert!(no_zone.is_err());
    let inverted = Balancer::builder("echo")
        .endpoints([("a", "http://127.0.0.1:1")])
        .zone("z")
        .zone_policy(ZonePolicy {
            spill_below_healthy: 0.9,
            return_at_healthy: 0.5,
            ..ZonePolicy::default()
        })
        .build();
    assert!(inverted.is_err());
}
