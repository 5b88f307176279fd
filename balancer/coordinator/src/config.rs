//! The coordinator's configuration: a TOML file, validated field by field, with flag and environment overrides
//! applied by the binary.
//!
//! ```toml
//! [listen]
//! grpc = "127.0.0.1:50100"          # WatchWeights / GetDecisions
//! http = "127.0.0.1:50101"          # /metrics, dashboard at /, /api/state (default: off)
//! xds = "127.0.0.1:18000"           # ADS for Envoy and gRPC clients (feature `xds`; default: off)
//!
//! [xds]                              # see `lateral_xds::XdsConfig`
//! listeners = { greeter = 10000 }    # the port Envoy listens on for each service
//!
//! [tls]                              # QUIC to the agents: mutual TLS from a CA ...
//! ca = "certs/ca.pem"
//! cert = "certs/coordinator.pem"
//! key = "certs/coordinator-key.pem"
//! server_name = "localhost"          # the name agents' certificates must carry
//! # insecure_dev = true              # ... or self-signed, unauthenticated development mode (loud warning)
//!
//! [telemetry]                        # OTLP traces; see `TelemetryConfig` (else OTEL_* variables)
//! otlp_endpoint = "http://127.0.0.1:4317"
//!
//! [engine]                           # weight rules; every field optional, see `EngineConfig`
//! alpha = 0.3
//!
//! [[service]]
//! name = "greeter"
//!
//!   [[service.endpoint]]
//!   id = "fast"
//!   address = "http://127.0.0.1:50051"   # what clients dial
//!   agent = "127.0.0.1:7443"             # the agent's QUIC address
//!   zone = "eu-1a"
//!   labels = { track = "stable" }
//!   static_weight = 4.0                  # used when there is no data
//!
//!   [[service.dns]]                      # endpoints from a DNS name, re-resolved periodically
//!   name = "greeter.internal"
//!   grpc_port = 50051
//!   agent_port = 7443
//!   refresh_ms = 10000
//!
//!   [[service.etcd]]                     # endpoints agents register in etcd (`lateral-agent --etcd`)
//!   endpoints = ["http://127.0.0.1:2379"]
//!   prefix = "/lateral/services/greeter/"  # the default: /lateral/services/<service name>/
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;
pub use crate::election::HaConfig;
use crate::engine::EngineConfig;
pub use crate::persist::PersistConfig;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Listen addresses.
    #[serde(default)]
    pub listen: ListenConfig,
    /// TLS for the QUIC connections to agents.
    #[serde(default)]
    pub tls: TlsConfig,
    /// The engine's rules.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Services and their endpoints.
    #[serde(rename = "service", default)]
    pub services: Vec<ServiceConfig>,
    /// OTLP trace export and span sampling (see [`crate::telemetry::TelemetryConfig`]).
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// What the xDS server publishes beyond the weights (Envoy's listener ports, the push interval).
    #[serde(default)]
    pub xds: lateral_xds::XdsConfig,
    /// Warm restart from a local file (see [`PersistConfig`]); with `[ha]` the weights are kept in etcd.
    #[serde(default)]
    pub persist: PersistConfig,
    /// Leader election through etcd (see [`HaConfig`]).
    #[serde(default)]
    pub ha: Option<HaConfig>,
}

/// Where the coordinator listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// The gRPC API (`WatchWeights`, `GetDecisions`); `None` when embedded without a server.
    #[serde(default = "default_grpc_listen")]
    pub grpc: Option<SocketAddr>,
    /// Prometheus `/metrics`, the dashboard (`/`) and `/api/state`; `None` (the default): not served.
    #[serde(default)]
    pub http: Option<SocketAddr>,
    /// xDS (ADS) for Envoy and gRPC xDS clients; `None` (the default): not served.
    #[serde(default)]
    pub xds: Option<SocketAddr>,
}

fn default_grpc_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 50100)))
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            grpc: default_grpc_listen(),
            http: None,
            xds: None,
        }
    }
}

/// TLS for QUIC: mutual TLS from a CA, or an insecure development mode.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the CA that signs agents' certificates.
    pub ca: Option<PathBuf>,
    /// PEM file with the coordinator's certificate (signed by the same CA).
    pub cert: Option<PathBuf>,
    /// PEM file with the coordinator's private key.
    pub key: Option<PathBuf>,
    /// The CA as PEM text instead of a file (e.g. from a secret in an environment variable).
    pub ca_pem: Option<String>,
    /// The certificate as PEM text instead of a file.
    pub cert_pem: Option<String>,
    /// The private key as PEM text instead of a file.
    pub key_pem: Option<String>,
    /// The name agents' certificates must carry (default "localhost").
    pub server_name: Option<String>,
    /// Self-signed certificates, no authentication. For development only; logged loudly.
    #[serde(default)]
    pub insecure_dev: bool,
}

/// One service: a set of endpoints balanced together.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The name clients ask for in `WatchWeights`.
    pub name: String,
    /// Endpoints listed one by one.
    #[serde(rename = "endpoint", default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Endpoints from DNS names, re-resolved periodically.
    #[serde(default)]
    pub dns: Vec<DnsSourceConfig>,
    /// Endpoints registered in etcd, listed and watched.
    #[serde(default)]
    pub etcd: Vec<EtcdSourceConfig>,
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Unique within the service; the agent's `Hello` must carry the same id.
    pub id: String,
    /// The gRPC address clients dial, as a URI (`http://host:port`).
    pub address: String,
    /// The agent's QUIC address (`ip:port`).
    pub agent: SocketAddr,
    /// Zone or locality.
    pub zone: Option<String>,
    /// Labels, e.g. `track = "canary"`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Relative static weight, used when there is no data (any non-negative number; normalised).
    pub static_weight: Option<f64>,
    /// Capacity in concurrent requests, if known from configuration.
    pub declared_capacity: Option<u32>,
}

/// A DNS name whose addresses become endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSourceConfig {
    /// The name to resolve (A and AAAA).
    pub name: String,
    /// Port of the gRPC backends.
    pub grpc_port: u16,
    /// Port of their agents.
    pub agent_port: u16,
    /// How often to re-resolve, in milliseconds (default 10 000, at least 500).
    #[serde(default = "default_refresh_ms")]
    pub refresh_ms: u64,
    /// Zone given to every endpoint of this name.
    pub zone: Option<String>,
    /// Labels given to every endpoint of this name.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A prefix in etcd under which agents register the service's endpoints (see `lateral_proto::etcd`): each key
/// `<prefix><id>` holds an endpoint record and lives as long as its agent's lease.
///
/// The coordinator lists the prefix, then watches it from the listed revision, so every registration and
/// departure reaches it within one round trip. When etcd is unreachable it keeps the last endpoints and
/// retries with a jittered backoff (0.5 s doubling to 10 s), listing again on reconnection. Plain HTTP/2 to
/// etcd (a loopback or private-network etcd); TLS to etcd is not supported yet.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSourceConfig {
    /// etcd client URLs, `http://host:port`, tried in turn.
    pub endpoints: Vec<String>,
    /// The key prefix (default `/lateral/services/<service name>/`; must end with `/`).
    pub prefix: Option<String>,
}

impl EtcdSourceConfig {
    /// The prefix for `service`: the configured one or the default.
    pub fn prefix_for(&self, service: &str) -> String {
        self.prefix
            .clone()
            .unwrap_or_else(|| lateral_proto::etcd::default_prefix(service))
    }
}

fn default_refresh_ms() -> u64 {
    10_000
}

impl CoordinatorConfig {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, Error> {
        let config: Self = toml::from_str(text).map_err(|e| Error::ConfigFile {
            path: source_name.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(source_name)?;
        Ok(config)
    }

    /// Checks what the types cannot: unique names, parseable addresses, finite weights, TLS completeness.
    pub fn validate(&self, source_name: &str) -> Result<(), Error> {
        let bad = |field: String, expected: String| Error::Config {
            source_name: source_name.to_string(),
            field,
            expected,
        };
        if self.services.is_empty() {
            return Err(bad(
                "service".into(),
                "at least one [[service]] table with a name and endpoints".into(),
            ));
        }
        self.telemetry
            .validate()
            .map_err(|(field, expected)| bad(field, expected))?;
        if let Some(ha) = &self.ha {
            ha.validate()
                .map_err(|(field, expected)| bad(field, expected))?;
        }
        crate::engine::Engine::new(self.engine.clone())
            .map_err(|e| bad(format!("engine.{}", e.field), e.expected.clone()))?;
        crate::xds::validate(self).map_err(|(field, expected)| bad(field, expected))?;
        let tls = &self.tls;
        let files = [
            tls.ca.is_some() || tls.ca_pem.is_some(),
            tls.cert.is_some() || tls.cert_pem.is_some(),
            tls.key.is_some() || tls.key_pem.is_some(),
        ];
        if !tls.insecure_dev && files.iter().any(|f| !f) {
            let missing: Vec<&str> = ["ca", "cert", "key"]
                .iter()
                .zip(files)
                .filter(|(_, present)| !present)
                .map(|(name, _)| *name)
                .collect();
            return Err(bad(
                format!("tls.{}", missing.join(", tls.")),
                "PEM files (or *_pem text) for ca, cert and key (mutual TLS), or `insecure_dev = true` for development"
                    .into(),
            ));
        }
        let mut names = BTreeSet::new();
        for (s, service) in self.services.iter().enumerate() {
            let at = format!("service[{s}]");
            if service.name.trim().is_empty() {
                return Err(bad(format!("{at}.name"), "a non-empty service name".into()));
            }
            if !names.insert(service.name.as_str()) {
                return Err(bad(
                    format!("{at}.name"),
                    format!("a unique service name; `{}` appears twice", service.name),
                ));
            }
            if service.endpoints.is_empty() && service.dns.is_empty() && service.etcd.is_empty() {
                return Err(bad(
                    format!("{at}.endpoint"),
                    "at least one [[service.endpoint]], [[service.dns]] or [[service.etcd]] source"
                        .into(),
                ));
            }
            let mut ids = BTreeSet::new();
            for (e, endpoint) in service.endpoints.iter().enumerate() {
                let at = format!("{at}.endpoint[{e}]");
                if endpoint.id.trim().is_empty() {
                    return Err(bad(format!("{at}.id"), "a non-empty endpoint id".into()));
                }
                if !ids.insert(endpoint.id.as_str()) {
                    return Err(bad(
                        format!("{at}.id"),
                        format!(
                            "an id unique within `{}`; `{}` appears twice",
                            service.name, endpoint.id
                        ),
                    ));
                }
                check_grpc_address(&endpoint.address)
                    .map_err(|expected| bad(format!("{at}.address"), expected))?;
                if let Some(w) = endpoint.static_weight
                    && !(w.is_finite() && w >= 0.0)
                {
                    return Err(bad(
                        format!("{at}.static_weight"),
                        format!("a finite number >= 0, found {w}"),
                    ));
                }
                if endpoint.declared_capacity == Some(0) {
                    return Err(bad(
                        format!("{at}.declared_capacity"),
                        "a capacity of at least 1 concurrent request".into(),
                    ));
                }
            }
            for (d, dns) in service.dns.iter().enumerate() {
                let at = format!("{at}.dns[{d}]");
                if dns.name.trim().is_empty() {
                    return Err(bad(format!("{at}.name"), "a DNS name to resolve".into()));
                }
                if dns.refresh_ms < 500 {
                    return Err(bad(
                        format!("{at}.refresh_ms"),
                        format!("at least 500 ms, found {}", dns.refresh_ms),
                    ));
                }
            }
            for (k, etcd) in service.etcd.iter().enumerate() {
                let at = format!("{at}.etcd[{k}]");
                if etcd.endpoints.is_empty() {
                    return Err(bad(
                        format!("{at}.endpoints"),
                        "at least one etcd URL, like \"http://127.0.0.1:2379\"".into(),
                    ));
                }
                for (u, url) in etcd.endpoints.iter().enumerate() {
                    check_etcd_url(url)
                        .map_err(|expected| bad(format!("{at}.endpoints[{u}]"), expected))?;
                }
                if let Some(prefix) = &etcd.prefix
                    && (!prefix.ends_with('/') || prefix.len() < 2)
                {
                    return Err(bad(
                        format!("{at}.prefix"),
                        format!(
                            "a key prefix ending with '/', like \"/lateral/services/{}/\", found {prefix:?}",
                            service.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Accepts `http://host:port` or `https://host:port` (a bare `host:port` is taken as http).
/// Whether `url` is an etcd client URL this coordinator can dial.
fn check_etcd_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Err(format!(
            "an http:// etcd URL (TLS to etcd is not supported yet; run etcd on loopback or a private network), found {url:?}"
        ));
    }
    check_grpc_address(url)
        .map_err(|_| format!("an etcd URL like \"http://127.0.0.1:2379\", found {url:?}"))
}

fn check_grpc_address(address: &str) -> Result<(), String> {
    let uri: http::Uri = lateral_proto::grpc_uri(address)
        .parse()
        .map_err(|e| format!("a URI like http://127.0.0.1:50051, found `{address}` ({e})"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(auth)) if auth.port_u16().is_some() => Ok(()),
        _ => Err(format!(
            "a URI with scheme http or https, a host and a port, like http://127.0.0.1:50051; found `{address}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [tls]
        insecure_dev = true

        [[service]]
        name = "greeter"

        [[service.endpoint]]
        id = "fast"
        address = "http://127.0.0.1:50051"
        agent = "127.0.0.1:7443"
        labels = { track = "stable" }
        static_weight = 4.0

        [[service.endpoint]]
        id = "slow"
        address = "127.0.0.1:50052"
        agent = "127.0.0.1:7444"
    "#;

    #[test]
    fn a_good_config_parses_with_defaults() {
        let c = CoordinatorConfig::parse(GOOD, "good.toml").unwrap();
        assert_eq!(c.services[0].endpoints.len(), 2);
        assert_eq!(c.listen.grpc, default_grpc_listen());
    }

    fn error_of(text: &str) -> String {
        CoordinatorConfig::parse(text, "bad.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn an_etcd_source_is_enough_and_is_checked() {
        let etcd_only = r#"
            [tls]
            insecure_dev = true
            [[service]]
            name = "greeter"
            [[service.etcd]]
            endpoints = ["http://127.0.0.1:2379", "127.0.0.1:22379"]
        "#;
        let c = CoordinatorConfig::parse(etcd_only, "etcd.toml").unwrap();
        assert_eq!(
            c.services[0].etcd[0].prefix_for("greeter"),
            "/lateral/services/greeter/"
        );
        let cases = [
            ("endpoints = []", "service[0].etcd[0].endpoints"),
            ("endpoints = [\"https://127.0.0.1:2379\"]", "TLS to etcd"),
            ("endpoints = [\"http://\"]", "etcd[0].endpoints[0]"),
            (
                "endpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"/no-slash\"",
                "etcd[0].prefix",
            ),
            (
                "endpoints = [\"http://127.0.0.1:2379\"]\ntimeout = 3",
                "unknown field",
            ),
        ];
        for (body, want) in cases {
            let text = etcd_only.replace(
                "endpoints = [\"http://127.0.0.1:2379\", \"127.0.0.1:22379\"]",
                body,
            );
            let e = error_of(&text);
            assert!(e.contains(want), "{body}: {e}");
        }
    }

    #[test]
    fn errors_name_the_file_the_field_and_what_was_expected() {
        let e = error_of(&GOOD.replace("127.0.0.1:7444", "not-an-address"));
        assert!(e.contains("bad.toml") && e.contains("agent"), "{e}");

        let e = error_of(&GOOD.replace("id = \"slow\"", "id = \"fast\""));
        assert!(
            e.contains("service[0].endpoint[1].id") && e.contains("unique"),
            "{e}"
        );

        let e = error_of(&GOOD.replace("static_weight = 4.0", "static_weight = -1.0"));
        assert!(e.contains("static_weight") && e.contains(">= 0"), "{e}");

        let e = error_of(&GOOD.replace("insecure_dev = true", "ca = \"ca.pem\""));
        assert!(e.contains("tls.cert") && e.contains("insecure_dev"), "{e}");

        let e = error_of(&GOOD.replace("labels =", "lables ="));
        assert!(e.contains("bad.toml") && e.contains("lables"), "{e}");

        let e = error_of(&GOOD.replace("http://127.0.0.1:50051", "ftp://x"));
        assert!(e.contains("address") && e.contains("http"), "{e}");

        let e = error_of("[tls]\ninsecure_dev = true\n");
        assert!(e.contains("service"), "{e}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = CoordinatorConfig::load(Path::new("/nonexistent/lateral.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/lateral.toml"), "{e}");
    }
}
