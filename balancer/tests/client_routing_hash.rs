//! Key-hashed routing: the weighted Maglev table (shares, stability, minimal disruption, with measured
//! figures printed under `--nocapture`) and the balancer routing keys to real Echo backends.
//!
//! `cargo test -p lateral-balancer --test client_routing_hash -- --nocapture`

mod client_support;

use std::collections::HashMap;
use std::sync::Arc;

use client_support::*;
use lateral_balancer::Balancer;
use lateral_balancer::hashing::{DEFAULT_TABLE_SIZE, MaglevTable, hash_key, measure_disruption};
use lateral_proto::coordinator::EndpointState::{Active, Ejected};
use lateral_proto::demo::echo_client::EchoClient;
use proptest::prelude::*;

const M: usize = DEFAULT_TABLE_SIZE;

/// A named change: weights before and after.
type Case<'a> = (&'a str, Vec<(&'a str, f64)>, Vec<(&'a str, f64)>);

fn shares(weights: &[(&str, f64)]) -> Vec<f64> {
    let sum: f64 = weights.iter().map(|(_, w)| w.max(0.0)).sum();
    weights.iter().map(|(_, w)| w.max(0.0) / sum).collect()
}

/// The figures for the report: key movement against the theoretical minimum for typical changes.
#[test]
fn report_key_movement_against_the_minimum() {
    let four = [("a", 0.4), ("b", 0.3), ("c", 0.2), ("d", 0.1)];
    let ten: Vec<(String, f64)> = (0..10)
        .map(|i| (format!("e{i}"), 1.0 + i as f64 / 10.0))
        .collect();
    let ten: Vec<(&str, f64)> = ten.iter().map(|(id, w)| (id.as_str(), *w)).collect();
    let mut ten_one_down = ten.clone();
    ten_one_down[3].1 *= 0.5;
    let mut ten_smoothed = ten.clone();
    for (i, e) in ten_smoothed.iter_mut().enumerate() {
        e.1 *= if i % 2 == 0 { 1.05 } else { 0.95 };
    }
    let cases: Vec<Case<'_>> = vec![
        (
            "4 endpoints, a 0.4→0.3, d 0.1→0.2",
            four.to_vec(),
            vec![("a", 0.3), ("b", 0.3), ("c", 0.2), ("d", 0.2)],
        ),
        (
            "4 endpoints, b leaves",
            four.to_vec(),
            vec![("a", 0.4), ("c", 0.2), ("d", 0.1)],
        ),
        (
            "4 endpoints, b ejected (weight 0)",
            four.to_vec(),
            vec![("a", 0.4), ("b", 0.0), ("c", 0.2), ("d", 0.1)],
        ),
        (
            "4 endpoints, e joins at 0.2",
            four.to_vec(),
            vec![("a", 0.4), ("b", 0.3), ("c", 0.2), ("d", 0.1), ("e", 0.2)],
        ),
        (
            "10 endpoints, one halves its weight",
            ten.clone(),
            ten_one_down,
        ),
        (
            "10 endpoints, ±5% smoothing step",
            ten.clone(),
            ten_smoothed,
        ),
        ("10 endpoints, e9 leaves", ten.clone(), ten[..9].to_vec()),
    ];
    println!("key movement vs theoretical minimum ({M}-slot weighted Maglev):");
    for (name, before, after) in cases {
        let d = measure_disruption(&before, &after, M).unwrap();
        println!("  {name:<40} {d}");
        assert!(d.moved >= d.minimum - 1e-3, "{name}: below the minimum?");
        assert!(d.ratio() <= 3.0, "{name}: {d}");
    }
}

#[test]
fn shares_follow_weights_within_a_tenth_of_a_percent() {
    let weights = [
        ("a", 0.42),
        ("b", 0.25),
        ("c", 0.2),
        ("d", 0.1),
        ("e", 0.02),
        ("f", 0.01),
    ];
    let table = MaglevTable::build(&weights, M).unwrap();
    let counts = table.slot_counts(weights.len());
    for (i, share) in shares(&weights).iter().enumerate() {
        let got = counts[i] as f64 / M as f64;
        assert!((got - share).abs() < 0.001, "{i}: {got} vs {share}");
    }
    // And keys (not just slots) land that way.
    let mut keys = vec![0usize; weights.len()];
    for k in 0..200_000 {
        keys[table.lookup(hash_key(format!("user-{k}").as_bytes()))] += 1;
    }
    for (i, share) in shares(&weights).iter().enumerate() {
        let got = keys[i] as f64 / 200_000.0;
        assert!((got - share).abs() < 0.005, "{i}: {got} vs {share}");
    }
}

fn weights_strategy() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(prop_oneof![1 => Just(0.0), 6 => 0.05f64..1.0], 2..12)
}

fn named(weights: &[f64]) -> Vec<(String, f64)> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| (format!("endpoint-{i}"), *w))
        .collect()
}

fn view(list: &[(String, f64)]) -> Vec<(&str, f64)> {
    list.iter().map(|(id, w)| (id.as_str(), *w)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn shares_within_one_percent_and_zero_weight_owns_nothing(weights in weights_strategy()) {
        prop_assume!(weights.iter().any(|w| *w > 0.0));
        let list = named(&weights);
        let list = view(&list);
        let table = MaglevTable::build(&list, M).unwrap();
        let counts = table.slot_counts(list.len());
        for (i, share) in shares(&list).iter().enumerate() {
            let got = counts[i] as f64 / M as f64;
            prop_assert!((got - share).abs() <= 0.01, "{}: {} vs {}", i, got, share);
            if weights[i] == 0.0 {
                prop_assert_eq!(counts[i], 0);
            }
        }
    }

    #[test]
    fn same_set_same_owner_whatever_the_order(weights in weights_strategy(), rotate in 0usize..12) {
        prop_assume!(weights.iter().any(|w| *w > 0.0));
        let list = named(&weights);
        let mut rotated = list.clone();
        rotated.rotate_left(rotate % list.len());
        let (a, b) = (view(&list), view(&rotated));
        let ta = MaglevTable::build(&a, M).unwrap();
        let tb = MaglevTable::build(&b, M).unwrap();
        for k in 0..2_000u32 {
            let h = hash_key(&k.to_be_bytes());
            prop_assert_eq!(a[ta.lookup(h)].0, b[tb.lookup(h)].0);
        }
    }

    #[test]
    fn a_weight_change_moves_close_to_the_minimum(
        weights in prop::collection::vec(0.1f64..1.0, 3..10),
        which in 0usize..10,
        factor in 0.3f64..3.0,
    ) {
        let before = named(&weights);
        let mut after = before.clone();
        let i = which % after.len();
        after[i].1 *= factor;
        let d = measure_disruption(&view(&before), &view(&after), M).unwrap();
        prop_assert!(d.moved >= d.minimum - 1e-3);
        // Weighted Maglev repopulates from scratch; it stays within a small factor of the minimum.
        prop_assert!(d.moved <= 3.0 * d.minimum + 0.01, "{}", d);
    }

    #[test]
    fn an_endpoint_leaving_moves_little_more_than_its_share(
        weights in prop::collection::vec(0.1f64..1.0, 3..10),
        which in 0usize..10,
    ) {
        let before = named(&weights);
        let mut after = before.clone();
        after.remove(which % before.len());
        let d = measure_disruption(&view(&before), &view(&after), M).unwrap();
        prop_assert!(d.moved >= d.minimum - 1e-3);
        prop_assert!(d.moved <= 2.0 * d.minimum + 0.01, "{}", d);
    }
}

/// Where each of `keys` went, by asking the backends through the balancer.
async fn owners(balancer: &Balancer, keys: &[String]) -> HashMap<String, String> {
    let mut client = EchoClient::new(balancer.clone());
    let mut out = HashMap::new();
    for key in keys {
        let mut request = tonic::Request::new(req(key));
        request
            .metadata_mut()
            .insert("x-user-id", key.parse().unwrap());
        let reply = client.unary(request).await.unwrap().into_inner();
        out.insert(key.clone(), reply.served_by);
    }
    out
}

#[tokio::test]
async fn keys_stick_to_their_endpoint_and_only_an_ejected_endpoints_keys_move() {
    let names = ["a", "b", "c"];
    let mut addrs = Vec::new();
    for n in names {
        addrs.push(serve(Backend::new(n)).await);
    }
    let (tx, rx) = tokio::sync::watch::channel(None);
    let balancer = Balancer::builder("echo")
        // Exact shares are a property of the schedule alone (the default pick leans to the heavier path).
        .choice_count(1)
        .endpoints(names.iter().zip(&addrs).map(|(n, a)| (*n, uri(*a))))
        .hash_key_header("x-user-id")
        .weights_feed(rx)
        .seed(7)
        .build()
        .unwrap();
    let weights = [0.5, 0.3, 0.2];
    tx.send_replace(Some(Arc::new(snapshot(
        "echo",
        1,
        500,
        names
            .iter()
            .zip(&addrs)
            .zip(weights)
            .map(|((n, a), w)| ew(n, *a, w, Active))
            .collect(),
    ))));
    until(|| balancer.metrics().snapshot_version() == 1).await;

    let keys: Vec<String> = (0..600).map(|i| format!("user-{i}")).collect();
    let first = owners(&balancer, &keys).await;
    // Stable: asking again gives the same owners.
    assert_eq!(owners(&balancer, &keys).await, first);
    // Shares of keys follow the weights (600 keys: a loose bound).
    for (n, w) in names.iter().zip(weights) {
        let got = first.values().filter(|o| o == n).count() as f64 / 600.0;
        assert!((got - w).abs() < 0.08, "{n}: {got} vs {w}");
    }

    // Eject b: only b's keys move, and none goes to b.
    tx.send_replace(Some(Arc::new(snapshot(
        "echo",
        2,
        500,
        vec![
            ew("a", addrs[0], 0.5, Active),
            ew("b", addrs[1], 0.0, Ejected),
            ew("c", addrs[2], 0.2, Active),
        ],
    ))));
    until(|| balancer.metrics().snapshot_version() == 2).await;
    let second = owners(&balancer, &keys).await;
    let mut moved = 0;
    for key in &keys {
        assert_ne!(second[key], "b", "an ejected endpoint got a key");
        if first[key] != "b" && first[key] != second[key] {
            moved += 1;
        }
    }
    // Maglev may move a few keys of the staying endpoints; far fewer than their total.
    assert!(
        moved <= keys.len() / 20,
        "{moved} keys of staying endpoints moved"
    );

    // Requests without the key take the weighted pick (a and c, 5:2).
    let before = balancer.metrics().picks();
    let mut client = EchoClient::new(balancer.clone());
    for i in 0..700 {
        client.unary(req(&format!("no-key-{i}"))).await.unwrap();
    }
    let after = balancer.metrics().picks();
    let delta =
        |id: &str| after.get(id).copied().unwrap_or(0) - before.get(id).copied().unwrap_or(0);
    assert_eq!(delta("b"), 0);
    let a_share = delta("a") as f64 / 700.0;
    assert!((a_share - 5.0 / 7.0).abs() < 0.03, "a took {a_share}");
}

#[tokio::test]
async fn a_bad_header_name_or_table_size_is_a_config_error() {
    let bad = Balancer::builder("echo")
        .endpoints([("a", "http://127.0.0.1:1")])
        .hash_key_header("x user id")
        .build();
    assert!(bad.is_err());
    let bad = Balancer::builder("echo")
        .endpoints([("a", "http://127.0.0.1:1")])
        .hash_key_header("x-user-id")
        .hash_table_size(65_536)
        .build();
    assert!(bad.is_err());
}
