//! The `lateral-agent` command line: flags, `LATERAL_AGENT_*` environment overrides, and their validation.
//!
//! Every flag that takes a value can also be set through the environment variable named in `--help`
//! (a flag on the command line wins). [`ReportArgs::validate`] turns the flags into the typed settings the
//! binary runs with, or an [`Error::Config`] that names the flag at fault; [`DedupArgs::validate`] does the
//! same for proxy mode's request-id dedup (in memory, or shared through Redis).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use lateral_ops::tls::{TlsFiles, TlsMode};
use lateral_proto::heartbeat::capability;

use crate::Error;
use crate::dedup::{self, RedisDedupOptions, RedisUrl};
use crate::registration::Registration;

mod membership;
use crate::reporter::ReporterOptions;
pub use membership::MembershipArgs;

const AFTER_HELP: &str = "\
Examples:
  # 1. Make a development CA and certificates (ca.pem, agent.pem, agent-key.pem, coordinator.pem, ...)
  lateral-agent gen-certs --out ./certs

  # 2. Sidecar proxy in front of a gRPC backend on :50051; clients call :50052; coordinators dial :7443
  lateral-agent proxy --listen 127.0.0.1:50052 --upstream http://127.0.0.1:50051 \\
      --endpoint-id checkout-1 --quic-listen 0.0.0.0:7443 \\
      --ca certs/ca.pem --cert certs/agent.pem --key certs/agent-key.pem --orca

  # 2b. Several proxies in front of one backend: reject a retry that any of them already received
  lateral-agent proxy ... --dedup-window-ms 60000 --dedup-redis redis://10.0.0.5:6379/0

  # 2c. Register in etcd so coordinators with a [[service.etcd]] source find this endpoint by themselves
  lateral-agent proxy ... --etcd http://10.0.0.5:2379 --etcd-service checkout \\
      --advertise-address http://10.0.0.7:50052 --advertise-agent 10.0.0.7:7443 --zone eu-1a

  # 3. Poll a backend's JSON load endpoint instead (any language, no proxy hop)
  lateral-agent poll --url http://127.0.0.1:9090/load --endpoint-id search-2 --insecure-dev

  # Drain before a restart: SIGTERM, Ctrl-C, or with --admin-listen 127.0.0.1:7444:
  curl -X POST -d 'deploy v2' http://127.0.0.1:7444/drain

Every option can come from the environment: LATERAL_AGENT_ENDPOINT_ID, LATERAL_AGENT_QUIC_LISTEN,
LATERAL_AGENT_CA, ... (shown next to each option). Logging: LATERAL_AGENT_LOG (e.g. info, lateral_agent=debug).
Exit codes: 0 after a drain, 1 on a runtime failure, 2 on a bad flag or unusable TLS material.";

/// Measures one gRPC backend and streams heartbeats to Lateral coordinators over QUIC (mutual TLS).
#[derive(Debug, Parser)]
#[command(name = "lateral-agent", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The agent's modes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an h2c reverse proxy in front of a gRPC backend and measure everything that passes through it.
    #[command(after_help = AFTER_HELP)]
    Proxy(ProxyArgs),
    /// Poll a backend's JSON load endpoint (fields like current_load, average_latency_ms, error_rate,
    /// max_capacity, cpu_percent) and report it.
    #[command(after_help = AFTER_HELP)]
    Poll(PollArgs),
    /// Write a development CA and certificates for an agent and a coordinator into a directory.
    GenCerts(GenCertsArgs),
}

/// `lateral-agent proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Address the proxy listens on for gRPC (h2c) clients.
    #[arg(long, env = "LATERAL_AGENT_LISTEN", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The backend, as an h2c URI.
    #[arg(long, env = "LATERAL_AGENT_UPSTREAM", value_name = "URI", value_parser = parse_uri)]
    pub upstream: http::Uri,
    /// Put an ORCA `endpoint-load-metrics-bin` trailer on every response (for gRPC weighted_round_robin
    /// clients and Envoy).
    #[arg(long, env = "LATERAL_AGENT_ORCA", value_parser = clap::builder::BoolishValueParser::new())]
    pub orca: bool,
    /// Overload shedding, with --declared-capacity: answer UNAVAILABLE ("overloaded", safe to retry
    /// elsewhere) at once, without calling the backend, when its queue has stood past this many queued
    /// requests per slot for 100 ms, or reaches twice as many. A number from 0 to 100, or `off`.
    #[arg(long, env = "LATERAL_AGENT_SHED_QUEUE_ALLOWANCE", value_name = "N|off",
          default_value = "2", value_parser = parse_queue_allowance)]
    pub shed_queue_allowance: QueueAllowance,
    /// Reporting, TLS and drain options.
    #[command(flatten)]
    pub report: ReportArgs,
    /// Request-id dedup options.
    #[command(flatten)]
    pub dedup: DedupArgs,
}

/// Proxy mode's request-id dedup ([`crate::dedup`]): off unless `--dedup-window-ms` is given.
#[derive(Args)]
#[command(next_help_heading = "Request-id dedup")]
pub struct DedupArgs {
    /// Reject a request whose x-lateral-request-id was already received within this many milliseconds:
    /// answer ALREADY_EXISTS without calling the backend (Lateral's balancer stamps the id and keeps it
    /// when it retries). Off unless given. The window is kept in this process unless --dedup-redis is given.
    #[arg(long, env = "LATERAL_AGENT_DEDUP_WINDOW_MS", value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub dedup_window_ms: Option<u64>,
    /// In-memory dedup: remember at most this many ids (the oldest go first, so a flood shortens the
    /// window instead of growing memory).
    #[arg(long, env = "LATERAL_AGENT_DEDUP_MAX_ENTRIES", default_value_t = 100_000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000_000), conflicts_with = "dedup_redis")]
    pub dedup_max_entries: u32,
    /// Keep the dedup window in Redis (`redis://[user:password@]host[:port][/db]` or
    /// `redis+unix:///path/to/redis.sock`) instead of this process. Use it when several agents must share the
    /// window: a backend behind several proxies, or a service whose retries may land on another endpoint's
    /// agent. Every agent sharing the window uses the same Redis and --dedup-redis-prefix. The agent exits if
    /// Redis is unreachable at start-up; afterwards a check that fails or exceeds --dedup-redis-timeout-ms
    /// lets the request through and logs a warning.
    #[arg(
        long,
        env = "LATERAL_AGENT_DEDUP_REDIS",
        value_name = "URL",
        requires = "dedup_window_ms",
        hide_env_values = true
    )]
    pub dedup_redis: Option<String>,
    /// Bound on one Redis check, in milliseconds; a slower answer lets the request through.
    #[arg(long, env = "LATERAL_AGENT_DEDUP_REDIS_TIMEOUT_MS", default_value_t = 50, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=10_000), requires = "dedup_redis")]
    pub dedup_redis_timeout_ms: u64,
    /// Prefix of every Redis key (at most 256 bytes).
    #[arg(long, env = "LATERAL_AGENT_DEDUP_REDIS_PREFIX", default_value = dedup::DEFAULT_KEY_PREFIX,
          value_name = "PREFIX", requires = "dedup_redis")]
    pub dedup_redis_prefix: String,
}

/// By hand, so the Redis URL's credentials never reach a log.
impl std::fmt::Debug for DedupArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupArgs")
            .field("dedup_window_ms", &self.dedup_window_ms)
            .field("dedup_max_entries", &self.dedup_max_entries)
            .field(
                "dedup_redis",
                &self.dedup_redis.as_ref().map(|_| "<redacted>"),
            )
            .field("dedup_redis_timeout_ms", &self.dedup_redis_timeout_ms)
            .field("dedup_redis_prefix", &self.dedup_redis_prefix)
            .finish()
    }
}

/// Where proxy mode keeps its request-id dedup window.
#[derive(Debug, Clone)]
pub enum DedupSettings {
    /// In this process ([`dedup::InMemoryDedup`]).
    InMemory {
        /// How long an id is remembered.
        window: Duration,
        /// At most this many ids.
        max_entries: usize,
    },
    /// In Redis, shared with every agent using the same server and prefix ([`dedup::RedisDedup`]).
    Redis {
        /// The server.
        url: RedisUrl,
        /// Window, key prefix and timeouts.
        options: RedisDedupOptions,
    },
}

impl DedupArgs {
    /// The dedup settings, or `None` when dedup is off. Checks without connecting.
    pub fn validate(&self) -> Result<Option<DedupSettings>, Error> {
        let Some(window_ms) = self.dedup_window_ms else {
            // clap's `requires` refuses this already; kept for callers that build the struct themselves.
            if self.dedup_redis.is_some() {
                return Err(Error::Config {
                    field: "--dedup-window-ms".to_owned(),
                    expected: "a dedup window, since --dedup-redis is given".to_owned(),
                });
            }
            return Ok(None);
        };
        let window = Duration::from_millis(window_ms);
        let Some(url) = &self.dedup_redis else {
            if window.is_zero() {
                return Err(Error::Config {
                    field: "--dedup-window-ms".to_owned(),
                    expected: "a dedup window of at least 1 ms".to_owned(),
                });
            }
            return Ok(Some(DedupSettings::InMemory {
                window,
                max_entries: self.dedup_max_entries.max(1) as usize,
            }));
        };
        let options = RedisDedupOptions {
            key_prefix: self.dedup_redis_prefix.clone(),
            timeout: Duration::from_millis(self.dedup_redis_timeout_ms),
            ..RedisDedupOptions::new(window)
        };
        options.validate()?;
        Ok(Some(DedupSettings::Redis {
            url: RedisUrl::parse(url)?,
            options,
        }))
    }
}

/// `lateral-agent poll`.
#[derive(Debug, Args)]
pub struct PollArgs {
    /// The backend's JSON load endpoint (http://).
    #[arg(long, env = "LATERAL_AGENT_POLL_URL", value_name = "URL", value_parser = parse_uri)]
    pub url: http::Uri,
    /// Bound on one poll (connect, headers, body), in milliseconds.
    #[arg(long, env = "LATERAL_AGENT_POLL_TIMEOUT_MS", default_value_t = 400, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub poll_timeout_ms: u64,
    /// Reporting, TLS and drain options.
    #[command(flatten)]
    pub report: ReportArgs,
}

/// `lateral-agent gen-certs`.
#[derive(Debug, Args)]
pub struct GenCertsArgs {
    /// Directory to write ca.pem, agent.pem, agent-key.pem, coordinator.pem, coordinator-key.pem into
    /// (created if missing; existing files are overwritten).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Extra name (DNS or IP) on the agent certificate, besides localhost, 127.0.0.1 and ::1. Coordinators
    /// dial the agent with this name.
    #[arg(long, default_value = "lateral-agent", value_name = "NAME")]
    pub agent_name: String,
    /// Extra name on the coordinator certificate.
    #[arg(long, default_value = "lateral-coordinator", value_name = "NAME")]
    pub coordinator_name: String,
}

/// Options shared by the measuring modes: identity, QUIC reporting, TLS, drain.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The endpoint this agent measures, exactly as the coordinator's config names it.
    #[arg(long, env = "LATERAL_AGENT_ENDPOINT_ID", value_name = "ID")]
    pub endpoint_id: String,
    /// Identifies this agent process in its Hello (default: `HOSTNAME:PID`).
    #[arg(long, env = "LATERAL_AGENT_AGENT_ID", value_name = "ID")]
    pub agent_id: Option<String>,
    /// UDP address of the QUIC heartbeat server that coordinators dial.
    #[arg(
        long,
        env = "LATERAL_AGENT_QUIC_LISTEN",
        default_value = "127.0.0.1:7443",
        value_name = "ADDR"
    )]
    pub quic_listen: SocketAddr,
    /// CA certificate (PEM) that coordinators' certificates must chain to.
    #[arg(long, env = "LATERAL_AGENT_CA", value_name = "FILE", requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
    /// This agent's certificate (PEM), signed by the CA.
    #[arg(long, env = "LATERAL_AGENT_CERT", value_name = "FILE", requires_all = ["ca", "key"])]
    pub cert: Option<PathBuf>,
    /// This agent's private key (PEM).
    #[arg(long, env = "LATERAL_AGENT_KEY", value_name = "FILE", requires_all = ["ca", "cert"])]
    pub key: Option<PathBuf>,
    /// INSECURE: throwaway self-signed certificate, accept any coordinator. Development only; logs a loud
    /// warning.
    #[arg(long, env = "LATERAL_AGENT_INSECURE_DEV", conflicts_with_all = ["ca", "cert", "key"],
          value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_dev: bool,
    /// Heartbeat interval in milliseconds (one measurement per interval, sent to every coordinator).
    #[arg(long, env = "LATERAL_AGENT_INTERVAL_MS", default_value_t = 500, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub interval_ms: u64,
    /// Declared capacity of the backend, in concurrent requests (reported to coordinators).
    #[arg(long, env = "LATERAL_AGENT_DECLARED_CAPACITY", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub declared_capacity: Option<u32>,
    /// How long a drain waits between Goodbye and exit, in milliseconds.
    #[arg(long, env = "LATERAL_AGENT_DRAIN_GRACE_MS", default_value_t = 5_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub drain_grace_ms: u64,
    /// Serve the admin endpoint (POST /drain, GET /healthz) on this loopback TCP address.
    #[arg(long, env = "LATERAL_AGENT_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// At most this many coordinators subscribed at once.
    #[arg(long, env = "LATERAL_AGENT_MAX_SUBSCRIBERS", default_value_t = 16, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_subscribers: u32,
    /// FAULT INJECTION (tests only): state a wrong clock in heartbeats, `OFFSET_S,RATE` (e.g. `3600,1` jumped
    /// an hour ahead, `0,2` twice as fast). Coordinators must ignore the sender's clock; this proves it.
    #[arg(long, value_name = "OFFSET_S,RATE", hide_short_help = true)]
    pub fault_sender_clock: Option<crate::reporter::sender_clock::SenderClock>,
    /// Membership in etcd.
    #[command(flatten)]
    pub membership: MembershipArgs,
}

/// The validated settings of a measuring mode.
#[derive(Debug, Clone)]
pub struct ReportSettings {
    /// TLS for the QUIC server.
    pub tls: TlsMode,
    /// Where the QUIC server listens.
    pub quic_listen: SocketAddr,
    /// Reporter options (identity, interval, capabilities, limits).
    pub reporter: ReporterOptions,
    /// Declared capacity, if any.
    pub declared_capacity: Option<u32>,
    /// Drain grace period.
    pub drain_grace: Duration,
    /// Admin endpoint address, if any (loopback).
    pub admin_listen: Option<SocketAddr>,
    /// Registration in etcd, if `--etcd` was given.
    pub registration: Option<Registration>,
}

impl ReportArgs {
    /// Checks what clap cannot and builds the settings. `orca` adds the ORCA capability.
    pub fn validate(&self, orca: bool) -> Result<ReportSettings, Error> {
        let bad = |field: &str, expected: String| Error::Config {
            field: field.to_owned(),
            expected,
        };
        let tls = match (&self.ca, &self.cert, &self.key, self.insecure_dev) {
            (Some(ca), Some(cert), Some(key), false) => TlsMode::Mutual(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None, None, true) => TlsMode::InsecureDev,
            _ => {
                return Err(bad(
                    "--ca/--cert/--key",
                    "all three of --ca, --cert and --key (mutual TLS), or --insecure-dev for a development \
                     setup; `lateral-agent gen-certs --out DIR` writes usable files"
                        .to_owned(),
                ));
            }
        };
        if self.endpoint_id.trim().is_empty() || self.endpoint_id.len() > 256 {
            return Err(bad(
                "--endpoint-id",
                "a non-empty id of at most 256 bytes".to_owned(),
            ));
        }
        if let Some(admin) = self.admin_listen
            && !admin.ip().is_loopback()
        {
            return Err(bad(
                "--admin-listen",
                format!(
                    "a loopback address such as 127.0.0.1:7444 (the admin endpoint has no auth), found {admin}"
                ),
            ));
        }
        let agent_id = match &self.agent_id {
            Some(id) if id.trim().is_empty() || id.len() > 256 => {
                return Err(bad(
                    "--agent-id",
                    "a non-empty id of at most 256 bytes".to_owned(),
                ));
            }
            Some(id) => id.clone(),
            None => format!("{}:{}", hostname(), std::process::id()),
        };
        let mut reporter = ReporterOptions::new(agent_id, self.endpoint_id.clone());
        reporter.interval = Duration::from_millis(self.interval_ms);
        reporter.max_subscribers = self.max_subscribers as usize;
        if let Some(clock) = self.fault_sender_clock {
            tracing::warn!(%clock, "FAULT INJECTION: heartbeats state a wrong sender clock");
            reporter.sender_clock = clock;
        }
        if orca {
            reporter
                .capabilities
                .push(capability::ORCA_TRAILERS.to_owned());
        }
        if self.declared_capacity.is_some() {
            reporter
                .capabilities
                .push(capability::DECLARED_CAPACITY.to_owned());
        }
        let registration = self.membership.validate(
            &self.endpoint_id,
            self.quic_listen,
            self.declared_capacity,
        )?;
        Ok(ReportSettings {
            tls,
            quic_listen: self.quic_listen,
            reporter,
            declared_capacity: self.declared_capacity,
            drain_grace: Duration::from_millis(self.drain_grace_ms),
            admin_listen: self.admin_listen,
            registration,
        })
    }
}

/// `--shed-queue-allowance`: queued requests per declared slot, or shedding off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueAllowance(pub Option<f64>);

fn parse_queue_allowance(s: &str) -> Result<QueueAllowance, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(QueueAllowance(None));
    }
    match s.parse::<f64>() {
        Ok(n) if (0.0..=100.0).contains(&n) => Ok(QueueAllowance(Some(n))),
        _ => Err(format!(
            "expected queued requests per slot, from 0 to 100 (e.g. 2 or 0.5), or `off`; found {s:?}"
        )),
    }
}

fn parse_uri(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("not a URI: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(
            "expected an http:// URI with a host and port, e.g. http://127.0.0.1:50051".to_owned(),
        );
    }
    Ok(uri)
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "agent".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lateral-agent").chain(args.iter().copied()))
    }

    fn proxy_allowance(extra: &[&str]) -> Result<QueueAllowance, clap::Error> {
        let mut args = vec![
            "proxy",
            "--listen",
            "127.0.0.1:50052",
            "--upstream",
            "http://127.0.0.1:50051",
            "--endpoint-id",
            "e1",
            "--insecure-dev",
        ];
        args.extend_from_slice(extra);
        match parse(&args)?.command {
            Command::Proxy(proxy) => Ok(proxy.shed_queue_allowance),
            other => panic!("not proxy mode: {other:?}"),
        }
    }

    #[test]
    fn the_shed_queue_allowance_defaults_to_two_and_can_be_off() {
        assert_eq!(proxy_allowance(&[]).unwrap(), QueueAllowance(Some(2.0)));
        assert_eq!(
            proxy_allowance(&["--shed-queue-allowance", "0.5"]).unwrap(),
            QueueAllowance(Some(0.5))
        );
        assert_eq!(
            proxy_allowance(&["--shed-queue-allowance", "OFF"]).unwrap(),
            QueueAllowance(None)
        );
        for bad in ["-1", "NaN", "inf", "101", "lots"] {
            let flag = format!("--shed-queue-allowance={bad}");
            let error = proxy_allowance(&[&flag]).unwrap_err();
            assert!(
                error.to_string().contains("from 0 to 100"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn poll_with_insecure_dev_validates() {
        let cli = parse(&[
            "poll",
            "--url",
            "http://127.0.0.1:9090/load",
            "--endpoint-id",
            "e1",
            "--insecure-dev",
        ])
        .unwrap();
        let Command::Poll(poll) = cli.command else {
            panic!("not poll")
        };
        let settings = poll.report.validate(false).unwrap();
        assert!(matches!(settings.tls, TlsMode::InsecureDev));
        assert_eq!(settings.reporter.interval, Duration::from_millis(500));
        assert_eq!(settings.quic_listen, "127.0.0.1:7443".parse().unwrap());
    }

    #[test]
    fn missing_tls_names_the_flags() {
        let cli = parse(&[
            "poll",
            "--url",
            "http://127.0.0.1:9090/load",
            "--endpoint-id",
            "e1",
        ])
        .unwrap();
        let Command::Poll(poll) = cli.command else {
            panic!("not poll")
        };
        let err = poll.report.validate(false).unwrap_err();
        assert!(err.to_string().contains("--ca"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_by_clap() {
        let base = [
            "proxy",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "http://127.0.0.1:2",
            "--endpoint-id",
            "e",
        ];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v).map(|_| ()).unwrap_err().to_string()
        };
        assert!(with(&["--interval-ms", "0"]).contains("--interval-ms"));
        assert!(with(&["--quic-listen", "nope"]).contains("--quic-listen"));
        assert!(
            with(&["--insecure-dev", "--ca", "x", "--cert", "y", "--key", "z"])
                .contains("--insecure-dev")
        );
        assert!(with(&["--ca", "x"]).contains("--cert"));
        let err = parse(&[
            "proxy",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "ftp://x",
            "--endpoint-id",
            "e",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--upstream"), "{err}");
    }

    fn proxy_with(extra: &[&str]) -> Result<ProxyArgs, clap::Error> {
        let mut args = vec![
            "proxy",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "http://127.0.0.1:2",
            "--endpoint-id",
            "e",
            "--insecure-dev",
        ];
        args.extend_from_slice(extra);
        match parse(&args)?.command {
            Command::Proxy(proxy) => Ok(proxy),
            other => panic!("not proxy: {other:?}"),
        }
    }

    #[test]
    fn dedup_is_off_in_memory_or_in_redis() {
        assert!(proxy_with(&[]).unwrap().dedup.validate().unwrap().is_none());

        let in_memory = proxy_with(&["--dedup-window-ms", "1500"]).unwrap();
        match in_memory.dedup.validate().unwrap() {
            Some(DedupSettings::InMemory {
                window,
                max_entries,
            }) => {
                assert_eq!(window, Duration::from_millis(1500));
                assert_eq!(max_entries, 100_000);
            }
            other => panic!("{other:?}"),
        }

        let redis = proxy_with(&[
            "--dedup-window-ms",
            "60000",
            "--dedup-redis",
            "redis://:hunter2@10.0.0.5:6379/2",
            "--dedup-redis-timeout-ms",
            "20",
            "--dedup-redis-prefix",
            "svc:",
        ])
        .unwrap();
        assert!(!format!("{redis:?}").contains("hunter2"));
        let settings = redis.dedup.validate().unwrap();
        assert!(!format!("{settings:?}").contains("hunter2"));
        match settings {
            Some(DedupSettings::Redis { url, options }) => {
                assert_eq!(url.redacted(), "redis://***@10.0.0.5:6379/2");
                assert_eq!(options.window, Duration::from_secs(60));
                assert_eq!(options.timeout, Duration::from_millis(20));
                assert_eq!(options.key_prefix, "svc:");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dedup_flags_that_make_no_sense_are_refused() {
        let err = |extra: &[&str]| proxy_with(extra).unwrap_err().to_string();
        assert!(err(&["--dedup-redis", "redis://h:1"]).contains("--dedup-window-ms"));
        assert!(err(&["--dedup-window-ms", "0"]).contains("--dedup-window-ms"));
        assert!(
            err(&[
                "--dedup-window-ms",
                "1000",
                "--dedup-redis",
                "redis://h:1",
                "--dedup-max-entries",
                "5"
            ])
            .contains("--dedup-max-entries")
        );
        assert!(
            err(&["--dedup-window-ms", "1000", "--dedup-redis-timeout-ms", "9"])
                .contains("--dedup-redis")
        );

        let bad_url = proxy_with(&[
            "--dedup-window-ms",
            "1000",
            "--dedup-redis",
            "http://user:hunter2@h:1",
        ])
        .unwrap();
        let msg = bad_url.dedup.validate().unwrap_err().to_string();
        assert!(
            msg.contains("--dedup-redis") && msg.contains("redis://"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn help_says_when_to_share_the_window() {
        let mut cmd = Cli::command();
        let proxy = cmd.find_subcommand_mut("proxy").unwrap();
        let help = proxy.render_long_help().to_string();
        assert!(help.contains("--dedup-redis <URL>"), "{help}");
        assert!(help.contains("several agents must share"), "{help}");
    }

    #[test]
    fn admin_must_be_loopback() {
        let cli = parse(&[
            "poll",
            "--url",
            "http://127.0.0.1:9/x",
            "--endpoint-id",
            "e",
            "--insecure-dev",
            "--admin-listen",
            "0.0.0.0:7444",
        ])
        .unwrap();
        let Command::Poll(poll) = cli.command else {
            panic!("not poll")
        };
        assert!(
            poll.report
                .validate(false)
                .unwrap_err()
                .to_string()
                .contains("--admin-listen")
        );
    }
}
