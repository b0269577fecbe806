//! Heap allocations per DM through the shard cores (no I/O): a counting allocator
//! around one `send` from a device on one shard to a user on another, through the
//! conversation's home, its group commit, the ack and the delivery.
//!
//! `cargo bench -p shard --bench dm_allocs` prints allocations and bytes per DM. The
//! store's own work (the commit of the batch) is not counted: it is the backend's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use shard::core::{Core, CoreConfig, Effect};
use shard::ids::{dm_conv, home_of_conv, home_of_user, ConnId, ShardId};
use storage::memory::MemStore;
use storage::read::execute;
use storage::Store;
use wire::frame::{ClientFrame, MsgKind, Send, Target};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are
// atomics and allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds `alloc`'s contract for `l`.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` was allocated by `System` with layout `l` (every alloc goes there).
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(new as u64, Ordering::Relaxed);
        }
        // SAFETY: `p` was allocated by `System` with layout `l`; the caller upholds the rest.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SHARDS: usize = 4;

/// Names two users on different shards whose DM is homed on a third.
fn pick() -> (String, String) {
    for i in 0..10_000 {
        for j in 0..100 {
            let (a, b) = (format!("a{i}"), format!("b{j}"));
            let (ha, hb, hc) =
                (home_of_user(&a, SHARDS), home_of_user(&b, SHARDS), home_of_conv(dm_conv(&a, &b), SHARDS));
            if ha != hb && hc != ha && hc != hb {
                return (a, b);
            }
        }
    }
    unreachable!("some pair spans three shards")
}

fn main() {
    let (alice, bob) = pick();
    let mut cores: Vec<Core> = (0..SHARDS)
        .map(|k| Core::new(ShardId(k as u16), SHARDS, CoreConfig { send_rate: 0, ..CoreConfig::default() }))
        .collect();
    let stores: Vec<MemStore> = (0..SHARDS).map(|_| MemStore::default()).collect();
    let (ha, hb) = (home_of_user(&alice, SHARDS).index(), home_of_user(&bob, SHARDS).index());
    let a = ConnId { slot: 0, gen: 1 };
    let b = ConnId { slot: 0, gen: 1 };
    cores[ha].conn_opened(a, &alice, "phone", 1).unwrap();
    cores[hb].conn_opened(b, &bob, "phone", 1).unwrap();
    let mut pending: VecDeque<(usize, Effect)> = VecDeque::new();
    let mut delivered = 0u64;
    let run = |cores: &mut Vec<Core>, pending: &mut VecDeque<(usize, Effect)>, delivered: &mut u64| loop {
        for (k, c) in cores.iter_mut().enumerate() {
            pending.extend(c.effects().map(|e| (k, e)));
            if let Some(w) = c.take_commit() {
                COUNTING.store(false, Ordering::Relaxed);
                let r = stores[k].commit(&w);
                drop(w);
                COUNTING.store(true, Ordering::Relaxed);
                c.commit_done(r, 2);
                pending.extend(c.effects().map(|e| (k, e)));
            }
        }
        let Some((k, e)) = pending.pop_front() else { return };
        match e {
            Effect::Route { to, route } => cores[to.index()].route(route, 2),
            Effect::Read { id, req } => {
                COUNTING.store(false, Ordering::Relaxed);
                let r = execute(&stores[k], &req);
                COUNTING.store(true, Ordering::Relaxed);
                cores[k].read_done(id, r, 2);
            }
            Effect::Deliver { to, .. } => *delivered += to.len() as u64,
            Effect::Frame { .. } | Effect::Close { .. } => {}
        }
    };
    let send = |i: u64| {
        ClientFrame::Send(Send {
            reply_to: None,
            target_seq: None,
            forward: None,
            client_msg_id: format!("m{i}"),
            target: Target::User(bob.clone()),
            body: vec![b'x'; 64],
            kind: MsgKind::Text,
        })
    };
    // Warm up: the conversation is created and loaded, tables have grown.
    for i in 0..2_000 {
        cores[ha].client_frame(a, send(i), 2);
        run(&mut cores, &mut pending, &mut delivered);
    }
    let n = 10_000u64;
    let frames: Vec<ClientFrame> = (0..n).map(|i| send(10_000 + i)).collect();
    let before = delivered;
    ALLOCS.store(0, Ordering::Relaxed);
    BYTES.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    for f in frames {
        cores[ha].client_frame(a, f, 2);
        run(&mut cores, &mut pending, &mut delivered);
    }
    COUNTING.store(false, Ordering::Relaxed);
    assert_eq!(delivered - before, n, "every DM reached bob");
    let (allocs, bytes) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    println!(
        "dm_allocs: {:.1} allocations, {:.0} bytes per DM through the cores ({n} DMs, 64-byte bodies, 3 shards involved)",
        allocs as f64 / n as f64,
        bytes as f64 / n as f64
    );
}
