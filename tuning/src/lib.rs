//! Capacity planning for Switchboard, and the schema of the load generator's reports it
//! reads.
//!
//! # Layout
//! - [`report`]: the typed figures of a `switchboard-bench` JSON report that planning
//!   uses (the bench writes them with these types; the planner reads them back).
//! - [`plan`]: sizes a fleet from measured reports and a target (`switchboard plan`).
//!
//! Host checks (`check-host.sh`) live beside this crate in `tuning/`.
#![forbid(unsafe_code)]

pub mod plan;
pub mod report;
