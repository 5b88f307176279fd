//! The `--etcd*` and `--advertise-*` flags: registering this agent's endpoint in etcd
//! ([`crate::registration`]) so that coordinators with a `[[service.etcd]]` source find it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use lateral_proto::etcd::{EndpointRecord, default_prefix};

use crate::Error;
use crate::registration::Registration;

/// Membership options; off unless `--etcd` is given.
#[derive(Debug, Args)]
#[command(next_help_heading = "Membership in etcd")]
pub struct MembershipArgs {
    /// Register this endpoint in etcd (comma-separated client URLs, http://host:port), under a lease kept
    /// alive while the agent runs: coordinators with a [[service.etcd]] source add it without configuration,
    /// and remove it when the agent exits (at once) or dies (after --etcd-ttl-ms).
    #[arg(
        long,
        env = "LATERAL_AGENT_ETCD",
        value_name = "URLS",
        value_delimiter = ',',
        requires = "advertise_address"
    )]
    pub etcd: Vec<String>,
    /// The service this endpoint belongs to: the key is /lateral/services/<SERVICE>/<endpoint id>.
    #[arg(
        long,
        env = "LATERAL_AGENT_ETCD_SERVICE",
        value_name = "SERVICE",
        requires = "etcd"
    )]
    pub etcd_service: Option<String>,
    /// The key prefix instead of /lateral/services/<SERVICE>/ (must end with '/' and match the
    /// coordinator's `prefix`).
    #[arg(
        long,
        env = "LATERAL_AGENT_ETCD_PREFIX",
        value_name = "PREFIX",
        requires = "etcd",
        conflicts_with = "etcd_service"
    )]
    pub etcd_prefix: Option<String>,
    /// The lease's time to live in milliseconds: how long a crashed agent stays listed.
    #[arg(long, env = "LATERAL_AGENT_ETCD_TTL_MS", default_value_t = 10_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(2_000..=3_600_000))]
    pub etcd_ttl_ms: u64,
    /// The gRPC address clients dial for this endpoint (http://host:port), as registered.
    #[arg(
        long,
        env = "LATERAL_AGENT_ADVERTISE_ADDRESS",
        value_name = "URI",
        requires = "etcd"
    )]
    pub advertise_address: Option<String>,
    /// The QUIC address coordinators dial for this agent (default: --quic-listen, unless it is 0.0.0.0/::).
    #[arg(
        long,
        env = "LATERAL_AGENT_ADVERTISE_AGENT",
        value_name = "ADDR",
        requires = "etcd"
    )]
    pub advertise_agent: Option<SocketAddr>,
    /// Zone or locality, as registered.
    #[arg(
        long,
        env = "LATERAL_AGENT_ZONE",
        value_name = "ZONE",
        requires = "etcd"
    )]
    pub zone: Option<String>,
    /// A label, as registered (repeatable): --label track=canary.
    #[arg(long = "label", env = "LATERAL_AGENT_LABELS", value_name = "KEY=VALUE",
          value_delimiter = ',', value_parser = parse_label, requires = "etcd")]
    pub labels: Vec<(String, String)>,
    /// Relative static weight coordinators use before they have data.
    #[arg(
        long,
        env = "LATERAL_AGENT_STATIC_WEIGHT",
        value_name = "W",
        requires = "etcd"
    )]
    pub static_weight: Option<f64>,
}

impl MembershipArgs {
    /// The registration, or `None` without `--etcd`. `endpoint_id`, `quic_listen` and `declared_capacity` come
    /// from the reporting flags.
    pub fn validate(
        &self,
        endpoint_id: &str,
        quic_listen: SocketAddr,
        declared_capacity: Option<u32>,
    ) -> Result<Option<Registration>, Error> {
        if self.etcd.is_empty() {
            return Ok(None);
        }
        let bad = |field: &str, expected: String| Error::Config {
            field: field.to_owned(),
            expected,
        };
        let prefix = match (&self.etcd_prefix, &self.etcd_service) {
            (Some(prefix), _) => prefix.clone(),
            (None, Some(service)) if !service.trim().is_empty() && !service.contains('/') => {
                default_prefix(service)
            }
            _ => {
                return Err(bad(
                    "--etcd-service",
                    "the service name (without '/'), or --etcd-prefix".to_owned(),
                ));
            }
        };
        let agent = match self.advertise_agent {
            Some(addr) => addr,
            None if !quic_listen.ip().is_unspecified() => quic_listen,
            None => {
                return Err(bad(
                    "--advertise-agent",
                    format!(
                        "the address coordinators dial for this agent, since --quic-listen {quic_listen} is \
                         a wildcard"
                    ),
                ));
            }
        };
        let registration = Registration {
            etcd: self.etcd.clone(),
            prefix,
            record: EndpointRecord {
                id: endpoint_id.to_owned(),
                address: self.advertise_address.clone().unwrap_or_default(),
                agent,
                zone: self.zone.clone(),
                labels: self.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
                static_weight: self.static_weight,
                declared_capacity,
            },
            ttl: Duration::from_millis(self.etcd_ttl_ms),
        };
        registration.validate()?;
        Ok(Some(registration))
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("expected KEY=VALUE, found {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::config::{Cli, Command};

    fn settings(extra: &[&str]) -> Result<crate::config::ReportSettings, String> {
        let base = [
            "lateral-agent",
            "poll",
            "--url",
            "http://127.0.0.1:9090/load",
            "--endpoint-id",
            "e1",
            "--insecure-dev",
        ];
        let cli = Cli::try_parse_from(base.iter().chain(extra)).map_err(|e| e.to_string())?;
        let Command::Poll(poll) = cli.command else {
            return Err("not poll".into());
        };
        poll.report.validate(false).map_err(|e| e.to_string())
    }

    #[test]
    fn registration_is_off_without_etcd_and_built_from_the_flags_with_it() {
        assert!(settings(&[]).unwrap().registration.is_none());
        let r = settings(&[
            "--etcd",
            "http://127.0.0.1:2379,http://127.0.0.1:22379",
            "--etcd-service",
            "checkout",
            "--advertise-address",
            "http://127.0.0.1:50052",
            "--zone",
            "eu-1a",
            "--label",
            "track=canary",
        ])
        .unwrap()
        .registration
        .unwrap();
        assert_eq!(r.etcd.len(), 2);
        assert_eq!(r.key(), "/lateral/services/checkout/e1");
        assert_eq!(r.record.agent, "127.0.0.1:7443".parse().unwrap());
        assert_eq!(r.record.labels["track"], "canary");
        assert_eq!(r.ttl.as_millis(), 10_000);
    }

    #[test]
    fn bad_membership_flags_name_the_flag() {
        let etcd = ["--etcd", "http://127.0.0.1:2379"];
        let with = |more: &[&str]| {
            let mut args = etcd.to_vec();
            args.extend_from_slice(more);
            settings(&args).err().unwrap_or_default()
        };
        let addr = ["--advertise-address", "http://127.0.0.1:1"];
        let cases: [(Vec<&str>, &str); 6] = [
            (vec!["--etcd-service", "s"], "--advertise-address"),
            (addr.to_vec(), "--etcd-service"),
            (
                [&addr[..], &["--etcd-service", "s", "--etcd-ttl-ms", "500"]].concat(),
                "--etcd-ttl-ms",
            ),
            (
                ["--advertise-address", "127.0.0.1:1", "--etcd-service", "s"].to_vec(),
                "address",
            ),
            (
                [
                    &addr[..],
                    &["--etcd-service", "s", "--quic-listen", "0.0.0.0:7443"],
                ]
                .concat(),
                "--advertise-agent",
            ),
            (
                [&addr[..], &["--etcd-prefix", "/no-slash"]].concat(),
                "--etcd-prefix",
            ),
        ];
        for (more, want) in cases {
            let e = with(&more);
            assert!(e.contains(want), "{more:?}: {e}");
        }
        let e = settings(&[
            "--etcd",
            "https://127.0.0.1:2379",
            "--etcd-service",
            "s",
            "--advertise-address",
            "http://h:1",
        ])
        .err()
        .unwrap_or_default();
        assert!(e.contains("--etcd") && e.contains("TLS"), "{e}");
    }
}
