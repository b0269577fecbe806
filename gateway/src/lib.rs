//! The Switchboard gateway: what runs on each shard, and the `switchboard` command.
//!
//! The edge around each shard's core (`shard::core`): each shard accepts on its own
//! SO_REUSEPORT listener, speaks HTTP upgrade and WebSocket over its own io_uring ring
//! (no per-connection task, future or read buffer), authenticates, and hands the socket
//! to its user's home shard. Decoded frames go to the core, which owns every business
//! rule; its effects come back here as socket writes, mesh routes, storage reads and
//! group commits. No membership, dedupe, seq, permission or presence rule lives in
//! this crate.
//!
//! # Layout
//! - [`admin`]: health, readiness, Prometheus metrics and the drain command.
//! - [`cli`]: the `switchboard` subcommands (`serve`, `token`).
//! - [`config`]: configuration and every limit.
//! - [`server`]: starts storage, listeners and shards.
//! - [`service`]: a shard's event loop, connections, upgrade and WebSocket handling,
//!   and carrying out the core's effects (frames, deliveries, routes, reads, commits).
//! - [`commitlog`]: the shard's commit log (group commits written on its own ring) and
//!   the writes on their way to the store.
//! - [`revocation`]: revoked devices, persisted and broadcast to the shards.
//! - [`route`]: what travels on the mesh: core routes, and socket handoffs.
//! - [`conn`]: a connection's slab entry and ring tokens.
//! - [`reactor`]: the per-shard io_uring ring and socket syscalls (the only `unsafe`).
//! - [`tls`]: WSS with rustls: configuration, development certificate, socket writer.
//! - [`upgrade`]: HTTP upgrade parsing and responses.
//! - [`ws`]: WebSocket framing.
//! - [`deflate`]: permessage-deflate negotiation and the shard's codec.
//! - [`auth`]: JWT verification and minting.
//! - [`fuzzing`]: entry points for the fuzz targets in `fuzz/`.
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod commitlog;
pub mod config;
pub mod conn;
pub mod deflate;
pub mod fuzzing;
#[allow(unsafe_code)]
pub mod reactor;
pub mod revocation;
pub mod route;
pub mod server;
pub mod service;
pub mod tls;
pub mod upgrade;
pub mod ws;
