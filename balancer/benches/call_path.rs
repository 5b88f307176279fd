//! What the Balancer adds to one unary RPC: time and heap allocations beside a plain tonic `Channel`.
//!
//! `cargo bench -p lateral-balancer --bench call_path`
//!
//! One process, one runtime, real tonic Echo servers (`lateral_proto::demo`) on loopback. Variants:
//! - `tonic_channel`: `EchoClient<Channel>` straight to server A (the baseline: tonic's own cost);
//! - `balancer_1`: `EchoClient<Balancer>`, static weights, one endpoint (server A);
//! - `balancer_2`: the same over two endpoints (servers A and B, static weights 3:1).
//!
//! The variants are interleaved: every criterion iteration runs one call of each, in an order that rotates
//! from one iteration to the next, and times each call on its own, so machine noise (three engineers share
//! two cores) lands on all of them alike. Each of the three criterion benchmarks reports its own variant's
//! per-call time from these interleaved rounds; at the end the bench prints the ratio of each Balancer
//! variant to the plain channel over every round it ran, and the median of the per-sample ratios.
//!
//! Allocations: a counting global allocator (`stats_alloc`, since the workspace forbids unsafe code and a
//! `GlobalAlloc` impl needs it) counts every allocation in the process, on every thread. After a warm-up,
//! `ALLOC_CALLS` calls of each variant run in interleaved batches, one call in flight at a time, and the
//! bench prints allocations per call for each, and the Balancer's excess over the plain channel (what
//! tonic, hyper and h2 allocate per call is in both; the excess is the Balancer's own). A fourth variant,
//! counted but not timed, splits that excess: `tonic_channel_id` is the plain channel with the
//! `x-lateral-request-id` header a Balancer adds (its value made as the Balancer makes it), so
//! `tonic_channel_id − tonic_channel` is what that header costs on the wire (h2 encoding it at the client,
//! decoding it at the server — both in this process) and `balancer − tonic_channel_id` is the client code's own.

use std::alloc::System;
use std::cell::RefCell;
use std::time::{Duration, Instant};

use criterion::Criterion;
use lateral_balancer::{Balancer, internals};
use lateral_proto::demo::echo_client::EchoClient;
use lateral_proto::demo::echo_server::{Echo, EchoServer};
use lateral_proto::demo::{EchoReply, EchoRequest};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Calls per variant in the allocation count (after as many warm-up calls).
const ALLOC_CALLS: u64 = 4000;
/// Calls per variant in one batch of the allocation count.
const ALLOC_BATCH: u64 = 100;

const VARIANTS: [&str; 3] = ["tonic_channel", "balancer_1", "balancer_2"];
/// The variants of the allocation count: [`VARIANTS`] and the plain channel with a request id.
const COUNTED: [&str; 4] = [
    "tonic_channel",
    "balancer_1",
    "balancer_2",
    "tonic_channel_id",
];

/// The client id the `tonic_channel_id` variant's request ids carry (the balancer's, set once).
static CLIENT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The plain channel with the request-id header a Balancer adds.
type ChannelWithId = tower::util::MapRequest<Channel, fn(HttpRequest) -> HttpRequest>;
type HttpRequest = http::Request<tonic::body::Body>;

fn with_request_id(mut request: HttpRequest) -> HttpRequest {
    let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let client = CLIENT_ID.get().map_or("bench", String::as_str);
    if let Some(id) = internals::request_id(client, n) {
        request
            .headers_mut()
            .insert(internals::REQUEST_ID_NAME.clone(), id);
    }
    request
}

#[derive(Clone)]
struct Backend(&'static str);

type ReplyStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Backend {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let message = request.into_inner().message;
        Ok(Response::new(EchoReply {
            message,
            served_by: self.0.into(),
            index: 0,
        }))
    }
    type ServerStreamStream = ReplyStream;
    async fn server_stream(
        &self,
        _: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        Err(Status::unimplemented("bench"))
    }
    async fn client_stream(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        Err(Status::unimplemented("bench"))
    }
    type BidiStreamStream = ReplyStream;
    async fn bidi_stream(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        Err(Status::unimplemented("bench"))
    }
}

/// The three clients and the runtime their connections run on.
struct Rig {
    rt: tokio::runtime::Runtime,
    plain: EchoClient<Channel>,
    plain_with_id: EchoClient<ChannelWithId>,
    one: EchoClient<Balancer>,
    two: EchoClient<Balancer>,
    /// Time spent per variant over every interleaved round so far, and the rounds.
    totals: [Duration; 3],
    rounds: u64,
    /// balancer_1 / tonic_channel and balancer_2 / tonic_channel, per criterion sample of `balancer_1`.
    sample_ratios: Vec<(f64, f64)>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn serve(name: &'static str) -> Result<String, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let uri = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(Backend(name)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Ok(uri)
}

fn request() -> EchoRequest {
    EchoRequest {
        message: "ping".into(),
        count: 0,
        fail_with: 0,
    }
}

impl Rig {
    fn new() -> Result<Self, BoxError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (plain, plain_with_id, one, two) = rt.block_on(async {
            let a = serve("a").await?;
            let b = serve("b").await?;
            let channel = tonic::transport::Endpoint::from_shared(a.clone())?
                .tcp_nodelay(true)
                .connect()
                .await?;
            let one = Balancer::builder("echo")
                .endpoints([("a", a.clone())])
                .static_weights([("a", 1.0)])
                .seed(1)
                .build()?;
            let two = Balancer::builder("echo")
                .endpoints([("a", a), ("b", b)])
                .static_weights([("a", 3.0), ("b", 1.0)])
                .seed(1)
                .build()?;
            let _ = CLIENT_ID.set(one.client_id().to_string());
            let with_id: ChannelWithId = tower::util::MapRequest::new(
                channel.clone(),
                with_request_id as fn(HttpRequest) -> HttpRequest,
            );
            Ok::<_, BoxError>((
                EchoClient::new(channel),
                EchoClient::new(with_id),
                EchoClient::new(one),
                EchoClient::new(two),
            ))
        })?;
        Ok(Self {
            rt,
            plain,
            plain_with_id,
            one,
            two,
            totals: [Duration::ZERO; 3],
            rounds: 0,
            sample_ratios: Vec::new(),
        })
    }

    /// One unary call on variant `v` (an index into [`COUNTED`]); panics on an RPC error, which would make
    /// every figure meaningless.
    fn call(&mut self, v: usize) {
        let result = match v {
            0 => self.rt.block_on(self.plain.unary(request())),
            1 => self.rt.block_on(self.one.unary(request())),
            2 => self.rt.block_on(self.two.unary(request())),
            _ => self.rt.block_on(self.plain_with_id.unary(request())),
        };
        if let Err(status) = result {
            panic!("{} call failed: {status}", COUNTED[v]);
        }
    }

    /// `iters` rounds of one call per variant, the order rotating; each variant's total time.
    fn rounds(&mut self, iters: u64) -> [Duration; 3] {
        let mut spent = [Duration::ZERO; 3];
        for i in 0..iters {
            let first = ((self.rounds + i) % 3) as usize;
            for k in 0..3 {
                let v = (first + k) % 3;
                let start = Instant::now();
                self.call(v);
                spent[v] += start.elapsed();
            }
        }
        self.rounds += iters;
        for (total, s) in self.totals.iter_mut().zip(spent) {
            *total += s;
        }
        spent
    }

    /// Allocations (and reallocations) per call of each variant, after `calls` warm-up calls each.
    fn allocations_per_call(&mut self, calls: u64) -> [(f64, f64); 4] {
        let n = COUNTED.len();
        for _ in 0..calls {
            for v in 0..n {
                self.call(v);
            }
        }
        let mut counts = [(0u64, 0u64); 4];
        for batch in 0..calls / ALLOC_BATCH {
            for k in 0..n {
                let v = (batch as usize + k) % n;
                let region = Region::new(GLOBAL);
                for _ in 0..ALLOC_BATCH {
                    self.call(v);
                }
                let change = region.change();
                counts[v].0 += change.allocations as u64;
                counts[v].1 += change.reallocations as u64;
            }
        }
        let n = (calls / ALLOC_BATCH * ALLOC_BATCH) as f64;
        counts.map(|(a, r)| (a as f64 / n, r as f64 / n))
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let rig = match Rig::new() {
        Ok(rig) => rig,
        Err(error) => {
            eprintln!("call_path: could not set up the servers and clients: {error}");
            std::process::exit(1);
        }
    };
    let rig = RefCell::new(rig);

    let allocs = rig.borrow_mut().allocations_per_call(ALLOC_CALLS);
    println!("allocations per unary call ({ALLOC_CALLS} calls each, after as many warm-up calls):");
    for (name, (a, r)) in COUNTED.iter().zip(allocs) {
        println!("  {name:<16} {a:7.2} allocations {r:6.2} reallocations");
    }
    let header = allocs[3].0 - allocs[0].0;
    for (name, (a, _)) in VARIANTS.iter().zip(allocs).skip(1) {
        println!(
            "  {name} beyond the plain channel: {:+.2} (the request-id header on the wire {header:+.2}, the client's own {:+.2})",
            a - allocs[0].0,
            a - allocs[3].0
        );
    }

    let mut criterion = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    {
        let mut group = criterion.benchmark_group("call_path");
        for (v, name) in VARIANTS.iter().enumerate() {
            group.bench_function(*name, |b| {
                b.iter_custom(|iters| {
                    let mut rig = rig.borrow_mut();
                    let spent = rig.rounds(iters);
                    if v == 1 {
                        let plain = spent[0].as_secs_f64();
                        rig.sample_ratios.push((
                            spent[1].as_secs_f64() / plain,
                            spent[2].as_secs_f64() / plain,
                        ));
                    }
                    spent[v]
                })
            });
        }
        group.finish();
    }
    criterion.final_summary();

    let rig = rig.borrow();
    if rig.rounds == 0 {
        return;
    }
    let per_call = rig
        .totals
        .map(|t| t.as_secs_f64() * 1e6 / rig.rounds as f64);
    println!(
        "interleaved, {} rounds of one call per variant:",
        rig.rounds
    );
    for (name, us) in VARIANTS.iter().zip(per_call) {
        println!("  {name:<14} {us:8.1} µs per call");
    }
    let ones = rig.sample_ratios.iter().map(|r| r.0).collect();
    let twos = rig.sample_ratios.iter().map(|r| r.1).collect();
    println!(
        "  ratio balancer_1 / tonic_channel: {:.3} overall, {:.3} median of {} samples",
        per_call[1] / per_call[0],
        median(ones),
        rig.sample_ratios.len()
    );
    println!(
        "  ratio balancer_2 / tonic_channel: {:.3} overall, {:.3} median of {} samples",
        per_call[2] / per_call[0],
        median(twos),
        rig.sample_ratios.len()
    );
}
