//! The benchmark harness behind `lateral-bench`: scenarios as data ([`scenario`]), the shared open-loop
//! arrival schedule ([`schedule`]), real backends following a timeline ([`cluster`]), the policies compared
//! ([`policy`]), one run of a policy through a scenario ([`run`]), and the outputs ([`report`], [`plot`]);
//! the fault matrix ([`faults`]).

pub mod cluster;
pub mod envoy;
pub mod faults;
pub mod ideal;
pub mod plot;
pub mod policy;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;
