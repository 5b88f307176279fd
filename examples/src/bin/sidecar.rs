//! A client that talks to a sidecar coordinator over gRPC (`WatchWeights`): the client then needs nothing but
//! `lateral-balancer` with `default-features = false` (no QUIC, TLS, CLI or OpenTelemetry SDK in its build).
//! `cargo run -p lateral-examples --bin sidecar`
//!
//! For a self-contained run this program starts the sidecar itself (`Coordinator::start`, what the
//! `lateral-coordinator --config lateral.toml` binary runs) next to two echo backends with their agents.
use lateral_balancer::Balancer;
use lateral_coordinator::{Coordinator, CoordinatorConfig};
use lateral_examples::backend::{Backend, BackendSpec};
use lateral_ops::tls::TlsMode;
use lateral_proto::demo::{EchoRequest, echo_client::EchoClient};
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let service_time = Duration::from_millis(5);
    let fast = Backend::start(
        BackendSpec::new("fast", 8, service_time),
        any,
        any,
        TlsMode::InsecureDev,
    )
    .await?;
    let cheap = Backend::start(
        BackendSpec::new("cheap", 2, service_time),
        any,
        any,
        TlsMode::InsecureDev,
    )
    .await?;

    // The sidecar: in production, `lateral-coordinator --config lateral.toml` on the client's node.
    let sidecar = Coordinator::start(CoordinatorConfig::parse(
        &format!(
            r#"
            [listen]
            grpc = "127.0.0.1:0"
            [tls]
            insecure_dev = true
            [[service]]
            name = "echo"
            [[service.endpoint]]
            id = "fast"
            address = "{}"
            agent = "{}"
            [[service.endpoint]]
            id = "cheap"
            address = "{}"
            agent = "{}"
            "#,
            fast.uri(),
            fast.agent_addr(),
            cheap.uri(),
            cheap.agent_addr()
        ),
        "sidecar example",
    )?)
    .await?;
    let sidecar_uri = format!(
        "http://{}",
        sidecar
            .grpc_addr()
            .ok_or("the sidecar has no gRPC address")?
    );

    // The client: this is all a sidecar user writes.
    let channel = Balancer::builder("echo")
        .endpoints([("fast", fast.uri()), ("cheap", cheap.uri())])
        .coordinator(sidecar_uri)
        .build()?;
    let mut client = EchoClient::new(channel);

    for second in 1..=4 {
        let mut served = BTreeMap::<String, u32>::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        while tokio::time::Instant::now() < until {
            let reply = client
                .unary(EchoRequest {
                    message: "hi".into(),
                    ..Default::default()
                })
                .await?;
            *served.entry(reply.into_inner().served_by).or_default() += 1;
        }
        println!("second {second}: served by {served:?}");
    }
    Ok(())
}
