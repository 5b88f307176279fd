//! The Envoy peer policies: a real Envoy (when installed; skipped with a note otherwise) in front of two Echo
//! backends serves both and, with client-side weighted round robin, derives its weights from their ORCA
//! trailers; and the bench skips the Envoy policies with one line when there is no Envoy.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use lateral_examples::backend::{Backend, BackendSpec};
use lateral_examples::bench::envoy::{self, EnvoyLb, EnvoyProxy};
use lateral_ops::tls::TlsMode;
use lateral_proto::demo::EchoRequest;
use lateral_proto::demo::echo_client::EchoClient;
use tokio::task::JoinSet;
use tonic::transport::Endpoint;

async fn start_backend(name: &str, slots: u32) -> Backend {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    // Envoy does not retry a refusal, and this test checks routing, not overload: no shedding.
    let spec = BackendSpec {
        shed_queue_allowance: None,
        ..BackendSpec::new(name, slots, Duration::from_millis(3))
    };
    Backend::start(spec, any, any, TlsMode::InsecureDev)
        .await
        .unwrap()
}

/// Sends requests from `tasks` concurrent callers for `for_how_long`; returns who served each.
async fn drive(uri: String, tasks: usize, for_how_long: Duration) -> Vec<String> {
    let channel = Endpoint::from_shared(uri)
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    let until = tokio::time::Instant::now() + for_how_long;
    let mut set = JoinSet::new();
    for _ in 0..tasks {
        let mut client = EchoClient::new(channel.clone());
        set.spawn(async move {
            let mut served = Vec::new();
            while tokio::time::Instant::now() < until {
                let reply = client
                    .unary(EchoRequest {
                        message: "through envoy".into(),
                        ..Default::default()
                    })
                    .await
                    .expect("request through Envoy failed");
                served.push(reply.into_inner().served_by);
            }
            served
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_front_proxy_serves_both_backends_and_reads_orca() {
    let binary = match envoy::find() {
        Ok(b) => b,
        Err(why) => {
            eprintln!(
                "skipped: {why}; install Envoy with {}",
                envoy::INSTALL_SCRIPT
            );
            return;
        }
    };
    eprintln!("Envoy {} at {}", binary.version, binary.path.display());
    let test = async {
        let mut big = start_backend("big", 8).await;
        let mut small = start_backend("small", 2).await;
        let named = vec![
            ("big".to_string(), big.grpc_addr()),
            ("small".to_string(), small.grpc_addr()),
        ];
        for lb in [EnvoyLb::Cswrr, EnvoyLb::LeastRequest] {
            let proxy = EnvoyProxy::start(&binary, lb, &named).await.unwrap();
            assert!(proxy.listener().ip().is_loopback() && proxy.admin().ip().is_loopback());
            let served = drive(proxy.uri(), 12, Duration::from_millis(2500)).await;
            let count = |who: &str| served.iter().filter(|s| s.as_str() == who).count();
            let (b, s) = (count("big"), count("small"));
            eprintln!("{}: big {b}, small {s}", lb.policy_name());
            assert_eq!(b + s, served.len(), "every reply names a backend");
            assert!(
                b > 0 && s > 0,
                "both backends get traffic: big {b}, small {s}"
            );
            let weights = proxy.weights().await.unwrap();
            let rejected = proxy.rejected_reports();
            eprintln!(
                "{}: weights {weights:?}, rejected reports {rejected:?}",
                lb.policy_name()
            );
            assert!(weights.iter().all(Option::is_some), "{weights:?}");
            if lb == EnvoyLb::Cswrr {
                // Envoy's default weight is 1 (the median of no valid weight); anything else came from a report.
                assert!(
                    weights.iter().flatten().any(|w| *w != 1),
                    "CSWRR weights {weights:?} never left the default: Envoy read no ORCA report \
                     (rejected: {rejected:?}); {}",
                    envoy::log_tail(proxy.log_path(), 2000)
                );
                // The backend with four times the slots runs at a lower utilization for more requests.
                assert!(weights[0] > weights[1], "big vs small: {weights:?}");
            }
        }
        big.kill().await;
        small.kill().await;
    };
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the Envoy test did not finish within 60 s");
}

/// Without Envoy the bench runs the other policies and says in one line how to install it.
#[test]
fn bench_skips_envoy_policies_without_envoy() {
    let dir = std::env::temp_dir().join(format!("lateral-bench-noenvoy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_lateral-bench"))
        .env(envoy::ENV_BINARY, dir.join("no-such-envoy"))
        .args(["--quick", "--scenario", "spike", "--policies"])
        .arg("envoy_cswrr,round_robin,envoy_least_request")
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let skips: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("skipping envoy_cswrr"))
        .collect();
    assert_eq!(skips.len(), 1, "{stdout}");
    assert!(skips[0].contains(envoy::INSTALL_SCRIPT), "{stdout}");
    let records: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let policies: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["policy"].as_str().unwrap())
        .collect();
    assert_eq!(policies, ["round_robin"]);
    let _ = std::fs::remove_dir_all(&dir);
}
