//! W3C trace context (`traceparent`, `tracestate`) on `http::HeaderMap`s, for gRPC metadata.
//!
//! The format is the W3C Trace Context recommendation (<https://www.w3.org/TR/trace-context/>):
//! `traceparent: 00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`. Parsing and formatting are
//! the process's global OpenTelemetry propagator (`opentelemetry_sdk`'s `TraceContextPropagator`, which
//! [`crate::otlp::init_tracing`] installs; an application that sets up OpenTelemetry itself installs its own);
//! this module only adapts header maps to it and ties it to the current `tracing` span, so that a client built
//! with feature `propagation` alone needs the OpenTelemetry API and not the SDK.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Reads `traceparent` / `tracestate` from headers.
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes `traceparent` / `tracestate` into headers (replacing earlier values).
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

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

/// The remote parent carried by `headers`, if any (an empty context otherwise).
pub fn extract(headers: &HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes `cx`'s span into `headers`; does nothing when `cx` has no valid span (so an incoming
/// `traceparent` is forwarded unchanged when this process does not trace).
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    if cx.span().span_context().is_valid() {
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(cx, &mut HeaderInjector(headers));
        });
    }
}

/// Writes `span`'s OpenTelemetry context into `headers` (see [`inject`]).
pub fn inject_span(span: &tracing::Span, headers: &mut HeaderMap) {
    inject(&span.context(), headers);
}

/// Writes the current `tracing` span's OpenTelemetry context into `headers` (see [`inject`]).
pub fn inject_current(headers: &mut HeaderMap) {
    inject_span(&tracing::Span::current(), headers);
}

/// Makes the remote parent in `headers` (if any) the parent of `span`. Call before the span is entered.
pub fn set_remote_parent(span: &tracing::Span, headers: &HeaderMap) {
    let cx = extract(headers);
    if cx.span().span_context().is_valid() {
        // Fails only if the span was already started with another parent; then it keeps that one.
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        let cx = extract(&headers);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        let mut out = HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(
            out["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let mut untouched = HeaderMap::new();
        inject(&Context::new(), &mut untouched);
        assert!(untouched.is_empty());
        assert!(!extract(&HeaderMap::new()).span().span_context().is_valid());
    }
}
