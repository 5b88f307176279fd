//! Shared parts of Lateral's demos and benchmark harness: simulated backends that run as real tonic servers with
//! the agent's measuring layer and QUIC reporter.
#![warn(missing_docs)]

pub mod backend;
pub mod bench;
pub mod echo_service;
pub mod ingest_agents;
