//! The coordinator's HTTP endpoint with real agents: `/metrics` is valid Prometheus text with the expected
//! series after heartbeats, `/api/state` is JSON with history, and the dashboard and its assets are served.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use lateral_coordinator::Coordinator;
use lateral_integration_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` over HTTP/1.1 with `Connection: close`: (status, content-type, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("response within 5 s")
        .expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or("")
        .to_string();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, content_type, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// A tiny parser of the Prometheus text format: checks HELP/TYPE precede every family's samples, label
/// syntax and escapes, and float values; returns the samples.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect("HELP name and text");
            assert!(helped.insert(name.to_string()), "HELP twice for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name and kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type {kind}"
            );
            assert!(helped.contains(name), "TYPE before HELP for {name}");
            assert!(
                typed.insert(name.into(), kind.into()).is_none(),
                "TYPE twice for {name}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line}");
        let name_end = line.find(['{', ' ']).expect("name then labels or value");
        let name = &line[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name}"
        );
        assert!(typed.contains_key(name), "sample {name} without TYPE");
        if typed[name] == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter {name} should end in _total"
            );
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let mut end = None;
            loop {
                let Some((i, c)) = chars.next() else {
                    panic!("unterminated labels: {line}")
                };
                if c == '}' {
                    end = Some(i);
                    break;
                }
                if c == ',' {
                    continue;
                }
                let mut key = String::from(c);
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert_eq!(
                    chars.next().map(|x| x.1),
                    Some('"'),
                    "label value quoted: {line}"
                );
                let mut value = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|x| x.1) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => panic!("bad escape {other:?} in {line}"),
                        },
                        '"' => break,
                        '\n' => panic!("raw newline in label"),
                        c => value.push(c),
                    }
                }
                labels.insert(key, value);
                let _ = end;
            }
            rest = &body[end.expect("closing brace") + 1..];
        }
        let value = rest.trim();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value `{v}` in {line}")),
        };
        samples.push((name.to_string(), labels, value));
    }
    samples
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|(n, l, _)| {
        n == name
            && labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
    })
}

#[test]
fn the_parser_handles_escapes() {
    let s = parse_prometheus(
        "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"q\\\"\\\\\\n\",e=\"\"} 3\n",
    );
    assert_eq!(s[0].1["k"], "q\"\\\n");
    assert_eq!(s[0].2, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_dashboard_after_heartbeats() {
    let pki = Pki::new("test-ca");
    let ([fast, slow], mut config) =
        fleet(&pki, [("fast", 8, 5), ("slow \"quoted\"", 8, 20)]).await;
    config.listen.http = Some(any_port());
    let coordinator = Coordinator::start(config).await.unwrap();
    let http = coordinator.http_addr().expect("HTTP is listening");
    let _load_fast = steady_load(fast.uri(), 100);
    let _load_slow = steady_load(slow.uri(), 50);

    let slow_id = "slow \"quoted\"";
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let samples = loop {
        let (status, content_type, body) = get(http, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let samples = parse_prometheus(&body);
        let ready = ["fast", slow_id].iter().all(|id| {
            find(
                &samples,
                "lateral_coordinator_endpoint_heartbeats_total",
                &[("endpoint", id)],
            )
            .is_some_and(|s| s.2 >= 10.0)
                && find(
                    &samples,
                    "lateral_coordinator_endpoint_latency_seconds",
                    &[("endpoint", id), ("quantile", "0.99")],
                )
                .is_some_and(|s| s.2 > 0.0)
        });
        if ready {
            break samples;
        }
        last = body;
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for heartbeats in /metrics; last:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = last;

    // Weights are shares summing to 1; exactly one state per endpoint is hot.
    let weights: f64 = samples
        .iter()
        .filter(|s| s.0 == "lateral_coordinator_endpoint_weight")
        .map(|s| s.2)
        .sum();
    assert!((weights - 1.0).abs() < 1e-6, "weights sum to {weights}");
    for id in ["fast", slow_id] {
        let hot: Vec<_> = samples
            .iter()
            .filter(|s| s.0 == "lateral_coordinator_endpoint_state" && s.1["endpoint"] == id)
            .filter(|s| s.2 == 1.0)
            .collect();
        assert_eq!(hot.len(), 1, "one hot state for {id}: {hot:?}");
        for name in [
            "lateral_coordinator_endpoint_weight",
            "lateral_coordinator_endpoint_in_flight",
            "lateral_coordinator_endpoint_error_ratio",
            "lateral_coordinator_endpoint_heartbeat_age_seconds",
            "lateral_coordinator_endpoint_requests_per_second",
            "lateral_coordinator_endpoint_latency_mean_seconds",
        ] {
            assert!(
                find(&samples, name, &[("service", "svc"), ("endpoint", id)]).is_some(),
                "{name} for {id}"
            );
        }
        let age = find(
            &samples,
            "lateral_coordinator_endpoint_heartbeat_age_seconds",
            &[("endpoint", id)],
        )
        .unwrap();
        assert!(age.2 < 2.0, "fresh heartbeat: {age:?}");
    }
    assert!(
        find(
            &samples,
            "lateral_coordinator_decisions_total",
            &[("service", "svc"), ("rule", "added")]
        )
        .is_some_and(|s| s.2 >= 2.0),
        "decisions by rule"
    );
    assert!(
        find(&samples, "lateral_coordinator_ingest_heartbeats_total", &[])
            .is_some_and(|s| s.2 >= 20.0)
    );
    assert!(
        find(
            &samples,
            "lateral_coordinator_ingest_connections_total",
            &[]
        )
        .is_some_and(|s| s.2 >= 2.0)
    );
    assert!(
        find(
            &samples,
            "lateral_coordinator_weights_version",
            &[("service", "svc")]
        )
        .is_some()
    );

    // The dashboard's feed: JSON with both endpoints, history points and decisions.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let state = loop {
        let (status, content_type, body) = get(http, "/api/state").await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "application/json");
        let state: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let ready = state["services"][0]["endpoints"]
            .as_array()
            .is_some_and(|es| {
                es.len() == 2
                    && es
                        .iter()
                        .all(|e| e["history"].as_array().is_some_and(|h| !h.is_empty()))
            });
        if ready {
            break state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no history in /api/state: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(state["decisions"].as_array().is_some_and(|d| !d.is_empty()));
    assert!(
        state["ingest"]["heartbeats"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );

    let (status, content_type, html) = get(http, "/").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"));
    assert!(
        html.contains("/dashboard.js") && !html.contains("http://") && !html.contains("https://"),
        "self-contained"
    );
    let (status, _, js) = get(http, "/dashboard.js").await;
    assert_eq!(status, 200);
    assert!(js.contains("/api/state") && !js.contains("https://"));
    assert_eq!(get(http, "/dashboard.css").await.0, 200);
    assert_eq!(get(http, "/nope").await.0, 404);
}
