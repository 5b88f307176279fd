//! What the xDS server needs to know beyond the snapshots: where Envoy's listeners go and how often to push.
//!
//! In the coordinator's TOML this is `[listen] xds = "127.0.0.1:18000"` (the ADS address) and an optional
//! `[xds]` table:
//!
//! ```toml
//! [xds]
//! push_interval_ms = 1000          # at most one push per this interval (default 1000)
//! listener_host = "0.0.0.0"        # the address Envoy's listeners bind (default 0.0.0.0)
//! listeners = { greeter = 10000 }  # per service: the port Envoy listens on for it
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// The xDS server's settings (the `[xds]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsConfig {
    /// At most one push of new resources per this many milliseconds; changes in between are coalesced
    /// and the latest is pushed when the interval ends.
    #[serde(default = "default_push_interval_ms")]
    pub push_interval_ms: u64,
    /// The address Envoy's listeners bind.
    #[serde(default = "default_listener_host")]
    pub listener_host: IpAddr,
    /// Per service name, the port of the listener Envoy opens for it. Services without one still get their
    /// route, cluster and endpoints (and an API listener for gRPC clients).
    #[serde(default)]
    pub listeners: BTreeMap<String, u16>,
}

fn default_push_interval_ms() -> u64 {
    1000
}

fn default_listener_host() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

impl Default for XdsConfig {
    fn default() -> Self {
        Self {
            push_interval_ms: default_push_interval_ms(),
            listener_host: default_listener_host(),
            listeners: BTreeMap::new(),
        }
    }
}

/// The shortest push interval accepted: below it Envoy would spend its time applying updates.
pub const MIN_PUSH_INTERVAL: Duration = Duration::from_millis(10);

impl XdsConfig {
    /// The push interval as a duration.
    pub fn push_interval(&self) -> Duration {
        Duration::from_millis(self.push_interval_ms)
    }

    /// Checks the values against the configured service names; errors name the field (`xds.…`).
    pub fn validate<'a>(&self, services: impl IntoIterator<Item = &'a str>) -> Result<(), Error> {
        if self.push_interval() < MIN_PUSH_INTERVAL {
            return Err(Error::Config {
                field: "xds.push_interval_ms".into(),
                expected: format!(
                    "at least {} ms, found {}",
                    MIN_PUSH_INTERVAL.as_millis(),
                    self.push_interval_ms
                ),
            });
        }
        let known: Vec<&str> = services.into_iter().collect();
        let mut ports = BTreeMap::new();
        for (service, port) in &self.listeners {
            let field = format!("xds.listeners.{service}");
            if !known.contains(&service.as_str()) {
                return Err(Error::Config {
                    field,
                    expected: format!(
                        "the name of a configured [[service]] (one of: {})",
                        known.join(", ")
                    ),
                });
            }
            if *port == 0 {
                return Err(Error::Config {
                    field,
                    expected: "a port from 1 to 65535 for Envoy's listener".into(),
                });
            }
            if let Some(other) = ports.insert(*port, service) {
                return Err(Error::Config {
                    field,
                    expected: format!("a port of its own; {port} is also `xds.listeners.{other}`"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(config: &XdsConfig) -> String {
        config
            .validate(["greeter", "echo"])
            .map(|()| String::new())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid_and_errors_name_the_field() {
        assert_eq!(error_of(&XdsConfig::default()), "");
        let mut c = XdsConfig::default();
        c.listeners.insert("greeter".into(), 10000);
        c.listeners.insert("echo".into(), 10001);
        assert_eq!(error_of(&c), "");

        c.listeners.insert("nope".into(), 10002);
        let e = error_of(&c);
        assert!(
            e.contains("xds.listeners.nope") && e.contains("greeter"),
            "{e}"
        );

        let mut c = XdsConfig::default();
        c.listeners.insert("greeter".into(), 0);
        assert!(error_of(&c).contains("xds.listeners.greeter"));

        let mut c = XdsConfig::default();
        c.listeners.insert("echo".into(), 10000);
        c.listeners.insert("greeter".into(), 10000);
        let e = error_of(&c);
        assert!(
            e.contains("xds.listeners.greeter") && e.contains("xds.listeners.echo"),
            "{e}"
        );

        let c = XdsConfig {
            push_interval_ms: 1,
            ..XdsConfig::default()
        };
        assert!(error_of(&c).contains("xds.push_interval_ms"));
    }
}
