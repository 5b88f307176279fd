//! The engine stays pure: its manifest names no async runtime, network or clock crate. A new dependency has
//! to be added here on purpose (and justified), not slip in.

#[test]
fn the_engine_depends_on_serde_and_thiserror_and_rand_only_for_the_simulator() {
    let manifest: toml::Table =
        toml::from_str(include_str!("../Cargo.toml")).expect("Cargo.toml parses");
    let deps = manifest["dependencies"]
        .as_table()
        .expect("a [dependencies] table");
    let mut names: Vec<&str> = deps.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["rand", "serde", "thiserror"]);
    assert_eq!(
        deps["rand"].get("optional").and_then(toml::Value::as_bool),
        Some(true),
        "rand only behind the `sim` feature"
    );
}
