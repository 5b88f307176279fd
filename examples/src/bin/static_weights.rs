//! The smallest adoption: a `Balancer` in place of a `tonic::transport::Channel`, with static weights and no
//! coordinator. `cargo run -p lateral-examples --bin static_weights`
//!
//! Two echo backends start on loopback first (stand-ins for yours); the client sends 3 of 4 calls to `fast`.
use lateral_balancer::Balancer;
use lateral_examples::backend::{Backend, BackendSpec};
use lateral_ops::tls::TlsMode;
use lateral_proto::demo::{EchoRequest, echo_client::EchoClient};
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let fast = Backend::start(
        BackendSpec::new("fast", 8, Duration::from_millis(2)),
        any,
        any,
        TlsMode::InsecureDev,
    )
    .await?;
    let cheap = Backend::start(
        BackendSpec::new("cheap", 2, Duration::from_millis(2)),
        any,
        any,
        TlsMode::InsecureDev,
    )
    .await?;

    let channel = Balancer::builder("echo")
        .endpoints([("fast", fast.uri()), ("cheap", cheap.uri())])
        .static_weights([("fast", 3.0), ("cheap", 1.0)])
        .build()?;
    let mut client = EchoClient::new(channel); // any tonic-generated client, unchanged

    let mut served = BTreeMap::<String, u32>::new();
    for _ in 0..400 {
        let reply = client
            .unary(EchoRequest {
                message: "hi".into(),
                ..Default::default()
            })
            .await?;
        *served.entry(reply.into_inner().served_by).or_default() += 1;
    }
    println!("served by: {served:?}"); // about {"cheap": 100, "fast": 300}
    Ok(())
}
