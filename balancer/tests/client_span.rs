//! The per-call span: at debug level, and with `grpc.status` whether the status came in the trailers (a
//! normal unary answer) or in the headers (a trailers-only error).

mod client_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use client_support::*;
use lateral_balancer::Balancer;
use lateral_proto::demo::EchoRequest;
use lateral_proto::demo::echo_client::EchoClient;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// The fields of every `lateral.client` span, in creation order.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<(Id, SpanFields)>>>);

/// One span's fields, as text.
type SpanFields = BTreeMap<String, String>;

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() != "lateral.client" {
            return;
        }
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push((id.clone(), fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some((_, fields)) = spans.iter_mut().find(|(i, _)| i == id) {
            values.record(&mut Fields(fields));
        }
    }
}

impl Spans {
    fn all(&self) -> Vec<BTreeMap<String, String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, f)| f.clone())
            .collect()
    }
}

fn request(fail_with: i32) -> EchoRequest {
    EchoRequest {
        message: "hi".into(),
        count: 0,
        fail_with,
    }
}

#[tokio::test]
async fn the_call_span_records_grpc_status_from_trailers_and_from_headers() {
    let spans = Spans::default();
    let subscriber =
        tracing_subscriber::registry().with(spans.clone().with_filter(LevelFilter::DEBUG));
    let _default = tracing::subscriber::set_default(subscriber);

    let addr = serve(Backend::new("a")).await;
    let balancer = Balancer::builder("echo")
        .endpoints([("a", uri(addr))])
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer);

    // OK: the status is in the trailers, read as the client consumes the body.
    client.unary(request(0)).await.unwrap();
    // NOT_FOUND: a trailers-only answer, the status in the headers.
    let status = client.unary(request(5)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    let all = spans.all();
    assert_eq!(all.len(), 2, "one span per call: {all:?}");
    for (fields, code) in all.iter().zip(["0", "5"]) {
        assert_eq!(
            fields.get("grpc.status").map(String::as_str),
            Some(code),
            "{fields:?}"
        );
        assert_eq!(fields.get("endpoint").map(String::as_str), Some("a"));
        assert_eq!(
            fields.get("rpc.method").map(String::as_str),
            Some("/lateral.demo.v1.Echo/Unary")
        );
    }
}

#[tokio::test]
async fn the_call_span_is_debug_level_and_off_at_info() {
    let spans = Spans::default();
    let subscriber =
        tracing_subscriber::registry().with(spans.clone().with_filter(LevelFilter::INFO));
    let _default = tracing::subscriber::set_default(subscriber);

    let addr = serve(Backend::new("a")).await;
    let balancer = Balancer::builder("echo")
        .endpoints([("a", uri(addr))])
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer);
    client.unary(request(0)).await.unwrap();
    assert!(spans.all().is_empty(), "{:?}", spans.all());
}
