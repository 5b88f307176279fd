//! Pay only for what you use: without its default `embedded` feature the client compiles no QUIC stack, no
//! certificate generator, no CLI or TOML parser and no OpenTelemetry SDK or subscriber — what a client that
//! talks to a sidecar coordinator links. Checked on the resolved graph (`cargo tree`), so a dependency that
//! slips in through another crate is caught too.

use std::process::Command;

fn normal_dependencies(features: &[&str]) -> Vec<String> {
    let mut args = vec![
        "tree",
        "--offline",
        "-p",
        "lateral-balancer",
        "-e",
        "normal",
        "--prefix",
        "none",
        "--no-default-features",
    ];
    if !features.is_empty() {
        args.push("--features");
        args.extend(features);
    }
    let output = Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

const HEAVY: [&str; 9] = [
    "quinn",
    "rustls",
    "rcgen",
    "clap",
    "toml",
    "opentelemetry_sdk",
    "opentelemetry-otlp",
    "tracing-subscriber",
    "lateral-coordinator",
];

#[test]
fn a_sidecar_only_client_links_no_quic_tls_cli_toml_or_otel_sdk() {
    let names = normal_dependencies(&[]);
    let heavy: Vec<&&str> = HEAVY
        .iter()
        .filter(|h| names.iter().any(|n| n == *h))
        .collect();
    assert!(heavy.is_empty(), "found {heavy:?} in {names:?}");
    assert!(
        names.iter().any(|n| n == "tonic"),
        "the graph was read: {names:?}"
    );
}

#[test]
fn the_otel_feature_brings_the_opentelemetry_api_but_not_the_sdk() {
    let names = normal_dependencies(&["otel"]);
    assert!(names.iter().any(|n| n == "opentelemetry"), "{names:?}");
    for heavy in ["opentelemetry_sdk", "opentelemetry-otlp", "quinn", "rcgen"] {
        assert!(
            !names.iter().any(|n| n == heavy),
            "found {heavy} in {names:?}"
        );
    }
}
