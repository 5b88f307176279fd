//! The default way to run Lateral: the coordinator embedded in the client process, fed by the agents next to
//! the backends over QUIC. `cargo run -p lateral-examples --bin embedded`
//!
//! Two echo backends with their agents start on loopback (stand-ins for yours): `fast` with 8 slots, `cheap`
//! with 2, both declared equal in the static weights. Within a few heartbeats the coordinator has measured
//! them and the client sends most calls to `fast`. (Development TLS: `insecure_dev`; production names a CA,
//! certificate and key, see deploy/coordinator.example.toml.)
use lateral_balancer::Balancer;
use lateral_balancer::coordinator::CoordinatorConfig;
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

    // What lateral.toml would hold: the service, its endpoints and where their agents listen.
    let config = CoordinatorConfig::parse(
        &format!(
            r#"
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
        "embedded example",
    )?;
    let channel = Balancer::builder("echo")
        .endpoints([("fast", fast.uri()), ("cheap", cheap.uri())])
        .idempotent_methods(["/lateral.demo.v1.Echo/Unary"])
        .embedded(config)
        .build()?;
    let client = EchoClient::new(channel);

    for second in 1..=4 {
        // 16 concurrent callers for one second.
        let served = load(&client, Duration::from_secs(1)).await?;
        println!("second {second}: served by {served:?}");
    }
    Ok(())
}

async fn load(
    client: &EchoClient<Balancer>,
    period: Duration,
) -> Result<BTreeMap<String, u32>, tonic::Status> {
    let until = tokio::time::Instant::now() + period;
    let callers = (0..16).map(|_| {
        let mut client = client.clone();
        tokio::spawn(async move {
            let mut served = BTreeMap::<String, u32>::new();
            while tokio::time::Instant::now() < until {
                let reply = client
                    .unary(EchoRequest {
                        message: "hi".into(),
                        ..Default::default()
                    })
                    .await?;
                *served.entry(reply.into_inner().served_by).or_default() += 1;
            }
            Ok::<_, tonic::Status>(served)
        })
    });
    let mut total = BTreeMap::new();
    for caller in callers.collect::<Vec<_>>() {
        let served = caller
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))??;
        for (name, n) in served {
            *total.entry(name).or_default() += n;
        }
    }
    Ok(total)
}
