//! Feeds arbitrary text to the coordinator's configuration reader: TOML parsing and the validation of every
//! field (`lateral_coordinator::CoordinatorConfig::parse`, what `CoordinatorConfig::load` runs on
//! the file's text), including the engine's rules (`Engine::new`) and the telemetry settings. Nothing may
//! panic: a bad file is an error that names the field.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run coordinator_config`
#![no_main]

use lateral_coordinator::CoordinatorConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `load` reads the file with `read_to_string`: text that is not UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = CoordinatorConfig::parse(text, "fuzz.toml");
});
