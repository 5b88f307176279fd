//! The operations material in `deploy/` against a running system: every metric the Grafana dashboard
//! (`deploy/grafana/lateral.json`) and the Prometheus alert rules (`deploy/prometheus/lateral-alerts.yml`)
//! query is one that a real coordinator exports on `/metrics` or a real client in `render_prometheus()`, so a
//! misspelt name or a renamed metric fails here. The label values the queries match on (`state`, `kind`) are
//! the ones the code renders, every rule has `for:`, a severity and both annotations, and, when `promtool` is
//! on PATH (Debian package `prometheus`, installed by `.ci/test`), `promtool check rules` accepts the file.
//!
//! Real time on loopback (like the other tests here): one coordinator with gRPC and HTTP, two backends with
//! their agents heartbeating over QUIC, and a `Balancer` client watching the coordinator with a
//! dynamic/static split (so the `lateral_client_group_*` families are rendered) making a few calls.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lateral_balancer::Balancer;
use lateral_coordinator::Coordinator;
use lateral_coordinator::engine::AlertKind;
use lateral_integration_tests::*;
use lateral_proto::demo::EchoRequest;
use lateral_proto::demo::echo_client::EchoClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const DASHBOARD: &str = "deploy/grafana/lateral.json";
const RULES: &str = "deploy/prometheus/lateral-alerts.yml";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests/ sits in the repository")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The body of `GET path` over HTTP/1.1 (`Connection: close`), asserting status 200; bounded by 5 s.
async fn get(addr: SocketAddr, path: &str) -> String {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no response within 5 s"));
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    }
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

/// The metric families of a Prometheus text exposition: name → type, from the `# TYPE` lines (a family is
/// declared even when it has no sample yet, e.g. `lateral_coordinator_source_up` without DNS or etcd
/// sources). Also checks that every sample belongs to a declared family.
fn families(text: &str) -> BTreeMap<String, String> {
    let mut families = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            families.insert(name.to_string(), kind.to_string());
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = &line[..line.find(['{', ' ']).expect("a sample line")];
        assert!(
            declared(name, &families),
            "sample {name} without a # TYPE line"
        );
    }
    families
}

/// Whether `name` is a declared family, or a histogram's `_bucket`/`_sum`/`_count` series (a summary's
/// `_sum`/`_count`).
fn declared(name: &str, families: &BTreeMap<String, String>) -> bool {
    if families.contains_key(name) {
        return true;
    }
    [
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"][..]),
        ("_count", &["histogram", "summary"][..]),
    ]
    .iter()
    .any(|(suffix, kinds)| {
        name.strip_suffix(suffix)
            .and_then(|base| families.get(base))
            .is_some_and(|kind| kinds.contains(&kind.as_str()))
    })
}

/// The values `v` of every matcher `label="v"` in `expr` (or label pair in an exposition).
fn label_values(expr: &str, label: &str) -> Vec<String> {
    let needle = format!("{label}=\"");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = expr[from..].find(&needle).map(|i| i + from) {
        from = i + needle.len();
        let before = expr[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let end = expr[from..].find('"').expect("a closing quote") + from;
        out.push(expr[from..end].to_string());
    }
    out
}

/// Every `lateral_...` metric identifier in a PromQL expression (letters of either case, so that a misspelt
/// capital is caught too).
fn metric_names(expr: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = expr[from..].find("lateral_").map(|i| i + from) {
        let end = expr[i..]
            .find(|c: char| !ident(c))
            .map_or(expr.len(), |e| e + i);
        if !expr[..i].chars().next_back().is_some_and(ident) {
            out.push(expr[i..end].to_string());
        }
        from = end;
    }
    out
}

/// The dashboard's PromQL: every `expr` of a target, and the `query`/`definition` of the template
/// variables (the strings, wherever they are in the JSON tree).
fn dashboard_queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match v {
                    serde_json::Value::String(s)
                        if ["expr", "query", "definition"].contains(&key.as_str()) =>
                    {
                        out.push(s.clone());
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// One alerting rule of the rules file, as far as this test reads it.
#[derive(Debug, Default)]
struct RuleEntry {
    alert: String,
    fields: BTreeMap<String, String>,
}

/// A reader of the rules file's shape (no YAML crate here): rules start at `- alert: Name`; a key's value is
/// on its line or, after `|`/`>` (with `-`/`+`), on the following more-indented lines. Keys are recorded
/// by their last path element (`expr`, `for`, `severity`, `summary`, `description`).
fn parse_rules(text: &str) -> Vec<RuleEntry> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut rules: Vec<RuleEntry> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim();
        i += 1;
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            rules.push(RuleEntry {
                alert: name.trim().to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(rule) = rules.last_mut() else {
            continue;
        };
        let Some((key, value)) = trimmed.trim_start_matches("- ").split_once(':') else {
            continue;
        };
        let value = value.trim();
        let value = if ["|", "|-", "|+", ">", ">-", ">+"].contains(&value) {
            let mut block = Vec::new();
            while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > indent(line))
            {
                block.push(lines[i].trim());
                i += 1;
            }
            block.join("\n")
        } else {
            value.trim_matches('"').to_string()
        };
        rule.fields.insert(key.to_string(), value);
    }
    rules
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Runs `promtool check rules` on the rules file (at most 60 s): its exit status and output.
fn promtool_check(promtool: &Path) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("lateral-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(promtool)
        .args(["check", "rules"])
        .arg(repo_root().join(RULES))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("start promtool");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for promtool") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = format!(
        "{}{}",
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    let _ = std::fs::remove_dir_all(&dir);
    match status {
        Some(status) => (status.success(), output),
        None => (
            false,
            format!("promtool did not finish within 60 s\n{output}"),
        ),
    }
}

#[test]
fn the_readers_find_names_and_rules() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.9, sum by (le) (rate(lateral_a_bucket{x=\"lateral_no\"}[5m]))) / xlateral_b + lateral_C"
        ),
        ["lateral_a_bucket", "lateral_no", "lateral_C"]
    );
    assert_eq!(
        label_values(
            "m{state=\"tripped\", xstate=\"no\"} or n{state=\"active\"}",
            "state"
        ),
        ["tripped", "active"]
    );
    let families: BTreeMap<String, String> = [("h", "histogram"), ("g", "gauge")]
        .map(|(n, k)| (n.to_string(), k.to_string()))
        .into();
    assert!(declared("h_bucket", &families) && declared("h_count", &families));
    assert!(!declared("g_count", &families) && !declared("x", &families));
    let rules = parse_rules(
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        # c\n        expr: |\n          up\n            == 0\n        for: 5m\n        labels:\n          severity: warning\n      - alert: B\n        expr: x > 1\n",
    );
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].fields["expr"], "up\n== 0");
    assert_eq!(rules[0].fields["for"], "5m");
    assert_eq!(rules[0].fields["severity"], "warning");
    assert_eq!(rules[1].fields["expr"], "x > 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alert_rules_query_only_exported_metrics() {
    // The material under test, read first: a syntax error fails before anything starts.
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let rules_text = read(RULES);
    let rules = parse_rules(&rules_text);

    // A coordinator (gRPC for the client, HTTP for /metrics) over two backends with agents.
    let pki = Pki::new("test-ca");
    let ([a, b], mut config) = fleet(&pki, [("a", 8, 3), ("b", 8, 6)]).await;
    config.listen.http = Some(any_port());
    let coordinator = Coordinator::start(config)
        .await
        .expect("start the coordinator");
    let grpc = coordinator.grpc_addr().expect("gRPC is listening");
    let http = coordinator.http_addr().expect("HTTP is listening");

    // A client watching it, half its requests on the coordinator's weights, half on static ones.
    let balancer = Balancer::builder("svc")
        .endpoints([("a", a.uri()), ("b", b.uri())])
        .static_weights([("a", 1.0), ("b", 1.0)])
        .coordinator(format!("http://{grpc}"))
        .dynamic_fraction(0.5)
        .build()
        .expect("build the balancer");
    let metrics = balancer.metrics();
    eventually(
        Duration::from_secs(15),
        "a weight snapshot at the client",
        move || async move { metrics.snapshot_version() > 0 },
    )
    .await;
    let client = EchoClient::new(balancer.clone());
    for _ in 0..20 {
        timeout(
            Duration::from_secs(5),
            client.clone().unary(EchoRequest::default()),
        )
        .await
        .expect("a call within 5 s")
        .expect("the call succeeds");
    }
    assert_eq!(metrics.requests(), 20);

    // The coordinator's /metrics once both endpoints are heard (latency quantiles need a fresh heartbeat).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let coordinator_text = loop {
        let text = get(http, "/metrics").await;
        let heard = ["a", "b"].iter().all(|id| {
            text.lines().any(|l| {
                l.starts_with("lateral_coordinator_endpoint_latency_seconds{")
                    && l.contains(&format!("endpoint=\"{id}\""))
            })
        });
        if heard {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both endpoints in /metrics within 15 s; last:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let client_text = metrics.render_prometheus();
    let coordinator_families = families(&coordinator_text);
    let client_families = families(&client_text);
    assert!(
        client_families.contains_key("lateral_client_group_latency_seconds"),
        "the split's families are rendered:\n{client_text}"
    );

    // Every metric either file queries, by where it is used.
    let mut queries: Vec<(String, String)> = Vec::new();
    let mut dashboard_exprs = Vec::new();
    dashboard_queries(&dashboard, &mut dashboard_exprs);
    assert!(
        dashboard_exprs.len() >= 30,
        "the dashboard's queries: {dashboard_exprs:?}"
    );
    queries.extend(
        dashboard_exprs
            .into_iter()
            .map(|q| (DASHBOARD.to_string(), q)),
    );
    assert!(rules.len() >= 8, "the rules: {rules:?}");
    for rule in &rules {
        let expr = rule
            .fields
            .get("expr")
            .unwrap_or_else(|| panic!("{}: no expr", rule.alert));
        queries.push((format!("{RULES} {}", rule.alert), expr.clone()));
    }
    let none = BTreeMap::new();
    let mut checked = BTreeSet::new();
    let mut missing = Vec::new();
    for (place, query) in &queries {
        for name in metric_names(query) {
            let (exporter, families) = if name.starts_with("lateral_coordinator_") {
                ("the coordinator's /metrics", &coordinator_families)
            } else if name.starts_with("lateral_client_") {
                ("the client's render_prometheus()", &client_families)
            } else {
                ("neither the coordinator nor the client", &none)
            };
            if !declared(&name, families) {
                missing.push(format!("{place}: {name} is not exported by {exporter}"));
            }
            checked.insert(name);
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    // The brief's coverage: both exporters' main families are on the dashboard or in the rules.
    for name in [
        "lateral_coordinator_endpoint_weight",
        "lateral_coordinator_endpoint_state",
        "lateral_coordinator_endpoint_latency_seconds",
        "lateral_coordinator_alerts_active",
        "lateral_coordinator_source_up",
        "lateral_coordinator_ingest_dropped_total",
        "lateral_client_weights_stale",
        "lateral_client_picks_total",
        "lateral_client_group_latency_seconds_bucket",
    ] {
        assert!(checked.contains(name), "{name} is queried nowhere");
    }

    // Label values the queries match on are ones the code renders.
    let states: BTreeSet<String> = label_values(&coordinator_text, "state")
        .into_iter()
        .collect();
    let kinds: BTreeSet<&str> = [
        AlertKind::Drift,
        AlertKind::Oscillation,
        AlertKind::CanaryBreaker,
        AlertKind::CanaryPromoted,
        AlertKind::AllUnhealthy,
    ]
    .iter()
    .map(|k| k.as_str())
    .collect();
    for (place, query) in &queries {
        for state in label_values(query, "state") {
            assert!(
                states.contains(&state),
                "{place}: state=\"{state}\" is not one of {states:?}"
            );
        }
        for kind in label_values(query, "kind") {
            assert!(
                kinds.contains(kind.as_str()),
                "{place}: kind=\"{kind}\" is not one of {kinds:?}"
            );
        }
    }
    assert!(states.contains("tripped"), "{states:?}");

    // The dashboard's template variables.
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("template variables");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(
        var("service")["definition"],
        "label_values(lateral_coordinator_endpoint_weight, service)"
    );

    // Every rule: a duration, a severity and both annotations.
    for rule in &rules {
        for key in ["for", "severity", "summary", "description"] {
            assert!(
                rule.fields.get(key).is_some_and(|v| !v.is_empty()),
                "{}: no {key}",
                rule.alert
            );
        }
    }
    match on_path("promtool") {
        Some(promtool) => {
            let (ok, output) = promtool_check(&promtool);
            assert!(ok, "promtool check rules {RULES} failed:\n{output}");
            println!("promtool check rules {RULES}: {}", output.trim());
        }
        None => println!("promtool not on PATH: `promtool check rules {RULES}` skipped"),
    }
    drop(balancer);
    drop(coordinator);
}
