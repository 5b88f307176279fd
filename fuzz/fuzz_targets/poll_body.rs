//! Feeds arbitrary bytes to the agent's poller as a backend's JSON load endpoint answers: the body parser the
//! poller uses (`lateral_agent::poll::parse_body`), then the normalisation of what it accepts into a
//! measurement (`normalise`), alone, against itself as the previous poll (the cumulative `completed`
//! counter) and against a counter that went down (a restart), over several windows. Nothing may panic.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run poll_body`
#![no_main]

use std::time::Duration;

use lateral_agent::poll::{LoadReport, normalise, parse_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(report) = parse_body(data) else {
        return;
    };
    let restarted = LoadReport {
        completed: Some(f64::MAX),
        ..LoadReport::default()
    };
    for window in [
        Duration::ZERO,
        Duration::from_millis(500),
        Duration::from_secs(86_400 * 365),
    ] {
        let _ = normalise(&report, None, window);
        let _ = normalise(&report, Some(&report), window);
        let _ = normalise(&report, Some(&restarted), window);
    }
});
