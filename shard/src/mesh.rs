//! The shard mesh: one lock-free SPSC channel per ordered pair of shards.
//!
//! Items are batches (`Vec<M>`): glommio's shared channel has no batch API, and one
//! item per message costs several times more than batches of 16 (10–12 M against ~82 M
//! 64-byte messages a second between two executors; `cargo bench -p switchboard-bench
//! --bench micro -- cross_shard_hop` measures it on this code). A shard pushes into per-peer outboxes while it handles events and calls
//! [`Mesh::flush`] once per turn; FIFO per channel is what keeps a conversation's order
//! from its home shard to every recipient shard.
//!
//! Bounded with back-pressure: each channel holds `capacity` batches; batches a full
//! channel cannot take yet wait on the sending shard, counted per peer
//! ([`Mesh::backlog`]). Past `backlog_limit` batches towards any peer the mesh reports
//! [`Mesh::backlogged`], and the shard stops reading its clients' sockets (the only
//! source of new work) until the peer catches up and `on_space` is called: a slow shard
//! slows its producers' intake instead of growing their memory. Batches from peers are
//! always received, so two shards backlogged towards each other still drain.
//!
//! Ownership: [`MeshEnds`] is `Send` and built on the main thread; [`Mesh`] is the
//! connected, `!Send` form that lives on its shard.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};

use crate::ids::ShardId;

/// One shard's unconnected ends of the mesh.
pub struct MeshEnds<M: Send + 'static> {
    /// This shard.
    pub me: ShardId,
    /// `to[k]`: the sender towards shard k. Invariant: `to[me]` is `None`.
    to: Vec<Option<SharedSender<Vec<M>>>>,
    /// `from[k]`: the receiver from shard k. Invariant: `from[me]` is `None`.
    from: Vec<Option<SharedReceiver<Vec<M>>>>,
}

/// Builds the N×(N−1) channels; element k of the result goes to shard k.
/// `capacity` is in batches per channel.
pub fn build<M: Send + 'static>(shards: usize, capacity: usize) -> Vec<MeshEnds<M>> {
    let mut ends: Vec<MeshEnds<M>> = (0..shards)
        .map(|k| MeshEnds {
            me: ShardId(k as u16),
            to: (0..shards).map(|_| None).collect(),
            from: (0..shards).map(|_| None).collect(),
        })
        .collect();
    for a in 0..shards {
        for b in 0..shards {
            if a != b {
                let (tx, rx) = shared_channel::new_bounded(capacity);
                ends[a].to[b] = Some(tx);
                ends[b].from[a] = Some(rx);
            }
        }
    }
    ends
}

/// The connected mesh on one shard.
pub struct Mesh<M> {
    /// This shard.
    me: ShardId,
    /// Messages pushed this turn, per destination. Invariant: `outbox.len() == N`.
    outbox: RefCell<Vec<Vec<M>>>,
    /// Hand-off to each peer's sender task (which awaits channel space, keeping FIFO).
    senders: Vec<Option<LocalSender<Vec<M>>>>,
    /// Batches handed to each peer's sender task and not yet in the channel.
    backlog: Rc<Vec<Cell<usize>>>,
    /// Backlog (batches towards one peer) past which the mesh is backlogged.
    backlog_limit: usize,
}

impl<M: Send + 'static> Mesh<M> {
    /// Connects this shard's ends. Spawns, on the current executor, one task per peer
    /// that forwards batches into the channel and one per peer that receives batches
    /// and calls `on_batch(from, batch)`. Each task connects its own end: glommio's
    /// `connect()` waits for the peer's end, so connecting them one after another on
    /// every shard would deadlock; batches pushed meanwhile wait in the local channel.
    /// `on_space` is called when a backlogged peer has taken enough to fall back to
    /// half of `backlog_limit`.
    pub fn connect(
        ends: MeshEnds<M>,
        backlog_limit: usize,
        on_batch: impl Fn(ShardId, Vec<M>) + 'static,
        on_space: impl Fn() + 'static,
    ) -> Rc<Mesh<M>> {
        let on_batch = Rc::new(on_batch);
        let on_space = Rc::new(on_space);
        let n = ends.to.len();
        let backlog: Rc<Vec<Cell<usize>>> = Rc::new((0..n).map(|_| Cell::new(0)).collect());
        let mut senders = Vec::with_capacity(n);
        for (k, tx) in ends.to.into_iter().enumerate() {
            senders.push(tx.map(|tx| {
                // Holds at most the backlog: the shard stops producing past the limit.
                let (ltx, lrx) = local_channel::new_unbounded::<Vec<M>>();
                let (backlog, on_space) = (backlog.clone(), on_space.clone());
                glommio::spawn_local(async move {
                    let tx = tx.connect().await;
                    while let Some(batch) = lrx.recv().await {
                        if tx.send(batch).await.is_err() {
                            break; // peer gone: the host is shutting down
                        }
                        let left = backlog[k].get().saturating_sub(1);
                        backlog[k].set(left);
                        if left == backlog_limit / 2 {
                            on_space();
                        }
                    }
                })
                .detach();
                ltx
            }));
        }
        for (k, rx) in ends.from.into_iter().enumerate() {
            if let Some(rx) = rx {
                let on_batch = on_batch.clone();
                glommio::spawn_local(async move {
                    let rx = rx.connect().await;
                    while let Some(batch) = rx.recv().await {
                        on_batch(ShardId(k as u16), batch);
                    }
                })
                .detach();
            }
        }
        let outbox = RefCell::new((0..n).map(|_| Vec::new()).collect());
        Rc::new(Mesh { me: ends.me, outbox, senders, backlog, backlog_limit: backlog_limit.max(2) })
    }

    /// This shard.
    pub fn me(&self) -> ShardId {
        self.me
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.senders.len()
    }

    /// Queues `msg` for shard `to` (not this shard); sent at the next [`Mesh::flush`].
    pub fn push(&self, to: ShardId, msg: M) {
        debug_assert_ne!(to, self.me, "local work is not routed through the mesh");
        self.outbox.borrow_mut()[to.index()].push(msg);
    }

    /// Sends every non-empty outbox as one batch.
    pub fn flush(&self) {
        let mut outbox = self.outbox.borrow_mut();
        for (k, out) in outbox.iter_mut().enumerate() {
            if out.is_empty() {
                continue;
            }
            if let Some(Some(tx)) = self.senders.get(k) {
                // A local channel only refuses after its receiver is gone, which happens
                // only while the executor is shutting down.
                if tx.try_send(std::mem::take(out)).is_ok() {
                    self.backlog[k].set(self.backlog[k].get() + 1);
                }
            }
        }
    }

    /// Batches towards shard `to` waiting for room in its channel.
    pub fn backlog(&self, to: ShardId) -> usize {
        self.backlog.get(to.index()).map_or(0, Cell::get)
    }

    /// Some peer's backlog passed the limit: stop taking new work from clients.
    pub fn backlogged(&self) -> bool {
        self.backlog.iter().any(|b| b.get() > self.backlog_limit)
    }
}
