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

/// The routing variants' scenarios: a `--quick` run with `lateral` writes their per-variant JSON fields.
#[test]
fn quick_variant_runs_write_routing_fields() {
    let dir = std::env::temp_dir().join(format!("lateral-bench-variants-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_lateral-bench"))
        .args(["--quick", "--scenario", "hashing", "--scenario", "zones"])
        .args(["--scenario", "split", "--policies", "lateral", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for table in ["**hashing**", "**zones**", "**split**"] {
        assert!(stdout.contains(table), "{table} in {stdout}");
    }
    let text = std::fs::read_to_string(&json).unwrap();
    let records: serde_json::Value = serde_json::from_str(&text).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 3, "{text}");
    let fraction = |v: &serde_json::Value| v.as_f64().is_some_and(|x| (0.0..=1.0).contains(&x));
    for r in records {
        assert_eq!(r["policy"], "lateral");
        // Every record has every field, null when the scenario does not exercise the variant.
        for field in ["share", "p99_ms", "hashing", "zones", "split"] {
            assert!(r.get(field).is_some(), "{field} in {r}");
        }
        match r["scenario"].as_str().unwrap() {
            "hashing" => {
                let h = &r["hashing"];
                assert!(fraction(&h["key_stability"]), "{h}");
                assert!(fraction(&h["key_affinity"]), "{h}");
                assert!(h["keys_seen"].as_u64().is_some_and(|n| n > 0), "{h}");
                let w = h["weight_share"].as_object().unwrap();
                assert_eq!(
                    w.keys().map(String::as_str).collect::<Vec<_>>(),
                    ["a", "b", "c"]
                );
                assert!(fraction(&h["share_error"]), "{h}");
                assert!(
                    h["table_moved_on_kill"]
                        .as_array()
                        .is_some_and(|v| !v.is_empty())
                );
                assert!(r["zones"].is_null() && r["split"].is_null(), "{r}");
            }
            "zones" => {
                let z = &r["zones"];
                assert_eq!(z["client_zone"], "a");
                assert!(fraction(&z["cross_zone_fraction"]), "{z}");
                assert!(
                    z["cross_zone_by_phase"]
                        .as_array()
                        .is_some_and(|v| v.len() == 3)
                );
                assert!(z["zone_transitions"].as_u64().is_some(), "{z}");
                assert!(fraction(&z["spill_time_fraction"]), "{z}");
                assert!(z["spill_changes"].is_array(), "{z}");
                assert!(r["hashing"].is_null() && r["split"].is_null(), "{r}");
            }
            "split" => {
                let s = &r["split"];
                let mut total = 0;
                for group in ["dynamic", "static"] {
                    let g = &s[group];
                    for f in ["requests", "errors"] {
                        assert!(g[f].as_u64().is_some(), "{group}.{f} in {s}");
                    }
                    for f in [
                        "error_rate",
                        "mean_ms",
                        "p50_ms_upper_bound",
                        "p99_ms_upper_bound",
                    ] {
                        assert!(g.get(f).is_some(), "{group}.{f} in {s}");
                    }
                    total += g["requests"].as_u64().unwrap();
                }
                assert!(s["dynamic"]["requests"].as_u64().unwrap() > 0, "{s}");
                assert!(total > 0, "{s}");
                assert!(r["hashing"].is_null() && r["zones"].is_null(), "{r}");
            }
            other => panic!("unexpected scenario {other}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
