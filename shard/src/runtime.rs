//! Starting the shards: one pinned glommio executor per shard.

use std::future::Future;

use glommio::{LocalExecutorBuilder, Placement};

use crate::ids::ShardId;
use crate::mesh::{self, MeshEnds};

/// How to start the executors.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Number of shards (executors).
    pub shards: usize,
    /// Pin shard k to CPU k mod (online CPUs). Off: let the kernel place threads.
    pub pin: bool,
    /// Memory glommio registers with io_uring per executor (locked memory).
    pub io_memory: usize,
    /// Capacity of each mesh channel, in batches.
    pub mesh_capacity: usize,
    /// How long an idle executor polls for work before it parks (zero: park at once).
    pub spin_before_park: std::time::Duration,
}

/// What a shard is given when it starts.
pub struct ShardCtx<M: Send + 'static> {
    /// This shard.
    pub id: ShardId,
    /// Number of shards.
    pub shards: usize,
    /// This shard's ends of the mesh; connect them on the executor.
    pub mesh: MeshEnds<M>,
}

/// Starts one executor per shard, runs `shard_main(ctx, input)` on each (shard k gets
/// `inputs[k]`) and waits for all of them. `shard_main` is cloned once per shard.
pub fn run<M, I, G, F>(cfg: &RuntimeConfig, inputs: Vec<I>, shard_main: G) -> std::io::Result<()>
where
    M: Send + 'static,
    I: Send + 'static,
    G: Fn(ShardCtx<M>, I) -> F + Send + Clone + 'static,
    F: Future<Output = ()> + 'static,
{
    assert_eq!(inputs.len(), cfg.shards, "one input per shard");
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let ends = mesh::build::<M>(cfg.shards, cfg.mesh_capacity);
    let mut handles = Vec::with_capacity(cfg.shards);
    for (k, (mesh, input)) in ends.into_iter().zip(inputs).enumerate() {
        let placement = if cfg.pin { Placement::Fixed(k % cpus) } else { Placement::Unbound };
        let shard_main = shard_main.clone();
        let ctx = ShardCtx { id: ShardId(k as u16), shards: cfg.shards, mesh };
        let h = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{k}"))
            .io_memory(cfg.io_memory)
            .spin_before_park(cfg.spin_before_park)
            .spawn(move || shard_main(ctx, input))
            .map_err(|e| std::io::Error::other(format!("starting shard {k}: {e}")))?;
        handles.push(h);
    }
    for h in handles {
        h.join().map_err(|e| std::io::Error::other(format!("shard failed: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Mesh;
    use std::cell::Cell;
    use std::rc::Rc;

    /// Every shard sends 10,000 numbered messages to every other shard, pushing and
    /// flushing in uneven batches; each receiver sees each sender's numbers in order.
    #[test]
    fn mesh_delivers_everything_in_order() {
        let cfg = RuntimeConfig {
            shards: 3,
            pin: false,
            io_memory: 512 << 10,
            mesh_capacity: 4,
            spin_before_park: std::time::Duration::ZERO,
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel::<(u16, bool)>();
        // Shards that have received everything; each stays alive until all have, so no
        // peer's channel closes while it still sends.
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        run::<(u16, u32), _, _, _>(&cfg, vec![(); 3], move |ctx: ShardCtx<(u16, u32)>, ()| {
            let done_tx = done_tx.clone();
            let finished = finished.clone();
            async move {
                let me = ctx.id;
                let next: Rc<Vec<Cell<u32>>> = Rc::new((0..ctx.shards).map(|_| Cell::new(0)).collect());
                let ok = Rc::new(Cell::new(true));
                let received = Rc::new(Cell::new(0u32));
                let max_backlog = Rc::new(Cell::new(0usize));
                let (n2, ok2, r2) = (next.clone(), ok.clone(), received.clone());
                let on_batch = move |from: ShardId, batch: Vec<(u16, u32)>| {
                    for (src, i) in batch {
                        ok2.set(ok2.get() && src == from.0 && n2[from.index()].get() == i);
                        n2[from.index()].set(i + 1);
                        r2.set(r2.get() + 1);
                    }
                };
                let mesh = Mesh::connect(ctx.mesh, 8, on_batch, || {});
                for i in 0..10_000u32 {
                    for k in 0..ctx.shards {
                        if k != me.index() {
                            mesh.push(ShardId(k as u16), (me.0, i));
                        }
                    }
                    if i % 7 == 0 {
                        mesh.flush();
                        glommio::yield_if_needed().await;
                    }
                    // Back-pressure: wait for the peers while the backlog is over its limit.
                    while mesh.backlogged() {
                        max_backlog.set(
                            max_backlog
                                .get()
                                .max((0..ctx.shards).map(|k| mesh.backlog(ShardId(k as u16))).max().unwrap_or(0)),
                        );
                        glommio::timer::sleep(std::time::Duration::from_micros(100)).await;
                    }
                }
                mesh.flush();
                let want = 10_000 * (ctx.shards as u32 - 1);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while received.get() < want {
                    assert!(std::time::Instant::now() < deadline, "received {} of {want}", received.get());
                    glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                }
                // The backlog never grew past its limit plus one turn's batch.
                done_tx.send((me.0, ok.get() && max_backlog.get() <= 9)).unwrap();
                finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while finished.load(std::sync::atomic::Ordering::SeqCst) < ctx.shards {
                    assert!(std::time::Instant::now() < deadline, "a peer never finished receiving");
                    glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        })
        .unwrap();
        let results: Vec<_> = done_rx.try_iter().collect();
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(|r| r.1), "out of order: {results:?}");
    }
}
