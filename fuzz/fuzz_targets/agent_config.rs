//! Feeds arbitrary command lines to the agent's configuration reader. The agent has no configuration file:
//! it is configured by flags (each also settable as a `LATERAL_AGENT_*` variable, read by the same value
//! parsers), so this is its parse-from-text and validation: clap's parse of `lateral_agent::config::Cli`
//! (every flag's value parser: addresses, URIs, ranges, labels) and then what `main` runs before starting,
//! `ReportArgs::validate` (TLS completeness, ids, the admin address, etcd membership and its record) and
//! `DedupArgs::validate` (window, Redis URL and options). Nothing may panic: a bad flag is an error.
//!
//! The input is the arguments after `lateral-agent`, separated by NUL bytes (not UTF-8 is allowed: arguments
//! are OS strings). The binary's global `--metrics-listen` / `--otlp-endpoint` flags (added in `main.rs`) are
//! not part of `Cli`.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run agent_config`
#![no_main]

use std::cell::RefCell;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use clap::{CommandFactory, FromArgMatches};
use lateral_agent::config::{Cli, Command};
use libfuzzer_sys::fuzz_target;

thread_local! {
    /// `Cli`'s clap command, built once and reused by every input (`try_get_matches_from_mut` is clap's way
    /// to parse with one command many times). `Cli::try_parse_from` builds it (and, with debug assertions,
    /// checks its definition) on every call, and a clone per input costs as much again — thousands of small
    /// allocations, each slow under AddressSanitizer: ~380 inputs/s with a clone per input.
    static COMMAND: RefCell<clap::Command> = RefCell::new({
        let mut command = Cli::command();
        command.build();
        command
    });
}

fuzz_target!(|data: &[u8]| {
    let args = std::iter::once(OsStr::new("lateral-agent"))
        .chain(data.split(|b| *b == 0).map(OsStr::from_bytes));
    // What `Cli::try_parse_from` does, on the command built once.
    let Ok(mut matches) = COMMAND.with_borrow_mut(|command| command.try_get_matches_from_mut(args)) else {
        return;
    };
    let Ok(cli) = Cli::from_arg_matches_mut(&mut matches) else {
        return;
    };
    match cli.command {
        Command::Proxy(args) => {
            let _ = args.report.validate(args.orca);
            let _ = args.dedup.validate();
        }
        Command::Poll(args) => {
            let _ = args.report.validate(false);
        }
        // Writes files; its flags are only parsed.
        Command::GenCerts(_) => {}
    }
});
