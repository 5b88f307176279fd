//! Smoke test of `lateral-bench`: a `--quick` run of one scenario with three policies writes well-formed JSON
//! with every documented field. No performance assertion.

use std::process::Command;

#[test]
fn quick_run_writes_well_formed_json() {
    let dir = std::env::temp_dir().join(format!("lateral-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_lateral-bench"))
        .args(["--quick", "--scenario", "spike", "--policies"])
        .arg("round_robin,p2c_peak_ewma,lateral")
        .arg("--json")
        .arg(&json)
        .arg("--plots")
        .arg(dir.join("plots"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("| policy | requests |"), "{stdout}");

    let text = std::fs::read_to_string(&json).unwrap();
    let records: serde_json::Value = serde_json::from_str(&text).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 3, "{text}");
    for (r, policy) in records
        .iter()
        .zip(["round_robin", "p2c_peak_ewma", "lateral"])
    {
        assert_eq!(r["scenario"], "spike");
        assert_eq!(r["policy"], policy);
        let requests = r["requests"].as_u64().unwrap();
        assert!(requests > 0);
        assert_eq!(
            r["ok"].as_u64().unwrap() + r["errors"].as_u64().unwrap(),
            requests
        );
        for q in ["p50_ms", "p90_ms", "p99_ms", "p999_ms"] {
            assert!(r[q].as_f64().is_some_and(|v| v >= 0.0), "{q} in {r}");
        }
        let share = r["share"].as_object().unwrap();
        assert_eq!(
            share.keys().map(String::as_str).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        let sum: f64 = share.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-6 || sum == 0.0, "{share:?}");
        let convergence = &r["convergence_s"];
        if policy == "lateral" {
            assert!(convergence.is_null() || convergence.as_f64().is_some());
        } else {
            assert!(convergence.is_null(), "{r}");
        }
    }
    for policy in ["round_robin", "p2c_peak_ewma", "lateral"] {
        assert!(
            dir.join("plots")
                .join(format!("spike__{policy}.png"))
                .exists()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_and_scenarios_fail_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_lateral-bench"))
        .args(["--scenario", "no-such-scenario"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-scenario") && err.contains("steady-4to1"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_lateral-bench"))
        .args(["--quick", "--scenario", "spike", "--policies", "bogus"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown policy `bogus`"), "{err}");
}
