//! The thread-per-core runtime Switchboard runs on.
//!
//! One glommio executor per shard, pinned to its core; nothing is shared between shards
//! except immutable config and the SPSC channels of the mesh. Every user and every
//! conversation has exactly one home shard (`home(x) = hash(x) mod N`, a fixed seeded
//! hash), which owns its state; other shards reach it only by message.
//!
//! # Layout
//! - [`ids`]: id newtypes, `home()`, DM ids and the time-ordered message id generator.
//! - [`runtime`]: starts N pinned executors and hands each its [`runtime::ShardCtx`].
//! - [`mesh`]: the N×(N−1) SPSC channels, batched per loop turn.
//! - [`core`]: the I/O-free shard core: every shard-local table and business rule,
//!   driven by events and answering with effects.
#![forbid(unsafe_code)]

pub mod core;
pub mod ids;
pub mod mesh;
pub mod runtime;
