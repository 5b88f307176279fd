//! OTLP trace export and the process's `tracing` subscriber (feature `otlp`).
//!
//! - [`init_tracing`] installs the process-wide `tracing` subscriber: human (or JSON) logs on stderr and, when
//!   an OTLP endpoint is configured, a [`tracing_opentelemetry`] layer whose spans go to an OTLP collector over
//!   gRPC (the `opentelemetry-otlp` tonic exporter) through a batch span processor running on tokio.
//!   Configuration follows the OpenTelemetry standard variables — `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`, `OTEL_SDK_DISABLED` — and a
//!   `[telemetry]` table ([`TelemetryConfig`]) whose fields win over the variables.
//! - Export never blocks a request: finished spans go into a bounded queue (`max_queue_size`, default 2048) with
//!   `try_send`; when the queue is full the span is dropped and counted, and a dead collector costs one
//!   logged warning per failed export batch, nothing more.
//! - W3C `traceparent` / `tracestate` on `http::HeaderMap`s is [`crate::propagation`]; [`init_tracing`] installs
//!   its propagator.
//!
//! What this module does not own: which spans exist. The coordinator's driver, the client and the agent create
//! their own spans with `tracing`; this module only decides where they go.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use serde::Deserialize;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::Error;

/// How often a heartbeat becomes a span by default (one in this many, per coordinator).
pub const DEFAULT_HEARTBEAT_SPAN_EVERY: u32 = 100;

/// The `[telemetry]` table. Every field is optional; unset fields fall back to the standard
/// `OTEL_*` environment variables, then to the SDK defaults.
///
/// ```toml
/// [telemetry]
/// otlp_endpoint = "http://127.0.0.1:4317"   # else OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT; neither: no export
/// service_name = "lateral-coordinator"       # else OTEL_SERVICE_NAME, else the binary's name
/// schedule_delay_ms = 5000                   # batch export interval (else OTEL_BSP_SCHEDULE_DELAY)
/// max_queue_size = 2048                      # spans waiting for export; beyond it they are dropped
/// export_timeout_ms = 10000                  # one export call
/// heartbeat_span_every = 100                 # one received heartbeat in N becomes a span (0: none)
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported resource.
    pub service_name: Option<String>,
    /// Batch export interval in milliseconds.
    pub schedule_delay_ms: Option<u64>,
    /// Bound of the export queue, in spans.
    pub max_queue_size: Option<usize>,
    /// Timeout of one export call, in milliseconds.
    pub export_timeout_ms: Option<u64>,
    /// One received heartbeat in this many becomes a span (default [`DEFAULT_HEARTBEAT_SPAN_EVERY`]; 0: none).
    pub heartbeat_span_every: Option<u32>,
}

impl TelemetryConfig {
    /// The OTLP endpoint: the configured one, else the standard variables; `None` when export is off
    /// (nothing configured, or `OTEL_SDK_DISABLED=true`).
    pub fn resolved_endpoint(&self) -> Option<String> {
        if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return None;
        }
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        self.otlp_endpoint
            .clone()
            .filter(|v| !v.trim().is_empty())
            .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
    }

    /// Checks what the types cannot: `Err((field, expected))` names the offending `telemetry.*` field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(endpoint) = &self.otlp_endpoint {
            let ok = endpoint
                .parse::<http::Uri>()
                .is_ok_and(|u| u.scheme().is_some() && u.authority().is_some());
            if !ok {
                return Err((
                    "telemetry.otlp_endpoint".into(),
                    format!("a URI like http://127.0.0.1:4317, found `{endpoint}`"),
                ));
            }
        }
        if self.max_queue_size == Some(0) {
            return Err(("telemetry.max_queue_size".into(), "at least 1 span".into()));
        }
        Ok(())
    }
}

/// Keeps the trace pipeline alive; dropping it (or [`Telemetry::shutdown`]) flushes what is queued.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is queued now (bounded by the export timeout).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            tracing::warn!(error = %e, "could not flush spans to the OTLP collector");
        }
    }

    /// Flushes and stops the exporter.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "OTLP exporter shutdown");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds an OTLP/gRPC tracer provider if an endpoint is configured. Must run inside a tokio runtime (the
/// batch processor and the tonic channel run on it).
pub fn tracer_provider(
    default_service_name: &str,
    config: &TelemetryConfig,
) -> Result<Option<SdkTracerProvider>, Error> {
    let Some(endpoint) = config.resolved_endpoint() else {
        return Ok(None);
    };
    let timeout = Duration::from_millis(config.export_timeout_ms.unwrap_or(10_000));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(timeout)
        .build()
        .map_err(|e| Error::Exporter {
            endpoint: endpoint.clone(),
            detail: e.to_string(),
        })?;
    let mut batch = opentelemetry_sdk::trace::BatchConfigBuilder::default();
    if let Some(ms) = config.schedule_delay_ms {
        batch = batch.with_scheduled_delay(Duration::from_millis(ms.max(1)));
    }
    if let Some(n) = config.max_queue_size {
        batch = batch
            .with_max_queue_size(n.max(1))
            .with_max_export_batch_size(n.clamp(1, 512));
    }
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
        .with_batch_config(batch.build())
        .build();
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read by the default resource detectors; the
    // configured name wins, and the binary's name is used when neither is set.
    let service_name = config
        .service_name
        .clone()
        .or_else(|| {
            std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| default_service_name.to_string());
    let resource = Resource::builder().with_service_name(service_name).build();
    // The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default: parent-based always-on).
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build();
    Ok(Some(provider))
}

/// Installs the global `tracing` subscriber: logs on stderr filtered by `log_filter_var` (default `info`), as
/// JSON lines with `json`, plus OTLP export of `info`-and-above spans when configured (see the module docs).
/// An exporter that cannot be built (a bad endpoint) is logged as a warning and export stays off.
/// Also sets the global OpenTelemetry tracer provider and the W3C propagator. Call once, inside a tokio
/// runtime; a second call leaves the first subscriber in place and returns an error.
pub fn init_tracing(
    default_service_name: &str,
    config: &TelemetryConfig,
    log_filter_var: &str,
    json: bool,
) -> Result<Telemetry, Error> {
    let filter = tracing_subscriber::EnvFilter::try_from_env(log_filter_var)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    // A broken exporter configuration is never a reason not to run: logs go on without export.
    let (provider, problem) = match tracer_provider(default_service_name, config) {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("lateral"))
            .with_filter(span_filter())
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| Error::SubscriberInstalled(e.to_string()))?;
    if let Some(e) = problem {
        tracing::warn!(error = %e, "OTLP trace export disabled");
    }
    // The W3C propagator is installed whether or not spans are exported, so that `crate::propagation`
    // reads and writes `traceparent` the same way in every process.
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
        tracing::info!(
            endpoint = config.resolved_endpoint().as_deref().unwrap_or(""),
            "exporting spans over OTLP/gRPC"
        );
    }
    Ok(Telemetry { provider })
}

/// Which spans go to the collector: Lateral's and the application's at `info` and above (the client's
/// per-call `lateral.client` span, at debug, included), never the
/// transport's own (h2, hyper, tonic, tower, quinn: their spans would trace the exporter itself).
pub fn span_filter() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::LevelFilter;
    tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::INFO)
        // The client's per-call span is at debug (an info-level log subscriber must not pay for one span per
        // call); exporting traces is the opt-in that turns it on.
        .with_target("lateral_balancer", LevelFilter::DEBUG)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("tonic", LevelFilter::OFF)
        .with_target("tower", LevelFilter::OFF)
        .with_target("quinn", LevelFilter::OFF)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("opentelemetry_sdk", LevelFilter::OFF)
        .with_target("opentelemetry_otlp", LevelFilter::OFF)
}
