//! A DNS endpoint source: resolves a name periodically and reports the set of addresses as endpoints.
//!
//! Each address becomes an endpoint with id `name/ip`, gRPC address `http://ip:grpc_port` and agent
//! `ip:agent_port`. A failed lookup keeps the last good set (and logs), so a DNS hiccup never empties a service.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::config::{DnsSourceConfig, EndpointConfig};
use super::driver::{Command, EndpointSource};
use super::metrics::CoordinatorMetrics;

pub(crate) async fn run(
    service: String,
    source: usize,
    config: DnsSourceConfig,
    commands: mpsc::WeakSender<Command>,
    metrics: Arc<CoordinatorMetrics>,
) {
    let label = EndpointSource::Dns(source).label();
    let mut tick = tokio::time::interval(Duration::from_millis(config.refresh_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<BTreeSet<SocketAddr>> = None;
    loop {
        tick.tick().await;
        let found = match tokio::net::lookup_host((config.name.as_str(), config.grpc_port)).await {
            Ok(addrs) => addrs.collect::<BTreeSet<_>>(),
            Err(e) => {
                tracing::warn!(service, name = %config.name, error = %e, "DNS lookup failed; keeping the last endpoints");
                metrics.on_source(&service, &label, false);
                continue;
            }
        };
        if found.is_empty() {
            tracing::warn!(service, name = %config.name, "DNS returned no addresses; keeping the last endpoints");
            metrics.on_source(&service, &label, false);
            continue;
        }
        metrics.on_source(&service, &label, true);
        if last.as_ref() == Some(&found) {
            continue;
        }
        let endpoints = found
            .iter()
            .map(|addr| endpoint_for(&config, addr))
            .collect();
        last = Some(found);
        let Some(commands) = commands.upgrade() else {
            return;
        };
        if commands
            .send(Command::Resolved {
                service: service.clone(),
                source: EndpointSource::Dns(source),
                endpoints,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

fn endpoint_for(config: &DnsSourceConfig, addr: &SocketAddr) -> EndpointConfig {
    let ip = addr.ip();
    let host = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    };
    EndpointConfig {
        id: format!("{}/{ip}", config.name),
        address: format!("http://{host}:{}", config.grpc_port),
        agent: SocketAddr::new(ip, config.agent_port),
        zone: config.zone.clone(),
        labels: config.labels.clone(),
        static_weight: None,
        declared_capacity: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_becomes_an_endpoint() {
        let config = DnsSourceConfig {
            name: "greeter.internal".into(),
            grpc_port: 50051,
            agent_port: 7443,
            refresh_ms: 1000,
            zone: Some("a".into()),
            labels: Default::default(),
        };
        let e = endpoint_for(&config, &"10.0.0.7:50051".parse().unwrap());
        assert_eq!(e.id, "greeter.internal/10.0.0.7");
        assert_eq!(e.address, "http://10.0.0.7:50051");
        assert_eq!(e.agent, "10.0.0.7:7443".parse().unwrap());
        let e = endpoint_for(&config, &"[::1]:50051".parse().unwrap());
        assert_eq!(e.address, "http://[::1]:50051");
    }
}
