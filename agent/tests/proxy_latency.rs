//! Proxy hop latency on loopback: unary Echo calls direct vs through the proxy, one at a time.
//!
//! Not part of the normal run (it measures, it does not assert much). Rerun with:
//! `cargo test --release -p lateral-agent --test proxy_latency -- --ignored --nocapture`

#[path = "layer_support/echo.rs"]
mod echo;

use std::time::{Duration, Instant};

use echo::{EchoBackend, client, req, serve};
use lateral_agent::proxy::{Proxy, ProxyOptions};
use lateral_agent::recorder::Recorder;

const WARMUP: usize = 500;
const CALLS: usize = 5_000;

async fn measure(addr: std::net::SocketAddr) -> Vec<Duration> {
    let mut c = client(addr).await;
    for _ in 0..WARMUP {
        c.unary(req("warm", 0, 0)).await.unwrap();
    }
    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        // Wall-clock on purpose: this measures real loopback latency.
        let t = Instant::now();
        c.unary(req("ping", 0, 0)).await.unwrap();
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    samples
}

fn pct(s: &[Duration], q: f64) -> Duration {
    s[((s.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly with --ignored --nocapture"]
async fn proxy_hop_latency() {
    let upstream = serve(EchoBackend::default(), None).await;
    let proxy = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        format!("http://{upstream}").parse().unwrap(),
        Recorder::new(),
        ProxyOptions::default(),
    )
    .await
    .unwrap();
    let direct = measure(upstream).await;
    let proxied = measure(proxy.local_addr()).await;
    println!("unary Echo, {CALLS} sequential calls on loopback (after {WARMUP} warm-up):");
    for (name, s) in [("direct", &direct), ("proxied", &proxied)] {
        println!(
            "  {name:8} p50 {:>9.1?}  p99 {:>9.1?}",
            pct(s, 0.5),
            pct(s, 0.99)
        );
    }
    println!(
        "  hop      p50 {:>9.1?}  p99 {:>9.1?}",
        pct(&proxied, 0.5).saturating_sub(pct(&direct, 0.5)),
        pct(&proxied, 0.99).saturating_sub(pct(&direct, 0.99))
    );
    proxy.shutdown().await;
}
