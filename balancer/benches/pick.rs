//! The pick path beside tower's p2c (one unary RPC through the balancer beside a plain channel is
//! `benches/call_path.rs`, interleaved, with allocation counts).
//!
//! `cargo bench -p lateral-balancer --bench pick`
//!
//! - `pick/lateral_stride/N`: one `StrideScheduler::pick` (gRFC A58 static stride) over N endpoints with
//!   random weights in [0.1, 1] (equal weights would take the round-robin fast path).
//! - `pick/lateral_two_level/N`: the balancer's real pick ([`PickBench`], choice_count 2): the stride pick,
//!   an alternative drawn by weight among the others, both usable checks (local ejection, stall) and the
//!   expected-delay comparison from the live queue estimates. What a request pays today.
//! - `pick/tower_p2c/N`: `tower::balance::p2c::Balance` over N always-ready `PendingRequests` services:
//!   `poll_ready` (discovery poll, ready-cache promotion of the service called last, two random choices
//!   compared by load) and `call`, the returned future dropped unpolled. That is the per-request selection
//!   path a p2c user pays; the inner service does nothing.
//! - `pick_hashed/maglev_lookup/N`: a key-hashed pick: `hash_key` of a 12-byte key (as from an `x-user-id`
//!   header) and one lookup in a 65 537-slot weighted Maglev table over N endpoints.
//! - `pick_hashed/maglev_build/N`: building that table, the off-path cost paid when a snapshot changes the
//!   weights.

use std::convert::Infallible;
use std::hint::black_box;
use std::task::{Context, Waker};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lateral_balancer::hashing::{DEFAULT_TABLE_SIZE, MaglevTable, hash_key};
use lateral_balancer::internals::{PickBench, StrideScheduler};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tower::Service;
use tower::load::{CompleteOnResponse, PendingRequests};

const SIZES: [usize; 4] = [2, 10, 100, 1000];

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in SIZES {
        let mut rng = SmallRng::seed_from_u64(n as u64);
        let weights: Vec<f64> = (0..n).map(|_| rng.random_range(0.1..1.0)).collect();
        let Some(scheduler) = StrideScheduler::new(&weights, 0) else {
            return;
        };
        group.bench_with_input(BenchmarkId::new("lateral_stride", n), &n, |b, _| {
            b.iter(|| black_box(scheduler.pick()))
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the lazy channels");
        let _enter = runtime.enter();
        if let Some(two_level) = PickBench::new(&weights, 2) {
            let mut now_us = 1u64;
            group.bench_with_input(BenchmarkId::new("lateral_two_level", n), &n, |b, _| {
                b.iter(|| {
                    now_us += 1;
                    black_box(two_level.pick(now_us))
                })
            });
        }

        let services: Vec<_> = (0..n)
            .map(|_| {
                PendingRequests::new(
                    tower::service_fn(|()| async { Ok::<_, Infallible>(()) }),
                    CompleteOnResponse::default(),
                )
            })
            .collect();
        let mut balance =
            tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(services));
        let mut cx = Context::from_waker(Waker::noop());
        group.bench_with_input(BenchmarkId::new("tower_p2c", n), &n, |b, _| {
            b.iter(|| {
                let ready = balance.poll_ready(&mut cx);
                assert!(ready.is_ready());
                drop(black_box(balance.call(())));
            })
        });
    }
    group.finish();
}

fn pick_hashed(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_hashed");
    for n in SIZES {
        let mut rng = SmallRng::seed_from_u64(n as u64);
        let ids: Vec<String> = (0..n).map(|i| format!("endpoint-{i}")).collect();
        let endpoints: Vec<(&str, f64)> = ids
            .iter()
            .map(|id| (id.as_str(), rng.random_range(0.1..1.0)))
            .collect();
        let Some(table) = MaglevTable::build(&endpoints, DEFAULT_TABLE_SIZE) else {
            return;
        };
        let keys: Vec<String> = (0..1024).map(|i| format!("user-{i:07}")).collect();
        let mut next = 0usize;
        group.bench_with_input(BenchmarkId::new("maglev_lookup", n), &n, |b, _| {
            b.iter(|| {
                next = (next + 1) & 1023;
                black_box(table.lookup(hash_key(keys[next].as_bytes())))
            })
        });
        if n <= 100 {
            group.sample_size(10);
            group.bench_with_input(BenchmarkId::new("maglev_build", n), &n, |b, _| {
                b.iter(|| black_box(MaglevTable::build(&endpoints, DEFAULT_TABLE_SIZE)))
            });
            group.sample_size(100);
        }
    }
    group.finish();
}

criterion_group!(benches, pick, pick_hashed);
criterion_main!(benches);
