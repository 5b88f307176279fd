//! The coordinator's xDS settings: `listen.xds` and `[xds]` parse, and every mistake names its field.

use lateral_coordinator::CoordinatorConfig;

const BASE: &str = r#"
[tls]
insecure_dev = true

[[service]]
name = "greeter"

[[service.endpoint]]
id = "fast"
address = "http://127.0.0.1:50051"
agent = "127.0.0.1:7443"
"#;

fn parse(extra: &str) -> Result<CoordinatorConfig, String> {
    let text = extra.replace("[[base]]", BASE);
    CoordinatorConfig::parse(&text, "xds.toml").map_err(|e| e.to_string())
}

#[test]
fn xds_is_off_by_default_and_a_listener_needs_the_ads_address() {
    let c = parse("[[base]]").unwrap();
    assert_eq!(c.listen.xds, None);
    assert!(c.xds.listeners.is_empty());

    let e = parse("[[base]]\n[xds]\nlisteners = { greeter = 10000 }\n").unwrap_err();
    assert!(e.contains("listen.xds") && e.contains("xds.toml"), "{e}");
}

#[test]
fn xds_settings_are_checked_field_by_field() {
    let with = |xds: &str| {
        parse(&format!(
            "[listen]\nxds = \"127.0.0.1:18000\"\n[[base]]\n[xds]\n{xds}\n"
        ))
    };
    let cases = [
        ("listeners = { nope = 10000 }", "xds.listeners.nope"),
        ("listeners = { greeter = 0 }", "xds.listeners.greeter"),
        ("push_interval_ms = 1", "xds.push_interval_ms"),
        ("listener_host = \"not-an-ip\"", "listener_host"),
        ("pushes = 3", "unknown field"),
    ];
    for (body, field) in cases {
        let e = with(body).map(|_| ()).unwrap_err();
        assert!(e.contains(field), "{body}: {e}");
    }
    let ok = with("listeners = { greeter = 10000 }\npush_interval_ms = 250");
    if cfg!(feature = "xds") {
        let c = ok.unwrap();
        assert_eq!(c.xds.listeners["greeter"], 10000);
        assert_eq!(c.xds.push_interval_ms, 250);
    } else {
        let e = ok.unwrap_err();
        assert!(
            e.contains("listen.xds") && e.contains("`xds` feature"),
            "{e}"
        );
    }
}
