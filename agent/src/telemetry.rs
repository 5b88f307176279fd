//! Traces for the agent: OTLP/gRPC export and W3C trace context through the proxy.
//!
//! [`init_tracing`] installs the process's `tracing` subscriber: logs on stderr (filtered by
//! `LATERAL_AGENT_LOG`) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`, or `--otlp-endpoint`)
//! is set, a `tracing-opentelemetry` layer exporting `info` spans through a bounded batch processor on tokio
//! with the `opentelemetry-otlp` tonic exporter. The standard variables apply: `OTEL_SERVICE_NAME` (default
//! `lateral-agent`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_BSP_*`, `OTEL_SDK_DISABLED`.
//! Export never blocks a request: a full queue drops spans; a dead collector costs a logged warning.
//!
//! [`extract`] / [`inject`] carry `traceparent` / `tracestate` (<https://www.w3.org/TR/trace-context/>) in
//! HTTP/2 headers; the proxy makes the caller's span the parent of its own and forwards its own span id.
//! (The same few lines exist in `lateral-balancer`'s telemetry module: the agent does not depend on it.)

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::Error;

/// Keeps the trace pipeline alive; dropping it flushes what is queued.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "OTLP exporter shutdown");
        }
    }
}

/// The OTLP endpoint: `explicit`, else the standard variables; `None`: no export.
pub fn resolved_endpoint(explicit: Option<&str>) -> Option<String> {
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    explicit
        .map(str::to_string)
        .filter(|v| !v.trim().is_empty())
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// An OTLP/gRPC tracer provider with a bounded batch processor on tokio, if an endpoint is configured.
/// Must run inside a tokio runtime.
pub fn tracer_provider(
    service_name: &str,
    endpoint: Option<&str>,
) -> Result<Option<SdkTracerProvider>, Error> {
    use opentelemetry_otlp::WithExportConfig as _;
    let Some(endpoint) = resolved_endpoint(endpoint) else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| Error::Transport(format!("OTLP exporter for {endpoint}: {e}")))?;
    // Queue bound, batch size and delay come from OTEL_BSP_* (defaults: 2048 spans, 512, 5 s).
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| service_name.to_string());
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(name)
                .build(),
        )
        .build();
    Ok(Some(provider))
}

/// Installs logs (stderr, `LATERAL_AGENT_LOG`, default `info`; colours only on a terminal) and, when an OTLP
/// endpoint is configured, span export. Call once inside a tokio runtime.
pub fn init_tracing(otlp_endpoint: Option<&str>) -> Result<Telemetry, Error> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LATERAL_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_filter(filter);
    // A broken exporter configuration must not stop the agent from measuring: log and go on without it.
    let (provider, problem) = match tracer_provider("lateral-agent", otlp_endpoint) {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("lateral-agent"))
            .with_filter(span_filter())
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| Error::Transport(format!("a tracing subscriber is already installed: {e}")))?;
    if let Some(e) = problem {
        tracing::warn!(error = %e, "OTLP trace export disabled");
    }
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }
    Ok(Telemetry { provider })
}

/// Spans exported: `info` and above, never the transports' own (they would trace the exporter itself).
pub fn span_filter() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::LevelFilter;
    let mut targets = tracing_subscriber::filter::Targets::new().with_default(LevelFilter::INFO);
    for quiet in [
        "h2",
        "hyper",
        "hyper_util",
        "tonic",
        "tower",
        "quinn",
        "opentelemetry",
        "opentelemetry_sdk",
        "opentelemetry_otlp",
    ] {
        targets = targets.with_target(quiet, LevelFilter::OFF);
    }
    targets
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The remote parent in `traceparent` / `tracestate`, or an empty context.
pub fn extract(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes the caller's span (from `headers`) the parent of `span`, before it is entered.
pub fn set_remote_parent(span: &tracing::Span, headers: &HeaderMap) {
    let cx = extract(headers);
    if cx.span().span_context().is_valid() {
        // Fails only if the span already has a parent; it keeps that one.
        let _ = span.set_parent(cx);
    }
}

/// Writes `span`'s context into `headers`; leaves them unchanged when `span` is not traced (so an incoming
/// `traceparent` is forwarded as it came).
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}
