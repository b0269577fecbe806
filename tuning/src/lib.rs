//! Capacity planning for Switchboard, and the schema of the load generator's reports it
//! reads.
//!
//! # Layout
//! - [`report`]: the typed figures of a `switchboard-bench` JSON report that planning
//!   uses (the bench writes them with these types; the planner reads them back).
//! - [`plan`]: sizes a fleet from measured reports and a target (`switchboard plan`).
//! - [`host`]: what on this host would stop N connections (`switchboard tune check`).
//!
//! Beside the crate in `tuning/`: a sysctl profile (`sysctl.d/`) and a systemd unit
//! (`switchboard.service`).
#![forbid(unsafe_code)]

pub mod host;
pub mod plan;
pub mod report;
