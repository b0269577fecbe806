//! `fanout`: one group of G connected members; member 0 sends M messages a second.
//! Reports deliveries per second, latency of every delivery, latency to the last
//! member of each message, and loss.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use wire::frame::{ClientFrame, ConvId, MsgKind, Send, ServerFrame, Target as To};

use crate::chat::{create_group, wait_until};
use crate::net::{self, Target};
use crate::report::{self, hist_json, Live, Progress, ServerProbe};

/// What to run.
#[derive(Clone)]
pub struct FanoutArgs {
    /// Where to connect.
    pub target: Target,
    /// Group members (all connected).
    pub members: usize,
    /// Messages per second from member 0.
    pub rate: u64,
    /// Seconds of sending.
    pub secs: u64,
    /// Body bytes (at least 16).
    pub body: usize,
    /// Client executors.
    pub threads: usize,
    /// User id prefix.
    pub tag: String,
}

struct Shared {
    connected: AtomicUsize,
    group: Mutex<Option<ConvId>>,
    done_sending: AtomicUsize,
    sent: AtomicU64,
    /// Nanoseconds since the epoch of the last delivery seen.
    last_delivery_ns: AtomicU64,
    /// Per message: (deliveries, latest arrival ns), merged from every executor.
    arrivals: Mutex<HashMap<u64, (u64, u64)>>,
}

#[derive(Default)]
struct Out {
    delivered: u64,
    duplicates: u64,
    deliver: Option<hdrhistogram::Histogram<u64>>,
    /// Per message seq: (deliveries here, latest arrival ns).
    arrivals: HashMap<u64, (u64, u64)>,
    /// Send time per seq (sender's executor only).
    sent_at: HashMap<u64, u64>,
}

fn user(args: &FanoutArgs, i: usize) -> String {
    format!("{}-f{i}", args.tag)
}

async fn exec_main(args: FanoutArgs, t: usize, sh: Arc<Shared>, live: Arc<Live>, epoch: Instant) -> Out {
    let out = Rc::new(RefCell::new(Out::default()));
    let mut readers = Vec::new();
    let mut sender = None;
    for i in (0..args.members).filter(|i| i % args.threads == t) {
        let conn = match net::open(&args.target, i, &user(&args, i)).await {
            Ok(c) => c,
            Err(e) => panic!("connecting member {i}: {e}"),
        };
        live.open.fetch_add(1, Ordering::Relaxed);
        sh.connected.fetch_add(1, Ordering::Relaxed);
        let mut rx = conn.rx;
        if i == 0 {
            sender = Some(conn.tx);
        }
        let (out, live) = (out.clone(), live.clone());
        readers.push(glommio::spawn_local(async move {
            let mut next = 0u64;
            while let Ok(f) = rx.frame().await {
                let ServerFrame::Msg(m) = f else { continue };
                if m.kind == MsgKind::System || m.body.len() < 16 {
                    continue;
                }
                let now = epoch.elapsed().as_nanos() as u64;
                let sent_at = u64::from_le_bytes(m.body[0..8].try_into().expect("16-byte header"));
                let seq = u64::from_le_bytes(m.body[8..16].try_into().expect("16-byte header"));
                let mut o = out.borrow_mut();
                if seq < next {
                    o.duplicates += 1;
                    continue;
                }
                next = seq + 1;
                o.delivered += 1;
                let us = (now.saturating_sub(sent_at) / 1000).max(1);
                let _ = o.deliver.get_or_insert_with(report::histogram).record(us);
                let a = o.arrivals.entry(seq).or_insert((0, 0));
                a.0 += 1;
                a.1 = a.1.max(now);
                live.record_delivery(us);
            }
        }));
    }
    wait_until(|| sh.connected.load(Ordering::Relaxed) >= args.members, Duration::from_secs(600)).await;
    if let Some(mut tx) = sender {
        let names: Vec<String> = (1..args.members).map(|i| user(&args, i)).collect();
        let conv = match create_group(&args.target, &user(&args, 0), &names).await {
            Ok(c) => c,
            Err(e) => panic!("creating the group: {e}"),
        };
        *sh.group.lock().expect("lock") = Some(conv);
        let total = args.rate * args.secs;
        let start = Instant::now();
        for n in 0..total {
            let due = start + Duration::from_secs_f64(n as f64 / args.rate as f64);
            let now = Instant::now();
            if due > now {
                glommio::timer::sleep(due - now).await;
            }
            let ts = epoch.elapsed().as_nanos() as u64;
            let mut body = vec![b'x'; args.body.max(16)];
            body[0..8].copy_from_slice(&ts.to_le_bytes());
            body[8..16].copy_from_slice(&n.to_le_bytes());
            out.borrow_mut().sent_at.insert(n, ts);
            let f = ClientFrame::Send(Send {
                reply_to: None,
                target_seq: None,
                forward: None,
                client_msg_id: n.to_string(),
                target: To::Conv(conv),
                body,
                kind: MsgKind::Data,
            });
            if tx.send(&f).await.is_err() {
                break;
            }
            sh.sent.fetch_add(1, Ordering::Relaxed);
            live.sent.fetch_add(1, Ordering::Relaxed);
        }
        sh.done_sending.fetch_add(1, Ordering::Relaxed);
    } else {
        wait_until(|| sh.group.lock().map(|g| g.is_some()).unwrap_or(false), Duration::from_secs(600)).await;
    }
    // Wait (bounded) until every member got every message.
    let (s2, l2, members) = (sh.clone(), live.clone(), args.members as u64);
    wait_until(
        move || {
            s2.done_sending.load(Ordering::Relaxed) >= 1
                && l2.delivered.load(Ordering::Relaxed) >= s2.sent.load(Ordering::Relaxed) * (members - 1)
        },
        Duration::from_secs(args.secs + 30),
    )
    .await;
    drop(readers);
    let o = out.take();
    let mut all = sh.arrivals.lock().expect("lock");
    for (seq, (n, last)) in &o.arrivals {
        let a = all.entry(*seq).or_insert((0, 0));
        a.0 += n;
        a.1 = a.1.max(*last);
        sh.last_delivery_ns.fetch_max(*last, Ordering::Relaxed);
    }
    o
}

/// Runs the scenario; returns the report.
pub fn run(args: FanoutArgs, server_pid: Option<u32>) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.members >= 2 && args.rate >= 1 && args.threads >= 1, "members >= 2, rate and threads >= 1");
    let sh = Arc::new(Shared {
        connected: AtomicUsize::new(0),
        group: Mutex::new(None),
        done_sending: AtomicUsize::new(0),
        sent: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        arrivals: Mutex::new(HashMap::new()),
    });
    let live = Arc::new(Live::default());
    let progress = Progress::start("fanout", live.clone());
    let epoch = Instant::now();
    let handles = crate::spawn_executors(args.threads, "fanout", |t| {
        let (a, s, l) = (args.clone(), sh.clone(), live.clone());
        move || exec_main(a, t, s, l, epoch)
    })?;
    while sh.group.lock().map(|g| g.is_none()).unwrap_or(false) && !handles.iter().any(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let probe = ServerProbe::start(server_pid)?;
    let first_send_ns = epoch.elapsed().as_nanos() as u64;
    let mut outs = Vec::new();
    for h in handles {
        outs.push(h.join().map_err(|e| anyhow::anyhow!("client executor failed: {e}"))?);
    }
    let timeline = progress.finish();
    let sent = sh.sent.load(Ordering::Relaxed);
    let (mut delivered, mut duplicates) = (0, 0);
    let mut deliver = report::histogram();
    let mut sent_at = HashMap::new();
    for o in outs {
        delivered += o.delivered;
        duplicates += o.duplicates;
        if let Some(h) = o.deliver {
            let _ = deliver.add(&h);
        }
        sent_at.extend(o.sent_at);
    }
    let mut last_member = report::histogram();
    let mut complete = 0u64;
    for (seq, (n, last)) in sh.arrivals.lock().expect("lock").iter() {
        if *n == args.members as u64 - 1 {
            complete += 1;
            if let Some(t) = sent_at.get(seq) {
                let _ = last_member.record((last.saturating_sub(*t) / 1000).max(1));
            }
        }
    }
    let active = (sh.last_delivery_ns.load(Ordering::Relaxed).saturating_sub(first_send_ns)) as f64 / 1e9;
    let expected = sent * (args.members as u64 - 1);
    let server = probe.finish(args.members as u64, delivered)?;
    let mut r = json!({
        "schema": report::SCHEMA, "scenario": "fanout", "processes": 1,
        "args": { "members": args.members, "rate": args.rate, "secs": args.secs, "body": args.body,
            "threads": args.threads, "encoding": args.target.encoding.subprotocol(), "tag": args.tag },
        "started_unix_ms": shard::ids::now_ms() - epoch.elapsed().as_millis() as u64,
        "wall_secs": epoch.elapsed().as_secs_f64(),
        "active_secs": active,
        "connections": { "target": args.members, "opened": live.open.load(Ordering::Relaxed), "failed": 0 },
        "messages": { "sent": sent, "expected_deliveries": expected, "delivered": delivered,
            "lost": expected.saturating_sub(delivered), "duplicates": duplicates,
            "messages_reaching_every_member": complete },
        "latency": { "deliver": hist_json(&deliver), "last_member": hist_json(&last_member) },
        "server": server,
        "timeline": timeline,
    });
    report::rates(&mut r);
    Ok(r)
}
