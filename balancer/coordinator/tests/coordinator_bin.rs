//! The `lateral-coordinator` binary refuses a bad configuration with an error that names the file, the field
//! and what was expected, and `--check` validates without starting anything.

use std::process::Command;

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lateral-coordinator-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const GOOD: &str = r#"
[tls]
insecure_dev = true

[[service]]
name = "greeter"

  [[service.endpoint]]
  id = "fast"
  address = "http://127.0.0.1:50051"
  agent = "127.0.0.1:7443"
"#;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lateral-coordinator"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_accepts_a_good_file() {
    let path = write("good.toml", GOOD);
    let (code, text) = run(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("ok (1 services, 1 static endpoints)"),
        "{text}"
    );
}

#[test]
fn a_bad_field_is_refused_with_file_field_and_expectation() {
    let path = write("bad.toml", &GOOD.replace("127.0.0.1:7443", "nowhere"));
    let (code, text) = run(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("bad.toml") && text.contains("agent"),
        "{text}"
    );

    let path = write(
        "weight.toml",
        &GOOD.replace(
            "agent = \"127.0.0.1:7443\"",
            "agent = \"127.0.0.1:7443\"\n  static_weight = -2",
        ),
    );
    let (code, text) = run(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("service[0].endpoint[0].static_weight") && text.contains(">= 0"),
        "{text}"
    );
}

#[test]
fn check_loads_the_tls_files_it_names() {
    let path = write(
        "tls.toml",
        &GOOD.replace("insecure_dev = true", "ca = \"/nonexistent/ca.pem\"\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\""),
    );
    let (code, text) = run(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("/nonexistent/ca.pem"), "{text}");
}

#[test]
fn a_missing_file_is_named() {
    let (code, text) = run(&["--config", "/nonexistent/lateral.toml", "--check"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("/nonexistent/lateral.toml"), "{text}");
}
